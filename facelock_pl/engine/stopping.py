"""Adaptive stopping: one rule, measured one way."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AdaptiveStopping:
    """Stop protecting an image once its protection is reached, and give its slot to the next image.

    Every `check_every` iterations from `min_iterations` on, the image's current iterate is measured as it
    would be saved: `fr_cos_recon` of its 8-bit image (the manifest column of that name). An image below
    `below` at `patience` checks in a row stops and takes no further step, so the saved file is the one
    measured. Only images with a detected face are checked (the others run every iteration).

    Args:
        below: the target `fr_cos_recon`; None: off (every image runs all its iterations).
        patience: checks in a row below the target.
        check_every: iterations between checks.
        min_iterations: no check before this iteration.
    """

    below: float | None = None
    patience: int = 2
    check_every: int = 5
    min_iterations: int = 40

    def __post_init__(self) -> None:
        if self.patience < 1 or self.check_every < 1 or self.min_iterations < 0:
            raise ValueError(f"adaptive stopping needs patience >= 1, check_every >= 1, min_iterations >= 0 (got "
                             f"{self.patience}, {self.check_every}, {self.min_iterations})")

    @property
    def enabled(self) -> bool:
        return self.below is not None

    def due(self, iteration: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
        """Slots ([B] bool) whose image is checked at this iteration."""
        return eligible & (iteration >= self.min_iterations) & (iteration % self.check_every == 0)

    def record_(self, streak: torch.Tensor, slots: torch.Tensor, fr_cos: torch.Tensor) -> None:
        """Count, in place, the checks in a row below the target of the images in `slots`."""
        streak[slots] = torch.where(fr_cos < self.below, streak[slots] + 1, torch.zeros_like(streak[slots]))

    def stopped(self, streak: torch.Tensor) -> torch.Tensor:
        return streak >= self.patience
