"""`python -m facelock_pl fit`: a LightningCLI around the engine, and what happens before and after it.

`--sweep_eps '[0.01, 0.02, 0.03]'` runs one protection per budget, into `OUTPUT_DIR/eps-<ε>/` each (resumable), as
the published scripts write one folder per budget; `edit` and `evaluate` then show one set per budget.

Before any model loads, every option is checked (a mistake is one line, exit code 2), the source must exist
and hold images, and the output folder must be writable; then global rank 0 takes the output folder's lock.
After the run, the exit code says whether everything asked for was protected (see `facelock_pl.cli`).
"""

from __future__ import annotations

import os
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from . import logs
from .cli import (EXIT_INTERRUPTED, EXIT_NO_IMAGES, EXIT_OK, EXIT_PARTLY_FAILED, NoImagesError, PeerStoppedError,
                  parse_strictly)
from .config_files import ConfigError
from .data import FaceDataModule
from .data.datamodule import DEMO_SOURCE
from .data.folder import image_files
from .data.hf import HUB_ID, detect_format
from .data.images import ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, REFUSED_SUFFIXES, SUFFIX_NAMES, UNPACK
from .engine import AdaptiveStopping, AttackConfig, ProtectionModule, SpeedConfig
from .engine.module import check_networks
from .engine.strategy import close_process_group, peer_stopped
from .models.recognizers import RESERVED_FOR_EVALUATION, RecognizerSpec
from .objectives import CWSettings, FaceLockObjective, build_method
from .outputs.lock import OutputFolderGoneError, OutputLock
from .progress import ImagesProgress
from .signals import interrupting

TRAINER_DEFAULTS = {
    "max_epochs": 1,  # one pass over the images; each batch is repeated `iterations` times
    "enable_checkpointing": False,  # resuming works per image from the manifest, not from checkpoints
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "log_every_n_steps": 1,
}
STOPPED_AT_ONCE = ("stopped at once by a second Ctrl-C: the images finished before it are kept (this run has no "
                   "summary line): rerun the same command to protect the rest")


