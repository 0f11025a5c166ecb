"""Expectation over transformation (EOT): random, differentiable purifications applied to x_adv inside
the loop, so the perturbation survives them (Athalye et al., "Synthesizing Robust Adversarial Examples",
ICML 2018).

Specs (strings, as in configs): `jpeg:Q_LO-Q_HI` (kornia's differentiable JPEG at a uniform random
quality), `jpeg_real:Q_LO-Q_HI` (the real codec, libjpeg through PIL, as a platform re-saves a photo, in the
forward pass; kornia's differentiable JPEG at the same quality gives the gradient: BPDA, Athalye et al. 2018),
`webp_real:Q_LO-Q_HI` (the same with the real WebP codec, libwebp through PIL: the re-save that undoes most, README),
`resize:S_LO-S_HI` (down-scale by a random factor, antialiased, then back up), `blur:S_LO-S_HI`
(Gaussian blur, random sigma in pixels), `shift:PIXELS` (random translation up to that many pixels,
border replicated), `colorjitter:STRENGTH` (brightness/contrast/saturation factors in 1 ± STRENGTH),
`spectrum:RHO` (the spectrum simulation of SSA, Long et al., "Frequency Domain Model Augmentation for Adversarial
Attack", ECCV 2022: Gaussian noise of σ 16/255, then every DCT coefficient of each channel scaled by its own
random factor in 1 ± RHO; a transfer aid, one draw per iteration here where the paper averages 20).
A chain `A>B` applies A, then B (e.g. `resize:0.25-0.75>jpeg_real:50-90`: a down-scaled re-upload).
Each draw picks one transformation (or chain) per image uniformly from the list; parameters come from a generator
seeded by (seed, uid, iteration, draw), so a run is reproducible whatever the batch. Images are in
[-1, 1] and stay differentiable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..pixels import levels_to_pm1, pm1_to_levels, reencode, turn_canvas, turned_region
from ..seeding import uid_generator

DEFAULT_RANGES = {"jpeg": (50.0, 95.0), "jpeg_real": (50.0, 95.0), "webp_real": (50.0, 95.0), "resize": (0.5, 1.0),
                  "blur": (0.0, 1.5), "shift": (0.0, 4.0), "colorjitter": (0.0, 0.1), "spectrum": (0.5, 0.5),
                  "phase": (8.0, 8.0)}
SPECTRUM_NOISE_255 = 16.0  # SSA's σ on the 0-255 scale
REAL_CODECS = {"jpeg_real": "JPEG", "webp_real": "WEBP"}  # the codec in the forward pass, JPEG's gradient (BPDA)
QUALITY_KINDS = {"jpeg", *REAL_CODECS}


@dataclass(frozen=True)
class Transform:
    kind: str
    low: float
    high: float

    @classmethod
    def parse(cls, spec: str) -> "Transform":
        kind, _, value = spec.partition(":")
        if kind not in DEFAULT_RANGES:
            raise ValueError(f"unknown EOT transformation {spec!r}; use jpeg, jpeg_real, webp_real, resize, blur, shift, "
                             "phase, colorjitter or spectrum")
        low, high = DEFAULT_RANGES[kind]
        if value:
            parts = [float(v) for v in value.split("-")]
            low, high = (parts[0], parts[0]) if len(parts) == 1 else parts
            if kind in ("shift", "colorjitter") and len(parts) == 1:
                low, high = 0.0, parts[0]
        if low > high or low < 0 or (kind in QUALITY_KINDS and not 1 <= low <= high <= 100) or (
                kind in ("resize", "spectrum") and high > 1) or (kind == "phase" and (low != high or low < 1 or low % 1)):
            raise ValueError(f"EOT transformation {spec!r} has an invalid range")
        return cls(kind, low, high)

    def apply(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Transform images x [B, 3, H, W] with parameters from uniform draws u [B, 3] in [0, 1)."""
        amount = self.low + (self.high - self.low) * u[:, 0]
        if self.kind == "jpeg":
            return _differentiable_jpeg(x, amount)
        if self.kind in REAL_CODECS:
            quality = amount.round()
            surrogate = _differentiable_jpeg(x, quality)
            codec = REAL_CODECS[self.kind]
            real = torch.stack([levels_to_pm1(reencode(pm1_to_levels(xi.detach().float().cpu()), codec, int(q)))
                                for xi, q in zip(x, quality.tolist())]).to(x)
            return surrogate + (real - surrogate).detach()
        if self.kind == "resize":
            size = x.shape[-2:]
            return torch.cat([
                F.interpolate(F.interpolate(xi[None], scale_factor=float(s), mode="bilinear", antialias=True,
                                            align_corners=False), size=size, mode="bilinear", align_corners=False)
                for xi, s in zip(x, amount.tolist())
            ])
        if self.kind == "blur":
            from kornia.filters import gaussian_blur2d

            sigma = amount.clamp_min(1e-3)[:, None].expand(-1, 2).to(x)
            return gaussian_blur2d(x, kernel_size=2 * int(3 * self.high + 0.5) + 1, sigma=sigma, border_type="reflect")
        if self.kind == "spectrum":
            return _spectrum_simulation(x, amount, u[:, 1])
        if self.kind == "phase":
            return _whole_pixel_shift(x, u[:, :2], int(self.high))
        if self.kind == "shift":
            from kornia.geometry.transform import translate

            angle = u[:, 1] * 2 * torch.pi
            offset = torch.stack([amount * torch.cos(angle), amount * torch.sin(angle)], dim=1).to(x)
            return translate(x, offset, padding_mode="border", align_corners=False)
        from kornia.enhance import adjust_brightness, adjust_contrast, adjust_saturation

        factors = 1 + (u * 2 - 1) * amount[:, None]
        image = (x + 1) / 2
        image = adjust_brightness(image, (factors[:, 0] - 1).to(x))
        image = adjust_contrast(image, factors[:, 1].to(x))
        image = adjust_saturation(image, factors[:, 2].to(x))
        return image.clamp(0, 1) * 2 - 1


