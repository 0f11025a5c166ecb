"""Purifications an attacker (or a photo platform) applies to a protected image before editing.

Specs are strings: `jpeg:75` (re-encode at quality 75; `webp:75`, `avif:60` and `heic:60` re-encode with the codecs
platforms and phones serve today), `blur:1.5` (Gaussian blur, sigma in pixels),
`resize:0.5` (down-scale by 0.5, then back up, antialiased), `colorjitter` or `colorjitter:0.1`
(brightness/contrast/saturation jitter of that strength, drawn from a per-image seed), `grey` or `grey:0.5`
(that share of the colour removed, towards PIL's luma: the free purification of a black-and-white photo, whose
desaturated copy looks the same), `crop:N` (N pixels cut off the top and left edge, the bottom and right border
repeated so the size stays: a crop that moves every 8x8 block of the autoencoders' latent grid where N, at the editor's
working size, is not a multiple of 8; README, "The latent grid's phase"). A chain `A>B` applies A,
then B (`resize:0.5>jpeg:75`: a down-scaled re-upload; labelled `resize0.5-jpeg75`). All work on
uint8 [3, H, W] tensors and are deterministic for a given (spec, uid).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter

from ..config_files import ConfigError
from ..pixels import levels_to_pil, pad_to, pil_to_levels, reencode
from ..seeding import uid_seed

CODECS = {"jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF", "heic": "HEIF"}
KINDS = (*CODECS, "blur", "resize", "colorjitter", "grey", "crop")
DEFAULTS = {"jpeg": 75.0, "webp": 75.0, "avif": 60.0, "heic": 60.0, "blur": 1.5, "resize": 0.5, "colorjitter": 0.1,
            "grey": 1.0, "crop": 4.0}


def parse(spec: str) -> tuple[str, float]:
    """`jpeg:75` -> ("jpeg", 75.0); a `ConfigError` naming the spec for anything else."""
    kind, _, value = spec.partition(":")
    if kind not in KINDS:
        raise ConfigError(f"unknown purification {spec!r}; use one of jpeg:Q, webp:Q, avif:Q, heic:Q, blur:SIGMA, "
                          "resize:SCALE, colorjitter[:S], grey[:S], crop:PIXELS")
    try:
        amount = float(value) if value else DEFAULTS[kind]
    except ValueError:
        raise ConfigError(f"purification {spec!r}: {value!r} is not a number") from None
    out_of_range = ((kind in CODECS and not 1 <= amount <= 100) or (kind == "resize" and not 0 < amount <= 1)
                    or (kind == "grey" and not 0 <= amount <= 1) or (kind == "crop" and amount % 1))
    if out_of_range or not 0 <= amount < math.inf:
        raise ConfigError(f"purification {spec!r} is out of range")
    return kind, amount


def label(spec: str) -> str:
    """A file-name-safe label: `jpeg:75` -> `jpeg75`, `resize:0.5>jpeg:75` -> `resize0.5-jpeg75`."""
    return "-".join(f"{kind}{amount:g}" for kind, amount in map(parse, spec.split(">")))


def apply(spec: str, levels: torch.Tensor, uid: str = "") -> torch.Tensor:
    """Purify one uint8 [3, H, W] image (a chain: each purification in turn)."""
    for part in spec.split(">"):
        levels = _apply_one(part, levels, uid)
    return levels


def _apply_one(spec: str, levels: torch.Tensor, uid: str) -> torch.Tensor:
    kind, amount = parse(spec)
    if kind == "crop":
        pixels = int(amount)
        if pixels >= min(levels.shape[-2:]):
            raise ConfigError(f"purification {spec!r}: the image is only {levels.shape[-1]}x{levels.shape[-2]}")
        return pad_to(levels[:, pixels:, pixels:].contiguous(), *levels.shape[-2:])
    image = levels_to_pil(levels)
    if kind in CODECS:
        return reencode(levels, CODECS[kind], int(amount))
    if kind == "blur":
        return pil_to_levels(image.filter(ImageFilter.GaussianBlur(radius=amount)))
    if kind == "resize":
        small = (max(1, round(image.width * amount)), max(1, round(image.height * amount)))
        down = image.resize(small, Image.Resampling.BICUBIC, reducing_gap=None)
        return pil_to_levels(down.resize(image.size, Image.Resampling.BICUBIC))
    if kind == "grey":
        return pil_to_levels(ImageEnhance.Color(image).enhance(1.0 - amount))
    rng = np.random.default_rng(uid_seed(0, f"colorjitter:{uid}"))
    factors = 1 + rng.uniform(-amount, amount, size=3)
    for enhancer, factor in zip((ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color), factors):
        image = enhancer(image).enhance(float(factor))
    return pil_to_levels(image)
