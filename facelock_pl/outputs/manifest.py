"""The manifest and the protected dataset, written as atomic parquet parts.

Per finished batch, `OutputWriter.write_batch` writes, in this order:
1. the protected images: `images/<uid>.png` and/or one part `dataset/<part>.parquet` (an `image` column
   of PNG bytes plus every original column), each atomically;
2. `manifest/<part>.parquet`: one row per input — the commit record of the batch.
A crash between 1 and 2 leaves a dataset part without its manifest part: `remove_orphan_parts` deletes
it before the next run, so the protected dataset holds every image exactly once. Reading merges all
manifest parts and keeps the newest row of each uid (a rerun retries images that were not `ok`).
Both folders load with `datasets.load_dataset("parquet", data_dir=...)`.
"""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..objectives import TERM_NAMES
from .atomic import TMP_PREFIX, write_bytes_atomic

OutputFormat = Literal["png", "parquet", "both"]

SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("source", pa.string()),
        ("status", pa.string()),  # ok | no_face | error
        ("message", pa.string()),
        ("method", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("iterations", pa.int32()),
        ("linf_255", pa.float32()),
        ("psnr_db", pa.float32()),
        *[(f"term_{name}", pa.float32()) for name in TERM_NAMES],
        ("fr_cos_recon", pa.float32()),
        ("fr_cos_recon_detected", pa.float32()),  # the same, with the face detected anew in the reconstruction
        ("seconds", pa.float32()),
        ("extra_json", pa.string()),  # the row's other source columns (labels, attributes), as JSON
        ("finished_at", pa.float64()),  # unix time; the newest row of a uid wins
        ("rank", pa.int32()),
    ]
)


def manifest_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "manifest"


def dataset_dir(output_dir: Path) -> Path:
    return Path(output_dir) / "dataset"


def _parts(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith(TMP_PREFIX))


def _jsonable(extra: dict) -> str:
    plain = {k: v for k, v in extra.items() if isinstance(v, (str, int, float, bool, list, type(None)))}
    return json.dumps(plain, sort_keys=True, default=str)


class OutputWriter:
    """Writes one batch's images and rows; part names `part-<run>-r<rank>-<seq>.parquet` never collide."""

    def __init__(self, output_dir: Path, rank: int = 0, output_format: OutputFormat = "png"):
        if output_format not in ("png", "parquet", "both"):
            raise ValueError(f"output format must be png, parquet or both, got {output_format!r}")
        self.output_dir = Path(output_dir)
        self.rank = rank
        self.format = output_format
        self.run_id = f"{time.time_ns():x}-{os.getpid()}"
        self.sequence = 0

    def write_batch(self, rows: list[dict], pngs: dict[str, bytes], extras: dict[str, dict]) -> None:
        """`rows`: manifest rows; `pngs`: uid -> PNG bytes of the protected images; `extras`: uid -> other columns."""
        if not rows:
            return
        name = f"part-{self.run_id}-r{self.rank}-{self.sequence:06d}.parquet"
        self.sequence += 1
        if self.format in ("png", "both"):
            for uid, data in pngs.items():
                write_bytes_atomic(self.output_dir / "images" / f"{uid}.png", data)
        if self.format in ("parquet", "both") and pngs:
            write_bytes_atomic(dataset_dir(self.output_dir) / name, _dataset_part(pngs, extras))
        now = time.time()
        for row in rows:
            row.setdefault("finished_at", now)
            row.setdefault("rank", self.rank)
            row["extra_json"] = _jsonable(extras.get(row["uid"], {}))
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buffer)
        write_bytes_atomic(manifest_dir(self.output_dir) / name, buffer.getvalue())


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


def remove_orphan_parts(output_dir: Path) -> list[Path]:
    """Delete dataset parts whose manifest part was never written (a crash in between) and stale temp files."""
    committed = {p.name for p in _parts(manifest_dir(output_dir))}
    removed = [p for p in _parts(dataset_dir(output_dir)) if p.name not in committed]
    for folder in (manifest_dir(output_dir), dataset_dir(output_dir), Path(output_dir) / "images"):
        removed += list(folder.glob(f"{TMP_PREFIX}*")) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


def read_manifest(output_dir: Path) -> pd.DataFrame:
    """All rows, newest per uid, sorted by uid; an empty frame with the schema's columns if none."""
    parts = _parts(manifest_dir(output_dir))
    if not parts:
        return SCHEMA.empty_table().to_pandas()
    frame = pd.concat([pq.read_table(p, schema=SCHEMA).to_pandas() for p in parts], ignore_index=True)
    frame = frame.sort_values(["uid", "finished_at"]).drop_duplicates("uid", keep="last")
    return frame.reset_index(drop=True)


def finished_uids(output_dir: Path) -> set[str]:
    """Uids whose newest row is `ok` (their images were written before the row)."""
    frame = read_manifest(output_dir)
    return set(frame.loc[frame["status"] == "ok", "uid"])
