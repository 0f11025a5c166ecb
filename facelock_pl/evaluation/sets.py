"""The image sets an evaluation compares: the clean sources and each protected set, optionally purified.

`clean` is the 8-bit source at its native size; a protected set is a `fit` output folder (its
`images/<uid>.png`, or its protected dataset where it wrote no PNG) or a plain folder of `<uid>.png`; a purified
set `<name>+<purification>` is that set after e.g. a JPEG re-save (applied to the image as posted, at its native
size). Every image reaches the editor as the
editor would take it: resized to the working resolution, aspect kept (`facelock_pl.pixels.editor_input`).
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from ..config_files import ConfigError
from ..data import FaceDataModule
from ..data.datamodule import absolute_source, is_local
from ..outputs.manifest import dataset_parts
from ..outputs.settings import SOURCE_NAME, read_settings
from ..pixels import editor_input, read_levels, resolution_problem, same_shapes
from . import purify

CLEAN = "clean"
log = logging.getLogger("facelock_pl")


@dataclass
class DataSpec:
    """The clean portraits, read as `fit` read them (the same `data.*` options give each photo the uid `fit` gave it).

    Args:
        source: the `data.source` that `fit` protected: a folder of images, parquet file(s), a `save_to_disk` folder,
            an imagefolder or a Hugging Face hub id; `edit` records a local one as an absolute path. Left empty,
            `edit` reads the one the protected sets recorded (`OUT/source.json`, with its `data.*` options).
        resolution: the editor's working resolution (longest side; `native`: none), as `fit`'s `data.resolution`.
        limit: evaluate at most this many of the photos the protected sets hold (in the source's order).
        format: how `source` is read (`auto`: decided from what it is), as `fit`'s `data.format`.
        split: the dataset's split, as `fit`'s `data.split`.
        image_column: the dataset's column of images, as `fit`'s `data.image_column`.
        id_column: the dataset's column `fit` named the photos by (`data.id_column`); None: `<split>-<row index>`.
        allow_external_paths: let dataset cells name image files outside the dataset's folder, as in `fit`.
    """

    source: str = ""
    resolution: int | str = 512
    limit: int | None = None
    format: Literal["auto", "folder", "imagefolder", "parquet", "disk", "hub"] = "auto"
    split: str = "train"
    image_column: str = "image"
    id_column: str | None = None
    allow_external_paths: bool = False

    def __post_init__(self):
        if problem := resolution_problem(self.resolution):
            raise ConfigError(problem)
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"data.limit must be at least 1, or null for every photo (got {self.limit})")

    @property
    def local(self) -> bool:
        """Whether `source` names local files (not a hub dataset nor `demo`)."""
        return is_local(self.source, self.format)

    def absolute(self) -> "DataSpec":
        """This spec with a local `source` as an absolute path (so a record of it holds wherever it is read)."""
        return dataclasses.replace(self, source=absolute_source(self.source, self.format))

    @property
    def missing(self) -> bool:
        """Whether a local `source` is not there (moved, or the edits copied to another machine)."""
        return self.local and not (Path(self.source).exists() or glob.glob(self.source))

    def reading(self) -> dict:
        """The options that decide which photos `source` holds and their uids (resolution aside)."""
        return {name: getattr(self, name) for name in ("format", "split", "image_column", "id_column")}

    def read_alike(self, other: "DataSpec") -> bool:
        """Whether `other` reads its source's photos as this one does: the same uids at the same working size."""
        return self.reading() == other.reading() and self.resolution == other.resolution


@dataclass
class ImageSet:
    name: str
    folder: Path | None  # None for the clean set
    purification: str | None = None
    dataset: dict[str, Path] = field(default_factory=dict)  # uid -> part, where `fit` wrote no PNG (output_format parquet)

    def holds(self, uid: str) -> bool:
        """Whether the set has an image of `uid`: a protected set has none of a photo it failed to protect (or whose
        protected image was deleted); the clean set has every photo."""
        return self.folder is None or (self.folder / f"{uid}.png").exists() or uid in self.dataset

    def _protected(self, uid: str) -> torch.Tensor:
        png = self.folder / f"{uid}.png"
        if png.exists():
            return read_levels(png)
        [image] = pq.read_table(self.dataset[uid], columns=["image"], filters=[("uid", "==", uid)])["image"].to_pylist()
        return read_levels(io.BytesIO(image["bytes"]))

    def load(self, uid: str, clean: torch.Tensor, resolution: int | str) -> torch.Tensor | None:
        """The editor's input (uint8 [3, h, w]) of this set's image of `uid` (`clean`: the native source), or None
        when the set has none (e.g. it failed to protect)."""
        if not self.holds(uid):
            return None
        levels = clean if self.folder is None else self._protected(uid)
        return editor_input(purify.apply(self.purification, levels, uid) if self.purification else levels, resolution)


def expand_sweeps(sets: dict[str, str]) -> dict[str, str]:
    """A budget sweep's folder (`fit --sweep_eps`: `eps-<ε>/` inside) becomes one set per budget, `<name>@eps<ε>`,
    in increasing ε."""
    expanded = {}
    for name, location in sets.items():
        folder = Path(location).expanduser()
        budgets = sorted(folder.glob("eps-*"), key=lambda path: float(path.name[4:])) if not (folder / "images").is_dir() else []
        expanded.update({f"{name}@eps{b.name[4:]}": str(b) for b in budgets} if budgets else {name: location})
    return expanded


def image_sets(sets: dict[str, str], purifications: list[str]) -> list[ImageSet]:
    """clean, then each protected set, then each protected set under each purification."""
    out = [ImageSet(CLEAN, None)]
    for name, location in sets.items():
        if name == CLEAN or "+" in name:
            raise ConfigError(f"set name {name!r} is reserved or contains '+'")
        folder = Path(location).expanduser()
        dataset = dataset_parts(folder) if not (folder / "images").is_dir() else {}  # a run that wrote no PNG
        folder = folder / "images" if (folder / "images").is_dir() else folder
        if not folder.is_dir():
            raise ConfigError(f"protected set {name!r}: {location} is not a folder of <uid>.png images (give `fit`'s "
                              "--output_dir, or its images/ folder)")
        out.append(ImageSet(name, folder, dataset=dataset))
        out += [ImageSet(f"{name}+{purify.label(p)}", folder, p, dataset) for p in purifications]
    return out


def recorded_sources(sets: dict[str, str]) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """What the protected sets' own manifests recorded: source path -> uid (`fit` keeps a file's uid when others
    are added, so the clean set must name each file as the protected sets do), and uid -> {set name: SHA-256 of
    the source its protected image was made from}."""
    from ..outputs import read_manifest
    from ..outputs.manifest import FINAL_STATUSES

    known: dict[str, str] = {}
    digests: dict[str, dict[str, str]] = {}
    for name, location in sets.items():
        manifest = read_manifest(Path(location).expanduser())
        for source, uid in zip(manifest["source"], manifest["uid"]):
            known.setdefault(source, uid)
        protected = manifest[manifest["status"].isin(FINAL_STATUSES) & manifest["source_sha256"].notna()]
        for uid, digest in zip(protected["uid"], protected["source_sha256"]):
            digests.setdefault(uid, {})[name] = digest
    return known, digests


def recorded_data(data: DataSpec, sets: dict[str, str]) -> DataSpec:
    """`data` reading the clean photos the protected `sets` were made from, where and as `fit` recorded it
    (OUT/source.json): for `edit` without a `data.source`."""
    records = {}
    for name, location in sets.items():
        folder = Path(location).expanduser()
        record = read_settings(folder, SOURCE_NAME) or (read_settings(folder.parent, SOURCE_NAME)
                                                         if folder.name == "images" else None)
        if record is not None:
            records[name] = record
    if not records:
        raise ConfigError("data.source is empty: give the clean photos that `fit` protected (--data.source FOLDER, or "
                          "the dataset with the data.* options `fit` had)" +
                          (f"; the protected sets record none (no {SOURCE_NAME})" if sets else ""))
    if len({json.dumps(record, sort_keys=True) for record in records.values()}) > 1:
        made_from = "; ".join(f"{name}: {record['source']}" for name, record in records.items())
        raise ConfigError(f"data.source is empty, and the protected sets were made from different sources or read them "
                          f"otherwise ({made_from}; see their {SOURCE_NAME}): give the clean photos with --data.source")
    name, record = next(iter(records.items()))
    log.info("facelock_pl: the clean photos: %s, as set %r recorded (%s)", record["source"], name, SOURCE_NAME)
    return dataclasses.replace(data, **record)


def held_uids(sets: dict[str, str], recorded: set[str]) -> set[str]:
    """The photos the protected `sets` were made from: the uids their manifests `recorded` (protected or not) and
    those of every image they hold."""
    held = set(recorded)
    for image_set in image_sets(sets, []):
        if image_set.folder is not None:
            held |= {path.stem for path in image_set.folder.glob("*.png")} | set(image_set.dataset)
    return held


def clean_images(data: DataSpec, known: dict[str, str], output_dir: Path) -> tuple[Dataset, list[str]]:
    """The clean sources and their uids, as `fit` lists them with the same options (`known`: source path -> uid that
    the protected sets recorded); `output_dir` (the edits) is never part of the source."""
    module = FaceDataModule(data.source, data.format, data.split, data.image_column, data.id_column,
                            resolution=data.resolution, batch_size=1, allow_external_paths=data.allow_external_paths,
                            output_dir=str(output_dir))
    try:
        return module.images(known)
    except FileNotFoundError as error:  # an archive, a file of another kind, a path that does not exist
        raise ConfigError(str(error)) from None


def shape_chunks(uids: list[str], shapes: dict[str, tuple], size: int) -> list[list[str]]:
    """`uids` in chunks of at most `size` whose images share a shape (so they stack into one batch)."""
    groups = [[uids[i] for i in group] for group in same_shapes([shapes[uid] for uid in uids])]
    return [group[i : i + size] for group in groups for i in range(0, len(group), size)]
