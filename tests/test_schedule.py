"""Step-size decay, term gates, random starts and the ε-preserving 8-bit quantisation."""

from __future__ import annotations

import torch

from facelock_pl.pixels import levels_to_pm1, quantise_to_levels
from facelock_pl.engine.schedule import random_start, step_sizes
from facelock_pl.objectives import FaceLock


def test_step_size_decays_linearly_from_alpha_to_alpha_over_100():
    alpha, n = 0.01, 100
    sizes = step_sizes(alpha, torch.arange(n + 1), n)
    assert abs(sizes[0].item() - 0.01) < 1e-9
    assert abs(sizes[n].item() - 0.0001) < 1e-9
    assert abs(sizes[50].item() - (0.01 - 0.0099 * 0.5)) < 1e-8
    assert torch.allclose(sizes.diff(), torch.full((n,), -0.0099 / n), atol=1e-8)


def test_per_sample_step_sizes():
    sizes = step_sizes(0.01, torch.tensor([0, 10, 99]), 100)
    assert sizes.shape == (3,) and sizes[0] > sizes[1] > sizes[2]


def test_facelock_gates_fr_at_35_percent_and_lpips_after_25_percent():
    method = FaceLock()
    n = 100
    iteration = torch.arange(n)
    weights = method.term_weights(iteration / n, torch.ones(n, dtype=torch.bool))
    fr_on = (weights["fr_cos"] != 0).nonzero().flatten()
    lpips_on = (weights["lpips"] != 0).nonzero().flatten()
    assert fr_on.min().item() == 35 and fr_on.numel() == 65
    assert lpips_on.min().item() == 26  # published code: i > 0.25 N
    assert torch.all(weights["fr_cos"][35:] == -1.0)
    assert torch.all(weights["latent_mse"] == 0.2)
    # No face: no FR term, whatever the iteration.
    no_face = method.term_weights(torch.tensor([0.9]), torch.tensor([False]))
    assert no_face["fr_cos"].item() == 0


def test_zero_lpips_weight_needs_no_lpips_network():
    assert FaceLock(lpips_weight=0.0).needs_lpips is False
    assert FaceLock().needs_lpips is True


def test_random_start_depends_only_on_seed_and_uid():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    uids = ["a", "b", "c"]
    start = random_start(x, uids, seed=0, eps=0.03)
    swapped = random_start(x[[2, 0]], ["c", "a"], seed=0, eps=0.03)
    assert torch.equal(swapped[0], start[2]) and torch.equal(swapped[1], start[0])
    assert not torch.equal(random_start(x, uids, seed=1, eps=0.03), start)
    assert ((start - x).abs() <= 0.03 + 1e-7).all() and start.abs().max() <= 1
    assert (start - x).abs().max() > 0.025  # really spread over the ball


def test_quantisation_keeps_the_eps_ball():
    gen = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 256, (4, 3, 16, 16), generator=gen, dtype=torch.uint8)
    x = levels_to_pm1(levels)
    eps = 0.03
    x_adv = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(-1, 1)
    png = quantise_to_levels(x_adv, levels, eps)
    diff = (png.int() - levels.int()).abs()
    assert diff.max().item() == 3  # floor(0.03 * 127.5) = 3 levels
    assert ((levels_to_pm1(png) - x).abs() <= eps).all()
    assert png.dtype == torch.uint8
