"""What the input gradient goes through before the sign step: the grey constraint, then the transfer aids.

- Gaussian smoothing, the translation-invariant attack (TI; Dong et al., "Evading Defenses to
  Transferable Adversarial Examples by Translation-Invariant Attacks", CVPR 2019): the sign of a smoothed
  gradient moves whole patches together, so the perturbation lives in low spatial frequencies that JPEG
  and down-scaling keep.
- Momentum (MI; Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018): the step follows
  an average of L1-normalised past gradients, which is less tied to one network's local quirks.
"""

from __future__ import annotations

import torch


def smooth_gradient(grad: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of each channel of `grad` ([B, C, H, W]) with std `sigma` pixels (3σ support)."""
    from kornia.filters import gaussian_blur2d

    size = 2 * max(1, round(3 * sigma)) + 1
    return gaussian_blur2d(grad, kernel_size=size, sigma=(sigma, sigma), border_type="reflect")


def momentum_update_(velocity: torch.Tensor, grad: torch.Tensor, decay: float) -> torch.Tensor:
    """In place: velocity ← decay · velocity + grad / mean|grad| (per sample); returns velocity."""
    scale = grad.abs().flatten(1).mean(1).clamp_min(1e-20).view(-1, *[1] * (grad.dim() - 1))
    return velocity.mul_(decay).add_(grad / scale)


def grey_where(grad: torch.Tensor, grey: torch.Tensor) -> torch.Tensor:
    """`grad` ([B, C, H, W]) with the rows where `grey` ([B] bool) is set replaced by their channel sum, broadcast: a
    photo without colour keeps a grey perturbation (δ_r = δ_g = δ_b), whose steepest ascent is along that sum."""
    return torch.where(grey.view(-1, 1, 1, 1), grad.sum(1, keepdim=True).expand_as(grad), grad)
