"""Differentiable face geometry: where the face's box and five landmarks are in an image that is being
optimised, with gradients flowing back to its pixels.

The loss compares FR(x̂) with FR(x) through each recogniser's crop of x̂. Aligning x̂ with the clean image's fixed
landmarks tunes the protection to one crop; an evaluation detects the face anew in the edited or reconstructed
image, where the landmarks have moved (by 0.7–6.1 px on the shared faces). The published FaceLock re-aligns x̂
at every iteration, differentiably; `LandmarkReader` does so with MTCNN's own output network (O-Net, the last
stage of the detector that evaluation runs), read on the square crop around the clean image's detected face.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .faces import FaceGeometry, box_transform, sampling_theta, warp

ONET_SIZE = 48  # O-Net's input, pixels
_OVERSAMPLE = 3  # crop at 3x and average-pool: close to the area resampling MTCNN crops with


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """Boxes [B, 4] (x1, y1, x2, y2) grown to squares about their centres, as MTCNN feeds O-Net (`rerec`)."""
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(1, keepdim=True).values / 2
    return torch.cat([centre - half, centre + half], 1)


class LandmarkReader(nn.Module):
    """MTCNN's O-Net as a differentiable function of the image: box and landmarks of the face near `boxes`.

    `forward(images_pm1 [B, 3, H, W], boxes [B, 4])` returns a `FaceGeometry` whose boxes (O-Net's regression
    applied to the square crop) and landmarks [B, 5, 2] (pixels) are differentiable with respect to the images.
    O-Net's readings differ from the full detector's by a constant per face; `LandmarkReader.follow` therefore
    moves the detected geometry by the change in reading between the clean image and the one being optimised,
    so that at x̂ = x it is exactly the detection.

    Example:
        >>> reader = LandmarkReader()
        >>> clean_reading = reader(x, detected.boxes)
        >>> geometry = reader.follow(detected, clean_reading, reader(x_hat, detected.boxes))
    """

    def __init__(self, onet: nn.Module | None = None):
        super().__init__()
        if onet is None:
            from facenet_pytorch.models.mtcnn import ONet

            onet = ONet(pretrained=True)  # weights ship in the facenet-pytorch wheel
        self.onet = onet.eval().requires_grad_(False)

    def forward(self, images_pm1: torch.Tensor, boxes: torch.Tensor) -> FaceGeometry:
        square = square_boxes(boxes.detach().float())
        size = ONET_SIZE * _OVERSAMPLE
        theta = sampling_theta(box_transform(square, size, 0.0), tuple(images_pm1.shape[-2:]), (size, size))
        crop = F.avg_pool2d(warp(images_pm1.float(), theta.to(images_pm1.device), (size, size)), _OVERSAMPLE)
        regression, points, _ = self.onet(crop * (127.5 / 128.0))  # O-Net's input: (x255 - 127.5) / 128
        side = (square[:, 2] - square[:, 0])[:, None]
        box = square + regression.float() * side
        landmarks = torch.stack([square[:, :1] + side * points[:, :5], square[:, 1:2] + side * points[:, 5:]], 2)
        return FaceGeometry(torch.ones(len(boxes), dtype=torch.bool, device=boxes.device), box, landmarks.float())

    @staticmethod
    def follow(detected: FaceGeometry, clean_reading: FaceGeometry, reading: FaceGeometry) -> FaceGeometry:
        """The detected geometry moved by how the reading moved since the clean image (differentiable)."""
        return FaceGeometry(detected.found, detected.boxes + (reading.boxes - clean_reading.boxes),
                            detected.landmarks + (reading.landmarks - clean_reading.landmarks))
