"""`ProtectionModule`: the frozen networks, and one PGD iteration per Lightning training step.

Each training step takes new images into the attack's free slots, runs one PGD iteration of every image in
flight (`PGDAttack.step`), and hands the images that finished to the `OutputWriter`. Lightning concerns stay
here: the optimizer that counts iterations in `global_step`, logging, the stop vote across processes, the
run summary.
"""

from __future__ import annotations

import signal
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import lightning as L
import torch

from .. import __version__, logs
from ..data import FaceDataModule, ImageItem, ImageQueue
from ..models import FaceDetector, FaceScorer, LPIPSSpec, RecognizerSpec, VAESpec, load_lpips, load_recognizers, load_vae
from ..models.landmarks import LandmarkReader
from ..models.recognizers import RESERVED_FOR_EVALUATION, calibrated
from ..objectives import CWSettings, FaceLockObjective, Networks, ProtectionMethod, build_method
from ..objectives.targets import TargetPool
from ..outputs import OutputWriter, ProtectedImage
from ..outputs.manifest import OutputFormat
from ..outputs.settings import keep_settings
from ..signals import StopRequests
from .attack import AttackConfig, PGDAttack
from .memory import largest_batch
from .optimizer import SignPGD
from .speed import SpeedConfig
from .stopping import AdaptiveStopping
from .summary import RunStats, describe, write_summary

# What the summary names as the stop when Lightning ended the steps with images left (no stop signal).
TRAINER_LIMIT = "a trainer limit (trainer.max_steps, max_time, limit_train_batches or max_epochs)"


def load_networks(vaes: list[VAESpec], recognizers: list[RecognizerSpec], lpips: LPIPSSpec | None,
                  objective: FaceLockObjective) -> Networks:
    """The frozen autoencoders, recognisers, (when given) LPIPS, (re-alignment) the landmark reader and (identity
    targets) the embedded target faces of an attack."""
    nets = Networks([load_vae(spec) for spec in vaes], load_recognizers(recognizers),
                    load_lpips(lpips) if lpips is not None else None, objective.fr_reduction,
                    vae_weights=[spec.weight for spec in vaes],
                    landmarks=LandmarkReader() if objective.realign else None, crop_jitter=objective.crop_jitter,
                    faces=objective.faces)
    if objective.target_faces is not None:
        nets.targets = TargetPool.from_folder(objective.target_faces, list(nets.recognizers), nets.identity)
    return nets


def check_networks(protection: ProtectionMethod, stopping: AdaptiveStopping, recognizers: list[RecognizerSpec],
                   judges: list[RecognizerSpec]) -> None:
    """Refuse, before any network loads, networks a run cannot work with (`fit` calls it on the config, so the
    message is one line): a method that needs faces without a recogniser; adaptive stopping without the FR term; a
    judge without a threshold or an embedding, or of a reserved kind; judges beside a loss whose own recognisers
    cannot judge (a verdict from the judges alone would read as the loss's networks' too)."""
    if protection.needs_faces and not recognizers:
        raise ValueError(f"method {protection.name!r} needs at least one face recogniser (or objective.fr_weight: 0)")
    if stopping.enabled and not protection.needs_faces:
        raise ValueError("adaptive stopping (stopping.below) watches the FR term: it needs method facelock")
    for spec in judges:
        if spec.kind in RESERVED_FOR_EVALUATION:
            raise ValueError(f"judge {spec.label!r}: the {spec.kind!r} recogniser is reserved to judge transfer in "
                             "`evaluate`; name a recogniser of another kind")
        if spec.threshold is None or spec.feature_layer is not None:
            raise ValueError(f"judge {spec.label!r} needs a calibrated `threshold` (and no feature_layer) to say "
                             "whether it still recognises a photo")
    if judges and not calibrated(recognizers):
        raise ValueError("judges add to the verdict of the loss's recognisers: give every recogniser of the loss a "
                         "calibrated `threshold` too")


def _recorded_objective(objective: FaceLockObjective) -> dict:
    """The objective as protection.json records it: identity targets, the face-MSE term and more faces than the largest
    only where set, so that folders protected before these settings existed keep resuming."""
    recorded = asdict(objective)
    if recorded["target_faces"] is None:
        del recorded["target_faces"], recorded["target_weight"]
    if recorded["face_mse_weight"] == 0:
        del recorded["face_mse_weight"]
    if recorded["faces"] == 1:
        del recorded["faces"]
    return recorded


def _recorded_recognizer(spec: RecognizerSpec, objective: FaceLockObjective) -> dict:
    """A recogniser as protection.json records it: a feature layer only where one is set, so that folders protected
    before the setting existed keep resuming; its threshold only where the loss reads it (`fr_reduction:
    worst_crop`) — elsewhere a threshold only judges the manifest's `recognised_by`, so adding one to a config
    changes no protection and resumes folders protected without it."""
    recorded = asdict(spec)
    if recorded["feature_layer"] is None:
        del recorded["feature_layer"]
    if objective.fr_reduction != "worst_crop":
        recorded["threshold"] = None
    return recorded


