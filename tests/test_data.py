"""Input handling: every awkward kind of file becomes an 8-bit RGB image or a clear error."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import astronaut, random_image
from facelock_pl.data import BadImageError, Decoding, FolderImages, ImageItem, Photo, list_images, load_rgb, make_uid


def test_grayscale_rgba_cmyk_palette_become_rgb(tmp_path):
    rgb = Image.fromarray(random_image())
    cases = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.convert("P"),
    }
    for name, image in cases.items():
        image.save(tmp_path / name)
        out = load_rgb(tmp_path / name)
        assert out.mode == "RGB" and out.size == (96, 80), name


def test_rgba_transparency_becomes_white(tmp_path):
    image = Image.new("RGBA", (40, 40), (10, 20, 30, 0))
    image.save(tmp_path / "clear.png")
    assert np.asarray(load_rgb(tmp_path / "clear.png")).min() == 255


def test_transparency_is_kept_for_the_protected_copy_and_an_opaque_alpha_is_dropped(tmp_path):
    from facelock_pl.data import load_photo

    cutout = Image.fromarray(random_image()).convert("RGBA")
    alpha = np.full((80, 96), 255, np.uint8)
    alpha[:, :10] = 0
    cutout.putalpha(Image.fromarray(alpha))
    cutout.save(tmp_path / "cutout.png")
    Image.fromarray(random_image()).convert("RGBA").save(tmp_path / "opaque.png")
    palette = Image.fromarray(random_image()).convert("P")
    palette.info["transparency"] = int(np.asarray(palette)[0, 0])
    palette.save(tmp_path / "palette.png")
    photo = load_photo(tmp_path / "cutout.png")
    assert np.array_equal(np.asarray(photo.cutout), np.asarray(cutout)) and np.asarray(photo.image)[:, :10].min() == 255
    assert load_photo(tmp_path / "opaque.png").cutout is None
    assert load_photo(tmp_path / "palette.png").cutout.getchannel("A").getextrema()[0] == 0
    item = ImageItem.from_photo("cutout", "cutout.png", load_photo(tmp_path / "cutout.png", max_pixels=40 * 48,
                                                                   oversize="downscale"), 64)
    assert tuple(item.cutout.shape) == (4, *item.native.shape[-2:]) == (4, 40, 48)


def test_16_bit_png_is_rescaled_not_clipped(tmp_path):
    levels = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(levels).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    out = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert out.min() == 0 and out.max() == 255
    assert abs(out[32, 32, 0] - levels[32, 32] / 257) <= 1  # mid-grey stays mid-grey


@pytest.mark.parametrize("scale", [1.0, 255.0, 65535.0], ids=["floats in [0, 1]", "floats on 0-255", "floats on 0-65535"])
def test_a_float_grey_tiff_is_rescaled_by_the_scale_its_values_use(tmp_path, scale):
    levels = np.linspace(0, 255, 64 * 64).reshape(64, 64).round()
    Image.fromarray((levels / 255 * scale).astype(np.float32), "F").save(tmp_path / "float.tif")
    out = np.asarray(load_rgb(tmp_path / "float.tif")).astype(int)
    assert np.abs(out[..., 0] - levels).max() <= 1 and (out[..., 0] == out[..., 2]).all()  # never black, never clipped


def test_exif_rotation_is_applied(tmp_path):
    image = Image.fromarray(random_image((40, 100)))  # landscape pixels
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", exif=exif)
    assert load_rgb(tmp_path / "rotated.jpg").size == (40, 100)  # displayed upright: portrait


def test_phone_photos_are_read_and_raw_files_are_listed_as_refused_with_what_to_do(tmp_path):
    """HEIC is what phones save: skipping it unseen would leave a person's photos unprotected, exit code 0."""
    photo = astronaut().resize((80, 96))
    photo.save(tmp_path / "IMG_0001.HEIC", format="HEIF", quality=95)
    photo.save(tmp_path / "web.avif", format="AVIF", quality=95)
    (tmp_path / "IMG_0002.dng").write_bytes(b"II*\0 not really a RAW file")
    (tmp_path / "scan.jxl").write_bytes(b"\xff\x0a")
    (tmp_path / "notes.txt").write_text("not a photo")
    images = FolderImages(tmp_path, Decoding(resolution=64))
    items = {images[i].uid: images[i] for i in range(len(images))}
    assert sorted(items) == ["IMG_0001", "IMG_0002.dng", "scan.jxl", "web"]
    for uid in ("IMG_0001", "web"):
        decoded = np.asarray(Image.open(tmp_path / items[uid].source).convert("RGB"))
        assert items[uid].status == "ok" and (items[uid].width, items[uid].height) == (80, 96)
        assert np.array_equal(items[uid].native.permute(1, 2, 0).numpy(), decoded)
        assert np.abs(decoded.astype(int) - np.asarray(photo).astype(int)).mean() < 8  # the photo, lossy
    assert items["IMG_0002.dng"].status == "error" and "export the photo as JPEG, PNG or HEIC" in items["IMG_0002.dng"].message
    assert items["scan.jxl"].status == "error" and "JPEG XL is not read" in items["scan.jxl"].message


