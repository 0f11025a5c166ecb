"""The face-MSE term: the reconstruction's distance from x inside the face box, ascended (objective.face_mse_weight)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import ROOT, run_cli
from facelock_pl.models import FaceGeometry
from facelock_pl.objectives import FaceLockObjective, Networks
from facelock_pl.objectives.methods import build_method
from test_ensembles import recognizer, vae
from test_targets import fit_tiny


def clean_of(x: torch.Tensor, geometry: FaceGeometry):
    nets = Networks([vae(0)], [recognizer(1, 1.0)], None)
    return nets, nets.clean_features(x, geometry, need_latent=True, need_lpips=False, need_image=True)


def test_face_mse_counts_the_face_box_grown_by_a_tenth_and_nothing_outside_it():
    x = torch.zeros(1, 3, 40, 40)
    box = torch.tensor([[10.0, 10.0, 30.0, 30.0]])  # grown by 2 px on every side: pixels 8..31 (24 x 24)
    geometry = FaceGeometry(torch.tensor([True]), box, torch.zeros(1, 5, 2))
    nets, clean = clean_of(x, geometry)
    outside = x.clone()
    outside[..., :, :8] = 1.0  # every pixel left of the grown box
    outside[..., 32:, :] = -1.0
    assert nets.face_mse(outside, clean).item() == 0.0
    inside = x.clone()
    inside[:, 0, 8:32, 8:32] = 0.6  # one channel, the whole grown box
    assert nets.face_mse(inside, clean).item() == pytest.approx(0.36 / 3)
    inside[:, :, 8:20, 8:32] = 0.5  # every channel, half the box
    assert nets.face_mse(inside, clean).item() == pytest.approx((0.25 * 3 * 0.5 + 0.36 * 0.5) / 3)


def test_without_a_face_the_whole_image_counts_and_each_sample_has_its_own_box():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    y = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    nets, clean = clean_of(x, FaceGeometry.whole_image(2, 32, 32))
    assert torch.allclose(nets.face_mse(y, clean), (y - x).pow(2).mean((1, 2, 3)))
    # Batched rows keep their own boxes through select / assign_ (the engine refills slots sample by sample).
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [4.0, 4.0, 12.0, 12.0]])
    nets, clean = clean_of(x, FaceGeometry(torch.tensor([True, True]), boxes, torch.zeros(2, 5, 2)))
    both = nets.face_mse(y, clean)
    second = clean.select(torch.tensor([1]))
    assert torch.equal(second.face_boxes, boxes[1:]) and torch.allclose(nets.face_mse(y[1:], second), both[1:])
    slots = clean.slots(2)
    slots.assign_(torch.tensor([0]), second)
    assert torch.equal(slots.face_boxes[0], boxes[1])


def test_facelock_ascends_the_face_mse_with_its_weight_from_the_first_iteration():
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    nets, clean = clean_of(x, FaceGeometry.whole_image(2, 32, 32))
    progress = torch.zeros(2)
    method = build_method("facelock", FaceLockObjective(face_mse_weight=3.0, lpips_weight=0, fr_weight=0))
    assert method.needs_image and not build_method("facelock", FaceLockObjective()).needs_image
    objective, terms = method.objective(nets, x_adv, clean, progress)
    expected = nets.face_mse(nets.reconstruct(nets.encode(x_adv)[0]), clean)
    assert torch.allclose(terms["face_mse"], expected)
    assert torch.allclose(objective, 0.2 * terms["latent_mse"] + 3.0 * expected)
    _, plain = build_method("facelock", FaceLockObjective(lpips_weight=0, fr_weight=0)).objective(nets, x_adv, clean, progress)
    assert "face_mse" not in plain
    with pytest.raises(ValueError, match="face_mse_weight must be >= 0"):
        FaceLockObjective(face_mse_weight=-1)


def test_the_face_mse_term_disfigures_the_reconstruction_and_is_recorded_only_when_set(face_folder, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    shutil.move(face_folder / "astronaut.png", source / "astronaut.png")
    plain = fit_tiny(source, tmp_path / "plain")
    weak = fit_tiny(source, tmp_path / "weak", "--model.objective.face_mse_weight", "0.001")
    strong = fit_tiny(source, tmp_path / "strong", "--model.objective.face_mse_weight", "50")
    assert plain["term_face_mse"].isna().all()
    # With the weight on it, the protection moves the reconstruction's face further from x's.
    assert strong.loc["astronaut", "term_face_mse"] > 1.5 * weak.loc["astronaut", "term_face_mse"]
    recorded = json.loads((tmp_path / "strong" / "protection.json").read_text())["objective"]
    assert recorded["face_mse_weight"] == 50.0
    # Unset, the record keeps its earlier keys, so folders protected before the term existed still resume.
    assert "face_mse_weight" not in json.loads((tmp_path / "plain" / "protection.json").read_text())["objective"]
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--output_dir",
                   tmp_path / "strong", "--model.objective.face_mse_weight", "1") == 2
