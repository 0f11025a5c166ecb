"""Evaluation harness on tiny offline models: metrics by hand, seeds, resume, report, edit -> evaluate."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
import torch

from conftest import ROOT, astronaut, grace_hopper, run_cli
from facelock_pl.config_files import ConfigError
from facelock_pl.evaluation import Editor, EditorSpec, metrics, purify
from facelock_pl.evaluation.report import aggregate
from facelock_pl.evaluation.sets import DataSpec
from facelock_pl.models import LPIPSSpec, load_lpips
from facelock_pl.outputs import read_manifest
from facelock_pl.pixels import levels_to_pil, levels_to_pm1


def constant(value: int, size: int = 16, batch: int = 1) -> torch.Tensor:
    return torch.full((batch, 3, size, size), value, dtype=torch.uint8)


def test_psnr_and_ssim_by_hand():
    a, b = constant(100), constant(110)
    assert metrics.psnr(a, b).item() == pytest.approx(10 * math.log10(255**2 / 10**2), abs=1e-3)
    # Constant images: SSIM reduces to its luminance term (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1).
    mu_a, mu_b, c1 = 100 / 255, 110 / 255, 0.01**2
    assert metrics.ssim(a, b).item() == pytest.approx((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1), abs=1e-4)
    noise = torch.randint(0, 256, (2, 3, 24, 24), dtype=torch.uint8)
    assert torch.allclose(metrics.ssim(noise, noise), torch.ones(2))
    assert metrics.psnr(noise, noise).isinf().all()


def test_clip_scores_by_hand():
    source = torch.tensor([[1.0, 0.0, 0.0]])
    edit = torch.tensor([[0.6, 0.8, 0.0]])
    text = torch.tensor([0.0, 1.0, 0.0])
    # edit - source = (-0.4, 0.8, 0): cos with (0, 1, 0) = 0.8 / sqrt(0.8)
    assert metrics.clip_directional(source, edit, text[None]).item() == pytest.approx(0.8 / math.sqrt(0.8), abs=1e-6)
    assert metrics.clip_image(source, edit).item() == pytest.approx(0.6, abs=1e-6)


def test_lpips_split_equals_the_lpips_package():
    distance = load_lpips(LPIPSSpec(net="tiny-random"))
    x, y = torch.rand(2, 3, 64, 64) * 2 - 1, torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        ours = distance.distance(distance.features(x), y)
        reference = distance.model(x, y).flatten()
    assert torch.allclose(ours, reference, atol=1e-5) and (ours > 0).all()
    assert distance.distance(distance.features(x), x).abs().max() < 1e-6


def test_fdfr_and_fr_aggregate_over_found_faces_only():
    frame = pd.DataFrame({
        "set": ["a"] * 4, "prompt_id": [0, 0, 1, 1], "uid": list("wxyz"), "psnr": [30.0] * 4, "ssim": [0.9] * 4,
        "lpips": [0.1] * 4, "clip_s": [0.1] * 4, "clip_i": [0.8] * 4, "face_found": [True, False, True, False],
        "fr:r": [0.2, math.nan, 0.4, math.nan],
    })
    by_set = aggregate(frame, ["set"], ["r"])
    assert by_set.loc["a", "fdfr_mean"] == 0.5
    assert by_set.loc["a", "fr:r_mean"] == pytest.approx(0.3)
    assert by_set.loc["a", "n"] == 4


def test_purifications_do_what_they_say():
    levels = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    jpeg = purify.apply("jpeg:75", levels)
    assert jpeg.shape == levels.shape and (jpeg != levels).any()
    assert torch.equal(purify.apply("jpeg:75", levels), jpeg)  # deterministic
    smooth = torch.from_numpy(np.asarray(astronaut().resize((64, 64)))).permute(2, 0, 1).contiguous()
    for codec in ("webp:75", "avif:60", "heic:60"):  # the re-saves platforms and phones make today
        saved = purify.apply(codec, smooth)
        assert saved.shape == smooth.shape and (saved != smooth).any() and torch.equal(purify.apply(codec, smooth), saved)
        assert (saved.float() - smooth.float()).abs().mean() < 10, codec  # the photo, re-encoded (another: ~60)
    assert (purify.apply("webp:20", smooth).float() - smooth.float()).abs().mean() > (
        purify.apply("webp:90", smooth).float() - smooth.float()).abs().mean()  # the quality is the codec's
    blurred = purify.apply("blur:1.5", levels)
    assert blurred.float().std() < levels.float().std() * 0.7  # blur removes high frequencies
    resized = purify.apply("resize:0.5", levels)
    assert resized.shape == levels.shape and (resized != levels).any()
    jitter = purify.apply("colorjitter", levels, uid="a")
    assert torch.equal(purify.apply("colorjitter", levels, uid="a"), jitter)
    grey = purify.apply("grey", levels)
    luma = torch.from_numpy(np.asarray(levels_to_pil(levels).convert("L")).copy())
    assert (grey == luma).all() and not (levels == luma).all()  # every channel the luma a viewer shows
    assert ((purify.apply("grey:0.5", levels).float() - levels.float()).abs().mean()
            < (grey.float() - levels.float()).abs().mean())
    assert purify.label("jpeg:75") == "jpeg75" and purify.label("resize:0.5") == "resize0.5"
    assert purify.label("resize:0.5>jpeg:50") == "resize0.5-jpeg50"
    assert torch.equal(purify.apply("resize:0.5>jpeg:50", levels), purify.apply("jpeg:50", resized))
    ramp = torch.arange(3 * 16 * 16, dtype=torch.int32).reshape(3, 16, 16).to(torch.uint8)
    cut = purify.apply("crop:3", ramp)  # the photo moved up and left by 3 pixels, its size kept
    assert cut.shape == ramp.shape and torch.equal(cut[:, :13, :13], ramp[:, 3:, 3:])
    assert torch.equal(cut[:, 13:, :13], ramp[:, 15:, 3:].expand(3, 3, 13))  # the bottom border repeated
    assert torch.equal(cut[:, :13, 13:], ramp[:, 3:, 15:].expand(3, 13, 3))  # and the right one
    assert torch.equal(purify.apply("crop:0", ramp), ramp) and purify.label("crop:3") == "crop3"
    with pytest.raises(ConfigError, match="the image is only 16x16"):
        purify.apply("crop:16", ramp)
    with pytest.raises(ConfigError, match="unknown purification"):
        purify.apply("resize:0.5>sharpen", levels)
    for bad, message in (("jpeg:0", "out of range"), ("webp:101", "out of range"), ("resize:2", "out of range"),
                         ("blur:-1", "out of range"), ("blur:inf", "out of range"), ("blur:nan", "out of range"),
                         ("grey:1.5", "out of range"), ("crop:2.5", "out of range"), ("crop:-1", "out of range"),
                         ("jpeg:abc", "'abc' is not a number"), ("sharpen:1", "unknown purification")):
        with pytest.raises(ConfigError, match=message):
            purify.parse(bad)


def test_same_seed_same_edit_whatever_the_batch():
    editor = Editor(EditorSpec(kind="tiny-random", steps=3), torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    both = editor(images, "Let the person wear sunglasses", [11, 22])
    alone = editor(images[1:], "Let the person wear sunglasses", [22])
    assert torch.equal(both[1], alone[0])
    other_seed = editor(images[1:], "Let the person wear sunglasses", [23])
    assert not torch.equal(other_seed[0], alone[0])


@pytest.fixture
def protected_set(face_folder, tmp_path):
    """A tiny `fit` run over the two real portraits."""
    out = tmp_path / "protected"
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir", out,
                   "--trainer.enable_progress_bar", "false") == 0
    return out


def test_edit_names_the_photos_a_protected_set_has_no_image_of(face_folder, protected_set, tmp_path, caplog, cli_here):
    """A protected image deleted after `fit`: `edit` left the photo out of the set without a word. A set that holds
    none (a wrong folder) was edited as an empty set: only the clean photos, at the full cost of the editor."""
    (protected_set / "images" / "astronaut.png").unlink()
    caplog.set_level("INFO")
    out = tmp_path / "eval"
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
            f"{{facelock: {protected_set}}}", "--purify", "[jpeg:75]", "--prompt_ids", "[0]"]
    assert cli_here(*edit, "--output_dir", out).returncode == 0
    assert caplog.text.count("has no protected image") == 1  # once for the set, not again per purification
    assert "set 'facelock' has no protected image of 1 photo(s) (astronaut)" in caplog.text
    edits = sorted(p.relative_to(out / "edits").as_posix() for p in (out / "edits").rglob("*.png"))
    assert edits == ["clean/0/astronaut.png", "clean/0/grace_hopper.png", "facelock+jpeg75/0/grace_hopper.png",
                     "facelock/0/grace_hopper.png"]
    (protected_set / "images" / "grace_hopper.png").unlink()
    refused = cli_here(*edit, "--output_dir", tmp_path / "eval-none")
    assert refused.returncode == 2 and "protected set 'facelock': " in refused.stderr
    assert "holds no protected image of the 2 photo(s) in data.source (astronaut, grace_hopper)" in refused.stderr
    assert not (tmp_path / "eval-none").exists()


def test_a_set_protected_into_a_dataset_only_is_edited_from_it(face_folder, protected_set, tmp_path, cli_here):
    """`fit --model.output_format parquet` writes no PNG: `edit` found no protected image in the folder."""
    as_dataset = tmp_path / "as-dataset"
    assert cli_here("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir",
                    as_dataset, "--trainer.enable_progress_bar", "false", "--model.output_format", "parquet").returncode == 0
    assert not (as_dataset / "images").exists()
    out = tmp_path / "eval"
    edit = cli_here("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
                    f"{{png: {protected_set}, dataset: {as_dataset}}}", "--purify", "[jpeg:75]", "--prompt_ids", "[0]",
                    "--output_dir", out)
    assert edit.returncode == 0 and "no protected image" not in edit.stderr, edit.stderr[-2000:]
    for uid in ("astronaut", "grace_hopper"):  # the same protection, written two ways: the same edits
        for name in ("png", "png+jpeg75"):
            from_png = (out / "edits" / name / "0" / f"{uid}.png").read_bytes()
            assert (out / "edits" / name.replace("png", "dataset") / "0" / f"{uid}.png").read_bytes() == from_png


def test_an_edit_whose_folder_is_deleted_stops_never_making_it_anew(face_folder, protected_set, tmp_path, cli_here,
                                                                    monkeypatch):
    """`edit` went on into a folder it made anew, without its lock and record, and said every edit was written."""
    import shutil

    import facelock_pl.evaluation.edit as edit_module

    out, real_write, written = tmp_path / "eval", edit_module.write_bytes_atomic, []

    def write_then_delete(path, data):
        real_write(path, data)
        written.append(path)
        if len(written) == 1:
            shutil.rmtree(out)

    monkeypatch.setattr(edit_module, "write_bytes_atomic", write_then_delete)
    edit = cli_here("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
                    f"{{facelock: {protected_set}}}", "--batch_size", "1", "--output_dir", out)
    assert edit.returncode == 1 and "Traceback" not in edit.stderr, edit.stderr[-2000:]
    assert f"edit: stopped: the output folder {out} was deleted" in edit.stderr.strip().splitlines()[-1]
    assert len(written) == 1 and not out.exists()


def test_a_dataset_shard_is_edited_and_evaluated_from_the_dataset_it_came_from(face_folder, tmp_path, cli_here):
    """`fit` protects datasets (the design card's CelebA-HQ shards), but `edit` and `evaluate` read the clean photos
    from a folder only ("is not a folder or an image file"); and they edited every photo of the source, not only the
    ones the protected sets were made from (a shard's, or `--data.limit`'s)."""
    photos = sorted(face_folder.iterdir())
    source = tmp_path / "portraits.parquet"
    datasets.Dataset.from_dict(
        {"name": [p.stem for p in photos], "image": [{"bytes": p.read_bytes(), "path": None} for p in photos]},
        features=datasets.Features({"name": datasets.Value("string"), "image": datasets.Image()}),
    ).to_parquet(str(source))
    protected, out = tmp_path / "protected", tmp_path / "eval"
    assert cli_here("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--data.id_column",
                    "name", "--data.num_shards", "2", "--data.shard_index", "1", "--output_dir", protected,
                    "--trainer.enable_progress_bar", "false").returncode == 0  # shard 1 of 2: the second photo
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--sets", f"{{facelock: {protected}}}",
            "--purify", "[]", "--prompt_ids", "[0]", "--output_dir", out]
    other_uids = cli_here(*edit, "--data.source", source)  # without the id column `fit` named the photos by
    assert other_uids.returncode == 2 and not out.exists()
    assert (f"no photo in {source} is one the protected sets were made from (they hold grace_hopper; it has "
            "train-000000, train-000001)") in other_uids.stderr
    assert cli_here(*edit).returncode == 0  # no data.source: the dataset and its options, as `fit` recorded them
    assert json.loads((out / "edits" / "edit.json").read_text())["data"]["id_column"] == "name"
    assert sorted(p.relative_to(out / "edits").as_posix() for p in (out / "edits").rglob("*.png")) == [
        "clean/0/grace_hopper.png", "facelock/0/grace_hopper.png"]
    evaluate = ["evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out]
    assert cli_here(*evaluate).returncode == 0
    frame = pd.read_parquet(out / "report" / "per_image.parquet")
    assert sorted(zip(frame["set"], frame["uid"])) == [("clean", "grace_hopper"), ("facelock", "grace_hopper")]
    assert frame.loc[frame["set"] == "facelock", "lpips"].notna().all()

    moved = source.rename(tmp_path / "moved.parquet")  # found where it went, read with the options it was edited with
    assert "are not there" in cli_here(*evaluate).stderr
    read_otherwise = cli_here(*evaluate, "--data.source", moved, "--data.resolution", "64")
    assert read_otherwise.returncode == 2 and "names other photos than the edited" in read_otherwise.stderr
    read_alike = cli_here(*evaluate, "--data.source", moved, "--data.id_column", "name", "--data.resolution", "64")
    assert read_alike.returncode == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "report" / "per_image.parquet"), frame)
    # A hub id is recorded as given, never as a path below the working folder, and is never "not there".
    hub = DataSpec("mattymchen/celeba-hq").absolute()
    assert hub.source == "mattymchen/celeba-hq" and not hub.local and not hub.missing
    assert DataSpec("faces/celebahq", format="folder").absolute().source == str(Path("faces/celebahq").resolve())


def test_edit_without_a_source_reads_the_one_the_sets_were_made_from(face_folder, protected_set, tmp_path, cli_here):
    """`edit` needed `--data.source` repeated (for a dataset, every `data.*` option `fit` had), and the shipped edit
    configs' `source: ""` was read as the folder of the config file."""
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--purify", "[]", "--prompt_ids", "[0]"]
    out = tmp_path / "eval"
    recorded = cli_here(*edit, "--sets", f"{{facelock: {protected_set}}}", "--output_dir", out)
    assert recorded.returncode == 0, recorded.stderr[-2000:]
    assert f"the clean photos: {face_folder}, as set 'facelock' recorded (source.json)" in recorded.stderr
    assert json.loads((out / "edits" / "edit.json").read_text())["data"]["source"] == str(face_folder)
    assert sorted(p.relative_to(out / "edits").as_posix() for p in (out / "edits").rglob("*.png")) == [
        "clean/0/astronaut.png", "clean/0/grace_hopper.png", "facelock/0/astronaut.png", "facelock/0/grace_hopper.png"]

    other = shutil.copytree(protected_set, tmp_path / "other")  # as if made from a copy of the photos elsewhere
    (other / "source.json").write_text(json.dumps({**json.loads((other / "source.json").read_text()),
                                                   "source": str(tmp_path / "copy")}))
    both = ["--sets", f"{{facelock: {protected_set}, other: {other}}}", "--output_dir", tmp_path / "eval-both"]
    mixed = cli_here(*edit, *both)
    assert mixed.returncode == 2 and "the protected sets were made from different sources or read them otherwise " \
        f"(facelock: {face_folder}; other: {tmp_path / 'copy'}; see their source.json)" in mixed.stderr
    assert cli_here(*edit, *both, "--data.source", face_folder).returncode == 0  # named: no question which
    part = tmp_path / "part"  # a source that lacks a photo the set was made from: named, not silently left out
    part.mkdir()
    shutil.copy(face_folder / "astronaut.png", part)
    partial = cli_here(*edit, "--sets", f"{{facelock: {protected_set}}}", "--data.source", part, "--output_dir",
                       tmp_path / "eval-part")
    assert partial.returncode == 0 and f"1 photo(s) the protected sets were made from are not in {part} " \
        "(grace_hopper): they are left out" in partial.stderr
    for folder in (protected_set, other):
        (folder / "source.json").unlink()  # made by a version that did not record it
    unrecorded = cli_here(*edit, "--sets", f"{{facelock: {protected_set}}}", "--output_dir", tmp_path / "eval-none")
    assert unrecorded.returncode == 2 and "data.source is empty: give the clean photos that `fit` protected" in \
        unrecorded.stderr and "the protected sets record none (no source.json)" in unrecorded.stderr


def test_edit_then_evaluate_end_to_end(face_folder, protected_set, tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "eval"
    common = ["--data.source", str(face_folder), "--sets", f"{{facelock: {protected_set}}}", "--output_dir", str(out)]
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", *common) == 0
    edits = sorted(p.relative_to(out / "edits").as_posix() for p in (out / "edits").rglob("*.png"))
    sets = ["clean", "facelock", "facelock+jpeg75", "facelock+resize0.5"]
    assert edits == sorted(f"{s}/{p}/{u}.png" for s in sets for p in (0, 13) for u in ("astronaut", "grace_hopper"))
    # Progress (not a terminal: a line each 5% of the work), up to every edit; an editor can take hours.
    done = [int(n) for n in re.findall(r"facelock_pl edit: edits (\d+)/16 elapsed \d+:\d\d ETA \d+:\d\d", caplog.text)]
    assert len(done) > 1 and done == sorted(done) and done[-1] == 16

    # Resume: nothing to redo; one missing edit is redone.
    caplog.clear()
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", *common) == 0
    assert "16 edits already done" in caplog.text and "0 edits written" in caplog.text
    (out / "edits" / "facelock" / "13" / "astronaut.png").unlink()
    caplog.clear()
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", *common) == 0
    assert "1 edits written" in caplog.text

    assert run_cli("evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out) == 0
    assert re.findall(r"facelock_pl evaluate: edits (\d+)/16 elapsed", caplog.text)[-1] == "16"
    report = out / "report"
    for name in ("table.md", "per_image.parquet", "by_set.csv", "by_prompt.csv", "overall.csv", "metrics.png", "index.html"):
        assert (report / name).is_file() and (report / name).stat().st_size > 100, name
    frame = pd.read_parquet(report / "per_image.parquet")
    assert len(frame) == 16 and set(frame["set"]) == set(sets)
    assert frame.loc[frame.set == "clean", "psnr"].isna().all()  # nothing to compare the clean edit with
    protected = frame[frame.set != "clean"]
    assert protected["psnr"].notna().all() and protected["ssim"].between(-1, 1).all() and (protected["lpips"] >= 0).all()
    assert frame["clip_i"].between(-1, 1).all() and {"fr:tiny-a", "fr:tiny-b"} <= set(frame.columns)
    table = (report / "table.md").read_text()
    # The paper's Table 1 order; the tiny editor's 64 px edits show no face, so FR has no data and no column.
    assert table.splitlines()[0].startswith("| set | PSNR ↓ | SSIM ↓ | LPIPS ↑ | CLIP-S ↓ | CLIP-I ↓ | FDFR ↑ |")
    assert "FR (tiny-a)" not in table.splitlines()[0] and frame["fr:tiny-a"].isna().all()
    assert all(f"| {s} |" in table for s in sets)
    page = (report / "index.html").read_text()
    assert "source | protected | edit of clean | edit of protected" in page
    assert "<th>working image</th>" in page and "<td>64 px</td>" in page  # as the set's protection.json records it
    assert not re.search(r'src="(?!data:)', page)  # self-contained

    # One network behind two crop conventions: each scored, and the worst of the two reported.
    crops = "[{kind: tiny-random, name: tiny-a}, {kind: tiny-random, name: tiny-a@arcface, alignment: arcface}]"
    assert run_cli("evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out, "--recognizers", crops) == 0
    frame = pd.read_parquet(report / "per_image.parquet")
    both = frame[["fr_all:tiny-a", "fr_all:tiny-a@arcface"]]
    assert (both.iloc[:, 0] != both.iloc[:, 1]).all()
    assert np.allclose(frame["fr_all:tiny-a@worst"], both.max(axis=1))


def test_evaluate_scores_what_edit_recorded_and_refuses_what_it_did_not(face_folder, protected_set, tmp_path, capsys):
    out = tmp_path / "eval"
    evaluate = ["evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out]

    def refused(*args) -> str:
        assert run_cli(*args) == 2
        return capsys.readouterr().err

    assert "run `python -m facelock_pl edit` first" in refused(*evaluate)
    assert "batch_size must be at least 1 and samples at least 0 (got 0 and 2)" in refused(*evaluate, "--batch_size", "0")
    assert "(got 8 and -1)" in refused(*evaluate, "--samples", "-1")  # was accepted: every sample but the last shown
    assert "recognizers is empty" in refused(*evaluate, "--recognizers", "[]")  # was facenet, without a word
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--output_dir", out,
            "--prompt_ids", "[0]"]
    assert run_cli(*edit, "--sets", f"{{facelock: {protected_set}}}", "--purify", "[jpeg:75]") == 0
    record = json.loads((out / "edits" / "edit.json").read_text())
    assert record["sets"] == {"facelock": str(protected_set.resolve())} and record["purify"] == ["jpeg:75"]
    assert record["prompt_ids"] == [0] and record["data"]["source"] == str(face_folder.resolve())

    assert "not edited in this output folder: purification 'blur:1.5'" in refused(*evaluate, "--purify", "[blur:1.5]")
    assert "set 'other'" in refused(*evaluate, "--sets", f"{{other: {protected_set}}}")
    assert "prompt_ids is empty" in refused(*evaluate, "--prompt_ids", "[]")  # was an IndexError in the tokenizer
    capsys.readouterr()
    assert run_cli(*evaluate, "--purify", "[]") == 0  # a narrower report: no purified set
    frame = pd.read_parquet(out / "report" / "per_image.parquet")
    assert set(frame["set"]) == {"clean", "facelock"} and set(frame["prompt_id"]) == {0}
    assert "lacks" not in capsys.readouterr().err

    # An edit stopped half-way: the report covers what exists, and says what it lacks (a set could vanish from it).
    (out / "edits" / "facelock" / "0" / "grace_hopper.png").unlink()
    assert run_cli(*evaluate, "--purify", "[]") == 0
    assert "set 'facelock' lacks 1 of its 2 edits" in capsys.readouterr().err

    # A later edit may add prompts; one with another editor setting would not compare, so it is refused.
    assert run_cli(*edit[:-2], "--prompt_ids", "[13]", "--sets", f"{{facelock: {protected_set}}}") == 0
    assert json.loads((out / "edits" / "edit.json").read_text())["prompt_ids"] == [0, 13]
    assert "other editor" in refused(*edit, "--editor.steps", "5")


def test_an_edit_resumes_with_its_editor_weights_moved_but_not_with_other_weights(face_folder, protected_set, tmp_path,
                                                                                  capsys):
    """Edits made with the bundle's weights were refused as "edits made with other editor" once the bundle moved."""
    weights, out = tmp_path / "pipeline", tmp_path / "eval"
    weights.mkdir()
    (weights / "unet.safetensors").write_bytes(b"unet")  # the tiny random editor loads nothing: the path is recorded
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
            f"{{facelock: {protected_set}}}", "--purify", "[]", "--prompt_ids", "[0]", "--output_dir", out]
    assert run_cli(*edit, "--editor.path", weights) == 0
    record = json.loads((out / "edits" / "edit.json").read_text())
    assert list(record["files"]) == [str(weights)] and record["files"][str(weights)].startswith("sha256:")
    scratch = tmp_path / "scratch"
    weights.rename(scratch)
    capsys.readouterr()
    assert run_cli(*edit, "--editor.path", scratch) == 0
    assert "4 edits already done" in capsys.readouterr().err  # clean and protected, one prompt, two photos
    assert json.loads((out / "edits" / "edit.json").read_text()) == record
    (scratch / "unet.safetensors").write_bytes(b"fine-tuned")
    assert run_cli(*edit, "--editor.path", scratch) == 2 and "other editor" in capsys.readouterr().err

    # A record made before the digests: the weights named elsewhere merge where the recorded path holds the same bytes.
    del record["files"]
    (out / "edits" / "edit.json").write_text(json.dumps(record))
    weights.mkdir()
    (weights / "unet.safetensors").write_bytes(b"unet")
    assert run_cli(*edit, "--editor.path", scratch) == 2 and "other editor" in capsys.readouterr().err  # fine-tuned
    (scratch / "unet.safetensors").write_bytes(b"unet")
    assert run_cli(*edit, "--editor.path", scratch) == 0 and "4 edits already done" in capsys.readouterr().err
    shutil.rmtree(weights)
    assert run_cli(*edit, "--editor.path", scratch) == 2 and "other editor" in capsys.readouterr().err  # nothing to compare


def test_evaluate_finds_the_clean_photos_where_they_moved_and_checks_each(face_folder, protected_set, tmp_path, capsys,
                                                                         caplog):
    """The clean folder or a protected set moved, or the edits were copied to another machine: `evaluate` stopped
    (with a traceback for the photos) and could not be pointed at their new place."""
    clean, out = tmp_path / "clean", tmp_path / "eval"
    shutil.copytree(face_folder, clean)
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", clean, "--sets",
                   f"{{facelock: {protected_set}}}", "--purify", "[]", "--prompt_ids", "[0]", "--output_dir", out) == 0
    evaluate = ["evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out]
    assert run_cli(*evaluate) == 0
    before = pd.read_parquet(out / "report" / "per_image.parquet")

    def refused(*args) -> str:
        capsys.readouterr()  # this call's output only
        assert run_cli(*args) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "error: " in err.strip().splitlines()[-1], err
        return err.strip().splitlines()[-1]

    moved = clean.rename(tmp_path / "moved")
    err = refused(*evaluate)
    assert "are not there" in err and "--data.source SOURCE --data.resolution 64" in err
    assert run_cli(*evaluate, "--data.source", moved, "--data.resolution", "64") == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "report" / "per_image.parquet"), before)
    # The protected set moved too: named with its new folder, it is read from there.
    protected = protected_set.rename(tmp_path / "protected-moved")
    assert "name its new place with --sets '{facelock: DIR}'" in refused(*evaluate, "--data.source", moved, "--data.resolution", "64")
    assert run_cli(*evaluate, "--data.source", moved, "--data.resolution", "64", "--sets", f"{{facelock: {protected}}}") == 0
    pd.testing.assert_frame_equal(pd.read_parquet(out / "report" / "per_image.parquet"), before)
    assert "<td>64 px</td>" in (out / "report" / "index.html").read_text()  # its protection.json read where it is now
    # `edit` into the same folder takes both new places: the edits made before are kept, the record follows them.
    made = {path: path.stat().st_mtime_ns for path in (out / "edits").rglob("*.png")}
    caplog.clear()
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", moved, "--sets",
                   f"{{facelock: {protected}}}", "--purify", "[]", "--prompt_ids", "[13]", "--output_dir", out) == 0
    assert "4 edits written" in caplog.text and "set 'facelock' is read from" in caplog.text  # prompt 13's only
    assert {path: path.stat().st_mtime_ns for path in made} == made
    record = json.loads((out / "edits" / "edit.json").read_text())
    assert record["data"]["source"] == str(moved) and record["sets"] == {"facelock": str(protected)}
    assert run_cli(*evaluate) == 0 and set(pd.read_parquet(out / "report" / "per_image.parquet")["prompt_id"]) == {0, 13}

    other = tmp_path / "other"
    other.mkdir()
    astronaut().rotate(5).save(other / "someone.png")  # another person's photo
    elsewhere = ["--data.source", other, "--data.resolution", "64", "--sets", f"{{facelock: {protected}}}"]
    assert "no photo in" in refused(*evaluate, *elsewhere)
    (other / "someone.png").rename(other / "astronaut.png")  # the name edited, other bytes: not the photo edited
    assert "no clean source in" in refused(*evaluate, *elsewhere)
    nowhere = tmp_path / "nowhere"
    assert f"data.source {nowhere} does not exist" in refused(
        "edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", nowhere, "--output_dir", out)


