"""Face detection on the clean image, and differentiable crops/alignments that reuse its geometry.

Detection (facenet-pytorch `MTCNN`, whose weights ship in the wheel) runs once per image. Every
recogniser then turns that geometry into a 2x3 sampling matrix, also once per image, and each PGD
iteration only applies `warp` (affine_grid + grid_sample), which is differentiable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..pixels import same_shapes

# The standard ArcFace 112x112 template of the five landmarks (eyes, nose, mouth corners).
ARCFACE_TEMPLATE_112 = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
)


@dataclass
class FaceGeometry:
    """Per image: `found` [B] bool, `boxes` [B, 4] (x1, y1, x2, y2), `landmarks` [B, 5, 2], in pixels."""

    found: torch.Tensor
    boxes: torch.Tensor
    landmarks: torch.Tensor

    @classmethod
    def whole_image(cls, n: int, height: int, width: int) -> "FaceGeometry":
        """No face: the geometry is the whole image, so alignments stay finite (no NaN gradients)."""
        boxes = torch.tensor([0.0, 0.0, width, height]).repeat(n, 1)
        points = (ARCFACE_TEMPLATE_112 / 112.0 * torch.tensor([width, height])).repeat(n, 1, 1)
        return cls(torch.zeros(n, dtype=torch.bool), boxes, points)

    def to(self, device: torch.device) -> "FaceGeometry":
        return FaceGeometry(self.found.to(device), self.boxes.to(device), self.landmarks.to(device))

    def where_found_else(self, other: "FaceGeometry") -> "FaceGeometry":
        """These faces where found, `other`'s elsewhere (`found` stays this geometry's)."""
        found = self.found
        return FaceGeometry(found, torch.where(found[:, None], self.boxes, other.boxes),
                            torch.where(found[:, None, None], self.landmarks, other.landmarks))

    def select(self, index) -> "FaceGeometry":
        return FaceGeometry(self.found[index], self.boxes[index], self.landmarks[index])

    @staticmethod
    def stack(geometries: list["FaceGeometry"]) -> "FaceGeometry":
        return FaceGeometry(*(torch.cat([getattr(g, name) for g in geometries]) for name in ("found", "boxes", "landmarks")))


# The quarter turns (counter-clockwise, as `torch.rot90` turns dims (H, W)) a photo is tried at to find which way up
# it is (a scan, or a photo whose EXIF orientation an app stripped): as it stands, first (it wins a tie), then turned
# for a photo lying on its right side, on its left, upside down.
TURNS = (0, 1, 3, 2)


def boxes_turned_back(boxes: torch.Tensor, size: tuple[int, int], turn: int) -> torch.Tensor:
    """Boxes ([K, 4], x1 y1 x2 y2, pixels) found in an image of `size` (height, width, as it stands) turned by `turn`
    quarter turns, in the image's own pixels as it stands."""
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    corners = {0: (x1, y1, x2, y2), 1: (width - y2, x1, width - y1, x2), 3: (y1, height - x2, y2, height - x1),
               2: (width - x2, height - y2, width - x1, height - y1)}[turn]
    return torch.stack(corners, -1)


def positions(image: torch.Tensor) -> dict[int, torch.Tensor]:
    """An image ([3, H, W]) turned by each of `TURNS`: turn -> the image turned."""
    return {turn: torch.rot90(image, turn, (1, 2)) for turn in TURNS}


def peak(probabilities: torch.Tensor) -> float:
    """The highest of the faces' probabilities ([K]); 0 where there is no face."""
    return float(probabilities.max()) if len(probabilities) else 0.0


