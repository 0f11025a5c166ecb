"""Continuous batching: the image queue and the slots, adaptive stopping with refills, OOM back-off, speed switches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import astronaut, grace_hopper, tiny_module_kwargs
from facelock_pl.data import ImageItem, ImageQueue, QueueFeed
from facelock_pl.engine import AdaptiveStopping, ProtectionModule
from facelock_pl.outputs import read_manifest
from test_engine import fit, logged


def items(n: int) -> list[ImageItem]:
    return [ImageItem(f"u{i}", f"u{i}.png", None) for i in range(n)]


def uids(taken: list[ImageItem]) -> list[str]:
    return [item.uid for item in taken]


def test_queue_hands_out_images_in_order_and_requeued_ones_first():
    queue = ImageQueue(iter(items(5)))
    first = queue.take(2)
    assert uids(first) == ["u0", "u1"] and queue.take(0) == [] and not queue.empty
    queue.requeue(first[1:])
    assert uids(queue.take(2)) == ["u1", "u2"]  # the requeued image comes first
    assert uids(queue.take(5)) == ["u3", "u4"] and queue.empty  # known empty once a take comes up short
    queue.requeue(first[:1])
    assert not queue.empty and uids(queue.take(1)) == ["u0"]


def test_feed_yields_the_same_queue_until_the_run_is_stopped():
    feed = iter(QueueFeed(items(1)))
    queue = next(feed)
    assert uids(queue.take(3)) == ["u0"] and queue.empty
    assert next(feed) is queue and next(feed) is queue  # ranks keep stepping in lockstep until the engine stops them


def test_attack_fills_the_lowest_free_slots_and_leaves_unreadable_images_out(face_folder):
    from facelock_pl.data import Decoding, FolderImages

    module = ProtectionModule(**tiny_module_kwargs())
    module.attack.capacity = 3
    good = [FolderImages(face_folder, Decoding(64))[i] for i in range(2)]
    bad = ImageItem.failed("broken", "broken.jpg", "corrupt")
    rejected = module.attack.admit([good[0], bad, good[1]])
    assert rejected == [bad]
    assert module.attack.slots.occupied.tolist() == [True, False, True]  # the bad image's slot stays free
    assert module.attack.free_slots() == [1]
    assert [module.attack.slots.items[s].uid for s in (0, 2)] == [good[0].uid, good[1].uid]
    requeued = module.attack.shrink(1)
    assert uids(requeued) == [good[1].uid] and module.attack.free_slots() == []


def test_adaptive_stopping_stops_early_and_refills(face_folder, tmp_path):
    iterations = 30
    kwargs = tiny_module_kwargs(iterations=iterations, eps=0.1, step_size=0.02,
                                stopping=AdaptiveStopping(below=0.9, patience=2, min_iterations=12))
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
    from facelock_pl.pixels import levels_to_pm1, quantise_to_levels, straight_through_levels

    levels = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x_adv = (levels_to_pm1(levels) + 0.05 * torch.randn(2, 3, 8, 8)).clamp(-1, 1).requires_grad_(True)
    seen = straight_through_levels(x_adv, levels, 0.03)
    assert torch.equal(seen.detach(), levels_to_pm1(quantise_to_levels(x_adv.detach(), levels, 0.03)))
    weights = torch.randn_like(seen)
    (seen * weights).sum().backward()
    assert torch.equal(x_adv.grad, weights)


@pytest.mark.parametrize("quantise_forward, fill_budget", [(True, False), (False, False), (True, True)])
def test_quantised_forward_measures_stops_for_free(face_folder, tmp_path, monkeypatch, quantise_forward, fill_budget):
    """With quantise_forward the forward pass sees the 8-bit image: its fr_cos term is the saved file's
    fr_cos_recon, and the adaptive-stopping checks need no extra pass (only the final one per image). The
    sources are face crops at the working size, so the saved file is the iterate itself (nothing is resampled).
    With fill_budget the saved file is not what the forward pass saw: every check measures it."""
    for path in list(face_folder.iterdir()):
        path.unlink()
    astronaut().crop((120, 0, 380, 260)).resize((64, 64)).save(face_folder / "astronaut.png")
    grace_hopper().crop((60, 60, 460, 460)).resize((64, 64)).save(face_folder / "grace_hopper.png")
    kwargs = tiny_module_kwargs(iterations=30, eps=0.1, step_size=0.02, quantise_forward=quantise_forward,
                                fill_budget=fill_budget,
                                stopping=AdaptiveStopping(below=2.0, patience=1, min_iterations=15, check_every=5))
    module = ProtectionModule(**kwargs)
    calls = {"n": 0}
    meter = module.attack.meter
    original = meter.reconstruct

    def measured(*args):
        calls["n"] += 1
        return original(*args)

    monkeypatch.setattr(meter, "reconstruct", measured)
    fit(module, face_folder, tmp_path / "q", batch_size=1)
    ok = read_manifest(tmp_path / "q").query("status == 'ok'")
    assert len(ok) == 2 and (ok["iterations"] == 15).all()  # always below +2: stops at the first check
    gap = (ok["term_fr_cos"] - ok["fr_cos_recon"]).abs()
    if quantise_forward and not fill_budget:
        assert calls["n"] == 2 and (gap < 1e-5).all()
    else:
        assert calls["n"] == 4 and (gap > 1e-4).all()  # a check and a final measurement per image


def test_out_of_memory_halves_the_slots_and_loses_no_image(face_folder, tmp_path, monkeypatch):
    module = ProtectionModule(**tiny_module_kwargs(iterations=4))
    original = module.attack.step
    calls = {"n": 0}

    def flaky(optimizer):
        calls["n"] += 1
        if calls["n"] == 2:  # the second step runs out of memory
            raise torch.cuda.OutOfMemoryError("simulated")
        return original(optimizer)

    monkeypatch.setattr(module.attack, "step", flaky)
    fit(module, face_folder, tmp_path / "oom", batch_size=2)
    manifest = read_manifest(tmp_path / "oom")
    assert sorted(manifest["uid"]) == ["astronaut", "grace_hopper"]
    assert (manifest["iterations"] == 4).all()  # the requeued image restarted and ran all its iterations


def test_auto_batch_size_on_cpu_is_four(face_folder, tmp_path):
    module = ProtectionModule(**tiny_module_kwargs(iterations=2))
    trainer = fit(module, face_folder, tmp_path / "auto", batch_size="auto")
    assert trainer.datamodule.batch_size == 4 and len(read_manifest(tmp_path / "auto")) == 2


def _on_gpu(module: ProtectionModule, monkeypatch, fitting: int) -> list[int]:
    """`largest_batch`'s search as on a GPU where up to `fitting` images fit; returns the sizes tried."""
    from facelock_pl.engine import memory

    tried = []

    def fits(attack, size, resolution):
        tried.append(size)
        return size <= fitting

    monkeypatch.setattr(memory, "fits", fits)
    monkeypatch.setattr(type(module.attack.nets), "device", property(lambda self: torch.device("cuda")))
    return tried


