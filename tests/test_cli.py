"""`python -m facelock_pl fit --config configs/tiny.yaml` end to end, resume, bad inputs, missing weights."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from conftest import ROOT, random_image, run_cli
from facelock_pl.data import load_rgb
from facelock_pl.objectives import TERM_NAMES
from facelock_pl.outputs import SCHEMA, read_manifest
from facelock_pl.pixels import read_levels

MANIFEST_COLUMNS = ["uid", "source", "source_sha256", "status", "message", "method", "width", "height", "working_width", "working_height",
                    "iterations", "linf_255", "psnr_db", *[f"term_{t}" for t in TERM_NAMES], "fr_cos_recon", "fr_cos_recon_detected",
                    "recognised_by", "faces_in_photo", "faces_protected", "seconds", "source_size_bytes", "source_mtime_ns",
                    "metadata_removed", "extra_json", "finished_at", "rank"]


@pytest.fixture
def messy_folder(face_folder: Path) -> Path:
    """Real faces plus every awkward input of the engine issue."""
    rgb = Image.fromarray(random_image((90, 120)))
    sub = face_folder / "sub dir"
    sub.mkdir()
    rgb.convert("L").save(sub / "gray.png")
    rgb.convert("CMYK").save(face_folder / "cmyk.jpg")
    cutout = rgb.convert("RGBA")  # a clear border, then a soft edge of every opacity, then opaque
    cutout.putalpha(Image.fromarray(np.pad(np.tile(np.linspace(0, 255, 100).astype(np.uint8), (70, 1)), 10)))
    cutout.save(face_folder / "rgba.png")
    Image.fromarray(np.full((70, 70), 40000, dtype=np.uint16)).save(face_folder / "deep16.png")
    (face_folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated nonsense")
    (face_folder / "readme.txt").write_text("not an image")
    Image.fromarray(random_image((8, 8))).save(face_folder / "tiny.png")
    Image.fromarray(random_image((64, 64))).save(face_folder / "up..%2F..%2Fescape.png")
    return face_folder


def run_tiny(source: Path, out: Path, *extra: str) -> int:
    return run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--output_dir", out,
                   "--trainer.enable_progress_bar", "false", *extra)


def test_tiny_fit_end_to_end_then_resume(messy_folder, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    out = tmp_path / "out"
    assert run_tiny(messy_folder, out) == 3  # two images could not be read: "partly failed"
    # The run shut its (gloo) process group down: one left to the interpreter's exit can abort the process.
    assert not torch.distributed.is_initialized()
    manifest = read_manifest(out)
    assert list(manifest.columns) == MANIFEST_COLUMNS
    for part in (out / "manifest").glob("*.parquet"):
        assert pq.read_schema(part).names == SCHEMA.names
    status = dict(zip(manifest["uid"], manifest["status"]))
    assert len(status) == 9  # every image file, none of the .txt
    assert status["astronaut"] == status["grace_hopper"] == "ok"
    assert status["broken"] == "error" and status["tiny"] == "error"
    # Random-noise images have no face: protected without the FR term.
    assert {status[u] for u in ("sub_dir__gray-" + u.split("-")[-1] for u in status if u.startswith("sub_dir__gray"))} == {"no_face"}
    assert status["cmyk"] == status["rgba"] == status["deep16"] == "no_face"
    escape = [u for u in status if "escape" in u]
    assert len(escape) == 1 and (out / "images" / f"{escape[0]}.png").is_file()
    errors = manifest[manifest.status == "error"]
    assert errors["message"].str.len().min() > 10 and not any((out / "images" / f"{u}.png").exists() for u in errors.uid)

    protected = manifest[manifest.status != "error"]
    assert (protected["linf_255"] <= 3).all() and (protected["linf_255"] > 0).all()
    assert (protected["psnr_db"] > 38).all() and (protected["iterations"] == 8).all()
    ok = manifest[manifest.status == "ok"]
    assert ok["fr_cos_recon"].notna().all() and ok["term_fr_cos"].notna().all() and ok["term_lpips"].notna().all()
    assert manifest.loc[manifest.status == "no_face", "fr_cos_recon"].isna().all()

    # The PNG is lossless, the whole source frame at its own size, inside the ε-ball of the 8-bit source.
    png = np.asarray(Image.open(out / "images" / "astronaut.png")).astype(int)
    source = np.asarray(Image.open(messy_folder / "astronaut.png").convert("RGB")).astype(int)
    assert png.shape == source.shape == (512, 512, 3) and 0 < np.abs(png - source).max() <= 3
    # A cutout keeps its alpha, and shown on any background it is the source moved by the perturbation only (no
    # white blended in twice at its soft edge).
    with Image.open(out / "images" / "rgba.png") as cutout, Image.open(messy_folder / "rgba.png") as clean:
        assert cutout.mode == "RGBA" and np.array_equal(np.asarray(cutout.getchannel("A")), np.asarray(clean.getchannel("A")))
        for background in (0, 255):
            shown = [np.asarray(Image.alpha_composite(Image.new("RGBA", clean.size, (background,) * 3 + (255,)), image))
                     .astype(int) for image in (cutout, clean)]
            assert 0 < np.abs(shown[0] - shown[1]).max() <= 3
    # A photo without colour stays grey (data.keep_grey): a greyscale PNG, the source moved by the perturbation.
    for uid, name in ((next(u for u in status if u.startswith("sub_dir__gray")), "sub dir/gray.png"), ("deep16", "deep16.png")):
        with Image.open(out / "images" / f"{uid}.png") as grey:
            moved = np.asarray(grey).astype(int) - np.asarray(load_rgb(messy_folder / name))[..., 0].astype(int)
            assert grey.mode == "L" and 0 < np.abs(moved).max() <= 3, uid
    # ... and `edit`/`evaluate` read it as they read the photo it was made from: flattened onto white.
    assert 0 < (read_levels(out / "images" / "rgba.png").int() - read_levels(messy_folder / "rgba.png").int()).abs().max() <= 3
    assert not list(out.rglob(".tmp-*"))
    assert (out / "lightning_logs").is_dir()

    caplog.clear()
    parts_before = sorted((out / "manifest").glob("*.parquet"))
    final_pngs = sorted((out / "images").glob("*.png"))  # ok and no_face images
    final_before = {p: p.stat().st_mtime_ns for p in final_pngs}
    assert run_tiny(messy_folder, out) == 3  # the same two fail again
    # ok and no_face images are final; only the two errors are tried again.
    assert "9 images in" in caplog.text and "skipping 7 already protected" in caplog.text and "2 to do" in caplog.text
    assert len(final_pngs) == 7 and {p: p.stat().st_mtime_ns for p in final_pngs} == final_before  # not rewritten
    again = read_manifest(out)
    assert len(again) == 9 and len(sorted((out / "manifest").glob("*.parquet"))) == len(parts_before) + 1


def test_print_config_shows_the_command_lines_values(tmp_path, cli_here):
    """(`python -m facelock_pl` itself runs in test_first_hour's subprocesses.)"""
    result = cli_here("fit", "--config", ROOT / "configs" / "tiny.yaml", "--model.eps", "0.02", "--data.batch_size", "3",
                      "--output_dir", tmp_path, "--print_config")
    assert result.returncode == 0, result.stderr
    assert "eps: 0.02" in result.stdout and "batch_size: 3" in result.stdout
    assert "kind: tiny-random-kl" in result.stdout and f"output_dir: {tmp_path}" in result.stdout


def test_flat_model_keys_of_earlier_versions_still_work(capsys):
    """`--model.eps`, `--model.stop_below`... were grouped (attack, objective, stopping, speed); the old
    command-line spellings are read as the new keys."""
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--model.eps", "0.02", "--model.stop_below=-0.4",
                   "--model.fr_weight", "2", "--model.amp_dtype", "float16", "--model.min_iterations", "7", "--print_config") == 0
    printed = capsys.readouterr().out
    model = yaml.safe_load(printed)["model"]
    assert model["attack"]["eps"] == 0.02 and model["stopping"] == {"below": -0.4, "patience": 2, "check_every": 5,
                                                                   "min_iterations": 7}
    assert model["objective"]["fr_weight"] == 2 and model["speed"]["amp_dtype"] == "float16"