def test_fr_is_measured_on_real_faces_and_no_face_counts_as_fdfr():
    from conftest import astronaut
    from facelock_pl.models import FaceScorer, RecognizerSpec

    scorer = FaceScorer([RecognizerSpec(kind="tiny-random")], torch.device("cpu"))
    face = torch.from_numpy(np.asarray(astronaut().resize((128, 128)))).permute(2, 0, 1)
    noise = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    geometry, (emb,) = scorer.embed(torch.stack([face, noise]))
    assert geometry.found.tolist() == [True, False]
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)
    # Where no face is found, the embedding is of the fallback geometry: the crop where the face was.
    _, (fallback_emb,) = scorer.embed(torch.stack([noise, noise]), geometry.select([0, 0]))
    _, (crop_emb,) = scorer.embed(torch.stack([face]))
    assert not torch.allclose(fallback_emb[0], emb[1])  # not the whole noise image
    theta = scorer.recognizers[0].theta(geometry.select([0]), (128, 128))
    assert torch.allclose(fallback_emb[0], scorer.recognizers[0].embed(levels_to_pm1(noise[None]), theta)[0], atol=1e-5)


@pytest.mark.parametrize(("sets", "purifications", "message"), [
    ("{p: NOWHERE}", "[]", "protected set 'p': "),
    ("{clean: NOWHERE}", "[]", "set name 'clean' is reserved"),
    ("{p: PROTECTED}", "[jpeg:abc]", "purification 'jpeg:abc': 'abc' is not a number"),  # was a traceback
    ("{p: PROTECTED}", "[blur:inf]", "purification 'blur:inf' is out of range"),  # was a traceback after recording it
])
def test_edit_refuses_a_set_it_cannot_read_in_one_line(face_folder, protected_set, tmp_path, capsys, sets, purifications,
                                                        message):
    """Refused before anything is recorded: a mistyped folder or purification must not pin the output's record."""
    out = tmp_path / "eval"
    sets = sets.replace("NOWHERE", str(tmp_path / "nowhere")).replace("PROTECTED", str(protected_set))
    code = run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", str(face_folder),
                   "--sets", sets, "--purify", purifications, "--output_dir", str(out))
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--prompt_ids", "[99]", "prompt ids [99] are not in"),
    ("--prompt_ids", "[]", "prompt_ids is empty"),
    ("--prompts", "nowhere.yaml", "prompt file 'nowhere.yaml' not found"),
    ("--batch_size", "0", "batch_size must be at least 1"),  # was a traceback after edit.json was written
    ("--data.resolution", "7", "data.resolution must be 'native', or at least 32 and a multiple of 8"),
    ("--data.limit", "0", "data.limit must be at least 1"),
    ("--device", "gpu0", "device 'gpu0': "),  # torch's own words follow
    pytest.param("--device", "cuda", "device 'cuda': no CUDA GPU is visible here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")),
])
def test_edit_refuses_an_option_it_cannot_use_in_one_line(face_folder, protected_set, tmp_path, capsys, option, value,
                                                           message):
    """Each was a traceback (exit 1) or an edit at a size no editor takes; refused before anything is recorded."""
    out = tmp_path / "eval"
    code = run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
                   f"{{facelock: {protected_set}}}", option, value, "--output_dir", out)
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not out.exists() or not any(out.rglob("*"))


