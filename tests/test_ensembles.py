"""Ensembles of recognisers and autoencoders, and EOT inside the loop (robust protection)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_module_kwargs
from facelock_pl.engine import ProtectionModule
from facelock_pl.models import FaceGeometry, RecognizerSpec, VAESpec
from facelock_pl.models.recognizers import FaceRecognizer, TinyRandomRecognizerNet
from facelock_pl.models.vae import FrozenVAE, tiny_random_kl
from facelock_pl.objectives import Networks
from facelock_pl.objectives.transforms import RandomPurification
from facelock_pl.outputs import read_manifest
from test_engine import fit


def recognizer(seed: int, weight: float) -> FaceRecognizer:
    spec = RecognizerSpec(kind="tiny-random", weight=weight, name=f"r{seed}")
    return FaceRecognizer(TinyRandomRecognizerNet(seed), spec, 32, "box").eval()


def vae(seed: int) -> FrozenVAE:
    return FrozenVAE(tiny_random_kl(seed), posterior_mean=True).eval()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    return x, (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1), FaceGeometry.whole_image(2, 32, 32)


def test_fr_ensemble_is_the_weighted_mean_or_the_worst_case(batch):
    x, y, geometry = batch
    parts = [Networks([vae(0)], [recognizer(s, 1.0)], None) for s in (1, 2)]
    cos = [p.fr_cos(y, p.clean_features(x, geometry, False, False)) for p in parts]
    mean = Networks([vae(0)], [recognizer(1, 1.0), recognizer(2, 3.0)], None)
    assert torch.allclose(mean.fr_cos(y, mean.clean_features(x, geometry, False, False)), 0.25 * cos[0] + 0.75 * cos[1], atol=1e-6)
    worst = Networks([vae(0)], [recognizer(1, 1.0), recognizer(2, 3.0)], None, fr_reduction="max")
    assert torch.allclose(worst.fr_cos(y, worst.clean_features(x, geometry, False, False)), torch.maximum(*cos), atol=1e-6)


def test_worst_crop_reduction_is_a_smooth_maximum_of_threshold_margins_per_network(batch):
    from facelock_pl.objectives.terms import WORST_CROP_TEMPERATURE as tau

    x, _, geometry = batch
    y = torch.rand(x.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    shared = TinyRandomRecognizerNet(1)  # one network behind two crops, as `sface` and `sface@box0`
    entries = [FaceRecognizer(shared, RecognizerSpec(kind="tiny-random", name="a", threshold=0.3), 32, "box"),
               FaceRecognizer(shared, RecognizerSpec(kind="tiny-random", name="a@m4", margin=4, threshold=0.31), 32, "box"),
               FaceRecognizer(TinyRandomRecognizerNet(2), RecognizerSpec(kind="tiny-random", name="b", weight=2.0,
                                                                         threshold=0.2), 32, "box")]
    alone = [Networks([vae(0)], [e], None) for e in entries]
    cos = [n.fr_cos(y, n.clean_features(x, geometry, False, False)) for n in alone]
    nets = Networks([vae(0)], entries, None, fr_reduction="worst_crop")
    clean = nets.clean_features(x, geometry, False, False)
    margins_a = torch.stack([cos[0] - 0.3, cos[1] - 0.31])
    expected = 0.5 * tau * torch.logsumexp(margins_a / tau, 0) + 0.5 * (cos[2] - 0.2)  # network a: weight 2 of 4
    assert torch.allclose(nets.fr_terms(y, clean)["fr_cos"], expected, atol=1e-6)
    smooth, worst = tau * torch.logsumexp(margins_a / tau, 0), margins_a.max(0).values
    assert (smooth > worst + 0.01).all() and (smooth <= worst + tau * 0.694).all()  # both crops count, the worst most
    # the manifest's cosine stays the weighted mean of the cosines, and the loss's term is not taken for it
    assert torch.allclose(nets.fr_cos(y, clean, identity_only=True), 0.25 * cos[0] + 0.25 * cos[1] + 0.5 * cos[2], atol=1e-6)
    assert not nets.loss_fr_is_reported and alone[0].loss_fr_is_reported


def test_worst_crop_reduction_needs_every_threshold():
    spec = RecognizerSpec(kind="tiny-random", name="no-threshold")
    given = FaceRecognizer(TinyRandomRecognizerNet(1), dataclasses.replace(spec, name="given", threshold=0.4), 32, "box")
    missing = FaceRecognizer(TinyRandomRecognizerNet(2), spec, 32, "box")
    with pytest.raises(ValueError, match=r"threshold.*\['no-threshold'\]"):
        Networks([vae(0)], [given, missing], None, fr_reduction="worst_crop")
    Networks([vae(0)], [given, missing], None)  # the other reductions need none


def test_a_feature_term_joins_the_loss_but_not_what_is_measured(batch):
    from facelock_pl.engine.measure import ProtectionMeter
    from facelock_pl.engine.speed import SpeedConfig

    x, y, geometry = batch
    features = FaceRecognizer(TinyRandomRecognizerNet(1), RecognizerSpec(kind="tiny-random", weight=3.0,
                                                                         feature_layer="3"), 32, "box").eval()
    alone = [Networks([vae(0)], [r], None) for r in (recognizer(1, 1.0), features)]
    cos = [n.fr_cos(y, n.clean_features(x, geometry, False, False)) for n in alone]
    both = Networks([vae(0)], [recognizer(1, 1.0), features], None)
    clean = both.clean_features(x, geometry, False, False)
    assert both.feature_terms and not alone[0].feature_terms
    assert torch.allclose(both.fr_cos(y, clean), 0.25 * cos[0] + 0.75 * cos[1], atol=1e-6)  # the loss: both
    assert not torch.allclose(cos[0], cos[1], atol=1e-2)
    meter = ProtectionMeter(both, None, SpeedConfig(amp_dtype=None))
    assert torch.equal(meter.fr_cos(y, clean), cos[0])  # the manifest: the embedding alone
    assert meter.measures and not ProtectionMeter(alone[1], None, SpeedConfig(amp_dtype=None)).measures


def test_vae_ensemble_terms_are_weighted_means(batch):
    x, y, geometry = batch
    single = [Networks([vae(s)], [recognizer(1, 1.0)], None) for s in (0, 1)]
    mse = [n.latent_mse(n.encode(y), n.clean_features(x, geometry, True, False)) for n in single]
    fr = [n.fr_cos(n.reconstruct(n.encode(y)[0]), n.clean_features(x, geometry, True, False)) for n in single]
    both = Networks([vae(0), vae(1)], [recognizer(1, 1.0)], None, vae_weights=[3.0, 1.0])
    clean = both.clean_features(x, geometry, True, False)
    assert torch.allclose(both.latent_mse(both.encode(y), clean), 0.75 * mse[0] + 0.25 * mse[1], atol=1e-7)
    recon_fr = both.vae_mean([both.fr_cos(r, clean) for r in both.reconstruct_all(both.encode(y))])
    assert torch.allclose(recon_fr, 0.75 * fr[0] + 0.25 * fr[1], atol=1e-6)


def pngs(folder) -> dict[str, np.ndarray]:
    return {p.stem: np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*.png"))}


def test_eot_draws_belong_to_the_image_and_iteration_not_the_batch():
    """Exactly what the code guarantees: an image's draws depend on (seed, uid, iteration, draw) alone."""
    batch = RandomPurification(["jpeg", "blur", "shift"]).draws(0, ["a", "b", "c"], torch.tensor([3, 5, 7]), 1)
    alone = RandomPurification(["jpeg", "blur", "shift"]).draws(0, ["b"], torch.tensor([5]), 1)
    assert torch.equal(batch[1], alone[0])
    assert not torch.equal(batch, RandomPurification(["jpeg", "blur", "shift"]).draws(1, ["a", "b", "c"], torch.tensor([3, 5, 7]), 1))
    assert not torch.equal(batch, RandomPurification(["jpeg", "blur", "shift"]).draws(0, ["a", "b", "c"], torch.tensor([3, 5, 7]), 0))