@pytest.mark.parametrize("fitting, tried, chosen", [
    (12, [1, 2, 4, 8, 16], 7),  # 8 fitted, 16 did not: 90% of 8 (headroom for the slot state)
    (1, [1, 2], 1),  # never below one image
    (10_000, [1, 2, 4, 8, 16, 32, 64, 128, 256], 256),  # the limit reached: the limit, no headroom taken
])
def test_auto_batch_size_on_a_gpu_doubles_until_out_of_memory(monkeypatch, fitting, tried, chosen):
    from facelock_pl.engine.memory import largest_batch

    module = ProtectionModule(**tiny_module_kwargs())
    sizes = _on_gpu(module, monkeypatch, fitting)
    assert largest_batch(module.attack, 64) == chosen and sizes == tried


def test_auto_batch_size_says_when_not_one_image_fits(monkeypatch):
    from facelock_pl.engine.memory import largest_batch

    module = ProtectionModule(**tiny_module_kwargs())
    _on_gpu(module, monkeypatch, fitting=0)
    with pytest.raises(torch.cuda.OutOfMemoryError, match="not even one 512px image fits"):
        largest_batch(module.attack, 512)


def test_a_trial_step_that_runs_out_of_memory_does_not_fit(monkeypatch):
    from facelock_pl.engine.memory import fits

    module = ProtectionModule(**tiny_module_kwargs())
    assert fits(module.attack, 2, 64)  # one PGD iteration of two 64 px images, every term on
    calls = []

    def out_of_memory(*args, **kwargs):
        calls.append(args)
        raise torch.cuda.OutOfMemoryError("simulated")

    monkeypatch.setattr(module.attack.method, "objective", out_of_memory)
    assert not fits(module.attack, 2, 64) and len(calls) == 1


def test_decoder_checkpointing_recomputes_exactly(face_folder, tmp_path):
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6)), face_folder, tmp_path / "base")
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6, checkpoint_decoder=True)), face_folder, tmp_path / "ckpt")
    for uid in ("astronaut", "grace_hopper"):
        a, b = (np.asarray(Image.open(tmp_path / run / "images" / f"{uid}.png")) for run in ("base", "ckpt"))
        assert np.array_equal(a, b), uid  # the same arithmetic, recomputed in backward


def test_channels_last_changes_only_rounding(face_folder, tmp_path):
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6)), face_folder, tmp_path / "base")
    fit(ProtectionModule(**tiny_module_kwargs(iterations=6, channels_last=True)), face_folder, tmp_path / "cl")
    a, b = read_manifest(tmp_path / "base"), read_manifest(tmp_path / "cl")
    assert (a["fr_cos_recon"] - b["fr_cos_recon"]).abs().max() < 1e-2
