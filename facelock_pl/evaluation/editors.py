"""Editors that the evaluation runs on clean and protected images.

- `instruct-pix2pix`: diffusers `StableDiffusionInstructPix2PixPipeline` (default `timbrooks/instruct-pix2pix`)
  with the Euler-ancestral scheduler, as in the FaceLock evaluation.
- `img2img`: diffusers `StableDiffusionImg2ImgPipeline` (set `path`, e.g. `stable-diffusion-v1-5/stable-diffusion-v1-5`)
  at `strength` 0.5 with its own scheduler, the published code's second editor.
- `tiny-random`, `tiny-img2img`: the same pipeline classes built from tiny random parts (tests only; see `tiny.py`).
- `vae-roundtrip`: D(E(x)) with a `VAESpec` — prompt-independent, needs no hub: scores what survives the
  editor's autoencoder (the offline evaluation mode).

Every edit of image `uid` with prompt `p` draws its noise from a generator seeded by (seed, uid, p), so
clean and protected edits of one image share noise, and batches do not change results.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from ..seeding import uid_seed
from ..models import VAESpec, load_vae
from ..models.weights import load_pretrained
from ..pixels import levels_to_unit, unit_to_levels

IMG2IMG = ("img2img", "tiny-img2img")


@dataclass
class EditorSpec:
    """Args:
        kind: `instruct-pix2pix`, `img2img` (Stable Diffusion img2img), `tiny-random` / `tiny-img2img` (their
            tiny random pipelines, for tests) or `vae-roundtrip`.
        path: hub id or local folder of the pipeline.
        steps: inference steps (FaceLock's evaluation: 100).
        image_guidance: image guidance scale (1.5).
        guidance: text guidance scale (7.5).
        strength: img2img only: how much of the schedule the image is noised and denoised (0.5, as published).
        dtype: pipeline dtype on CUDA (`float16`, `bfloat16` or `float32`); CPU always runs float32.
        vae: the autoencoder of `vae-roundtrip`.
    """

    kind: Literal["instruct-pix2pix", "img2img", "tiny-random", "tiny-img2img", "vae-roundtrip"] = "instruct-pix2pix"
    path: str = "timbrooks/instruct-pix2pix"
    steps: int = 100
    image_guidance: float = 1.5
    guidance: float = 7.5
    strength: float = 0.5
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    vae: VAESpec = field(default_factory=VAESpec)

    def record(self) -> dict:
        """What decides the edits (for `edit.json`): `strength` only where it acts, so that edits made before img2img
        existed still merge with new ones."""
        values = asdict(self)
        if self.kind not in IMG2IMG:
            del values["strength"]
        return values


def edit_seed(seed: int, uid: str, prompt_id: int) -> int:
    return uid_seed(seed, f"{uid}/{prompt_id}")


class Editor:
    def __init__(self, spec: EditorSpec, device: torch.device):
        self.spec = spec
        self.device = device
        self.pipeline = None
        self.vae = None
        if spec.kind == "vae-roundtrip":
            self.vae = load_vae(spec.vae).to(device)
        else:
            self.pipeline = _pipeline(spec, device)

    @torch.no_grad()
    def __call__(self, levels: torch.Tensor, prompt: str, seeds: list[int]) -> torch.Tensor:
        """Edit uint8 [B, 3, H, W] images with one prompt; returns uint8 [B, 3, H, W]."""
        x = levels_to_unit(levels.to(self.device))
        if self.vae is not None:
            out = (self.vae.decode(self.vae.encode(x * 2 - 1)).clamp(-1, 1) + 1) / 2
        else:
            generators = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]
            guidance = {"strength": self.spec.strength} if self.spec.kind in IMG2IMG else {
                "image_guidance_scale": self.spec.image_guidance}
            out = self.pipeline(
                prompt=[prompt] * len(seeds), image=x.to(self.pipeline.unet.dtype), num_inference_steps=self.spec.steps,
                guidance_scale=self.spec.guidance, generator=generators, output_type="pt", **guidance,
            ).images
        return unit_to_levels(out).cpu()


def _pipeline(spec: EditorSpec, device: torch.device):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionImg2ImgPipeline, StableDiffusionInstructPix2PixPipeline

    from .tiny import tiny_img2img, tiny_instruct_pix2pix

    if spec.kind in ("tiny-random", "tiny-img2img"):
        pipeline = tiny_img2img() if spec.kind == "tiny-img2img" else tiny_instruct_pix2pix()
    else:
        dtype = getattr(torch, spec.dtype) if device.type == "cuda" else torch.float32
        cls = StableDiffusionImg2ImgPipeline if spec.kind == "img2img" else StableDiffusionInstructPix2PixPipeline
        pipeline = load_pretrained(
            lambda source, local_files_only: cls.from_pretrained(source, torch_dtype=dtype, safety_checker=None,
                                                                 local_files_only=local_files_only),
            spec.path, f"the {cls.__name__} {spec.path!r}",
            "Give a local pipeline folder with --editor.path, or use --editor.kind vae-roundtrip to score what "
            "survives the editor's autoencoder offline.",
        )
    if spec.kind == "instruct-pix2pix":  # as the FaceLock evaluation; img2img keeps its own scheduler
        pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)
