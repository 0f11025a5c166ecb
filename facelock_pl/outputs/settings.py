"""`OUT/protection.json`: the settings a protected set was made with (method, attack, objective, stopping,
autoencoders, recognisers). Written by the first run into an output folder; a later run with other settings
is refused, so every image of a folder is protected alike. The evaluation report reads it to show how each
set was made and which recognisers were in its loss."""

from __future__ import annotations

import json
from pathlib import Path

from ..config_files import ConfigError
from .atomic import write_bytes_atomic

SETTINGS_NAME = "protection.json"


def read_settings(output_dir: Path) -> dict | None:
    path = Path(output_dir) / SETTINGS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def keep_settings(output_dir: Path, settings: dict, write: bool) -> None:
    """Refuse `settings` that differ from those the folder was made with; record them if new (when `write`)."""
    settings = json.loads(json.dumps(settings))  # as they read back from JSON
    recorded = read_settings(output_dir)
    if recorded is not None and recorded != settings:
        changed = sorted(k for k in settings.keys() | recorded.keys() if settings.get(k) != recorded.get(k))
        raise ConfigError(f"{output_dir} holds images protected with other settings ({', '.join(changed)} differ; see "
                          f"{Path(output_dir) / SETTINGS_NAME}): use a new --output_dir")
    if recorded is None and write:
        write_bytes_atomic(Path(output_dir) / SETTINGS_NAME, json.dumps(settings, indent=2).encode())