def _is_rank_zero_launch() -> bool:
    """Whether this process is global rank 0 (or alone): launchers tell the others by these variables."""
    return all(int(os.environ.get(name, "0") or 0) == 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


def _writable(output_dir: Path) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise ConfigError(f"output_dir {output_dir} is a file, not a folder")
    existing = next(p for p in (output_dir, *output_dir.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {output_dir} cannot be written ({existing} is not writable)")


def _check_source(data: FaceDataModule) -> None:
    source = data.source
    if source == DEMO_SOURCE or Path(source).expanduser().exists() or ("*" in source and source.endswith(".parquet")):
        fmt = detect_format(source, [Path(data.output_dir)]) if data.format == "auto" else data.format
        path = Path(source).expanduser()
        if fmt == "folder" and source != DEMO_SOURCE and path.is_dir():
            out = Path(data.output_dir).expanduser().resolve()
            if path.resolve().is_relative_to(out):
                raise ConfigError(f"output_dir {data.output_dir} is the source folder {source} or holds it: a run never "
                                  "reads its own output folder, so nothing would be protected; give an --output_dir "
                                  "outside it (e.g. a folder next to it)")
            files, hidden = image_files(path, [Path(data.output_dir)])
            if not files:
                left_out = f" (only hidden ones, left out: {logs.first_few(hidden)})" if hidden else ""
                archives = sorted(p.name for p in path.iterdir() if p.suffix.lower() in ARCHIVE_SUFFIXES)
                archived = f"; it holds archives ({logs.first_few(archives)}): unpack them {UNPACK}" if archives else ""
                raise NoImagesError(f"no image files ({SUFFIX_NAMES}) in {source}{left_out}{archived}")
        if fmt == "folder" and path.is_file() and path.suffix.lower() in ARCHIVE_SUFFIXES:
            raise ConfigError(f"data.source {source!r} is an archive: unpack it {UNPACK}")
        if fmt == "folder" and path.is_file() and path.suffix.lower() in REFUSED_SUFFIXES:
            raise ConfigError(f"data.source {source!r}: {REFUSED_SUFFIXES[path.suffix.lower()]}")
        if fmt == "folder" and path.is_file() and path.suffix.lower() not in IMAGE_SUFFIXES:
            raise ConfigError(f"data.source {source!r} is a file but not an image ({SUFFIX_NAMES}) nor a parquet file")
        return
    if data.format in ("auto", "hub") and HUB_ID.match(source):
        return  # a Hugging Face dataset id; loading it tells whether it exists
    raise ConfigError(f"data.source {source!r} does not exist: give a folder of images, a parquet file or dataset "
                      "folder, or a Hugging Face dataset id (namespace/name)")


def _no_reserved_recognizers(recognizers: list) -> None:
    for spec in recognizers:
        if vars(spec).get("kind") in RESERVED_FOR_EVALUATION:
            raise ValueError(f"the {vars(spec)['kind']!r} recogniser is reserved to judge transfer and never enters a loss; "
                             "use it in `evaluate` (configs/evaluate-offline.yaml)")


def check_before_loading(config) -> None:
    """Refuse, before any model loads, a run that cannot work; raises `ConfigError` or `NoImagesError`."""
    output_dir = Path(config.output_dir).expanduser()
    data_options = {k: v for k, v in vars(config.data).items() if k != "output_dir"}
    try:
        data = FaceDataModule(**data_options, output_dir=str(output_dir))
        model = config.model
        groups = [(cls, model.get(name)) for cls, name in ((AttackConfig, "attack"), (FaceLockObjective, "objective"),
                                                           (CWSettings, "cw"), (AdaptiveStopping, "stopping"),
                                                           (SpeedConfig, "speed"))]
        built = {cls: cls(**vars(values)) for cls, values in groups}
        protection = build_method(model.method, built[FaceLockObjective], built[CWSettings])
        _no_reserved_recognizers(model.get("recognizers") or [])
        recognizers = model.get("recognizers")
        check_networks(protection, built[AdaptiveStopping],
                       [RecognizerSpec()] if recognizers is None else [RecognizerSpec(**vars(spec)) for spec in recognizers],
                       [RecognizerSpec(**vars(spec)) for spec in model.get("judges") or []])
    except (ValueError, TypeError) as error:
        raise ConfigError(str(error)) from None
    _check_trainer(config.trainer)
    _writable(output_dir)
    _check_source(data)


def _check_trainer(trainer) -> None:
    """Trainer options the engine cannot run. Lightning's own parallel strategies wrap the module for gradients it
    does not have (its networks are frozen): DDP refuses it, a sharded one would shard what each process needs whole;
    `facelock_ddp` launches the processes without wrapping. Lightning's precision wraps the whole step in autocast,
    the face detector included (it fails on bfloat16 tensors). Lightning's quick checks end the steps before any
    image is done."""
    strategy, devices = trainer.strategy, trainer.devices
    several = str(devices) not in ("1", "auto") and (not isinstance(devices, list) or len(devices) > 1)
    if isinstance(strategy, str) and (strategy.startswith(("ddp", "fsdp", "deepspeed", "xla")) or
                                      (strategy == "auto" and several)):
        raise ConfigError(f"trainer.strategy {strategy}: use facelock_ddp (the configs' value): each process protects "
                          "its own images with the frozen networks whole, and there are no gradients to synchronise")
    if trainer.fast_dev_run or trainer.overfit_batches:
        raise ConfigError("trainer.fast_dev_run and trainer.overfit_batches run a PGD step or a few, which protects no "
                          "image: for a quick try, protect one photo with few iterations (--data.limit 1 "
                          "--model.attack.iterations 10)")
    if trainer.precision not in (None, 32, "32", "32-true"):
        raise ConfigError(f"trainer.precision {trainer.precision}: the engine runs the networks in mixed precision "
                          "itself, where it is safe (--model.speed.amp_dtype bfloat16, float16 or null; CUDA only); "
                          "leave trainer.precision at 32")


class FitCLI(LightningCLI):
    """LightningCLI for `fit`: ProtectionModule + FaceDataModule, a top-level `--output_dir`, strict parsing."""

    def __init__(self, args: list[str], locks: list[OutputLock]):
        self.locks = locks  # the caller releases them, also when instantiating the models fails
        super().__init__(ProtectionModule, FaceDataModule, run=False, args=args, trainer_defaults=TRAINER_DEFAULTS,
                         seed_everything_default=False, save_config_kwargs={"overwrite": True},
                         auto_configure_optimizers=False,
                         parser_kwargs={"exit_on_error": False, "allow_abbrev": False, "prog": "python -m facelock_pl fit"})

    def parse_arguments(self, parser, args) -> None:
        self.config = parse_strictly(parser, args)

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--output_dir", type=str, default="outputs", help="folder for images/, manifest/ and logs")
        parser.link_arguments("output_dir", "model.output_dir")
        parser.link_arguments("output_dir", "data.output_dir")
        parser.link_arguments("output_dir", "trainer.default_root_dir")

    def before_instantiate_classes(self) -> None:
        check_before_loading(self.config)
        if _is_rank_zero_launch():
            self.locks.append(OutputLock(self.config.output_dir))
            self.locks[-1].acquire()

    def instantiate_trainer(self, **kwargs):
        trainer = self.config_init["trainer"]
        callbacks = list(trainer.get("callbacks") or [])
        # The images-counting progress, unless the user turned bars off or brought their own.
        if trainer.get("enable_progress_bar") is not False and not any(isinstance(c, ProgressBar) for c in callbacks):
            kwargs["callbacks"] = [*callbacks, ImagesProgress()]
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:  # a trainer option this machine cannot run (no GPU, devices 0)
            raise ConfigError(f"trainer: {error}") from None


def exit_code(summary: dict | None, images_in_source: int) -> int:
    run = (summary or {}).get("last_run", {})
    if run.get("interrupted"):
        return EXIT_INTERRUPTED
    if images_in_source == 0:
        return EXIT_NO_IMAGES
    return EXIT_PARTLY_FAILED if run.get("error") else EXIT_OK


def run_fit(args: list[str]) -> int:
    code = _fit_or_sweep(args)
    close_process_group()  # after the last fit of a sweep: every fit of it shares one process group
    return code


def _fit_or_sweep(args: list[str]) -> int:
    sweep, args = _option(args, "--sweep_eps")
    if sweep is None:
        return _fit(args)
    # A budget sweep: one run (and one output folder, resumable) per ε, as the published scripts write them.
    budgets = yaml.safe_load(sweep)
    if not isinstance(budgets, list) or not budgets or not all(isinstance(b, (int, float)) and b > 0 for b in budgets):
        raise ConfigError(f"--sweep_eps takes a list of positive budgets, e.g. '[0.01, 0.02, 0.03]' (got {sweep!r})")
    output_dir, args = _option(args, "--output_dir")
    root = Path(output_dir or _configured_output_dir(args))
    codes = []
    for eps in budgets:
        codes.append(_fit([*args, "--model.attack.eps", str(eps), "--output_dir", str(root / f"eps-{eps:g}")]))
        if codes[-1] == EXIT_INTERRUPTED:
            break
    return max(codes)


def _fit(args: list[str]) -> int:
    locks: list[OutputLock] = []
    try:
        with interrupting():  # until the steps start (the module then takes the stop signals over)
            cli = FitCLI(args, locks)
            # Other settings are refused before the data module's resume step lists, skips or withdraws anything.
            cli.model.check_settings(cli.datamodule, write=False)
            _train(cli)
        if cli.model.summary is None:  # Lightning skipped the steps and the hooks around them
            raise ConfigError("the trainer ran no step (trainer.max_epochs, max_steps or limit_train_batches 0?): "
                              "nothing was protected")
        return exit_code(cli.model.summary, cli.datamodule.num_images)
    finally:
        for lock in locks:
            lock.release()


def _train(cli: FitCLI) -> None:
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    except MisconfigurationException as error:  # a trainer option the engine cannot run (gradient clipping, accumulation)
        raise ConfigError(f"trainer: {error}") from None
    except SystemExit as stop:
        # Lightning turns a KeyboardInterrupt inside `fit` into exit code 1 without a word: a stop signal before the
        # first step, a second Ctrl-C during the steps, or one after the summary. A stop, not a crash: say which.
        if stop.code != 1 or not cli.trainer.interrupted:
            raise
        if cli.model.summary is not None:
            return  # the run had ended and said so: its own exit code stands
        raise KeyboardInterrupt(STOPPED_AT_ONCE if cli.model.stop_requests.received else "") from None
    except FileNotFoundError:
        # A writer other than the run's own (the logger) found the output folder gone or replaced (the run's own
        # writer stops itself), also while Lightning tore the run down after the writer's stop.
        writer = cli.model.writer
        if not Path(cli.config.output_dir).is_dir() or (writer is not None and writer.folder.gone()):
            raise OutputFolderGoneError(cli.config.output_dir) from None
        raise
    except RuntimeError as error:
        trainer = cli.trainer
        if not peer_stopped(error, trainer.world_size):
            raise
        cause = " ".join(f"{type(error).__name__}: {error}".split())
        raise PeerStoppedError(
            f"process {trainer.global_rank} of {trainer.world_size} stopped: another process of this run stopped first "
            f"(its own message says why); what was written is kept, and rerunning the same command goes on from there "
            f"(here: {cause[:200]})") from None


def _option(args: list[str], name: str) -> tuple[str | None, list[str]]:
    """The last value of `--name VALUE` / `--name=VALUE` in `args`, and `args` without it."""
    value, rest, i = None, [], 0
    while i < len(args):
        if args[i] == name and i + 1 < len(args):
            value, i = args[i + 1], i + 2
        elif args[i].startswith(name + "="):
            value, i = args[i].partition("=")[2], i + 1
        else:
            rest.append(args[i])
            i += 1
    return value, rest


def _configured_output_dir(args: list[str]) -> str:
    """The `output_dir` a config file sets (config files reach here as YAML text), else the default."""
    configs = [yaml.safe_load(args[i + 1]) for i, arg in enumerate(args[:-1]) if arg == "--config"]
    return next((c["output_dir"] for c in reversed(configs) if isinstance(c, dict) and c.get("output_dir")), "outputs")
