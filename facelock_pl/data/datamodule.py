"""`FaceDataModule`: which images to protect, on which rank, loaded and resized in worker processes.

- Sources: a folder of images, `demo`, or a Hugging Face dataset (hub id, parquet, `save_to_disk`,
  `imagefolder`); `num_shards`/`shard_index` select one contiguous shard of it, `limit` caps the count.
- Resume: images with an `ok` row in the output manifest are skipped. Rank 0 reads the manifest once and
  broadcasts the finished set, so all ranks shard the same pending list.
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
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset

from ..outputs import finished_uids, remove_orphan_parts
from .feeder import QueueFeed
from .folder import FolderImages, demo_entries
from .hf import HFImages, contiguous_shard, detect_format, open_dataset, row_uids
from .images import DEFAULT_MAX_PIXELS
from .items import ImageItem

DEMO_SOURCE = "demo"  # the portraits that scikit-image and matplotlib ship


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
        source: a folder of images (recursive; jpg/png/webp/bmp/tiff), `demo`, parquet file(s) or a folder
            of them, a `save_to_disk` folder, an imagefolder, or a Hugging Face hub id (e.g.
            `mattymchen/celeba-hq`).
        format: `auto` (detect), `folder`, `imagefolder`, `parquet`, `disk` or `hub`.
        split: dataset split (datasets sources).
        image_column: column holding the images (datasets sources).
        id_column: column giving each row's uid; None: `<split>-<row index>`.
        num_shards, shard_index: protect only this contiguous shard of the source.
        resolution: working resolution in pixels (centre square crop, antialiased resize).
        batch_size: slots, i.e. images optimised together in one PGD step; `auto` lets the module find the
            largest that fits in GPU memory (4 on CPU).
        num_workers: loader worker processes (decoding and resizing happen there).
        limit: protect at most this many pending images (after skipping finished ones); None for all.
        max_pixels: inputs with more pixels are rejected before decoding (decompression-bomb guard).
        output_dir: the run's output folder (linked from the top-level `--output_dir`).
    """

    def __init__(self, source: str = "", format: str = "auto", split: str = "train", image_column: str = "image",
                 id_column: str | None = None, num_shards: int = 1, shard_index: int = 0, resolution: int = 512,
                 batch_size: int | Literal["auto"] = 8, num_workers: int = 0, limit: int | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, output_dir: str = "outputs"):
        super().__init__()
        self.source, self.format, self.split = source, format, split
        self.image_column, self.id_column = image_column, id_column
        self.num_shards, self.shard_index = num_shards, shard_index
        self.resolution, self.batch_size, self.num_workers = resolution, batch_size, num_workers
        self.limit, self.max_pixels = limit, max_pixels
        self.output_dir = output_dir
        self.dataset: RankSlice | None = None
        self.num_skipped = 0

    def images(self) -> tuple[Dataset, list[str]]:
        """All images of the source shard, and their uids."""
        if not self.source:
            raise ValueError("data.source is empty: give a folder or dataset with --data.source")
        fmt = detect_format(self.source) if self.format == "auto" else self.format
        if self.source == DEMO_SOURCE or fmt == "folder":
            entries = demo_entries() if self.source == DEMO_SOURCE else None
            images = FolderImages("/" if entries else self.source, self.resolution, self.max_pixels, entries=entries)
            keep = contiguous_shard(len(images), self.num_shards, self.shard_index)
            images.entries = [images.entries[i] for i in keep]
            return images, [uid for uid, _ in images.entries]
        dataset = open_dataset(self.source, fmt, self.split)
        keep = contiguous_shard(len(dataset), self.num_shards, self.shard_index)
        dataset = dataset.select(keep) if len(keep) != len(dataset) else dataset
        uids, renamed = row_uids(dataset, self.id_column, self.split, keep)
        if renamed:
            rank_zero_warn(f"facelock_pl: {renamed} rows repeat an id of column {self.id_column!r}; "
                           "renamed deterministically with a -dup<k>-<hash> suffix")
        return HFImages(dataset, uids, self.image_column, self.resolution, self.max_pixels, self.source), uids

    def _agreed_finished(self) -> set[str]:
        """The finished uids, read once on rank 0 and broadcast to every rank."""
        strategy = self.trainer.strategy if self.trainer is not None else None
        done: set[str] | None = None
        if strategy is None or strategy.is_global_zero:
            remove_orphan_parts(Path(self.output_dir))
            done = finished_uids(Path(self.output_dir))
        return strategy.broadcast(done, src=0) if strategy is not None else done

    def setup(self, stage: str) -> None:
        images, uids = self.images()
        done = self._agreed_finished()
        pending = [i for i, uid in enumerate(uids) if uid not in done]
        self.num_skipped = len(uids) - len(pending)
        if self.limit is not None:
            pending = pending[: self.limit]
        world = self.trainer.world_size if self.trainer is not None else 1
        rank = self.trainer.global_rank if self.trainer is not None else 0
        per_rank = math.ceil(len(pending) / world)
        self.dataset = RankSlice(images, pending[rank * per_rank : (rank + 1) * per_rank])
        rank_zero_info(f"facelock_pl: {len(uids)} images in {self.source}; skipping {self.num_skipped} already "
                       f"protected in {self.output_dir}; {len(pending)} to do on {world} process(es)")

    @property
    def num_pending(self) -> int:
        """Images this rank will protect."""
        return len(self.dataset) if self.dataset is not None else 0

    def train_dataloader(self) -> QueueFeed:
        # batch_size=None: single items, decoded and resized in the workers, prefetched ahead of the slots.
        return QueueFeed(DataLoader(self.dataset, batch_size=None, shuffle=False, num_workers=self.num_workers,
                                    persistent_workers=False))
