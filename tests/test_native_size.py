"""The protected image is the photo the person has: native size, whole frame, no crop, metadata handled."""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image, ImageCms

from conftest import astronaut, grace_hopper, random_image, tiny_module_kwargs
from facelock_pl.data import FaceDataModule
from facelock_pl.data.items import faces_squares
from facelock_pl.engine import ProtectionModule
from facelock_pl.engine.delivery import deliver
from facelock_pl.outputs import read_manifest
from facelock_pl.pixels import levels_to_pm1, pil_to_levels, quantise_to_levels, working_size


def protect(source: Path, out: Path, batch_size: int = 2, settings: dict | None = None, **data) -> None:
    module = ProtectionModule(**tiny_module_kwargs(iterations=4, **(settings or {})))
    module.output_dir = out
    datamodule = FaceDataModule(source=str(source), resolution=data.pop("resolution", 64), batch_size=batch_size,
                                output_dir=str(out), **data)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, datamodule=datamodule)


def psnr_db(image, source) -> float:
    """PSNR of 8-bit `image` against `source` (arrays or tensors), computed here, independently of the package."""
    error = np.asarray(image, dtype=np.float64) - np.asarray(source, dtype=np.float64)
    return float(10 * np.log10(255**2 / (error**2).mean()))


def levels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def test_the_protected_image_is_the_whole_frame_at_its_own_size(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    astronaut().resize((300, 180)).save(faces / "wide.png")
    grace_hopper().resize((150, 260)).save(faces / "tall.png")
    protect(faces, tmp_path / "out")
    rows = read_manifest(tmp_path / "out").set_index("uid")
    for uid, size in (("wide", (300, 180)), ("tall", (150, 260))):
        png = levels(tmp_path / "out" / "images" / f"{uid}.png")
        source = levels(faces / f"{uid}.png")
        assert png.shape == source.shape == (size[1], size[0], 3)
        difference = np.abs(png - source)
        assert 0 < difference.max() <= 3 and (difference > 0).mean() > 0.3  # budget at native size, not a crop
        assert (rows.loc[uid, "width"], rows.loc[uid, "height"]) == size
        assert (rows.loc[uid, "working_width"], rows.loc[uid, "working_height"]) == working_size(*size, 64)
        assert rows.loc[uid, "linf_255"] == difference.max()


def test_delivery_carries_the_perturbation_to_native_size_inside_the_budget():
    generator = torch.Generator().manual_seed(0)
    native = torch.randint(0, 256, (3, 90, 120), dtype=torch.uint8, generator=generator)
    canvas = pil_to_levels(Image.fromarray(native.permute(1, 2, 0).numpy()).resize((64, 48)))
    x = levels_to_pm1(torch.nn.functional.pad(canvas, (0, 0, 0, 16)))
    x_adv = (x + 0.03 * torch.sign(torch.randn(x.shape, generator=generator))).clamp(-1, 1)
    png = deliver(x_adv, x, (48, 64), native, 0.03)
    assert png.shape == native.shape and (png.int() - native.int()).abs().max() <= 3 and (png != native).float().mean() > 0.5
    same = deliver(x_adv, x, (64, 64), levels_to_pm1(x).add(1).mul(127.5).round().byte(), 0.03)
    assert torch.equal(same, quantise_to_levels(x_adv, levels_to_pm1(x).add(1).mul(127.5).round().byte(), 0.03))


def test_fill_moves_every_changed_pixel_the_whole_budget():
    generator = torch.Generator().manual_seed(1)
    source = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=generator)
    source[:, :4] = 254  # near white: the fill stops at 255
    x_adv = levels_to_pm1(source) + 0.03 * torch.randn(source.shape, generator=generator)
    plain, filled = quantise_to_levels(x_adv, source, 0.03), quantise_to_levels(x_adv, source, 0.03, fill=True)
    change = plain.int() - source.int()
    assert (change.abs() < 3).float().mean() > 0.3 and (change[:, :4] > 0).any()
    assert torch.equal(filled.int(), (source.int() + 3 * torch.sign(change)).clamp(0, 255))
    assert filled[:, :4].max() == 255


def test_filled_delivery_at_native_size_is_the_plain_one_pushed_to_the_budget():
    generator = torch.Generator().manual_seed(2)
    native = torch.randint(8, 248, (3, 90, 120), dtype=torch.uint8, generator=generator)
    canvas = pil_to_levels(Image.fromarray(native.permute(1, 2, 0).numpy()).resize((64, 48)))
    x = levels_to_pm1(torch.nn.functional.pad(canvas, (0, 0, 0, 16)))
    x_adv = x + 0.02 * torch.randn(x.shape, generator=generator)
    plain, filled = deliver(x_adv, x, (48, 64), native, 0.03), deliver(x_adv, x, (48, 64), native, 0.03, fill=True)
    expected = native.int() + 3 * torch.sign(plain.int() - native.int())
    assert torch.equal(filled.int(), expected) and (plain != native).any()
    assert psnr_db(filled, native) < psnr_db(plain, native) and psnr_db(filled, native) >= 10 * np.log10(255**2 / 9)


