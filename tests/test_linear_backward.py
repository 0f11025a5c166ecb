"""Linear backpropagation (objective.linear_backward): the recognisers' forward pass unchanged, the backward pass
of their last activations the identity's."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from conftest import ROOT, run_cli
from facelock_pl.engine.module import load_networks
from facelock_pl.models import RecognizerSpec, VAESpec
from facelock_pl.models.linear_backward import activations, linearise_backward
from facelock_pl.objectives import FaceLockObjective
from test_targets import fit_tiny


def mlp(inplace: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace), nn.Linear(6, 6), nn.PReLU(), nn.Linear(6, 3))


def input_gradient(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    net(x).sum().backward()
    return x.grad


@pytest.mark.parametrize("inplace", [False, True])
def test_the_chosen_activations_pass_the_gradient_unmasked_and_keep_their_values(inplace):
    net = mlp(inplace)
    first, second, last = net[0], net[2], net[4]
    x = torch.randn(5, 4)
    before = net(x.clone())
    assert linearise_backward(net, 0.5) == 1  # of two activations, the last one
    assert torch.allclose(net(x.clone()), before, atol=1e-6)
    # By hand: the ReLU keeps its mask, the PReLU is the identity: d/dx sum(W3 (W2 relu(W1 x + b1) + b2) + b3).
    mask = (first(x) > 0).float()
    expected = ((last.weight.sum(0) @ second.weight) * mask) @ first.weight
    assert torch.allclose(input_gradient(net, x), expected, atol=1e-6)
    exact = mlp(inplace)
    assert not torch.allclose(input_gradient(exact, x), expected, atol=1e-3)  # the PReLU's slope 0.25 did matter


@pytest.mark.parametrize("inplace", [False, True])
def test_share_one_makes_the_whole_backward_pass_linear(inplace):
    net = mlp(inplace)
    x = torch.randn(3, 4)
    before = net(x.clone())
    assert linearise_backward(net, 1.0) == 2 and len(activations(net)) == 2
    linear = net[4].weight @ net[2].weight @ net[0].weight  # the network without its activations, [3, 4]
    assert torch.allclose(input_gradient(net, x), linear.sum(0).expand(3, 4), atol=1e-6)
    assert torch.allclose(net(x.clone()), before, atol=1e-6)  # an in-place ReLU too: its input is kept


def test_bad_shares_are_refused():
    with pytest.raises(ValueError, match=r"share must lie in \(0, 1\]"):
        linearise_backward(mlp(), 0)
    with pytest.raises(ValueError, match=r"objective.linear_backward must lie in \[0, 1\]"):
        FaceLockObjective(linear_backward=1.5)


def test_a_network_behind_several_crops_is_linearised_once():
    specs = [RecognizerSpec(kind="tiny-random", name="a"), RecognizerSpec(kind="tiny-random", name="a@box", margin=4)]
    nets = load_networks([VAESpec(kind="tiny-random-kl")], specs, None, FaceLockObjective(linear_backward=1.0))
    shared = nets.recognizers[0].net
    assert nets.recognizers[1].net is shared
    assert [len(m._forward_hooks) for m in activations(shared)] == [1, 1]  # twice would be harmless, but waste
    plain = load_networks([VAESpec(kind="tiny-random-kl")], specs, None, FaceLockObjective())
    assert all(not m._forward_hooks for m in activations(plain.recognizers[0].net))


def test_linear_backward_changes_the_protection_and_is_recorded_only_where_set(face_folder, tmp_path):
    plain = fit_tiny(face_folder, tmp_path / "plain")
    linear = fit_tiny(face_folder, tmp_path / "linear", "--model.objective.linear_backward", "1")
    # Another gradient, another perturbation: the recogniser's cosine after the round trip moves.
    assert not linear["fr_cos_recon"].round(4).equals(plain["fr_cos_recon"].round(4))
    assert json.loads((tmp_path / "linear" / "protection.json").read_text())["objective"]["linear_backward"] == 1.0
    # Off, the record keeps its earlier keys, so folders protected before the setting existed still resume.
    assert "linear_backward" not in json.loads((tmp_path / "plain" / "protection.json").read_text())["objective"]
    # Another gradient is another protection: the folder refuses to continue under it.
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir",
                   tmp_path / "plain", "--model.objective.linear_backward", "0.5") == 2