def test_missing_weights_stop_before_any_work(face_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    out = tmp_path / "out"
    code = run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir", out,
                   "--model.recognizers", '[{"kind": "onnx", "weights": "/nowhere/sface.onnx"}]')
    assert code == 2
    err = capsys.readouterr().err
    assert "Cannot load the weights of ONNX face recogniser (/nowhere/sface.onnx)" in err
    assert "never falls back to random weights" in err
    assert not (out / "images").exists() and not (out / "manifest").exists()


@pytest.mark.parametrize("recipe", ["protect-offline.yaml", "protect.yaml"])
def test_the_any_crop_overlay_changes_the_budget_and_the_eot_and_keeps_the_rest_of_the_recipe(recipe, capsys):
    """`larger-budget-any-crop.yaml` is added after a recipe: ε 0.045 and `phase` in every purification of the EOT,
    its own output folder, every other value the recipe's."""
    assert run_cli("fit", "--config", ROOT / "configs" / recipe, "--print_config") == 0
    alone = yaml.safe_load(capsys.readouterr().out)
    assert run_cli("fit", "--config", ROOT / "configs" / recipe, "--config", ROOT / "configs" / "larger-budget-any-crop.yaml",
                   "--print_config") == 0
    both = yaml.safe_load(capsys.readouterr().out)
    attack = both["model"]["attack"]
    assert attack["eps"] == 0.045 and alone["model"]["attack"]["eps"] == 0.03
    assert attack["eot"] == ["jpeg:50-90>phase", "resize:0.5-1.0>phase", "blur:0-1.0>phase", "phase"]
    assert [spec.split(">")[0] for spec in attack["eot"][:3]] == alone["model"]["attack"]["eot"][:3]  # the recipe's, moved
    assert both["output_dir"] == "outputs/larger-budget-any-crop" != alone["output_dir"]
    for section in (both, alone):
        del section["model"]["attack"]["eps"], section["model"]["attack"]["eot"], section["output_dir"]
    assert both == alone


@pytest.mark.parametrize("config", ["facelock.yaml", "photoguard.yaml", "protect.yaml", "protect-offline.yaml", "offline.yaml",
                                    "offline-sface.yaml", "tiny.yaml", "facelock-robust.yaml", "facelock-paper.yaml"])
def test_shipped_configs_parse(config, capsys):
    assert run_cli("fit", "--config", ROOT / "configs" / config, "--print_config") == 0
    printed = capsys.readouterr().out
    assert "method:" in printed and "output_dir: outputs/" in printed