def test_fill_budget_changes_the_saved_image_not_the_optimisation(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    astronaut().resize((96, 80)).save(faces / "wide.png")
    for fill in (False, True):
        protect(faces, tmp_path / f"fill-{fill}", batch_size=1, settings={"quantise_forward": True, "fill_budget": fill})
    source = levels(faces / "wide.png")
    plain, filled = (levels(tmp_path / f"fill-{fill}" / "images" / "wide.png") for fill in (False, True))
    assert np.array_equal(filled, np.clip(source + 3 * np.sign(plain - source), 0, 255))  # the same δ, filled
    rows = {fill: read_manifest(tmp_path / f"fill-{fill}").iloc[0] for fill in (False, True)}
    terms = [c for c in rows[True].index if c.startswith("term_") and not np.isnan(rows[True][c])]
    assert terms and rows[True][terms].astype(float).equals(rows[False][terms].astype(float))  # the last step's terms
    assert rows[True]["linf_255"] == 3
    assert rows[True]["psnr_db"] == pytest.approx(psnr_db(filled, source), abs=1e-3)
    assert rows[True]["psnr_db"] < rows[False]["psnr_db"] - 0.5


def test_exif_orientation_is_applied_and_reset(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated 90° clockwise
    astronaut().resize((120, 80)).save(faces / "turned.jpg", exif=exif, quality=95)
    protect(faces, tmp_path / "out")
    protected = Image.open(tmp_path / "out" / "images" / "turned.png")
    assert protected.size == (80, 120) and protected.getexif().get(0x0112) == 1


def test_location_and_serials_are_removed_the_colour_profile_kept(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"
    exif[0x8825] = {1: "N", 2: (52.0, 22.0, 0.0)}  # GPS latitude
    exif.get_ifd(0x8769)[0xA431] = "SERIAL-1234"  # body serial number
    astronaut().resize((96, 96)).save(faces / "private.jpg", exif=exif, icc_profile=icc, quality=95)
    protect(faces, tmp_path / "out")
    protected = Image.open(tmp_path / "out" / "images" / "private.png")
    kept = protected.getexif()
    assert protected.info.get("icc_profile") == icc and kept.get(0x010F) == "Camera maker"
    assert not kept.get_ifd(0x8825) and 0xA431 not in kept.get_ifd(0x8769)
    assert read_manifest(tmp_path / "out").loc[0, "metadata_removed"] == "gps, serial"
    protect(faces, tmp_path / "kept", keep_metadata=True)
    everything = Image.open(tmp_path / "kept" / "images" / "private.png").getexif()
    assert everything.get_ifd(0x8825) and everything.get_ifd(0x8769)[0xA431] == "SERIAL-1234"


def test_parquet_output_keeps_native_sizes(tmp_path):
    rows = [astronaut().resize((100, 70)), grace_hopper().resize((64, 90))]
    encoded = []
    for image in rows:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        encoded.append({"bytes": buffer.getvalue(), "path": None})
    datasets.Dataset.from_dict({"image": encoded}, features=datasets.Features({"image": datasets.Image()})).to_parquet(
        str(tmp_path / "rows.parquet"))
    module = ProtectionModule(**tiny_module_kwargs(iterations=2, ), output_format="both")
    module.output_dir = tmp_path / "out"
    data = FaceDataModule(source=str(tmp_path / "rows.parquet"), resolution=64, batch_size=2, output_dir=str(tmp_path / "out"))
    L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_progress_bar=False,
              enable_model_summary=False, enable_checkpointing=False).fit(module, datamodule=data)
    protected = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "dataset"), split="train")
    sizes = dict(zip(protected["uid"], (image.size for image in protected["image"])))
    assert sizes == {"train-000000": (100, 70), "train-000001": (64, 90)}


