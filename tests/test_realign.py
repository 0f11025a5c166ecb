"""Protection that does not depend on one crop: x̂ re-aligned from its own landmarks every iteration (MTCNN's
O-Net read differentiably), expectation over the crop, and recognisers put behind another crop convention."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from conftest import astronaut, tiny_module_kwargs
from facelock_pl.engine import ProtectionModule
from facelock_pl.models import FaceDetector, RecognizerSpec, load_recognizer
from facelock_pl.models.faces import jitter_theta
from facelock_pl.models.landmarks import LandmarkReader, square_boxes
from facelock_pl.objectives import Networks
from facelock_pl.pixels import levels_to_pm1, pil_to_levels
from test_engine import fit
from test_ensembles import pngs, recognizer, vae


@pytest.fixture(scope="module")
def face():
    """The astronaut at 256 px: uint8 levels [1, 3, H, W] and MTCNN's detection."""
    levels = pil_to_levels(astronaut().resize((256, 256)))[None]
    return levels, FaceDetector()(levels)


@pytest.fixture(scope="module")
def reader():
    return LandmarkReader()


def test_the_reader_agrees_with_the_detector_and_follows_the_face(face, reader):
    levels, detected = face
    assert bool(detected.found[0])
    x = levels_to_pm1(levels)
    reading = reader(x, detected.boxes)
    # O-Net on the final box is MTCNN's last stage run once more: within a few pixels of the detection.
    assert (reading.landmarks - detected.landmarks).abs().max() < 4
    shifted = torch.roll(x, shifts=(5, -3), dims=(2, 3))  # the face moves 5 px down and 3 px left
    moved = LandmarkReader.follow(detected, reading, reader(shifted, detected.boxes))
    displacement = (moved.landmarks - detected.landmarks).mean(1)[0]
    assert torch.allclose(displacement, torch.tensor([-3.0, 5.0]), atol=1.5)
    assert torch.equal(LandmarkReader.follow(detected, reading, reading).landmarks, detected.landmarks)


def test_landmarks_are_differentiable_in_the_pixels(face, reader):
    levels, detected = face
    x = levels_to_pm1(levels).requires_grad_(True)
    reader(x, detected.boxes).landmarks[..., 0].sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    box = square_boxes(detected.boxes)[0]
    x1, y1, x2, y2 = box[0].floor().long(), box[1].floor().long(), box[2].ceil().long() + 1, box[3].ceil().long() + 1
    inside = x.grad[..., y1:y2, x1:x2].abs().sum()
    assert inside > 0.999 * x.grad.abs().sum()  # only O-Net's square crop of the face moves the landmarks


def test_square_boxes_keep_the_centre():
    square = square_boxes(torch.tensor([[10.0, 20.0, 30.0, 60.0]]))
    assert torch.equal(square, torch.tensor([[0.0, 20.0, 40.0, 60.0]]))


def test_jitter_is_the_identity_at_its_centre_and_zooms_out_at_its_top():
    theta = torch.tensor([[[0.5, 0.0, 0.1], [0.0, 0.5, -0.2]]])
    centre = torch.tensor([[0.2, 0.5, 0.5, 0.5]])  # zoom 1 - s/2 + 2.5 s * 0.2 = 1, no rotation, no shift
    assert torch.allclose(jitter_theta(theta, centre, 0.2), theta)
    assert torch.equal(jitter_theta(theta, torch.rand(1, 4), 0.0), theta)
    widest = jitter_theta(theta, torch.tensor([[1.0, 0.5, 0.5, 0.5]]), 0.2)
    assert torch.allclose(widest[:, :, :2], 1.4 * theta[:, :, :2]) and torch.allclose(widest[:, :, 2], theta[:, :, 2])
    angle = math.radians(9)  # u = 1: the most rotation, 45 s degrees
    turned = jitter_theta(theta, torch.tensor([[0.2, 1.0, 0.5, 0.5]]), 0.2)
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    assert torch.allclose(turned[0, :, :2], theta[0, :, :2] @ rotation, atol=1e-6)
    shifted = jitter_theta(theta, torch.tensor([[0.2, 0.5, 1.0, 0.0]]), 0.2)  # +s right, -s up (normalised units)
    assert torch.allclose(shifted[0, :, 2], theta[0, :, 2] + theta[0, :, :2] @ torch.tensor([0.2, -0.2]), atol=1e-6)


def test_realigned_fr_is_the_fixed_one_at_the_clean_image_and_its_gradient_differs(face, reader):
    levels, detected = face
    x = levels_to_pm1(levels)
    recognizers = [recognizer(1, 1.0)]
    fixed = Networks([vae(0)], recognizers, None)
    moving = Networks([vae(0)], recognizers, None, landmarks=reader)
    clean_fixed, clean_moving = fixed.clean_features(x, detected, False, False), moving.clean_features(x, detected, False, False)
    assert torch.allclose(fixed.fr_cos(x, clean_fixed), moving.fr_cos(x, clean_moving), atol=1e-5)
    y = (x + 0.05 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    grads = []
    for nets, clean in ((fixed, clean_fixed), (moving, clean_moving)):
        image = y.clone().requires_grad_(True)
        nets.fr_cos(image, clean).sum().backward()
        grads.append(image.grad)
    assert torch.isfinite(grads[1]).all()
    # The alignment's own path adds to the gradient.
    assert (grads[0] - grads[1]).abs().sum() > 0.01 * grads[0].abs().sum() > 0


def test_crop_jitter_and_realignment_run_in_the_loop_reproducibly(face_folder, tmp_path):
    kwargs = tiny_module_kwargs(iterations=4, realign=True, crop_jitter=0.2)
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "a")
    fit(ProtectionModule(**kwargs), face_folder, tmp_path / "again")
    fit(ProtectionModule(**tiny_module_kwargs(iterations=4)), face_folder, tmp_path / "plain")
    a, again, plain = (pngs(tmp_path / name) for name in ("a", "again", "plain"))
    assert a.keys() == plain.keys() and len(a) == 2
    for uid in a:
        assert np.array_equal(a[uid], again[uid])
        assert not np.array_equal(a[uid], plain[uid])


def test_crop_jitter_out_of_range_is_refused():
    with pytest.raises(ValueError, match="crop_jitter"):
        ProtectionModule(**tiny_module_kwargs(crop_jitter=1.5))


def test_a_recogniser_behind_another_crop_convention(face):
    levels, detected = face
    native = load_recognizer(RecognizerSpec(kind="tiny-random"))
    behind_arcface = load_recognizer(RecognizerSpec(kind="tiny-random", alignment="arcface"))
    assert (native.alignment, behind_arcface.alignment) == ("box", "arcface")
    hw = tuple(levels.shape[-2:])
    assert not torch.allclose(native.theta(detected, hw), behind_arcface.theta(detected, hw))
    cos = float(native.embed(levels_to_pm1(levels), native.theta(detected, hw))[0]
                @ behind_arcface.embed(levels_to_pm1(levels), behind_arcface.theta(detected, hw))[0])
    assert not math.isclose(cos, 1.0, abs_tol=1e-4)  # the same network, another crop: another embedding
