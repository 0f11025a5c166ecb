"""How much identity survives the editor's autoencoder: `fr_cos_recon` of a saved 8-bit image.

The protected native image is resized to the working size, as the editor would, and goes through the primary
autoencoder's round trip D(E(png)) (the editor the manifest reports on); then every recogniser compares the
reconstruction's face with the clean one:
- `fr_cos_recon`: aligned as the objective aligns (the source's landmarks, or re-read off the reconstruction
  with `objective.realign`);
- `fr_cos_recon_detected`: the reconstruction saved as 8 bits and its face detected anew, as `evaluate`
  and any real recognition pipeline measure it (NaN where no face is found). Landmarks move by a few
  pixels in the reconstruction, and a perturbation tuned to the source's alignment loses part of its effect;
- `recognised_by`: on that detected face, the recognisers of the loss whose cosine still reaches their calibrated
  same-person `threshold` — the verdict an evaluation gives (a face counts as recognised when any entry matches) —
  and the judges outside the loss (`model.judges`) that still recognise it, scored as `evaluate` scores (the
  source's face and the reconstruction's, each detected on its own). The loss's networks are the ones the attack
  was built to beat, so their verdict alone is optimistic: on the 16 held-out faces, of the 9 photos they no longer
  recognise at ε 0.03, w600k_mbf still recognises 4 and dlib 8 (benchmarks/robustness.md, "A budget per photo").
  Only where every recogniser of the loss has a threshold (every judge has one);
- `faces_in_photo`: the faces the detector finds in the clean frame as the editor sees it. The FR term sees the
  largest `objective.faces` of them (1 by default, as the published FaceLock, made for single portraits: in a photo
  of several people the others keep their identity). With one face in the term every number above is about the
  largest face; with several, about the face that keeps the most identity: `fr_cos_recon` the highest over the term's
  faces, and the detected numbers from each face detected anew in a window around it (in the clean frame and in the
  reconstruction, as `benchmarks/group_photos.py` scores a group photo), the highest cosine and every recogniser that
  recognises any of them — a photo is protected only when none of its people is recognised.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..models import FaceDetector, FaceScorer
from ..models.faces import face_windows
from ..objectives import CleanFeatures, Networks
from ..pixels import levels_to_pil, levels_to_pm1, pad_to, pm1_to_levels, resize
from .speed import SpeedConfig


class Delivered(NamedTuple):
    """What the manifest reports of one protected image (None: not measurable)."""

    fr_cos_recon: float | None = None
    fr_cos_recon_detected: float | None = None  # None also where no face is found in the reconstruction
    recognised_by: str | None = None  # comma-separated labels ("": none); None without thresholds or a detected face
    faces_in_photo: int | None = None  # faces found in the clean frame as the editor sees it


class ProtectionMeter:
    def __init__(self, nets: Networks, detector: FaceDetector | None, speed: SpeedConfig,
                 judges: FaceScorer | None = None):
        self.nets, self.detector, self.speed, self.judges = nets, detector, speed, judges

    @property
    def measures(self) -> bool:
        """Whether there is a recogniser to measure with (an embedding: feature-layer terms do not tell identity)."""
        return len(self.nets.identity) > 0

    def reconstruct(self, png_levels: torch.Tensor) -> torch.Tensor:
        """D(E(png)) through the primary autoencoder, fp32 in [-1, 1]."""
        with self.speed.autocast(png_levels.device):
            return self.nets.reconstruct(self.nets.vae.encode(self.speed.layout(levels_to_pm1(png_levels)))).float()

    def fr_cos(self, images: torch.Tensor, clean: CleanFeatures, thetas: list[torch.Tensor] | None = None) -> torch.Tensor:
        """cos(FR(x), FR(images)) of the recognisers' embeddings, aligned as the objective sees it, or with `thetas`
        ([B])."""
        with self.speed.autocast(images.device):
            return self.nets.fr_cos(images, clean, thetas, identity_only=True).float()

    def cosines_detected(self, levels: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """[R_identity, B]: each recogniser's cosine with the face of the 8-bit reconstruction `levels` detected anew
        (NaN: no face)."""
        geometry = self.detector(levels)
        hw = tuple(levels.shape[-2:])
        thetas = [r.theta(geometry, hw) for r in self.nets.recognizers]
        with self.speed.autocast(levels.device):
            cosines = self.nets.cosines(levels_to_pm1(levels), clean, thetas, identity_only=True).float()
        return cosines.masked_fill(~geometry.found, float("nan"))

    @torch.no_grad()
    def delivered(self, png: torch.Tensor, view: tuple[int, int], clean: CleanFeatures, source_seen: torch.Tensor,
                  faces: int = 1, canvas: tuple[int, int] | None = None, stored_turn: int = 0) -> Delivered:
        """What the manifest reports of one protected native image [3, H, W] as the editor sees it: resized to the
        working size of the frame (`view`: height, width). `source_seen`: the clean frame at that size ([1, 3, H, W]
        uint8), which the judges outside the loss compare with. `faces`: the faces of the FR term; with more than one,
        every number is of the face that keeps the most identity. `canvas`: (height, width) that `clean`'s alignments
        were computed at, the frame padded at its bottom and right (None: the frame itself); `fr_cos_recon`, whose
        crops are in the canvas's coordinates, is of the round trip of the frame padded alike, as the objective saw it.
        `stored_turn`: a photo measured turned upright whose file holds it lying, the quarter turns that stood it up;
        an editor may also take the file as it is, so the detected numbers are also read off the round trip of the
        photo as it lies (turned upright to be read), and the position that keeps the most identity is reported."""
        if not self.measures:
            return Delivered()
        seen = resize(levels_to_pil(png), (view[1], view[0])).to(png.device)[None]
        recon = self.reconstruct(seen)
        boxes = self.detector.all_boxes(source_seen)[0]
        padded = canvas is not None and canvas != tuple(view)
        aligned = self.reconstruct(pad_to(seen[0], *canvas)[None]) if padded else recon
        fr_cos = float(self.fr_cos_worst_face(aligned, clean)[0])
        recons = [recon]
        if stored_turn:
            recons.append(torch.rot90(self.reconstruct(torch.rot90(seen, -stored_turn, (2, 3))), stored_turn, (2, 3)))
        read = [self._detected(pm1_to_levels(r), clean, source_seen, boxes[:faces]) for r in recons]
        cosines = [cosine for cosine, _ in read if cosine is not None]
        verdicts = [labels for _, labels in read if labels is not None]
        labels = None if not verdicts else ",".join(dict.fromkeys(label for v in verdicts for label in v))
        return Delivered(fr_cos, max(cosines, default=None), labels, len(boxes))

    def _detected(self, recon_levels: torch.Tensor, clean: CleanFeatures, source_seen: torch.Tensor,
                  boxes: torch.Tensor) -> tuple[float | None, list[str] | None]:
        """`fr_cos_recon_detected` and `recognised_by`'s labels of one 8-bit reconstruction (None: no face found, or
        no verdict); with several faces in `boxes`, each found anew in a window around it."""
        if len(boxes) > 1:
            return self._worst_face_in_windows(recon_levels, source_seen, boxes)
        cosines = self.cosines_detected(recon_levels, clean)
        if cosines.isnan().any():
            return None, None
        return float(self.nets.fr_cos_of(cosines)[0]), self._verdict(cosines, recon_levels, source_seen)

    def fr_cos_worst_face(self, images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """[B]: `fr_cos` of the face of the FR term that keeps the most identity (the largest, or with
        `objective.faces` > 1 any other found), each aligned as the objective aligns it."""
        worst = self.fr_cos(images, clean)
        if clean.other_found is not None:
            for rank in clean.other_found.any(0).nonzero().flatten().tolist():
                found = clean.other_found[:, rank]
                worst = torch.where(found, torch.maximum(worst, self.fr_cos(images, clean.other_face(rank))), worst)
        return worst

    def _worst_face_in_windows(self, recon_levels: torch.Tensor, source_seen: torch.Tensor,
                               boxes: torch.Tensor) -> tuple[float | None, list[str] | None]:
        """`fr_cos_recon_detected` and `recognised_by`'s labels of a photo of several people: each face (`boxes` of the
        clean frame) detected anew in a window around it, in the clean frame and in the reconstruction, as an
        evaluation scores a group photo; the highest cosine, and every recogniser that recognises any face (None: no
        face was found in both, or no verdict)."""
        worst, labels, judged = None, [], False
        for rows, columns in face_windows(boxes, *source_seen.shape[-2:]):
            source, recon = source_seen[..., rows, columns], recon_levels[..., rows, columns]
            geometry = self.detector(source)
            if not geometry.found.all():
                continue
            with self.speed.autocast(source.device):
                reference = self.nets.clean_features(self.speed.layout(levels_to_pm1(source)), geometry, False, False)
            cosines = self.cosines_detected(recon, reference)
            if cosines.isnan().any():
                continue
            cosine = float(self.nets.fr_cos_of(cosines)[0])
            worst = cosine if worst is None else max(worst, cosine)
            verdict = self._verdict(cosines, recon, source)
            if verdict is not None:
                judged = True
                labels += [label for label in verdict if label not in labels]
        return worst, labels if judged else None

    def _verdict(self, cosines: torch.Tensor, recon_levels: torch.Tensor, source_seen: torch.Tensor) -> list[str] | None:
        """`recognised_by`'s labels: the loss's entries, then the judges', that still recognise the face; None where
        not every entry has a threshold or a judge finds no face."""
        if not self.nets.calibrated:
            return None
        labels = self.nets.recognised_by(cosines)[0]
        if self.judges is not None:
            outside = self.judges.recognised_by(source_seen, recon_levels)
            if outside is None:
                return None
            labels += outside
        return labels
