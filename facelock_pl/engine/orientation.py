"""A photo lying sideways or upside down with no EXIF orientation to say so (a scan, a photo whose metadata an app
stripped) is protected turned upright: where the detector finds a face more probable once the photo is turned by a
quarter turn or two, the optimisation sees it turned so (and as it lies in its file: `AttackConfig.both_positions`),
and the perturbation is turned back onto the photo as it stands at delivery. Turns are counter-clockwise, as
`torch.rot90` turns dims (H, W).
"""

from __future__ import annotations

import torch

from ..data.items import ImageItem
from ..models import FaceDetector, FaceGeometry
from ..models.faces import TURNS
from ..pixels import turn_canvas, turned_region

TURNS_SAID = {1: "90° counter-clockwise", 3: "90° clockwise", 2: "upside down"}


def turned_note(turn: int, both_positions: bool) -> str:
    """The manifest's `message` for a photo protected turned upright by `turn` quarter turns."""
    protected = "protected turned so and as it lies" if both_positions else "protected turned so"
    return (f"the face is upright once the photo is turned {TURNS_SAID[turn]} (no EXIF orientation says so): {protected}; "
            "measured both ways, the position that keeps more identity reported")


def untwist(canvas: torch.Tensor, region: tuple[int, int], turn: int) -> torch.Tensor:
    """The photo's `region` (height, width, as it stands) of a canvas that holds it turned by `turn` quarter turns,
    turned back: [3, h, w] (the canvas itself where `turn` is 0)."""
    if turn == 0:
        return canvas
    h, w = turned_region(region, turn)
    return torch.rot90(canvas[:, :h, :w], -turn, (1, 2))


def turn_upright(detector: FaceDetector, levels: torch.Tensor, items: list[ImageItem],
                 count: int) -> tuple[torch.Tensor, list[int], FaceGeometry]:
    """The canvases ([B, 3, H, W] uint8) with each photo turned the way `FaceDetector.upright_turns` picks; the quarter
    turns (0: as it stands) and the detector's geometry of the canvases returned (`count` faces per image). A photo is
    turned only in a canvas that it still fits turned: a square one (the frame's or, with `data.region: faces`, the
    crop's), or a photo's own (one per batch, `data.resolution: native`), which turns with it."""
    turns = [0] * len(items)
    turnable = [b for b in range(len(items)) if levels.shape[-2] == levels.shape[-1] or len(items) == 1]
    candidates = [{turn: turn_canvas(levels[b], items[b].region, turn) for turn in TURNS} for b in turnable]
    for b, turned, turn in zip(turnable, candidates, detector.upright_turns(candidates)):
        turns[b] = turn
        if turn and turned[turn].shape != levels.shape[1:]:  # a photo's own canvas (one per batch) turns with it
            levels = turned[turn][None].clone()
        elif turn:
            levels[b] = turned[turn]
    return levels, turns, detector(levels, count)