def test_an_editor_that_cannot_load_does_not_pin_the_output_folder(face_folder, protected_set, tmp_path, capsys):
    """The hub editor without network failed after `edit.json` was written: the folder was then pinned to it, and the
    offline editor a user turns to next was refused ("edits made with other sources")."""
    out = tmp_path / "eval"
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
            f"{{facelock: {protected_set}}}", "--prompt_ids", "[0]", "--output_dir", out]
    assert run_cli(*edit, "--editor.kind", "instruct-pix2pix", "--editor.path", tmp_path / "nowhere") == 2
    assert "Cannot load the weights" in capsys.readouterr().err
    assert not (out / "edits" / "edit.json").exists()
    assert run_cli(*edit) == 0 and json.loads((out / "edits" / "edit.json").read_text())["editor"]["kind"] == "tiny-random"


def test_edit_and_evaluate_take_the_output_folder_one_at_a_time(face_folder, protected_set, tmp_path, capsys):
    """Two edits into one folder each saved their own edit.json (the last won: the other's edits went unrecorded)."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / ".facelock.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid()}))  # alive
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
            f"{{facelock: {protected_set}}}", "--prompt_ids", "[0]", "--output_dir", out]
    for command in (edit, ["evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out]):
        assert run_cli(*command) == 2
        assert f"another run is writing into {out} (process {os.getppid()}" in capsys.readouterr().err
    assert sorted(path.name for path in out.iterdir()) == [".facelock.lock"]  # nothing written, the holder's lock kept
    (out / ".facelock.lock").unlink()
    assert run_cli(*edit) == 0 and not (out / ".facelock.lock").exists()  # released when done


def test_a_stopped_edit_keeps_its_edits_releases_its_folder_and_says_so(face_folder, protected_set, tmp_path,
                                                                       cli_here):
    """Ctrl-C said "interrupted before the run started; nothing was protected" (fit's words) with edits written; a
    SIGTERM (a cluster's time limit) left the folder's lock behind. SIGTERM now stops an edit as Ctrl-C does."""
    out = tmp_path / "eval"
    edit = ["edit", "--config", str(ROOT / "configs" / "edit-tiny.yaml"), "--data.source", str(face_folder), "--sets",
            f"{{facelock: {protected_set}}}", "--purify", "[]", "--prompt_ids", "[0, 1]", "--editor.steps", "20",
            "--output_dir", str(out)]
    run = subprocess.Popen([sys.executable, "-m", "facelock_pl", *edit], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    while run.poll() is None and not any(out.rglob("*.png")):
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    made = len(list(out.rglob("*.png")))
    assert run.returncode == 5 and "interrupted; the edits written so far are kept" in stderr, stderr[-2000:]
    assert 0 < made < 2 * 2 * 2 and not (out / ".facelock.lock").exists()  # sets (clean, facelock) x prompts x photos
    again = cli_here(*edit)  # the rerun needs no process of its own
    assert again.returncode == 0 and f"{made} edits already done" in again.stderr
    assert len(list(out.rglob("*.png"))) == 2 * 2 * 2


def test_edit_leaves_out_a_clean_photo_that_is_not_the_one_a_set_protected(face_folder, protected_set, tmp_path, caplog,
                                                                          capsys):
    """Comparing a set's image with another photo under its uid would measure two photos, not a protection."""
    caplog.set_level("INFO")
    clean, out = tmp_path / "clean", tmp_path / "eval"
    shutil.copytree(face_folder, clean)
    astronaut().rotate(3).save(clean / "astronaut.png")  # edited since it was protected
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--sets", f"{{facelock: {protected_set}}}",
            "--purify", "[]", "--prompt_ids", "[0]"]
    assert run_cli(*edit, "--data.source", clean, "--output_dir", out) == 0
    assert "skipping astronaut.png: not the photo that facelock protected as astronaut" in caplog.text
    assert sorted(p.relative_to(out / "edits").as_posix() for p in (out / "edits").rglob("*.png")) == [
        "clean/0/grace_hopper.png", "facelock/0/grace_hopper.png"]

    grace_hopper().rotate(3).save(clean / "grace_hopper.jpg", quality=95)
    capsys.readouterr()
    assert run_cli(*edit, "--data.source", clean, "--output_dir", tmp_path / "none") == 2
    err = capsys.readouterr().err
    assert "no clean source in" in err and "Traceback" not in err
    assert not (tmp_path / "none").exists() or not any((tmp_path / "none").rglob("*"))  # nothing recorded


def test_a_photo_replaced_after_its_edits_is_edited_again_and_never_scored_with_the_old_edits(face_folder, protected_set,
                                                                                              tmp_path, caplog):
    caplog.set_level("INFO")
    out = tmp_path / "eval"
    edit = ["edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
            f"{{facelock: {protected_set}}}", "--purify", "[]", "--prompt_ids", "[0]", "--output_dir", out]
    evaluate = ["evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out]
    assert run_cli(*edit) == 0
    before = (out / "edits" / "clean" / "0" / "astronaut.png").read_bytes()
    astronaut().rotate(3).save(face_folder / "astronaut.png")  # then protected again, as `fit` does on a rerun
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir",
                   protected_set, "--trainer.enable_progress_bar", "false") == 0

    caplog.clear()
    assert run_cli(*evaluate) == 0  # the old edits are not of this photo: left out until `edit` runs again
    assert "skipping astronaut.png: the photo changed after it was edited" in caplog.text
    assert set(pd.read_parquet(out / "report" / "per_image.parquet")["uid"]) == {"grace_hopper"}

    caplog.clear()
    assert run_cli(*edit) == 0
    assert "1 photo(s) changed since they were edited (astronaut)" in caplog.text and "2 edits written" in caplog.text
    assert (out / "edits" / "clean" / "0" / "astronaut.png").read_bytes() != before
    assert run_cli(*evaluate) == 0
    assert set(pd.read_parquet(out / "report" / "per_image.parquet")["uid"]) == {"astronaut", "grace_hopper"}


def test_clip_s_is_on_raw_features_as_published_or_normalised_on_request():
    raw = metrics.ClipScorer(metrics.ClipSpec(kind="tiny-random"), torch.device("cpu"))
    normalised = metrics.ClipScorer(metrics.ClipSpec(kind="tiny-random", directional="normalised"), torch.device("cpu"))
    source, edit, text = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([[0.0, 1.0]])
    # raw: edit − source = (−3, 1) -> cos with (0, 1) = 1/sqrt(10); normalised: (−1, 1) -> 1/sqrt(2)
    assert raw.directional(source, edit, text).item() == pytest.approx(1 / math.sqrt(10), abs=1e-6)
    assert normalised.directional(source, edit, text).item() == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    images = torch.randint(0, 256, (2, 3, 40, 56), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(raw.image_features(images).norm(dim=-1), torch.ones(2))  # unnormalised, as published


@pytest.mark.parametrize("kind, named", [("instruct-pix2pix", "InstructPix2Pix"), ("img2img", "Img2Img")])
def test_missing_editor_weights_are_a_clear_error(monkeypatch, tmp_path, kind, named):
    from facelock_pl.models import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match=f"StableDiffusion{named}Pipeline.*nothing-here.*vae-roundtrip"):
        Editor(EditorSpec(kind=kind, path=str(tmp_path / "nothing-here")), torch.device("cpu"))


def test_a_budget_sweep_protects_one_folder_per_budget_and_reports_one_row_each(face_folder, tmp_path, caplog):
    caplog.set_level("INFO")
    sweep, out = tmp_path / "sweep", tmp_path / "eval"
    fit = ["fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", face_folder, "--output_dir", sweep,
           "--sweep_eps", "[0.01, 0.03]", "--trainer.enable_progress_bar", "false"]
    assert run_cli(*fit) == 0
    budgets = {path.name: read_manifest(path)["linf_255"].max() for path in sorted(sweep.iterdir())}
    assert budgets == {"eps-0.01": 1.0, "eps-0.03": 3.0}  # ⌊ε·127.5⌋ levels at each budget
    caplog.clear()
    assert run_cli(*fit) == 0 and caplog.text.count("skipping 2 already protected") == 2  # resumable, per budget
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", face_folder, "--sets",
                   f"{{facelock: {sweep}}}", "--purify", "[]", "--prompt_ids", "[0]", "--output_dir", out) == 0
    assert run_cli("evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", out) == 0
    table = (out / "report" / "table.md").read_text()
    assert "| facelock@eps0.01 |" in table and "| facelock@eps0.03 |" in table


