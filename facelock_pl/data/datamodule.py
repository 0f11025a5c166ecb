"""`FaceDataModule`: which images to protect, loaded and resized in worker processes.

Each loaded batch is yielded `iterations` times in a row (`RepeatedBatches`): one Lightning training
step is one PGD iteration, and decoding happens once per batch, not once per iteration. Images that
already have an `ok` row in the output manifest are left out, so reruns resume.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader, Dataset, Subset

from ..outputs.manifest import finished_uids
from .folder import FolderImages, demo_entries

DEMO_SOURCE = "demo"  # the portraits that scikit-image and matplotlib ship
from .images import DEFAULT_MAX_PIXELS


class RepeatedBatches:
    """Yield each batch of `loader` `repeats` times in a row (the same object each time)."""

    def __init__(self, loader: Iterable, repeats: int):
        self.loader = loader
        self.repeats = repeats

    def __len__(self) -> int:
        return len(self.loader) * self.repeats

    def __iter__(self) -> Iterator:
        for batch in self.loader:
            for _ in range(self.repeats):
                yield batch


class FaceDataModule(L.LightningDataModule):
    """Portraits to protect.

    Args:
        source: a folder of images (searched recursively for jpg/png/webp/bmp/tiff), or `demo` for the
            public-domain portraits that scikit-image and matplotlib ship.
        resolution: working resolution in pixels (centre square crop, antialiased resize).
        batch_size: images optimised together in one PGD step.
        num_workers: loader worker processes (decoding and resizing happen there).
        limit: protect at most this many images (after skipping finished ones); None for all.
        max_pixels: inputs with more pixels are rejected before decoding (decompression-bomb guard).
        output_dir: the run's output folder (linked from the top-level `--output_dir`).
        iterations: PGD iterations per image (linked from `--model.iterations`).
    """

    def __init__(self, source: str = "", resolution: int = 512, batch_size: int = 8, num_workers: int = 0,
                 limit: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, output_dir: str = "outputs",
                 iterations: int = 100):
        super().__init__()
        self.source = source
        self.resolution = resolution
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit = limit
        self.max_pixels = max_pixels
        self.output_dir = output_dir
        self.iterations = iterations
        self.dataset: Dataset | None = None
        self.num_skipped = 0

    def setup(self, stage: str) -> None:
        if not self.source:
            raise ValueError("data.source is empty: give a folder of images with --data.source PATH")
        if self.source == DEMO_SOURCE:
            dataset = FolderImages("/", self.resolution, self.max_pixels, entries=demo_entries())
        else:
            dataset = FolderImages(self.source, self.resolution, self.max_pixels)
        done = finished_uids(Path(self.output_dir))
        pending = [i for i, (uid, _) in enumerate(dataset.entries) if uid not in done]
        self.num_skipped = len(dataset) - len(pending)
        rank_zero_info(f"facelock_pl: {len(dataset)} images in {self.source}; skipping {self.num_skipped} already "
                       f"protected in {self.output_dir}; {len(pending)} to do")
        if self.limit is not None:
            pending = pending[: self.limit]
        self.dataset = Subset(dataset, pending)

    @property
    def num_pending(self) -> int:
        return len(self.dataset) if self.dataset is not None else 0

    def train_dataloader(self) -> RepeatedBatches:
        loader = DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                            persistent_workers=False, pin_memory=False)
        return RepeatedBatches(loader, self.iterations)
