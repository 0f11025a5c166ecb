"""A folder of portraits (recursive) as a map-style dataset of working-resolution 8-bit images."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from .. import logs
from ..config_files import ConfigError
from .images import (ARCHIVE_SUFFIXES, IMAGE_SUFFIXES, REFUSED_SUFFIXES, UNPACK, BadImageError, make_uid, printable_path,
                     unique_uid)
from .items import Decoding, ImageItem, file_stat


def image_files(root: Path, exclude: list[Path] = ()) -> tuple[list[str], list[str]]:
    """Relative paths of the image files under `root` (refused photo formats and links whose target is gone included:
    they become `error` rows, never a photo passed over unseen), sorted; nothing below a folder of `exclude` (the
    run's own output folder, wherever it is). Returns (files, hidden): hidden files, or files in hidden folders (a
    name starting with '.', as macOS's '._IMG_1.jpg' companions that are not images), are left out as Hugging Face
    `datasets` leaves them out of an image folder, and returned apart so that the caller can say so. Links to
    folders are not followed."""
    excluded = [Path(e).expanduser().resolve() for e in exclude]
    files, hidden = [], []
    folders = [(Path(root), ())]
    while folders:
        folder, parts = folders.pop()
        # A folder is resolved once, its files never: a listing of 30,000 photos stays a directory read.
        if any(folder.resolve().is_relative_to(e) for e in excluded):
            continue
        try:
            entries = list(os.scandir(folder))
        except OSError as error:  # refused at the start: its photos would go unprotected without a word
            raise ConfigError(f"cannot read the folder {folder} in data.source ({error.strerror}): give read access "
                              "to it, or move it out of the source") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append((Path(entry.path), (*parts, entry.name)))
            elif _is_image_entry(entry, excluded):
                relative = (*parts, entry.name)
                is_hidden = any(part.startswith(".") for part in relative)
                (hidden if is_hidden else files).append("/".join(relative))
    return sorted(files), sorted(hidden)


def _is_image_entry(entry: os.DirEntry, excluded: list[Path]) -> bool:
    """A file (or a link to one outside `excluded`, or a link whose target is gone) with an image or refused suffix."""
    suffix = os.path.splitext(entry.name)[1].lower()
    if suffix not in IMAGE_SUFFIXES and suffix not in REFUSED_SUFFIXES:
        return False
    if not entry.is_symlink():
        return entry.is_file(follow_symlinks=False)
    target = Path(entry.path).resolve()
    if not target.exists():
        return True
    return target.is_file() and not any(target.is_relative_to(e) for e in excluded)


def folder_uids(relative: list[str], known: dict[str, str] | None = None) -> list[str]:
    """A unique uid per relative path, stable when files are added.

    A path recorded earlier (`known`: relative path as the manifest's `source` writes it -> uid) keeps its uid. A new
    file gets its stem (`a/b.jpg` -> `a__b`), or its stem with the suffix (`a__b.jpg`) when another file
    shares the stem or the stem is taken; a hash is appended if even that is taken.
    """
    known = known or {}
    taken = set(known.values())
    recorded = [known.get(printable_path(r)) for r in relative]  # as the manifest's `source` writes the path
    stems = Counter(make_uid(r) for r, uid in zip(relative, recorded) if uid is None)
    uids = []
    for r, uid in zip(relative, recorded):
        if uid is not None:
            uids.append(uid)
            continue
        stem = make_uid(r)
        uid = unique_uid(make_uid(r, keep_suffix=True) if stems[stem] > 1 or stem in taken else stem, taken, r)
        taken.add(uid)
        uids.append(uid)
    return uids


def list_images(root: Path, exclude: list[Path] = (), known: dict[str, str] | None = None) -> list[tuple[str, str]]:
    """(uid, relative path) of every image file under `root`, sorted; uids are unique (see `folder_uids`)."""
    relative, hidden = image_files(root, exclude)
    if hidden:
        logs.info(f"facelock_pl: {len(hidden)} hidden file(s) in {root} left out ({logs.first_few(hidden)}): names "
                  "starting with '.' are not photos of the set (macOS '._' companions, notebook checkpoints)")
    return list(zip(folder_uids(relative, known), relative))


def demo_entries() -> list[tuple[str, str]]:
    """(uid, absolute path) of public-domain portraits that installed packages carry."""
    import matplotlib
    import skimage

    return [
        ("astronaut", str(Path(skimage.__file__).parent / "data" / "astronaut.png")),
        ("grace_hopper", str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
    ]


class FolderImages(Dataset):
    """`ImageItem`s of the image files under a folder, or of one image file (see `Decoding`).

    A file that cannot be decoded yields an item with `status="error"` and a message instead of raising:
    one bad image never stops a run.
    """

    def __init__(self, root: str | Path, decoding: Decoding = Decoding(), entries: list[tuple[str, str]] | None = None,
                 exclude: list[Path] = (), known: dict[str, str] | None = None):
        """`entries` (uid, path relative to `root` or absolute) replaces listing the folder; `exclude` and
        `known` are passed to `list_images`."""
        self.root = Path(root).expanduser()
        if entries is None and self.root.is_file() and self.root.suffix.lower() in IMAGE_SUFFIXES:
            # One photo: its folder, listing only it (sources stay relative to a folder, as for any other run).
            entries = list(zip(folder_uids([self.root.name], known), [self.root.name]))
            self.root = self.root.parent
        if entries is None and not self.root.is_dir():
            archive = f": it is an archive, unpack it {UNPACK}" if self.root.suffix.lower() in ARCHIVE_SUFFIXES else ""
            raise FileNotFoundError(f"data.source {self.root} is not a folder or an image file{archive}")
        self.decoding = decoding
        self.entries = list_images(self.root, exclude, known) if entries is None else entries

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, index: int) -> bytes:
        """The encoded bytes of image `index`; `BadImageError` if the file cannot be read."""
        path = self.root / self.entries[index][1]
        try:
            return path.read_bytes()
        except OSError as error:
            if path.is_symlink() and not path.exists():
                raise BadImageError(f"the file is a link to {printable_path(os.readlink(path))}, which is missing (a "
                                    "drive not mounted?)") from error
            raise BadImageError(f"cannot read the image file: {error.strerror or error}") from error

    def stat(self, index: int) -> tuple[int, int] | None:
        """(size in bytes, modification time in ns) of image `index`'s file (`file_stat`)."""
        return file_stat(self.root / self.entries[index][1])

    def __getitem__(self, index: int) -> ImageItem:
        uid, relative = self.entries[index]
        source = printable_path(relative)  # the path the manifest records (a name that is not UTF-8, escaped)
        refused = REFUSED_SUFFIXES.get(Path(relative).suffix.lower())
        if refused:
            return ImageItem.failed(uid, source, refused)
        stat = self.stat(index)  # before the read: a file replaced in between is read again by the next rerun
        try:
            data = self.read(index)
        except BadImageError as error:
            return ImageItem.failed(uid, source, str(error))
        return self.decoding.item(uid, source, data, stat=stat)