def test_robust_protection_is_reproducible_and_batch_invariant_up_to_rounding(face_folder, tmp_path):
    kwargs = tiny_module_kwargs(iterations=6, vae=[VAESpec(kind="tiny-random-kl"), VAESpec(kind="tiny-random-kl", weight=0.5)],
                                recognizers=[RecognizerSpec(kind="tiny-random"), RecognizerSpec(kind="tiny-random", name="b")],
                                eot=["jpeg:50-90", "resize:0.5-1.0", "blur:0-1.0", "shift:3"], eot_samples=2)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "a")
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "again")
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "b", batch_size=1)
    fit(ProtectionModule(**{**kwargs, "attack": dataclasses.replace(kwargs["attack"], seed=1)}), face_folder, tmp_path / "c")
    a, again, b, c = (pngs(tmp_path / name) for name in ("a", "again", "b", "c"))
    assert a.keys() == b.keys() == {"astronaut", "grace_hopper"}
    for uid in a:
        assert np.array_equal(a[uid], again[uid])  # same run, same machine: bit-identical
        # Batched convolutions round differently from single ones, and sign-PGD turns last-bit differences
        # into whole steps: the batch-1 result differs in a few pixels, far fewer than another seed's.
        assert (a[uid] != b[uid]).mean() < 0.25 * (a[uid] != c[uid]).mean()
    one, two = read_manifest(tmp_path / "a"), read_manifest(tmp_path / "b")
    assert (one["fr_cos_recon"] - two["fr_cos_recon"]).abs().max() < 0.02
    assert (one["linf_255"] <= 3).all() and one["term_fr_cos"].notna().all()