def _whole_pixel_shift(x: torch.Tensor, u: torch.Tensor, period: int) -> torch.Tensor:
    """Images x [B, 3, H, W] moved by whole pixels, −period/2 to period/2 − 1 each way (from uniforms u [B, 2]), the
    border repeated: at period 8, every phase of the autoencoders' latent grid, which a crop of the photo by a few
    pixels changes (a protection optimised at one phase alone is mostly lost at the others; README, "The latent
    grid's phase"). Whole pixels: nothing is resampled, so the image is not blurred as a sub-pixel `shift` blurs it."""
    height, width = x.shape[-2:]
    pad = period // 2
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = (u * period).long().clamp_max(period - 1).tolist()
    return torch.cat([padded[i : i + 1, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(offsets)])


@functools.lru_cache(maxsize=8)
def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II as an [n, n] matrix (float64, CPU): `C @ v` transforms, `C.T @ V` inverts."""
    k, i = torch.arange(n, dtype=torch.float64)[:, None], torch.arange(n, dtype=torch.float64)[None]
    matrix = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2 / n) ** 0.5
    matrix[0] /= 2**0.5
    return matrix


def _spectrum_simulation(x: torch.Tensor, rho: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    """SSA's transformation of x [B, 3, H, W] in [-1, 1], on the [0, 1] scale as published: noise, then each
    channel's 2-D DCT coefficients scaled by factors in 1 ± rho, then back. `seeds` [B] in [0, 1) seed each image's
    noise and factors, so a draw depends on the image and iteration alone."""
    height, width = x.shape[-2:]
    rows, cols = dct_matrix(height).to(x), dct_matrix(width).to(x)
    out = []
    for image, r, seed in zip(x, rho.tolist(), seeds.tolist()):
        generator = torch.Generator().manual_seed(int(seed * 2**31))
        noise = torch.randn(image.shape, generator=generator) * (SPECTRUM_NOISE_255 / 255)
        factors = 1 + (torch.rand(image.shape, generator=generator) * 2 - 1) * r
        spectrum = rows @ ((image + 1) / 2 + noise.to(x)) @ cols.T
        out.append((rows.T @ (spectrum * factors.to(x)) @ cols).clamp(0, 1) * 2 - 1)  # an image again, as EOT's others
    return torch.stack(out)


def parse_chain(spec: str) -> list[Transform]:
    """The transformations of an EOT spec, applied in turn (`A>B`: A, then B); `ValueError` for one it cannot take."""
    return [Transform.parse(part) for part in spec.split(">")]


def _differentiable_jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    from kornia.enhance import jpeg_codec_differentiable

    return jpeg_codec_differentiable((x + 1) / 2, quality.to(x)).clamp(0, 1) * 2 - 1


class RandomPurification:
    """Draws one of `chains` (each one transformation, or several applied in turn) per image and applies it;
    `draws(...)` gives reproducible uniforms."""

    def __init__(self, specs: list[str]):
        if not specs:
            raise ValueError("EOT needs at least one transformation")
        self.chains = [parse_chain(spec) for spec in specs]
        self.width = 1 + 3 * max(len(chain) for chain in self.chains)

    def draws(self, seed: int, uids: list[str], iterations: torch.Tensor, draw: int) -> torch.Tensor:
        """[B, width] uniforms: column 0 picks the chain, then 3 per transformation of it for its parameters."""
        return per_image_uniforms("eot", self.width, seed, uids, iterations, draw)

    def __call__(self, x: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        uniforms = uniforms.to(x.device)
        choice = (uniforms[:, 0] * len(self.chains)).long().clamp_max(len(self.chains) - 1)
        out = torch.empty_like(x)
        for k, chain in enumerate(self.chains):
            picked = (choice == k).nonzero().flatten()
            if len(picked):
                y = x[picked]
                for j, transform in enumerate(chain):
                    y = transform.apply(y, uniforms[picked, 1 + 3 * j: 4 + 3 * j])
                out[picked] = y.to(x.dtype)
        return out


@dataclass(frozen=True)
class StoredPosition:
    """Photos optimised turned upright, as an editor that takes the file as it is sees them: its autoencoder runs on
    each photo in the position the photo is stored in, and the recognisers (which need the face upright) read the
    reconstruction turned upright again. Such a photo is protected only against the editor its loss saw: protected
    upright alone, the autoencoder run on it as it lies gave back most of the identity (README, "Photos lying down").

    Args:
        turns: per image, the quarter turns (counter-clockwise) that turned its stored photo upright (0: it stands
            upright in its file).
        regions: per image, the photo's (height, width) upright in the top left of its canvas.
    """

    turns: list[int]
    regions: list[tuple[int, int]]

    def lay_down(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] upright canvases → each photo turned back as it is stored (a square canvas keeps its shape)."""
        return torch.stack([turn_canvas(xi, region, -turn) if turn else xi
                            for xi, region, turn in zip(x, self.regions, self.turns)])

    def stand_up(self, images: torch.Tensor) -> torch.Tensor:
        """The inverse of `lay_down`: [B, 3, H, W] canvases of the stored photos → turned upright again."""
        return torch.stack([turn_canvas(image, turned_region(region, turn), turn) if turn else image
                            for image, region, turn in zip(images, self.regions, self.turns)])


def crop_draws(seed: int, uids: list[str], iterations: torch.Tensor, draw: int) -> torch.Tensor:
    """[B, 4] uniforms of the crop jitter (`models.faces.jitter_theta`)."""
    return per_image_uniforms("crop", 4, seed, uids, iterations, draw)


def per_image_uniforms(kind: str, width: int, seed: int, uids: list[str], iterations: torch.Tensor, draw: int) -> torch.Tensor:
    """[B, width] uniforms in [0, 1) that depend on (kind, seed, uid, iteration, draw) alone, not on the batch."""
    return torch.stack([torch.rand(width, generator=uid_generator(seed, f"{kind}/{uid}/{iteration}/{draw}"))
                        for uid, iteration in zip(uids, iterations.tolist())])