def test_extreme_aspect_ratios_16_bit_and_cmyk_are_protected_at_native_size(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    Image.fromarray(random_image((40, 2000))).save(faces / "strip.png")
    Image.fromarray(np.linspace(0, 65535, 70 * 100).reshape(70, 100).astype(np.uint16)).save(faces / "deep.png")
    Image.fromarray(random_image((60, 90))).convert("CMYK").save(faces / "print.jpg")
    protect(faces, tmp_path / "out")
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert set(rows["status"]) == {"no_face"}
    for uid, shape in (("strip", (40, 2000)), ("deep", (70, 100)), ("print", (60, 90))):
        assert levels(tmp_path / "out" / "images" / f"{uid}.png").shape[:2] == shape
        assert rows.loc[uid, "linf_255"] <= 3
    assert (rows.loc["strip", "working_width"], rows.loc["strip", "working_height"]) == (64, 8)
    assert "smaller than it is" not in rows.loc["strip", "message"]  # a face 31x the detector's smallest cannot fit in it


def test_images_over_the_pixel_limit_are_refused_or_shrunk_by_choice(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    astronaut().resize((200, 150)).save(faces / "big.png")
    protect(faces, tmp_path / "refused", max_pixels=10_000)
    row = read_manifest(tmp_path / "refused").iloc[0]
    assert row.status == "error" and "exceeds max_pixels=10000" in row.message and (row.width, row.height) == (200, 150)
    protect(faces, tmp_path / "shrunk", max_pixels=10_000, oversize="downscale")
    row = read_manifest(tmp_path / "shrunk").iloc[0]
    assert row.status in ("ok", "no_face") and row.width * row.height <= 10_000 and "downscaled from 200x150" in row.message
    assert levels(tmp_path / "shrunk" / "images" / "big.png").shape[:2] == (row.height, row.width)


def test_native_resolution_works_at_each_images_own_size(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    astronaut().resize((72, 60)).save(faces / "a.png")
    grace_hopper().resize((50, 66)).save(faces / "b.png")
    protect(faces, tmp_path / "out", resolution="native", batch_size=1)
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert (rows["working_width"] == rows["width"]).all() and (rows["working_height"] == rows["height"]).all()
    with pytest.raises(ValueError, match="one image at a time"):
        FaceDataModule(source=str(faces), resolution="native", batch_size=2)


def test_face_region_mode_changes_only_the_region_around_the_face(tmp_path):
    faces = tmp_path / "faces"
    faces.mkdir()
    photo = Image.fromarray(random_image((600, 800), seed=3) // 4 + 96)  # a dull, large background
    photo.paste(astronaut().crop((150, 30, 300, 210)).resize((100, 120)), (560, 380))
    photo.save(faces / "crowd.png")
    protect(faces, tmp_path / "out", resolution=64, region="faces", face_margin=0.5)
    changed = np.argwhere(np.abs(levels(tmp_path / "out" / "images" / "crowd.png") - levels(faces / "crowd.png")).max(-1) > 0)
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert 300 < top and bottom < 600 and 450 < left and right < 800  # around the face at (560..660, 380..500)
    row = read_manifest(tmp_path / "out").iloc[0]
    assert row.status == "ok" and (row.width, row.height) == (800, 600)


@pytest.mark.parametrize("grey", [False, True])
def test_the_face_region_of_a_small_face_in_a_large_photo_is_found(grey):
    """A face 50 px wide in a 1600x1200 photo: 20 px on a search copy of 640 px, where MTCNN misses it."""
    photo = Image.fromarray(random_image((1200, 1600), seed=3) // 4 + 96)
    photo.paste(astronaut().crop((150, 30, 300, 210)).resize((50, 60)), (900, 500))  # the face at x 900..950, y 500..560
    photo = photo.convert("L").convert("RGB") if grey else photo
    [(top, left, side)] = faces_squares(photo, 0.5)
    assert top <= 500 and left <= 900 and top + side >= 560 and left + side >= 950 and side < 120
    assert faces_squares(photo, 0.5, search_side=640) == []


def group_photo(gap: int) -> Image.Image:
    """Two faces (astronaut, Grace Hopper) 100x120 px on a dull 1200x900 background: the astronaut's at (100, 100),
    Grace Hopper's at (200 + gap, 220 + gap)."""
    photo = Image.fromarray(random_image((900, 1200), seed=3) // 4 + 96)
    photo.paste(astronaut().crop((150, 30, 300, 210)).resize((100, 120)), (100, 100))
    photo.paste(grace_hopper().crop((130, 60, 410, 400)).resize((100, 120)), (200 + gap, 220 + gap))
    return photo


def test_faces_far_apart_get_a_cell_each_and_only_their_squares_change(tmp_path):
    """Two faces far apart: one joint crop would be most of the frame, each face a few pixels at the working size
    (until this version: the astronaut's only, a 64 px canvas, the other dropped); now a square each, side by side in
    the canvas, each delivered into its own place — and the manifest measures the faces there."""
    from facelock_pl.data.items import SMALLEST_CELL_PX, Decoding, face_cells

    far, close = group_photo(550), group_photo(0)
    squares = faces_squares(far, 0.5)

    def holds(square, x, y):  # the square holds the face pasted at (x, y), 100x120
        top, left, side = square
        return top <= y and left <= x and top + side >= y + 120 and left + side >= x + 100

    assert len(squares) == 2 and all(100 < side < 300 for _, _, side in squares)
    assert holds(squares[0], 100, 100) != holds(squares[1], 100, 100) and any(holds(q, 750, 770) for q in squares)
    (t1, l1, s1), (t2, l2, s2) = squares
    assert t1 + s1 <= t2 or t2 + s2 <= t1 or l1 + s1 <= l2 or l2 + s2 <= l1  # no pixel in both
    [joint] = faces_squares(close, 0.5)  # squares that would overlap: one square around both faces, as before
    assert joint[0] <= 100 and joint[1] <= 100 and joint[0] + joint[2] >= 340 and joint[1] + joint[2] >= 300

    cells = face_cells(squares, 128)
    assert [(c.cell_top, c.cell_left, c.cell_side) for c in cells] == [(0, 0, 64), (0, 64, 64)]
    assert [(c.top, c.left, c.side) for c in cells] == squares and len(face_cells(squares * 9, 256)) == 16
    assert len(face_cells(squares, 64)) == 1 and 64 // SMALLEST_CELL_PX == 1
    # A square smaller than its cell is shown at its own size, trimmed to a multiple of 8: never enlarged.
    assert face_cells([(0, 0, 300), (500, 600, 101)], 256) == [(0, 0, 300, 0, 0, 128), (500, 600, 96, 0, 128, 96)]
    assert face_cells([(40, 50, 170)], 256) == [(40, 50, 168, 0, 0, 168)]
    buffer = io.BytesIO()
    far.save(buffer, format="PNG")
    item = Decoding(resolution=64, region="faces").item("far", "far.png", buffer.getvalue())
    assert "2 face regions, the 1 largest protected" in item.message and len(item.crops) == 1

    faces = tmp_path / "faces"
    faces.mkdir()
    far.save(faces / "far.png")
    protect(faces, tmp_path / "out", resolution=128, region="faces", face_margin=0.5,
            settings={"faces": 2})
    changed = np.abs(levels(tmp_path / "out" / "images" / "far.png") - levels(faces / "far.png")).max(-1)
    inside = np.zeros_like(changed, dtype=bool)
    for top, left, side in squares:
        inside[top : top + side, left : left + side] = True
        assert (changed[top : top + side, left : left + side] > 0).mean() > 0.3  # each face's square is protected
    assert changed[~inside].max() == 0 and changed.max() <= 3
    row = read_manifest(tmp_path / "out").iloc[0]
    assert row.status == "ok" and row.faces_in_photo == 2 and row.faces_protected == 2
    assert (row.working_width, row.working_height) == (128, 128) and not np.isnan(row.fr_cos_recon)


def test_face_region_mode_turns_a_sideways_crowd_photo_upright(tmp_path):
    """The face's crop is found with the photo turned (its face is too small to be found in the frame at the working
    size, turned or not: without the crop it was a `no_face` row) and optimised turned upright."""
    faces = tmp_path / "faces"
    faces.mkdir()
    photo = Image.fromarray(random_image((600, 800), seed=3) // 4 + 96)
    photo.paste(astronaut().crop((150, 30, 300, 210)).resize((100, 120)), (560, 380))
    photo.rotate(-90, expand=True).save(faces / "crowd.png")  # lying on its right side: 600 wide, 800 high
    protect(faces, tmp_path / "out", resolution=64, region="faces", face_margin=0.5)
    changed = np.argwhere(np.abs(levels(tmp_path / "out" / "images" / "crowd.png") - levels(faces / "crowd.png")).max(-1) > 0)
    (top, left), (bottom, right) = changed.min(0), changed.max(0)
    assert 450 < top and bottom < 800 and 0 <= left and right < 300  # around the face at (560..660, 100..220) turned
    row = read_manifest(tmp_path / "out").iloc[0]
    assert row.status == "ok" and (row.width, row.height) == (600, 800)
    assert "turned 90° counter-clockwise" in row.message and "smaller than it is" not in row.message

    # The whole frame at the working size: no face, and the row says why and what finds it.
    protect(faces, tmp_path / "frame", resolution=64)
    row = read_manifest(tmp_path / "frame").iloc[0]
    assert row.status == "no_face" and "the photo is seen at 48x64, 12x smaller than it is" in row.message
    assert "a face under about 20 px there (250 px in the photo)" in row.message and "`data.region: faces`" in row.message
    from facelock_pl.engine.summary import describe, folder_summary
    from facelock_pl.models.faces import FaceDetector
    from facelock_pl.outputs.records import SMALLEST_FACE_PX
    assert FaceDetector().mtcnn.min_face_size == SMALLEST_FACE_PX  # the hint's number is the detector's
    summary = json.loads((tmp_path / "frame" / "summary.json").read_text())
    assert summary["folder"]["no_face_seen_small"] == 1 and folder_summary(tmp_path / "out")["no_face_seen_small"] == 0
    assert "1 no_face photo(s) were seen at least 2x smaller than they are" in describe(summary, tmp_path / "frame")


def test_a_face_region_run_that_finds_no_face_says_where_it_searched_instead_of_suggesting_itself(tmp_path):
    """A photo without a face protected with `data.region: faces`: the row and the run's summary told the user to try
    `data.region: faces` (they counted a photo seen small by its sizes alone). The row now says where the face search
    looked (at up to 1280 px) and what it cannot find there; the summary counts no photo as seen small."""
    faces = tmp_path / "faces"
    faces.mkdir()
    smooth = np.linspace(60, 200, 1600, dtype=np.float32)[None, :, None] + np.zeros((1200, 1, 3), np.float32)
    Image.fromarray(smooth.astype(np.uint8)).save(faces / "wall.png")  # 1600x1200, no face
    protect(faces, tmp_path / "out", resolution=64, region="faces")
    row = read_manifest(tmp_path / "out").iloc[0]
    assert row.status == "no_face" and (row.working_width, row.working_height) == (64, 48)
    assert ("no face found in the photo searched at 1280x960 (a face under about 20 px there, 25 px in the photo, is "
            "not found): the whole frame is protected") in row.message
    assert "`data.region: faces`" not in row.message and "smaller than it is" not in row.message
    from facelock_pl.engine.summary import describe
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["folder"]["no_face"] == 1 and summary["folder"]["no_face_seen_small"] == 0
    assert "--data.region faces" not in describe(summary, tmp_path / "out")

    protect(faces, tmp_path / "frame", resolution=64)  # the whole frame only: the remedy is the face search
    row = read_manifest(tmp_path / "frame").iloc[0]
    assert row.status == "no_face" and "`data.region: faces` searches the photo at up to 1280 px" in row.message
    assert json.loads((tmp_path / "frame" / "summary.json").read_text())["folder"]["no_face_seen_small"] == 1


@pytest.mark.parametrize("fill", [False, True])
def test_delivery_in_strips_of_rows_gives_the_pixels_of_one_pass(monkeypatch, fill):
    """A 48-megapixel photo's delivery runs in strips (3.8 GB of float32 temporaries in one pass); the strips, ragged
    last one included, must not change a pixel."""
    native = torch.from_numpy(random_image((101, 37), seed=3)).permute(2, 0, 1).contiguous()
    x = torch.rand(3, 32, 32) * 2 - 1
    x_adv = (x + 0.05 * torch.randn(3, 32, 32)).clamp(-1, 1)
    one_pass = deliver(x_adv, x, (32, 12), native, 0.03, fill=fill)
    monkeypatch.setattr("facelock_pl.pixels.STRIP_PIXELS", 37 * 8)  # 8 rows a strip: 12 strips and 5 rows
    strips = deliver(x_adv, x, (32, 12), native, 0.03, fill=fill)
    assert torch.equal(strips, one_pass)
    delta = torch.nn.functional.interpolate((x_adv - x)[None, :, :32, :12], size=(101, 37), mode="bicubic",
                                            align_corners=False, antialias=True)[0]
    assert torch.equal(one_pass, quantise_to_levels(levels_to_pm1(native) + delta, native, 0.03, fill))


def test_the_distortion_is_measured_in_strips_exactly(monkeypatch):
    from facelock_pl.pixels import distortion

    source = torch.from_numpy(random_image((101, 37), seed=4)).permute(2, 0, 1).contiguous()
    moved = (source.int() + torch.randint(-3, 4, source.shape)).clamp(0, 255).to(torch.uint8)
    monkeypatch.setattr("facelock_pl.pixels.STRIP_PIXELS", 37 * 8)
    linf, psnr = distortion(moved, source)
    mse = ((moved.double() - source.double()) ** 2).mean().item()
    assert linf == 3 and psnr == pytest.approx(10 * np.log10(255.0**2 / mse), abs=1e-9)
    assert distortion(source, source) == (0, float("inf"))
