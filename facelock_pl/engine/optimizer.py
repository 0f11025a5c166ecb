"""The PGD update as a `torch.optim.Optimizer`, so Lightning counts PGD iterations in `global_step`.

With manual optimisation, Lightning advances `global_step` only when an optimizer's `step()` runs;
`max_steps`, step-based logging and callbacks rely on it. The iterate is per-batch state, not a
parameter, so it reaches `step()` as keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..kernels import pgd_step_


class SignPGD(torch.optim.Optimizer):
    """Projected sign-gradient ascent: `step(x_adv=, grad=, x=, step_size=, eps=, active=)`."""

    def __init__(self, lo: float = -1.0, hi: float = 1.0):
        # torch.optim.Optimizer refuses an empty parameter list; this placeholder is never updated.
        super().__init__([torch.zeros(0)], {"lo": lo, "hi": hi})

    @torch.no_grad()
    def step(self, closure: Callable | None = None, *, x_adv: torch.Tensor | None = None,
             grad: torch.Tensor | None = None, x: torch.Tensor | None = None,
             step_size: torch.Tensor | float = 0.0, eps: torch.Tensor | float = 0.0,
             active: torch.Tensor | None = None) -> None:
        if closure is not None:
            with torch.enable_grad():
                closure()
        if x_adv is None:
            return
        group = self.param_groups[0]
        pgd_step_(x_adv, grad, x, step_size, eps, group["lo"], group["hi"], active)
