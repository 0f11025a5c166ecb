"""Objective terms, each per sample ([B]), and the clean-image features they compare against.

`CleanFeatures` holds everything about the clean image x that stays fixed during the attack
(E(x) of each autoencoder, each recogniser's alignment and FR(x), LPIPS features of x): computed once
per image by `Networks.clean_features`, never per iteration.

Ensembles: with several autoencoders (one per editor family) the latent and reconstruction terms are
weighted means over them; with several recognisers the FR cosine is their weighted mean or worst case.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..models import FaceGeometry, FaceRecognizer, FrozenVAE, LPIPSDistance, embed_all
from ..models.faces import jitter_theta
from ..models.landmarks import LandmarkReader
from ..models.recognizers import calibrated, group_by_network
from .targets import TargetPool
from .transforms import StoredPosition

FACE_MSE_GROWTH = 0.1  # `face_mse`: the box grown by 10% of its size on each side, so the jaw and brow count
WORST_CROP_TEMPERATURE = 0.05  # `worst_crop`, in cosine units: margins 0.1 apart weigh e^2 ≈ 7.4 : 1

# Every term any method can report; manifests carry one `term_<name>` column for each.
TERM_NAMES = ("fr_cos", "fr_target_cos", "latent_mse", "lpips", "latent_target_dist", "recon_norm", "latent_l2", "l2_distortion",
              "face_mse")


@dataclass
class CleanFeatures:
    latents: list[torch.Tensor] | None  # E(x) per autoencoder, [B, C, h, w]
    thetas: list[torch.Tensor]  # per recogniser: sampling matrices [B, 2, 3]
    embeddings: list[torch.Tensor]  # per recogniser: FR(x), [B, D]
    lpips_features: list[torch.Tensor] | None
    face_found: torch.Tensor  # [B] bool
    image: torch.Tensor | None = None  # x itself, [B, 3, H, W] in [-1, 1] (for methods that compare pixels)
    detected: FaceGeometry | None = None  # re-alignment: the face detected in x
    reading: FaceGeometry | None = None  # re-alignment: the landmark reader's geometry of x
    target_embeddings: list[torch.Tensor] | None = None  # identity targets: per recogniser, the target's FR, [B, D]
    alignment_draws: torch.Tensor | None = None  # crop jitter: this iteration's uniforms [B, 4] (set per iteration)
    face_boxes: torch.Tensor | None = None  # the face's box in x, [B, 4] (x1, y1, x2, y2) in pixels (for face_mse)
    # `objective.faces` > 1: the next largest faces, K of them per image (`other_found` False where it has fewer)
    other_thetas: list[torch.Tensor] | None = None  # per recogniser: [B, K, 2, 3]
    other_embeddings: list[torch.Tensor] | None = None  # per recogniser: FR of those faces in x, [B, K, D]
    other_found: torch.Tensor | None = None  # [B, K] bool
    # A photo optimised turned upright (`attack.both_positions`): E(x) of the photo in the position it is stored in
    # (E(x) itself where it stands upright), and, in the pass that shows the photos so, how to lay them down
    stored_latents: list[torch.Tensor] | None = None
    position: StoredPosition | None = None

    def _map(self, fn) -> "CleanFeatures":
        def each(tensors):
            return None if tensors is None else [fn(t) for t in tensors]

        def geometry(g):
            return None if g is None else FaceGeometry(*each([g.found, g.boxes, g.landmarks]))

        return CleanFeatures(each(self.latents), each(self.thetas), each(self.embeddings), each(self.lpips_features),
                             fn(self.face_found), None if self.image is None else fn(self.image),
                             geometry(self.detected), geometry(self.reading), each(self.target_embeddings),
                             face_boxes=None if self.face_boxes is None else fn(self.face_boxes),
                             other_thetas=each(self.other_thetas), other_embeddings=each(self.other_embeddings),
                             other_found=None if self.other_found is None else fn(self.other_found),
                             stored_latents=each(self.stored_latents))

    def other_face(self, rank: int) -> "CleanFeatures":
        """These features with the `rank`-th other face (`objective.faces` > 1, 0: the second largest) in the place of
        the largest: its crop and its clean embedding."""
        return dataclasses.replace(self, thetas=[t[:, rank] for t in self.other_thetas],
                                   embeddings=[e[:, rank] for e in self.other_embeddings],
                                   face_found=self.other_found[:, rank])

    def in_position(self, position: StoredPosition) -> "CleanFeatures":
        """These features for a pass that shows the images as `position` lays them down, as their files hold them:
        the autoencoders see them so, and their latents are compared with the stored photos' (`stored_latents`)."""
        return dataclasses.replace(self, latents=self.stored_latents, position=position)

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
        put(self.latents, other.latents)
        put(self.stored_latents, other.stored_latents)
        put(self.thetas, other.thetas)
        put(self.embeddings, other.embeddings)
        put(self.lpips_features, other.lpips_features)
        put(self.target_embeddings, other.target_embeddings)
        put([self.image] if self.image is not None else None, [other.image] if other.image is not None else None)
        put([self.face_boxes] if self.face_boxes is not None else None,
            [other.face_boxes] if other.face_boxes is not None else None)
        put(self.other_thetas, other.other_thetas)
        put(self.other_embeddings, other.other_embeddings)
        put([self.other_found] if self.other_found is not None else None,
            [other.other_found] if other.other_found is not None else None)
        for mine, theirs in ((self.detected, other.detected), (self.reading, other.reading)):
            if mine is not None:
                put([mine.found, mine.boxes, mine.landmarks], [theirs.found, theirs.boxes, theirs.landmarks])
        self.face_found[index] = other.face_found


