"""The engine on tiny random models: each method moves its objective the right way, clean-image work
happens once per image, zero-weight terms are never computed, and global_step counts PGD iterations."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import astronaut, grace_hopper, tiny_module_kwargs
from facelock_pl.data import FaceDataModule
from facelock_pl.engine import ProtectionModule
from facelock_pl.outputs import read_manifest
from facelock_pl.outputs.manifest import OutputWriter
from facelock_pl.outputs.settings import read_settings
from facelock_pl.models import FrozenVAE
from facelock_pl.pixels import levels_to_pm1, pil_to_levels, read_levels


def fit(module: ProtectionModule, source: Path, out: Path, batch_size: int = 2, resolution: int = 64, **data) -> L.Trainer:
    module.output_dir = out  # what the CLI's --output_dir link sets
    data = FaceDataModule(source=str(source), resolution=resolution, batch_size=batch_size, output_dir=str(out), **data)
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
    nets.recognizers[0].embeddings = counting(nets.recognizers[0].embeddings, calls, "embed")  # a pass of the network
    nets.lpips.features = counting(nets.lpips.features, calls, "lpips_features")
    module.detector.forward = counting(module.detector.forward, calls, "detect")
    fit(module, face_folder, tmp_path / "out", batch_size=1)  # 2 images, 2 batches
    # Per image: detection 1 clean + 1 in the final reconstruction (fr_cos_recon_detected); E: 1 clean +
    # 8 iterations + 1 final re-measure; iterations 3..7 have FR and LPIPS on (3/8 >= 0.35 and > 0.25):
    # D 5 + 1 final, FR 1 clean + 5 + 2 final (source alignment, detected anew), LPIPS features 1 clean + 5.
    # Grace Hopper's portrait is not square: one more round trip at delivery, of the frame padded to the canvas, for
    # `fr_cos_recon` (whose crops are the canvas's).
    assert calls == {"detect": 2 * 2, "encode": 2 * 10 + 1, "decode": 2 * 6 + 1, "embed": 2 * 8, "lpips_features": 2 * 6}


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
    with pytest.raises(ValueError, match=rf"model.objective sets FaceLock's terms \(fr_weight=2.0\); method '{method}' has none"):
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


def test_cosines_detected_realign_on_the_reconstruction_and_mark_no_face(face_folder):
    """The detected-anew measure of an unchanged image is the clean measure (cos 1); a faceless image has none."""
    import torch

    from facelock_pl.data import load_rgb
    from facelock_pl.pixels import levels_to_pm1, resize

    attack = ProtectionModule(**tiny_module_kwargs()).attack
    faces = torch.stack([resize(load_rgb(p), (160, 160)) for p in sorted(face_folder.iterdir())])
    clean = attack.clean_features(faces)
    assert clean.face_found.all()
    meter = attack.meter
    torch.testing.assert_close(meter.cosines_detected(faces, clean), torch.ones(1, 2), atol=1e-4, rtol=0)

    shifted = torch.roll(faces, shifts=(9, 7), dims=(-2, -1))  # the face moves: only the detected-anew measure follows it
    fixed = meter.fr_cos(levels_to_pm1(shifted), clean)
    detected = meter.cosines_detected(shifted, clean)[0]
    assert (detected > fixed).all() and (detected > 0.9).all()

    grey = torch.full_like(faces, 128)
    assert meter.cosines_detected(grey, clean).isnan().all()


def test_fr_cos_recon_of_a_photo_that_is_not_square_crops_the_face_where_the_objective_did(tmp_path):
    """The objective aligns each face on the working canvas (the frame padded to a square at its bottom and right);
    the manifest's `fr_cos_recon` must crop the reconstruction of the frame there too, or a landscape photo's number
    is of the wrong crop (0.93 instead of 1.00 here, for a photo the editor returns as it is)."""
    from conftest import astronaut
    from test_recognised import faithful_editor

    (tmp_path / "faces").mkdir()
    astronaut().crop((0, 0, 512, 512)).save(tmp_path / "faces" / "square.png")
    astronaut().crop((0, 0, 512, 300)).save(tmp_path / "faces" / "wide.png")
    module = faithful_editor(ProtectionModule(**tiny_module_kwargs(iterations=1, eps=0.008)))  # one 8-bit level
    fit(module, tmp_path / "faces", tmp_path / "out", resolution=128)
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert (rows.loc["wide", "working_width"], rows.loc["wide", "working_height"]) == (128, 72)
    assert rows["fr_cos_recon"].tolist() == pytest.approx([1.0, 1.0], abs=1e-4)


def test_the_vae_attack_descends_the_unclipped_reconstruction_as_published():
    """Clipping D(E(x)) to [-1, 1] would give saturated pixels no gradient; the published attack does not clip."""
    import torch

    from facelock_pl.models import FaceGeometry
    from facelock_pl.objectives import VAEAttack

    nets = ProtectionModule(**tiny_module_kwargs(method="vae")).nets
    with torch.no_grad():
        nets.vae.model.decoder.conv_out.weight.mul_(50)  # reconstructions far outside [-1, 1]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    clean = nets.clean_features(x, FaceGeometry.whole_image(2, 32, 32), need_latent=False, need_lpips=False)
    objective, terms = VAEAttack().objective(nets, x, clean, torch.zeros(2))
    unclipped = nets.vae.decode(nets.vae.encode(x)).flatten(1).norm(dim=1)
    assert torch.allclose(terms["recon_norm"], unclipped) and (nets.vae.decode(nets.vae.encode(x)).abs() > 1).any()
    assert torch.allclose(objective, -unclipped)


def test_cw_objective_is_the_published_cost_with_the_vae_fed_minus_one_to_one():
    import torch

    from facelock_pl.objectives import CarliniWagnerL2, CWSettings

    module = ProtectionModule(**tiny_module_kwargs(method="cw", cw=CWSettings(c=0.5, lr=0.01)))
    nets = module.nets
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    x_adv = (x + 0.2 * torch.randn(2, 3, 32, 32)).clamp(-1, 1)
    clean = nets.clean_features(x, module.detector(((x + 1) * 127.5).round().byte()), True, False, need_image=True)
    objective, terms = CarliniWagnerL2(CWSettings(c=0.5, lr=0.01)).objective(nets, x_adv, clean, torch.zeros(2))
    distortion = (((x_adv + 1) / 2 - (x + 1) / 2) ** 2).flatten(1).sum(1)  # in [0, 1] units, as published
    latent = (nets.vae.encode(x_adv) - nets.vae.encode(x)).norm(dim=-1).flatten(1).sum(1)  # E sees [-1, 1]
    torch.testing.assert_close(objective, -(distortion - 0.5 * latent))
    torch.testing.assert_close(terms["l2_distortion"], distortion)


def test_tanh_adam_follows_torch_adam():
    """Ascending the objective in tanh space equals torch.optim.Adam descending the cost on w."""
    import torch

    from facelock_pl.engine.tanh_adam import TanhAdam

    target = torch.tensor([[0.3, -0.7]])
    cost = lambda x: ((x - target) ** 4).sum()  # noqa: E731
    w = torch.zeros(1, 2, requires_grad=True)
    reference = torch.optim.Adam([w], lr=0.05)
    ours, x_adv = TanhAdam(lr=0.05), torch.zeros(1, 2)
    ours.start(x_adv, torch.tensor([0]))
    for _ in range(20):
        reference.zero_grad()
        cost(torch.tanh(w)).backward()
        reference.step()
        x = x_adv.clone().requires_grad_(True)
        (-cost(x)).backward()
        ours.step(x_adv, x.grad, torch.tensor([True]))
    torch.testing.assert_close(x_adv, torch.tanh(w.detach()), atol=1e-5, rtol=0)  # float rounding over 20 steps
    assert (x_adv - target).abs().max() < 0.2


def test_cw_runs_in_the_engine_and_stays_in_the_budget(face_folder, tmp_path):
    from facelock_pl.objectives import CWSettings

    trainer = fit(ProtectionModule(**tiny_module_kwargs(method="cw", iterations=5)), face_folder, tmp_path / "out")
    manifest = read_manifest(tmp_path / "out")
    assert trainer.global_step == 5 and (manifest["iterations"] == 5).all() and (manifest["linf_255"] <= 3).all()
    assert manifest["term_l2_distortion"].notna().all() and manifest["method"].eq("cw").all()
    # CW's constants are recorded for CW only: other methods' folders resume as they did before CW existed
    assert ProtectionModule(**tiny_module_kwargs(method="cw")).protection_settings()["cw"] == asdict(CWSettings())
    assert "cw" not in ProtectionModule(**tiny_module_kwargs()).protection_settings()
    with pytest.raises(ValueError, match="model.cw sets CW-L2's constants; method 'facelock' has none"):
        ProtectionModule(**tiny_module_kwargs(cw=CWSettings(c=1.0)))


def test_a_feature_layer_is_recorded_where_set_so_older_folders_keep_resuming(tmp_path):
    from facelock_pl.config_files import ConfigError
    from facelock_pl.models import RecognizerSpec
    from facelock_pl.outputs.settings import keep_settings

    plain = ProtectionModule(**tiny_module_kwargs()).protection_settings()
    featured = ProtectionModule(**tiny_module_kwargs(recognizers=[
        RecognizerSpec(kind="tiny-random"), RecognizerSpec(kind="tiny-random", feature_layer="3")])).protection_settings()
    assert "feature_layer" not in plain["recognizers"][0]  # as folders made before the setting recorded it
    assert featured["recognizers"][0] == plain["recognizers"][0] and featured["recognizers"][1]["feature_layer"] == "3"
    keep_settings(tmp_path, featured, write=True)
    with pytest.raises(ConfigError, match="recognizers differs;"):
        keep_settings(tmp_path, plain, write=True)


def test_a_folder_compares_its_weights_by_content_moved_or_replaced_in_place(tmp_path, caplog):
    """A bundle moved (or copied to a node's scratch disk) resumes a folder; other bytes, at any path, do not."""
    import hashlib
    import json
    import shutil

    from facelock_pl.config_files import ConfigError
    from facelock_pl.models import RecognizerSpec, VAESpec
    from facelock_pl.outputs.settings import SETTINGS_NAME, keep_settings, same_setting

    bundle, out = tmp_path / "bundle", tmp_path / "out"
    (bundle / "vae").mkdir(parents=True)
    (bundle / "vae" / "decoder.safetensors").write_bytes(b"decoder")
    (bundle / "fr.onnx").write_bytes(b"recogniser")
    out.mkdir()

    def settings(where: Path) -> dict:  # the random kinds load nothing: the paths are only recorded
        return ProtectionModule(**tiny_module_kwargs(
            vae=VAESpec(kind="tiny-random-kl", path=str(where / "vae")),
            recognizers=[RecognizerSpec(kind="tiny-random", weights=str(where / "fr.onnx")),
                         RecognizerSpec(kind="tiny-random", weights="vggface2")])).protection_settings()

    keep_settings(out, settings(bundle), write=True)
    record = json.loads((out / SETTINGS_NAME).read_text())
    assert record["files"][str(bundle / "fr.onnx")] == "sha256:" + hashlib.sha256(b"recogniser").hexdigest()
    assert set(record["files"]) == {str(bundle / "vae"), str(bundle / "fr.onnx")}  # a hub id names no local file
    scratch = tmp_path / "scratch"
    bundle.rename(scratch)
    with caplog.at_level("INFO", logger="facelock_pl"):
        keep_settings(out, settings(scratch), write=True)  # resumes, and says why
    assert "recognizers, vae name(s) the weights at other paths, with the content recorded" in caplog.text
    assert json.loads((out / SETTINGS_NAME).read_text()) == record  # the first run's record stays

    (scratch / "fr.onnx").write_bytes(b"fine-tuned")
    with pytest.raises(ConfigError, match=r"\(recognizers differs; see"):
        keep_settings(out, settings(scratch), write=True)
    (scratch / "fr.onnx").write_bytes(b"recogniser")
    shutil.copy(scratch / "vae" / "decoder.safetensors", scratch / "vae" / "encoder.safetensors")
    with pytest.raises(ConfigError, match=r"\(vae differs; see"):  # a folder's digest covers every file in it
        keep_settings(out, settings(scratch), write=True)
    (scratch / "vae" / "encoder.safetensors").unlink()
    keep_settings(out, settings(scratch), write=True)

    # A folder made before the digests were recorded has only its paths: the weights named elsewhere are the same
    # where the recorded paths still hold their bytes, not when those paths are gone or hold other bytes.
    del record["files"]
    (out / SETTINGS_NAME).write_text(json.dumps(record))
    with pytest.raises(ConfigError, match="recognizers differs, vae differs"):
        keep_settings(out, settings(scratch), write=True)  # the recorded bundle is gone
    shutil.copytree(scratch, bundle)
    caplog.clear()
    with caplog.at_level("INFO", logger="facelock_pl"):
        keep_settings(out, settings(scratch), write=True)
    assert "recognizers, vae name(s) the weights at other paths, with the bytes at the recorded paths" in caplog.text
    assert json.loads((out / SETTINGS_NAME).read_text()) == record  # nothing recorded after the fact
    (bundle / "fr.onnx").write_bytes(b"another")
    with pytest.raises(ConfigError, match=r"\(recognizers differs; see"):
        keep_settings(out, settings(scratch), write=True)
    shutil.rmtree(bundle)

    # Other bytes at the very path the folder was made with (weights replaced in place) are other settings too.
    again = tmp_path / "again"
    again.mkdir()
    keep_settings(again, settings(scratch), write=True)
    recorded_digests = json.loads((again / SETTINGS_NAME).read_text())["files"]
    (scratch / "fr.onnx").write_bytes(b"replaced")
    with pytest.raises(ConfigError, match=f"{scratch / 'fr.onnx'} holds other bytes than when the folder was made"):
        keep_settings(again, settings(scratch), write=True)
    onnx = str(scratch / "fr.onnx")  # as `edit` compares its editor's weights
    assert not same_setting(onnx, onnx, recorded_digests) and same_setting("vggface2", "vggface2", recorded_digests)


def test_a_photo_without_colour_keeps_a_grey_perturbation_beside_a_colour_one(face_folder, tmp_path, monkeypatch):
    Image.open(face_folder / "grace_hopper.jpg").convert("L").save(face_folder / "grace_hopper.png")
    (face_folder / "grace_hopper.jpg").unlink()
    delivered, write = {}, OutputWriter.write

    def keep(self, finished, failed=()):
        delivered.update({image.item.uid: image.levels for image in finished})
        return write(self, finished, failed)

    monkeypatch.setattr(OutputWriter, "write", keep)
    # One batch of both, the perturbation resized from the 64-px canvas to each photo's own size, at the full budget.
    fit(ProtectionModule(**tiny_module_kwargs(iterations=4, fill_budget=True)), face_folder, tmp_path / "out")
    moved = {uid: delivered[uid].int() - read_levels(face_folder / f"{uid}.png").int()
             for uid in ("grace_hopper", "astronaut")}
    assert moved["grace_hopper"].abs().max() == 3 and (moved["grace_hopper"] == moved["grace_hopper"][:1]).all()
    assert moved["astronaut"].abs().max() == 3 and (moved["astronaut"] != moved["astronaut"][:1]).any()
    with Image.open(tmp_path / "out" / "images" / "grace_hopper.png") as png:
        assert png.mode == "L" and torch.equal(torch.from_numpy(np.array(png)), delivered["grace_hopper"][0])
    assert read_settings(tmp_path / "out")["data"]["keep_grey"] is True  # data.keep_grey, the default


@pytest.mark.parametrize(("portrait", "size", "resolution", "lying"), [
    (astronaut, (128, 128), 128, 1), (astronaut, (104, 128), "native", 1), (grace_hopper, (96, 96), 96, 1),
    (grace_hopper, (96, 96), 96, 2)])
def test_a_sideways_photo_is_protected_turned_upright_exactly_as_the_upright_one(tmp_path, portrait, size, resolution,
                                                                                  lying):
    """A photo lying on its left (`lying` quarter turns from upright, counter-clockwise) or upside down: at the working
    size, at a photo's own size that is not square (its canvas turns with it), and where a face is found turned the
    wrong way too (Grace Hopper at 96 px: on its left and turned counter-clockwise, upside down then, a face of
    probability 0.986 where the right turn's is 1.0; upside down, a face of 0.986 as it stands)."""
    folders = {name: tmp_path / name for name in ("upright", "sideways")}
    photo = portrait().crop((0, 0, 512, 512)).resize(size, Image.Resampling.LANCZOS)  # no resampling anywhere after
    for name, image in (("upright", photo), ("sideways", photo.rotate(90 * lying, expand=True))):
        folders[name].mkdir()
        image.save(folders[name] / "astronaut.png")
    kwargs = tiny_module_kwargs(iterations=4, both_positions=False)  # upright only: what the upright photo's loss sees
    fit(ProtectionModule(**kwargs), folders["upright"], tmp_path / "upright-out", resolution=resolution, batch_size=1)
    fit(ProtectionModule(**kwargs), folders["sideways"], tmp_path / "turned-out", resolution=resolution, batch_size=1)
    upright, turned = read_manifest(tmp_path / "upright-out").iloc[0], read_manifest(tmp_path / "turned-out").iloc[0]
    note = {1: "turned 90° clockwise", 2: "turned upside down"}[lying]
    assert turned["status"] == "ok" and note in turned["message"] and upright["message"] == ""
    # Turned back upright, the protected photo is the upright photo's protected copy: the same canvas, start and steps.
    png = {name: read_levels(tmp_path / f"{name}-out" / "images" / "astronaut.png") for name in ("upright", "turned")}
    assert torch.equal(torch.rot90(png["turned"], -lying, (1, 2)), png["upright"])
    # Measured turned upright too (and as it lies, where the tiny autoencoder leaves no face to find either way).
    columns = ["fr_cos_recon", "fr_cos_recon_detected", "faces_in_photo", "psnr_db"]
    assert upright["faces_in_photo"] == 1 and np.allclose(upright[columns].astype(float), turned[columns].astype(float),
                                                          atol=1e-6, equal_nan=True)


def test_in_a_batch_each_photo_is_turned_its_own_way(tmp_path):
    """Three photos in one step: one upright, one on its left, one upside down; each is turned its own way only."""
    source = tmp_path / "photos"
    source.mkdir()
    photo = grace_hopper().crop((0, 0, 512, 512)).resize((96, 96), Image.Resampling.LANCZOS)
    for name, lying in (("a_upright", 0), ("b_left", 1), ("c_upside_down", 2)):
        photo.rotate(90 * lying).save(source / f"{name}.png")
    fit(ProtectionModule(**tiny_module_kwargs(iterations=2)), source, tmp_path / "out", batch_size=3, resolution=96)
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert (rows["status"] == "ok").all()
    assert rows.loc["a_upright", "message"] == ""
    assert "turned 90° clockwise" in rows.loc["b_left", "message"]
    assert "turned upside down" in rows.loc["c_upside_down", "message"]
    # Seen as they lie too (attack.both_positions): the lying photos' copies differ from those made
    # upright only; the upright photo's, in the same batch, is the same.
    fit(ProtectionModule(**tiny_module_kwargs(iterations=2, both_positions=False)), source, tmp_path / "upright-only",
        batch_size=3, resolution=96)
    same = {name: torch.equal(read_levels(tmp_path / "out" / "images" / f"{name}.png"),
                              read_levels(tmp_path / "upright-only" / "images" / f"{name}.png"))
            for name in ("a_upright", "b_left", "c_upside_down")}
    assert same == {"a_upright": True, "b_left": False, "c_upside_down": False}


@pytest.mark.parametrize(("size", "resolution"), [((96, 96), 96), ((104, 128), "native")])
def test_a_photo_lying_down_is_seen_upright_and_as_it_lies_at_every_iteration(tmp_path, monkeypatch, size, resolution):
    """An editor may take a lying photo's file as it is or turn it upright first: at every iteration the autoencoder
    sees the iterate upright and as the file holds it (`attack.both_positions`, the default); upright only with the
    switch off. Also at a photo's own size, whose canvas is not square and turns with it."""
    source = tmp_path / "photos"
    source.mkdir()
    photo = grace_hopper().crop((0, 0, 512, 512)).resize(size, Image.Resampling.LANCZOS)
    photo.rotate(90, expand=True).save(source / "lying.png")
    clean = {name: levels_to_pm1(pil_to_levels(image)) for name, image in (("upright", photo),
                                                                           ("as it lies", photo.rotate(90, expand=True)))}
    seen, encode = [], FrozenVAE.encode

    def recording(self, x):
        if x.requires_grad:  # the iterate's own pass, not a clean image's or a measurement's
            seen.append(next((name for name, image in clean.items()
                              if x.shape[1:] == image.shape and (x[0] - image).abs().max() <= 0.03 + 1e-6), "?"))
        return encode(self, x)

    monkeypatch.setattr(FrozenVAE, "encode", recording)
    fit(ProtectionModule(**tiny_module_kwargs(iterations=4)), source, tmp_path / "both", batch_size=1,
        resolution=resolution)
    assert seen == ["upright", "as it lies"] * 4
    seen.clear()
    fit(ProtectionModule(**tiny_module_kwargs(iterations=4, both_positions=False)), source, tmp_path / "upright",
        batch_size=1, resolution=resolution)
    assert seen == ["upright"] * 4
