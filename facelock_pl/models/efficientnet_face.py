"""A face recogniser on an EfficientNet-B0 trunk (Tan & Le, ICML 2019), as shipped on PyPI by `Memento-Face` 0.2.2
(MIT, `Memento/models/FaceRecognitionWeights.pth`): torchvision's EfficientNet-B0 features, a 1x1 conv-BN-SiLU neck
to 384 channels, global average pooling and a batch norm, trained with an ArcFace margin (the package does not say on
which faces). Its inverted-residual (MBConv) blocks make it an architecture no other network of the loss has —
facenet is an Inception-ResNet, SFace's graph a stack of depthwise-separable convolutions without residual
connections — the nearest offline to w600k_mbf's MobileFaceNet (inverted residuals too), and it is not one of the
networks reserved to judge transfer, so it may enter a loss.

Input: face crops [B, 3, 256, 256] in [-1, 1], RGB, standardised inside with ImageNet's mean and std (as the package's
`compare_faces` does); output: [B, 384] embeddings (not normalised). On the shared pairs behind MTCNN's box its
same/different-person AUC is 0.94-0.95 (facenet's: 1.0): a weaker recogniser, kept for its architecture.

`memento_sdist_to_safetensors` takes the state dict out of the package's sdist and drops the ArcFace class centres
(training only), which is what `python -m facelock_pl assets download` stores.
"""

from __future__ import annotations

import io

import torch
from torch import nn

from .weights import archive_member

MEMENTO_MEMBER = "memento_face-0.2.2/Memento/models/FaceRecognitionWeights.pth"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
EMBEDDING_DIM = 384


class EfficientNetFace(nn.Module):
    """EfficientNet-B0 features -> 1x1 conv-BN-SiLU (1280 -> 384) -> mean over space -> BatchNorm1d."""

    def __init__(self):
        super().__init__()
        from torchvision.models import efficientnet_b0

        self.backbone = efficientnet_b0(weights=None).features
        # Named as the package names them (`neck.0`, `embedding.1`), so its state dict loads unchanged.
        self.neck = nn.Sequential(nn.Conv2d(1280, EMBEDDING_DIM, 1, bias=False), nn.BatchNorm2d(EMBEDDING_DIM),
                                  nn.SiLU())
        self.embedding = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(EMBEDDING_DIM))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, faces_pm1: torch.Tensor) -> torch.Tensor:
        x = ((faces_pm1 + 1) / 2 - self.mean) / self.std
        return self.embedding(self.neck(self.backbone(x)).mean((2, 3), keepdim=True))


def memento_sdist_to_safetensors(sdist: bytes) -> bytes:
    """The `Memento-Face` sdist's recogniser as an `EfficientNetFace` safetensors (what `assets download` stores)."""
    from safetensors.torch import save

    state = torch.load(io.BytesIO(archive_member(sdist, MEMENTO_MEMBER)), map_location="cpu", weights_only=True)
    # The package's Sequential holds a Dropout at `embedding.2`, parameter-free; only the class centres are dropped.
    return save({k: v.contiguous() for k, v in state.items() if not k.startswith("arcface.")})