class Networks(nn.Module):
    """The frozen networks of an attack, and the terms computed with them."""

    def __init__(
        self,
        vaes: list[FrozenVAE],
        recognizers: list[FaceRecognizer],
        lpips: LPIPSDistance | None,
        fr_reduction: Literal["mean", "max", "worst_crop"] = "mean",
        vae_weights: list[float] | None = None,
        landmarks: LandmarkReader | None = None,
        crop_jitter: float = 0.0,
        faces: int = 1,
    ):
        super().__init__()
        if not vaes:
            raise ValueError("at least one autoencoder is needed")
        self.vaes = nn.ModuleList(vaes)
        weights = torch.tensor(vae_weights or [1.0] * len(vaes), dtype=torch.float32)
        self.vae_weights = (weights / weights.sum()).tolist()
        self.recognizers = nn.ModuleList(recognizers)
        self.lpips = lpips
        self.fr_reduction = fr_reduction
        self.fr_weights = self._normalised([r.spec.weight for r in recognizers])
        # Feature-layer terms (`RecognizerSpec.feature_layer`) push mid-level features in the loss, but a cosine of
        # them says nothing about identity: what is measured and reported takes the embeddings alone.
        self.identity = [i for i, r in enumerate(recognizers) if r.spec.feature_layer is None]
        self.identity_weights = self._normalised([recognizers[i].spec.weight for i in self.identity])
        if fr_reduction == "worst_crop":  # grouped and tensored once, not per PGD iteration
            self._crop_groups = self._group_by_network(recognizers)
            self.register_buffer("_crop_thresholds", torch.tensor([[r.spec.threshold] for r in recognizers]),
                                 persistent=False)
        self.landmarks = landmarks  # re-align x̂ every iteration (None: the clean image's alignment)
        self.crop_jitter = crop_jitter
        self.faces = faces  # faces per photo in the FR term, the largest first (`objective.faces`)
        self.targets: TargetPool | None = None  # identity targets (`objective.target_faces`); set by `load_networks`

    @staticmethod
    def _normalised(weights: list[float]) -> list[float]:
        weights = torch.tensor(weights, dtype=torch.float32)
        return (weights / weights.sum()).tolist() if len(weights) else []

    @staticmethod
    def _group_by_network(recognizers: list[FaceRecognizer]) -> list[tuple[list[int], float]]:
        """`worst_crop`: the loss's entries grouped by the network they share (one network behind several crops),
        each group with its share of the ensemble's weight."""
        missing = [r.spec.label for r in recognizers if r.spec.threshold is None or r.spec.feature_layer is not None]
        if missing:
            raise ValueError(f"fr_reduction worst_crop compares each entry's cosine with its own threshold: give "
                             f"{missing} a calibrated `threshold` (and no feature_layer)")
        total = sum(r.spec.weight for r in recognizers)
        return [(entries, sum(recognizers[i].spec.weight for i in entries) / total)
                for entries in group_by_network(recognizers)]

    @property
    def feature_terms(self) -> bool:
        return len(self.identity) < len(self.recognizers)

    @property
    def loss_fr_is_reported(self) -> bool:
        """Whether the loss's `fr_cos` is the cosine the manifest reports: not with feature-layer terms in it, nor as
        `worst_crop` margins, nor as a mean over several faces."""
        return not self.feature_terms and self.fr_reduction != "worst_crop" and self.faces == 1

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def vae(self) -> FrozenVAE:
        """The primary autoencoder: the editor whose round trip `fr_cos_recon` measures."""
        return self.vaes[0]

    @torch.no_grad()
    def clean_features(self, x: torch.Tensor, geometry: FaceGeometry, need_latent: bool, need_lpips: bool,
                       need_image: bool = False, others: FaceGeometry | None = None) -> CleanFeatures:
        """`geometry`: the largest face of each image; `others` (`faces` > 1): the next `faces` − 1 of each, image by
        image."""
        thetas = [r.theta(geometry, tuple(x.shape[-2:])) for r in self.recognizers]
        realign = self.landmarks is not None and bool(self.recognizers)
        embeddings = embed_all(list(self.recognizers), x, thetas)
        other_thetas = other_embeddings = other_found = None
        if others is not None:  # embedded where found only: a single portrait costs nothing more
            count, found = self.faces - 1, others.found.nonzero().flatten()
            flat = [r.theta(others, tuple(x.shape[-2:])) for r in self.recognizers]
            stores = [e.new_zeros(len(others.found), e.shape[1]) for e in embeddings]
            if len(found):
                faces = embed_all(list(self.recognizers), x[found // count], [t[found] for t in flat])
                for store, face in zip(stores, faces):
                    store[found] = face
            other_thetas = [t.unflatten(0, (-1, count)) for t in flat]
            other_embeddings = [store.unflatten(0, (-1, count)) for store in stores]
            other_found = others.found.unflatten(0, (-1, count))
        return CleanFeatures(
            latents=[vae.encode(x).float() for vae in self.vaes] if need_latent else None,
            thetas=thetas,
            embeddings=embeddings,
            lpips_features=self.lpips.features(x) if need_lpips and self.lpips is not None else None,
            face_found=geometry.found,
            image=x.float() if need_image else None,
            detected=geometry if realign else None,
            reading=self.landmarks(x, geometry.boxes) if realign else None,
            target_embeddings=self.targets.targets(embeddings) if self.targets is not None else None,
            face_boxes=geometry.boxes.float() if need_image else None,
            other_thetas=other_thetas, other_embeddings=other_embeddings, other_found=other_found,
        )

    def encode(self, x: torch.Tensor, position: StoredPosition | None = None) -> list[torch.Tensor]:
        """E(x) of every autoencoder; of the images `position` shows in their stored position, turned so."""
        x = x if position is None else position.lay_down(x)
        return [vae.encode(x) for vae in self.vaes]

    def reconstruct(self, latent: torch.Tensor, index: int = 0) -> torch.Tensor:
        """D(z) of autoencoder `index`, clipped to the valid range as FaceLock does before FR and LPIPS."""
        return self.vaes[index].decode(latent).clamp(-1, 1)

    def reconstruct_all(self, latents: list[torch.Tensor], position: StoredPosition | None = None) -> list[torch.Tensor]:
        """`reconstruct` of each autoencoder's latent of `encode(x, position)`, turned upright where it was laid down."""
        recons = [self.reconstruct(z, i) for i, z in enumerate(latents)]
        return recons if position is None else [position.stand_up(r) for r in recons]

    def vae_mean(self, values: list[torch.Tensor]) -> torch.Tensor:
        """Weighted mean over the autoencoders of per-sample values."""
        return sum(w * v for w, v in zip(self.vae_weights, values))

    def alignments(self, images: torch.Tensor, clean: CleanFeatures) -> list[torch.Tensor]:
        """Each recogniser's sampling matrices [B, 2, 3] for `images`: the clean image's; with re-alignment, from the
        geometry read off `images` themselves (differentiable); under crop jitter, moved by this iteration's draw."""
        thetas = clean.thetas
        if self.landmarks is not None:
            geometry = LandmarkReader.follow(clean.detected, clean.reading, self.landmarks(images, clean.detected.boxes))
            thetas = [r.theta(geometry, tuple(images.shape[-2:])) for r in self.recognizers]
        if clean.alignment_draws is not None:
            thetas = [jitter_theta(t, clean.alignment_draws, self.crop_jitter) for t in thetas]
        return thetas

    def fr_cos(self, images: torch.Tensor, clean: CleanFeatures, thetas: list[torch.Tensor] | None = None,
               identity_only: bool = False) -> torch.Tensor:
        """Ensemble cosine similarity between FR(images) and FR(x): weighted mean or worst case (max). Each
        recogniser crops `images` with `thetas` where given (e.g. of a face detected anew), else `alignments`.
        `identity_only`: the embeddings alone, without the feature-layer terms (what the manifest reports)."""
        return self._reduce(self.cosines(images, clean, thetas, identity_only), identity_only)

    def cosines(self, images: torch.Tensor, clean: CleanFeatures, thetas: list[torch.Tensor] | None = None,
                identity_only: bool = False) -> torch.Tensor:
        """[R, B]: each recogniser's cosine between FR(images) and FR(x), cropped as `fr_cos` crops (`identity_only`:
        the embedding entries alone, in the order of `identity`)."""
        thetas = thetas if thetas is not None else self.alignments(images, clean)
        picked = self.identity if identity_only else range(len(self.recognizers))
        return self._cosines(self._embed(images, thetas, picked), clean.embeddings, picked)

    def fr_cos_of(self, identity_cosines: torch.Tensor) -> torch.Tensor:
        """[B]: the ensemble cosine the manifest reports, from `cosines(..., identity_only=True)`."""
        return self._reduce(identity_cosines, True)

    @property
    def calibrated(self) -> bool:
        """Whether every embedding entry has a calibrated same-person `threshold`, so that `recognised_by` can say
        which of them still recognise a face (a verdict from some entries only would read as protection from all)."""
        return calibrated([r.spec for r in self.recognizers])

    def recognised_by(self, identity_cosines: torch.Tensor) -> list[list[str]]:
        """Per sample, the labels of the embedding entries whose cosine ([R_identity, B], `cosines(...,
        identity_only=True)`) reaches their `threshold`: the networks of the loss that still recognise the person."""
        if not self.calibrated:
            raise ValueError("recognised_by needs a calibrated `threshold` on every recogniser of the loss")
        labels = [self.recognizers[i].spec.label for i in self.identity]
        thresholds = torch.tensor([self.recognizers[i].spec.threshold for i in self.identity])
        passed = (identity_cosines.detach().float().cpu() >= thresholds[:, None]).T
        return [[label for label, hit in zip(labels, row) if hit] for row in passed.tolist()]

    def fr_terms(self, images: torch.Tensor, clean: CleanFeatures) -> dict[str, torch.Tensor]:
        """The loss's FR terms from one pass of each recogniser: `fr_cos` (as `fr_cos`) and, with identity targets,
        `fr_target_cos`, the weighted-mean cosine with the target's embeddings (a mean also under `fr_reduction:
        max`, whose worst case is about the person, not the target)."""
        picked = range(len(self.recognizers))
        embeddings = self._embed(images, self.alignments(images, clean), picked)
        cosines = self._cosines(embeddings, clean.embeddings, picked)
        if clean.other_found is not None:
            cosines = self._mean_over_faces(images, cosines, clean)
        terms = {"fr_cos": self._reduce(cosines, False)}
        if clean.target_embeddings is not None:
            cosines = self._cosines(embeddings, clean.target_embeddings, picked)
            terms["fr_target_cos"] = self._weighted_mean(cosines, self.fr_weights)
        return terms

    def _mean_over_faces(self, images: torch.Tensor, cosines: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """[R, B]: each recogniser's cosine averaged over the faces of each photo: the largest (`cosines`) and the
        others found in x, each cropped where it is in x. Only the other faces found are cropped and embedded: a
        batch of single portraits costs nothing more."""
        image, rank = clean.other_found.nonzero().unbind(1)  # every other face found: its photo and its rank
        if len(image) == 0:
            return cosines
        embeddings = embed_all(list(self.recognizers), images[image], [t[image, rank] for t in clean.other_thetas])
        others = torch.stack([(e * reference[image, rank]).sum(-1)
                              for e, reference in zip(embeddings, clean.other_embeddings)])  # [R, faces found]
        return cosines.index_add(1, image, others.to(cosines.dtype)) / (1 + clean.other_found.sum(1)).to(cosines.dtype)

    def _embed(self, images: torch.Tensor, thetas: list[torch.Tensor], picked) -> list[torch.Tensor]:
        """The picked recognisers' embeddings of `images` under their `thetas` (one pass per shared network)."""
        return embed_all([self.recognizers[i] for i in picked], images, [thetas[i] for i in picked])

    @staticmethod
    def _cosines(embeddings: list[torch.Tensor], references: list[torch.Tensor], picked) -> torch.Tensor:
        """[R, B]: each picked recogniser's cosine between its embeddings and its reference embeddings."""
        return torch.stack([(e * references[i]).sum(1) for e, i in zip(embeddings, picked)])

    @staticmethod
    def _weighted_mean(cosines: torch.Tensor, weights: list[float]) -> torch.Tensor:
        """[B]: the recognisers' cosines [R, B] weighted by their normalised `weights`."""
        return (torch.tensor(weights, device=cosines.device)[:, None] * cosines).sum(0)

    def _reduce(self, cosines: torch.Tensor, identity_only: bool) -> torch.Tensor:
        if self.fr_reduction == "max":
            return cosines.max(0).values
        if self.fr_reduction == "worst_crop" and not identity_only:
            return self._worst_crop_margin(cosines)
        return self._weighted_mean(cosines, self.identity_weights if identity_only else self.fr_weights)

    def _worst_crop_margin(self, cosines: torch.Tensor) -> torch.Tensor:
        """[B]: per network, a smooth maximum over its crops of (cosine − that crop's threshold), the margin by which
        the crop a judge finds worst still matches; networks weighted as their entries. What an evaluation counts
        (a face matches when any crop's cosine passes its threshold) is this maximum's sign."""
        margins = cosines - self._crop_thresholds
        return sum(share * WORST_CROP_TEMPERATURE * torch.logsumexp(margins[entries] / WORST_CROP_TEMPERATURE, 0)
                   for entries, share in self._crop_groups)

    def latent_mse(self, latents: list[torch.Tensor], clean: CleanFeatures) -> torch.Tensor:
        return self.vae_mean([(z.float() - c).pow(2).flatten(1).mean(1) for z, c in zip(latents, clean.latents)])

    @staticmethod
    def face_mse(images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """[B]: the mean squared difference between `images` and x over the pixels (centres) inside x's face box
        grown by 10% of its size on every side (no face: the whole image), per channel."""
        height, width = images.shape[-2:]
        boxes = clean.face_boxes
        grow = FACE_MSE_GROWTH * (boxes[:, 2:] - boxes[:, :2])
        low, high = boxes[:, :2] - grow, boxes[:, 2:] + grow
        xs = torch.arange(width, device=images.device, dtype=torch.float32)[None] + 0.5
        ys = torch.arange(height, device=images.device, dtype=torch.float32)[None] + 0.5
        inside_x = ((xs >= low[:, :1]) & (xs <= high[:, :1])).float()
        inside_y = ((ys >= low[:, 1:]) & (ys <= high[:, 1:])).float()
        mask = (inside_y[:, :, None] * inside_x[:, None, :])[:, None]  # [B, 1, H, W]
        squared = (images.float() - clean.image).pow(2) * mask
        return squared.sum((1, 2, 3)) / mask.sum((1, 2, 3)).clamp_min(1) / images.shape[1]

    def lpips_distance(self, images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        return self.lpips.distance(clean.lpips_features, images).float()
