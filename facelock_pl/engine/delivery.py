"""From the working canvas to the photo the person has.

The optimisation runs at the editor's working size; the protected image is the whole source frame at its own
size: the perturbation δ = x_adv − x of the image's region is resized to the native size (bicubic, antialiased
when shrinking), added to the native source, projected into its ε-ball and quantised to 8 bits there, so
‖png − source‖∞ ≤ ⌊ε·127.5⌋ holds at native size. Where the working size is the native size, the iterate itself
is quantised (nothing is resampled).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data.items import FaceCrop
from ..pixels import levels_to_pm1, quantise_to_levels, row_strips


def deliver(x_adv: torch.Tensor, x: torch.Tensor, region: tuple[int, int], native: torch.Tensor, eps: float,
            crops: list[FaceCrop] | None = None, fill: bool = False) -> torch.Tensor:
    """The protected native image (uint8 [3, H, W]) of one canvas iterate `x_adv` ([3, R, R], source canvas `x`);
    with `crops` (face-region mode), each cell of the canvas shows a square of the frame, and only those change;
    `fill`: every changed pixel moves the whole budget (`pixels.quantise_to_levels`), at native size."""
    if crops:
        protected = native.clone().to(x_adv.device)
        for crop in crops:
            square, cell = (slice(None), *crop.square), (slice(None), *crop.cell)
            protected[square] = deliver(x_adv[cell], x[cell], (crop.cell_side, crop.cell_side), native[square], eps,
                                        fill=fill)
        return protected
    h, w = region
    native = native.to(x_adv.device)
    if (h, w) == tuple(native.shape[-2:]):
        return quantise_to_levels(x_adv[:, :h, :w], native, eps, fill)
    delta = (x_adv - x)[None, :, :h, :w]
    delta = F.interpolate(delta, size=tuple(native.shape[-2:]), mode="bicubic", align_corners=False, antialias=True)[0]
    # In strips: the same pixels as one pass, which takes 3.8 GB of float32 temporaries for a 48-megapixel photo.
    protected = torch.empty_like(native)
    for rows in row_strips(*native.shape[-2:]):
        protected[:, rows] = quantise_to_levels(levels_to_pm1(native[:, rows]) + delta[:, rows], native[:, rows], eps,
                                                fill)
    return protected
