"""How long a rerun takes to find that nothing is left to do: rank 0's resume step on a folder of N photos.

`FaceDataModule.setup` (no trainer: rank 0 alone) repairs the output folder, reads its manifest, lists the source,
records it, looks for protected copies that have gone and checks which sources changed since they were protected —
everything a rerun does before the first image, without the models. Two output folders over the same photos:

- `size+time`: rows as `fit` writes them today, with each file's size and modification time: a file with both
  unchanged is not read;
- `digest-only`: the same rows without them, as versions before the size and time were recorded wrote them:
  every source is read and hashed (what every resume did before).

Each round times both, with the page cache dropped first (as root; a cluster's first resume after a reboot, or a
network file system) and warm; the rounds alternate the two folders. Prints JSON and a table.

    python benchmarks/resume.py --photos 30000 --work-dir /tmp/resume-bench --rounds 2

The photos are copies of `--faces` (default: the shared CelebA-HQ faces), each made unique by a few bytes after
its end; the manifest is written in parts of 15 rows, as a batch-16 run writes it. The protected copies are empty
files: a resume only looks for them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from facelock_pl.data.datamodule import FaceDataModule
from facelock_pl.data.folder import list_images
from facelock_pl.data.items import sha256
from facelock_pl.outputs.records import SCHEMA, ManifestRow

ROWS_PER_PART = 15
VARIANTS = ("size+time", "digest-only")


def make_photos(folder: Path, faces: Path, count: int) -> None:
    """`count` JPEGs in `folder`, copies of the faces in `faces`, each with its own bytes."""
    originals = [path.read_bytes() for path in sorted(faces.glob("*.jpg"))]
    if not originals:
        raise SystemExit(f"no .jpg faces in {faces}")
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        (folder / f"{i:06d}.jpg").write_bytes(originals[i % len(originals)] + f"copy {i}".encode())


def make_output(output: Path, photos: Path, with_stat: bool) -> None:
    """An output folder in which every photo of `photos` is protected (`ok` rows, an empty PNG each)."""
    (output / "manifest").mkdir(parents=True)
    (output / "images").mkdir()
    rows = []
    for uid, relative in list_images(photos):
        status = (photos / relative).stat()
        rows.append(ManifestRow(uid=uid, source=relative, source_sha256=sha256((photos / relative).read_bytes()),
                                status="ok", message="", method="facelock", width=512, height=512, working_width=256,
                                working_height=256, iterations=150, finished_at=datetime.now(timezone.utc),
                                source_size_bytes=status.st_size if with_stat else None,
                                source_mtime_ns=status.st_mtime_ns if with_stat else None))
        (output / "images" / f"{uid}.png").touch()
    for start in range(0, len(rows), ROWS_PER_PART):
        part = [vars(row) for row in rows[start : start + ROWS_PER_PART]]
        pq.write_table(pa.Table.from_pylist(part, schema=SCHEMA), output / "manifest" / f"part-{start:06d}.parquet")


def drop_page_cache() -> bool:
    """Empty the kernel's page cache (root only); whether it was."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


def bytes_read() -> int:
    """Bytes this process has read through system calls so far (Linux `rchar`)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise RuntimeError("no rchar in /proc/self/io")


def time_resume(photos: Path, output: Path, count: int) -> dict:
    before, start = bytes_read(), time.perf_counter()
    data = FaceDataModule(source=str(photos), resolution=256, batch_size=16, output_dir=str(output))
    data.setup("fit")
    seconds = time.perf_counter() - start
    if data.num_skipped != count or data.num_pending != 0:
        raise RuntimeError(f"{output}: {data.num_skipped} of {count} skipped, {data.num_pending} pending")
    return {"seconds": round(seconds, 2), "mb_read": round((bytes_read() - before) / 1e6, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=30000)
    parser.add_argument("--faces", type=Path, default=Path(__file__).parents[1] / "../shared/assets/faces/celebahq")
    parser.add_argument("--work-dir", type=Path, required=True, help="kept: a second call reuses what it holds")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    photos = args.work_dir / "photos"
    if not photos.is_dir():
        make_photos(photos, args.faces, args.photos)
    count = len(list(photos.iterdir()))
    outputs = {variant: args.work_dir / variant for variant in VARIANTS}
    for variant, output in outputs.items():
        if not output.is_dir():
            make_output(output, photos, with_stat=variant == "size+time")

    can_drop = drop_page_cache()
    rounds = []
    for index in range(args.rounds):
        order = VARIANTS if index % 2 == 0 else VARIANTS[::-1]
        result = {}
        for cache in ("cold", "warm") if can_drop else ("warm",):
            for variant in order:
                if cache == "cold":
                    drop_page_cache()
                else:
                    time_resume(photos, outputs[variant], count)  # the warm-up: this folder's files in the cache
                result[f"{variant}, {cache}"] = time_resume(photos, outputs[variant], count)
        rounds.append(result)

    report = {"photos": count, "photo_mb": round(sum(p.stat().st_size for p in photos.iterdir()) / 1e6, 1),
              "cpu_count": os.cpu_count(), "page_cache_dropped": can_drop, "rounds": rounds}
    print(json.dumps(report, indent=2))
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{count} photos ({report['photo_mb']} MB), seconds per resume (MB read) in each round:")
    for key in rounds[0]:
        print(f"  {key:24s} " + "  ".join(f"{r[key]['seconds']:7.2f} s ({r[key]['mb_read']:8.1f} MB)" for r in rounds))


if __name__ == "__main__":
    main()
