"""Identity targets: the FR term also pulls the reconstruction towards another person's face (objective.target_faces)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT, random_image, run_cli
from facelock_pl.models import FaceGeometry, RecognizerSpec
from facelock_pl.models.recognizers import FaceRecognizer, TinyRandomRecognizerNet
from facelock_pl.objectives import FaceLockObjective, Networks
from facelock_pl.objectives.targets import TargetPool
from facelock_pl.outputs import read_manifest
from test_ensembles import recognizer, vae


def unit(rows: list[list[float]]) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_each_image_gets_the_pool_face_least_like_it_by_the_identity_embeddings():
    # Recognisers 0 and 2 decide; 1 is a feature layer: counted too, it would pick face c for image 0 instead of b.
    identity_pool = unit([[1, 0], [-1, 0], [-0.8, 0.6]])  # faces a, b, c
    pool = TargetPool([identity_pool, unit([[1, 0], [1, 0], [-1, 0]]), identity_pool], identity=[0, 2],
                      names=["a", "b", "c"])
    clean = [unit([[1, 0], [-1, 0]]), unit([[1, 0], [1, 0]]), unit([[1, 0], [-1, 0]])]
    # Image 0: cosines a 1, b -1, c -0.8 -> b. Image 1: a -1, b 1, c 0.8 -> a.
    assert pool.choose(clean).tolist() == [1, 0]
    targets = pool.targets(clean)
    assert all(torch.equal(t, e[torch.tensor([1, 0])]) for t, e in zip(targets, pool.embeddings))


def test_the_target_term_is_the_weighted_cosine_with_the_target_from_the_same_pass():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    y = (x + 0.3 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    geometry = FaceGeometry.whole_image(2, 32, 32)
    nets = Networks([vae(0)], [recognizer(1, 1.0), recognizer(2, 3.0)], None, fr_reduction="max")
    pool_images = torch.rand(3, 3, 32, 32, generator=gen) * 2 - 1
    thetas = [r.theta(FaceGeometry.whole_image(3, 32, 32), (32, 32)) for r in nets.recognizers]
    nets.targets = TargetPool([r.embed(pool_images, t) for r, t in zip(nets.recognizers, thetas)], [0, 1], ["p", "q", "r"])
    clean = nets.clean_features(x, geometry, False, False)
    terms = nets.fr_terms(y, clean)
    assert torch.equal(terms["fr_cos"], nets.fr_cos(y, clean))  # the person's term is untouched (here: worst case)
    chosen = nets.targets.choose(clean.embeddings)
    cos = [(r.embed(y, t[:2]) * r.embed(pool_images, t)[chosen]).sum(1) for r, t in zip(nets.recognizers, thetas)]
    assert torch.allclose(terms["fr_target_cos"], 0.25 * cos[0] + 0.75 * cos[1], atol=1e-6)  # a weighted mean
    untargeted = Networks([vae(0)], [recognizer(1, 1.0), recognizer(2, 3.0)], None)
    assert list(untargeted.fr_terms(y, untargeted.clean_features(x, geometry, False, False))) == ["fr_cos"]


def test_a_pool_folder_embeds_its_faces_and_says_which_images_it_skipped(face_folder, caplog):
    Image.fromarray(random_image((96, 96))).save(face_folder / "noise.png")
    (face_folder / "broken.jpg").write_bytes(b"not a jpeg")
    net = FaceRecognizer(TinyRandomRecognizerNet(0), RecognizerSpec(kind="tiny-random"), 32, "box").eval()
    with caplog.at_level(logging.WARNING):
        pool = TargetPool.from_folder(face_folder, [net], [0])
    assert pool.names == ["astronaut.png", "grace_hopper.jpg"] and pool.embeddings[0].shape == (2, 32)
    assert torch.allclose(pool.embeddings[0].norm(dim=1), torch.ones(2))
    assert "skipped 2 image(s)" in caplog.text and "broken.jpg (" in caplog.text and "noise.png (no face detected)" in caplog.text
    for name in ("astronaut.png", "grace_hopper.jpg"):
        (face_folder / name).unlink()
    with pytest.raises(ValueError, match="no face found in any image of"):
        TargetPool.from_folder(face_folder, [net], [0])


def test_bad_target_settings_are_refused_with_a_clear_message(tmp_path, capsys):
    with pytest.raises(ValueError, match="target_weight must be > 0"):
        FaceLockObjective(target_faces=str(tmp_path), target_weight=0)
    with pytest.raises(ValueError, match="needs the FR term"):
        FaceLockObjective(target_faces=str(tmp_path), fr_weight=0)
    with pytest.raises(ValueError, match="is not a folder of face images"):
        FaceLockObjective(target_faces=str(tmp_path / "missing"))
    code = run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", tmp_path, "--output_dir",
                   tmp_path / "out", "--model.objective.target_faces", tmp_path / "missing")
    assert code == 2 and not (tmp_path / "out" / "protection.json").exists()
    faceless = tmp_path / "faceless"
    faceless.mkdir()
    Image.fromarray(random_image((96, 96))).save(faceless / "noise.png")
    code = run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", tmp_path, "--output_dir",
                   tmp_path / "out", "--model.objective.target_faces", faceless)
    assert code == 2 and "no face found in any image of" in capsys.readouterr().err


def fit_tiny(source: Path, out: Path, *extra) -> pd.DataFrame:
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--output_dir", out,
                   "--trainer.enable_progress_bar", "false", "--model.attack.eps", "0.1", "--model.attack.iterations",
                   "12", "--model.objective.fr_start", "0", "--model.objective.lpips_weight", "0", *extra) == 0
    return read_manifest(out).set_index("uid")


def test_identity_targets_pull_the_protection_towards_the_target_and_are_recorded(face_folder, tmp_path):
    source, pool = tmp_path / "source", tmp_path / "pool"
    source.mkdir(), pool.mkdir()
    shutil.move(face_folder / "astronaut.png", source / "astronaut.png")
    shutil.move(face_folder / "grace_hopper.jpg", pool / "grace_hopper.jpg")
    weak = fit_tiny(source, tmp_path / "weak", "--model.objective.target_faces", pool, "--model.objective.target_weight", "0.01")
    strong = fit_tiny(source, tmp_path / "strong", "--model.objective.target_faces", pool, "--model.objective.target_weight", "5")
    plain = fit_tiny(source, tmp_path / "plain")
    # The pull works: with more weight on it, the protected image ends closer to the target (and less far from x).
    assert strong.loc["astronaut", "term_fr_target_cos"] > weak.loc["astronaut", "term_fr_target_cos"] + 0.05
    assert plain["term_fr_target_cos"].isna().all()
    recorded = json.loads((tmp_path / "strong" / "protection.json").read_text())["objective"]
    assert recorded["target_faces"] == str(pool) and recorded["target_weight"] == 5.0
    # Without targets the record keeps its earlier keys, so folders protected before targets existed still resume.
    plain_objective = json.loads((tmp_path / "plain" / "protection.json").read_text())["objective"]
    assert "target_faces" not in plain_objective and "target_weight" not in plain_objective
    # Another pool is another protection: the folder refuses it.
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--output_dir",
                   tmp_path / "strong", "--model.objective.target_faces", source) == 2
