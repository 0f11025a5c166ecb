"""EOT transformations: differentiable, with the intended statistics, reproducible under a seed."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import astronaut
from facelock_pl.objectives.transforms import RandomPurification, StoredPosition, Transform, dct_matrix
from facelock_pl.pixels import pad_to, pm1_to_levels, reencode
from facelock_pl.seeding import uid_generator


@pytest.fixture(scope="module")
def face() -> torch.Tensor:
    levels = torch.from_numpy(np.asarray(astronaut().resize((64, 64)))).permute(2, 0, 1)[None]
    return levels.float() / 127.5 - 1


def fixed(value: float, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 3), value)


@pytest.mark.parametrize("spec", ["jpeg:60-90", "jpeg_real:50-90", "webp_real:50-90", "resize:0.5-0.9", "blur:0.5-1.5", "shift:3",
                                  "phase:8", "colorjitter:0.2", "spectrum:0.5"])
def test_each_transformation_is_differentiable(face, spec):
    x = face.clone().requires_grad_(True)
    out = Transform.parse(spec).apply(x, fixed(0.7))
    assert out.shape == x.shape and out.min() >= -1.001 and out.max() <= 1.001
    (out * torch.randn_like(out)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0 and torch.isfinite(x.grad).all()


def test_the_spectrum_simulation_is_noise_then_random_dct_factors_seeded_by_its_draw(face):
    for n in (7, 64):  # the DCT is orthonormal: its inverse is its transpose
        assert torch.allclose(dct_matrix(n) @ dct_matrix(n).T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    inside = face.clamp(-0.8, 0.8)  # away from the clamp to [-1, 1], which would hide the noise's statistics
    noise_only = Transform.parse("spectrum:0").apply(inside, fixed(0.3)) - inside
    assert noise_only.std().item() == pytest.approx(2 * 16 / 255, rel=0.05)  # σ 16/255 on the [0, 1] scale
    assert noise_only.mean().abs() < 0.01
    spectrum = Transform.parse("spectrum:0.5")
    once, again, other = (spectrum.apply(inside, fixed(v)) for v in (0.3, 0.3, 0.6))
    assert torch.equal(once, again) and not torch.allclose(once, other)
    assert (once - inside).std() > 1.5 * noise_only.std()  # the factors move the image beyond the noise
    # Each channel's mean (its DC coefficient times a factor in 1 ± 0.5) stays within half of it.
    ratio = (once + 1).mean(dim=(-2, -1)) / (inside + 1).mean(dim=(-2, -1))
    assert ((ratio > 0.45) & (ratio < 1.55)).all()


def test_differentiable_jpeg_matches_a_real_jpeg(face):
    levels = ((face[0] + 1) * 127.5).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(levels).save(buffer, format="JPEG", quality=75)
    real = torch.from_numpy(np.asarray(Image.open(buffer))).permute(2, 0, 1).float() / 127.5 - 1
    ours = Transform.parse("jpeg:75").apply(face, fixed(0.0))[0]
    psnr_vs_real = 10 * torch.log10(4 / (ours - real).pow(2).mean())
    psnr_vs_input = 10 * torch.log10(4 / (ours - face[0]).pow(2).mean())
    assert psnr_vs_real > 30 and psnr_vs_input < 45  # it is a JPEG, and close to PIL's at that quality


def test_blur_resize_shift_and_jitter_statistics(face):
    detail = lambda t: (t[..., 1:, :] - t[..., :-1, :]).abs().mean()  # noqa: E731
    weak, strong = Transform.parse("blur:0.3-2.0").apply(face, fixed(0.0)), Transform.parse("blur:0.3-2.0").apply(face, fixed(0.99))
    assert detail(strong) < detail(weak) < detail(face)
    assert detail(Transform.parse("resize:0.5").apply(face, fixed(0.0))) < detail(face)
    ramp = torch.linspace(-1, 1, 32).expand(1, 3, 32, 32).contiguous()
    u = torch.tensor([[1.0, 0.0, 0.0]])  # full amount, angle 0: shift along +x by 2 pixels
    shifted = Transform.parse("shift:2").apply(ramp, u)
    assert torch.allclose(shifted[..., 10:20], ramp[..., 8:18], atol=1e-4)
    brighter = Transform.parse("colorjitter:0.2").apply(face, torch.tensor([[1.0, 0.5, 0.5]]))
    assert brighter.mean() > face.mean()


def test_parameters_follow_the_declared_ranges():
    t = Transform.parse("jpeg:50-90")
    assert (t.low, t.high) == (50, 90)
    assert Transform.parse("shift:4") == Transform("shift", 0.0, 4.0)
    for bad in ("jpeg:0-50", "webp_real:0-50", "webp_real:50-101", "resize:0.5-2", "sharpen", "blur:2-1"):
        with pytest.raises(ValueError):
            Transform.parse(bad)
    draws = RandomPurification(["jpeg", "blur", "shift"]).draws(0, [f"u{i}" for i in range(2000)], torch.zeros(2000, dtype=torch.long), 0)
    choice = (draws[:, 0] * 3).long()
    counts = torch.bincount(choice, minlength=3).float() / 2000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.05)  # each transformation about equally often
    assert 0.45 < draws[:, 1].mean() < 0.55


def test_phase_moves_images_by_whole_pixels_through_every_phase_of_the_latent_grid(face):
    """`phase:8`: −4 to 3 pixels each way, the border repeated, nothing resampled — every offset of an 8-pixel grid."""
    assert Transform.parse("phase") == Transform("phase", 8.0, 8.0)
    for bad in ("phase:0", "phase:2.5", "phase:4-8"):
        with pytest.raises(ValueError):
            Transform.parse(bad)
    phase = Transform.parse("phase:8")
    assert torch.equal(phase.apply(face, fixed(0.5)), face)  # the middle draw: no move
    seen = set()
    for dy in range(8):
        for dx in range(8):
            moved = phase.apply(face, torch.tensor([[(dy + 0.5) / 8, (dx + 0.5) / 8, 0.0]]))
            down, right = 4 - dy, 4 - dx  # where the image's top-left pixel lands
            inner = moved[..., max(down, 0) : 64 + min(down, 0), max(right, 0) : 64 + min(right, 0)]
            source = face[..., max(-down, 0) : 64 - max(down, 0), max(-right, 0) : 64 - max(right, 0)]
            assert torch.equal(inner, source)  # the same pixel values, moved: not blurred
            seen.add((down % 8, right % 8))
    assert len(seen) == 64


def test_draws_are_reproducible_and_per_image():
    a = RandomPurification(["jpeg", "blur", "shift"]).draws(7, ["x", "y"], torch.tensor([3, 3]), 0)
    b = RandomPurification(["jpeg", "blur", "shift"]).draws(7, ["y"], torch.tensor([3]), 0)
    assert torch.equal(a[1], b[0])  # independent of the batch
    assert not torch.equal(a, RandomPurification(["jpeg", "blur", "shift"]).draws(7, ["x", "y"], torch.tensor([4, 4]), 0))
    assert not torch.equal(a, RandomPurification(["jpeg", "blur", "shift"]).draws(7, ["x", "y"], torch.tensor([3, 3]), 1))


@pytest.mark.parametrize("kind, codec", [("jpeg_real", "JPEG"), ("webp_real", "WEBP")])
def test_a_real_codec_is_the_codec_forward_and_the_surrogate_backward(face, kind, codec):
    """`jpeg_real`, `webp_real`: the values are exactly PIL's re-save of the 8-bit image; the gradient is kornia's
    JPEG surrogate's."""
    real_levels = reencode(pm1_to_levels(face[0]), codec, 60)
    x = face.clone().requires_grad_(True)
    out = Transform.parse(f"{kind}:60").apply(x, fixed(0.3))
    assert torch.equal(pm1_to_levels(out[0].detach()), real_levels)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    y = face.clone().requires_grad_(True)
    (Transform.parse("jpeg:60").apply(y, fixed(0.3)) * weights).sum().backward()
    assert torch.allclose(x.grad, y.grad)


