"""`FaceScorer`: identity read the way an evaluation reads it — the face detected in each image, aligned for every
recogniser, embedded — and the verdict of same-person thresholds on it.

`evaluate` and `calibrate` score edits with it; `fit` judges each protected photo with it when recognisers outside
the loss are named (`model.judges`), so the manifest's verdict is the evaluation's for them by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pixels import levels_to_pm1, same_shapes
from .faces import FaceDetector, FaceGeometry, positions
from .recognizers import RecognizerSpec, embed_all, load_recognizers


class FaceScorer(nn.Module):
    """Detect the face in each image, then embed it with every recogniser.

    Args:
        specs: the recognisers (each entry one network behind one crop convention; entries of one network share it).
        device: where the networks run.
    """

    def __init__(self, specs: list[RecognizerSpec], device: torch.device = torch.device("cpu")):
        super().__init__()
        self.detector = FaceDetector()
        self.recognizers = nn.ModuleList(load_recognizers(specs))
        self.names = [spec.label for spec in specs]
        self.thresholds = [spec.threshold for spec in specs]
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.recognizers.parameters()).device

    @torch.no_grad()
    def embed(self, levels: torch.Tensor, fallback: FaceGeometry | None = None) -> tuple[FaceGeometry, list[torch.Tensor]]:
        """The faces detected in [B] images, and per recogniser [B, D] embeddings. Where no face is found, the
        embedding is of the `fallback` geometry (e.g. where the source's face was), else of the whole image."""
        levels = levels.to(self.device)
        geometry = self.detector(levels)
        aligned = geometry if fallback is None else geometry.where_found_else(fallback.to(self.device))
        x = levels_to_pm1(levels)
        thetas = [r.theta(aligned, tuple(x.shape[-2:])) for r in self.recognizers]
        return geometry, embed_all(list(self.recognizers), x, thetas)

    def upright_turns(self, levels: torch.Tensor) -> list[int]:
        """The quarter turns (counter-clockwise) that show each of [B] images ([B, 3, H, W] uint8) upright, as `fit`
        turns a photo lying down (`FaceDetector.upright_turns`)."""
        return self.detector.upright_turns([positions(image) for image in levels])

    def embed_turned(self, levels: torch.Tensor, turns: list[int], fallback: FaceGeometry | None = None
                     ) -> tuple[FaceGeometry, list[torch.Tensor]]:
        """`embed` of each of [B] images turned by its quarter turns (`turns`), in their order; the `fallback`
        geometry is of the images turned. Images whose turned sizes differ are embedded apart."""
        turned = [torch.rot90(image, turn, (1, 2)) for image, turn in zip(levels, turns)]
        parts = [(index, *self.embed(torch.stack([turned[i] for i in index]),
                                     None if fallback is None else fallback.select(index)))
                 for index in same_shapes([image.shape for image in turned])]
        if len(parts) == 1:
            return parts[0][1], parts[0][2]
        order = torch.tensor([i for index, _, _ in parts for i in index]).argsort()
        geometry = FaceGeometry.stack([g for _, g, _ in parts]).select(order)
        return geometry, [torch.cat(columns)[order] for columns in zip(*(e for _, _, e in parts))]

    @torch.no_grad()
    def recognised_by(self, source_levels: torch.Tensor, image_levels: torch.Tensor) -> list[str] | None:
        """The names of the entries whose cosine between the face of one source ([1, 3, H, W] uint8) and the face
        detected anew in one image of it reaches their `threshold`, as `evaluate` counts a match; None where
        either face is not found."""
        source_faces, source_embeddings = self.embed(source_levels)
        faces, embeddings = self.embed(image_levels)
        if not bool(source_faces.found.all() and faces.found.all()):
            return None
        cosines = [float((a * b).sum()) for a, b in zip(source_embeddings, embeddings)]
        return [name for name, cosine, threshold in zip(self.names, cosines, self.thresholds) if cosine >= threshold]
