"""`ImageItem`: one input image as the loaders hand it to the engine."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from ..outputs.records import SMALLEST_FACE_PX
from ..pixels import NATIVE, pad_to, pil_to_levels, resize, working_size
from .images import DEFAULT_MAX_PIXELS, BadImageError, Photo, load_photo

SMALLEST_CELL_PX = 64  # a face region's cell in the working canvas: its face (half the cell at margin 0.5) 32 px wide


class FaceCrop(NamedTuple):
    """One region of a photo optimised in face-region mode: the square (`top`, `left`, `side`) in the photo's
    pixels, shown in the square cell (`cell_top`, `cell_left`, `cell_side`) of the working canvas."""

    top: int
    left: int
    side: int
    cell_top: int
    cell_left: int
    cell_side: int

    @property
    def square(self) -> tuple[slice, slice]:
        """(rows, columns) of the square in the photo."""
        return slice(self.top, self.top + self.side), slice(self.left, self.left + self.side)

    @property
    def cell(self) -> tuple[slice, slice]:
        """(rows, columns) of the cell in the canvas."""
        return (slice(self.cell_top, self.cell_top + self.cell_side),
                slice(self.cell_left, self.cell_left + self.cell_side))


@dataclass
class ImageItem:
    """One image to protect.

    Attributes:
        uid: stable id; the protected image is written as `<uid>.png`.
        source: where it came from (a path relative to the source folder, or `<dataset>#<uid>`).
        image: uint8 [3, R, R], the working canvas: the image at the editor's working size (longest side
            `data.resolution`, aspect kept, sides multiples of 8) at the top left, the border repeated to fill the
            square (so that images of any shape share a batch); None when the image could not be read.
        region: (height, width) of the image inside the canvas: the perturbation lives there only.
        native: uint8 [3, H, W], the source at its own size: the protected copy is made from it.
        crops: face-region mode: the squares of the photo the canvas shows, each in its own cell (one square fills
            the canvas; several, a grid of cells); empty: the whole frame.
        faces_searched: face-region mode: the photo was searched for faces (`faces_squares`); with no `crops`, none was
            found there and the whole frame is protected.
        view: (height, width) of the whole frame as the editor sees it (the working size of the frame).
        width, height: the native size after EXIF orientation (0 when unknown).
        status: `ok`, or `error` when the image could not be read (`message` says why).
        source_sha256: the SHA-256 of the source's bytes (file or dataset cell) as read; "" when none could be read.
            A rerun compares it with the source's bytes then, so a photo replaced under the same name is protected
            again instead of being taken as done.
        source_stat: (size in bytes, modification time in ns) of the source file, taken just before it was read
            (a folder's files, a dataset's path cells; None for a cell with its bytes): a rerun that finds the file
            with both unchanged takes its bytes as unchanged without reading them.
        extra: the source row's other columns (datasets only), carried to the outputs.
        icc_profile, exif, metadata_removed: what the protected copy carries and what was left out.
        cutout: uint8 [4, H, W], a source with transparency as stored (`Photo.cutout`; None: opaque).
        grey: a photo without colour (`Photo.grey`): its perturbation is grey, its protected copy a greyscale PNG.
    """

    uid: str
    source: str
    image: torch.Tensor | None
    width: int = 0
    height: int = 0
    status: Literal["ok", "error"] = "ok"
    message: str = ""
    extra: dict = field(default_factory=dict)
    native: torch.Tensor | None = None
    region: tuple[int, int] = (0, 0)
    icc_profile: bytes | None = None
    exif: bytes | None = None
    metadata_removed: str = ""
    crops: list[FaceCrop] = field(default_factory=list)
    view: tuple[int, int] = (0, 0)
    source_sha256: str = ""
    source_stat: tuple[int, int] | None = None
    cutout: torch.Tensor | None = None
    grey: bool = False
    faces_searched: bool = False

    @classmethod
    def failed(cls, uid: str, source: str, message: str, width: int = 0, height: int = 0,
               extra: dict | None = None, source_sha256: str = "", source_stat: tuple[int, int] | None = None
               ) -> "ImageItem":
        return cls(uid, source, None, width, height, "error", message, extra or {}, source_sha256=source_sha256,
                   source_stat=source_stat)

    @classmethod
    def from_photo(cls, uid: str, source: str, photo: Photo, resolution: int | str, extra: dict | None = None,
                   crops: list[FaceCrop] | None = None) -> "ImageItem":
        """The item of a decoded photo, with its working canvas for `resolution` (pixels, or `native`): the whole
        frame, or the `crops` of it (`face_cells`)."""
        native = pil_to_levels(photo.image)
        height, width = native.shape[-2:]
        view = (height, width) if resolution == NATIVE else working_size(width, height, resolution)[::-1]
        if crops:
            work = crops_canvas(photo.image, crops, resolution)
        else:
            work = native if resolution == NATIVE else resize(photo.image, view[::-1])
        h, w = work.shape[-2:]
        canvas = pad_to(work, *((-(-h // 8) * 8, -(-w // 8) * 8) if resolution == NATIVE else (resolution, resolution)))
        notes = []
        if photo.downscaled_from:
            notes.append(f"larger than max_pixels: protected at {width}x{height}, downscaled from "
                         f"{photo.downscaled_from[0]}x{photo.downscaled_from[1]}")
        cutout = None if photo.cutout is None else torch.from_numpy(np.array(photo.cutout)).permute(2, 0, 1).contiguous()
        return cls(uid, source, canvas, width, height, "ok", "; ".join(notes), extra or {}, native, (h, w),
                   photo.icc_profile, photo.exif, photo.removed, crops or [], view, cutout=cutout, grey=photo.grey)


@dataclass(frozen=True)
class Decoding:
    """How inputs become items: working resolution (pixels or `native`), the pixel limit and what happens above
    it (`error` or `downscale`), whether the protected copy keeps all metadata, and whether the whole frame or the
    regions around the faces are optimised (`region: faces`, with `face_margin` of a face's box on each side), and
    whether a photo without colour keeps none (`keep_grey`)."""

    resolution: int | str = 512
    max_pixels: int = DEFAULT_MAX_PIXELS
    oversize: Literal["error", "downscale"] = "error"
    keep_metadata: bool = False
    region: Literal["frame", "faces"] = "frame"
    face_margin: float = 0.5
    keep_grey: bool = True

    def item(self, uid: str, source: str, data: bytes, extra: dict | None = None,
             stat: tuple[int, int] | None = None) -> ImageItem:
        """The item of a source's encoded bytes, and of its file's `stat` taken before they were read (`file_stat`;
        None for a dataset cell with its bytes); an `error` item (with the size, where known) if they cannot be
        decoded."""
        digest = sha256(data)
        try:
            photo = load_photo(data, self.max_pixels, keep_metadata=self.keep_metadata, oversize=self.oversize,
                               keep_grey=self.keep_grey)
        except BadImageError as error:
            return ImageItem.failed(uid, source, str(error), *error.size, extra=extra, source_sha256=digest,
                                    source_stat=stat)
        squares = faces_squares(photo.image, self.face_margin) if self.region == "faces" else []
        crops = face_cells(squares, self.resolution)
        item = ImageItem.from_photo(uid, source, photo, self.resolution, extra, crops)
        item.source_sha256, item.source_stat = digest, stat
        item.faces_searched = self.region == "faces"
        notes = [item.message]
        if item.faces_searched and not crops:
            notes.append(_no_face_found(*photo.image.size))
        if len(crops) < len(squares):
            notes.append(f"{len(squares)} face regions, the {len(crops)} largest protected: the working canvas holds "
                         f"no more cells of {SMALLEST_CELL_PX} px (a larger `data.resolution` holds more)")
        item.message = "; ".join(filter(None, notes))
        return item


def sha256(data: bytes) -> str:
    """The hex SHA-256 of a source's bytes: what the manifest records and a rerun compares."""
    return hashlib.sha256(data).hexdigest()


def file_stat(path: Path) -> tuple[int, int] | None:
    """(size in bytes, modification time in ns) of a source file (of a link's target): what the manifest records
    and a rerun compares before reading it again; None if it cannot be read."""
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_size, status.st_mtime_ns


_DETECTOR = None  # one face detector per loader process, loaded on first use
FACE_SEARCH_PX = 1280  # `faces_squares` searches a photo at up to this longest side


def _no_face_found(width: int, height: int) -> str:
    """The row's note for a photo in which the face search found no face."""
    scale = min(1.0, FACE_SEARCH_PX / max(width, height))
    return (f"no face found in the photo searched at {round(width * scale)}x{round(height * scale)} (a face under about "
            f"{SMALLEST_FACE_PX} px there, {SMALLEST_FACE_PX / scale:.0f} px in the photo, is not found): the whole "
            "frame is protected")


def faces_squares(image, margin: float, search_side: int = FACE_SEARCH_PX) -> list[tuple[int, int, int]]:
    """The squares (top, left, side), in the image's pixels, around the faces found, largest first: a face's box grown
    by `margin` of its size on each side, kept inside the image; faces whose squares would overlap share one square,
    around their joint box, so no pixel is in two. Empty when no face is found (the whole frame is then protected).
    Faces are searched on a copy whose longest side is at most `search_side`, in the position (as it stands, or
    turned: the engine then turns the canvas upright) that shows the most probable face. At 640 instead of 1280,
    faces 50 to 100 px wide in a 1600x1200 frame were missed: 12 of 80 in colour, 21 of 80 grey
    (`benchmarks/face_region.py`), for a third of the search's time (0.21 s a photo instead of 0.61, 2-core CPU)."""
    global _DETECTOR
    if _DETECTOR is None:
        from ..models import FaceDetector

        _DETECTOR = FaceDetector()
    scale = min(1.0, search_side / max(image.size))
    small = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale)))) if scale < 1 else image
    boxes = _DETECTOR.all_boxes_any_turn(pil_to_levels(small)) / scale
    groups = [[face] for face in range(len(boxes))]
    while True:
        squares = [_square_around(boxes[group], margin, *image.size) for group in groups]
        pair = next(((a, b) for a in range(len(squares)) for b in range(a + 1, len(squares))
                     if _overlap(squares[a], squares[b])), None)
        if pair is None:
            return sorted(squares, key=lambda square: (-square[2], square[0], square[1]))
        groups[pair[0]] += groups.pop(pair[1])


