"""The paper's metrics, per image.

- PSNR and SSIM (torchmetrics) and LPIPS (the `lpips` reference implementation, through
  `facelock_pl.models.perceptual`) between edit(protected) and edit(clean): a defence wants edits of the
  protected image to differ from edits of the clean one (low PSNR/SSIM, high LPIPS).
- CLIP-S, directional: cos(CLIP_img(edit) − CLIP_img(source), CLIP_txt(prompt)); CLIP-I:
  cos(CLIP_img(source), CLIP_img(edit)) (CLIP from `transformers`).
- FR: cos(FR(source), FR(edit)) with the face detected anew in the edit, over edits with a detected face; an
  edit without one counts towards FDFR (face-detection failure rate). FR-all, as the published evaluation
  aggregates it, scores every edit: where no face is found in the edit, on the crop where the source's face was
  (the published aligner always returns a crop).
Images are uint8 [B, 3, H, W] tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..models.weights import load_pretrained
from ..pixels import levels_to_pil, levels_to_unit


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image pair ([B]); inf for identical images."""
    return peak_signal_noise_ratio(levels_to_unit(a).double(), levels_to_unit(b).double(), data_range=1.0, reduction="none", dim=(1, 2, 3)).float()


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """SSIM per image pair ([B]), Gaussian window 11, sigma 1.5 — in float64: in float32 the variance terms
    E[x²] − μ² cancel badly (constant images score 1e-4 off)."""
    return structural_similarity_index_measure(levels_to_unit(a).double(), levels_to_unit(b).double(), data_range=1.0, reduction="none").float()


@dataclass
class ClipSpec:
    """Args:
        kind: `clip` (transformers `CLIPModel` and `CLIPProcessor`) or `tiny-random` (tests only).
        path: hub id or local folder. The published evaluation uses `openai/clip-vit-base-patch32`;
            `openai/clip-vit-large-patch14` is the larger alternative.
        directional: CLIP-S on the `raw` image and text features, as published (cos(edit − source, text) of the
            unnormalised features), or on unit-`normalised` features.
    """

    kind: Literal["clip", "tiny-random"] = "clip"
    path: str = "openai/clip-vit-base-patch32"
    directional: Literal["raw", "normalised"] = "raw"


class ClipScorer:
    """Image and text features as the published evaluation computes them: `CLIPProcessor` preprocessing
    (PIL bicubic resize of the shortest side, centre crop, CLIP normalisation), `get_*_features`, unnormalised."""

    def __init__(self, spec: ClipSpec, device: torch.device):
        from .tiny import tiny_clip

        if spec.kind == "tiny-random":
            self.model, self.processor = tiny_clip()
        else:
            from transformers import CLIPModel, CLIPProcessor

            self.model, self.processor = load_pretrained(
                lambda source, local_files_only: (CLIPModel.from_pretrained(source, local_files_only=local_files_only),
                                                  CLIPProcessor.from_pretrained(source, local_files_only=local_files_only)),
                spec.path, f"CLIP {spec.path!r}", "Give a local CLIP folder with --clip.path, or --clip null.",
            )
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.device, self.spec = device, spec

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers 4 returns the projected features, 5 a model output whose pooler_output holds them.
        return (output if isinstance(output, torch.Tensor) else output.pooler_output).float()

    @torch.no_grad()
    def image_features(self, levels: torch.Tensor) -> torch.Tensor:
        inputs = self.processor(images=[levels_to_pil(image) for image in levels], return_tensors="pt").to(self.device)
        return self._features(self.model.get_image_features(pixel_values=inputs["pixel_values"]))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]))

    def directional(self, source_img: torch.Tensor, edit_img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        if self.spec.directional == "normalised":
            source_img, edit_img, text = (F.normalize(t, dim=-1) for t in (source_img, edit_img, text))
        return clip_directional(source_img, edit_img, text)


def clip_directional(source_img: torch.Tensor, edit_img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP-S: cos(edit − source, text) ([B]) of the features given (raw, as published, or normalised)."""
    return F.cosine_similarity(edit_img - source_img, text.expand_as(edit_img), dim=-1)


def clip_image(source_img: torch.Tensor, edit_img: torch.Tensor) -> torch.Tensor:
    """CLIP-I: cos(source, edit) ([B])."""
    return F.cosine_similarity(source_img, edit_img, dim=-1)
