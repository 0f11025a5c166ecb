"""The paper's metrics, per image.

- PSNR and SSIM (torchmetrics) and LPIPS (the `lpips` reference implementation, through
  `facelock_pl.models.perceptual`) between edit(protected) and edit(clean): a defence wants edits of the
  protected image to differ from edits of the clean one (low PSNR/SSIM, high LPIPS).
- CLIP-S, directional: cos(CLIP_img(edit) − CLIP_img(source), CLIP_txt(prompt)); CLIP-I:
  cos(CLIP_img(source), CLIP_img(edit)) (CLIP from `transformers`).
- FR: cos(FR(source), FR(edit)) with the face detected anew in the edit; an edit without a detectable
  face has no FR and counts towards FDFR (face-detection failure rate).
Images are uint8 [B, 3, H, W] tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

from ..models import FaceDetector, RecognizerSpec, load_recognizer
from ..models.weights import load_pretrained
from ..pixels import levels_to_pm1, levels_to_unit

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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
        kind: `clip` (transformers `CLIPModel`) or `tiny-random` (tests only).
        path: hub id or local folder.
    """

    kind: Literal["clip", "tiny-random"] = "clip"
    path: str = "openai/clip-vit-large-patch14"


class ClipScorer:
    def __init__(self, spec: ClipSpec, device: torch.device):
        from .tiny import tiny_clip

        if spec.kind == "tiny-random":
            self.model, self.tokenizer = tiny_clip()
        else:
            from transformers import CLIPModel, CLIPTokenizer

            self.model, self.tokenizer = load_pretrained(
                lambda source, local_files_only: (CLIPModel.from_pretrained(source, local_files_only=local_files_only),
                                                  CLIPTokenizer.from_pretrained(source, local_files_only=local_files_only)),
                spec.path, f"CLIP {spec.path!r}", "Give a local CLIP folder with --clip.path, or --clip null.",
            )
        self.model = self.model.eval().requires_grad_(False).to(device)
        self.device = device
        self.size = self.model.config.vision_config.image_size

    @staticmethod
    def _features(output) -> torch.Tensor:
        # transformers 4 returns the projected features, 5 a model output whose pooler_output holds them.
        return F.normalize((output if isinstance(output, torch.Tensor) else output.pooler_output).float(), dim=-1)

    @torch.no_grad()
    def image_features(self, levels: torch.Tensor) -> torch.Tensor:
        """CLIP preprocessing (shortest side to the model size, bicubic, centre crop, CLIP normalisation)."""
        x = levels_to_unit(levels).to(self.device)
        h, w = x.shape[-2:]
        scale = self.size / min(h, w)
        x = F.interpolate(x, size=(max(self.size, round(h * scale)), max(self.size, round(w * scale))), mode="bicubic",
                          antialias=True, align_corners=False).clamp(0, 1)
        top, left = (x.shape[-2] - self.size) // 2, (x.shape[-1] - self.size) // 2
        x = x[..., top : top + self.size, left : left + self.size]
        mean = torch.tensor(CLIP_MEAN, device=self.device)[:, None, None]
        std = torch.tensor(CLIP_STD, device=self.device)[:, None, None]
        return self._features(self.model.get_image_features(pixel_values=(x - mean) / std))

    @torch.no_grad()
    def text_features(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        return self._features(self.model.get_text_features(**tokens))


def clip_directional(source_img: torch.Tensor, edit_img: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP-S: cos(edit − source, text) of normalised features ([B])."""
    return F.cosine_similarity(edit_img - source_img, text.expand_as(edit_img), dim=-1)


def clip_image(source_img: torch.Tensor, edit_img: torch.Tensor) -> torch.Tensor:
    """CLIP-I: cos(source, edit) ([B])."""
    return F.cosine_similarity(source_img, edit_img, dim=-1)


class FaceScorer:
    """Detect the face in each image, then embed it with every recogniser."""

    def __init__(self, specs: list[RecognizerSpec], device: torch.device):
        self.detector = FaceDetector().to(device)
        self.recognizers = [load_recognizer(spec).to(device) for spec in specs]
        self.names = [spec.label for spec in specs]
        self.thresholds = [spec.threshold for spec in specs]
        self.device = device

    @torch.no_grad()
    def embed(self, levels: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """found [B] bool, and per recogniser [B, D] embeddings (meaningless where not found)."""
        levels = levels.to(self.device)
        geometry = self.detector(levels)
        x = levels_to_pm1(levels)
        return geometry.found, [r.embed(x, r.theta(geometry, tuple(x.shape[-2:]))) for r in self.recognizers]
