"""`FaceDataModule`: which images to protect, on which rank, loaded and resized in worker processes.

- Sources: a folder of images, `demo`, or a Hugging Face dataset (hub id, parquet, `save_to_disk`,
  `imagefolder`); `num_shards`/`shard_index` select one contiguous shard of it, `limit` its first images.
  The run's own output folder is never part of the source, wherever it is.
- Resume: images with a final row (`ok` or `no_face`) in the output manifest are skipped, and every file
  keeps the uid it was given (adding files never renames earlier ones) — unless its bytes changed since (the
  manifest's `source_sha256`; a file is read again only when its size or modification time differ from those
  recorded): then its protected copy is withdrawn and it is protected again. Rank 0 reads the manifest and checks
  the sources once and broadcasts what it found, so all ranks shard the same pending list.
- Ranks: each rank takes a contiguous, disjoint slice of the pending list — no image twice, none
  skipped (Lightning's `DistributedSampler` would pad with duplicates instead).
- Batches: the engine's `batch_size` slots are continuously refilled from an `ImageQueue` (`QueueFeed`): one
  Lightning training step is one PGD iteration over the images in the slots; decoding happens once per
  image, in the loader workers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import lightning as L
import pandas as pd
from torch.utils.data import DataLoader, Dataset

from .. import logs
from ..outputs import read_manifest, repair, withdraw
from ..outputs.manifest import FINAL_STATUSES, without_copies
from ..outputs.settings import record_source
from ..pixels import NATIVE, resolution_problem
from ..signals import ignore_stop_signals
from .feeder import QueueFeed
from .folder import FolderImages, demo_entries
from .hf import HUB_ID, HFImages, contiguous_shard, detect_format, open_dataset, row_uids
from .images import DEFAULT_MAX_PIXELS, BadImageError
from .items import Decoding, ImageItem, sha256

DEMO_SOURCE = "demo"  # the portraits that scikit-image and matplotlib ship
FORMATS = ("auto", "folder", "imagefolder", "parquet", "disk", "hub")


def is_local(source: str, format: str = "auto") -> bool:
    """Whether `source` names local files (a folder, a file, a parquet glob), not a hub dataset nor `demo`."""
    if source == DEMO_SOURCE or format == "hub":
        return False
    return Path(source).expanduser().exists() or "*" in source or format != "auto" or not HUB_ID.match(source)


def absolute_source(source: str, format: str = "auto") -> str:
    """`source` with a local path made absolute (so a record of it holds wherever it is read); a hub id or `demo` as
    it is."""
    return str(Path(source).expanduser().resolve()) if is_local(source, format) else source


class RankSlice(Dataset):
    """Items `indices` of `images`: this process's share of the pending images."""

    def __init__(self, images: Dataset, indices: list[int]):
        self.images, self.indices = images, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> ImageItem:
        return self.images[self.indices[i]]