class FaceDetector(nn.Module):
    """MTCNN boxes and 5-point landmarks of the largest faces of each image."""

    def __init__(self, min_probability: float = 0.9):
        super().__init__()
        from facenet_pytorch import MTCNN

        self.mtcnn = MTCNN(select_largest=True, keep_all=False, post_process=False)
        self.min_probability = min_probability
        self.requires_grad_(False).eval()

    @torch.no_grad()
    def forward(self, images_uint8: torch.Tensor, count: int = 1) -> FaceGeometry:
        """images_uint8: [B, 3, H, W] uint8 RGB, all of one size. The `count` largest faces of each, largest first:
        row b·count + k is image b's k-th largest box, `found` where its probability reaches `min_probability`."""
        self.mtcnn.device = images_uint8.device  # MTCNN keeps its own device attribute
        n, _, height, width = images_uint8.shape
        geometry = FaceGeometry.whole_image(n * count, height, width)
        if min(height, width) < self.mtcnn.min_face_size:  # no face fits (and MTCNN's image pyramid would be empty)
            return geometry.to(images_uint8.device)
        batch = images_uint8.permute(0, 2, 3, 1).float()
        boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)  # largest first (select_largest)
        for i in range(n):
            for k in range(min(count, 0 if boxes[i] is None else len(boxes[i]))):
                if probs[i][k] is None or probs[i][k] < self.min_probability:
                    continue
                row = i * count + k
                geometry.found[row] = True
                geometry.boxes[row] = torch.as_tensor(np.asarray(boxes[i][k], dtype=np.float32))
                geometry.landmarks[row] = torch.as_tensor(np.asarray(points[i][k], dtype=np.float32))
        return geometry.to(images_uint8.device)

    @torch.no_grad()
    def detect_each(self, images_uint8: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every face MTCNN finds in each image ([3, H, W] uint8), whatever its probability: boxes ([K, 4], x1 y1 x2
        y2, pixels) and probabilities ([K]). Images of one size are detected in one batch."""
        result = [(torch.zeros(0, 4), torch.zeros(0))] * len(images_uint8)
        for index in same_shapes([image.shape for image in images_uint8]):
            batch = torch.stack([images_uint8[i] for i in index])
            if min(batch.shape[-2:]) < self.mtcnn.min_face_size:  # no face fits (and MTCNN's pyramid would be empty)
                continue
            self.mtcnn.device = batch.device
            boxes, probs = self.mtcnn.detect(batch.permute(0, 2, 3, 1).float(), landmarks=False)
            for i, box, prob in zip(index, boxes, probs):
                if box is not None:
                    result[i] = (torch.as_tensor(np.asarray(box, dtype=np.float32)).reshape(-1, 4),
                                 torch.as_tensor(np.asarray(prob, dtype=np.float32)).reshape(-1))
        return result

    def all_boxes(self, images_uint8: torch.Tensor) -> list[torch.Tensor]:
        """Every face's box ([K, 4], x1 y1 x2 y2, pixels) per image of [B, 3, H, W], at `min_probability` or above."""
        return [boxes[probs >= self.min_probability] for boxes, probs in self.detect_each(list(images_uint8))]

    def probabilities(self, images_uint8: list[torch.Tensor]) -> list[float]:
        """The probability of the most probable face in each image ([3, H, W] uint8; 0 where none is found)."""
        return [peak(probs) for _, probs in self.detect_each(images_uint8)]

    def upright_turns(self, photos: list[dict[int, torch.Tensor]]) -> list[int]:
        """Which way up each photo is: of a photo turned by each of `TURNS` (turn -> [3, H, W] uint8), the turn whose
        most probable face is the most probable; 0 (as it stands) where that ties or no turn shows a face at
        `min_probability`. MTCNN finds faces in photos turned the wrong way too, sometimes as they stand: of the
        bundle's 104 faces in each of their four positions, "as it stands where a face is found there, else the first
        turn that shows one" left 89 of 312 photos lying down on their side or upside down at 256 px (108 at 512 px);
        the most probable turn, none (`benchmarks/orientation.py`). Every photo's turns are detected together."""
        probabilities = iter(self.probabilities([image for turned in photos for image in turned.values()]))
        return [self._most_probable({turn: next(probabilities) for turn in turned}) for turned in photos]

    def _most_probable(self, probabilities: dict[int, float]) -> int:
        best = max(probabilities, key=probabilities.get)  # the first of equals: as it stands
        return best if probabilities[best] >= self.min_probability else 0

    def all_boxes_any_turn(self, image_uint8: torch.Tensor) -> torch.Tensor:
        """Every face's box ([K, 4], x1 y1 x2 y2, in the pixels of `image_uint8` [3, H, W] as it stands) found with
        the image turned the way `upright_turns` picks, turned back."""
        faces = dict(zip(TURNS, self.detect_each(list(positions(image_uint8).values()))))
        turn = self._most_probable({turn: peak(probs) for turn, (_, probs) in faces.items()})
        boxes, probs = faces[turn]
        return boxes_turned_back(boxes[probs >= self.min_probability], tuple(image_uint8.shape[-2:]), turn)


WINDOW_GROWTH = 0.5  # a face's window: its box grown by this share of the box's longer side on each side


def face_windows(boxes: torch.Tensor, height: int, width: int) -> list[tuple[slice, slice]]:
    """(rows, columns) of a window around each box ([K, 4], x1 y1 x2 y2, pixels) of an image of `height` x `width`:
    the box grown by half its longer side each way, so that the face is detected anew there as in a whole photo, and
    no other face of a group photo is (the window of a face in front of a person behind may hold part of theirs, but
    the detector takes the largest face of the window)."""
    windows = []
    for x1, y1, x2, y2 in boxes.tolist():
        grow = WINDOW_GROWTH * max(x2 - x1, y2 - y1)
        windows.append((slice(max(0, int(y1 - grow)), min(height, math.ceil(y2 + grow))),
                        slice(max(0, int(x1 - grow)), min(width, math.ceil(x2 + grow)))))
    return windows


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (Umeyama) mapping points `src` [B, K, 2] onto `dst` [K, 2]: [B, 2, 3]."""
    src = src.double()
    dst = dst.to(src).expand_as(src)
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s0, d0 = src - mu_s, dst - mu_d
    cov = d0.transpose(1, 2) @ s0 / src.shape[1]
    u, sigma, vh = torch.linalg.svd(cov)
    sign = torch.ones_like(sigma)
    sign[:, -1] = torch.sign(torch.det(u) * torch.det(vh))
    rotation = u @ torch.diag_embed(sign) @ vh
    scale = (sigma * sign).sum(1) / s0.pow(2).sum((1, 2)).div(src.shape[1])
    linear = scale[:, None, None] * rotation
    shift = mu_d.transpose(1, 2) - linear @ mu_s.transpose(1, 2)
    return torch.cat([linear, shift], dim=2).float()


def box_transform(boxes: torch.Tensor, out_size: int, margin: float) -> torch.Tensor:
    """Matrix [B, 2, 3] mapping pixels of the box (grown by `margin` output pixels, as facenet-pytorch's
    `extract_face` does) onto an `out_size` square."""
    x1, y1, x2, y2 = boxes.unbind(1)
    grow_x = margin * (x2 - x1) / (out_size - margin) / 2
    grow_y = margin * (y2 - y1) / (out_size - margin) / 2
    x1, x2, y1, y2 = x1 - grow_x, x2 + grow_x, y1 - grow_y, y2 + grow_y
    sx, sy = out_size / (x2 - x1), out_size / (y2 - y1)
    zero = torch.zeros_like(sx)
    # Pixel edges map to pixel edges: centre u of output pixel j sits at (j + 0.5) / sx + x1 - 0.5.
    return torch.stack(
        [torch.stack([sx, zero, -(x1 - 0.5) * sx - 0.5], 1), torch.stack([zero, sy, -(y1 - 0.5) * sy - 0.5], 1)], 1
    )


def sampling_theta(src_to_dst: torch.Tensor, in_hw: tuple[int, int], out_hw: tuple[int, int]) -> torch.Tensor:
    """Turn a pixel-space map source->output ([B, 2, 3], pixel centres at integers) into the
    normalised output->source matrix that `F.affine_grid(align_corners=False)` expects."""
    def to_norm(h: int, w: int) -> torch.Tensor:  # pixel -> [-1, 1]
        return torch.tensor([[2.0 / w, 0, 1.0 / w - 1], [0, 2.0 / h, 1.0 / h - 1], [0, 0, 1]], dtype=torch.float64)

    batch = src_to_dst.shape[0]
    full = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
    full[:, :2] = src_to_dst.double().cpu()
    theta = to_norm(*in_hw) @ torch.linalg.inv(full) @ torch.linalg.inv(to_norm(*out_hw))
    return theta[:, :2].float().to(src_to_dst.device)


def warp(images: torch.Tensor, theta: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """Differentiable crop/alignment of [-1, 1] images; outside the image is black (-1), as in cv2."""
    grid = F.affine_grid(theta.to(images.dtype), [images.shape[0], images.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(images + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def jitter_theta(theta: torch.Tensor, uniforms: torch.Tensor, strength: float) -> torch.Tensor:
    """Sampling matrices [B, 2, 3] of a crop moved by a random similarity: zoom in [1 - s/2, 1 + 2s] (s = 0.2:
    0.9 to 1.4, box margins from none to 40%), rotation within ±45s degrees and shift within ±s/2 of the crop,
    from uniforms [B, 4] in [0, 1). Expectation over the crop itself, so no single alignment is what is tuned."""
    u = uniforms.to(theta)
    zoom = 1 - strength / 2 + 2.5 * strength * u[:, 0]
    angle = (u[:, 1] * 2 - 1) * strength * torch.pi / 4
    shift = (u[:, 2:4] * 2 - 1) * strength  # in normalised units, where the crop spans 2
    cos, sin = zoom * torch.cos(angle), zoom * torch.sin(angle)
    jitter = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    return torch.cat([theta[:, :, :2] @ jitter[:, :, :2], theta[:, :, :2] @ jitter[:, :, 2:] + theta[:, :, 2:]], 2)
