"""IR-101, the improved-residual ResNet face recogniser of AdaFace (Kim et al., "AdaFace: Quality Adaptive Margin
for Face Recognition", CVPR 2022), with the module layout of CVLFace's published checkpoints, so that their
`model.safetensors` loads into it without running any code from the hub.

Input: aligned 112x112 faces in [-1, 1] ([B, 3, 112, 112], RGB); output: [B, 512] embeddings (not normalised).
"""

from __future__ import annotations

import torch
from torch import nn

# Residual units per stage and the stage widths of IR-101 (CVLFace calls the depth "100" internally).
IR101_UNITS = (3, 13, 30, 3)
IR_WIDTHS = (64, 128, 256, 512)


class ImprovedResidualUnit(nn.Module):
    """BN → 3x3 conv → BN → PReLU → 3x3 conv (stride) → BN, plus a shortcut (identity sampling, or 1x1 conv + BN
    when the width changes)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        if channels_in == channels_out:
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                                nn.BatchNorm2d(channels_out))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(channels_in), nn.Conv2d(channels_in, channels_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(channels_out), nn.PReLU(channels_out),
            nn.Conv2d(channels_out, channels_out, 3, stride, 1, bias=False), nn.BatchNorm2d(channels_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """The IR backbone: a 3x3 stem, four stages of improved residual units (each stage halves the resolution in its
    first unit), and an embedding head (BN, dropout, linear 512·7·7 → 512, BN without affine parameters)."""

    def __init__(self, units: tuple[int, ...] = IR101_UNITS, embedding_size: int = 512):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        layers, channels = [], 64
        for count, width in zip(units, IR_WIDTHS):
            layers += [ImprovedResidualUnit(channels if i == 0 else width, width, 2 if i == 0 else 1) for i in range(count)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.output_layer = nn.Sequential(nn.BatchNorm2d(channels), nn.Dropout(0.4), nn.Flatten(),
                                          nn.Linear(channels * 7 * 7, embedding_size),
                                          nn.BatchNorm1d(embedding_size, affine=False))

    def forward(self, faces_pm1: torch.Tensor) -> torch.Tensor:
        return self.output_layer(self.body(self.input_layer(faces_pm1)))


def backbone_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's entries of a checkpoint that wraps it (CVLFace stores it as `model.net.…`): every key from
    `input_layer.` / `body.` / `output_layer.` on, whatever prefix comes before."""
    anchors = ("input_layer.", "body.", "output_layer.")
    backbone = {}
    for key, value in state.items():
        starts = [key.find(anchor) for anchor in anchors if anchor in key]
        if starts:
            backbone[key[min(starts):]] = value
    return backbone
