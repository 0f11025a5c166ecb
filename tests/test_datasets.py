"""Dataset-scale protection: datasets sources, bad rows inside parquet, the protected dataset as parquet."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, astronaut, grace_hopper, random_image, run_cli
from facelock_pl.data import FaceDataModule
from facelock_pl.outputs import read_manifest


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's signature)."""
    data = bytearray(png(Image.new("RGB", (4, 4))))
    ihdr = 8  # after the signature: length(4) type(4) data(13) crc(4)
    data[ihdr + 8 : ihdr + 16] = struct.pack(">II", width, height)
    data[ihdr + 21 : ihdr + 25] = struct.pack(">I", zlib.crc32(bytes(data[ihdr + 4 : ihdr + 21])) & 0xFFFFFFFF)
    return bytes(data)


def celeb_like(tmp_path: Path) -> datasets.Dataset:
    """Rows like CelebA-HQ's parquet (image, label) plus an id column, with every bad row of the issue."""
    palette = Image.fromarray(random_image((80, 80), seed=4)).convert("P")
    rows = [
        ("astro", png(astronaut().resize((128, 128))), 1),
        ("hopper", png(grace_hopper().resize((128, 150))), 2),
        ("corrupt", b"\x89PNG\r\n\x1a\n corrupt bytes", 3),
        ("null", None, 4),
        ("bomb", bomb_png(), 5),
        ("palette", png(palette), 6),
        ("astro", png(astronaut().resize((128, 128)).rotate(2)), 7),  # a repeated id
    ]
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image(), "label": datasets.Value("int64")})
    return datasets.Dataset.from_dict(
        {"id": [r[0] for r in rows], "image": [None if r[1] is None else {"bytes": r[1], "path": None} for r in rows],
         "label": [r[2] for r in rows]},
        features=features,
    )


def test_bomb_png_is_refused_before_decoding():
    from facelock_pl.data import BadImageError, load_rgb

    with pytest.raises(BadImageError, match="400000000 pixels.*decompression-bomb guard"):
        load_rgb(bomb_png())


def test_parquet_dataset_with_bad_rows_to_protected_parquet(tmp_path, caplog):
    source = tmp_path / "celeb.parquet"
    celeb_like(tmp_path).to_parquet(str(source))
    out = tmp_path / "out"
    code = run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--data.id_column", "id",
                   "--data.batch_size", "3", "--model.output_format", "both", "--output_dir", out,
                   "--trainer.enable_progress_bar", "false")
    assert code == 3  # three bad rows: partly failed
    manifest = read_manifest(out).set_index("uid")
    assert len(manifest) == 7
    dup = [u for u in manifest.index if u.startswith("astro-dup1-")]
    assert len(dup) == 1 and "astro" in manifest.index
    assert manifest.loc["corrupt", "status"] == "error" and "corrupt" in manifest.loc["corrupt", "message"]
    assert manifest.loc["null", "status"] == "error" and manifest.loc["null", "message"] == "image is null"
    assert manifest.loc["bomb", "status"] == "error" and "decompression-bomb" in manifest.loc["bomb", "message"]
    assert manifest.loc["palette", "status"] in ("ok", "no_face")
    assert manifest.loc["hopper", "extra_json"] == '{"id": "hopper", "label": 2}'

    protected = datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")
    assert sorted(protected["uid"]) == sorted(u for u in manifest.index if manifest.loc[u, "status"] != "error")
    assert isinstance(protected.features["image"], datasets.Image)
    row = protected[protected["uid"].index("hopper")]
    assert row["label"] == 2 and row["id"] == "hopper"
    assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(out / "images" / "hopper.png")))
    # The merged manifest view loads with datasets too.
    assert len(datasets.load_dataset("parquet", data_dir=str(out / "manifest"), split="train")) >= 7


def test_shards_as_separate_jobs_load_back_as_one_dataset(tmp_path):
    """The README's SLURM-array route: one output folder per shard, one glob to read them all."""
    source = tmp_path / "celeb.parquet"
    celeb_like(tmp_path).select([0, 1, 5]).to_parquet(str(source))
    for shard in range(2):
        code = run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--data.num_shards", 2,
                       "--data.shard_index", shard, "--model.output_format", "parquet",
                       "--output_dir", tmp_path / "OUT" / f"shard-{shard}", "--trainer.enable_progress_bar", "false")
        assert code == 0
    whole = datasets.load_dataset("parquet", data_files=str(tmp_path / "OUT" / "shard-*" / "dataset" / "*.parquet"),
                                  split="train")
    assert sorted(whole["uid"]) == ["train-000000", "train-000001", "train-000002"]
    assert sorted(whole["label"]) == [1, 2, 6]


def make_module(source, **kwargs) -> FaceDataModule:
    dm = FaceDataModule(source=str(source), resolution=32, output_dir=str(kwargs.pop("out", "/nonexistent")), **kwargs)
    dm.setup("fit")
    return dm


def test_save_to_disk_imagefolder_shards_and_limit(tmp_path):
    dataset = celeb_like(tmp_path).select(range(6))
    datasets.DatasetDict({"validation": dataset}).save_to_disk(str(tmp_path / "disk"))
    dm = make_module(tmp_path / "disk", split="validation")
    assert dm.num_pending == 6 and dm.dataset[0].uid == "validation-000000"
    assert dm.dataset[0].extra == {"id": "astro", "label": 1}
    assert dm.dataset[0].source_stat is None  # a cell with its bytes: a rerun reads them
    with pytest.raises(ValueError, match="split 'train' not in"):
        make_module(tmp_path / "disk", split="train")

    shard = make_module(tmp_path / "disk", split="validation", num_shards=4, shard_index=1)
    assert [shard.dataset[i].uid for i in range(shard.num_pending)] == ["validation-000002", "validation-000003"]
    assert make_module(tmp_path / "disk", split="validation", limit=2).num_pending == 2

    folder = tmp_path / "imagefolder"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(random_image(seed=i)).save(folder / f"{i}.png")
    dm = make_module(folder, format="imagefolder")
    items = [dm.dataset[i] for i in range(dm.num_pending)]
    assert [item.status for item in items] == ["ok"] * 3 and items[0].image.shape == (3, 32, 32)
    # An imagefolder's cells name files: their size and time are recorded, as a folder source's are.
    files = {(p.stat().st_size, p.stat().st_mtime_ns) for p in folder.glob("*.png")}
    assert {item.source_stat for item in items} == files


def test_unreachable_hub_dataset_is_a_clear_error(monkeypatch):
    from facelock_pl.config_files import ConfigError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="mattymchen/celeba-hq.*--data.source"):
        make_module("mattymchen/celeba-hq")
