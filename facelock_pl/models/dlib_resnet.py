"""dlib's face descriptor (`dlib_face_recognition_resnet_model_v1`, D. King 2017: a ResNet-34-style network with
29 conv layers, trained on about 3 million faces from FaceScrub, VGG-Face and scraped images), as ported to
TensorFlow.js by face-api.js and shipped on npm by `@vladmandic/face-api` (MIT).

Input: face crops [B, 3, 150, 150] in [-1, 1], RGB; output: [B, 128] descriptors (not normalised). A judge of
transfer: reserved for evaluation, never in a loss (see `configs/evaluate-offline.yaml`).

`state_from_faceapi` turns the npm package's weights (`model/face_recognition_model.bin`, uint8-quantised, and its
`…-weights_manifest.json`) into this module's state dict: dequantised (value = min + q · scale), filters moved
from TF's HWIO to torch's OIHW, and each conv's per-channel affine "scale" layer folded into the conv.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F
from torch import nn

from .tfjs import tfjs_weights
from .weights import archive_member

# dlib's mean face colour (0-255, RGB) and its scale, as face-api.js normalises the input.
MEAN_RGB_255 = (122.782, 117.001, 104.298)
# (name, channels in, channels out, downsamples): residual blocks in order, as the face-api weights name them.
BLOCKS = (("conv32_1", 32, 32, False), ("conv32_2", 32, 32, False), ("conv32_3", 32, 32, False),
          ("conv64_down", 32, 64, True), ("conv64_1", 64, 64, False), ("conv64_2", 64, 64, False),
          ("conv64_3", 64, 64, False), ("conv128_down", 64, 128, True), ("conv128_1", 128, 128, False),
          ("conv128_2", 128, 128, False), ("conv256_down", 128, 256, True), ("conv256_1", 256, 256, False),
          ("conv256_2", 256, 256, False), ("conv256_down_out", 256, 256, True))
FACEAPI_WEIGHTS = "package/model/face_recognition_model.bin"
FACEAPI_MANIFEST = "package/model/face_recognition_model-weights_manifest.json"


class ResidualBlock(nn.Module):
    """conv → ReLU → conv, plus the input; ReLU. A downsampling block strides its first conv ('valid' padding, as in
    TF) and its shortcut is a 2x2 average pool, zero-padded to the new width; where the two disagree in size by a
    pixel (odd inputs), the conv branch gets a zero row and column at the end, as face-api.js does."""

    def __init__(self, channels_in: int, channels_out: int, downsample: bool):
        super().__init__()
        self.downsample = downsample
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride=2 if downsample else 1, padding=0 if downsample else 1)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        if self.downsample:
            x = F.avg_pool2d(x, 2)
            x = F.pad(x, (0, 0, 0, 0, 0, out.shape[1] - x.shape[1]))
            out = F.pad(out, (0, x.shape[3] - out.shape[3], 0, x.shape[2] - out.shape[2]))
        return F.relu(out + x)


class DlibResNet(nn.Module):
    """7x7/2 conv stem, 3x3/2 max pool, 14 residual blocks (32 → 256 channels), global average, linear 256 → 128."""

    def __init__(self):
        super().__init__()
        self.conv32_down = nn.Conv2d(3, 32, 7, stride=2)
        self.blocks = nn.ModuleDict({name: ResidualBlock(cin, cout, down) for name, cin, cout, down in BLOCKS})
        self.fc = nn.Linear(256, 128, bias=False)
        self.register_buffer("mean_pm1", torch.tensor(MEAN_RGB_255).view(1, 3, 1, 1) / 127.5 - 1, persistent=False)

    def forward(self, faces_pm1: torch.Tensor) -> torch.Tensor:
        # face-api.js: (x_255 - mean_255) / 255, i.e. (x_pm1 - mean_pm1) / 2.
        x = F.max_pool2d(F.relu(self.conv32_down((faces_pm1 - self.mean_pm1) / 2)), 3, 2)
        for block in self.blocks.values():
            x = block(x)
        return self.fc(x.mean((2, 3)))


def state_from_faceapi(manifest: list[dict], blob: bytes) -> dict[str, torch.Tensor]:
    """`DlibResNet`'s state dict from face-api.js' weights manifest and weights file."""
    tf = tfjs_weights(manifest, blob)
    state = {}

    def conv(prefix: str, target: str) -> None:
        # conv(x) · s + b_s == conv with filters · s and bias b · s + b_s: the scale layer folds into the conv.
        scale = torch.from_numpy(tf.pop(f"{prefix}/scale/weights"))
        filters = torch.from_numpy(tf.pop(f"{prefix}/conv/filters")).permute(3, 2, 0, 1)
        state[f"{target}.weight"] = (filters * scale.view(-1, 1, 1, 1)).contiguous()
        state[f"{target}.bias"] = torch.from_numpy(tf.pop(f"{prefix}/conv/bias")) * scale + torch.from_numpy(
            tf.pop(f"{prefix}/scale/biases"))

    conv("conv32_down", "conv32_down")
    for name, *_ in BLOCKS:
        conv(f"{name}/conv1", f"blocks.{name}.conv1")
        conv(f"{name}/conv2", f"blocks.{name}.conv2")
    state["fc.weight"] = torch.from_numpy(tf.pop("fc")).t().contiguous()
    if tf:
        raise ValueError(f"face-api weights hold tensors this network does not use: {sorted(tf)[:5]}")
    return state


def faceapi_package_to_safetensors(package_tgz: bytes) -> bytes:
    """The npm package `@vladmandic/face-api` (its .tgz) → `DlibResNet` weights as safetensors bytes."""
    from safetensors.torch import save

    manifest = json.loads(archive_member(package_tgz, FACEAPI_MANIFEST))
    return save(state_from_faceapi(manifest, archive_member(package_tgz, FACEAPI_WEIGHTS)))
