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


def two_networks(**overrides) -> dict:
    """Two networks in the loss, the first behind two crops (`weights` only tells the loaders' copies apart)."""
    from facelock_pl.models import RecognizerSpec

    recognizers = [RecognizerSpec(kind="tiny-random", name="a"), RecognizerSpec(kind="tiny-random", name="a@m4", margin=4),
                   RecognizerSpec(kind="tiny-random", name="b", weights="another copy")]
    return tiny_module_kwargs(recognizers=recognizers, **overrides)


def test_the_common_weakness_attack_steps_back_then_along_each_network_in_turn(face_folder, tmp_path):
    from facelock_pl.data import Decoding, FolderImages
    from facelock_pl.engine.attack import CWA_INNER_STEP_EPS
    from facelock_pl.engine.optimizer import SignPGD
    from facelock_pl.engine.schedule import step_sizes

    module = ProtectionModule(**two_networks(iterations=4, common_weakness=True, fr_start=0.0, eps=0.1))
    attack = module.attack
    assert attack.network_entries == [[0, 1], [2]]  # a network with every crop it stands behind
    attack.admit([FolderImages(face_folder, Decoding(64))[0]])
    s, active, eps = attack.slots, torch.tensor([0]), 0.1
    attack.step(SignPGD())  # one iteration in: the momentum kept across iterations is not zero
    x_adv, momentum = s.x_adv.clone(), s.inner_velocity.clone()
    assert momentum.abs().sum() > 0

    def project(z):
        return torch.minimum(torch.maximum(z, s.x - eps), s.x + eps).clamp(-1, 1)

    seen = []
    objective = attack.method.objective
    attack.method.objective = lambda nets, *args: seen.append([r.spec.name for r in nets.recognizers]) or objective(nets, *args)
    step = step_sizes(0.01, s.iteration, 4).view(-1, 1, 1, 1)
    ensemble, _ = attack._input_gradient(x_adv, active)
    back = project(x_adv - step / 3 * ensemble.sign())  # a third of the step back, against the ensemble
    inner = back
    for network in (0, 1):  # then one step along each network in turn, on its L2-normalised gradient
        grad, _ = attack._input_gradient(inner, active, network)
        momentum = momentum + grad / grad.norm()
        inner = project(inner + CWA_INNER_STEP_EPS * eps * grad.numel() ** 0.5 * momentum)
    assert seen == [["a", "a@m4", "b"], ["a", "a@m4"], ["b"]]
    seen.clear()
    attack.step(SignPGD())
    assert seen == [["a", "a@m4", "b"], ["a", "a@m4"], ["b"]]  # 1 + networks passes per iteration
    assert torch.allclose(s.x_adv, project(back + step * (inner - back).sign()), atol=1e-6)  # the sign step, from back
    assert torch.allclose(s.inner_velocity, momentum, atol=1e-5)
    assert not torch.allclose(s.x_adv, project(x_adv + step * ensemble.sign()), atol=1e-3)  # not plain PGD's step


def test_the_common_weakness_attack_is_per_image_and_recorded(face_folder, tmp_path):
    import json

    from facelock_pl.config_files import ConfigError
    from facelock_pl.outputs.settings import keep_settings

    kwargs = two_networks(iterations=4, common_weakness=True, fr_start=0.0)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b1", batch_size=1)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b2", batch_size=2)
    fit(ProtectionModule(**two_networks(iterations=4, fr_start=0.0)), face_folder, tmp_path / "pgd", batch_size=2)
    one, two, pgd = (read_manifest(tmp_path / name) for name in ("b1", "b2", "pgd"))
    assert (one["linf_255"] <= 3).all() and (one.status == "ok").all()
    assert np.allclose(one["term_fr_cos"], two["term_fr_cos"], atol=1e-4)  # each slot's momentum starts with its image
    assert not np.allclose(one["term_fr_cos"], pgd["term_fr_cos"], atol=1e-3)
    recorded = json.loads((tmp_path / "b1" / "protection.json").read_text())
    assert recorded["attack"]["common_weakness"] is True
    # A folder protected before the setting existed recorded none: it was plain PGD, and resumes as such.
    plain = json.loads((tmp_path / "pgd" / "protection.json").read_text())
    earlier = json.loads(json.dumps(plain))
    del earlier["attack"]["common_weakness"]
    (tmp_path / "pgd" / "protection.json").write_text(json.dumps(earlier))
    keep_settings(tmp_path / "pgd", plain, write=False)
    with pytest.raises(ConfigError, match="attack.common_weakness differs: false in the folder, true now"):
        keep_settings(tmp_path / "pgd", recorded, write=False)


def test_the_common_weakness_attack_needs_an_ensemble():
    with pytest.raises(ValueError, match="two recognisers' networks or more"):
        ProtectionModule(**tiny_module_kwargs(common_weakness=True))  # one network
