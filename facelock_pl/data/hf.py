"""Hugging Face `datasets` as a source: hub ids, local parquet files, `save_to_disk` folders, imagefolders.

Images are read as raw bytes (`Image(decode=False)`) and decoded per item by `load_rgb`, so a corrupt
row, a null image, a missing file or a decompression bomb becomes an `error` item instead of an exception.
Every other column of the row travels with it (`extra`) to the outputs; a column named like one the
protected dataset writes itself (`uid`, `image`) travels as `source_<name>`.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from ..config_files import ConfigError
from ..models.weights import hub_offline
from .images import IMAGE_SUFFIXES, BadImageError, make_uid, unique_uid
from .items import Decoding, ImageItem, file_stat

RESERVED_COLUMNS = ("uid", "image")  # the protected dataset's own columns
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # namespace/name, as on the Hugging Face hub


def renamed_column(name: str, columns: list[str]) -> str:
    """The name a source column travels under: `source_<name>` for a reserved name (made unique)."""
    if name not in RESERVED_COLUMNS:
        return name
    renamed = f"source_{name}"
    while renamed in columns:
        renamed = f"source_{renamed}"
    return renamed


def parquet_files(folder: Path, exclude: list[Path] = ()) -> list[Path]:
    """The parquet files of a dataset folder: at its top level, or in `data/` (the hub's layout)."""
    excluded = [Path(e).expanduser().resolve() for e in exclude]
    files = [*folder.glob("*.parquet"), *folder.glob("data/**/*.parquet")]
    return sorted(f for f in files if not any(f.resolve().is_relative_to(e) for e in excluded))


def detect_format(source: str, exclude: list[Path] = ()) -> str:
    """`folder`, `parquet`, `disk` or `hub`, from what the user passed (`data.format: auto`).

    A `.parquet` file, or a folder with parquet files at its top level or in `data/` and no image files at
    its top level, is a parquet dataset; a `save_to_disk` folder is `disk`; any other folder is a folder of
    images (parquet files deeper down are ignored); anything else is a hub id.
    """
    path = Path(source).expanduser()
    if path.is_file():
        return "parquet" if path.suffix == ".parquet" else "folder"
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            return "disk"
        images_on_top = any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
        return "parquet" if parquet_files(path, exclude) and not images_on_top else "folder"
    if "*" in source and source.endswith(".parquet"):
        return "parquet"
    return "hub"


def open_dataset(source: str, fmt: str, split: str, exclude: list[Path] = ()):
    """The `datasets.Dataset` for one split of a non-folder source."""
    import datasets

    path = Path(source).expanduser()
    if fmt == "parquet":
        files = [str(p) for p in parquet_files(path, exclude)] if path.is_dir() else source
        if not files:
            raise ConfigError(f"no parquet files in {path} (looked at its top level and in data/)")
        loaded = datasets.load_dataset("parquet", data_files={split: files}, split=split)
    elif fmt == "imagefolder":
        loaded = datasets.load_dataset("imagefolder", data_dir=str(path), split=split)
    elif fmt == "disk":
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ConfigError(f"split {split!r} not in {source} (has {sorted(loaded)})")
            loaded = loaded[split]
    elif fmt == "hub":
        try:
            loaded = datasets.load_dataset(source, split=split)
        except Exception as error:
            raise ConfigError(
                f"cannot load the dataset {source!r} (split {split!r}) from the Hugging Face hub "
                f"(offline={hub_offline()}; {type(error).__name__}: {error}). Give a local folder, parquet file(s) "
                "or save_to_disk folder with --data.source."
            ) from error
    else:
        raise ValueError(f"unknown data.format {fmt!r}")
    return loaded


def row_uids(dataset, id_column: str | None, split: str, row_offset: list[int]) -> tuple[list[str], int]:
    """Uids per row: the sanitised `id_column`, else `<split>-<row index in the full split>`.

    A repeated id gets a deterministic suffix (`-dup<k>-<hash>` for the k-th repeat in row order), made
    longer where it would equal another row's id; returns the uids and the number of rows renamed.
    """
    if id_column is None:
        return [f"{split}-{i:06d}" for i in row_offset], 0
    if id_column not in dataset.column_names:
        raise ConfigError(f"id_column {id_column!r} is not a column ({dataset.column_names})")
    raw = [str(v) for v in dataset[id_column]]
    uids = [make_uid(v) for v in raw]
    taken, seen = set(uids), {}
    renamed = 0
    for i, uid in enumerate(uids):
        seen[uid] = seen.get(uid, 0) + 1
        if seen[uid] > 1:
            digest = hashlib.sha1(f"{raw[i]}#{seen[uid]}".encode()).hexdigest()[:6]
            uids[i] = unique_uid(f"{uid}-dup{seen[uid] - 1}-{digest}", taken, f"{raw[i]}#{i}")
            taken.add(uids[i])
            renamed += 1
    return uids, renamed


def contiguous_shard(n: int, num_shards: int, shard_index: int) -> list[int]:
    """Row indices of shard `shard_index` of `num_shards` contiguous, near-equal shards."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return [int(i) for i in np.array_split(np.arange(n), num_shards)[shard_index]]


class HFImages(Dataset):
    """`ImageItem`s of a dataset's image column; `extra` holds the row's other columns.

    A cell may hold encoded bytes, `{"bytes", "path"}` (a `datasets.Image` column) or a path string. Paths are
    read relative to `base_dir` (the dataset's own folder) and only below it, unless `allow_external_paths`:
    a dataset must not make the tool read any file it names.
    """

    def __init__(self, dataset, uids: list[str], image_column: str = "image", decoding: Decoding = Decoding(),
                 source: str = "", base_dir: Path | None = None, allow_external_paths: bool = False):
        import datasets

        if image_column not in dataset.column_names:
            raise ConfigError(f"image_column {image_column!r} is not a column ({dataset.column_names})")
        if isinstance(dataset.features[image_column], datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset
        self.uids = uids
        self.image_column = image_column
        self.decoding = decoding
        self.source = source
        self.base_dir = Path(base_dir).resolve() if base_dir is not None else None
        self.allow_external_paths = allow_external_paths
        self.columns = {name: renamed_column(name, dataset.column_names) for name in dataset.column_names if name != image_column}

    def __len__(self) -> int:
        return len(self.dataset)

    def _path(self, value) -> tuple[str, Path] | None:
        """(the name as the cell gives it, the file) for a cell that names a file — read relative to the dataset's
        folder and only below it, unless `allow_external_paths` (`BadImageError`); None for a cell with its bytes."""
        if isinstance(value, dict) and not value.get("bytes"):
            value = value.get("path")
        if not isinstance(value, str) or not value:
            return None
        path = Path(value).expanduser()
        if not path.is_absolute() and self.base_dir is not None:
            path = self.base_dir / path
        inside = self.base_dir is not None and path.resolve().is_relative_to(self.base_dir)
        if not inside and not self.allow_external_paths:
            raise BadImageError(f"the image cell names a file outside the dataset's folder ({value}); pass "
                                "--data.allow_external_paths true to read it")
        return value, path

    def _encoded(self, value) -> bytes:
        if named := self._path(value):
            name, path = named
            try:
                return path.read_bytes()
            except OSError as error:
                raise BadImageError(f"cannot read the image file {name}: {error.strerror or error}") from error
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
        elif isinstance(value, (bytes, bytearray, memoryview)):
            return bytes(value)
        elif value is not None:
            raise BadImageError(f"the image cell holds a {type(value).__name__}, not an image")
        raise BadImageError("image is null")

    def _stat(self, value) -> tuple[int, int] | None:
        try:
            named = self._path(value)
        except BadImageError:
            return None
        return file_stat(named[1]) if named else None

    def read(self, index: int) -> bytes:
        """The encoded bytes of row `index`'s image; `BadImageError` if there are none to read."""
        return self._encoded(self.dataset[index][self.image_column])

    def stat(self, index: int) -> tuple[int, int] | None:
        """(size in bytes, modification time in ns) of the file row `index`'s cell names (an `imagefolder`'s rows);
        None for a cell that holds its bytes: those are always read to see whether they changed."""
        return self._stat(self.dataset[index][self.image_column])

    def __getitem__(self, index: int) -> ImageItem:
        row = self.dataset[index]
        uid = self.uids[index]
        extra = {self.columns[k]: v for k, v in row.items() if k != self.image_column}
        source = f"{self.source}#{uid}"
        stat = self._stat(row[self.image_column])  # before the read, as for a folder's files
        try:
            data = self._encoded(row[self.image_column])
        except BadImageError as error:
            return ImageItem.failed(uid, source, str(error), extra=extra)
        return self.decoding.item(uid, source, data, extra, stat)
