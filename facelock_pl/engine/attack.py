"""`PGDAttack`: projected sign-gradient ascent of a method's objective, one iteration per call, over a
fixed number of slots that each hold one image at its own iteration (continuous batching).

    attack.admit(items)           # new images into free slots: detection (a sideways photo turned upright), random
                                  # start, clean features
    terms = attack.step(optim)    # one PGD iteration of every occupied slot
    done = attack.finish()        # images that reached their iterations (or stopped early), as saved

The iteration itself, top to bottom: the method's objective on the iterate (as the PNG will store it, under
random purifications if asked; a photo lying in its file both upright and as it lies), its input gradient (summed
over the channels for a photo without colour), the transfer aids on that gradient, the adaptive stopping check, and
the fused projected sign update (`SignPGD` → `facelock_pl.kernels.pgd_step_`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from ..data.items import ImageItem, crops_canvas
from ..models import FaceDetector, FaceGeometry, FaceScorer
from ..objectives import CleanFeatures, Networks, ProtectionMethod
from ..objectives.transforms import RandomPurification, StoredPosition, crop_draws, parse_chain
from ..outputs.records import ProtectedImage
from ..pixels import (budget_levels, levels_to_pil, levels_to_pm1, quantise_to_levels, resize, straight_through_levels,
                      turned_region)
from .delivery import deliver
from .gradients import grey_where, momentum_update_, smooth_gradient
from .measure import ProtectionMeter
from .optimizer import SignPGD
from .orientation import turn_upright, turned_note, untwist
from .schedule import random_start, step_sizes
from .speed import SpeedConfig
from .stopping import AdaptiveStopping
from .tanh_adam import TanhAdam


@dataclass(frozen=True)
class AttackConfig:
    """The PGD loop every method shares.

    Args:
        eps: L∞ budget ε in [-1, 1] pixel units (0.03 ≈ 3.8/255; saved PNGs differ by ≤ ⌊ε·127.5⌋ = 3 levels).
        step_size: initial step α, decayed linearly to α/100 over the iterations.
        iterations: PGD iterations per image.
        seed: seed of the random start and of the EOT draws; each image's draws depend only on (seed, uid).
        quantise_forward: evaluate the objective on the 8-bit image the iterate would be saved as
            (straight-through rounding) instead of the continuous iterate, whose protection partly lives below
            one 8-bit level and is lost when the PNG is written.
        eot: expectation over transformation: random differentiable purifications applied to the iterate
            before the autoencoders at every iteration, e.g. `[jpeg:50-90, resize:0.5-1.0, blur:0-1.0, shift:3]`
            (see `facelock_pl.objectives.transforms`); None: off.
        eot_samples: EOT draws averaged per iteration.
        grad_smoothing: std in pixels of a Gaussian blur of the gradient before the sign step (translation-
            invariant attack); 0: off.
        momentum: decay of the gradient momentum (MI attack); 0: off (the published loop).
        fill_budget: the saved image moves every pixel the optimisation changed by the whole budget ⌊ε·127.5⌋
            levels along the sign of its change (`pixels.quantise_to_levels`): the found δ, pushed to the L∞
            ball's corner (a sign-PGD iterate leaves ~40% of its pixels inside; PSNR ≈ 40 → 38.9 dB at ε 0.03).
            The optimisation is unchanged: on the tuning faces an objective that saw the filled image gained
            nothing, the fill after it did (benchmarks/robustness.md, "Filling the budget").
        both_positions: a photo optimised turned upright (it lies sideways or upside down with no EXIF orientation
            to say so) is also seen at every iteration in the position it is stored in, as an editor that takes the
            file as it is sees it (`objectives.transforms.StoredPosition`; the objective is the mean of the two), so
            it is protected whether or not the editor turns it upright first, at twice the passes; False: upright
            only. Photos that stand upright are not affected.
    """

    eps: float = 0.03
    step_size: float = 0.01
    iterations: int = 100
    seed: int = 0
    quantise_forward: bool = False
    eot: list[str] | None = None
    eot_samples: int = 1
    grad_smoothing: float = 0.0
    momentum: float = 0.0
    fill_budget: bool = False
    both_positions: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 2 or self.step_size <= 0 or self.iterations < 1 or self.eot_samples < 1:
            raise ValueError(f"need 0 < eps <= 2, step_size > 0, iterations >= 1, eot_samples >= 1 (got {self.eps}, "
                             f"{self.step_size}, {self.iterations}, {self.eot_samples})")
        if budget_levels(self.eps) == 0:
            raise ValueError(f"eps {self.eps} allows no 8-bit level (⌊ε·127.5⌋ = 0): the saved PNG could not differ from "
                             f"the photo; give at least 1/127.5 ≈ 0.0079 (one level; the paper's 0.03 is three)")
        if self.grad_smoothing < 0 or not 0 <= self.momentum < 1:
            raise ValueError(f"need grad_smoothing >= 0 and 0 <= momentum < 1 (got {self.grad_smoothing}, {self.momentum})")
        for spec in self.eot or []:
            parse_chain(spec)  # an unknown purification or a range it cannot take: refused with the settings


class SlotState:
    """The images in flight, one per slot. Plain attributes, never buffers (checkpoints must not hold them)."""

    def __init__(self, slots: int, levels: torch.Tensor, clean: CleanFeatures):
        shape, device = (slots, *levels.shape[1:]), levels.device
        self.levels = torch.zeros(shape, dtype=torch.uint8, device=device)  # the 8-bit working canvas of the source
        self.valid = torch.ones((slots, 1, *levels.shape[2:]), device=device)  # 1 on the image, 0 on the canvas border
        self.x = torch.zeros(shape, device=device)
        self.x_adv = torch.zeros(shape, device=device)  # float32 master copy of the iterate
        self.iteration = torch.zeros(slots, dtype=torch.long, device=device)
        self.streak = torch.zeros(slots, dtype=torch.long, device=device)  # stopping checks in a row below target
        self.velocity = torch.zeros(shape, device=device)  # gradient momentum
        self.occupied = torch.zeros(slots, dtype=torch.bool, device=device)
        self.grey = torch.zeros(slots, dtype=torch.bool, device=device)  # a photo without colour: a grey perturbation
        self.any_grey = False  # some slot has held one: only then is the gradient summed over the channels
        self.clean = clean.slots(slots)
        self.items: list[ImageItem | None] = [None] * slots
        self.turns = [0] * slots  # quarter turns (counter-clockwise) the slot's canvas holds its photo turned by
        self.regions = [(0, 0)] * slots  # the photo's (height, width) in the top left of the slot's canvas
        self.started = [0.0] * slots
        self.terms: dict[str, torch.Tensor] = {}  # the last value of each term, per slot (NaN: not computed)

    def record_terms(self, active: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            store = self.terms.setdefault(name, torch.full_like(self.iteration, float("nan"), dtype=torch.float32))
            store[active] = value.detach().float()


class PGDAttack:
    """PGD of `method`'s objective on the frozen `nets`, over `capacity` slots.

    Args:
        method: what each iteration ascends (`facelock_pl.objectives`).
        nets: the frozen autoencoders, recognisers and LPIPS.
        detector: face detection for the clean images (None: no recogniser, no faces needed).
        config, stopping, speed: the loop's settings, adaptive stopping, speed switches.
        capacity: slots, i.e. images optimised together.
        judges: recognisers outside the loss that judge each finished image for the manifest's `recognised_by`.
    """

    def __init__(self, method: ProtectionMethod, nets: Networks, detector: FaceDetector | None, config: AttackConfig,
                 stopping: AdaptiveStopping, speed: SpeedConfig, capacity: int = 1, judges: FaceScorer | None = None):
        self.method, self.nets, self.detector = method, nets, detector
        self.config, self.stopping, self.speed = config, stopping, speed
        self.capacity = capacity
        self.eot = RandomPurification(config.eot) if config.eot else None
        self.meter = ProtectionMeter(nets, detector, speed, judges)
        self.adam = TanhAdam(method.lr) if method.update == "tanh-adam" else None  # CW-L2 only
        self.slots: SlotState | None = None

    # ---- images in and out -------------------------------------------------------------------------
    def free_slots(self) -> list[int]:
        occupied = self.slots.occupied.tolist() if self.slots is not None else [False] * self.capacity
        return [slot for slot in range(self.capacity) if not occupied[slot]]

    @property
    def busy(self) -> bool:
        return self.slots is not None and bool(self.slots.occupied.any())

    @torch.no_grad()
    def clean_features(self, levels: torch.Tensor, geometry: FaceGeometry | None = None) -> CleanFeatures:
        """Once per image: face geometry (`geometry`: the detector's, when it has run), E(x), FR(x) and LPIPS features
        of the clean 8-bit images."""
        count, others = self.nets.faces, None
        if self.detector is not None:
            geometry = self.detector(levels, count) if geometry is None else geometry
            if count > 1:  # the largest face of each image, then its next ones (rows b·count + k)
                rows = torch.arange(len(geometry.found), device=levels.device).unflatten(0, (-1, count))
                geometry, others = geometry.select(rows[:, 0]), geometry.select(rows[:, 1:].flatten())
        else:
            geometry = FaceGeometry.whole_image(levels.shape[0], *levels.shape[-2:]).to(levels.device)
        with self.speed.autocast(levels.device):
            return self.nets.clean_features(self.speed.layout(levels_to_pm1(levels)), geometry, self.method.needs_latent,
                                            self.method.needs_lpips, self.method.needs_image, others)

    def admit(self, items: list[ImageItem]) -> list[ImageItem]:
        """Give each item a free slot (lowest first); returns the items that could not be read, whose slots stay free."""
        placed = list(zip(self.free_slots(), items))
        good = [(slot, item) for slot, item in placed if item.status == "ok"]
        if good:
            self._start([slot for slot, _ in good], [item for _, item in good])
        return [item for _, item in placed if item.status != "ok"]

    def _start(self, slots: list[int], items: list[ImageItem]) -> None:
        levels = torch.stack([item.image for item in items]).to(self.nets.device)
        turns, geometry = [0] * len(items), None
        if self.detector is not None:
            levels, turns, geometry = turn_upright(self.detector, levels, items, self.nets.faces)
        clean = self.clean_features(levels, geometry)
        regions = [turned_region(item.region, turn) for item, turn in zip(items, turns)]
        if self.config.both_positions and clean.latents is not None:
            clean.stored_latents = self._stored_latents(levels, clean.latents, StoredPosition(turns, regions))
        if self.slots is None or self.slots.levels.shape[1:] != levels.shape[1:]:
            if self.busy:  # canvases of one size per batch; `data.resolution: native` runs one image per step
                raise ValueError(f"a {tuple(levels.shape[-2:])} canvas cannot join a batch of {tuple(self.slots.levels.shape[-2:])}")
            self.slots = SlotState(self.capacity, levels, clean)
        s, index, x = self.slots, torch.tensor(slots, device=levels.device), levels_to_pm1(levels)
        s.clean.assign_(index, clean)
        s.levels[index], s.x[index] = levels, x
        s.valid[index] = torch.stack([self._region_mask(region, levels.shape[-2:]) for region in regions]).to(levels.device)
        s.grey[index] = grey = torch.tensor([item.grey for item in items], device=levels.device)
        s.any_grey = s.any_grey or any(item.grey for item in items)
        if self.adam is not None:  # starts at mid-grey
            self.adam.start(s.x_adv, index)
        else:
            start = random_start(x, [item.uid for item in items], self.config.seed, self.config.eps)
            start = torch.where(grey.view(-1, 1, 1, 1), start[:, :1].expand_as(start), start)  # x's channels are equal
            s.x_adv[index] = torch.where(s.valid[index] > 0, start, x)  # no perturbation on the canvas border
        s.iteration[index], s.streak[index], s.occupied[index], s.velocity[index] = 0, 0, True, 0
        for store in s.terms.values():
            store[index] = float("nan")
        now = time.perf_counter()
        for slot, item, turn, region in zip(slots, items, turns, regions):
            s.items[slot], s.started[slot], s.turns[slot], s.regions[slot] = item, now, turn, region

    @torch.no_grad()
    def _stored_latents(self, levels: torch.Tensor, latents: list[torch.Tensor], position: StoredPosition) -> list[torch.Tensor]:
        """E(x) of each photo in the position it is stored in: `latents` where it stands upright."""
        if not any(position.turns):
            return latents
        with self.speed.autocast(levels.device):
            return [z.float() for z in self.nets.encode(self.speed.layout(levels_to_pm1(levels)), position)]

    @staticmethod
    def _region_mask(region: tuple[int, int], canvas: tuple[int, int]) -> torch.Tensor:
        mask = torch.zeros(1, *canvas)
        mask[:, : region[0], : region[1]] = 1
        return mask

    def shrink(self, capacity: int) -> list[ImageItem]:
        """Use only `capacity` slots from now on; returns the images of dropped slots (to restart later)."""
        dropped = list(range(capacity, self.capacity))
        self.capacity = capacity
        if self.slots is None:
            return []
        requeue = [self.slots.items[slot] for slot in dropped if self.slots.occupied[slot]]
        self.slots.occupied[dropped] = False
        return requeue

    # ---- one PGD iteration ---------------------------------------------------------------------------
    def step(self, optimizer: SignPGD) -> dict[str, torch.Tensor]:
        """One iteration of every occupied slot; returns each term's per-image values (for logging)."""
        s, cfg = self.slots, self.config
        active = s.occupied.nonzero().flatten()
        x_in = self.speed.layout(s.x_adv[active]).requires_grad_(True)
        with torch.enable_grad():
            x_seen = straight_through_levels(x_in, s.levels[active], cfg.eps) if cfg.quantise_forward else x_in
            with self.speed.autocast(x_in.device):
                objective, terms = self._objective(x_seen, active)
            grad = torch.zeros_like(s.x_adv)
            grad_in = torch.autograd.grad(objective.sum(), x_in)[0].float()
            grad_in = grey_where(grad_in, s.grey[active]) if s.any_grey else grad_in
            grad[active] = self._shape_gradient(grad_in, active) * s.valid[active]
        s.record_terms(active, terms)
        stepping = s.occupied & ~self._stops_now(active, terms)  # a stopping image keeps the iterate it was measured at
        if self.adam is None:  # the fused projected sign update
            optimizer.step(x_adv=s.x_adv, grad=grad, x=s.x, eps=cfg.eps, active=stepping,
                           step_size=step_sizes(cfg.step_size, s.iteration, cfg.iterations))
        else:  # CW-L2: Adam in tanh space; the optimizer only counts the iteration (global_step)
            self.adam.step(s.x_adv, grad, stepping)
            optimizer.step()
        s.iteration[stepping] += 1
        return terms

    def _objective(self, x: torch.Tensor, active: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The method's objective ([B]) and terms; under EOT or crop jitter, their mean over `eot_samples` random
        purifications and crops; for a photo that lies in its file (`both_positions`), their mean over the photo seen
        upright and as it lies."""
        s = self.slots
        # All slots busy (the usual case): the stored features as they are, no per-iteration gather.
        clean = s.clean if len(active) == len(s.occupied) else s.clean.select(active)
        objective, terms = self._expected_objective(x, active, clean)
        lying = self._lying(active)
        if lying is None:
            return objective, terms
        index, position = lying
        laid_objective, laid_terms = self._expected_objective(x[index], active[index],
                                                              clean.select(index).in_position(position))
        objective = objective.index_put((index,), (objective[index] + laid_objective) / 2)
        terms = {name: value.index_put((index,), (value[index] + laid_terms[name]) / 2) if name in laid_terms else value
                 for name, value in terms.items()}  # a term none of the lying photos needs now: as seen upright
        return objective, terms

    def _expected_objective(self, x: torch.Tensor, active: torch.Tensor,
                            clean: CleanFeatures) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The objective and terms of `active`'s iterates `x`, their mean over the EOT draws and crops."""
        s, cfg = self.slots, self.config
        progress = s.iteration[active].float() / cfg.iterations
        if self.eot is None and not self.nets.crop_jitter:
            return self.method.objective(self.nets, x, clean, progress)
        uids, iterations = [s.items[slot].uid for slot in active.tolist()], s.iteration[active]
        draws = []
        for d in range(cfg.eot_samples):
            seen = self.eot(x, self.eot.draws(cfg.seed, uids, iterations, d)) if self.eot is not None else x
            if self.nets.crop_jitter:
                clean = dataclasses.replace(clean, alignment_draws=crop_draws(cfg.seed, uids, iterations, d))
            draws.append(self.method.objective(self.nets, seen, clean, progress))
        objective = sum(o for o, _ in draws) / len(draws)
        return objective, {name: sum(t[name] for _, t in draws) / len(draws) for name in draws[0][1]}

    def _lying(self, active: torch.Tensor) -> tuple[torch.Tensor, StoredPosition] | None:
        """The rows of `active` whose photos lie in their files (`both_positions`), and the position that shows them
        as they lie; None where there are none."""
        s = self.slots
        if not self.config.both_positions or not any(s.turns):  # the usual case: no slot reads the iterates' indices
            return None
        slots = active.tolist()
        rows = [row for row, slot in enumerate(slots) if s.turns[slot]]
        if not rows:
            return None
        return (torch.tensor(rows, device=active.device),
                StoredPosition([s.turns[slots[row]] for row in rows], [s.regions[slots[row]] for row in rows]))

    def _shape_gradient(self, grad: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The transfer aids, in the order of the TI-MI attack: smoothing, then momentum."""
        if self.config.grad_smoothing > 0:
            grad = smooth_gradient(grad, self.config.grad_smoothing)
        if self.config.momentum > 0:
            grad = momentum_update_(self.slots.velocity[active], grad, self.config.momentum)
            self.slots.velocity[active] = grad
        return grad

    @torch.no_grad()
    def _stops_now(self, active: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Slots ([B] bool) whose image stops at this iteration under adaptive stopping."""
        s = self.slots
        if not self.stopping.enabled:
            return torch.zeros_like(s.occupied)
        due = self.stopping.due(s.iteration, s.occupied & s.clean.face_found).nonzero().flatten()
        if len(due) > 0:
            self.stopping.record_(s.streak, due, self._fr_cos_of_iterate(due, active, terms))
        return s.occupied & self.stopping.stopped(s.streak)

    def _fr_cos_of_iterate(self, slots: torch.Tensor, active: torch.Tensor, terms: dict) -> torch.Tensor:
        """`fr_cos_recon` of the current iterates' 8-bit images, as they would be saved. When this iteration's
        forward pass saw exactly those images (quantised forward, no fill, one autoencoder, no EOT) and its FR term
        is that cosine (no feature-layer term, no margins, one face), the term is the value: no extra pass. With
        several faces in the term, the face that keeps the most identity is measured (the term is their mean)."""
        s = self.slots
        if (self.config.quantise_forward and not self.config.fill_budget and self.eot is None
                and len(self.nets.vaes) == 1 and "fr_cos" in terms and self.nets.loss_fr_is_reported
                and self._lying(active) is None):
            per_slot = torch.zeros(len(s.occupied), device=s.x.device)
            per_slot[active] = terms["fr_cos"].detach().float()
            return per_slot[slots]
        png = quantise_to_levels(s.x_adv[slots], s.levels[slots], self.config.eps, self.config.fill_budget)
        return self.meter.fr_cos_worst_face(self.meter.reconstruct(png), s.clean.select(slots))

    # ---- finished images -----------------------------------------------------------------------------
    @torch.no_grad()
    def finish(self) -> list[ProtectedImage]:
        """The images that ran their iterations (or stopped early), quantised as saved and measured; frees their slots."""
        s = self.slots
        done = s.occupied & (s.iteration >= self.config.iterations)
        if self.stopping.enabled:
            done |= s.occupied & self.stopping.stopped(s.streak)
        slots = done.nonzero().flatten()
        if len(slots) == 0:
            return []
        finished = [self._deliver(slot) for slot in slots.tolist()]
        s.occupied[slots] = False
        return finished

    def _faces_protected(self, slot: int) -> int:
        """The faces of the slot's photo in the FR term: its largest, where found, and the next ones found."""
        clean = self.slots.clean
        others = int(clean.other_found[slot].sum()) if clean.other_found is not None else 0
        return int(clean.face_found[slot]) + others

    def _deliver(self, slot: int) -> ProtectedImage:
        """One finished image at its native size, measured as the editor will see it."""
        s, item, turn = self.slots, self.slots.items[slot], self.slots.turns[slot]
        x_adv, x = (untwist(canvas, item.region, turn) for canvas in (s.x_adv[slot], s.x[slot]))
        png = deliver(x_adv, x, item.region, item.native, self.config.eps, item.crops, self.config.fill_budget)
        # Measured as the editor sees it: the whole frame at its working size or, in face-region mode, each face's
        # square in its cell of the canvas, as the optimisation saw it (an editor given the person's crop; in the
        # frame, a face small enough to need the mode is not even found). A photo protected turned upright is
        # measured turned so, as the person's face is seen, and as it lies in its file.
        if item.crops:
            seen = crops_canvas(levels_to_pil(png), item.crops, item.region[0])
            source_seen, view = item.image, item.region
        else:
            seen, source_seen, view = png, resize(levels_to_pil(item.native), item.view[::-1]), item.view
        measured_png, view = torch.rot90(seen.to(png.device), turn, (1, 2)), turned_region(view, turn)
        source_seen = torch.rot90(source_seen[None].to(png.device), turn, (2, 3))
        if turn:
            item.message = "; ".join(filter(None, [item.message, turned_note(turn, self.config.both_positions)]))
        # The slot's features, aligned on the canvas (the frame padded to it, or the face cells)
        clean, canvas = s.clean.select(torch.tensor([slot])), tuple(s.levels.shape[-2:])
        protected = self._faces_protected(slot)
        measured = self.meter.delivered(measured_png, view, clean, source_seen, protected, canvas, stored_turn=turn)
        return ProtectedImage(
            item=item, levels=png.cpu(), source_levels=item.native, iterations=int(s.iteration[slot]),
            face_found=bool(s.clean.face_found[slot]), terms={name: float(v[slot]) for name, v in s.terms.items()},
            fr_cos_recon=measured.fr_cos_recon, fr_cos_recon_detected=measured.fr_cos_recon_detected,
            recognised_by=measured.recognised_by, faces_in_photo=measured.faces_in_photo,
            seconds=time.perf_counter() - s.started[slot],
            faces_protected=None if measured.faces_in_photo is None else protected)
