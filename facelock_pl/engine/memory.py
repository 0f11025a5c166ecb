"""How many images fit in one PGD step on this GPU (`data.batch_size: auto`)."""

from __future__ import annotations

import torch

from ..pixels import levels_to_pm1
from .attack import PGDAttack


def fits(attack: PGDAttack, size: int, resolution: int) -> bool:
    """Whether one PGD iteration of `size` images, with every term on, fits in GPU memory."""
    device = attack.nets.device
    try:
        levels = torch.randint(0, 256, (size, 3, resolution, resolution), dtype=torch.uint8, device=device)
        clean = attack.clean_features(levels)
        x_in = levels_to_pm1(levels).requires_grad_(True)
        with torch.enable_grad(), attack.speed.autocast(device):
            progress = torch.ones(size, device=device)  # every term on: the most memory
            objective, _ = attack.method.objective(attack.nets, attack.speed.layout(x_in), clean, progress)
        torch.autograd.grad(objective.sum(), x_in)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_batch(attack: PGDAttack, resolution: int, limit: int = 256) -> int:
    """The largest batch whose PGD iteration fits in GPU memory: doubling until out of memory, then keeping
    90% of the last size that fitted (headroom for the slot state and the re-measurement of finished images).
    4 on CPU, where memory is not the limit."""
    if attack.nets.device.type != "cuda":
        return 4
    size, largest = 1, 0
    while size <= limit and fits(attack, size, resolution):
        largest, size = size, size * 2
    if largest == 0:
        raise torch.cuda.OutOfMemoryError(f"not even one {resolution}px image fits in GPU memory")
    return largest if size > limit else max(1, int(largest * 0.9))