@pytest.mark.parametrize(
    "content, reason",
    [(b"this is not an image", "not a decodable image"), (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not a decodable image")],
)
def test_undecodable_files_raise_a_clear_error(tmp_path, content, reason):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(BadImageError, match=reason):
        load_rgb(tmp_path / "bad.png")


def test_an_empty_file_says_so():
    with pytest.raises(BadImageError, match=r"empty file \(0 bytes\)"):
        load_rgb(b"")


def test_a_photo_without_colour_is_marked_grey_whatever_its_mode_when_asked(tmp_path):
    from facelock_pl.data import load_photo

    colour = Image.fromarray(random_image())
    grey_rgb = colour.convert("L").convert("RGB")
    soft = grey_rgb.convert("RGBA")
    soft.putalpha(128)
    hidden = colour.convert("RGBA")  # grey where it shows, colour stored under alpha 0
    hidden.putalpha(0)
    hidden.paste(grey_rgb.crop((0, 0, 96, 40)), (0, 0))
    cases = {"l.png": (colour.convert("L"), True), "rgb.png": (grey_rgb, True), "la.png": (soft, True),
             "colour.png": (colour, False), "hidden.png": (hidden, False), "deep.tiff": (colour.convert("I"), True)}
    for name, (image, grey) in cases.items():
        image.save(tmp_path / name)
        assert load_photo(tmp_path / name, keep_grey=True).grey is grey, name
        assert load_photo(tmp_path / name).grey is False, name  # only when asked


def test_truncated_jpeg_is_an_error(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(random_image((200, 200))).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(BadImageError, match="corrupt"):
        load_rgb(tmp_path / "cut.jpg")


def test_tiny_and_huge_images_are_refused(tmp_path):
    Image.fromarray(random_image((10, 12))).save(tmp_path / "tiny.png")
    with pytest.raises(BadImageError, match="smaller than min_side"):
        load_rgb(tmp_path / "tiny.png")
    Image.new("L", (3000, 3000)).save(tmp_path / "big.png")
    with pytest.raises(BadImageError, match="decompression-bomb"):
        load_rgb(tmp_path / "big.png", max_pixels=1_000_000)


def test_the_working_canvas_keeps_the_whole_frame_and_its_aspect_with_antialiasing():
    stripes = np.zeros((100, 300, 3), dtype=np.uint8)
    stripes[:, 100:200] = 255  # a white band in the middle third
    item = ImageItem.from_photo("s", "s.png", Photo(Image.fromarray(stripes)), 48)
    assert item.image.shape == (3, 48, 48) and item.image.dtype == torch.uint8 and item.region == (16, 48)
    image = item.image[:, :16].float()
    assert image[:, :, :14].mean() < 10 and image[:, :, 18:30].mean() > 245 and image[:, :, 34:].mean() < 10  # not cropped
    assert torch.equal(item.image[:, 16:], item.image[:, 15:16].expand(-1, 32, -1))  # the border repeated
    assert torch.equal(item.native, torch.from_numpy(stripes).permute(2, 0, 1)) and (item.width, item.height) == (300, 100)
    checker = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    small = ImageItem.from_photo("c", "c.png", Photo(Image.fromarray(checker).convert("RGB")), 32).image.float()
    assert abs(small.mean() - 127.5) < 3 and small.std() < 10  # no aliasing


@pytest.mark.parametrize("name", ["../../etc/passwd", "/abs/x.png", "..", ".hidden.png", "a/../../b.jpg", "ü ber/bad:name?.png", "x" * 300])
def test_uids_never_leave_the_output_folder(tmp_path, name):
    uid = make_uid(name)
    assert uid and "/" not in uid and "\\" not in uid and not uid.startswith(".")
    target = (tmp_path / "images" / f"{uid}.png").resolve()
    assert target.parent == (tmp_path / "images").resolve()
    assert len(uid) <= 130


def test_uids_are_stable_and_distinct(tmp_path):
    assert make_uid("sub/img 1.jpg") == make_uid("sub/img 1.jpg")
    assert make_uid("plain.jpg") == "plain"
    for name in ("a/b.jpg", "a/b.png", "a__b.jpg", "c.txt.jpg"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image()).save(path)
    (tmp_path / "notes.txt").write_text("not an image, not listed")
    entries = list_images(tmp_path)
    uids = [u for u, _ in entries]
    assert len(uids) == 4 and len(set(uids)) == 4
    assert [r for _, r in entries] == ["a/b.jpg", "a/b.png", "a__b.jpg", "c.txt.jpg"]


def test_hidden_files_are_left_out_and_named(tmp_path, caplog):
    """A folder copied from a Mac holds a '._x.jpg' companion per photo (not an image): each was an error row and the
    run's exit code 'partly failed'. Hidden names are left out, as Hugging Face `datasets` leaves them out."""
    for name in ("x.jpg", "sub/y.png", ".ipynb_checkpoints/x.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(random_image()).save(tmp_path / name)
    (tmp_path / "._x.jpg").write_bytes(b"\x00\x05\x16\x07" + bytes(60))  # AppleDouble header
    with caplog.at_level(logging.INFO, logger="facelock_pl"):
        entries = list_images(tmp_path)
    assert [relative for _, relative in entries] == ["sub/y.png", "x.jpg"]
    assert "2 hidden file(s)" in caplog.text and "(._x.jpg, .ipynb_checkpoints/x.jpg)" in caplog.text
    # A folder below a hidden one is listed as any other: only names under the source count.
    assert [relative for _, relative in list_images(tmp_path / ".ipynb_checkpoints")] == ["x.jpg"]


def test_folder_dataset_turns_bad_files_into_error_items(tmp_path):
    Image.fromarray(random_image()).save(tmp_path / "good.png")
    (tmp_path / "fake.jpg").write_text("plain text with an image suffix")
    dataset = FolderImages(tmp_path, Decoding(32))
    items = {item.uid: item for item in (dataset[i] for i in range(len(dataset)))}
    assert items["good"].status == "ok" and items["good"].image.shape == (3, 32, 32)
    assert (items["good"].width, items["good"].height) == (96, 80)
    assert items["fake"].status == "error" and "not a decodable image" in items["fake"].message
    assert items["fake"].image is None


def test_missing_source_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder or an image file"):
        FolderImages(tmp_path / "nope")
