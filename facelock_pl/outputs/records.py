"""The records the outputs are written from: a finished image, and the manifest row that describes it.

The manifest's parquet schema is derived from `ManifestRow`, so the two cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa
import torch

from ..pixels import distortion

if TYPE_CHECKING:  # the outputs only read an item's attributes; data imports outputs
    from ..data.items import ImageItem


@dataclass
class ProtectedImage:
    """One image the engine finished, as it hands it to the outputs.

    Attributes:
        item: the input image.
        levels: uint8 [3, H, W], the protected image exactly as saved, at the source's native size.
        source_levels: uint8 [3, H, W], the 8-bit native source that ε bounds.
        iterations: PGD iterations run.
        face_found: whether a face was detected (else it was protected without the FR term).
        terms: the last value of each objective term the method computed, by name.
        fr_cos_recon, fr_cos_recon_detected: protection measured on the saved image (see `engine.measure`).
        recognised_by: the recognisers of the loss (and judges) that still recognise the face detected anew in the
            saved image's reconstruction — any face of the FR term, with several — comma-separated ("": none; None:
            not judged — no threshold on every recogniser, or no face).
        faces_in_photo: faces found in the clean frame as the editor sees it (None: not counted — no recogniser).
        seconds: wall time from admission to the end.
        faces_protected: the faces in the FR term, the largest first (`objective.faces` of them at most; 0: none
            found; None: no recogniser).
    """

    item: ImageItem
    levels: torch.Tensor
    source_levels: torch.Tensor
    iterations: int
    face_found: bool
    terms: dict[str, float]
    fr_cos_recon: float | None
    fr_cos_recon_detected: float | None
    recognised_by: str | None
    faces_in_photo: int | None
    seconds: float
    faces_protected: int | None = None


def _timestamp() -> dict:
    return {"arrow": pa.timestamp("us", tz="UTC")}


def _int64() -> dict:
    return {"arrow": pa.int64()}


@dataclass
class ManifestRow:
    """One row of `OUT/manifest/*.parquet` per input image (columns: README, Output)."""

    uid: str
    source: str
    source_sha256: str | None  # of the source's bytes as read; a rerun protects the image again when they change
    status: str  # ok | no_face | error
    message: str
    method: str
    width: int  # the source's native size: the protected image's size
    height: int
    working_width: int  # the size the optimisation saw (the editor's working resolution)
    working_height: int
    iterations: int
    linf_255: float | None = None
    psnr_db: float | None = None
    term_fr_cos: float | None = None
    term_fr_target_cos: float | None = None
    term_latent_mse: float | None = None
    term_lpips: float | None = None
    term_latent_target_dist: float | None = None
    term_recon_norm: float | None = None
    term_latent_l2: float | None = None
    term_l2_distortion: float | None = None
    term_face_mse: float | None = None
    fr_cos_recon: float | None = None
    fr_cos_recon_detected: float | None = None  # the same, with the face detected anew in the reconstruction
    recognised_by: str | None = None  # the loss's recognisers still matching there ("": none; None: not judged)
    faces_in_photo: int | None = None  # faces in the photo; every column above is about the largest
    faces_protected: int | None = None  # faces in the FR term, the largest first (objective.faces at most)
    seconds: float = 0.0
    # The source file as read (None for a dataset cell with its bytes): a rerun reads again only where either differs.
    source_size_bytes: int | None = field(default=None, metadata=_int64())
    source_mtime_ns: int | None = field(default=None, metadata=_int64())
    metadata_removed: str = ""  # what the protected copy does not carry of the source's metadata
    extra_json: str = "{}"  # the row's other source columns (labels, attributes), as JSON
    finished_at: datetime | None = field(default=None, metadata=_timestamp())  # UTC; the newest row of a uid wins
    rank: int = 0

    @classmethod
    def protected(cls, image: ProtectedImage, method: str) -> "ManifestRow":
        item = image.item
        linf_255, psnr_db = distortion(image.levels, image.source_levels)
        terms = {f"term_{name}": value for name, value in image.terms.items() if value == value}  # NaN: not computed
        if not image.face_found:
            for name in ("term_fr_cos", "term_fr_target_cos"):  # computed for the batch, not part of this image's objective
                terms.pop(name, None)
        notes = [item.message] if item.message else []
        notes += [] if image.face_found else ["no face detected: protected without the face-recognition term"]
        notes += [] if image.face_found else _small_faces_hint(item)
        protected = max(1, image.faces_protected or 0)
        if (image.faces_in_photo or 0) > protected:
            which = "only the largest is" if protected == 1 else f"only the {protected} largest are"
            notes.append(f"{image.faces_in_photo} faces in the photo: {which} protected against recognition")
        return cls(
            **_source_columns(item), method=method, width=item.width, height=item.height,
            working_width=item.region[1], working_height=item.region[0], iterations=image.iterations,
            seconds=image.seconds, status="ok" if image.face_found else "no_face", message="; ".join(notes),
            metadata_removed=item.metadata_removed,
            linf_255=float(linf_255), psnr_db=psnr_db,
            fr_cos_recon=image.fr_cos_recon if image.face_found else None,
            fr_cos_recon_detected=image.fr_cos_recon_detected if image.face_found else None,
            recognised_by=image.recognised_by if image.face_found else None, faces_in_photo=image.faces_in_photo,
            faces_protected=image.faces_protected,
            extra_json=jsonable(item.extra), **terms,
        )

    @classmethod
    def failed(cls, item: ImageItem, method: str) -> "ManifestRow":
        return cls(**_source_columns(item), status="error", message=item.message, method=method, width=item.width,
                   height=item.height, working_width=0, working_height=0, iterations=0, extra_json=jsonable(item.extra))


SMALLEST_FACE_PX = 20  # the detector's smallest face (MTCNN's `min_face_size`, models/faces.py)


def shrunk_past_faces(width: int, height: int, working_width: int, working_height: int) -> float | None:
    """How many times smaller than it is a photo was seen, where that hides faces: at least 2x, and a face the
    detector misses at the working size would still fit in the photo. None otherwise."""
    shrink = max(width, height) / max(working_width, working_height, 1)
    return shrink if shrink >= 2 and min(width, height) >= SMALLEST_FACE_PX * shrink else None


def _small_faces_hint(item: ImageItem) -> list[str]:
    """Why a photo much larger than its working size may show no face there (a group photo, a crowd), and the remedy."""
    height, width = item.view if max(item.view) > 0 else item.region
    shrink = shrunk_past_faces(item.width, item.height, width, height)
    if item.faces_searched or shrink is None:  # the face search already looked at the photo larger (its own note)
        return []
    return [f"the photo is seen at {width}x{height}, {shrink:.0f}x smaller than it is: a face under about "
            f"{SMALLEST_FACE_PX} px there ({SMALLEST_FACE_PX * shrink:.0f} px in the photo) is not found; "
            "`data.region: faces` searches the photo at up to 1280 px, a larger `data.resolution` shows it larger"]


def _source_columns(item: ImageItem) -> dict:
    """What a row records of the source read: its uid, path and digest, and a file's size and time (None for a
    dataset cell that holds its bytes)."""
    size, mtime_ns = item.source_stat or (None, None)
    return dict(uid=item.uid, source=item.source, source_sha256=item.source_sha256 or None, source_size_bytes=size,
                source_mtime_ns=mtime_ns)


def jsonable(extra: dict) -> str:
    """The JSON of a row's plain-valued extra columns (images and other binary cells are left out)."""
    plain = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return json.dumps(plain, sort_keys=True, default=str)


_ARROW_TYPES = {str: pa.string(), str | None: pa.string(), int: pa.int32(), int | None: pa.int32(), float: pa.float32(), float | None: pa.float32()}


def _schema(row_type: type) -> pa.Schema:
    hints = typing.get_type_hints(row_type)
    return pa.schema([(f.name, f.metadata["arrow"] if "arrow" in f.metadata else _ARROW_TYPES[hints[f.name]])
                      for f in dataclasses.fields(row_type)])


SCHEMA = _schema(ManifestRow)
