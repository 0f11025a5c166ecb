"""Hugging Face `datasets` as a source: hub ids, local parquet files, `save_to_disk` folders, imagefolders.

Images are read as raw bytes (`Image(decode=False)`) and decoded per item by `load_rgb`, so a corrupt
row, a null image or a decompression bomb becomes an `error` item instead of an exception. Every other
column of the row travels with it (`extra`) to the outputs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
import numpy as np
from torch.utils.data import Dataset

from ..models.weights import hub_offline
from .images import DEFAULT_MAX_PIXELS, BadImageError, load_rgb, make_uid, square_resize
from .items import ImageItem


def detect_format(source: str) -> str:
    """`folder`, `parquet`, `disk` or `hub` for a source string (`auto`)."""
    path = Path(source).expanduser()
    if path.is_file():
        return "parquet" if path.suffix == ".parquet" else "folder"
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "disk"
        if any(path.rglob("*.parquet")):
            return "parquet"
        return "folder"
    if "*" in source and source.endswith(".parquet"):
        return "parquet"
    return "hub"


def open_dataset(source: str, fmt: str, split: str):
    """The `datasets.Dataset` for one split of a non-folder source."""
    import datasets

    path = Path(source).expanduser()
    if fmt == "parquet":
        files = [str(p) for p in sorted(path.rglob("*.parquet"))] if path.is_dir() else source
        loaded = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    elif fmt == "imagefolder":
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    elif fmt == "disk":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} not in {source} (has {sorted(loaded)})")
            loaded = loaded[split]
    elif fmt == "hub":
        try:
            loaded = datasets.load_dataset(source, split=split)
        except Exception as error:
            raise FileNotFoundError(
                f"cannot load the dataset {source!r} (split {split!r}) from the Hugging Face hub "
                f"(offline={hub_offline()}; {type(error).__name__}: {error}). Give a local folder, parquet file(s) "
                "or save_to_disk folder with --data.source."
            ) from error
    else:
        raise ValueError(f"unknown data.format {fmt!r}")
    return loaded


def row_uids(dataset, id_column: str | None, split: str, row_offset: list[int]) -> tuple[list[str], int]:
    """Uids per row: the sanitised `id_column`, else `<split>-<row index in the full split>`.

    Duplicate ids get a deterministic suffix (`-dup<k>` for the k-th repeat in row order, plus a hash);
    returns the uids and the number of rows that were renamed.
    """
    if id_column is None:
        return [f"{split}-{i:06d}" for i in row_offset], 0
    if id_column not in dataset.column_names:
        raise ValueError(f"id_column {id_column!r} is not a column ({dataset.column_names})")
    raw = [str(v) for v in dataset[id_column]]
    uids = [make_uid(v) for v in raw]
    seen: Counter = Counter()
    renamed = 0
    for i, uid in enumerate(uids):
        seen[uid] += 1
        if seen[uid] > 1:
            digest = hashlib.sha1(f"{raw[i]}#{seen[uid]}".encode()).hexdigest()[:6]
            uids[i] = f"{uid}-dup{seen[uid] - 1}-{digest}"
            renamed += 1
    return uids, renamed


def contiguous_shard(n: int, num_shards: int, shard_index: int) -> list[int]:
    """Row indices of shard `shard_index` of `num_shards` contiguous, near-equal shards."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return [int(i) for i in np.array_split(np.arange(n), num_shards)[shard_index]]


class HFImages(Dataset):
    """`ImageItem`s of a dataset's image column; `extra` holds the row's other columns."""

    def __init__(self, dataset, uids: list[str], image_column: str = "image", resolution: int = 512,
                 max_pixels: int = DEFAULT_MAX_PIXELS, source: str = ""):
        import datasets

        if image_column not in dataset.column_names:
            raise ValueError(f"image_column {image_column!r} is not a column ({dataset.column_names})")
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset
        self.uids = uids
        self.image_column = image_column
        self.resolution = resolution
        self.max_pixels = max_pixels
        self.source = source

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> ImageItem:
        row = self.dataset[index]
        uid = self.uids[index]
        extra = {k: v for k, v in row.items() if k != self.image_column}
        value = row[self.image_column]
        source = f"{self.source}#{uid}"
        if isinstance(value, dict):
            data = value.get("bytes") or (Path(value["path"]).read_bytes() if value.get("path") else None)
        else:
            data = value
        if data is None:
            return ImageItem.failed(uid, source, "image is null", extra=extra)
        try:
            image = load_rgb(bytes(data), self.max_pixels)
        except BadImageError as error:
            return ImageItem.failed(uid, source, str(error), extra=extra)
        return ImageItem(uid, source, square_resize(image, self.resolution), image.width, image.height, extra=extra)