def test_the_budget_plot_draws_fr_against_eps(tmp_path):
    from facelock_pl.evaluation.report import _budget_plot

    by_set = pd.DataFrame({"fr:r_mean": [0.9, 0.5, 0.1], "fr:r_std": [0.0] * 3}, index=["clean", "a@eps0.01", "a@eps0.03"])
    assert _budget_plot(by_set, ["r"], tmp_path / "plot.png") and (tmp_path / "plot.png").stat().st_size > 1000
    assert not _budget_plot(by_set.loc[["clean"]], ["r"], tmp_path / "none.png")


def test_img2img_edits_as_configured_with_one_seed_per_image(face_folder, protected_set, tmp_path):
    editor = Editor(EditorSpec(kind="tiny-img2img", steps=3), torch.device("cpu"))
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    both = editor(images, "Let the person wear sunglasses", [11, 22])
    assert torch.equal(both[1], editor(images[1:], "Let the person wear sunglasses", [22])[0]) and not torch.equal(both, images)
    out = tmp_path / "eval"
    assert run_cli("edit", "--config", ROOT / "configs" / "edit-img2img.yaml", "--editor.kind", "tiny-img2img",
                   "--editor.steps", "2", "--data.source", face_folder, "--data.resolution", "64", "--sets",
                   f"{{facelock: {protected_set}}}", "--prompt_ids", "[0]", "--output_dir", out) == 0
    assert len(list((out / "edits").rglob("*.png"))) == 4
    assert json.loads((out / "edits" / "edit.json").read_text())["editor"]["strength"] == 0.5
    # strength is recorded only for img2img: edits recorded before it existed still merge with new ones
    assert "strength" not in EditorSpec().record() and EditorSpec(kind="img2img", strength=0.3).record()["strength"] == 0.3


