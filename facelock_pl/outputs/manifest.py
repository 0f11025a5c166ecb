"""The manifest and the protected dataset, written as atomic parquet parts.

Per finished batch, `OutputWriter.write` writes, in this order:
1. the protected images: `images/<uid>.png` and/or one part `dataset/<part>.parquet` (an `image` column
   of PNG bytes plus every original column), each atomically;
2. `manifest/<part>.parquet`: one row per input — the commit record of the batch.
A crash between 1 and 2 leaves a dataset part without its manifest part: `repair` deletes it before the
next run, so the protected dataset holds every image exactly once. Reading merges all
manifest parts and keeps the newest row of each uid (a rerun retries `error` images only).
Both folders load with `datasets.load_dataset("parquet", data_dir=...)`.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .. import logs
from ..pixels import onto_cutout, png_bytes
from .atomic import TMP_PREFIX, write_bytes_atomic
from .lock import FolderGuard
from .records import SCHEMA, ManifestRow, ProtectedImage

if TYPE_CHECKING:  # the outputs only read an item's attributes; data imports outputs
    from ..data.items import ImageItem

OutputFormat = Literal["png", "parquet", "both"]
UNCHANGED = ("not protected: the saved image equals the source (no change survived the 8-bit rounding), so no "
             "protected copy was written")


def manifest_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "manifest"


def dataset_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "dataset"


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))


class OutputWriter:
    """Writes one batch's images and rows; part names `part-<run>-r<rank>-<seq>.parquet` never collide.

    Args:
        output_dir: the run's output folder.
        rank: this process's rank (in part names and rows).
        output_format: `png` (images/<uid>.png), `parquet` (dataset/*.parquet) or `both`.
        method: the protection method's name, recorded in every row.
    """

    def __init__(self, output_dir: Path, rank: int = 0, output_format: OutputFormat = "png", method: str = ""):
        if output_format not in ("png", "parquet", "both"):
            raise ValueError(f"output format must be png, parquet or both, got {output_format!r}")
        self.output_dir = Path(output_dir)
        self.rank = rank
        self.format = output_format
        self.method = method
        self.run_id = f"{time.time_ns():x}-{os.getpid()}"
        self.sequence = 0
        self.folder = FolderGuard(self.output_dir)  # the folder as the writer found it

    def write(self, finished: list[ProtectedImage], failed: list[ImageItem] = ()) -> list[ManifestRow]:
        """Write the protected images, then the manifest part that commits them; returns the rows written. An image
        whose saved pixels equal the source's is never written as protected: it becomes an `error` row."""
        changed, unchanged = [], []
        for image in finished:
            (unchanged if torch.equal(image.levels, image.source_levels) else changed).append(image)
        for image in unchanged:
            image.item.message = "; ".join(filter(None, [image.item.message, UNCHANGED]))
        finished, failed = changed, [*failed, *(image.item for image in unchanged)]
        rows = [ManifestRow.protected(image, self.method) for image in finished]
        rows += [ManifestRow.failed(item, self.method) for item in failed]
        if not rows:
            return rows
        self.folder.check()  # a folder deleted or replaced since is not made anew by the writes below
        name = f"part-{self.run_id}-r{self.rank}-{self.sequence:06d}.parquet"
        self.sequence += 1
        pngs = {image.item.uid: png_bytes(_stored(image), image.item.icc_profile, image.item.exif) for image in finished}
        if self.format in ("png", "both"):
            for uid, data in pngs.items():
                write_bytes_atomic(self.output_dir / "images" / f"{uid}.png", data)
        if self.format in ("parquet", "both") and pngs:
            write_bytes_atomic(dataset_dir(self.output_dir) / name, _dataset_part(pngs, {i.item.uid: i.item.extra for i in finished}))
        return _commit(self.output_dir, name, rows, self.rank)


def _stored(image: ProtectedImage) -> torch.Tensor:
    """The protected pixels as the PNG stores them: RGB, RGBA for a cutout, greyscale (L or LA) for a photo without
    colour unless it keeps an RGB colour profile, which only an RGB PNG can carry."""
    item = image.item
    levels = image.levels if item.cutout is None else onto_cutout(image.levels, image.source_levels, item.cutout)
    return torch.cat([levels[:1], levels[3:]]) if item.grey and item.icc_profile is None else levels


def _commit(output_dir: Path, name: str, rows: list[ManifestRow], rank: int = 0) -> list[ManifestRow]:
    """Write `rows`, stamped now, as the manifest part `name`: what makes them the uids' newest rows."""
    now = datetime.now(timezone.utc)
    rows = [dataclasses.replace(row, finished_at=now, rank=rank) for row in rows]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist([dataclasses.asdict(row) for row in rows], schema=SCHEMA), buffer)
    write_bytes_atomic(manifest_dir(output_dir) / name, buffer.getvalue())
    return rows


def _dataset_part(pngs: dict[str, bytes], extras: dict[str, dict]) -> bytes:
    """Parquet bytes of a `datasets` table: uid, image (PNG, `datasets.Image`), original columns."""
    import datasets

    uids = list(pngs)
    columns: dict[str, list] = {"uid": uids, "image": [{"bytes": pngs[u], "path": f"{u}.png"} for u in uids]}
    for key in sorted({k for u in uids for k in extras.get(u, {})}):
        columns[key] = [extras.get(u, {}).get(key) for u in uids]
    table = datasets.Dataset.from_dict(columns).cast_column("image", datasets.Image())
    buffer = io.BytesIO()
    table.to_parquet(buffer)
    return buffer.getvalue()


def withdraw(output_dir: Path, protected: pd.DataFrame, reason: str) -> None:
    """Take back the protected copies of `protected` (manifest rows): their PNGs and protected-dataset rows are
    removed, then an `error` row giving `reason` becomes each uid's newest row, so the next run protects it again.
    For sources that changed since they were protected: their copies are of another photo. (A crash between the two
    steps leaves final rows without copies; the next run finds their sources changed again.)"""
    uids = set(protected["uid"])
    for uid in uids:
        (Path(output_dir) / "images" / f"{uid}.png").unlink(missing_ok=True)
    for part in _parts(dataset_dir(output_dir)):
        keep = pa.array([uid not in uids for uid in pq.read_table(part, columns=["uid"])["uid"].to_pylist()])
        if keep.false_count == 0:
            continue  # only the uid column was read: a large dataset's parts are not loaded for one changed photo
        if keep.true_count == 0:
            part.unlink()
            continue
        buffer = io.BytesIO()
        pq.write_table(pq.read_table(part).filter(keep), buffer)
        write_bytes_atomic(part, buffer.getvalue())
    rows = [ManifestRow(uid=row.uid, source=row.source, source_sha256=None, status="error", message=reason,
                        method=row.method, width=int(row.width), height=int(row.height), working_width=0,
                        working_height=0, iterations=0, extra_json=row.extra_json)
            for row in protected.itertuples()]
    _commit(Path(output_dir), f"part-{time.time_ns():x}-{os.getpid()}-withdrawn.parquet", rows)


def without_copies(output_dir: Path, protected: pd.DataFrame) -> pd.DataFrame:
    """The rows of `protected` (newest rows of protected images) whose copy is nowhere in `output_dir`: neither
    `images/<uid>.png` nor a row of the protected dataset (deleted or moved away after it was written)."""
    folder = Path(output_dir) / "images"
    pngs = {path.stem for path in folder.glob("*.png")} if folder.is_dir() else set()
    missing = protected[~protected["uid"].isin(pngs)]
    in_dataset = dataset_parts(output_dir) if len(missing) else {}
    return missing[~missing["uid"].isin(list(in_dataset))]


def dataset_parts(output_dir: Path) -> dict[str, Path]:
    """uid -> the part of the protected dataset that holds its image (only the uid column is read)."""
    return {uid: part for part in _parts(dataset_dir(output_dir))
            for uid in pq.read_table(part, columns=["uid"])["uid"].to_pylist()}


def repair(output_dir: Path) -> list[Path]:
    """Before a run (rank 0): move damaged manifest parts to `manifest/damaged/` (their images count as not done
    and are protected again), then delete dataset parts whose manifest part is missing (a crash between the two
    writes, or a quarantined part) and stale temp files. Returns the paths moved or deleted."""
    moved = []
    for part in _parts(manifest_dir(output_dir)):
        try:
            pq.read_metadata(part)
        except (pa.ArrowException, OSError) as error:
            target = manifest_dir(output_dir) / "damaged" / part.name
            target.parent.mkdir(exist_ok=True)
            part.replace(target)
            logs.warning(f"facelock_pl: damaged manifest part {part.name} ({error}) moved to {target.parent}; "
                         "its images will be protected again")
            moved.append(target)
    committed = {p.name for p in _parts(manifest_dir(output_dir))}
    removed = [p for p in _parts(dataset_dir(output_dir)) if p.name not in committed]
    for folder in (manifest_dir(output_dir), dataset_dir(output_dir), Path(output_dir) / "images"):
        removed += list(folder.glob(f"{TMP_PREFIX}*")) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return moved + removed


def _read_part(path: Path) -> pa.Table | None:
    """One manifest part in today's schema (parts of earlier versions converted); None if unreadable."""
    try:
        # One file, read as it is (`pq.read_table` would set up a dataset per part: ~3x slower over 2,000 parts).
        table = pq.ParquetFile(path).read(use_threads=False)
    except (pa.ArrowException, OSError) as error:
        logs.warning(f"facelock_pl: skipping unreadable manifest part {path} ({error})")
        return None
    if table.schema.equals(SCHEMA):
        return table
    columns = {}
    for field in SCHEMA:
        if field.name not in table.column_names:
            columns[field.name] = pa.nulls(len(table), field.type)
        elif field.name == "finished_at" and pa.types.is_floating(table.schema.field(field.name).type):
            seconds = table[field.name].to_numpy(zero_copy_only=False)  # unix seconds, before timestamps
            columns[field.name] = pa.array((seconds * 1e6).astype("int64"), pa.timestamp("us", tz="UTC"))
        else:
            column = table[field.name]
            columns[field.name] = column if column.type == field.type else column.cast(field.type)
    return pa.table(columns, schema=SCHEMA)


# 64-bit integers (a file's time in ns) as pandas' nullable Int64: with a missing value, plain pandas would make the
# column float64 and round the times.
_EXACT_INTEGERS = {pa.int64(): pd.Int64Dtype()}.get


def read_manifest(output_dir: Path) -> pd.DataFrame:
    """All rows, newest per uid, sorted by uid; an empty frame with the schema's columns if none."""
    tables = [t for t in (_read_part(p) for p in _parts(manifest_dir(output_dir))) if t is not None]
    if not tables:
        return SCHEMA.empty_table().to_pandas(types_mapper=_EXACT_INTEGERS)
    frame = pa.concat_tables(tables).to_pandas(types_mapper=_EXACT_INTEGERS)
    frame = frame.sort_values(["uid", "finished_at"]).drop_duplicates("uid", keep="last")
    return frame.reset_index(drop=True)


FINAL_STATUSES = ("ok", "no_face")  # protected (with or without a face); `error` rows are retried
