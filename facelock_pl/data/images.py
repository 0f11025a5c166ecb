"""Decoding, normalising and naming input images.

Whatever the file (grayscale, RGBA, CMYK, palette, 16-bit, EXIF-rotated), `load_photo` gives the upright 8-bit
RGB image at its native size, with the metadata the protected copy may carry, or raises `BadImageError` with a
reason a person can act on.

A photo without colour (a greyscale file, or an RGB one whose channels are equal) is marked `grey` when
`keep_grey` asks: its perturbation is grey too (a colour one would protect more, until someone removes the colour,
which leaves a black-and-white photo as it looks; README, "Native size").

Privacy by default: the protected copy keeps the colour profile of an RGB source (so colours do not shift) and
its EXIF block without the location (GPS) and the serial numbers of camera and lens (and the maker note, which
can hold them); `keep_metadata` keeps all of it. The orientation tag is reset, since the pixels are upright.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pillow_heif
from PIL import Image, ImageChops, ImageOps, UnidentifiedImageError

from ..pixels import flatten_onto_white, may_be_transparent

pillow_heif.register_heif_opener()  # HEIC/HEIF, what phones save; AVIF is Pillow's own

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".avif")
SUFFIX_NAMES = ", ".join(suffix[1:] for suffix in IMAGE_SUFFIXES)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".gz", ".bz2", ".xz", ".7z", ".rar")  # how photo sets are downloaded
UNPACK = "(`unzip FILE -d FOLDER` or `tar -xf FILE -C FOLDER`) and give that folder"
# Photo files that are listed, so that none is passed over unseen, but refused with an `error` row saying what to do.
_RAW = ("a camera RAW file is not protected (Pillow would read its embedded preview, not the photo): export the photo "
        "as JPEG, PNG or HEIC and protect that")
REFUSED_SUFFIXES = {**dict.fromkeys((".dng", ".cr2", ".cr3", ".nef", ".arw", ".raf", ".orf", ".rw2"), _RAW),
                    ".jxl": "JPEG XL is not read: convert the photo to PNG or JPEG and protect that"}
DEFAULT_MAX_PIXELS = 100_000_000  # decompression-bomb guard: ~10k x 10k
_UID_MAX_LEN = 120
_EXIF_IFD, _GPS_IFD, _ORIENTATION = 0x8769, 0x8825, 0x0112
# EXIF tags that identify the camera or its owner: body, lens and camera serial numbers, the maker note.
_PRIVATE_TAGS = {0xA431: "serial", 0xA435: "serial", 0xC62F: "serial", 0x927C: "maker note"}


@dataclass
class Photo:
    """An upright 8-bit RGB image at its native size, and the metadata its protected copy carries.

    Attributes:
        image: the pixels (PIL, RGB).
        icc_profile: the colour profile to write with the protected copy (None: sRGB).
        exif: the EXIF block to write (None: none).
        removed: what was left out, for the manifest (e.g. `gps, serial`).
        downscaled_from: the original (width, height) when the image was larger than allowed and shrunk.
        cutout: the upright source as RGBA, its colours as stored (not flattened), where some pixel is not opaque
            (the size of `image`): the protected copy is these colours plus the perturbation, with this alpha; None:
            opaque. `image` is the photo flattened onto white, as viewers show it, and what is protected.
        grey: the photo has no colour (the three channels of `image`, and of `cutout`, are equal everywhere) and is
            to keep none: its perturbation is grey too, its protected copy a greyscale PNG (`keep_grey`).
    """

    image: Image.Image
    icc_profile: bytes | None = None
    exif: bytes | None = None
    removed: str = ""
    downscaled_from: tuple[int, int] | None = None
    cutout: Image.Image | None = None
    grey: bool = False


class BadImageError(ValueError):
    """An input that cannot become a protected image; the message says why, `size` is (width, height) when the
    header could be read."""

    def __init__(self, message: str, size: tuple[int, int] = (0, 0)):
        super().__init__(message)
        self.size = size


def load_rgb(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 32) -> Image.Image:
    """Decode a path or encoded bytes to an upright 8-bit RGB image (see `load_photo`)."""
    return load_photo(source, max_pixels, min_side).image


def load_photo(source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = 32,
               keep_metadata: bool = False, oversize: str = "error", keep_grey: bool = False) -> Photo:
    """Decode a path or encoded bytes. Animated images (GIF, WebP, APNG with several frames) are refused:
    protecting one frame would silently drop the others. An image over `max_pixels` is refused
    (`oversize="error"`) or shrunk to fit (`"downscale"`; PIL's own decompression-bomb limit still holds).
    `keep_grey`: a photo without colour is marked `grey` (see `Photo`)."""
    if source == b"":
        raise BadImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except UnidentifiedImageError as error:
        raise BadImageError("not a decodable image (no image format recognises its bytes)") from error
    except Image.DecompressionBombError as error:  # PIL's own guard, at twice its MAX_IMAGE_PIXELS
        raise BadImageError(f"image too large to decode safely: {error} (decompression-bomb guard)") from error
    except OSError as error:
        raise BadImageError(f"corrupt or unreadable image data ({error})") from error
    size = width, height = image.size
    # Checked before decoding the pixels, so a decompression bomb never allocates.
    if width * height > max_pixels and oversize != "downscale":
        raise BadImageError(f"image of {width}x{height} pixels exceeds max_pixels={max_pixels} (decompression-bomb "
                            "guard; --data.oversize downscale shrinks such images instead)", size)
    if min(width, height) < min_side:
        raise BadImageError(f"image of {width}x{height} pixels is smaller than min_side={min_side}", size)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        raise BadImageError(f"animated image with {frames} frames: only still images can be protected (extract the "
                            "frames and protect each)", size)
    try:
        image.load()
        upright = ImageOps.exif_transpose(image)  # before `_metadata`, which resets the orientation tag
        icc, exif, removed = _metadata(image, keep_metadata)
        rgb = _to_rgb(upright, icc)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImageError(f"corrupt image data ({error})", size) from error
    if image.mode not in ("RGB", "RGBA") and icc is not None:
        icc, removed = None, ", ".join(filter(None, [removed, f"colour profile of the {image.mode} image (converted to sRGB)"]))
    cutout = _cutout(upright)
    # A grey cutout flattened onto white is grey too, so its stored colours decide.
    grey = keep_grey and _is_grey(rgb if cutout is None else cutout.convert("RGB"))
    photo = Photo(rgb, icc, exif, removed, cutout=cutout, grey=grey)
    if width * height > max_pixels:  # oversize == "downscale"
        scale = (max_pixels / (width * height)) ** 0.5
        size = (max(1, int(rgb.width * scale)), max(1, int(rgb.height * scale)))
        photo.image = rgb.resize(size, Image.Resampling.LANCZOS)
        photo.cutout = photo.cutout.resize(size, Image.Resampling.LANCZOS) if photo.cutout is not None else None
        photo.downscaled_from = rgb.size
    return photo


def _is_grey(image: Image.Image) -> bool:
    """Whether the three channels of an RGB image are equal everywhere."""
    red, green, blue = image.split()
    return ImageChops.difference(red, green).getbbox() is None and ImageChops.difference(green, blue).getbbox() is None


def _cutout(image: Image.Image) -> Image.Image | None:
    """An image with some pixel that is not opaque, as RGBA; None for an opaque image."""
    if not may_be_transparent(image):
        return None
    cutout = image.convert("RGBA")
    return cutout if cutout.getchannel("A").getextrema()[0] < 255 else None


def _metadata(image: Image.Image, keep_all: bool) -> tuple[bytes | None, bytes | None, str]:
    """(colour profile, EXIF block, what was removed) for the protected copy of `image`."""
    exif = image.getexif()
    removed = []
    if not keep_all:
        if exif.get_ifd(_GPS_IFD) or _GPS_IFD in exif:
            exif.pop(_GPS_IFD, None)
            removed.append("gps")
        sub = exif.get_ifd(_EXIF_IFD)
        for tag, what in _PRIVATE_TAGS.items():
            for directory in (exif, sub):
                if tag in directory:
                    del directory[tag]
                    removed.append(what)
    if _ORIENTATION in exif:
        exif[_ORIENTATION] = 1  # the pixels are upright now
    return image.info.get("icc_profile"), exif.tobytes() if len(exif) else None, ", ".join(dict.fromkeys(removed))


_GREY_PEAKS = (255.0, 65535.0, 4294967295.0)  # full white of 8-, 16- and 32-bit grey


def _to_rgb(image: Image.Image, icc_profile: bytes | None = None) -> Image.Image:
    if image.mode == "CMYK" and icc_profile:
        from PIL import ImageCms  # colour-managed: the CMYK profile to sRGB

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # Grey deeper than 8 bits (16- or 32-bit integers, 32-bit floats): PIL's convert("RGB") would clip at 255, and
        # round a float photo in [0, 1] to black. Rescaled to 8 bits from the scale its values use instead.
        levels = np.nan_to_num(np.asarray(image, dtype=np.float64))
        top = levels.max(initial=0.0)
        peak = 1.0 if image.mode == "F" and top <= 1.0 else next((p for p in _GREY_PEAKS if top <= p), _GREY_PEAKS[-1])
        return Image.fromarray(np.clip(levels / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return flatten_onto_white(image).convert("RGB")  # L, CMYK, YCbCr, RGB...


def printable_path(relative: str) -> str:
    """A file's path as text that UTF-8 can store (the manifest's `source`, log lines): the bytes of a name that are
    not UTF-8 (made on a system with another encoding; Python reads them as lone surrogates) as `\\xNN` escapes."""
    return os.fsencode(relative).decode("utf-8", "backslashreplace")


def make_uid(name: str, keep_suffix: bool = False) -> str:
    """A stable id that is always a safe single file name.

    The image suffix is dropped (`a/b.jpg` -> `a__b`) unless `keep_suffix` (`a__b.jpg`, for files whose stems
    collide). Path separators become `__`, anything outside [A-Za-z0-9._-] becomes `_`, leading dots are
    dropped (no `..`, no hidden files). When that changes the name, or it is too long, a short hash of the
    original name is appended so that distinct names never collide.
    """
    stem = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in IMAGE_SUFFIXES and not keep_suffix else name
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stem.replace("\\", "/").replace("/", "__")).lstrip(".")
    if safe != stem.replace("/", "__") or not safe or len(safe) > _UID_MAX_LEN:
        digest = hashlib.sha1(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
        safe = f"{safe[:_UID_MAX_LEN]}-{digest}" if safe else digest
    return safe


def unique_uid(candidate: str, taken: set[str], key: str) -> str:
    """`candidate`, or candidate plus a hash of `key` (longer until it is free) when `taken` holds it."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogatepass")).hexdigest()
    for length in (8, 16, 40):
        if candidate not in taken:
            return candidate
        candidate = f"{candidate}-{digest[:length]}"
    count = 2
    while f"{candidate}-{count}" in taken:
        count += 1
    return f"{candidate}-{count}"
