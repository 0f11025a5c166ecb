"""`OUT/protection.json`: the settings a protected set was made with (method, attack, objective, stopping,
autoencoders, recognisers, the working resolution and region). Written by the first run into an output folder; a later run with other settings
is refused, so every image of a folder is protected alike. The evaluation report reads it to show how each
set was made and which recognisers were in its loss.

`OUT/source.json`: where the last run into the folder read its photos, and how (the `data.*` options that name
them); `edit` reads the clean photos from there when it is given no `data.source`."""

from __future__ import annotations

import json
from pathlib import Path

from ..config_files import ConfigError
from .atomic import write_bytes_atomic

SETTINGS_NAME = "protection.json"
SOURCE_NAME = "source.json"
RECORDED_LATER = ("data",)  # groups that folders made by earlier versions lack
# Settings recorded from some version on, as the folders made before it were made (a folder that lacks one).
EARLIER_DEFAULTS = {"data": {"keep_grey": False}, "attack": {"both_positions": False}}


def read_settings(output_dir: Path, name: str = SETTINGS_NAME) -> dict | None:
    path = Path(output_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def record_source(output_dir: Path, reading: dict) -> None:
    write_bytes_atomic(Path(output_dir) / SOURCE_NAME, json.dumps(reading, indent=2).encode())


def keep_settings(output_dir: Path, settings: dict, write: bool) -> None:
    """Refuse `settings` that differ from those the folder was made with; record them if new (when `write`).
    A group earlier versions did not record (`RECORDED_LATER`) is not checked in a folder they made, and a setting
    they did not record is read as what they did (`EARLIER_DEFAULTS`)."""
    settings = json.loads(json.dumps(settings))  # as they read back from JSON
    recorded = read_settings(output_dir)
    if recorded is not None:
        settings = {k: v for k, v in settings.items() if k in recorded or k not in RECORDED_LATER}
        recorded |= {group: earlier | recorded[group] for group, earlier in EARLIER_DEFAULTS.items() if group in recorded}
    if recorded is not None and recorded != settings:
        changed = ", ".join(_change(*difference) for difference in _differences(settings, recorded))
        raise ConfigError(f"{output_dir} holds images protected with other settings ({changed}; see "
                          f"{Path(output_dir) / SETTINGS_NAME}): use a new --output_dir, or the folder's values")
    if recorded is None and write:
        write_bytes_atomic(Path(output_dir) / SETTINGS_NAME, json.dumps(settings, indent=2).encode())


def _differences(new: dict, old: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(name, new value, old value) of the values that differ, named to the setting (`attack.eps`, `data.resolution`)."""
    changed = []
    for key in sorted(new.keys() | old.keys()):
        if isinstance(new.get(key), dict) and isinstance(old.get(key), dict):
            changed += _differences(new[key], old[key], f"{prefix}{key}.")
        elif new.get(key) != old.get(key):
            changed.append((prefix + key, new.get(key), old.get(key)))
    return changed


def _change(name: str, now: object, was: object) -> str:
    """`data.resolution differs: 96 in the folder, 128 now`; the values left out where one is long (a list of
    recognisers)."""
    values = [json.dumps(value) for value in (was, now)]
    return f"{name} differs" + (f": {values[0]} in the folder, {values[1]} now" if max(map(len, values)) <= 40 else "")
