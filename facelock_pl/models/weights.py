"""Where weights come from, and the one error raised when they cannot be had.

Every loader takes a hub id or a local path. Hub downloads honour `HF_HUB_OFFLINE`, `HF_HOME` and
`TORCH_HOME`. There is never a silent fallback to random weights: a loader that cannot find its
weights raises `WeightsUnavailableError`, and the run stops before any image is touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


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


def torch_checkpoint_dir() -> Path:
    """`$TORCH_HOME/hub/checkpoints`, where torchvision and torch.hub cache downloads."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def facenet_pytorch_cache_dir() -> Path:
    """`$TORCH_HOME/checkpoints`, where facenet-pytorch caches its released weights."""
    return Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch")))) / "checkpoints"


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors`, or from a `.pt`/`.pth` file (tensors only, no pickled code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
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