def test_a_network_behind_several_crops_is_judged_by_its_worst():
    from facelock_pl.evaluation.evaluate import worst_over_crops

    row = {"fr:sface": 0.2, "fr_all:sface": 0.2, "match:sface": 0.0, "fr:sface@box0": 0.5, "fr_all:sface@box0": 0.5,
           "match:sface@box0": 1.0, "fr:dlib": 0.9, "fr_all:dlib": 0.9, "match:dlib": 0.0}
    worst = worst_over_crops(row, ["sface", "sface@box0", "dlib"])
    assert worst == {"fr:sface@worst": 0.5, "fr_all:sface@worst": 0.5, "match:sface@worst": 1.0}  # dlib: one crop only
    no_face = worst_over_crops({**row, "fr:sface": math.nan}, ["sface", "sface@box0"])
    assert math.isnan(no_face["fr:sface@worst"]) and no_face["fr_all:sface@worst"] == 0.5


def test_a_photo_lying_down_and_its_edits_are_scored_turned_upright():
    """A source lying on its left and one upside down are read as the upright source is (their `source_turn`), and
    their edits, lying the same way, score as the upright photo's edit: face found, the same cosines."""
    from conftest import grace_hopper
    from facelock_pl.evaluation.evaluate import Scorers, SourceFeatures, _score
    from facelock_pl.evaluation.sets import ImageSet
    from facelock_pl.models import FaceScorer, RecognizerSpec

    faces = FaceScorer([RecognizerSpec(kind="tiny-random")], torch.device("cpu"))
    upright = torch.from_numpy(np.asarray(grace_hopper().crop((0, 0, 512, 600)).resize((96, 112)))).permute(2, 0, 1)
    edit = (upright.int() + torch.randint(-6, 7, upright.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 255)
    edit = edit.to(torch.uint8)  # an "edit": the photo with some noise
    lying = {"up": 0, "left": 1, "down": 2}  # quarter turns from upright, counter-clockwise
    sources = {uid: torch.rot90(upright, turn, (1, 2)) for uid, turn in lying.items()}
    reference = SourceFeatures.of(sources, [["up"], ["left"], ["down"]], None, faces)
    assert reference.turn == {"up": 0, "left": 3, "down": 2}
    for uid in ("left", "down"):
        assert torch.allclose(reference.fr[uid][0], reference.fr["up"][0], atol=1e-6)
    scorers = Scorers(None, faces, None, torch.device("cpu"))
    rows = {}
    for uid, turn in lying.items():  # each on its own: the turned shapes differ (112x96 against 96x112)
        rows[uid] = _score(ImageSet("p", "P"), 0, [(uid, torch.rot90(edit, turn, (1, 2)))], {}, reference, None, scorers)[0]
    assert all(row["face_found"] for row in rows.values())
    assert [rows[uid]["source_turn"] for uid in lying] == [0, 3, 2]
    assert rows["left"]["fr:tiny-random"] == pytest.approx(rows["up"]["fr:tiny-random"], abs=1e-5)
    assert rows["down"]["fr:tiny-random"] == pytest.approx(rows["up"]["fr:tiny-random"], abs=1e-5)


def test_images_turned_to_different_sizes_are_embedded_apart_and_returned_in_order():
    from conftest import grace_hopper
    from facelock_pl.models import FaceScorer, RecognizerSpec

    faces = FaceScorer([RecognizerSpec(kind="tiny-random")], torch.device("cpu"))
    tall = torch.from_numpy(np.asarray(grace_hopper().crop((0, 0, 512, 600)).resize((96, 112)))).permute(2, 0, 1)
    wide = torch.from_numpy(np.asarray(grace_hopper().crop((0, 0, 512, 440)).resize((112, 96)))).permute(2, 0, 1)
    # Three images of one size (112x96); the second is `wide` lying on its right side: turned, it is 96x112.
    batch = torch.stack([tall, torch.rot90(wide, -1, (1, 2)), tall.flip(-1)])
    geometry, (embeddings,) = faces.embed_turned(batch, [0, 1, 0])
    alone = [faces.embed(image[None]) for image in (tall, wide, tall.flip(-1))]
    assert geometry.found.tolist() == [bool(g.found[0]) for g, _ in alone] == [True, True, True]
    for got, (_, (want,)) in zip(embeddings, alone):
        assert torch.allclose(got, want[0], atol=1e-6)
    assert torch.equal(geometry.boxes[1], alone[1][0].boxes[0])  # in the turned image's pixels


def test_the_report_gives_rates_their_wilson_interval_and_each_network_its_worst_crop(tmp_path):
    from scipy.stats import binomtest

    from facelock_pl.evaluation.rates import by_worst, wilson_95
    from facelock_pl.evaluation.report import (ReportContext, _fr_histograms, markdown_table, match_summary,
                                               networks_table, still_recognised)
    from facelock_pl.models import RecognizerSpec

    def wilson(k: int, n: int) -> str:
        interval = binomtest(k, n).proportion_ci(method="wilson")
        return f"[{100 * interval.low:.0f}–{100 * interval.high:.0f}]"

    # Set a: 4 edits, one without a face; crop `r` recognises 1 face, crop `r@box0` 2 others: by its worst, 3 of 4.
    frame = pd.DataFrame({
        "set": ["a"] * 4 + ["clean"] * 2, "prompt_id": [0] * 6, "uid": list("wxyzwx"), "psnr": [30.0] * 4 + [math.nan] * 2,
        "ssim": [0.9] * 4 + [math.nan] * 2, "face_found": [True, True, True, False, True, True],
        "fr:r": [0.5, 0.1, 0.1, math.nan, 0.9, 0.9], "match:r": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
        "fr:r@box0": [0.1, 0.6, 0.7, math.nan, 0.9, 0.9], "match:r@box0": [0.0, 1.0, 1.0, 0.0, 1.0, 1.0],
        "fr:r@worst": [0.5, 0.6, 0.7, math.nan, 0.9, 0.9], "match:r@worst": [1.0, 1.0, 1.0, 0.0, 1.0, 1.0],
    })
    specs = [RecognizerSpec(kind="onnx", weights="r.onnx", name="r", threshold=0.4),
             RecognizerSpec(kind="onnx", weights="r.onnx", name="r@box0", threshold=0.5)]
    context = ReportContext(specs, {"a": {"method": "facelock", "objective": {"fr_weight": 1.0},
                                          "recognizers": [{"kind": "onnx", "weights": "r.onnx"}]}}, {0: "p"}, prompt_free=True)
    by_set = aggregate(frame, ["set"], ["r", "r@box0"])
    expected = binomtest(1, 4).proportion_ci(method="wilson")
    assert by_set.loc["a", "match:r_mean"] == 0.25
    assert by_set.loc["a", ["match:r_low", "match:r_high"]].tolist() == pytest.approx([expected.low, expected.high])
    assert by_set.loc["a", "fdfr_mean"] == 0.25 and by_set.loc["clean", "fdfr_high"] == pytest.approx(wilson_95(0, 2)[1])
    assert by_set.loc["a", "match:r@worst_mean"] == 0.75 and by_set.loc["a", "fr:r@worst_mean"] == pytest.approx(0.6)
    assert "fr:r_low" not in by_set  # a cosine is a score with a spread, not a share
    table = markdown_table(by_set, frame, ["r", "r@box0"], context)
    assert f"| 25% {wilson(1, 4)} (in loss) |" in table and f"50% {wilson(2, 4)} (in loss)" in table
    assert f"| 25% {wilson(1, 4)} | 0.233 ± 0.231 (in loss)" in table  # FDFR, then FR(r) over the 3 faces found
    assert "100% [34–100]" in table.splitlines()[-1]  # 2 of 2: the interval of two edits, not a certain 100%
    networks = networks_table(by_set, frame, ["r", "r@box0"], context)
    assert networks.splitlines()[0] == "| set | r, worst of its crops ↓ | n |"
    assert f"| a | 75% {wilson(3, 4)} (cos 0.60) (in loss) | 4 |" in networks
    assert networks_table(by_set, frame.drop(columns=["fr:r@worst", "match:r@worst"]), ["r", "r@box0"], context) == ""
    summary = match_summary(by_set, frame, ["r", "r@box0"], context)  # the terminal's verdict: the same numbers
    assert summary[1].split() == ["set", "r", "(worst", "crop)"] and summary[2].split()[:3] == ["a", "75%", wilson(3, 4)]
    assert summary[2].endswith("(in loss)") and summary[3].split() == ["clean", "100%", "[34–100]"]
    assert match_summary(by_set, frame.drop(columns=[c for c in frame if c.startswith("match:")]), ["r"], context) == []

    # The photos to protect again: protected edits a judge still recognises (by its worst crop), never the clean ones.
    recognised = still_recognised(frame.assign(**{"match:q": [0.0, 1.0, 0.0, 0.0, 1.0, 1.0]}))
    assert recognised.to_dict("records") == [
        {"set": "a", "prompt_id": 0, "uid": "w", "recognised_by": "r"},
        {"set": "a", "prompt_id": 0, "uid": "x", "recognised_by": "r,q"},
        {"set": "a", "prompt_id": 0, "uid": "y", "recognised_by": "r"}]
    assert still_recognised(frame.drop(columns=[c for c in frame if c.startswith("match:")])).empty

    # One panel per network: by its worst crop where it has several; a lone crop with its threshold.
    assert _fr_histograms(frame, ["r", "r@box0"], dict(zip(["r", "r@box0"], specs)), tmp_path / "h.png") == ["r@worst"]
    one_crop = frame.drop(columns=["fr:r@worst", "match:r@worst"])
    assert _fr_histograms(one_crop, ["r"], {"r": specs[0]}, tmp_path / "one.png") == ["r"] and (tmp_path / "one.png").is_file()
    no_face = one_crop.assign(**{c: math.nan for c in one_crop.columns if c.startswith("fr:")})
    assert _fr_histograms(no_face, ["r"], {"r": specs[0]}, tmp_path / "none.png") == [] and not (tmp_path / "none.png").exists()

    assert by_worst(["sface", "sface@box0", "sface@worst", "dlib"]) == ["sface@worst", "dlib"]
    assert wilson_95(0.0, 16)[0] == 0 and wilson_95(0.0, 16)[1] == pytest.approx(0.194, abs=1e-3)
    assert all(low <= k / n <= high for n in range(1, 60) for k in range(n + 1) for low, high in [wilson_95(k / n, n)])

    # The metrics plot of 10 edits all recognised: the interval's upper end is the rate itself, not an ulp below.
    from facelock_pl.evaluation.report import _bars
    ten = pd.DataFrame({"set": ["a"] * 10, "face_found": [True] * 10, "fr:r": [0.9] * 10, "match:r": [1.0] * 10})
    _bars(aggregate(ten, ["set"], ["r"]), ten, ["r"], tmp_path / "bars.png")
    assert (tmp_path / "bars.png").stat().st_size > 1000
