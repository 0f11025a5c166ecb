"""Continuous batching: the slot board, adaptive stopping with refills, OOM back-off, speed switches."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_module_kwargs
from facelock_pl.data import SlotBoard, SlotFeeder
from facelock_pl.engine import ProtectionModule
from facelock_pl.outputs import read_manifest
from test_engine import fit, logged


def items(n: int):
    return iter([{"uid": f"u{i}"} for i in range(n)])


def test_slot_board_refills_released_slots_in_order():
    board = SlotBoard(items(5), slots=2)
    assert [(s, it["uid"]) for s, it in board.refill()] == [(0, "u0"), (1, "u1")]
    assert board.refill() == [] and board.busy
    board.release([1])
    assert [(s, it["uid"]) for s, it in board.refill()] == [(1, "u2")]
    board.release([0, 1])
    assert [(s, it["uid"]) for s, it in board.refill()] == [(0, "u3"), (1, "u4")]
    board.release([0, 1])
    assert board.refill() == [] and board.exhausted and not board.busy


def test_requeue_and_shrink():
    board = SlotBoard(items(3), slots=2)
    first = board.refill()
    dropped = board.shrink(1)
    assert dropped == [1]
    board.requeue([first[1][1]])
    board.release([0])
    assert [(s, it["uid"]) for s, it in board.refill()] == [(0, "u1")]  # the requeued image comes first
    board.release([0])
    assert [(s, it["uid"]) for s, it in board.refill()] == [(0, "u2")]


def test_feeder_ends_when_the_board_is_idle_unless_told_to_wait():
    feeder = SlotFeeder([{"uid": "a"}], slots=1)
    ticks = 0
    for board in feeder:
        ticks += 1
        for slot, _ in board.refill():
            board.release([slot])
        assert ticks < 10
    assert ticks == 2  # one step with the image, one that finds nothing left
    waiting = iter(SlotFeeder([], slots=1, until_stopped=True))
    assert next(waiting) is next(waiting)  # keeps yielding until the module stops the run


def test_adaptive_stopping_stops_early_and_refills(face_folder, tmp_path):
    iterations = 30
    kwargs = tiny_module_kwargs(iterations=iterations, eps=0.1, step_size=0.02, stop_below=0.9, stop_patience=2,
                                min_iterations=12)
    trainer = fit(ProtectionModule(**kwargs), face_folder, tmp_path / "adaptive", batch_size=1)
    manifest = read_manifest(tmp_path / "adaptive")
    ok = manifest[manifest.status == "ok"]
    assert len(ok) == 2 and (ok["iterations"] >= 12).all() and (ok["iterations"] < iterations).all()
    # The slot was refilled at once: no idle steps, only the step that measured each stopping image.
    assert trainer.global_step == manifest["iterations"].sum() + len(ok)
    assert (ok["term_fr_cos"] < 0.9).all()
    series = logged(trainer)["term/fr_cos"].dropna()
    assert len(series) > 0


def test_straight_through_levels_is_the_saved_image_with_identity_gradient():
    from facelock_pl.engine.module import levels_to_pm1, quantise_to_levels, straight_through_levels

    levels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x_adv = (levels_to_pm1(levels) + 0.05 * torch.randn(2, 3, 8, 8)).clamp(-1, 1).requires_grad_(True)
    seen = straight_through_levels(x_adv, levels, 0.03)
    assert torch.equal(seen.detach(), levels_to_pm1(quantise_to_levels(x_adv.detach(), levels, 0.03)))
    weights = torch.randn_like(seen)
    (seen * weights).sum().backward()
    assert torch.equal(x_adv.grad, weights)


@pytest.mark.parametrize("quantise_forward", [True, False])
def test_quantised_forward_measures_stops_for_free(face_folder, tmp_path, monkeypatch, quantise_forward):
    """With quantise_forward the forward pass sees the 8-bit image: its fr_cos term is the saved file's
    fr_cos_recon, and the adaptive-stopping checks need no extra pass (only the final one per image)."""
    kwargs = tiny_module_kwargs(iterations=30, eps=0.1, step_size=0.02, stop_below=2.0, stop_patience=1,
                                min_iterations=15, stop_check_every=5, quantise_forward=quantise_forward)
    module = ProtectionModule(**kwargs)
    calls = {"n": 0}
    original = module._reconstruct

    def measured(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(module, "_reconstruct", measured)
    fit(module, face_folder, tmp_path / "q", batch_size=1)
    ok = read_manifest(tmp_path / "q").query("status == 'ok'")
    assert len(ok) == 2 and (ok["iterations"] == 15).all()  # always below +2: stops at the first check
    gap = (ok["term_fr_cos"] - ok["fr_cos_recon"]).abs()
    if quantise_forward:
        assert calls["n"] == 2 and (gap < 1e-5).all()
    else:
        assert calls["n"] == 4 and (gap > 1e-4).all()  # a check and a final measurement per image


def test_out_of_memory_halves_the_slots_and_loses_no_image(face_folder, tmp_path, monkeypatch):
    module = ProtectionModule(**tiny_module_kwargs(iterations=4))
    original = module._pgd_iteration
    calls = {"n": 0}

    def flaky(state):
        calls["n"] += 1
        if calls["n"] == 2:  # the second step runs out of memory
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(state)

    monkeypatch.setattr(module, "_pgd_iteration", flaky)
    fit(module, face_folder, tmp_path / "oom", batch_size=2)
    manifest = read_manifest(tmp_path / "oom")
    assert sorted(manifest["uid"]) == ["astronaut", "grace_hopper"]
    assert (manifest["iterations"] == 4).all()  # the requeued image restarted and ran all its iterations


def test_auto_batch_size_on_cpu_is_four(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(iterations=2))
    trainer = fit(module, face_folder, tmp_path / "auto", batch_size="auto")
    assert trainer.datamodule.batch_size == 4 and len(read_manifest(tmp_path / "auto")) == 2


@pytest.mark.parametrize("switch", ["checkpoint_decoder", "channels_last"])
def test_speed_switches_do_not_change_the_protection(face_folder, tmp_path, switch):
    base = tiny_module_kwargs(iterations=6)
    fit(ProtectionModule(**base), face_folder, tmp_path / "base")
    fit(ProtectionModule(**base, **{switch: True}), face_folder, tmp_path / switch)
    a, b = read_manifest(tmp_path / "base"), read_manifest(tmp_path / switch)
    assert (a["fr_cos_recon"] - b["fr_cos_recon"]).abs().max() < 1e-2
    assert (a["linf_255"] == b["linf_255"]).all()
