"""Edit prompts: a YAML list of `{id, prompt}` (default: FaceLock's 25 evaluation prompts)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import yaml

from ..config_files import ConfigError

DEFAULT_PROMPTS = "facelock25"


def load_prompts(location: str = DEFAULT_PROMPTS, ids: list[int] | None = None) -> dict[int, str]:
    """`location`: a YAML file, or the name of a prompt set shipped in `configs/prompts/`."""
    path = Path(location).expanduser()
    if not path.is_file():
        path = Path(str(resources.files("facelock_pl.configs") / "prompts" / f"{location}.yaml"))
    if not path.is_file():
        raise ConfigError(f"prompt file {location!r} not found (a YAML list of {{id, prompt}})")
    prompts = {int(item["id"]): str(item["prompt"]) for item in yaml.safe_load(path.read_text())}
    if ids is not None and not ids:
        raise ConfigError("prompt_ids is empty: name at least one prompt id, or leave it out for every prompt")
    if ids is not None:
        missing = [i for i in ids if i not in prompts]
        if missing:
            raise ConfigError(f"prompt ids {missing} are not in {path}")
        prompts = {i: prompts[i] for i in ids}
    return prompts
