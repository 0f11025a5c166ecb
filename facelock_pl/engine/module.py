"""`ProtectionModule`: the frozen networks, and one PGD iteration per Lightning training step.

The data module hands the step a `SlotBoard`: `batch_size` slots, each holding one image at its own
iteration. Each step:
1. refills free slots with new images and does their once-per-image work (face detection, random start,
   E(x), FR(x), LPIPS features of x) for just those images;
2. computes the method's objective on the occupied slots, its input gradient, and the projected sign
   update (`facelock_pl.kernels.pgd_step_`, per-slot step sizes, unoccupied slots masked);
3. finishes the slots whose image reached `iterations` (or, with adaptive stopping, whose quantised
   iterate kept `fr_cos_recon` below `stop_below` for `stop_patience` checks after `min_iterations`; a
   stopping image takes no further step, so the saved file is the one measured): quantises, writes the
   PNG/parquet and the manifest row, re-measures protection on the saved file, frees the slot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from typing import Literal

import lightning as L
import torch
import torch.utils.checkpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from ..data import SlotBoard, collate
from ..models import (
    FaceDetector,
    FaceGeometry,
    LPIPSSpec,
    RecognizerSpec,
    VAESpec,
    load_lpips,
    load_recognizer,
    load_vae,
)
from ..objectives import TERM_NAMES, CleanFeatures, Networks, build_method
from ..objectives.transforms import RandomPurification
from ..outputs import OutputWriter, png_bytes
from ..outputs.manifest import OutputFormat
from .gradients import momentum_update_, smooth_gradient
from .optimizer import SignPGD
from .schedule import random_start, step_sizes
from .summary import RunStats


def quantise_to_levels(x_adv: torch.Tensor, levels: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit levels of x_adv that keep ‖png − x‖∞ ≤ ε: at most ⌊ε·127.5⌋ levels from the source."""
    budget = math.floor(eps * 127.5 + 1e-6)
    rounded = torch.round((x_adv.float() + 1) * 127.5)
    source = levels.float()
    return torch.minimum(torch.maximum(rounded, source - budget), source + budget).clamp(0, 255).to(torch.uint8)


def levels_to_pm1(levels: torch.Tensor) -> torch.Tensor:
    return levels.float() / 127.5 - 1


def pm1_to_levels(x: torch.Tensor) -> torch.Tensor:
    """The 8-bit image (uint8) of x in [-1, 1], as it would be saved."""
    return torch.round((x.float() + 1) * 127.5).clamp(0, 255).to(torch.uint8)


def straight_through_levels(x_adv: torch.Tensor, levels: torch.Tensor, eps: float) -> torch.Tensor:
    """The 8-bit image x_adv would be saved as (in [-1, 1]), with the gradient of the identity
    (straight-through rounding): the forward pass sees exactly the PNG's pixels."""
    saved = levels_to_pm1(quantise_to_levels(x_adv.detach(), levels, eps)).to(x_adv.dtype)
    return x_adv + (saved - x_adv.detach())


def _checkpointed(decode):
    """The decoder with its activations recomputed in backward instead of stored."""
    return lambda z: torch.utils.checkpoint.checkpoint(decode, z, use_reentrant=False)


class SlotState:
    """The images in flight, one per slot. Plain attributes, never buffers (checkpoints must not hold them)."""

    def __init__(self, slots: int, levels: torch.Tensor, clean: CleanFeatures):
        shape = (slots, *levels.shape[1:])
        device = levels.device
        self.levels = torch.zeros(shape, dtype=torch.uint8, device=device)  # the 8-bit source x that ε bounds
        self.x = torch.zeros(shape, device=device)
        self.x_adv = torch.zeros(shape, device=device)  # float32 master copy of the iterate
        self.iteration = torch.zeros(slots, dtype=torch.long, device=device)
        self.streak = torch.zeros(slots, dtype=torch.long, device=device)  # checks in a row below stop_below
        self.velocity = torch.zeros(shape, device=device)  # momentum of the gradient (momentum > 0)
        self.occupied = torch.zeros(slots, dtype=torch.bool, device=device)
        self.clean = clean.slots(slots)
        self.items: list[dict | None] = [None] * slots  # the loader item (metadata; re-queued on OOM)
        self.started = [0.0] * slots
        self.terms: dict[str, torch.Tensor] = {}  # last value of each term, per slot