def test_a_chain_applies_its_transformations_in_turn_with_their_own_draws(face):
    chain = RandomPurification(["resize:0.25>jpeg_real:50"])
    assert chain.width == 7
    u = torch.rand(1, 7)
    ours = chain(face, u)
    by_hand = Transform.parse("jpeg_real:50").apply(Transform.parse("resize:0.25").apply(face, u[:, 1:4]), u[:, 4:7])
    assert torch.equal(ours, by_hand)
    assert 10 * torch.log10(4 / (ours - face).pow(2).mean()) < 30  # a quarter-size JPEG-50: far from the input


def test_single_transformations_keep_their_four_draws():
    """Configs without chains draw exactly as before chains existed (outputs of earlier runs reproduce)."""
    purification = RandomPurification(["jpeg:50-90", "shift:3"])
    expected = torch.rand(4, generator=uid_generator(5, "eot/u/2/0"))
    assert purification.width == 4
    assert torch.equal(purification.draws(5, ["u"], torch.tensor([2]), 0)[0], expected)


def test_a_stored_position_lays_each_photo_down_as_its_file_holds_it_and_stands_it_up_again():
    """Square canvases ([B, 3, 32, 32]) with each photo upright in its top left: one that lies on its side in its file
    (32 high and 24 wide as stored, turned counter-clockwise to stand upright: 24 × 32) and one that stands upright."""
    gen = torch.Generator().manual_seed(0)
    stored = torch.rand(3, 32, 24, generator=gen) * 2 - 1
    upright = torch.rand(3, 32, 32, generator=gen) * 2 - 1
    canvases = torch.stack([pad_to(torch.rot90(stored, 1, (1, 2)), 32, 32), upright]).requires_grad_(True)
    position = StoredPosition(turns=[1, 0], regions=[(24, 32), (32, 32)])
    laid = position.lay_down(canvases)
    assert laid.shape == canvases.shape
    assert torch.equal(laid[0, :, :32, :24], stored) and torch.equal(laid[0, :, :, 24:], stored[:, :, -1:].expand(3, 32, 8))
    assert torch.equal(laid[1], upright)  # upright in its file: untouched
    stood = position.stand_up(laid)
    assert torch.equal(stood[0, :, :24], canvases[0, :, :24]) and torch.equal(stood[1], upright)
    stood[0, :, :24].sum().backward()  # differentiable: every pixel of the photo gets its gradient back, the border none
    assert (canvases.grad[0, :, :24] == 1).all() and (canvases.grad[0, :, 24:] == 0).all() and (canvases.grad[1] == 0).all()


