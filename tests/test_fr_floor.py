"""The FR floor (objective.fr_floor): a recogniser already pushed below it stops drawing the budget."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import ROOT, run_cli
from facelock_pl.objectives import FaceLockObjective, Networks
from test_ensembles import batch, recognizer, vae  # noqa: F401  (batch: a fixture)
from test_targets import fit_tiny


def loss_and_gradient(nets: Networks, x: torch.Tensor, y: torch.Tensor, geometry) -> tuple[torch.Tensor, torch.Tensor]:
    y = y.clone().requires_grad_(True)
    fr_cos = nets.fr_terms(y, nets.clean_features(x, geometry, False, False))["fr_cos"]
    fr_cos.sum().backward()
    return fr_cos.detach(), y.grad


def test_the_loss_clamps_each_cosine_at_the_floor_and_a_network_below_it_gives_no_gradient(batch):  # noqa: F811
    x, y, geometry = batch
    alone = [Networks([vae(0)], [recognizer(s, 1.0)], None) for s in (1, 2)]
    cos = [n.fr_cos(y, n.clean_features(x, geometry, False, False)) for n in alone]
    low, high = sorted((0, 1), key=lambda i: float(cos[i].max()))
    floor = float((cos[low].max() + cos[high].min()) / 2)
    assert (cos[low] < floor).all() and (cos[high] > floor).all()  # one recogniser under the floor, one above it
    weights = [1.0, 3.0] if low == 0 else [3.0, 1.0]  # the one above the floor weighs 3
    floored = Networks([vae(0)], [recognizer(s, w) for s, w in zip((1, 2), weights)], None, fr_floor=floor)
    value, grad = loss_and_gradient(floored, x, y, geometry)
    assert torch.allclose(value, 0.25 * floor + 0.75 * cos[high], atol=1e-6)
    # The whole gradient is the upper recogniser's: the other draws nothing while it stays under the floor.
    _, grad_high = loss_and_gradient(alone[high], x, y, geometry)
    assert torch.allclose(grad, 0.75 * grad_high, atol=1e-6)
    unbounded = Networks([vae(0)], [recognizer(s, w) for s, w in zip((1, 2), weights)], None)
    _, grad_both = loss_and_gradient(unbounded, x, y, geometry)
    assert not torch.allclose(grad_both, grad, rtol=0.05, atol=0)
    # What is measured and reported is the cosine itself, never the floored one.
    measured = floored.fr_cos(y, floored.clean_features(x, geometry, False, False), identity_only=True)
    assert torch.allclose(measured, 0.25 * cos[low] + 0.75 * cos[high], atol=1e-6)


def test_a_floor_outside_the_cosine_range_is_refused():
    with pytest.raises(ValueError, match=r"objective.fr_floor must lie in \[-1, 1\)"):
        FaceLockObjective(fr_floor=1.0)
    assert FaceLockObjective(fr_floor=-1.0).fr_floor == -1.0


def test_the_floor_is_recorded_only_where_set_and_another_floor_is_another_protection(face_folder, tmp_path):
    plain = fit_tiny(face_folder, tmp_path / "plain")
    floored = fit_tiny(face_folder, tmp_path / "floored", "--model.objective.fr_floor", "0.9")
    # A high floor takes the FR term's gradient away wherever the cosine is under it: another protection.
    assert not floored["fr_cos_recon"].round(4).equals(plain["fr_cos_recon"].round(4))
    assert (floored["term_fr_cos"] >= 0.9 - 1e-6).all()
    assert json.loads((tmp_path / "floored" / "protection.json").read_text())["objective"]["fr_floor"] == 0.9
    assert "fr_floor" not in json.loads((tmp_path / "plain" / "protection.json").read_text())["objective"]
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir",
                   tmp_path / "plain", "--model.objective.fr_floor", "0") == 2