def _square_around(boxes: torch.Tensor, margin: float, width: int, height: int) -> tuple[int, int, int]:
    """The square (top, left, side) around the joint box of `boxes` ([N, 4], x1 y1 x2 y2), grown by `margin` of its
    size on each side and kept inside a `width` x `height` image."""
    x1, y1 = boxes[:, 0].min().item(), boxes[:, 1].min().item()
    x2, y2 = boxes[:, 2].max().item(), boxes[:, 3].max().item()
    side = min(int(max(x2 - x1, y2 - y1) * (1 + 2 * margin)), width, height)
    left = int(min(max((x1 + x2 - side) / 2, 0), width - side))
    top = int(min(max((y1 + y2 - side) / 2, 0), height - side))
    return top, left, side


def _overlap(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
    """Whether two squares (top, left, side) share a pixel."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[2] and b[1] < a[1] + a[2]


def face_cells(squares: list[tuple[int, int, int]], resolution: int | str) -> list[FaceCrop]:
    """Where each square (largest first) is shown in the `resolution` x `resolution` working canvas: one square
    fills it; several, a grid of square cells (sides multiples of 8, so that each cell is whole latent pixels of the
    autoencoders), row by row — as many as cells of at least `SMALLEST_CELL_PX` fit, the largest squares first. A
    square smaller than its cell is shown at its own size (its side trimmed to a multiple of 8) in the cell's top
    left, never enlarged: a perturbation finer than the photo's pixels would be lost when it is carried to them."""
    if not squares:
        return []
    most = (resolution // SMALLEST_CELL_PX) ** 2
    squares = squares[: max(1, most)]
    grid = math.ceil(math.sqrt(len(squares)))
    cell = resolution if grid == 1 else resolution // grid // 8 * 8
    crops = []
    for index, (top, left, side) in enumerate(squares):
        shown = min(cell, side // 8 * 8)
        crops.append(FaceCrop(top, left, side if shown == cell else shown, index // grid * cell, index % grid * cell, shown))
    return crops


def crops_canvas(image, crops: list[FaceCrop], resolution: int) -> torch.Tensor:
    """uint8 [3, resolution, resolution]: each crop of the PIL `image` resized into its cell, mid-grey elsewhere."""
    canvas = torch.full((3, resolution, resolution), 128, dtype=torch.uint8)
    for crop in crops:
        square = image.crop((crop.left, crop.top, crop.left + crop.side, crop.top + crop.side))
        canvas[(slice(None), *crop.cell)] = resize(square, (crop.cell_side, crop.cell_side))
    return canvas
