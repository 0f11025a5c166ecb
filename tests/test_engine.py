"""The engine on tiny random models: each method moves its objective the right way, clean-image work
happens once per image, zero-weight terms are never computed, and global_step counts PGD iterations."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pandas as pd
import pytest

from conftest import tiny_module_kwargs
from facelock_pl.data import FaceDataModule
from facelock_pl.engine import ProtectionModule
from facelock_pl.outputs import read_manifest


def fit(module: ProtectionModule, source: Path, out: Path, batch_size: int = 2) -> L.Trainer:
    module.output_dir = out  # what the CLI's --output_dir link sets
    data = FaceDataModule(source=str(source), resolution=64, batch_size=batch_size, output_dir=str(out))
    logger = L.pytorch.loggers.CSVLogger(out, name="logs")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return trainer


def logged(trainer: L.Trainer) -> pd.DataFrame:
    return pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv")


def counting(fn, counter: dict, key: str):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        counter[key] = counter.get(key, 0) + 1
        return fn(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize(
    "method, term, direction",
    [("facelock", "fr_cos", -1), ("facelock", "latent_mse", +1), ("photoguard", "latent_target_dist", -1),
     ("encoder", "latent_mse", +1), ("vae", "recon_norm", -1)],
)
def test_each_method_moves_its_objective(face_folder, tmp_path, method, term, direction):
    iterations = 20
    module = ProtectionModule(**tiny_module_kwargs(method=method, iterations=iterations, eps=0.1, step_size=0.02))
    trainer = fit(module, face_folder, tmp_path / "out")
    assert trainer.global_step == iterations  # one batch of 2 images: one step per PGD iteration
    series = logged(trainer)[f"term/{term}"].dropna().to_numpy()
    assert len(series) >= 10
    first, last = series[:3].mean(), series[-3:].mean()
    assert direction * (last - first) > 0, f"{method}: {term} went {first:.4f} -> {last:.4f}"
    manifest = read_manifest(tmp_path / "out")
    assert set(manifest["status"]) == {"ok"} and (manifest[f"term_{term}"].notna()).all()


def test_clean_work_once_per_image_and_zero_weight_terms_skipped(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(iterations=8))
    calls: dict[str, int] = {}
    nets = module.nets
    nets.vae.encode = counting(nets.vae.encode, calls, "encode")
    nets.vae.decode = counting(nets.vae.decode, calls, "decode")
    nets.recognizers[0].embed = counting(nets.recognizers[0].embed, calls, "embed")
    nets.lpips.features = counting(nets.lpips.features, calls, "lpips_features")
    module.detector.forward = counting(module.detector.forward, calls, "detect")
    fit(module, face_folder, tmp_path / "out", batch_size=1)  # 2 images, 2 batches
    # Per image: detection 1 clean + 1 in the final reconstruction (fr_cos_recon_detected); E: 1 clean +
    # 8 iterations + 1 final re-measure; iterations 3..7 have FR and LPIPS on (3/8 >= 0.35 and > 0.25):
    # D 5 + 1 final, FR 1 clean + 5 + 2 final (source alignment, detected anew), LPIPS features 1 clean + 5.
    assert calls == {"detect": 2 * 2, "encode": 2 * 10, "decode": 2 * 6, "embed": 2 * 8, "lpips_features": 2 * 6}


def test_zero_lpips_weight_loads_and_runs_no_lpips(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(lpips_weight=0.0))
    assert module.nets.lpips is None
    trainer = fit(module, face_folder, tmp_path / "out")
    assert "term/lpips" not in logged(trainer).columns


def test_frozen_networks_stay_in_eval_mode(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(iterations=2))
    fit(module, face_folder, tmp_path / "out")
    assert not any(m.training for m in module.modules())
    assert not any(p.requires_grad for p in module.parameters())


def test_results_do_not_depend_on_batch_composition(face_folder, tmp_path):
    kwargs = tiny_module_kwargs(iterations=6)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b1", batch_size=1)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b2", batch_size=2)
    one, two = read_manifest(tmp_path / "b1"), read_manifest(tmp_path / "b2")
    assert list(one["uid"]) == list(two["uid"])
    for column in ("linf_255", "psnr_db", "fr_cos_recon", "term_latent_mse"):
        assert (one[column] - two[column]).abs().max() < 1e-3, column


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="eps"):
        ProtectionModule(**tiny_module_kwargs(eps=0.0))
    with pytest.raises(ValueError, match="unknown method"):
        ProtectionModule(**tiny_module_kwargs(method="nope"))
    with pytest.raises(ValueError, match="recogniser"):
        ProtectionModule(**tiny_module_kwargs(recognizers=[]))


@pytest.mark.parametrize("method", ["photoguard", "encoder", "vae"])
def test_facelock_settings_for_another_method_are_an_error(method):
    with pytest.raises(ValueError, match=f"model.objective sets FaceLock's terms; method '{method}' has none"):
        ProtectionModule(**tiny_module_kwargs(method=method, fr_weight=2.0))
    assert ProtectionModule(**tiny_module_kwargs(method=method)).attack.method.name == method


def test_zero_fr_weight_needs_no_recogniser_and_runs_no_fr(face_folder, tmp_path):
    """`fr_weight: 0` drops the FR term; with `recognizers: []` nothing face-related is loaded or measured."""
    module = ProtectionModule(**tiny_module_kwargs(fr_weight=0.0, recognizers=[]))
    assert module.detector is None and len(module.nets.recognizers) == 0
    trainer = fit(module, face_folder, tmp_path / "out")
    assert "term/fr_cos" not in logged(trainer).columns
    manifest = read_manifest(tmp_path / "out")
    assert manifest["fr_cos_recon"].isna().all() and manifest["term_latent_mse"].notna().all()


def test_fr_cos_detected_realigns_on_the_reconstruction_and_marks_no_face(face_folder):
    """The detected-anew measure of an unchanged image is the clean measure (cos 1); a faceless image has none."""
    import torch

    from facelock_pl.data import load_rgb
    from facelock_pl.pixels import levels_to_pm1, resize

    attack = ProtectionModule(**tiny_module_kwargs()).attack
    faces = torch.stack([resize(load_rgb(p), (160, 160)) for p in sorted(face_folder.iterdir())])
    clean = attack.clean_features(faces)
    assert clean.face_found.all()
    meter = attack.meter
    torch.testing.assert_close(meter.fr_cos_detected(levels_to_pm1(faces), clean), torch.ones(2), atol=1e-4, rtol=0)

    shifted = torch.roll(faces, shifts=(9, 7), dims=(-2, -1))  # the face moves: only the detected-anew measure follows it
    fixed = meter.fr_cos(levels_to_pm1(shifted), clean)
    detected = meter.fr_cos_detected(levels_to_pm1(shifted), clean)
    assert (detected > fixed).all() and (detected > 0.9).all()

    grey = torch.full_like(faces, 128)
    assert meter.fr_cos_detected(levels_to_pm1(grey), clean).isnan().all()
