"""A folder of portraits (recursive) as a map-style dataset of working-resolution 8-bit images."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, BadImageError, load_rgb, make_uid, square_resize
from .items import ImageItem


def list_images(root: Path) -> list[tuple[str, str]]:
    """(uid, relative path) of every image file under `root`, sorted; uids are unique."""
    relative = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    uids = [make_uid(r) for r in relative]
    counts = Counter(uids)
    # `a/b.jpg` and `a/b.png` (or `a__b.jpg`) sanitise alike: disambiguate each by its full name.
    uids = [u if counts[u] == 1 else f"{u}-{hashlib.sha1(r.encode()).hexdigest()[:8]}" for u, r in zip(uids, relative)]
    return list(zip(uids, relative))


def demo_entries() -> list[tuple[str, str]]:
    """(uid, absolute path) of public-domain portraits that installed packages carry."""
    import matplotlib
    import skimage

    return [
        ("astronaut", str(Path(skimage.__file__).parent / "data" / "astronaut.png")),
        ("grace_hopper", str(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")),
    ]


class FolderImages(Dataset):
    """`ImageItem`s of the image files under a folder, at the working resolution.

    A file that cannot be decoded yields an item with `status="error"` and a message instead of raising:
    one bad image never stops a run.
    """

    def __init__(self, root: str | Path, resolution: int = 512, max_pixels: int = DEFAULT_MAX_PIXELS,
                 entries: list[tuple[str, str]] | None = None):
        """`entries` (uid, path relative to `root` or absolute) replaces listing the folder."""
        self.root = Path(root).expanduser()
        if entries is None and not self.root.is_dir():
            raise FileNotFoundError(f"data.source {self.root} is not a folder")
        self.resolution = resolution
        self.max_pixels = max_pixels
        self.entries = list_images(self.root) if entries is None else entries

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> ImageItem:
        uid, relative = self.entries[index]
        try:
            image = load_rgb(self.root / relative, self.max_pixels)
        except BadImageError as error:
            return ImageItem.failed(uid, relative, str(error))
        return ImageItem(uid, relative, square_resize(image, self.resolution), image.width, image.height)