class FaceDataModule(L.LightningDataModule):
    """Portraits to protect.

    Args:
        source: a folder of images (recursive; jpg/png/webp/bmp/tiff/gif/heic/avif), `demo`, parquet file(s) or a
            folder of them, a `save_to_disk` folder, an imagefolder, or a Hugging Face hub id (e.g.
            `mattymchen/celeba-hq`).
        format: `auto` (decided from what `source` is, see `hf.detect_format`), `folder`, `imagefolder`,
            `parquet`, `disk` or `hub`.
        split: dataset split (datasets sources).
        image_column: column holding the images (datasets sources): encoded images, `datasets.Image` cells or
            paths (read below the dataset's folder only, unless `allow_external_paths`).
        id_column: column giving each row's uid; None: `<split>-<row index>`.
        num_shards, shard_index: protect only this contiguous shard of the source.
        resolution: the editor's working resolution: the optimisation sees the image resized (antialiased, aspect
            kept, never cropped) to this longest side, a multiple of 8 and at least 32; `native` works at the
            image's own size (one image per step). Either way the protected image is the whole source frame at
            its own size: the perturbation found at the working size is carried to it, projected and quantised there.
        batch_size: slots, i.e. images optimised together in one PGD step (at least 1); `auto` lets the module
            find the largest that fits in GPU memory (4 on CPU).
        num_workers: loader worker processes (decoding and resizing happen there).
        limit: only the first `limit` images of the source (shard); None for all. Images already protected
            among them are skipped, so a rerun with the same limit has nothing to do.
        max_pixels: inputs with more pixels are an `error` row, refused before decoding (decompression-bomb guard)...
        oversize: ... unless `downscale`: they are shrunk to `max_pixels` and protected at that size (the manifest
            message says so).
        keep_metadata: the protected copy keeps the source's whole EXIF block; by default location (GPS) and
            camera/lens serial numbers are removed (the manifest's `metadata_removed` says what). An RGB source's
            colour profile is always kept.
        keep_grey: a photo without colour (greyscale, or RGB with equal channels) gets a grey perturbation and is
            written as a greyscale PNG; False: a colour perturbation in an RGB PNG, which protects more until
            someone removes its colour (a black-and-white photo desaturated looks the same) and far less after
            (README, "Native size").
        region: `frame` optimises the whole frame; `faces` (for small faces in large photos) optimises a square
            around each detected face, its box grown by `face_margin` on each side (faces whose squares would
            overlap share one), each in its own cell of the working canvas, and changes only those parts of the
            photo (an image without a detected face: the frame).
        allow_external_paths: let dataset cells name image files outside the dataset's own folder.
        output_dir: the run's output folder (linked from the top-level `--output_dir`).
    """

    def __init__(self, source: str = "", format: Literal["auto", "folder", "imagefolder", "parquet", "disk", "hub"] = "auto",
                 split: str = "train", image_column: str = "image", id_column: str | None = None, num_shards: int = 1,
                 shard_index: int = 0, resolution: int | Literal["native"] = 512, batch_size: int | Literal["auto"] = 8,
                 num_workers: int = 0, limit: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 oversize: Literal["error", "downscale"] = "error", keep_metadata: bool = False,
                 region: Literal["frame", "faces"] = "frame", face_margin: float = 0.5, keep_grey: bool = True,
                 allow_external_paths: bool = False, output_dir: str = "outputs"):
        super().__init__()
        check_options(source, format, num_shards, shard_index, resolution, batch_size, num_workers, limit, max_pixels)
        if region == "faces" and resolution == NATIVE:
            raise ValueError("data.region faces optimises a working-resolution crop: give data.resolution in pixels")
        if not 0 <= face_margin < math.inf:
            raise ValueError(f"data.face_margin is the share of the faces' box added on each side: 0 or more "
                             f"(got {face_margin})")
        self.decoding = Decoding(resolution, max_pixels, oversize, keep_metadata, region, face_margin, keep_grey)
        self.source, self.format, self.split = source, format, split
        self.image_column, self.id_column = image_column, id_column
        self.num_shards, self.shard_index = num_shards, shard_index
        self.resolution, self.batch_size, self.num_workers = resolution, batch_size, num_workers
        self.limit, self.max_pixels, self.allow_external_paths = limit, max_pixels, allow_external_paths
        self.output_dir = output_dir
        self.dataset: RankSlice | None = None
        self.feed: QueueFeed | None = None
        self.num_skipped = 0
        self.num_images = 0

    def protection_settings(self) -> dict:
        """What of the data decides the protected images, recorded in OUT/protection.json: the working resolution,
        the region optimised (its margin where the faces' region is) and whether a photo without colour keeps none."""
        region = {"region": self.decoding.region}
        if self.decoding.region == "faces":
            region["face_margin"] = self.decoding.face_margin
        return {"resolution": self.resolution, **region, "keep_grey": self.decoding.keep_grey}

    def source_record(self) -> dict:
        """Where the photos are read (a local source as an absolute path) and the options that name them: what
        OUT/source.json records for `edit`."""
        return {"source": absolute_source(self.source, self.format), "format": self.format, "split": self.split,
                "image_column": self.image_column, "id_column": self.id_column,
                "allow_external_paths": self.allow_external_paths}

    def images(self, known: dict[str, str] | None = None) -> tuple[Dataset, list[str]]:
        """All images of the source shard (up to `limit`), and their uids; `known`: relative path -> uid recorded
        for a folder source earlier."""
        exclude = [Path(self.output_dir)]
        fmt = detect_format(self.source, exclude) if self.format == "auto" else self.format
        if self.source == DEMO_SOURCE or fmt == "folder":
            entries = demo_entries() if self.source == DEMO_SOURCE else None
            images = FolderImages("/" if entries else self.source, self.decoding, entries=entries, exclude=exclude,
                                  known=known)
            keep = contiguous_shard(len(images), self.num_shards, self.shard_index)[: self.limit]
            images.entries = [images.entries[i] for i in keep]
            return images, [uid for uid, _ in images.entries]
        dataset = open_dataset(self.source, fmt, self.split, exclude)
        keep = contiguous_shard(len(dataset), self.num_shards, self.shard_index)[: self.limit]
        dataset = dataset.select(keep) if len(keep) != len(dataset) else dataset
        uids, renamed = row_uids(dataset, self.id_column, self.split, keep)
        if renamed:
            logs.warning(f"facelock_pl: {renamed} rows repeat an id of column {self.id_column!r}; renamed "
                         "deterministically with a -dup<k>-<hash> suffix")
        images = HFImages(dataset, uids, self.image_column, self.decoding, self.source, base_dir=self._dataset_folder(fmt),
                          allow_external_paths=self.allow_external_paths)
        clashes = {name: new for name, new in images.columns.items() if name != new}
        if clashes:
            logs.warning("facelock_pl: source column(s) " + ", ".join(f"{k!r} -> {v!r}" for k, v in clashes.items()) +
                         " renamed: the protected dataset writes its own 'uid' and 'image' columns")
        return images, uids

    def _dataset_folder(self, fmt: str) -> Path | None:
        """Where relative paths in a dataset's cells point: the dataset's own folder (None for hub datasets)."""
        if fmt == "hub":
            return None
        path = Path(self.source).expanduser()
        return path.parent if path.is_file() or "*" in self.source else path

    def setup(self, stage: str) -> None:
        strategy = self.trainer.strategy if self.trainer is not None else None
        state = images = None
        if strategy is None or strategy.is_global_zero:
            images, uids, state = self._resume_state()
        done, known = strategy.broadcast(state, src=0) if strategy is not None else state
        if images is None:
            images, uids = self.images(known)
        pending = [i for i, uid in enumerate(uids) if uid not in done]
        self.num_images, self.num_skipped = len(uids), len(uids) - len(pending)
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        per_rank = math.ceil(len(pending) / world)
        self.dataset = RankSlice(images, pending[rank * per_rank : (rank + 1) * per_rank])
        logs.info(f"facelock_pl: {len(uids)} images in {self.source}; skipping {self.num_skipped} already "
                  f"protected in {self.output_dir}; {len(pending)} to do on {world} process(es)")

    def _resume_state(self) -> tuple[Dataset, list[str], tuple[set[str], dict[str, str]]]:
        """Rank 0, once: repair the output folder, read its manifest, list the source, and withdraw the rows of
        protected images whose copy has gone and the copies of sources that changed since. Returns the source's
        images and uids, and what every rank needs: (the uids done, relative path -> uid of every recorded row)."""
        repair(Path(self.output_dir))
        manifest = read_manifest(Path(self.output_dir))
        known = dict(zip(manifest["source"], manifest["uid"]))
        images, uids = self.images(known)
        record_source(Path(self.output_dir), self.source_record())
        final = manifest[manifest["status"].isin(FINAL_STATUSES)]
        # Only photos still in the source: a photo removed from it with its protected copy was meant to go.
        lost = without_copies(Path(self.output_dir), final[final["uid"].isin(uids)])
        if len(lost):
            withdraw(Path(self.output_dir), lost, LOST_COPY)
            logs.warning(f"facelock_pl: {len(lost)} protected image(s) missing from {self.output_dir} "
                         f"({logs.first_few(lost['uid'])}: deleted or moved away): they are protected again")
            final = final[~final["uid"].isin(lost["uid"])]
        checked = final[final["source_sha256"].notna()]  # rows of earlier versions have no digest (NaN)
        stats = [None if pd.isna(size) else (int(size), int(mtime_ns))
                 for size, mtime_ns in zip(checked["source_size_bytes"], checked["source_mtime_ns"])]
        recorded = dict(zip(checked["uid"], zip(checked["source_sha256"], stats)))
        changed = final[final["uid"].isin(changed_sources(images, uids, recorded))]
        if len(changed):
            withdraw(Path(self.output_dir), changed, CHANGED_SOURCE)
            logs.warning(f"facelock_pl: {len(changed)} source image(s) changed since they were protected in "
                         f"{self.output_dir} ({logs.first_few(changed['uid'])}): their protected copies are removed "
                         "and they are protected again")
        return images, uids, (set(final["uid"]) - set(changed["uid"]), known)

    @property
    def num_pending(self) -> int:
        """Images this rank will protect."""
        return len(self.dataset) if self.dataset is not None else 0

    def train_dataloader(self) -> QueueFeed:
        # batch_size=None: single items, decoded and resized in the workers, prefetched ahead of the slots.
        self.feed = QueueFeed(DataLoader(self.dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                         persistent_workers=False, worker_init_fn=ignore_stop_signals))
        return self.feed

    def teardown(self, stage: str) -> None:
        if self.feed is not None:
            self.feed.close()  # the workers exit now, also when the run was stopped mid-way


