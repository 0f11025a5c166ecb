"""Pixel conventions and PNG I/O, in one place.

Inside the engine pixels are floats in [-1, 1] ("pm1"). At the edges — decoding, PNG files, evaluation —
they are 8-bit levels: uint8 tensors [3, H, W] or [B, 3, H, W] in 0..255. An L∞ budget ε in [-1, 1] units
allows ⌊ε·127.5⌋ levels of change in the saved 8-bit image (ε = 0.03 → 3 levels).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def levels_to_pm1(levels: torch.Tensor) -> torch.Tensor:
    """uint8 levels -> float32 in [-1, 1]."""
    return levels.float() / 127.5 - 1


def pm1_to_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit image (uint8) of x in [-1, 1], as it would be saved."""
    return torch.round((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


def levels_to_unit(levels: torch.Tensor) -> torch.Tensor:
    """uint8 levels -> float32 in [0, 1] (what torchmetrics, CLIP and kornia expect)."""
    return levels.float() / 255


def unit_to_levels(x: torch.Tensor) -> torch.Tensor:
    """float in [0, 1] -> uint8 levels (rounded, clipped)."""
    return torch.round(x.float().clamp(0, 1) * 255).to(torch.uint8)


def budget_levels(eps: float) -> int:
    """How many 8-bit levels an ε (in [-1, 1] units) allows: ⌊ε·127.5⌋."""
    return math.floor(eps * 127.5 + 1e-6)


def quantise_to_levels(x_adv: torch.Tensor, levels: torch.Tensor, eps: float, fill: bool = False) -> torch.Tensor:
    """The 8-bit image of x_adv that keeps ‖png − source‖∞ ≤ ⌊ε·127.5⌋ levels (`levels`: the 8-bit source).

    fill: every pixel the rounding changes moves the whole budget along the sign of its change (a corner of the
    L∞ ball; at 3 levels the PSNR is ≈ 38.6 dB instead of the ≈ 40 dB a sign-PGD iterate rounds to).
    """
    budget = budget_levels(eps)
    rounded = torch.round((x_adv.float() + 1) * 127.5)
    source = levels.float()
    if fill:
        rounded = source + budget * torch.sign(rounded - source)
    return torch.minimum(torch.maximum(rounded, source - budget), source + budget).clamp(0, 255).to(torch.uint8)


STRIP_PIXELS = 2**18  # pixels per strip of rows (fastest of 2^16..2^22 on a 2-core CPU, for a 48-megapixel photo)


def row_strips(height: int, width: int) -> list[slice]:
    """Slices of rows of about `STRIP_PIXELS` pixels covering `height` rows: work at a photo's native size in strips
    keeps its float temporaries a few MB (one pass over a 48-megapixel photo: GB), and on a CPU runs in cache."""
    rows = max(1, STRIP_PIXELS // max(1, width))
    return [slice(top, top + rows) for top in range(0, height, rows)]


def distortion(levels: torch.Tensor, source_levels: torch.Tensor) -> tuple[int, float]:
    """(‖levels − source‖∞ in levels, the PSNR in dB) of two 8-bit images [C, H, W]; sums in exact integers."""
    linf, squares = 0, 0
    for rows in row_strips(*levels.shape[-2:]):
        diff = levels[:, rows].to(torch.int32) - source_levels[:, rows].to(torch.int32)
        linf, squares = max(linf, int(diff.abs().max())), squares + int(diff.square().sum())
    mse = squares / levels.numel()
    return linf, 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf")


def straight_through_levels(x_adv: torch.Tensor, levels: torch.Tensor, eps: float) -> torch.Tensor:
    """The 8-bit image x_adv would be saved as (in [-1, 1]), with the gradient of the identity
    (straight-through rounding): the forward pass sees exactly the PNG's pixels."""
    saved = levels_to_pm1(quantise_to_levels(x_adv.detach(), levels, eps)).to(x_adv.dtype)
    return x_adv + (saved - x_adv.detach())


def pil_to_levels(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image -> uint8 [3, H, W]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).contiguous()


def levels_to_pil(levels: torch.Tensor) -> Image.Image:
    """uint8 [3, H, W] -> RGB PIL image ([4, H, W] -> RGBA, [2, H, W] -> LA, [1, H, W] -> L)."""
    array = np.ascontiguousarray(levels.permute(1, 2, 0).cpu().numpy())
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def reencode(levels: torch.Tensor, codec: str, quality: int) -> torch.Tensor:
    """uint8 [3, H, W] re-encoded with a lossy `codec` at `quality` and decoded: the re-save a photo platform
    applies. `JPEG` (libjpeg through PIL, 4:2:0 chroma as PIL saves by default), `WEBP`, `AVIF` (Pillow's own) or
    `HEIF` (pillow-heif, registered by `facelock_pl.data`)."""
    buffer = io.BytesIO()
    levels_to_pil(levels).save(buffer, format=codec, quality=int(quality))
    return pil_to_levels(Image.open(buffer))


def png_bytes(levels: torch.Tensor, icc_profile: bytes | None = None, exif: bytes | None = None) -> bytes:
    """Lossless PNG of a uint8 [C, H, W] tensor (C = 3: RGB, 4: RGBA, 1: L, 2: LA), with the colour profile and EXIF
    block given (if any)."""
    buffer = io.BytesIO()
    extra = {k: v for k, v in (("icc_profile", icc_profile), ("exif", exif)) if v}
    levels_to_pil(levels).save(buffer, format="PNG", **extra)
    return buffer.getvalue()


def onto_cutout(levels: torch.Tensor, source_levels: torch.Tensor, cutout: torch.Tensor) -> torch.Tensor:
    """uint8 [4, H, W]: the perturbation of the protected `levels` from `source_levels` (both [3, H, W], flattened
    onto white) added to the colours `cutout` ([4, H, W], RGBA) stores, its alpha kept. Composited onto any
    background it differs from the source by at most the perturbation (the flattened image with its alpha would
    blend the white in twice at soft edges); an editor that drops the alpha reads the stored colours plus the
    perturbation, the protected pixels themselves wherever the cutout is opaque."""
    moved = levels.int() - source_levels.int()
    return torch.cat([(cutout[:3].int() + moved).clamp(0, 255).to(torch.uint8), cutout[3:]])


def working_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """(width, height) an editor working at `resolution` sees: the longest side `resolution`, the aspect ratio
    kept, both sides multiples of 8 (at least 8)."""
    scale = resolution / max(width, height)
    return tuple(max(8, 8 * round(side * scale / 8)) for side in (width, height))


def resize(image: Image.Image, size: tuple[int, int]) -> torch.Tensor:
    """An RGB PIL image resized (antialiased Lanczos) to `size` = (width, height), as uint8 [3, h, w]."""
    same = image.size == tuple(size)
    return pil_to_levels(image if same else image.resize(size, Image.Resampling.LANCZOS, reducing_gap=None))


NATIVE = "native"  # a working resolution that is the image's own size


def resolution_problem(resolution: int | str) -> str | None:
    """Why `resolution` cannot be a working resolution (None when it can): `native`, or at least 32 and a multiple of
    8 (the autoencoders downsample by 8)."""
    if resolution == NATIVE or (isinstance(resolution, int) and resolution >= 32 and resolution % 8 == 0):
        return None
    return f"data.resolution must be 'native', or at least 32 and a multiple of 8 (got {resolution})"


def editor_input(levels: torch.Tensor, resolution: int | str) -> torch.Tensor:
    """What an editor working at `resolution` gets from an 8-bit image [3, H, W]: resized, aspect kept
    (`native`: the image as it is)."""
    if resolution == NATIVE:
        return levels
    return resize(levels_to_pil(levels), working_size(levels.shape[-1], levels.shape[-2], resolution))


def same_shapes(shapes: list[tuple[int, ...]]) -> list[list[int]]:
    """The indices of `shapes` grouped by shape, each group and group in first-seen order: what stacks into a batch."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    return list(groups.values())


def pad_to(levels: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[3, h, w] placed at the top left of a [3, height, width] canvas, the border pixels repeated."""
    h, w = levels.shape[-2:]
    return torch.nn.functional.pad(levels[None].float(), (0, width - w, 0, height - h), mode="replicate")[0].to(levels.dtype)


def turned_region(region: tuple[int, int], turn: int) -> tuple[int, int]:
    """(height, width) of a region after `turn` quarter turns."""
    return region[::-1] if turn % 2 else region


def turn_canvas(canvas: torch.Tensor, region: tuple[int, int], turn: int) -> torch.Tensor:
    """The canvas ([3, H, W]) of a photo in its top-left `region`, with the photo turned by `turn` quarter turns
    (counter-clockwise) and padded again at its bottom and right, as the data pipeline pads: a square canvas stays as
    it is, a photo's own canvas (`data.resolution: native`) turns with it."""
    h, w = region
    return pad_to(torch.rot90(canvas[:, :h, :w], turn, (1, 2)), *turned_region(tuple(canvas.shape[-2:]), turn))


def read_levels(path: str | Path) -> torch.Tensor:
    """uint8 [3, H, W] of an image file (as RGB, a cutout flattened onto white as the photos it was made from are);
    for files this project wrote (PNG edits, protected images)."""
    with Image.open(path) as image:
        return pil_to_levels(flatten_onto_white(image))


def may_be_transparent(image: Image.Image) -> bool:
    """Whether the image's mode can hold transparency: an alpha channel, or a palette with a transparent entry."""
    return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)


def flatten_onto_white(image: Image.Image) -> Image.Image:
    """An image with transparency as most viewers show it, its transparent pixels white (RGB); others as they are."""
    if not may_be_transparent(image):
        return image
    background = Image.new("RGBA", image.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
