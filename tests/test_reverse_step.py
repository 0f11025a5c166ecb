"""The reverse step (`attack.reverse_perturbation`): the gradient is taken at the iterate moved back along the
last step's direction."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import tiny_module_kwargs
from test_engine import fit

from facelock_pl.config_files import ConfigError
from facelock_pl.engine import ProtectionModule
from facelock_pl.objectives.methods import FaceLock
from facelock_pl.outputs import read_manifest


def gradient_points(monkeypatch, face_folder, out, **settings) -> list[torch.Tensor]:
    """The images the objective was evaluated at, one per iteration (one image, no EOT, continuous forward)."""
    seen = []
    original = FaceLock.objective

    def recording(self, nets, x_adv, clean, progress):
        seen.append(x_adv.detach().clone())
        return original(self, nets, x_adv, clean, progress)

    monkeypatch.setattr(FaceLock, "objective", recording)
    fit(ProtectionModule(**tiny_module_kwargs(iterations=3, eps=0.5, step_size=0.05, fr_start=0.0, **settings)),
        face_folder, out, batch_size=1)
    monkeypatch.undo()
    return seen


def test_the_gradient_is_taken_behind_the_iterate_along_the_last_step(monkeypatch, face_folder, tmp_path):
    source = tmp_path / "one"
    source.mkdir()
    shutil.copy(face_folder / "astronaut.png", source)
    plain = gradient_points(monkeypatch, source, tmp_path / "plain")
    reverse = gradient_points(monkeypatch, source, tmp_path / "reverse", reverse_perturbation=0.02)
    assert len(plain) == len(reverse) == 3
    assert torch.equal(plain[0], reverse[0])  # no step before the first: nothing to reverse
    # Both runs take the same first step (same start, same gradient); the second point differs by r·sign(step).
    step = plain[1] - plain[0]
    inside = (plain[0].abs() < 0.9) & (step.abs() > 0.04)  # away from the [-1, 1] clamp, where the step was taken
    assert inside.float().mean() > 0.5
    assert torch.allclose((plain[1] - reverse[1])[inside], 0.02 * step.sign()[inside], atol=1e-6)
    assert not torch.equal(plain[2], reverse[2])


def test_reverse_step_changes_the_protection_and_is_recorded_only_when_set(face_folder, tmp_path):
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6)), face_folder, tmp_path / "off")
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6, reverse_perturbation=0.02)), face_folder, tmp_path / "on")
    off, on = read_manifest(tmp_path / "off"), read_manifest(tmp_path / "on")
    assert (on.status == "ok").all() and (on["linf_255"] <= 3).all()
    assert ((on["term_latent_mse"] - off["term_latent_mse"]).abs() / off["term_latent_mse"]).max() > 0.01
    assert "reverse_perturbation" not in json.loads((tmp_path / "off" / "protection.json").read_text())["attack"]
    assert json.loads((tmp_path / "on" / "protection.json").read_text())["attack"]["reverse_perturbation"] == 0.02
    with pytest.raises(ConfigError, match="attack differ"):  # a folder is protected alike or not at all
        fit(ProtectionModule(**tiny_module_kwargs(iterations=6)), face_folder, tmp_path / "on")


def test_a_negative_reverse_step_is_refused():
    with pytest.raises(ValueError, match="reverse_perturbation"):
        ProtectionModule(**tiny_module_kwargs(reverse_perturbation=-0.01))
