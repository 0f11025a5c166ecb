"""Transfer aids on the gradient: Gaussian smoothing (TI) and momentum (MI), alone and in the engine."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_module_kwargs
from PIL import Image
from test_engine import fit

from facelock_pl.data.images import load_rgb
from facelock_pl.engine import ProtectionModule
from facelock_pl.engine.gradients import momentum_update_, smooth_gradient
from facelock_pl.outputs import read_manifest


def test_smoothing_an_impulse_gives_a_unit_mass_gaussian_of_the_given_std():
    impulse = torch.zeros(1, 2, 41, 41)
    impulse[:, :, 20, 20] = 1.0
    blurred = smooth_gradient(impulse, sigma=2.0)
    assert torch.allclose(blurred.sum(dim=(2, 3)), torch.ones(1, 2), atol=1e-5)
    offsets = torch.arange(41.0) - 20
    variance_rows = (blurred[0, 0].sum(1) * offsets**2).sum()
    assert abs(float(variance_rows) - 4.0) < 0.2  # σ² within the 3σ truncation
    constant = torch.full((1, 3, 16, 16), 0.7)
    assert torch.allclose(smooth_gradient(constant, 1.5), constant, atol=1e-6)


def test_momentum_is_the_decayed_sum_of_l1_normalised_gradients():
    g1, g2 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    velocity = torch.zeros(2, 3, 4, 4)
    momentum_update_(velocity, g1, 0.9)
    momentum_update_(velocity, 1000 * g2, 0.9)  # the scale of a gradient does not matter
    norm = lambda g: g / g.abs().flatten(1).mean(1).view(-1, 1, 1, 1)  # noqa: E731
    assert torch.allclose(velocity, 0.9 * norm(g1) + norm(g2), atol=1e-5)
    assert torch.equal(momentum_update_(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), 0.9), torch.zeros(1, 3, 2, 2))


def high_frequency_share(out, folder) -> float:
    """Size of the perturbation's 1-pixel differences relative to its size (0 for a constant shift)."""
    shares = []
    for row in read_manifest(out).itertuples():
        source = np.asarray(load_rgb(folder / row.source)).astype(float)  # the protected image has the source's size
        delta = np.asarray(Image.open(out / "images" / f"{row.uid}.png"), dtype=float) - source
        shares.append(np.abs(np.diff(delta, axis=0)).mean() / (np.abs(delta).mean() + 1e-9))
    return float(np.mean(shares))


def test_gradient_smoothing_makes_the_perturbation_low_frequency(face_folder, tmp_path):
    settings = dict(iterations=10, eps=0.1, step_size=0.03, fr_start=0.0)
    fit(ProtectionModule(**tiny_module_kwargs(**settings)), face_folder, tmp_path / "plain", batch_size=2)
    fit(ProtectionModule(**tiny_module_kwargs(**settings, grad_smoothing=3.0)), face_folder, tmp_path / "ti", batch_size=2)
    plain, smooth = read_manifest(tmp_path / "plain"), read_manifest(tmp_path / "ti")
    assert (smooth["linf_255"] <= 12).all() and (smooth.status == "ok").all()
    assert high_frequency_share(tmp_path / "ti", face_folder) < 0.5 * high_frequency_share(tmp_path / "plain", face_folder)
    assert not np.allclose(plain["term_latent_mse"], smooth["term_latent_mse"])


@pytest.mark.parametrize("aids", [dict(momentum=0.9), dict(momentum=0.9, grad_smoothing=1.0)])
def test_momentum_state_is_per_image(face_folder, tmp_path, aids):
    """Each slot's momentum starts at zero with its image: results do not depend on the batch."""
    kwargs = tiny_module_kwargs(iterations=6, **aids)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b1", batch_size=1)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b2", batch_size=2)
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6)), face_folder, tmp_path / "off", batch_size=2)
    one, two, off = (read_manifest(tmp_path / name) for name in ("b1", "b2", "off"))
    relative = lambda a, b: ((a["term_latent_mse"] - b["term_latent_mse"]).abs() / b["term_latent_mse"].abs()).max()  # noqa: E731
    assert relative(one, two) < 1e-3 and relative(one, off) > 0.1


def test_invalid_transfer_aids_are_refused():
    with pytest.raises(ValueError, match="momentum"):
        ProtectionModule(**tiny_module_kwargs(momentum=1.0))
    with pytest.raises(ValueError, match="grad_smoothing"):
        ProtectionModule(**tiny_module_kwargs(grad_smoothing=-1.0))