def test_the_facelock_terms_of_a_photo_seen_as_stored_are_its_round_trip_as_stored_turned_upright():
    """The pass that shows two images as their files hold them, the first lying (a quarter turn from upright), the
    second upright: the first's FR cosine is that of D(E(the image as stored)) turned upright, and its latent distance
    is from the stored photo's latent; the second's terms are those of the upright pass."""
    from facelock_pl.models import FaceGeometry
    from facelock_pl.objectives import FaceLockObjective, Networks
    from facelock_pl.objectives.methods import build_method
    from test_ensembles import recognizer, vae

    gen = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
    x_adv = (x + 0.1 * torch.randn(x.shape, generator=gen)).clamp(-1, 1)
    nets = Networks([vae(0)], [recognizer(1, 1.0)], None)
    position = StoredPosition(turns=[3, 0], regions=[(32, 32), (32, 32)])
    whole = FaceGeometry.whole_image(2, 32, 32)
    face = FaceGeometry(torch.ones(2, dtype=torch.bool), whole.boxes, whole.landmarks)  # a face found: the FR term on
    clean = nets.clean_features(x, face, need_latent=True, need_lpips=False)
    clean.stored_latents = [z.float() for z in nets.encode(x, position)]
    method = build_method("facelock", FaceLockObjective(lpips_weight=0, fr_start=0))
    _, terms = method.objective(nets, x_adv, clean.in_position(position), torch.zeros(2))
    _, upright_terms = method.objective(nets, x_adv, clean, torch.zeros(2))

    as_stored = torch.rot90(x_adv[:1], -3, (2, 3))
    recon_upright = torch.rot90(nets.reconstruct(nets.vae.encode(as_stored)), 3, (2, 3))
    assert torch.allclose(terms["fr_cos"][0], nets.fr_cos(recon_upright, clean.select(torch.tensor([0])))[0], atol=1e-6)
    stored_latent = nets.vae.encode(torch.rot90(x[:1], -3, (2, 3)))
    assert torch.allclose(terms["latent_mse"][0], (nets.vae.encode(as_stored) - stored_latent).pow(2).mean(), atol=1e-7)
    assert not torch.isclose(terms["fr_cos"][0], upright_terms["fr_cos"][0])
    for name in ("fr_cos", "latent_mse"):
        assert torch.allclose(terms[name][1], upright_terms[name][1])
