"""Feature dropout (objective.feature_dropout; DFANet): the recognisers' convolution outputs thinned in the loss's
passes only, with masks keyed by image, never by batch."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import ROOT, run_cli
from facelock_pl.engine.module import load_networks
from facelock_pl.models import RecognizerSpec, VAESpec
from facelock_pl.models.feature_dropout import FeatureDropout
from facelock_pl.objectives import FaceLockObjective
from test_targets import fit_tiny


def convnet() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten())


def test_masks_drop_the_share_asked_scale_the_rest_and_come_from_each_images_seed():
    net = convnet()
    dropout = FeatureDropout([net], 0.25)
    assert dropout.hooked == 2
    probe = nn.Sequential(net[0])  # the first convolution alone, hooked as part of `net`
    x = torch.randn(2, 3, 40, 40)
    whole = net[0](x)
    with dropout.active([7, 8], torch.device("cpu")):
        thinned = probe(x)
    kept = thinned != 0
    assert abs(1 - kept.float().mean().item() - 0.25) < 0.01  # 2 x 8 x 38 x 38 activations
    assert torch.allclose(thinned[kept], whole[kept] / 0.75)
    # Image 1's mask depends on its own seed alone: alone in a batch, or second behind another image, it is the same.
    with dropout.active([8], torch.device("cpu")):
        alone = probe(x[1:])
    assert torch.equal(alone[0] != 0, kept[1]) and torch.allclose(alone[0], thinned[1], atol=1e-6)
    with dropout.active([9], torch.device("cpu")):
        other = probe(x[1:])
    assert not torch.equal(other[0] != 0, kept[1])
    # Outside `active` (every measurement) the network is whole.
    assert torch.equal(net[0](x), whole)


def test_a_wrong_number_of_seeds_and_bad_probabilities_are_refused():
    net = convnet()
    dropout = FeatureDropout([net], 0.1)
    with pytest.raises(RuntimeError, match="2 seeds for a batch of 3"):
        with dropout.active([1, 2], torch.device("cpu")):
            net(torch.randn(3, 3, 8, 8))
    for p in (0, 1, 1.5):
        with pytest.raises(ValueError, match=r"must lie in \(0, 1\)"):
            FeatureDropout([convnet()], p)
    with pytest.raises(ValueError, match=r"objective.feature_dropout must lie in \[0, 1\)"):
        FaceLockObjective(feature_dropout=1.0)
    with pytest.raises(ValueError, match="no Conv2d"):
        FeatureDropout([nn.Linear(3, 3)], 0.1)


def test_a_network_behind_several_crops_is_hooked_once():
    specs = [RecognizerSpec(kind="tiny-random", name="a"), RecognizerSpec(kind="tiny-random", name="a@box", margin=4)]
    nets = load_networks([VAESpec(kind="tiny-random-kl")], specs, None, FaceLockObjective(feature_dropout=0.1))
    shared = nets.recognizers[0].net
    assert nets.recognizers[1].net is shared
    convs = [m for m in shared.modules() if isinstance(m, nn.Conv2d)]
    assert convs and nets.dropout.hooked == len(convs) and all(len(m._forward_hooks) == 1 for m in convs)
    plain = load_networks([VAESpec(kind="tiny-random-kl")], specs, None, FaceLockObjective())
    assert plain.dropout is None and all(not m._forward_hooks for m in plain.recognizers[0].net.modules())


def test_feature_dropout_changes_the_protection_reproducibly_and_is_recorded_only_where_set(face_folder, tmp_path):
    plain = fit_tiny(face_folder, tmp_path / "plain")
    thinned = fit_tiny(face_folder, tmp_path / "thinned", "--model.objective.feature_dropout", "0.3")
    again = fit_tiny(face_folder, tmp_path / "again", "--model.objective.feature_dropout", "0.3")
    # Another gradient, another perturbation; the same seeds, the same one.
    assert not thinned["fr_cos_recon"].round(4).equals(plain["fr_cos_recon"].round(4))
    assert thinned["fr_cos_recon"].equals(again["fr_cos_recon"])
    for uid in thinned.index:
        assert (tmp_path / "thinned" / "images" / f"{uid}.png").read_bytes() == \
            (tmp_path / "again" / "images" / f"{uid}.png").read_bytes()
    assert json.loads((tmp_path / "thinned" / "protection.json").read_text())["objective"]["feature_dropout"] == 0.3
    # Off, the record keeps its earlier keys, so folders protected before the setting existed still resume.
    assert "feature_dropout" not in json.loads((tmp_path / "plain" / "protection.json").read_text())["objective"]
    # Thinned networks are another protection: the folder refuses to continue under it.
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir",
                   tmp_path / "plain", "--model.objective.feature_dropout", "0.1") == 2
