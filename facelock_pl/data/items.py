"""`ImageItem`: one input image as the loaders hand it to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch


@dataclass
class ImageItem:
    """One image to protect.

    Attributes:
        uid: stable id; the protected image is written as `<uid>.png`.
        source: where it came from (a path relative to the source folder, or `<dataset>#<uid>`).
        image: uint8 [3, R, R] at the working resolution; None when the image could not be read.
        width, height: the source's size in pixels after EXIF orientation (0 when unknown).
        status: `ok`, or `error` when the image could not be read (`message` says why).
        extra: the source row's other columns (datasets only), carried to the outputs.
    """

    uid: str
    source: str
    image: torch.Tensor | None
    width: int = 0
    height: int = 0
    status: Literal["ok", "error"] = "ok"
    message: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def failed(cls, uid: str, source: str, message: str, width: int = 0, height: int = 0,
               extra: dict | None = None) -> "ImageItem":
        return cls(uid, source, None, width, height, "error", message, extra or {})
