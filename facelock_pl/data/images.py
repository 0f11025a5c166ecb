"""Decoding, normalising and naming input images.

Whatever the file (grayscale, RGBA, CMYK, palette, 16-bit, EXIF-rotated), `load_rgb` gives an RGB PIL
image or raises `BadImageError` with a reason a person can act on. `square_resize` centre-crops to a
square and resizes with antialiasing to the working resolution, as 8-bit levels: the image the user
would otherwise publish, and the x that ε bounds.
"""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ..pixels import pil_to_levels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb guard: ~10k x 10k
_UID_MAX_LEN = 120


class BadImageError(ValueError):
    """An input that cannot become a protected image; the message says why, `size` is (width, height) when the
    header could be read."""

    def __init__(self, message: str, size: tuple[int, int] = (0, 0)):
        super().__init__(message)
        self.size = size


def load_rgb(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 32) -> Image.Image:
    """Decode a path or encoded bytes to an upright 8-bit RGB image. Animated images (GIF, WebP, APNG with
    several frames) are refused: protecting one frame would silently drop the others."""
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError as error:
        raise BadImageError(f"not a decodable image ({error})") from error
    except Image.DecompressionBombError as error:  # PIL's own guard, at twice its MAX_IMAGE_PIXELS
        raise BadImageError(f"image too large to decode safely: {error} (decompression-bomb guard)") from error
    except OSError as error:
        raise BadImageError(f"corrupt or unreadable image data ({error})") from error
    size = width, height = image.size
    # Checked before decoding the pixels, so a decompression bomb never allocates.
    if width * height > max_pixels:
        raise BadImageError(f"image of {width}x{height} pixels exceeds max_pixels={max_pixels} (decompression-bomb guard)", size)
    if min(width, height) < min_side:
        raise BadImageError(f"image of {width}x{height} pixels is smaller than min_side={min_side}", size)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise BadImageError(f"animated image with {frames} frames: only still images can be protected (extract the "
                            "frames and protect each)", size)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"corrupt image data ({error})", size) from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit grayscale: PIL's convert("RGB") would clip at 255; rescale to 8 bits instead.
        levels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if levels.max() > 255 else 255.0
        return Image.fromarray(np.clip(levels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white, as most viewers show them.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, CMYK, YCbCr, RGB...


def square_resize(image: Image.Image, resolution: int) -> torch.Tensor:
    """Centre square crop, antialiased resize: uint8 tensor [3, resolution, resolution]."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    square = image.crop((left, top, left + side, top + side))
    return pil_to_levels(square.resize((resolution, resolution), Image.Resampling.LANCZOS, reducing_gap=None))


def make_uid(name: str, keep_suffix: bool = False) -> str:
    """A stable id that is always a safe single file name.

    The image suffix is dropped (`a/b.jpg` -> `a__b`) unless `keep_suffix` (`a__b.jpg`, for files whose stems
    collide). Path separators become `__`, anything outside [A-Za-z0-9._-] becomes `_`, leading dots are
    dropped (no `..`, no hidden files). When that changes the name, or it is too long, a short hash of the
    original name is appended so that distinct names never collide.
    """
    stem = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in IMAGE_SUFFIXES and not keep_suffix else name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem.replace("\\", "/").replace("/", "__")).lstrip(".")
    if safe != stem.replace("/", "__") or not safe or len(safe) > _UID_MAX_LEN:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:_UID_MAX_LEN]}-{digest}" if safe else digest
    return safe


def unique_uid(candidate: str, taken: set[str], key: str) -> str:
    """`candidate`, or candidate plus a hash of `key` (longer until it is free) when `taken` holds it."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
    for length in (8, 16, 40):
        if candidate not in taken:
            return candidate
        candidate = f"{candidate}-{digest[:length]}"
    count = 2
    while f"{candidate}-{count}" in taken:
        count += 1
    return f"{candidate}-{count}"