class ProtectionModule(L.LightningModule):
    """Protects portraits against diffusion editing with an L∞-bounded perturbation found by PGD.

    Args:
        method: `facelock` | `photoguard` | `encoder` | `vae` | `cw` (see `facelock_pl.objectives`).
        attack: the PGD loop: ε, step size, iterations, seed, quantised forward, EOT, transfer aids (`AttackConfig`).
        objective: FaceLock's term weights and gates (`FaceLockObjective`); method `facelock` only.
        cw: CW-L2's constants (`CWSettings`); method `cw` only.
        stopping: adaptive stopping (`AdaptiveStopping`); off unless `stopping.below` is set.
        speed: mixed precision, channels-last, `torch.compile`, decoder checkpointing (`SpeedConfig`).
        vae: the autoencoder E/D (`VAESpec`), or a list of them: a VAE ensemble whose latent and
            reconstruction terms are weighted means. The first is the editor that `fr_cos_recon` measures.
        recognizers: face recognisers of the FR term; they also measure `fr_cos_recon` (`[]`: none loaded).
        lpips: the LPIPS network (`LPIPSSpec`); loaded only when the method uses LPIPS.
        judges: recognisers outside the loss, each with a calibrated `threshold`, that judge every protected photo
            for the manifest's `recognised_by` beside the loss's own (which need thresholds too); they never change
            the protection (not recorded in protection.json). The reserved kinds stay out: they judge transfer in
            `evaluate`.
        output_format: `png` (images/<uid>.png), `parquet` (dataset/*.parquet: PNG bytes plus every source
            column, loadable with `datasets.load_dataset`) or `both`.
        output_dir: where images and the manifest go (linked from the top-level `--output_dir`).
    """

    def __init__(
        self,
        method: Literal["facelock", "photoguard", "encoder", "vae", "cw"] = "facelock",
        attack: AttackConfig = AttackConfig(),
        objective: FaceLockObjective = FaceLockObjective(),
        cw: CWSettings = CWSettings(),
        stopping: AdaptiveStopping = AdaptiveStopping(),
        speed: SpeedConfig = SpeedConfig(),
        vae: VAESpec | list[VAESpec] | None = None,
        recognizers: list[RecognizerSpec] | None = None,
        lpips: LPIPSSpec | None = None,
        judges: list[RecognizerSpec] | None = None,
        output_format: OutputFormat = "png",
        output_dir: str = "outputs",
    ):
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        protection = build_method(method, objective, cw)
        recognizers = [RecognizerSpec()] if recognizers is None else recognizers
        check_networks(protection, stopping, recognizers, judges or [])
        vaes = vae if isinstance(vae, list) else [vae or VAESpec()]
        self.nets = load_networks(vaes, recognizers, (lpips or LPIPSSpec()) if protection.needs_lpips else None, objective)
        self.detector = FaceDetector() if recognizers else None
        self.judges = FaceScorer(judges) if judges else None
        self.requires_grad_(False).eval()
        speed.apply(self.nets)
        self.attack = PGDAttack(protection, self.nets, self.detector, attack, stopping, speed, judges=self.judges)
        self.objective, self.cw, self.vae_specs = objective, cw, vaes
        self.output_dir = output_dir
        self.images_done = 0
        self.stats = RunStats()
        self.stop_requests = StopRequests()
        self.interrupted_by: str | None = None  # the stop signal's name, once any process received one
        self.work_left = False  # as of the last stop vote: images still to protect on some process
        self.summary: dict | None = None  # summary.json's content, on every process, once the run is over
        self.writer: OutputWriter | None = None  # made at setup, when the output folder is there

    # The frozen networks stay in eval mode: Lightning calls .train() when fitting starts.
    def train(self, mode: bool = True) -> "ProtectionModule":
        return super().train(False)

    def configure_optimizers(self) -> SignPGD:
        return SignPGD(lo=-1.0, hi=1.0)

    # ---- one PGD iteration ----------------------------------------------------------------------------
    def training_step(self, queue: ImageQueue, batch_idx: int) -> None:
        self._record([], self.attack.admit(queue.take(len(self.attack.free_slots()))))
        # With nothing in the slots this is an idle step (this process is done): no PGD iteration, and
        # global_step does not move. Every path ends in the stop vote, which all processes must reach.
        if self.attack.busy:
            try:
                terms = self.attack.step(self.optimizers())
            except torch.cuda.OutOfMemoryError:
                self._back_off(queue)
            else:
                self._log_terms(terms)
                self._record(self.attack.finish(), [])
        self._stop_when_done(queue)

    def _record(self, finished: list[ProtectedImage], failed: list[ImageItem]) -> None:
        for row in self.writer.write(finished, failed):
            self.stats.add(row)
            self.images_done += 1

    def _log_terms(self, terms: dict[str, torch.Tensor]) -> None:
        metrics = {f"term/{name}": value.detach().float().mean() for name, value in terms.items()}
        self.log_dict(metrics, on_step=True, on_epoch=False, batch_size=len(next(iter(terms.values()))))

    def _back_off(self, queue: ImageQueue) -> None:
        """Out of GPU memory: halve the slots; images of dropped slots go back to the queue and restart."""
        if self.attack.capacity == 1:
            raise torch.cuda.OutOfMemoryError("out of memory with a single image per step: lower data.resolution")
        torch.cuda.empty_cache()
        queue.requeue(self.attack.shrink(self.attack.capacity // 2))
        logs.warning(f"facelock_pl: out of GPU memory; continuing with {self.attack.capacity} images per step")

    def _stop_when_done(self, queue: ImageQueue) -> None:
        """Stop once no process has work left, or once any received a stop signal. With several processes they
        vote every step, so all stop after the same step."""
        received = self.stop_requests.received
        vote = torch.tensor([float(self.attack.busy or not queue.empty), float(received or 0)], device=self.device)
        if self.trainer.world_size > 1:
            vote = self.trainer.strategy.reduce(vote, reduce_op="max")
        busy, signum = bool(vote[0]), int(vote[1])
        self.work_left = busy
        if signum:
            self.interrupted_by = signal.Signals(signum).name
        if signum or not busy:
            self.trainer.should_stop = True

    # ---- run level ------------------------------------------------------------------------------------
    def protection_settings(self) -> dict:
        """What decides the protected images (speed switches do not): recorded in OUT/protection.json."""
        attack = self.attack
        settings = {"method": attack.method.name, "attack": asdict(attack.config),
                    "objective": _recorded_objective(self.objective),
                    "stopping": asdict(attack.stopping), "vae": [asdict(spec) for spec in self.vae_specs],
                    "recognizers": [_recorded_recognizer(r.spec, self.objective) for r in self.nets.recognizers]}
        # CW's constants only where they act: folders protected with other methods keep resuming across versions.
        return settings | ({"cw": asdict(self.cw)} if attack.method.name == "cw" else {})

    def check_settings(self, datamodule: FaceDataModule | None, write: bool) -> None:
        """Refuse to protect into a folder made with other settings; record them in a new one (when `write`).
        `datamodule` is None when a test feeds a dataloader of its own."""
        settings = self.protection_settings()
        if datamodule is not None:  # the working image decides the protection as much as the attack does
            settings["data"] = datamodule.protection_settings()
        keep_settings(Path(self.output_dir), settings, write=write)

    def setup(self, stage: str) -> None:
        self.check_settings(self.trainer.datamodule, write=self.global_rank == 0)
        self.writer = OutputWriter(self.output_dir, self.global_rank, self.hparams.output_format,
                                   self.attack.method.name)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is not None and datamodule.batch_size == "auto":
            datamodule.batch_size = largest_batch(self.attack, datamodule.resolution)
            logs.info(f"facelock_pl: batch_size auto -> {datamodule.batch_size}")
        self.attack.capacity = datamodule.batch_size if datamodule is not None else 1

    def on_train_start(self) -> None:
        datamodule = self.trainer.datamodule
        self.work_left = datamodule is not None and datamodule.num_images > datamodule.num_skipped
        self.stats.start()
        self.stop_requests.install()  # after Lightning installed its own handlers (see facelock_pl.signals)

    def on_train_end(self) -> None:
        # Every process gets here after the same number of steps, so the gather cannot hang.
        if self.work_left and self.interrupted_by is None:  # Lightning stopped the steps before the images were done
            self.interrupted_by = TRAINER_LIMIT
        self.stats.stop()
        gathered = self.trainer.strategy.all_gather(self.stats.as_tensor()) if self.trainer.world_size > 1 else None
        per_rank = gathered.reshape(self.trainer.world_size, -1) if gathered is not None else self.stats.as_tensor()[None]
        last_run = {**RunStats.summarise(per_rank.cpu()), "interrupted": self.interrupted_by, "version": __version__}
        if self.trainer.is_global_zero:
            self.summary = write_summary(self.output_dir, last_run)
            logs.info(describe(self.summary, self.output_dir, self.vae_specs[0].name))
        self.summary = self.trainer.strategy.broadcast(self.summary, src=0)
        self.stop_requests.restore()  # only now: a stop signal must not break into the gather or the summary