LOST_COPY = ("the protected copy was missing (deleted or moved away after it was written): a rerun protects the "
             "image again")
CHANGED_SOURCE = ("the source changed after it was protected (its bytes no longer match the recorded source_sha256): "
                  "the protected copy was removed; a rerun protects the new source")


def changed_sources(images: FolderImages | HFImages, uids: list[str],
                    recorded: dict[str, tuple[str, tuple[int, int] | None]]) -> list[str]:
    """The uids of `recorded` (uid -> the SHA-256 its protected copy was made from, and the file's (size in bytes,
    modification time in ns) then, if known) whose source bytes now differ: a photo replaced under the same name, or
    another source run into the same output folder. A file whose size and time are those recorded is taken as
    unchanged without being read (as `make`, `rsync` and `git` decide: a resume of a large folder on a network file
    system does not read it all); the others are read and hashed. Sources that cannot be read now are left as they
    are."""
    changed = []
    for index, uid in enumerate(uids):
        if uid not in recorded:
            continue
        digest, stat = recorded[uid]
        if stat is not None and images.stat(index) == stat:
            continue
        try:
            if sha256(images.read(index)) != digest:
                changed.append(uid)
        except BadImageError:
            continue
    return changed


def check_options(source: str, format: str, num_shards: int, shard_index: int, resolution: int,
                  batch_size: int | str, num_workers: int, limit: int | None, max_pixels: int) -> None:
    """Refuse option values that cannot work, before anything loads (one clear message each)."""
    problems = []
    if not source:
        problems.append("data.source is empty: give a folder of images or a dataset")
    if format not in FORMATS:
        problems.append(f"data.format must be one of {', '.join(FORMATS)} (got {format!r})")
    if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
        problems.append(f"data.batch_size must be at least 1 or 'auto' (got {batch_size!r})")
    if resolution == NATIVE and batch_size != 1:
        problems.append("data.resolution native works on one image at a time: set data.batch_size 1")
    if problem := resolution_problem(resolution):
        problems.append(problem)
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        problems.append(f"data.shard_index must be in [0, data.num_shards) (got {shard_index} of {num_shards})")
    if num_workers < 0 or (limit is not None and limit < 0) or max_pixels < 1:
        problems.append(f"data.num_workers and data.limit must be >= 0, data.max_pixels >= 1 (got {num_workers}, "
                        f"{limit}, {max_pixels})")
    if problems:
        raise ValueError("; ".join(problems))
