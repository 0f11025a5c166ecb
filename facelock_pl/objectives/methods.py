"""Protection methods: what each PGD iteration ascends. One class per method, as in torchattacks.

Each method's `objective(x_adv, clean, progress)` returns the per-sample objective to *ascend* ([B])
and the per-sample value of every term it computed. `progress` is iteration / iterations per sample,
so samples of one batch may be at different iterations. Terms whose weight is zero for the whole
batch at this iteration are not computed (and neither are the decoder passes only they need).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from .terms import CleanFeatures, Networks


@dataclass(frozen=True)
class FaceLockObjective:
    """FaceLock's terms: their weights, their gates, and how a recogniser ensemble is combined.

    Args:
        fr_weight: weight of the face-recognition cosine (0: no FR term; recognisers then only measure).
        latent_weight: weight of the latent MSE.
        lpips_weight: weight of LPIPS (0: no LPIPS term, and its network is not loaded).
        fr_start: share of iterations before the FR term switches on (published: 0.35).
        lpips_start: share of iterations after which LPIPS switches on (published: 0.25).
        fr_reduction: several recognisers: their weighted `mean` cosine, the worst case `max`, or `worst_crop`: per
            network, a smooth maximum over the crops it stands behind of (cosine − that entry's calibrated
            `threshold`), networks weighted as their entries (`Networks._worst_crop_margin`; every entry needs a
            threshold). The manifest's `fr_cos_recon` stays the weighted mean cosine.
        realign: re-align x̂ for every recogniser at every iteration from its own landmarks (MTCNN's O-Net read
            differentiably, `facelock_pl.models.landmarks`), as the published code does; False: the clean image's
            alignment throughout.
        crop_jitter: expectation over the crop: each iteration moves every recogniser's crop by a random
            similarity of this strength (0.2: zoom 0.9–1.4, rotation ±9°, shift ±10%; `models.faces.jitter_theta`);
            0: off.
        target_faces: a folder of other people's faces: the FR term also pulls the reconstruction towards the
            identity of the one least like each image (`objectives.targets`; TIP-IM's impersonation target); None:
            off (the published, untargeted term).
        target_weight: weight of the cosine with the target (ascended, with the FR term's gate).
        face_mse_weight: weight of the reconstruction's mean squared distance from x inside the face box
            (`Networks.face_mse`, ascended from the first iteration): a disruption of the face that is not aimed at
            any recogniser, as FaceLock's LPIPS term is (LPIPS's VGG trunk needs a download, so offline recipes run
            without it); 0: off.
        faces: how many faces of a photo the FR term protects, the largest first: its cosine is the mean over them
            (1: the largest only, as the published code, made for single portraits; e.g. 8 for photos of several
            people). The manifest's FR columns and adaptive stopping read the face that keeps the most identity.
    """

    fr_weight: float = 1.0
    latent_weight: float = 0.2
    lpips_weight: float = 1.0
    fr_start: float = 0.35
    lpips_start: float = 0.25
    fr_reduction: Literal["mean", "max", "worst_crop"] = "mean"
    realign: bool = False
    crop_jitter: float = 0.0
    target_faces: str | None = None
    target_weight: float = 1.0
    face_mse_weight: float = 0.0
    faces: int = 1

    def __post_init__(self) -> None:
        if self.faces < 1:
            raise ValueError(f"objective.faces is how many faces of a photo the FR term protects: 1 or more (got "
                             f"{self.faces})")
        if self.faces > 1 and (self.realign or self.crop_jitter or self.target_faces is not None):
            raise ValueError("objective.faces > 1 protects every face with its clean alignment: it runs without "
                             "objective.realign, crop_jitter and target_faces")
        if not 0 <= self.crop_jitter <= 1:
            raise ValueError(f"objective.crop_jitter must lie in [0, 1] (got {self.crop_jitter})")
        if self.face_mse_weight < 0:
            raise ValueError(f"objective.face_mse_weight must be >= 0 (got {self.face_mse_weight})")
        if self.target_weight <= 0:
            raise ValueError(f"objective.target_weight must be > 0 (got {self.target_weight}); to turn identity "
                             "targets off, leave objective.target_faces unset")
        if self.target_faces is not None and self.fr_weight == 0:
            raise ValueError("objective.target_faces needs the FR term (objective.fr_weight is 0)")
        if self.target_faces is not None and not Path(self.target_faces).expanduser().is_dir():
            raise ValueError(f"objective.target_faces: {self.target_faces} is not a folder of face images")


class ProtectionMethod:
    """Base class. Subclasses set `needs_latent`, `needs_lpips`, `needs_faces` and `objective`; `update` says how
    the iterate moves: `sign` (projected sign-gradient steps, PGD) or `tanh-adam` (Adam in tanh space, CW)."""

    name: str = ""
    needs_latent = False  # clean latent E(x)
    needs_lpips = False  # clean LPIPS features
    needs_faces = False  # FR term in the loss
    needs_image = False  # the clean image itself
    update = "sign"

    def objective(
        self, nets: Networks, x_adv: torch.Tensor, clean: CleanFeatures, progress: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError


class FaceLock(ProtectionMethod):
    """FaceLock: "Edit Away and My Face Will not Stay" (Wang et al., arXiv 2411.16832).

    Ascends, per sample,
        -fr_weight    * cos(FR(D(E(x_adv))), FR(x))      while progress >= fr_start
        +latent_weight * MSE(E(x_adv), E(x))
        +lpips_weight * LPIPS(D(E(x_adv)), x)           while progress >  lpips_start
        +target_weight * cos(FR(D(E(x_adv))), FR(t))     while progress >= fr_start, with identity targets t
        +face_mse_weight * MSE(D(E(x_adv)), x) in the face box (off by default; not in the published loss)
    The gates follow the published code (`i >= 0.35 N` and `i > 0.25 N`). Images without a detected face
    get no FR term (their other terms still apply).

    Args:
        fr_weight: weight of the face-recognition cosine (default 1.0; 0 drops the FR term).
        latent_weight: weight of the latent MSE (default 0.2).
        lpips_weight: weight of LPIPS (default 1.0; 0 disables it and its network).
        fr_start: share of iterations before the FR term switches on (default 0.35).
        lpips_start: share of iterations after which LPIPS switches on (default 0.25).
        target_weight: weight of the identity target's cosine (default 1.0); it acts only where the networks hold
            identity targets (`FaceLockObjective.target_faces`).
        face_mse_weight: weight of the reconstruction's distance from x inside the face box (default 0: off).

    Example:
        >>> method = FaceLock(lpips_weight=0.0)
        >>> # objective, terms = method.objective(nets, x_adv, clean, progress)   # [B], {name: [B]}
    """

    name = "facelock"
    needs_latent = True

    def __init__(self, fr_weight: float = 1.0, latent_weight: float = 0.2, lpips_weight: float = 1.0,
                 fr_start: float = 0.35, lpips_start: float = 0.25, target_weight: float = 1.0,
                 face_mse_weight: float = 0.0):
        self.fr_weight, self.latent_weight, self.lpips_weight = fr_weight, latent_weight, lpips_weight
        self.target_weight, self.face_mse_weight = target_weight, face_mse_weight
        self.fr_start, self.lpips_start = fr_start, lpips_start
        self.needs_lpips = lpips_weight != 0
        self.needs_faces = fr_weight != 0
        self.needs_image = face_mse_weight != 0

    def term_weights(self, progress: torch.Tensor, face_found: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample weight of each term at this point of the schedule."""
        fr_on = ((progress >= self.fr_start) & face_found).float()
        return {
            "fr_cos": -self.fr_weight * fr_on,
            "fr_target_cos": self.target_weight * fr_on,
            "latent_mse": torch.full_like(progress, self.latent_weight),
            "lpips": self.lpips_weight * (progress > self.lpips_start).float(),
            "face_mse": torch.full_like(progress, self.face_mse_weight),
        }

    def objective(self, nets, x_adv, clean, progress):
        weights = self.term_weights(progress, clean.face_found)
        latents = nets.encode(x_adv, clean.position)
        terms = {"latent_mse": nets.latent_mse(latents, clean)}
        if (weights["fr_cos"] != 0).any() or (weights["lpips"] != 0).any() or self.face_mse_weight:
            recons = nets.reconstruct_all(latents, clean.position)
            if (weights["fr_cos"] != 0).any():
                fr = [nets.fr_terms(r, clean) for r in recons]
                terms |= {name: nets.vae_mean([f[name] for f in fr]) for name in fr[0]}
            if (weights["lpips"] != 0).any():
                terms["lpips"] = nets.vae_mean([nets.lpips_distance(r, clean) for r in recons])
            if self.face_mse_weight:
                terms["face_mse"] = nets.vae_mean([nets.face_mse(r, clean) for r in recons])
        objective = sum(weights[name] * value for name, value in terms.items())
        return objective, terms


class PhotoGuard(ProtectionMethod):
    """PhotoGuard encoder attack (Salman et al., "Raising the Cost of Malicious AI-Powered Image
    Editing", ICML 2023): descends ||E(x_adv) - 0||_2, pulling the latent to the zero latent (the published
    default target)."""

    name = "photoguard"

    def objective(self, nets, x_adv, clean, progress):
        distance = nets.vae_mean([z.float().flatten(1).norm(dim=1) for z in nets.encode(x_adv, clean.position)])  # to the zero latent
        return -distance, {"latent_target_dist": distance}


class EncoderAttack(ProtectionMethod):
    """Untargeted encoder attack (the encoder baseline of the FaceLock paper; after Salman et al.
    2023): ascends MSE(E(x_adv), E(x)), pushing the latent away from the clean one."""

    name = "encoder"
    needs_latent = True

    def objective(self, nets, x_adv, clean, progress):
        mse = nets.latent_mse(nets.encode(x_adv, clean.position), clean)
        return mse, {"latent_mse": mse}


class VAEAttack(ProtectionMethod):
    """VAE attack (the "VAE" baseline of the FaceLock paper): descends ||D(E(x_adv))||_2, driving the
    reconstruction towards a flat grey image. As published, the reconstruction is not clipped to [-1, 1]
    (clipping would give saturated pixels no gradient)."""

    name = "vae"

    def objective(self, nets, x_adv, clean, progress):
        recons = [vae.decode(z) for vae, z in zip(nets.vaes, nets.encode(x_adv, clean.position))]
        norm = nets.vae_mean([r.float().flatten(1).norm(dim=1) for r in recons])
        return -norm, {"recon_norm": norm}


@dataclass(frozen=True)
class CWSettings:
    """Carlini–Wagner L2's constants, as the published FaceLock code runs it (`main_defend.py`).

    Args:
        c: weight of the latent term against the L2 distortion (published default 0.03).
        lr: Adam's learning rate on w (published default 0.03).
    """

    c: float = 0.03
    lr: float = 0.03


class CarliniWagnerL2(ProtectionMethod):
    """The CW-L2 baseline of the FaceLock paper (after Carlini & Wagner, "Towards Evaluating the Robustness of Neural
    Networks", S&P 2017), untargeted on the encoder: the image is a = (tanh(w) + 1) / 2 in [0, 1], w starts at 0
    (mid-grey) as published, and Adam descends, per image,
        Σ (a − x)²  +  c · Σ −‖E(a) − E(x)‖₂ (norms over the latent's last axis, as published)
    for `attack.iterations` steps at learning rate `lr`; the result is clipped to the ε-ball of x. Unlike the
    published code, E sees a in [-1, 1], the range the VAE expects (published: [0, 1]). `attack.step_size` is unused.

    Args:
        settings: `CWSettings` (c, lr).
    """

    name = "cw"
    needs_latent = True
    needs_image = True
    update = "tanh-adam"

    def __init__(self, settings: CWSettings = CWSettings()):
        self.c, self.lr = settings.c, settings.lr

    def objective(self, nets, x_adv, clean, progress):
        distortion = ((x_adv + 1) / 2 - (clean.image + 1) / 2).pow(2).flatten(1).sum(1)
        latent_distance = nets.vae_mean([(z.float() - c).norm(dim=-1).flatten(1).sum(1)
                                         for z, c in zip(nets.encode(x_adv, clean.position), clean.latents)])
        cost = distortion - self.c * latent_distance
        return -cost, {"latent_l2": latent_distance, "l2_distortion": distortion}


METHODS: dict[str, type[ProtectionMethod]] = {
    cls.name: cls for cls in (FaceLock, PhotoGuard, EncoderAttack, VAEAttack, CarliniWagnerL2)
}


def build_method(name: str, objective: FaceLockObjective = FaceLockObjective(), cw: CWSettings = CWSettings()) -> ProtectionMethod:
    """The method called `name`. A non-default `objective` configures FaceLock and `cw` CW-L2; either is an error
    for any other method."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    if name != FaceLock.name and objective != FaceLockObjective():
        changed = ", ".join(f"{k}={v}" for k, v in vars(objective).items() if v != getattr(FaceLockObjective(), k))
        raise ValueError(f"model.objective sets FaceLock's terms ({changed}); method {name!r} has none: remove them, "
                         "or set them back to their defaults (e.g. after an offline config, --model.objective.lpips_weight 1)")
    if name != CarliniWagnerL2.name and cw != CWSettings():
        raise ValueError(f"model.cw sets CW-L2's constants; method {name!r} has none (remove it)")
    if name == CarliniWagnerL2.name:
        return CarliniWagnerL2(cw)
    if name != FaceLock.name:
        return METHODS[name]()
    o = objective
    return FaceLock(o.fr_weight, o.latent_weight, o.lpips_weight, o.fr_start, o.lpips_start, o.target_weight,
                    o.face_mse_weight)