class ProtectionModule(L.LightningModule):
    """Protects portraits against diffusion editing with an L∞-bounded perturbation found by PGD.

    Args:
        method: `facelock` | `photoguard` | `encoder` | `vae` (see `facelock_pl.objectives`).
        eps: L∞ budget ε in [-1, 1] pixel units (0.03 ≈ 3.8/255).
        step_size: initial step α, decayed linearly to α/100 over the iterations.
        iterations: PGD iterations per image.
        seed: random-start seed; each image's start depends only on (seed, uid).
        vae: the autoencoder E/D (`VAESpec`), or a list of them: a VAE ensemble whose latent and
            reconstruction terms are weighted means (one protection for several editors). The first one is
            the editor that `fr_cos_recon` measures.
        recognizers: face recognisers of the FR term, and for measuring `fr_cos_recon` (`RecognizerSpec`).
        lpips: the LPIPS network (`LPIPSSpec`); not loaded when `lpips_weight` is 0.
        fr_weight, latent_weight, lpips_weight, fr_start, lpips_start: FaceLock's weights and gates.
        fr_reduction: how an ensemble of recognisers is combined: `mean` (weighted) or `max` (worst case).
        eot: expectation over transformation: random differentiable purifications applied to x_adv before
            the autoencoders at every iteration, e.g. `[jpeg:50-90, resize:0.5-1.0, blur:0-1.0, shift:3]`
            (see `facelock_pl.objectives.transforms`); None: off.
        eot_samples: draws averaged per iteration.
        quantise_forward: evaluate the objective on the 8-bit image the iterate would be saved as
            (straight-through rounding) instead of the continuous iterate. The published loop optimises the
            continuous iterate, whose protection partly lives below one 8-bit level and is lost when the PNG
            is written; with this switch the optimisation sees what is saved. With one VAE and no EOT the
            forward pass then also yields `fr_cos_recon` of the current iterate, so adaptive-stopping checks
            cost nothing.
        grad_smoothing: std in pixels of a Gaussian blur of the gradient before the sign step (the
            translation-invariant attack: low-frequency perturbations that JPEG and resizing keep); 0: off.
        momentum: decay of the gradient momentum (MI attack: the step follows decay · past + the
            L1-normalised gradient); 0: off (the published loop).
        stop_below: adaptive stopping: every `stop_check_every` iterations from `min_iterations` on, the
            current iterate is quantised to 8 bits and its `fr_cos_recon` measured; an image whose value is
            below `stop_below` at `stop_patience` checks in a row stops, and its slot is refilled at once.
            None: every image runs `iterations`.
        stop_patience, stop_check_every, min_iterations: see `stop_below`.
        amp_dtype: autocast dtype on CUDA (`bfloat16`, `float16` or None); the iterate stays float32.
        channels_last: run the networks on channels-last tensors.
        compile: `torch.compile` the frozen networks.
        checkpoint_decoder: recompute the VAE decoder's activations in the backward pass (less memory,
            larger batches, ~one more decoder forward per iteration).
        output_format: `png` (images/<uid>.png), `parquet` (dataset/*.parquet: PNG bytes plus every source
            column, loadable with `datasets.load_dataset`) or `both`.
        output_dir: where images and the manifest go (linked from the top-level `--output_dir`).
    """

    def __init__(
        self,
        method: Literal["facelock", "photoguard", "encoder", "vae"] = "facelock",
        eps: float = 0.03,
        step_size: float = 0.01,
        iterations: int = 100,
        seed: int = 0,
        vae: VAESpec | list[VAESpec] | None = None,
        recognizers: list[RecognizerSpec] | None = None,
        lpips: LPIPSSpec | None = None,
        fr_weight: float = 1.0,
        latent_weight: float = 0.2,
        lpips_weight: float = 1.0,
        fr_start: float = 0.35,
        lpips_start: float = 0.25,
        fr_reduction: Literal["mean", "max"] = "mean",
        eot: list[str] | None = None,
        eot_samples: int = 1,
        quantise_forward: bool = False,
        grad_smoothing: float = 0.0,
        momentum: float = 0.0,
        stop_below: float | None = None,
        stop_patience: int = 2,
        stop_check_every: int = 5,
        min_iterations: int = 40,
        amp_dtype: Literal["bfloat16", "float16"] | None = "bfloat16",
        channels_last: bool = False,
        compile: bool = False,
        checkpoint_decoder: bool = False,
        output_format: OutputFormat = "png",
        output_dir: str = "outputs",
    ):
        super().__init__()
        if not 0 < eps <= 2 or step_size <= 0 or iterations < 1:
            raise ValueError(f"need 0 < eps <= 2, step_size > 0, iterations >= 1 (got {eps}, {step_size}, {iterations})")
        if grad_smoothing < 0 or not 0 <= momentum < 1:
            raise ValueError(f"need grad_smoothing >= 0 and 0 <= momentum < 1 (got {grad_smoothing}, {momentum})")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.method = build_method(method, fr_weight=fr_weight, latent_weight=latent_weight, lpips_weight=lpips_weight,
                                   fr_start=fr_start, lpips_start=lpips_start)
        recognizers = [RecognizerSpec()] if recognizers is None else recognizers
        if self.method.needs_faces and not recognizers:
            raise ValueError(f"method {method!r} needs at least one face recogniser")
        if stop_below is not None and not self.method.needs_faces:
            raise ValueError("stop_below (adaptive stopping) watches the FR term: it needs method facelock")
        vaes = vae if isinstance(vae, list) else [vae or VAESpec()]
        self.nets = Networks(
            [load_vae(spec) for spec in vaes],
            [load_recognizer(spec) for spec in recognizers],
            load_lpips(lpips or LPIPSSpec()) if self.method.needs_lpips else None,
            fr_reduction,
            vae_weights=[spec.weight for spec in vaes],
        )
        self.eot = RandomPurification(eot) if eot else None
        self.detector = FaceDetector() if recognizers else None
        self.output_dir = output_dir
        self.state: SlotState | None = None
        self.images_done = 0
        self.stats = RunStats()
        self._writer: OutputWriter | None = None
        self._board: SlotBoard | None = None  # the data module's slot board, handed over each step
        self.requires_grad_(False).eval()
        self._apply_speed_switches()

    def _apply_speed_switches(self) -> None:
        for vae in self.nets.vaes:
            if self.hparams.checkpoint_decoder:
                vae.decode = _checkpointed(vae.decode)
            if self.hparams.compile:
                vae.model.encoder = torch.compile(vae.model.encoder)
                vae.model.decoder = torch.compile(vae.model.decoder)
        if self.hparams.channels_last:
            self.nets.to(memory_format=torch.channels_last)
        if self.hparams.compile:
            for recognizer in self.nets.recognizers:
                recognizer.net = torch.compile(recognizer.net)

    # The frozen networks stay in eval mode: Lightning calls .train() when fitting starts.
    def train(self, mode: bool = True) -> "ProtectionModule":
        return super().train(False)

    def configure_optimizers(self) -> SignPGD:
        return SignPGD(lo=-1.0, hi=1.0)

    @property
    def writer(self) -> OutputWriter:
        if self._writer is None:
            self._writer = OutputWriter(self.output_dir, self.global_rank, self.hparams.output_format)
        return self._writer

    def _autocast(self):
        dtype = self.hparams.amp_dtype
        if self.device.type != "cuda" or dtype is None:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=getattr(torch, dtype))

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.channels_last else x

    # ---- once per image -------------------------------------------------------------------------
    def _clean_features(self, levels: torch.Tensor, valid: torch.Tensor) -> CleanFeatures:
        if self.detector is not None:
            geometry = self.detector(levels)
        else:
            geometry = FaceGeometry.whole_image(levels.shape[0], *levels.shape[-2:]).to(self.device)
        with self._autocast():
            clean = self.nets.clean_features(self._layout(levels_to_pm1(levels)), geometry, self.method.needs_latent,
                                             self.method.needs_lpips)
        clean.face_found = clean.face_found & valid
        return clean

    def _start(self, filled: list[tuple[int, dict]]) -> None:
        """Put new images into their slots; undecodable ones are recorded at once and free their slot."""
        good = [(slot, item) for slot, item in filled if item["status"] == "ok"]
        bad = [(slot, item) for slot, item in filled if item["status"] != "ok"]
        if bad:
            self._record([self._error_row(item) for _, item in bad], {}, {it["uid"]: it["extra"] for _, it in bad})
            self._board.release([slot for slot, _ in bad])
        if not good:
            return
        batch = collate([item for _, item in good])
        levels = batch["image"].to(self.device)
        clean = self._clean_features(levels, torch.ones(len(good), dtype=torch.bool, device=self.device))
        if self.state is None:
            self.state = SlotState(self._board.slots, levels, clean)
        state = self.state
        index = torch.tensor([slot for slot, _ in good], device=self.device)
        state.clean.assign_(index, clean)
        x = levels_to_pm1(levels)
        state.levels[index], state.x[index] = levels, x
        state.x_adv[index] = random_start(x, batch["uid"], self.hparams.seed, self.hparams.eps)
        state.iteration[index], state.streak[index], state.occupied[index] = 0, 0, True
        state.velocity[index] = 0
        now = time.perf_counter()
        for slot, item in good:
            state.items[slot], state.started[slot] = item, now

    # ---- one PGD iteration ----------------------------------------------------------------------
    def training_step(self, board: SlotBoard, batch_idx: int) -> None:
        self._board = board
        self._start(board.refill())
        state = self.state
        # With nothing in the slots this is an idle step (this rank is done): no PGD iteration, and
        # global_step does not move. Every path ends in _sync_stop, which all ranks must reach each step.
        if state is not None and state.occupied.any():
            try:
                self._pgd_iteration(state)
            except torch.cuda.OutOfMemoryError:
                self._back_off(state)
            else:
                self._finish(state)
        self._sync_stop()

    def _pgd_iteration(self, state: SlotState) -> None:
        iterations = self.hparams.iterations
        active = state.occupied.nonzero().flatten()
        progress = state.iteration[active].float() / iterations
        x_in = self._layout(state.x_adv[active]).requires_grad_(True)
        with torch.enable_grad():
            x_seen = straight_through_levels(x_in, state.levels[active], self.hparams.eps) if self.hparams.quantise_forward else x_in
            with self._autocast():
                objective, terms = self._objective(state, active, x_seen, progress)
            grad = torch.zeros_like(state.x_adv)
            grad[active] = self._shape_gradient(state, active, torch.autograd.grad(objective.sum(), x_in)[0].float())
        for name, value in terms.items():
            state.terms.setdefault(name, torch.zeros(len(state.occupied), device=self.device))[active] = value.detach().float()
        self._log_terms(terms)
        stepping = state.occupied
        if self.hparams.stop_below is not None:
            stepping = stepping & ~self._check_stop(state, active, terms)  # a stopping image keeps the iterate measured
        self.optimizers().step(x_adv=state.x_adv, grad=grad, x=state.x, eps=self.hparams.eps, active=stepping,
                               step_size=step_sizes(self.hparams.step_size, state.iteration, iterations))
        state.iteration[stepping] += 1

    def _shape_gradient(self, state: SlotState, active: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """The transfer aids, in the order of the TI-MI attack: smoothing, then momentum."""
        if self.hparams.grad_smoothing > 0:
            grad = smooth_gradient(grad, self.hparams.grad_smoothing)
        if self.hparams.momentum > 0:
            velocity = momentum_update_(state.velocity[active], grad, self.hparams.momentum)
            state.velocity[active] = velocity
            grad = velocity
        return grad

    def _objective(self, state: SlotState, active: torch.Tensor, x_in: torch.Tensor, progress: torch.Tensor):
        """The method's objective; under EOT, its mean over `eot_samples` random purifications of x_in."""
        # All slots busy (the usual case): use the stored features as they are, no per-iteration gather.
        clean = state.clean if len(active) == len(state.occupied) else state.clean.select(active)
        if self.eot is None:
            return self.method.objective(self.nets, x_in, clean, progress)
        uids = [state.items[s]["uid"] for s in active.tolist()]
        draws = [self.method.objective(self.nets, self.eot(x_in, RandomPurification.draws(
            self.hparams.seed, uids, state.iteration[active], d)), clean, progress) for d in range(self.hparams.eot_samples)]
        objective = sum(o for o, _ in draws) / len(draws)
        terms = {name: sum(t[name] for _, t in draws) / len(draws) for name in draws[0][1]}
        return objective, terms

    @property
    def _forward_sees_saved_image(self) -> bool:
        """Whether the objective's `fr_cos` term is `fr_cos_recon` of the current iterate's 8-bit image."""
        return self.hparams.quantise_forward and self.eot is None and len(self.nets.vaes) == 1

    @torch.no_grad()
    def _check_stop(self, state: SlotState, active: torch.Tensor, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """Adaptive stopping: `fr_cos_recon` of the current iterate's 8-bit image, for the slots due a check
        (read from this iteration's forward pass when it saw exactly that image, else measured). Returns the
        slots that stop now."""
        iteration = state.iteration
        due = state.occupied & state.clean.face_found & (iteration >= self.hparams.min_iterations) & (
            iteration % self.hparams.stop_check_every == 0)
        slots = due.nonzero().flatten()
        if len(slots) > 0:
            if self._forward_sees_saved_image and "fr_cos" in terms:
                fr_cos = torch.zeros(len(state.occupied), device=self.device)
                fr_cos[active] = terms["fr_cos"].detach().float()
                fr_cos = fr_cos[slots]
            else:
                png_levels = quantise_to_levels(state.x_adv[slots], state.levels[slots], self.hparams.eps)
                fr_cos = self._fr_cos(self._reconstruct(png_levels), state.clean.select(slots))
            below = fr_cos < self.hparams.stop_below
            state.streak[slots] = torch.where(below, state.streak[slots] + 1, torch.zeros_like(state.streak[slots]))
        return state.occupied & (state.streak >= self.hparams.stop_patience)

    def _reconstruct(self, png_levels: torch.Tensor) -> torch.Tensor:
        """D(E(png)) through the primary autoencoder (the editor `fr_cos_recon` measures), fp32 in [-1, 1]."""
        with self._autocast():
            return self.nets.reconstruct(self.nets.vae.encode(self._layout(levels_to_pm1(png_levels)))).float()

    def _fr_cos(self, images: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """cos(FR(x), FR(images)), aligned with the source's landmarks, as the objective sees it ([B])."""
        with self._autocast():
            return self.nets.fr_cos(images, clean).float()

    def _fr_cos_detected(self, recon: torch.Tensor, clean: CleanFeatures) -> torch.Tensor:
        """cos(FR(x), FR(recon)) as an evaluation measures it: the reconstruction saved as 8 bits and its face
        detected anew ([B]; NaN where none is found). The landmarks move by a few pixels, and a perturbation
        tuned to the source's alignment loses part of its effect (README, Output)."""
        levels = pm1_to_levels(recon)
        geometry = self.detector(levels)
        hw = tuple(levels.shape[-2:])
        realigned = dataclasses.replace(clean, thetas=[r.theta(geometry, hw) for r in self.nets.recognizers])
        return self._fr_cos(levels_to_pm1(levels), realigned).masked_fill(~geometry.found, float("nan"))

    def _log_terms(self, terms: dict[str, torch.Tensor]) -> None:
        metrics = {f"term/{name}": value.detach().float().mean() for name, value in terms.items()}
        if "fr_cos" in terms:
            metrics["fr_sim"] = metrics["term/fr_cos"]
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(next(iter(terms.values()))))

    def _back_off(self, state: SlotState) -> None:
        """Out of GPU memory: halve the slots; images of dropped slots go back to the queue and restart."""
        if self._board.slots == 1:
            raise torch.cuda.OutOfMemoryError("out of memory with a single image per step: lower data.resolution")
        torch.cuda.empty_cache()
        dropped = self._board.shrink(self._board.slots // 2)
        requeue = [state.items[s] for s in dropped if state.occupied[s]]
        state.occupied[dropped] = False
        self._board.requeue(requeue)
        rank_zero_warn(f"facelock_pl: out of GPU memory; continuing with {self._board.slots} images per step")

    def _sync_stop(self) -> None:
        """Several processes: stop together once no rank has work left (ranks must step in lockstep)."""
        if self.trainer.world_size > 1:
            busy = torch.tensor(float(self._board.busy), device=self.device)
            if float(self.trainer.strategy.reduce(busy, reduce_op="max")) == 0:
                self.trainer.should_stop = True

    # ---- once per image, at the end ------------------------------------------------------------
    @torch.no_grad()
    def _finish(self, state: SlotState) -> None:
        done = state.occupied & (state.iteration >= self.hparams.iterations)
        if self.hparams.stop_below is not None:
            done |= state.occupied & (state.iteration >= self.hparams.min_iterations) & (
                state.streak >= self.hparams.stop_patience)
        slots = done.nonzero().flatten()
        if len(slots) == 0:
            return
        png_levels = quantise_to_levels(state.x_adv[slots], state.levels[slots], self.hparams.eps)
        fr_cos = fr_cos_detected = [None] * len(slots)
        if len(self.nets.recognizers):
            clean, recon = state.clean.select(slots), self._reconstruct(png_levels)
            fr_cos = self._fr_cos(recon, clean).tolist()
            fr_cos_detected = [None if math.isnan(v) else v for v in self._fr_cos_detected(recon, clean).tolist()]
        now = time.perf_counter()
        rows, pngs, extras = [], {}, {}
        for j, slot in enumerate(slots.tolist()):
            item = state.items[slot]
            pngs[item["uid"]] = png_bytes(png_levels[j])
            extras[item["uid"]] = item["extra"]
            rows.append(self._row(state, slot, item, png_levels[j], (fr_cos[j], fr_cos_detected[j]), now - state.started[slot]))
        self._record(rows, pngs, extras)
        state.occupied[slots] = False
        self._board.release(slots.tolist())

    def _record(self, rows: list[dict], pngs: dict[str, bytes], extras: dict[str, dict]) -> None:
        self.writer.write_batch(rows, pngs, extras)
        for row in rows:
            self.stats.add(row)
        self.images_done += len(rows)

    def _error_row(self, item: dict) -> dict:
        return {"uid": item["uid"], "source": item["source"], "method": self.hparams.method, "width": int(item["width"]),
                "height": int(item["height"]), "iterations": 0, "seconds": 0.0, "status": "error",
                "message": item["message"]}

    def _row(self, state: SlotState, slot: int, item: dict, levels: torch.Tensor,
             fr_cos_recon: tuple[float | None, float | None], seconds: float) -> dict:
        """One manifest row; `fr_cos_recon` is (source alignment, face detected anew), None where not measured."""
        diff = levels.float() - state.levels[slot].float()
        mse = diff.pow(2).mean().item()
        found = bool(state.clean.face_found[slot])
        row = {"uid": item["uid"], "source": item["source"], "method": self.hparams.method, "width": int(item["width"]),
               "height": int(item["height"]), "iterations": int(state.iteration[slot]), "seconds": seconds,
               "status": "ok" if found else "no_face",
               "message": "" if found else "no face detected: protected without the face-recognition term",
               "linf_255": diff.abs().max().item(),
               "psnr_db": 10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf"),
               "fr_cos_recon": fr_cos_recon[0] if found else None,
               "fr_cos_recon_detected": fr_cos_recon[1] if found else None}
        row.update({f"term_{name}": float(state.terms[name][slot]) for name in TERM_NAMES if name in state.terms})
        if not found:
            row["term_fr_cos"] = None  # computed for the batch, but not part of this image's objective
        return row

    # ---- run level -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and datamodule.batch_size == "auto":
            datamodule.batch_size = self.largest_batch(datamodule.resolution)
            rank_zero_info(f"facelock_pl: batch_size auto -> {datamodule.batch_size}")

    def largest_batch(self, resolution: int, limit: int = 256) -> int:
        """The largest batch whose PGD iteration fits in GPU memory (doubling until out of memory, then
        keeping 90% of it for headroom); 4 on CPU, where memory is not the limit."""
        if self.device.type != "cuda":
            return 4
        fits, size, out_of_memory = 0, 1, False
        while size <= limit and not out_of_memory:
            try:
                levels = torch.randint(0, 256, (size, 3, resolution, resolution), dtype=torch.uint8, device=self.device)
                clean = self._clean_features(levels, torch.ones(size, dtype=torch.bool, device=self.device))
                x_in = levels_to_pm1(levels).requires_grad_(True)
                with torch.enable_grad(), self._autocast():
                    progress = torch.ones(size, device=self.device)  # every term on: the most memory
                    objective, _ = self.method.objective(self.nets, self._layout(x_in), clean, progress)
                torch.autograd.grad(objective.sum(), x_in)
                fits, size = size, size * 2
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True
            finally:
                torch.cuda.empty_cache()
        if fits == 0:
            raise torch.cuda.OutOfMemoryError(f"not even one {resolution}px image fits in GPU memory")
        # Leave headroom for the slot state and the re-measurement of finished images.
        return max(1, int(fits * 0.9)) if out_of_memory else fits

    def on_train_start(self) -> None:
        self.stats.start()

    def on_train_end(self) -> None:
        # Every rank gets here after the same number of steps, so the gather cannot hang.
        self.stats.stop()
        gathered = self.trainer.strategy.all_gather(self.stats.as_tensor()) if self.trainer.world_size > 1 else None
        per_rank = gathered.reshape(self.trainer.world_size, -1) if gathered is not None else self.stats.as_tensor()[None]
        if self.trainer.is_global_zero:
            summary = RunStats.summarise(per_rank.cpu())
            RunStats.write(summary, self.output_dir)
            rank_zero_info(RunStats.describe(summary, self.output_dir))
