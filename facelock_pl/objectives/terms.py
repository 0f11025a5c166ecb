"""Objective terms, each per sample ([B]), and the clean-image features they compare against.

`CleanFeatures` holds everything about the clean image x that stays fixed during the attack
(E(x), each recogniser's alignment and FR(x), LPIPS features of x): computed once per image by
`Networks.clean_features`, never per iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..models import FaceGeometry, FaceRecognizer, FrozenVAE, LPIPSDistance

# Every term any method can report; manifests carry one `term_<name>` column for each.
TERM_NAMES = ("fr_cos", "latent_mse", "lpips", "latent_target_dist", "recon_norm")


@dataclass
class CleanFeatures:
    latent: torch.Tensor | None  # E(x), [B, C, h, w]
    thetas: list[torch.Tensor]  # per recogniser: sampling matrices [B, 2, 3]
    embeddings: list[torch.Tensor]  # per recogniser: FR(x), [B, D]
    lpips_features: list[torch.Tensor] | None
    face_found: torch.Tensor  # [B] bool

    def _map(self, fn) -> "CleanFeatures":
        def each(tensors):
            return None if tensors is None else [fn(t) for t in tensors]

        return CleanFeatures(None if self.latent is None else fn(self.latent), each(self.thetas), each(self.embeddings),
                             each(self.lpips_features), fn(self.face_found))

    def select(self, index: torch.Tensor) -> "CleanFeatures":
        """The features of samples `index` (a gather: the result does not share memory)."""
        return self._map(lambda t: t[index])

    def slots(self, count: int) -> "CleanFeatures":
        """Zero-filled storage for `count` samples shaped like these features."""
        return self._map(lambda t: t.new_zeros((count, *t.shape[1:])))

    def assign_(self, index: torch.Tensor, other: "CleanFeatures") -> None:
        """Write `other`'s samples into positions `index` (the slots being refilled)."""
        def put(mine, theirs):
            for m, t in zip(mine or [], theirs or []):
                m[index] = t
        put([self.latent] if self.latent is not None else None, [other.latent] if other.latent is not None else None)
        put(self.thetas, other.thetas)
        put(self.embeddings, other.embeddings)
        put(self.lpips_features, other.lpips_features)
        self.face_found[index] = other.face_found


class Networks(nn.Module):
    """The frozen networks of an attack, and the terms computed with them."""

    def __init__(
        self,
        vae: FrozenVAE,
        recognizers: list[FaceRecognizer],
        lpips: LPIPSDistance | None,
        fr_reduction: Literal["mean", "max"] = "mean",
    ):
        super().__init__()
        self.vae = vae
        self.recognizers = nn.ModuleList(recognizers)
        self.lpips = lpips
        self.fr_reduction = fr_reduction
        weights = torch.tensor([r.spec.weight for r in recognizers], dtype=torch.float32)
        self.fr_weights = (weights / weights.sum()).tolist() if recognizers else []

    @torch.no_grad()
    def clean_features(self, x: torch.Tensor, geometry: FaceGeometry, need_latent: bool, need_lpips: bool) -> CleanFeatures:
        thetas = [r.theta(geometry, tuple(x.shape[-2:])) for r in self.recognizers]
        return CleanFeatures(
            latent=self.vae.encode(x).float() if need_latent else None,
            thetas=thetas,
            embeddings=[r.embed(x, t) for r, t in zip(self.recognizers, thetas)],
            lpips_features=self.lpips.features(x) if need_lpips and self.lpips is not None else None,
            face_found=geometry.found,
        )

    def reconstruct(self, latent: torch.Tensor) -> torch.Tensor:
        """D(z), clipped to the valid range as FaceLock does before FR and LPIPS."""
        return self.vae.decode(latent).clamp(-1, 1)

    def fr_cos(self, images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """Ensemble cosine similarity between FR(images) and FR(x): weighted mean or worst case (max)."""
        cosines = torch.stack(
            [(r.embed(images, t) * e).sum(1) for r, t, e in zip(self.recognizers, clean.thetas, clean.embeddings)]
        )
        if self.fr_reduction == "max":
            return cosines.max(0).values
        return (torch.tensor(self.fr_weights, device=cosines.device)[:, None] * cosines).sum(0)

    @staticmethod
    def latent_mse(latent: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        return (latent.float() - clean.latent).pow(2).flatten(1).mean(1)

    def lpips_distance(self, images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        return self.lpips.distance(clean.lpips_features, images).float()
