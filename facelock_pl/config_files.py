"""Config files as the command line reads them.

- Relative paths in a config file are relative to the file, never to the working directory (values of
  `source`, `path`, `weights` and `sets` that start with `./` or `../` or name something next to the file);
  hub ids and names such as `vggface2` stay as they are.
- `${assets}` stands for the offline weights bundle (`python -m facelock_pl assets download --to DIR`): the
  `--assets DIR` option (relative to the working directory), else the file's own `assets:` key (relative to
  the file).
- Keys that an earlier version spelled flat (`model.eps`) are read under their group (`model.attack.eps`).
The result goes to the parser as YAML text, with every path absolute.
"""

from __future__ import annotations

from pathlib import Path

import yaml

ASSETS = "${assets}"
PATH_KEYS = ("source", "path", "weights", "target_faces")

# The module's arguments were grouped (attack, objective, stopping, speed); the flat spellings users already
# have keep working: `--model.eps 0.02` is read as `--model.attack.eps 0.02`.
_GROUPED = {
    "attack": ("eps", "step_size", "iterations", "seed", "quantise_forward", "eot", "eot_samples", "grad_smoothing",
               "momentum"),
    "objective": ("fr_weight", "latent_weight", "lpips_weight", "fr_start", "lpips_start", "fr_reduction"),
    "speed": ("amp_dtype", "channels_last", "compile", "checkpoint_decoder"),
}
RENAMED_KEYS = {f"model.{key}": f"model.{group}.{key}" for group, keys in _GROUPED.items() for key in keys}
RENAMED_KEYS.update({"model.stop_below": "model.stopping.below", "model.stop_patience": "model.stopping.patience",
                     "model.stop_check_every": "model.stopping.check_every",
                     "model.min_iterations": "model.stopping.min_iterations"})


class ConfigError(ValueError):
    """A config file or option that cannot be used as given."""


def substitute_assets(value: str, assets: Path | None) -> str:
    if ASSETS not in value:
        return value
    if assets is None or not assets.is_dir():
        where = f"{assets} does not exist" if assets is not None else "no --assets DIR was given"
        raise ConfigError(f"{value!r} reads the offline weights bundle, but {where}: make one with `python -m "
                          "facelock_pl assets download --to DIR` on a machine with network, then pass --assets DIR")
    return value.replace(ASSETS, str(assets))


def _resolve_path(value: str, folder: Path, assets: Path | None) -> str:
    value = substitute_assets(value, assets)
    path = Path(value).expanduser()
    if not value or path.is_absolute() or not (value.startswith(("./", "../")) or (folder / path).exists()):
        return value  # empty (none given), absolute, a hub id, or a name such as `vggface2`
    return str((folder / path).resolve())


def _resolve(node, folder: Path, assets: Path | None, key: str = ""):
    if isinstance(node, dict):
        return {k: _resolve(v, folder, assets, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, folder, assets, key) for v in node]
    if isinstance(node, str) and key in PATH_KEYS:
        return _resolve_path(node, folder, assets)
    return substitute_assets(node, assets) if isinstance(node, str) else node


def _upgrade_keys(config: dict) -> dict:
    """`model.<old key>` -> `model.<group>.<key>` (see RENAMED_KEYS)."""
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    model = dict(model)
    for old, new in RENAMED_KEYS.items():
        key = old.split(".", 1)[1]
        if key in model:
            group, name = new.split(".")[1:]
            model.setdefault(group, {})[name] = model.pop(key)
    return {**config, "model": model}


def read_config(path: Path, assets_option: Path | None) -> str:
    """The config file at `path` as YAML text with absolute paths, `${assets}` substituted, keys upgraded."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"config file {path} is a folder: give a YAML file (configs/*.yaml)")
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    folder = path.resolve().parent
    own = config.pop("assets", None)
    assets = assets_option or ((folder / Path(own).expanduser()).resolve() if own else None)
    if {"sets"} <= config.keys() and isinstance(config["sets"], dict):
        config["sets"] = {name: _resolve_path(str(location), folder, assets) for name, location in config["sets"].items()}
    return yaml.safe_dump(_resolve(_upgrade_keys(config), folder, assets), sort_keys=False)


def prepare_args(args: list[str]) -> list[str]:
    """Command-line arguments with `--assets DIR` consumed, config files read (see `read_config`), `${assets}`
    substituted in option values and renamed keys upgraded."""
    args = list(args)
    assets = None
    for i, arg in enumerate(args):
        if arg == "--assets" or arg.startswith("--assets="):
            value = arg.partition("=")[2] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
            assets = Path(value).expanduser().resolve()
            del args[i : i + (1 if "=" in arg else 2)]
            break
    prepared, i = [], 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--config="):
            prepared += ["--config", read_config(Path(arg.partition("=")[2]), assets)]
            i += 1
            continue
        if arg in ("--config", "-c") and i + 1 < len(args):
            prepared += ["--config", read_config(Path(args[i + 1]), assets)]
            i += 2
            continue
        key, sep, value = arg[2:].partition("=") if arg.startswith("--") else ("", "", "")
        if key in RENAMED_KEYS:
            arg = f"--{RENAMED_KEYS[key]}{sep}{value}"
        prepared.append(substitute_assets(arg, assets) if ASSETS in arg else arg)
        i += 1
    return prepared
