"""The command line: `python -m facelock_pl COMMAND [options]` (or `facelock-pl COMMAND`).

Every config value can be overridden on the command line (`--model.attack.eps 0.02`, `--data.batch_size 4`,
`--trainer.devices 2`); `--print_config` prints the resolved configuration; `-v` shows the libraries' logs
and warnings. Misspelt options are errors (no prefix matching), reported in one line with the nearest
valid keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import logging
import os
import platform
import pydoc
import re
import sys
import warnings

from .config_files import ConfigError, prepare_args
from .signals import interrupting

USAGE = """usage: python -m facelock_pl COMMAND [-v] [--config FILE] [--assets DIR] [options]

Protect portraits against AI editing (FaceLock, arXiv 2411.16832).

commands:
  fit        protect images:            fit --config configs/protect.yaml --data.source FOLDER --output_dir OUT
  edit       edit clean and protected images (evaluation, step 1): edit --config configs/edit.yaml --sets '{name: OUT}'
  evaluate   score the edits and write the report (evaluation, step 2): evaluate --config configs/evaluate.yaml
  assets     fetch the offline weights bundle: assets download --to DIR (then --assets DIR)

`python -m facelock_pl COMMAND --help` lists a command's options; `--version` the versions of it and its libraries.

exit codes:
  0  everything asked for is protected (or already was)
  1  an unexpected error (a bug or a broken environment; the traceback is printed); in one line: a full disk, the
     output folder gone mid-run, another rank of the run stopped first (what was written is kept)
  2  the run could not start: a bad option, path or value, missing weights, an output folder in use
  3  the run finished, but some images could not be protected (their manifest rows say why)
  4  the source holds no image to protect
  5  stopped by SIGTERM, SIGINT or SIGUSR1 (SLURM's pre-timeout signal), or by a trainer limit (--trainer.max_time):
     finished images are kept, rerun to resume
"""

EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_PARTLY_FAILED, EXIT_NO_IMAGES, EXIT_INTERRUPTED = range(6)
COMMANDS = ("fit", "edit", "evaluate", "assets")
# What a Ctrl-C (or a SIGTERM, SIGUSR1) leaves; fit's own stop, once its steps run, says it in its summary.
INTERRUPTED = {
    "fit": "interrupted before its first step; images protected by earlier runs are kept: rerun the same command to go on",
    "edit": "interrupted; the edits written so far are kept: rerun the same command to make the rest",
    "evaluate": "interrupted; no report was written: rerun the same command",
    "assets": "interrupted; the files fetched so far are kept: rerun the same command to fetch the rest",
}
VERSIONED = ("torch", "lightning", "triton", "diffusers", "transformers", "datasets", "onnx2torch", "facenet-pytorch")


class NoImagesError(RuntimeError):
    """The source holds no image to protect."""


class PeerStoppedError(RuntimeError):
    """A collective of this process failed because another process of the run had stopped (`fit` on several)."""


class _Handler(logging.StreamHandler):
    """The project's messages on stderr, bare."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr  # the current one: a notebook or a test may have redirected it since the first run
        super().emit(record)


def configure_output(verbose: bool) -> None:
    """Our messages always; the libraries' logs and warnings only with -v."""
    ours = logging.getLogger("facelock_pl")
    ours.setLevel(logging.INFO)
    if not any(isinstance(h, _Handler) for h in ours.handlers):
        handler = _Handler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        ours.addHandler(handler)
    import lightning  # noqa: F401  (sets its loggers' levels when first imported: ours must come after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    if not verbose:
        warnings.filterwarnings("ignore")
        # The Hugging Face libraries set their loggers' levels when first imported: tell them through the
        # environment (which launched processes inherit too).
        for variable, value in (("TRANSFORMERS_VERBOSITY", "error"), ("DIFFUSERS_VERBOSITY", "error"),
                                ("DATASETS_VERBOSITY", "error"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                                ("HF_HUB_DISABLE_PROGRESS_BARS", "1")):
            os.environ.setdefault(variable, value)


def _known_keys(parser) -> list[str]:
    keys = []
    for action in parser._actions:
        keys += [option[2:] for option in action.option_strings if option.startswith("--") and not option.endswith("+")]
    return keys


# jsonargparse's words for a mistake inside an option that takes a spec or nothing (`editor`, `model.vae`,
# `model.recognizers`) list every type's failure; the user's mistake is the spec's.
SPEC_OPTION = re.compile(r"Parser key \"([\w.]+)\":.*? class_path '([\w.]+)': Option '([^']+)' is not accepted")
SPEC_VALUE = re.compile(r"Parser key \"([\w.]+)\":.*? class_path '[\w.]+': Parser key \"([\w.]+)\": (.+?) "
                        r"- Expected a <class 'NoneType'>")
CHOICE = re.compile(r"Parser key \"([\w.]+)\": Expected a typing\.Literal\[(.*?)\]\. Got value: (\S+)")


def explain(error: Exception, parser=None) -> str:
    """One line for a user's mistake; with the nearest valid keys for an unknown one, the nearest choice for a
    value that is not one."""
    message = _spec_mistake(" ".join(str(error).split()))
    choice = CHOICE.search(message)
    if choice:
        key, choices, value = choice.groups()
        names = re.findall(r"'([^']*)'", choices)
        close = difflib.get_close_matches(value, names, n=1, cutoff=0.6)
        return f"{key}: {value!r} is not one of {', '.join(names)}" + (f"; did you mean {close[0]!r}?" if close else "")
    unknown = re.findall(r"--([\w.]+)", message.split("unrecognized arguments:")[-1]) if "unrecognized" in message else []
    unknown += re.findall(r"Key '([\w.]+)' is not expected", message)
    # A misspelt key in a config file: "Group 'data' does not accept option 'batchsize'", "Option 'x' is not accepted".
    unknown += [f"{group}.{option}" for group, option in re.findall(r"Group '([\w.]+)' does not accept option '([\w.]+)'", message)]
    unknown += re.findall(r"^Option '([\w.]+)' is not accepted", message)
    if parser is not None and unknown:
        close = suggestions(unknown[0], _known_keys(parser))
        if close:
            message += "; did you mean " + " or ".join(f"--{c}" for c in close) + "?"
    return message


def _spec_mistake(message: str) -> str:
    """The mistake inside a spec-or-nothing option, in the words of an option of its own."""
    option = SPEC_OPTION.search(message)
    if option:
        key, class_path, name = option.groups()
        if ":" in name:  # `{kind:facenet}`: YAML reads one key, "kind:facenet"
            spaced = name.replace(":", ": ", 1)
            return f"{key}: {name!r} is read as one key: in YAML a key needs a space after its colon ({spaced})"
        spec = pydoc.locate(class_path)
        fields = [field.name for field in dataclasses.fields(spec)] if dataclasses.is_dataclass(spec) else []
        close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f" (its options: {', '.join(fields)})"
        return f"{key}: {class_path.rsplit('.', 1)[-1]} has no option {name!r}{hint}"
    value = SPEC_VALUE.search(message)
    if value:
        key, inner, problem = value.groups()
        return f'Parser key "{key}.{inner}": {problem}'
    return message


def suggestions(key: str, known: list[str], n: int = 3) -> list[str]:
    """Known keys whose last part starts with, or resembles, the last part of `key`; then keys like all of `key`."""
    last = key.rsplit(".", 1)[-1]
    tails = {k: k.rsplit(".", 1)[-1] for k in known}
    starting = [k for k, tail in tails.items() if tail.startswith(last) and tail != last]
    alike = [k for k, tail in tails.items() if tail in difflib.get_close_matches(last, list(tails.values()), n=n, cutoff=0.75)]
    ranked = starting + alike + difflib.get_close_matches(key, known, n=n, cutoff=0.6)
    return list(dict.fromkeys(ranked))[:n]


def main(args: list[str] | None = None) -> None:
    args = sys.argv[1:] if args is None else list(args)
    verbose = any(a in ("-v", "--verbose") for a in args)
    args = [a for a in args if a not in ("-v", "--verbose")]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        raise SystemExit(EXIT_OK if args else EXIT_USAGE)
    if args[0] == "--version":
        print(version_line())
        raise SystemExit(EXIT_OK)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        close = difflib.get_close_matches(command, COMMANDS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        print(f"facelock_pl: unknown command {command!r} (commands: {', '.join(COMMANDS)}){hint}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)
    try:
        configure_output(verbose)  # imports Lightning: seconds in which a Ctrl-C is as likely as later
        code = _run(command, rest)
    except KeyboardInterrupt as stop:
        print(f"facelock_pl {command}: {str(stop) or INTERRUPTED[command]}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    raise SystemExit(code)


def version_line() -> str:
    """`facelock_pl 0.1.0 (python 3.11.7; torch 2.x, ...)`: what a bug report needs, read without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    libraries = ", ".join(f"{name} {installed(name)}" for name in VERSIONED)
    return f"facelock_pl {__version__} (python {platform.python_version()}; {libraries})"


def parse_strictly(parser, args: list[str]):
    """`parser.parse_args`, with a user's mistake turned into a one-line `ConfigError`."""
    from jsonargparse import ArgumentError

    try:
        return parser.parse_args(args)
    except ArgumentError as error:
        raise ConfigError(explain(error, parser)) from None


def _evaluation(command: str, args: list[str]) -> int:
    from jsonargparse import ActionConfigFile, ArgumentParser

    from .evaluation import run_edit, run_evaluate
    from .outputs.lock import OutputLock

    function = {"edit": run_edit, "evaluate": run_evaluate}[command]
    parser = ArgumentParser(prog=f"python -m facelock_pl {command}", description=function.__doc__.split("\n")[0],
                            exit_on_error=False, allow_abbrev=False)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML config file (configs/edit*.yaml, evaluate*.yaml)")
    parser.add_function_arguments(function, as_positional=False)
    config = parser.instantiate_classes(parse_strictly(parser, args))
    # One command at a time per folder: two edits would each save their own edit.json (the last one wins and the
    # other's edits go unrecorded), and an evaluate beside an edit would score half of them.
    with interrupting(), OutputLock(config.output_dir):  # a SIGTERM as Ctrl-C: the lock released, the message printed
        function(**{key: value for key, value in vars(config).items() if key != "config"})
    return EXIT_OK


def _run(command: str, args: list[str]) -> int:
    # Imported here, not at the top: `--help` and a misspelt command answer at once, without loading torch.
    from .models import WeightsUnavailableError
    from .outputs.lock import OutputFolderGoneError, OutputLockedError

    try:
        args = prepare_args(args)
        if command == "fit":
            from .fit import run_fit

            return run_fit(args)
        if command == "assets":
            from .assets import main as assets_main

            with interrupting():
                return assets_main(args)
        return _evaluation(command, args)
    except (ConfigError, WeightsUnavailableError, OutputLockedError) as error:
        message = " ".join(str(error).split())  # one line
    except NoImagesError as error:
        print(f"facelock_pl {command}: {error}", file=sys.stderr)
        return EXIT_NO_IMAGES
    except (OutputFolderGoneError, PeerStoppedError) as error:  # not a bug here: no traceback
        print(f"facelock_pl {command}: {error}", file=sys.stderr)
        return EXIT_CRASH
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Not a bug, so no traceback: what was committed before is kept, and a rerun goes on from there.
        print(f"facelock_pl {command}: stopped: {error.strerror} (disk full or quota reached). Everything written "
              "before is kept; free some space and rerun the same command to go on", file=sys.stderr)
        return EXIT_CRASH
    print(f"facelock_pl {command}: error: {message}", file=sys.stderr)
    return EXIT_USAGE


if __name__ == "__main__":
    main()
