"""Editors that the evaluation runs on clean and protected images.

- `instruct-pix2pix`: diffusers `StableDiffusionInstructPix2PixPipeline` (default `timbrooks/instruct-pix2pix`)
  with the Euler-ancestral scheduler, as in the FaceLock evaluation.
- `tiny-random`: the same pipeline class built from tiny random parts (tests only; see `tiny.py`).
- `vae-roundtrip`: D(E(x)) with a `VAESpec` — prompt-independent, needs no hub: scores what survives the
  editor's autoencoder (the offline evaluation mode).

Every edit of image `uid` with prompt `p` draws its noise from a generator seeded by (seed, uid, p), so
clean and protected edits of one image share noise, and batches do not change results.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..seeding import uid_seed
from ..models import VAESpec, load_vae
from ..models.weights import load_pretrained
from ..pixels import levels_to_unit, unit_to_levels


@dataclass
class EditorSpec:
    """Args:
        kind: `instruct-pix2pix`, `tiny-random` or `vae-roundtrip`.
        path: hub id or local folder of the InstructPix2Pix pipeline.
        steps: inference steps (FaceLock's evaluation: 100).
        image_guidance: image guidance scale (1.5).
        guidance: text guidance scale (7.5).
        dtype: pipeline dtype on CUDA (`float16`, `bfloat16` or `float32`); CPU always runs float32.
        vae: the autoencoder of `vae-roundtrip`.
    """

    kind: Literal["instruct-pix2pix", "tiny-random", "vae-roundtrip"] = "instruct-pix2pix"
    path: str = "timbrooks/instruct-pix2pix"
    steps: int = 100
    image_guidance: float = 1.5
    guidance: float = 7.5
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    vae: VAESpec = field(default_factory=VAESpec)


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
            out = self.pipeline(
                prompt=[prompt] * len(seeds), image=x.to(self.pipeline.unet.dtype), num_inference_steps=self.spec.steps,
                image_guidance_scale=self.spec.image_guidance, guidance_scale=self.spec.guidance,
                generator=generators, output_type="pt",
            ).images
        return unit_to_levels(out).cpu()


def _pipeline(spec: EditorSpec, device: torch.device):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from .tiny import tiny_instruct_pix2pix

    if spec.kind == "tiny-random":
        pipeline = tiny_instruct_pix2pix()
    else:
        dtype = getattr(torch, spec.dtype) if device.type == "cuda" else torch.float32
        pipeline = load_pretrained(
            lambda source, local_files_only: StableDiffusionInstructPix2PixPipeline.from_pretrained(
                source, torch_dtype=dtype, safety_checker=None, local_files_only=local_files_only),
            spec.path, f"the InstructPix2Pix pipeline {spec.path!r}",
            "Give a local pipeline folder with --editor.path, or use --editor.kind vae-roundtrip to score what "
            "survives the editor's autoencoder offline.",
        )
        pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)
