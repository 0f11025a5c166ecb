"""Per-sample schedules of the PGD loop, and per-image random starts."""

from __future__ import annotations

import torch

from ..seeding import uid_generator


def step_sizes(step_size: float, iteration: torch.Tensor, iterations: int) -> torch.Tensor:
    """FaceLock's linear decay, per sample: α_i = α − (α − α/100) · i / N ([B] float32)."""
    return step_size - (step_size - step_size / 100) * iteration.float() / iterations


def random_start(x: torch.Tensor, uids: list[str], seed: int, eps: float) -> torch.Tensor:
    """x + U(−ε, ε), clipped to [-1, 1]. Each image's noise depends only on (seed, uid): not on its batch,
    its position in it, the device or the number of processes."""
    noise = torch.stack([torch.rand(x.shape[1:], generator=uid_generator(seed, uid)) for uid in uids])
    return (x + (noise * 2 - 1).to(x) * eps).clamp(-1, 1)
