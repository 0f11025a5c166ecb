"""Model loading: real loaders fail loudly without weights; facenet-pytorch runs on the installed torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import astronaut
from facelock_pl.models import (FaceDetector, LPIPSSpec, RecognizerSpec, VAESpec, WeightsUnavailableError, load_lpips,
                                load_recognizer, load_vae)
from facelock_pl.models.faces import ARCFACE_TEMPLATE_112, sampling_theta, similarity_transform, warp


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))


def test_hub_vae_offline_raises_clear_error(offline):
    with pytest.raises(WeightsUnavailableError, match=r"kl VAE 'timbrooks/instruct-pix2pix'.*--model.vae.path"):
        load_vae(VAESpec())


def test_taesd_folder_without_weights_raises(offline, tmp_path):
    (tmp_path / "taesd").mkdir()
    with pytest.raises(WeightsUnavailableError, match="taesd"):
        load_vae(VAESpec(kind="taesd", path=str(tmp_path / "taesd"), subfolder=None))


def test_facenet_release_weights_missing_raise(offline):
    with pytest.raises(WeightsUnavailableError, match=r"facenet InceptionResnetV1 \(vggface2\).*torch-home"):
        load_recognizer(RecognizerSpec(kind="facenet", weights="vggface2"))


def test_facenet_state_dict_that_does_not_fit_is_refused(tmp_path):
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "wrong.pt")
    with pytest.raises(ValueError, match="does not fit"):
        load_recognizer(RecognizerSpec(kind="facenet", weights=str(tmp_path / "wrong.pt")))


def test_lpips_trunk_missing_raises(offline):
    with pytest.raises(WeightsUnavailableError, match="LPIPS-vgg"):
        load_lpips(LPIPSSpec(net="vgg"))


def test_mtcnn_and_inception_resnet_run_on_installed_torch():
    image = torch.from_numpy(np.asarray(astronaut().resize((256, 256)))).permute(2, 0, 1)[None]
    geometry = FaceDetector()(image)
    assert geometry.found.tolist() == [True]
    x1, y1, x2, y2 = geometry.boxes[0].tolist()
    assert 70 < x1 < x2 < 150 and 10 < y1 < y2 < 110  # the astronaut's face, upper middle
    from facenet_pytorch import InceptionResnetV1

    net = InceptionResnetV1(pretrained=None).eval()
    with torch.no_grad():
        emb = net(torch.randn(2, 3, 160, 160))
    assert emb.shape == (2, 512) and torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-4)


def test_no_face_gives_whole_image_geometry():
    noise = torch.randint(0, 256, (1, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    geometry = FaceDetector()(noise)
    assert geometry.found.tolist() == [False]
    assert geometry.boxes[0].tolist() == [0, 0, 96, 96] and torch.isfinite(geometry.landmarks).all()


def test_similarity_alignment_recovers_a_known_warp():
    # Landmarks of a face scaled by 2, rotated by 10° and shifted: alignment must map them onto the template.
    angle = torch.deg2rad(torch.tensor(10.0))
    rot = torch.tensor([[torch.cos(angle), -torch.sin(angle)], [torch.sin(angle), torch.cos(angle)]])
    src = (ARCFACE_TEMPLATE_112 @ rot.T) * 2 + torch.tensor([30.0, 50.0])
    m = similarity_transform(src[None], ARCFACE_TEMPLATE_112)[0]
    mapped = src @ m[:, :2].T + m[:, 2]
    assert torch.allclose(mapped, ARCFACE_TEMPLATE_112, atol=1e-3)


def test_warp_is_an_exact_crop_for_integer_boxes():
    image = torch.rand(1, 3, 40, 50) * 2 - 1
    shift = torch.tensor([[[1.0, 0, -7], [0, 1.0, -5]]])  # source pixel (7, 5) -> output (0, 0)
    crop = warp(image, sampling_theta(shift, (40, 50), (16, 16)), (16, 16))
    assert torch.allclose(crop, image[:, :, 5:21, 7:23], atol=1e-5)
    x = image.clone().requires_grad_(True)
    warp(x, sampling_theta(shift, (40, 50), (16, 16)), (16, 16)).sum().backward()
    assert torch.allclose(x.grad[:, :, 5:21, 7:23], torch.ones(1, 3, 16, 16), atol=1e-4)
    assert abs(x.grad.sum().item() - 3 * 16 * 16) < 1e-2
