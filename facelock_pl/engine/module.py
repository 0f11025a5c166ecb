"""`ProtectionModule`: the frozen networks, and one PGD iteration per Lightning training step.

The data module yields each batch `iterations` times in a row. On the first step of a batch the module
does the once-per-image work (decode → x, random start, face detection, E(x), FR(x), LPIPS features of
x); every step then computes the method's objective on x_adv, its input gradient, and the projected
sign update (`facelock_pl.kernels.pgd_step_`). After the last iteration it quantises, writes the PNGs and
the manifest rows, and re-measures protection on the saved file.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..models import FaceDetector, FaceGeometry, LPIPSSpec, RecognizerSpec, VAESpec, load_lpips, load_recognizer, load_vae
from ..objectives import TERM_NAMES, CleanFeatures, Networks, build_method
from ..data import PAD_STATUS
from ..outputs import OutputWriter, png_bytes
from ..outputs.manifest import OutputFormat
from .summary import RunStats
from .optimizer import SignPGD
from .schedule import random_start, step_sizes


@dataclass
class BatchState:
    """Everything about the batch in flight. Plain attributes, never buffers: shapes change per batch."""

    uids: list[str]
    levels: torch.Tensor  # uint8 [B, 3, H, W]: the 8-bit source, the x that ε bounds
    x: torch.Tensor  # float32 [-1, 1]
    x_adv: torch.Tensor  # float32 master copy of the iterate
    iteration: torch.Tensor  # [B] long
    valid: torch.Tensor  # [B] bool: decoded fine
    clean: CleanFeatures
    meta: dict
    started: float
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # last value of each term


def quantise_to_levels(x_adv: torch.Tensor, levels: torch.Tensor, eps: float) -> torch.Tensor:
    """8-bit levels of x_adv that keep ‖png − x‖∞ ≤ ε: at most ⌊ε·127.5⌋ levels from the source."""
    budget = math.floor(eps * 127.5 + 1e-6)
    rounded = torch.round((x_adv.float() + 1) * 127.5)
    source = levels.float()
    return torch.minimum(torch.maximum(rounded, source - budget), source + budget).clamp(0, 255).to(torch.uint8)


def levels_to_pm1(levels: torch.Tensor) -> torch.Tensor:
    return levels.float() / 127.5 - 1


class ProtectionModule(L.LightningModule):
    """Protects portraits against diffusion editing with an L∞-bounded perturbation found by PGD.

    Args:
        method: `facelock` | `photoguard` | `encoder` | `vae` (see `facelock_pl.objectives`).
        eps: L∞ budget ε in [-1, 1] pixel units (0.03 ≈ 3.8/255).
        step_size: initial step α, decayed linearly to α/100 over the iterations.
        iterations: PGD iterations per image.
        seed: random-start seed; each image's start depends only on (seed, uid).
        vae: the autoencoder E/D (`VAESpec`).
        recognizers: face recognisers of the FR term, and for measuring `fr_cos_recon` (`RecognizerSpec`).
        lpips: the LPIPS network (`LPIPSSpec`); not loaded when `lpips_weight` is 0.
        fr_weight, latent_weight, lpips_weight, fr_start, lpips_start: FaceLock's weights and gates.
        fr_reduction: how an ensemble of recognisers is combined: `mean` (weighted) or `max` (worst case).
        amp_dtype: autocast dtype on CUDA (`bfloat16`, `float16` or None); the iterate stays float32.
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
        vae: VAESpec | None = None,
        recognizers: list[RecognizerSpec] | None = None,
        lpips: LPIPSSpec | None = None,
        fr_weight: float = 1.0,
        latent_weight: float = 0.2,
        lpips_weight: float = 1.0,
        fr_start: float = 0.35,
        lpips_start: float = 0.25,
        fr_reduction: Literal["mean", "max"] = "mean",
        amp_dtype: Literal["bfloat16", "float16"] | None = "bfloat16",
        output_format: OutputFormat = "png",
        output_dir: str = "outputs",
    ):
        super().__init__()
        if not 0 < eps <= 2 or step_size <= 0 or iterations < 1:
            raise ValueError(f"need 0 < eps <= 2, step_size > 0, iterations >= 1 (got {eps}, {step_size}, {iterations})")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.method = build_method(method, fr_weight=fr_weight, latent_weight=latent_weight, lpips_weight=lpips_weight,
                                   fr_start=fr_start, lpips_start=lpips_start)
        recognizers = [RecognizerSpec()] if recognizers is None else recognizers
        use_lpips = self.method.needs_lpips
        self.nets = Networks(
            load_vae(vae or VAESpec()),
            [load_recognizer(spec) for spec in recognizers],
            load_lpips(lpips or LPIPSSpec()) if use_lpips else None,
            fr_reduction,
        )
        if self.method.needs_faces and not recognizers:
            raise ValueError(f"method {method!r} needs at least one face recogniser")
        self.detector = FaceDetector() if recognizers else None
        self.output_dir = Path(output_dir)
        self.state: BatchState | None = None
        self.images_done = 0
        self.stats = RunStats()
        self._writer: OutputWriter | None = None
        self.requires_grad_(False).eval()

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

    # ---- once per image -------------------------------------------------------------------------
    def _start_batch(self, batch: dict) -> BatchState:
        levels = batch["image"]
        valid = torch.tensor([s == "ok" for s in batch["status"]], device=self.device)
        x = levels_to_pm1(levels)
        if self.detector is not None:
            geometry = self.detector(levels)
        else:
            geometry = FaceGeometry.whole_image(levels.shape[0], *levels.shape[-2:]).to(self.device)
        with self._autocast():
            clean = self.nets.clean_features(x, geometry, self.method.needs_latent, self.method.needs_lpips)
        clean.face_found = clean.face_found & valid
        return BatchState(
            uids=list(batch["uid"]), levels=levels, x=x, x_adv=random_start(x, list(batch["uid"]), self.hparams.seed, self.hparams.eps),
            iteration=torch.zeros(len(valid), dtype=torch.long, device=self.device), valid=valid, clean=clean,
            meta={k: batch[k] for k in ("source", "width", "height", "status", "message", "extra")}, started=time.perf_counter(),
        )

    # ---- one PGD iteration ----------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> None:
        if self.state is None or self.state.uids != list(batch["uid"]) or bool((self.state.iteration >= self.hparams.iterations).all()):
            self.state = self._start_batch(batch)
        state = self.state
        iterations = self.hparams.iterations
        progress = state.iteration.float() / iterations
        grad = torch.zeros_like(state.x_adv)
        if state.valid.any():
            x_in = state.x_adv.detach().requires_grad_(True)
            with torch.enable_grad(), self._autocast():
                objective, terms = self.method.objective(self.nets, x_in, state.clean, progress)
            grad = torch.autograd.grad(objective.sum(), x_in)[0]
            state.terms.update({name: value.detach().float() for name, value in terms.items()})
            self._log_terms(terms, state.valid)
        self.optimizers().step(x_adv=state.x_adv, grad=grad, x=state.x, step_size=step_sizes(self.hparams.step_size, state.iteration, iterations),
                               eps=self.hparams.eps, active=state.valid)
        state.iteration += 1
        if bool((state.iteration >= iterations).all()):
            self._finish_batch(state)

    def _log_terms(self, terms: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
        metrics = {f"term/{name}": value.detach().float()[valid].mean() for name, value in terms.items()}
        if "fr_cos" in terms:
            metrics["fr_sim"] = metrics["term/fr_cos"]
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=int(valid.sum()))

    # ---- once per image, at the end ------------------------------------------------------------
    @torch.no_grad()
    def _finish_batch(self, state: BatchState) -> None:
        png_levels = quantise_to_levels(state.x_adv, state.levels, self.hparams.eps)
        fr_cos_recon = None
        if len(self.nets.recognizers) and state.valid.any():
            with self._autocast():
                recon = self.nets.reconstruct(self.nets.vae.encode(levels_to_pm1(png_levels)))
                fr_cos_recon = self.nets.fr_cos(recon.float(), state.clean).float()
        real = [i for i, status in enumerate(state.meta["status"]) if status != PAD_STATUS]
        seconds = (time.perf_counter() - state.started) / max(len(real), 1)
        pngs = {state.uids[i]: png_bytes(png_levels[i]) for i in real if bool(state.valid[i])}
        rows = [self._row(state, i, png_levels[i], fr_cos_recon, seconds) for i in real]
        self.writer.write_batch(rows, pngs, {state.uids[i]: state.meta["extra"][i] for i in real})
        for row in rows:
            self.stats.add(row)
        self.images_done += len(real)

    def _row(self, state: BatchState, i: int, levels: torch.Tensor, fr_cos_recon: torch.Tensor | None, seconds: float) -> dict:
        meta = {k: v[i] for k, v in state.meta.items()}
        row = {"uid": state.uids[i], "source": meta["source"], "method": self.hparams.method, "width": int(meta["width"]),
               "height": int(meta["height"]), "iterations": self.hparams.iterations, "seconds": seconds}
        if not bool(state.valid[i]):
            return {**row, "status": "error", "message": meta["message"], "iterations": 0}
        diff = levels.float() - state.levels[i].float()
        mse = diff.pow(2).mean().item()
        found = bool(state.clean.face_found[i])
        row.update(
            status="ok" if found else "no_face",
            message="" if found else "no face detected: protected without the face-recognition term",
            linf_255=diff.abs().max().item(),
            psnr_db=10 * math.log10(255.0**2 / mse) if mse > 0 else float("inf"),
            fr_cos_recon=float(fr_cos_recon[i]) if fr_cos_recon is not None and found else None,
        )
        row.update({f"term_{name}": float(state.terms[name][i]) for name in TERM_NAMES if name in state.terms})
        if not found:
            row["term_fr_cos"] = None  # computed for the batch, but not part of this image's objective
        return row

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