def test_bad_eot_spec_is_refused():
    with pytest.raises(ValueError, match="unknown EOT"):
        ProtectionModule(**tiny_module_kwargs(eot=["sharpen:1"]))
    with pytest.raises(ValueError, match="unknown EOT transformation 'sharpen:1'"):  # a bad part of a chain
        ProtectionModule(**tiny_module_kwargs(eot=["resize:0.5>sharpen:1"]))
    # A chain (a down-scaled re-upload) is a purification too: it was refused as "could not convert string to float".
    chained = ProtectionModule(**tiny_module_kwargs(eot=["resize:0.25-0.75>jpeg_real:50-90"]))
    assert [t.kind for t in chained.attack.eot.chains[0]] == ["resize", "jpeg_real"]


def test_entries_sharing_a_network_run_it_once_on_their_crops_stacked(batch):
    from facelock_pl.models import embed_all
    from facelock_pl.models.recognizers import load_recognizers

    x, _, _ = batch
    specs = [RecognizerSpec(kind="tiny-random", name="a"), RecognizerSpec(kind="tiny-random", name="b", weight=0.5),
             RecognizerSpec(kind="tiny-random", name="a@m4", margin=4),
             RecognizerSpec(kind="tiny-random", name="a@bgr", margin=8, bgr=True)]  # its own input transform
    entries = load_recognizers(specs)
    entries[1].net = TinyRandomRecognizerNet(2)  # another network between the crops of the first
    boxes = torch.tensor([[4.0, 6.0, 26.0, 30.0], [2.0, 2.0, 30.0, 28.0]])
    geometry = FaceGeometry(torch.ones(2, dtype=torch.bool), boxes, torch.zeros(2, 5, 2))
    thetas = [e.theta(geometry, (32, 32)) for e in entries]
    calls = []
    for net in {id(e.net): e.net for e in entries}.values():
        net.register_forward_pre_hook(lambda module, inputs: calls.append(inputs[0].shape[0]))
    together = embed_all(entries, x, thetas)
    assert sorted(calls) == [2, 6]  # one pass of 3 crops x 2 images for the shared network, one of 2 for the other
    calls.clear()
    alone = [e.embed(x, t) for e, t in zip(entries, thetas)]
    assert len(calls) == 4
    for mine, reference in zip(together, alone):  # equal to each entry on its own, in the entries' order
        assert mine.shape == (2, 32)
        torch.testing.assert_close(mine, reference, atol=1e-6, rtol=0)
    assert not torch.allclose(together[0], together[2], atol=1e-3)  # the crops differ, so do their embeddings
    assert not torch.allclose(together[2], together[3], atol=1e-3)


def test_compiling_keeps_a_network_behind_several_crops_one_network():
    from facelock_pl.engine.speed import SpeedConfig
    from facelock_pl.models.recognizers import load_recognizers

    specs = [RecognizerSpec(kind="tiny-random", name="a"), RecognizerSpec(kind="tiny-random", name="a@m4", margin=4),
             RecognizerSpec(kind="tiny-random", name="features", feature_layer="3")]
    nets = Networks([vae(0)], load_recognizers(specs), None)
    SpeedConfig(compile=True).apply(nets)  # compilation itself waits for the first call
    first, crop, features = (r.net for r in nets.recognizers)
    assert first is crop and first is not features
    assert type(first).__name__ == "OptimizedModule" and type(features).__name__ == "OptimizedModule"
