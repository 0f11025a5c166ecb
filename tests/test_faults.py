"""Faults and hostile inputs, each through the real command line (issue: never lose or mix up a protected image).
Numbers refer to the cases of that issue. What depends on the process (signals from outside it, a lock's holder,
other ranks) runs `python -m facelock_pl` in a subprocess; the rest runs the same `main` in this process (`fit_here`),
which spares each run ~8 s of imports: a signal the run sends itself at a chosen point (`signalling`) included."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import ROOT, astronaut, grace_hopper
from facelock_pl.data.datamodule import CHANGED_SOURCE, changed_sources
from facelock_pl.data.images import BadImageError
from facelock_pl.data.items import sha256
from facelock_pl.outputs import read_manifest, withdraw
from test_distributed import clean_env, portraits


def fit_args(source: Path, out: Path, *extra, config: str = "tiny.yaml") -> list[str]:
    return ["fit", "--config", str(ROOT / "configs" / config), "--data.source", str(source), "--output_dir", str(out),
            "--trainer.enable_progress_bar", "false", *map(str, extra)]


def fit(source: Path, out: Path, *extra, config: str = "tiny.yaml", popen: bool = False, **kwargs):
    command = [sys.executable, "-m", "facelock_pl", *fit_args(source, out, *extra, config=config)]
    if popen:
        return subprocess.Popen(command, cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                **kwargs)
    return subprocess.run(command, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600, **kwargs)


@pytest.fixture
def fit_here(cli_here):
    """`fit` in this process; returns a CompletedProcess like `fit`."""
    return lambda source, out, *extra, **kwargs: cli_here(*fit_args(source, out, *extra, **kwargs))


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def one_line_error(result: subprocess.CompletedProcess, code: int = 2) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == code and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    return lines[0]


def face_folder(folder: Path, n: int = 2) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        [astronaut(), grace_hopper()][i % 2].resize((96, 96)).save(folder / f"face{i}.png")
    return folder


# 1 ------------------------------------------------------------------------------------------------------------
def test_source_columns_never_overwrite_the_protected_image_or_the_uid(tmp_path, fit_here):
    original, other = png(astronaut().resize((96, 96))), png(grace_hopper().resize((96, 96)))
    features = datasets.Features({"img": datasets.Image(), "image": datasets.Image(), "uid": datasets.Value("string")})
    datasets.Dataset.from_dict({"img": [{"bytes": original, "path": None}], "image": [{"bytes": other, "path": None}],
                                "uid": ["evil"]}, features=features).to_parquet(str(tmp_path / "rows.parquet"))
    result = fit_here(tmp_path / "rows.parquet", tmp_path / "out", "--data.image_column", "img", "--model.output_format", "both")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "'image' -> 'source_image'" in result.stderr and "'uid' -> 'source_uid'" in result.stderr
    row = datasets.load_dataset("parquet", data_dir=str(tmp_path / "out" / "dataset"), split="train")[0]
    protected = np.asarray(Image.open(tmp_path / "out" / "images" / "train-000000.png"))
    assert row["uid"] == "train-000000" and row["source_uid"] == "evil"
    assert np.array_equal(np.asarray(row["image"]), protected)  # the protected image, not a source column
    assert np.array_equal(np.asarray(row["source_image"]), np.asarray(Image.open(io.BytesIO(other))))


# 2 ------------------------------------------------------------------------------------------------------------
def test_a_stray_parquet_below_a_folder_does_not_turn_it_into_a_dataset(tmp_path, fit_here):
    faces = face_folder(tmp_path / "faces")
    (faces / "sub").mkdir()
    features = datasets.Features({"image": datasets.Image()})
    rows = [{"bytes": png(astronaut().resize((64, 64))), "path": None}] * 3
    datasets.Dataset.from_dict({"image": rows}, features=features).to_parquet(str(faces / "sub" / "stray.parquet"))
    result = fit_here(faces, tmp_path / "out")
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(read_manifest(tmp_path / "out")["source"]) == ["face0.png", "face1.png"]


@pytest.mark.parametrize("data_format", ["auto", "folder"])
def test_an_output_folder_inside_the_source_is_never_protected_again(tmp_path, data_format, fit_here):
    faces = face_folder(tmp_path / "faces")
    out = faces / "protected"
    for _ in range(2):
        result = fit_here(faces, out, "--model.output_format", "both", "--data.format", data_format)
        assert result.returncode == 0, result.stderr[-2000:]
    assert "2 images in" in result.stderr and "skipping 2 already protected" in result.stderr
    assert len(read_manifest(out)) == 2
    assert len(datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")) == 2


def test_the_folder_listing_keeps_links_and_hidden_files_apart_and_never_enters_the_output_folder(tmp_path):
    from facelock_pl.data.folder import image_files

    faces, out, elsewhere = tmp_path / "faces", tmp_path / "faces" / "out", tmp_path / "elsewhere"
    for folder in (faces / "sub", faces / ".cache", out / "images", elsewhere):
        folder.mkdir(parents=True)
    for path in (faces / "a.jpg", faces / "sub" / "b.PNG", faces / "._a.jpg", faces / ".cache" / "c.jpg",
                 faces / "notes.txt", faces / "scan.pdf", out / "images" / "a.png", elsewhere / "d.jpg"):
        path.write_bytes(b"x")
    (faces / "linked.jpg").symlink_to(elsewhere / "d.jpg")  # a link to a photo elsewhere: listed
    (faces / "gone.jpg").symlink_to(tmp_path / "unmounted.jpg")  # its target is gone: listed, an error row later
    (faces / "into-out.png").symlink_to(out / "images" / "a.png")  # into the output folder: never a source
    (faces / "folder-link").symlink_to(elsewhere)  # a link to a folder: not followed
    os.mkfifo(faces / "pipe.jpg")  # not a file
    files, hidden = image_files(faces, [out])
    assert files == ["a.jpg", "gone.jpg", "linked.jpg", "sub/b.PNG"]
    assert hidden == ["._a.jpg", ".cache/c.jpg"]
    assert image_files(faces / "folder-link") == (["d.jpg"], [])  # the source itself may be a link
    assert "out/images/a.png" in image_files(faces)[0]  # excluded only where it is the run's output folder


def test_a_folder_of_the_source_that_cannot_be_read_is_refused_at_the_start(tmp_path, fit_here, monkeypatch):
    """pathlib's listing passed over an unreadable folder without a word: its photos went unprotected."""
    faces = face_folder(tmp_path / "faces")
    (faces / "locked").mkdir()
    scandir = os.scandir

    def refusing(path):
        if Path(path).name == "locked":  # as chmod 000 would, for a user who is not root
            raise PermissionError(13, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr("facelock_pl.data.folder.os.scandir", refusing)
    message = one_line_error(fit_here(faces, tmp_path / "out"))
    assert f"cannot read the folder {faces / 'locked'} in data.source (Permission denied)" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["the source", "its parent"])
def test_an_output_folder_that_is_or_holds_the_source_is_refused_in_one_line(tmp_path, fit_here, where):
    faces = face_folder(tmp_path / "faces")
    out = faces if where == "the source" else tmp_path
    message = one_line_error(fit_here(faces, out))
    assert f"output_dir {out} is the source folder {faces} or holds it" in message
    assert sorted(p.name for p in faces.iterdir()) == ["face0.png", "face1.png"]  # nothing written


# 3 ------------------------------------------------------------------------------------------------------------
def test_a_second_run_into_the_same_output_folder_is_refused_at_once(tmp_path, fit_here):
    faces, out = face_folder(tmp_path / "faces"), tmp_path / "out"
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])  # the first run, alive
    try:
        out.mkdir()
        lock = out / ".facelock.lock"
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": running.pid, "since": "2026-01-01T00:00:00+00:00"}))
        held = lock.read_bytes()
        message = one_line_error(fit_here(faces, out, "--model.output_format", "both"))
        assert f"another run is writing into {out} (process {running.pid} on" in message and "since 2026-01-01" in message
        assert lock.read_bytes() == held and [p.name for p in out.iterdir()] == [".facelock.lock"]  # nothing touched
    finally:
        running.kill()
        running.wait()


@pytest.mark.parametrize("option, value, message", [
    ("--trainer.devices", "0", "trainer: `Trainer(devices='0')` value is not a valid input"),
    pytest.param("--trainer.accelerator", "gpu", "trainer: No supported gpu backend found",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")),
])
def test_a_trainer_option_this_machine_cannot_run_is_a_one_line_error(tmp_path, fit_here, option, value, message):
    """Lightning's own refusal (a GPU asked for on a laptop) was a traceback, exit 1."""
    faces, out = face_folder(tmp_path / "faces", 1), tmp_path / "out"
    assert message in one_line_error(fit_here(faces, out, option, value))
    assert not out.exists()  # the lock taken before is released and its folder removed


def test_a_negative_face_margin_is_refused_before_any_work(tmp_path, fit_here):
    """It crashed the run at the first photo (PIL: "Coordinate 'right' is less than 'left'")."""
    faces, out = face_folder(tmp_path / "faces", 1), tmp_path / "out"
    refused = one_line_error(fit_here(faces, out, "--data.region", "faces", "--data.face_margin", "-1"))
    assert "data.face_margin is the share of the faces' box added on each side: 0 or more (got -1.0)" in refused


def test_the_lock_of_a_dead_run_is_taken_over(tmp_path, fit_here):
    faces, out = face_folder(tmp_path / "faces", 1), tmp_path / "out"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    out.mkdir()
    (out / ".facelock.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
    result = fit_here(faces, out)
    assert result.returncode == 0 and f"taking over the lock of process {gone.pid}" in result.stderr
    assert len(read_manifest(out)) == 1 and not (out / ".facelock.lock").exists()  # released at the end of the run


def test_a_lock_left_under_this_process_id_is_taken_over(tmp_path, caplog):
    """A container restarted after a crash runs `fit` again as the same process id (often 1) under the same host
    name: the old lock named a live process, ourselves, and every restart was refused."""
    from facelock_pl.outputs.lock import OutputLock

    lock = tmp_path / ".facelock.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "2026-01-01T00:00:00+00:00"}))
    with OutputLock(tmp_path):
        assert json.loads(lock.read_text())["since"] != "2026-01-01T00:00:00+00:00"  # ours now
    assert f"taking over the lock of process {os.getpid()}" in caplog.text and not lock.exists()


@pytest.mark.parametrize("holder, shown", [
    ("", "process ? on ?"),  # a run killed between creating the lock and writing its holder: nothing to check
    (json.dumps({"host": "another-node", "pid": 1, "since": "2026-01-01T00:00:00+00:00"}), "process 1 on another-node"),
])
def test_a_lock_that_cannot_be_checked_is_refused_with_how_to_remove_it(tmp_path, holder, shown):
    from facelock_pl.outputs.lock import OutputLock, OutputLockedError

    (tmp_path / ".facelock.lock").write_text(holder)
    with pytest.raises(OutputLockedError, match="another run is writing into") as refused:
        OutputLock(tmp_path).acquire()
    assert shown in str(refused.value) and str(tmp_path / ".facelock.lock") in str(refused.value)
    assert (tmp_path / ".facelock.lock").read_text() == holder  # never taken over: it may be a live run


def test_an_image_the_rounding_left_unchanged_is_an_error_row_never_a_protected_copy(tmp_path):
    from facelock_pl.data import ImageItem
    from facelock_pl.outputs import OutputWriter, ProtectedImage

    def finished(uid: str, change: int) -> ProtectedImage:
        source = torch.full((3, 40, 40), 128, dtype=torch.uint8)
        item = ImageItem(uid, f"{uid}.png", source, 40, 40, native=source, region=(40, 40))
        return ProtectedImage(item, source + change, source, 10, True, {}, None, None, None, None, 1.0)

    rows = OutputWriter(tmp_path, output_format="both").write([finished("same", 0), finished("moved", 2)])
    by_uid = {row.uid: row for row in rows}
    assert by_uid["moved"].status == "ok" and by_uid["moved"].linf_255 == 2
    assert by_uid["same"].status == "error" and "the saved image equals the source" in by_uid["same"].message
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["moved.png"]
    assert datasets.load_dataset("parquet", data_dir=str(tmp_path / "dataset"), split="train")["uid"] == ["moved"]
    assert read_manifest(tmp_path).set_index("uid").loc["same", "status"] == "error"


def test_a_full_disk_stops_the_run_in_one_line_and_a_rerun_goes_on(tmp_path, fit_here, monkeypatch):
    import errno

    import facelock_pl.outputs.manifest as manifest_module

    faces, out = portraits(tmp_path / "faces", 6), tmp_path / "out"
    real_write, written = manifest_module.write_bytes_atomic, []

    def fills_up(path, data):
        if len(written) == 6:  # the third batch's first PNG: two batches (2 PNGs and a manifest part each) are in
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        real_write(path, data)

    monkeypatch.setattr(manifest_module, "write_bytes_atomic", fills_up)
    full = fit_here(faces, out, "--data.batch_size", "2", "--data.resolution", "64")
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr[-2000:]
    assert "stopped: No space left on device" in full.stderr and "rerun the same command" in full.stderr
    assert len(read_manifest(out)) == 4
    monkeypatch.setattr(manifest_module, "write_bytes_atomic", real_write)
    rerun = fit_here(faces, out, "--data.batch_size", "2", "--data.resolution", "64")
    assert rerun.returncode == 0 and "skipping 4 already protected" in rerun.stderr and "2 to do" in rerun.stderr


@pytest.mark.parametrize("then", ["deleted", "replaced"])
def test_an_output_folder_deleted_or_replaced_mid_run_stops_it_never_made_anew(tmp_path, fit_here, monkeypatch, then):
    """The folder deleted under a running fit (by hand, or a cleanup script), or deleted and made again by another run:
    the run went on writing into a folder it made anew, without its lock and settings (a second run could start
    beside it), or died in a traceback from the logger."""
    import shutil

    from facelock_pl.outputs import OutputWriter

    faces, out = portraits(tmp_path / "faces", 4), tmp_path / "out"
    real_write, batches = OutputWriter.write, []

    def write(self, finished, failed=()):
        if finished or failed:
            batches.append(len(finished) + len(failed))
            if len(batches) == 2:
                shutil.rmtree(out)
                if then == "replaced":
                    (out / "images").mkdir(parents=True)
        return real_write(self, finished, failed)

    monkeypatch.setattr(OutputWriter, "write", write)
    stopped = fit_here(faces, out, "--data.batch_size", "1", "--data.resolution", "64")
    assert stopped.returncode == 1 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    last = stopped.stderr.strip().splitlines()[-1]
    assert f"fit: stopped: the output folder {out} was deleted, moved away or replaced while this command" in last
    assert "(its lock file .facelock.lock is gone or another run's)" in last
    assert batches == [1, 1]  # stopped at the first write after it
    assert sorted(p.name for p in out.rglob("*")) == (["images"] if then == "replaced" else [])


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path):
    from facelock_pl.outputs.atomic import write_bytes_atomic

    target = tmp_path / "images" / "a.png"
    write_bytes_atomic(target, b"first")
    with pytest.raises(TypeError):
        write_bytes_atomic(target, "not bytes")  # fails inside the write, after the temporary file exists
    assert target.read_bytes() == b"first" and [p.name for p in target.parent.iterdir()] == ["a.png"]


# 4 ------------------------------------------------------------------------------------------------------------
def wait_for_parts(out: Path, process: subprocess.Popen, count: int) -> None:
    deadline = time.time() + 300
    while len(list((out / "manifest").glob("part-*.parquet"))) < count:
        assert process.poll() is None and time.time() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)


@pytest.mark.slow
def test_sigterm_to_a_two_rank_process_group_stops_every_rank_and_loses_nothing(tmp_path):
    source, out = portraits(tmp_path / "faces", 8), tmp_path / "out"
    args = ["--data.resolution", "96", "--data.batch_size", "1", "--model.attack.iterations", "20", "--model.output_format",
            "both", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    run = fit(source, out, *args, popen=True, start_new_session=True)
    wait_for_parts(out, run, 2)
    os.killpg(run.pid, signal.SIGTERM)
    started = time.time()
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 5, stderr[-3000:]
    assert time.time() - started < 60 and "INTERRUPTED by SIGTERM" in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["last_run"]["interrupted"] == "SIGTERM" and 2 <= summary["folder"]["images"] < 8
    assert not (out / ".facelock.lock").exists()

    rerun = fit(source, out, *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    manifest = read_manifest(out)
    assert sorted(manifest["uid"]) == [f"face{i:02d}" for i in range(8)]
    rows = [u for p in (out / "manifest").glob("*.parquet") for u in pq.read_table(p)["uid"].to_pylist()]
    assert len(rows) == 8  # every image protected exactly once over both runs
    protected = datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")
    assert sorted(protected["uid"]) == sorted(manifest["uid"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_to_the_process_group_with_loader_workers_exits_with_the_interrupted_code(tmp_path, name):
    """SLURM (time limit, scancel, `--signal=USR1@120`), `timeout` and Ctrl+C signal every process of the job or group,
    the loader's workers too: the run must still stop after the step, not die of a killed worker or hang on one."""
    source, out = portraits(tmp_path / "faces", 6), tmp_path / "out"
    run = fit(source, out, "--data.batch_size", "1", "--model.attack.iterations", "20", "--data.resolution", "96",
              "--data.num_workers", "2", popen=True, start_new_session=True)
    try:
        wait_for_parts(out, run, 1)
        os.killpg(run.pid, signal.Signals[name])
        _, stderr = run.communicate(timeout=120)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 5 and f"INTERRUPTED by {name}" in stderr and "rerun the same command" in stderr, stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["last_run"]["interrupted"] == name
    time.sleep(1)
    with pytest.raises(ProcessLookupError):
        os.killpg(run.pid, 0)  # no worker left behind


@pytest.fixture
def guarded_signals():
    """SIGTERM and SIGUSR1 this process sends itself land here if the command left them unhandled, instead of ending
    the test session; SIGINT raises KeyboardInterrupt, as in a command's process. Yields the list of those that landed."""
    landed = []
    handlers = {signal.SIGTERM: lambda signum, frame: landed.append(signum), signal.SIGINT: signal.default_int_handler}
    handlers[signal.SIGUSR1] = handlers[signal.SIGTERM]
    previous = {signum: signal.signal(signum, handler) for signum, handler in handlers.items()}
    yield landed
    for signum, handler in previous.items():
        signal.signal(signum, handler)


def signalling(function, name: str, when=lambda: True):
    """`function`, which first sends this process the signal `name` (once `when()` holds)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if when():
            os.kill(os.getpid(), signal.Signals[name])
        return function(*args, **kwargs)
    return wrapper


@pytest.mark.parametrize(("name", "where"), [
    ("SIGTERM", "models loading"),  # a cluster's time limit while the weights load: the process died, its lock left
    ("SIGUSR1", "data listed"),  # SLURM's pre-timeout signal: the same
    ("SIGINT", "inside Lightning's fit, before the first step"),  # Ctrl-C: exit code 1 (a crash) without a word
])
def test_a_stop_signal_before_the_first_step_stops_fit_at_once_and_says_so(tmp_path, fit_here, monkeypatch,
                                                                           guarded_signals, name, where):
    import facelock_pl.engine.module as module_module
    from facelock_pl.data import FaceDataModule

    owner, attribute = {"models loading": (module_module, "load_networks"), "data listed": (FaceDataModule, "setup"),
                        "inside Lightning's fit, before the first step": (module_module.ProtectionModule, "on_fit_start")}[where]
    monkeypatch.setattr(owner, attribute, signalling(getattr(owner, attribute), name))
    out = tmp_path / "out"
    guards = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)}
    try:
        stopped = fit_here(face_folder(tmp_path / "faces", 2), out)
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped the command")
    assert stopped.returncode == 5 and not guarded_signals, stopped.stderr[-2000:]
    assert "fit: interrupted before its first step" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (out / ".facelock.lock").exists() and not (out / "images").exists()
    assert {signum: signal.getsignal(signum) for signum in guards} == guards  # the handlers from before are back


def test_a_second_ctrl_c_during_the_steps_stops_at_once_keeps_what_is_finished_and_says_so(tmp_path, fit_here, monkeypatch,
                                                                                           guarded_signals):
    """Lightning turned it into exit code 1 (a crash) without a word."""
    from facelock_pl.engine.module import ProtectionModule

    faces, out = face_folder(tmp_path / "faces", 3), tmp_path / "out"
    first_batch_written = lambda: any((out / "manifest").glob("part-*.parquet"))  # noqa: E731
    step = ProtectionModule.training_step
    monkeypatch.setattr(ProtectionModule, "training_step",
                        signalling(signalling(step, "SIGINT", first_batch_written), "SIGINT", first_batch_written))
    try:
        stopped = fit_here(faces, out, "--data.batch_size", "2")
    except KeyboardInterrupt:
        pytest.fail("the second Ctrl-C escaped the command")
    assert stopped.returncode == 5 and not guarded_signals, stopped.stderr[-2000:]
    assert "fit: stopped at once by a second Ctrl-C: the images finished before it are kept" in stopped.stderr
    assert not (out / ".facelock.lock").exists() and len(list((out / "images").iterdir())) == 2
    monkeypatch.setattr(ProtectionModule, "training_step", step)
    rerun = fit_here(faces, out, "--data.batch_size", "2")
    assert rerun.returncode == 0 and "skipping 2 already protected" in rerun.stderr, rerun.stderr[-2000:]


@pytest.mark.parametrize("command", ["fit", "evaluate"])
def test_a_ctrl_c_while_the_libraries_load_is_one_line_and_the_interrupted_code(tmp_path, cli_here, monkeypatch, command):
    """The first seconds of every command import torch and Lightning; a Ctrl-C there printed a 40-line traceback
    and exited 130."""
    import facelock_pl.cli

    def interrupted(verbose: bool) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(facelock_pl.cli, "configure_output", interrupted)
    try:
        stopped = cli_here(command, "--output_dir", tmp_path / "out")
    except KeyboardInterrupt:
        pytest.fail("the Ctrl-C escaped the command")  # (and would end the test session)
    assert stopped.returncode == 5 and stopped.stderr == f"facelock_pl {command}: {facelock_pl.cli.INTERRUPTED[command]}\n"
    assert not (tmp_path / "out").exists()


def test_a_stop_signal_after_the_summary_leaves_the_run_as_it_ended(tmp_path, fit_here, monkeypatch, guarded_signals):
    """Inside Lightning's teardown it became exit code 1; the run had protected everything and said so."""
    from facelock_pl.engine.module import ProtectionModule

    summarise = ProtectionModule.on_train_end

    def then_sigterm(module):
        summarise(module)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(ProtectionModule, "on_train_end", then_sigterm)
    ended = fit_here(face_folder(tmp_path / "faces", 2), tmp_path / "out")
    assert ended.returncode == 0 and not guarded_signals and "holds 2 image(s): ok 2" in ended.stderr, ended.stderr[-2000:]
    assert "interrupted" not in ended.stderr and not (tmp_path / "out" / ".facelock.lock").exists()


def test_a_trainer_limit_that_ends_the_steps_early_is_a_stop_not_a_success(tmp_path, fit_here):
    """`--trainer.max_steps` (or max_time) ended the run with images left, and it exited 0 ("everything protected");
    max_epochs 0 ran no step at all and exited 0 too."""
    from facelock_pl.engine.module import TRAINER_LIMIT

    faces, out = face_folder(tmp_path / "faces", 3), tmp_path / "out"
    limited = fit_here(faces, out, "--data.batch_size", "2", "--trainer.max_steps", "12")  # 8 iterations an image
    assert limited.returncode == 5 and f"INTERRUPTED by {TRAINER_LIMIT}" in limited.stderr, limited.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["last_run"]["interrupted"] == TRAINER_LIMIT
    assert len(read_manifest(out)) == 2 and "rerun the same command to protect the rest" in limited.stderr
    rest = fit_here(faces, out, "--data.batch_size", "2")
    assert rest.returncode == 0 and "skipping 2 already protected" in rest.stderr and "INTERRUPTED" not in rest.stderr
    nothing = fit_here(faces, tmp_path / "out-none", "--trainer.max_epochs", "0")
    assert nothing.returncode == 2 and "error: the trainer ran no step" in nothing.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out-none" / "images").exists()


@pytest.mark.parametrize(("options", "message"), [
    # Lightning's 16-mixed wraps the whole step in autocast (bfloat16 on a CPU): the face detector crashed.
    (["--trainer.precision", "16-mixed"], "(--model.speed.amp_dtype bfloat16, float16 or null; CUDA only); leave "
                                          "trainer.precision at 32"),
    # Lightning's DDP refuses a module without gradients: a traceback.
    (["--trainer.strategy", "ddp_spawn"], "trainer.strategy ddp_spawn: use facelock_ddp"),
    (["--trainer.strategy", "auto", "--trainer.devices", "2"], "trainer.strategy auto: use facelock_ddp"),
    # Lightning's quick check: one PGD step, then "interrupted by a trainer limit" with nothing protected.
    (["--trainer.fast_dev_run", "true"], "protects no image: for a quick try, protect one photo with few iterations"),
    (["--trainer.overfit_batches", "1"], "trainer.fast_dev_run and trainer.overfit_batches run a PGD step or a few"),
])
def test_trainer_options_the_engine_cannot_run_are_refused_before_anything_loads(tmp_path, fit_here, options, message):
    result = fit_here(face_folder(tmp_path / "faces", 1), tmp_path / "out", "--trainer.accelerator", "cpu", *options)
    assert message in one_line_error(result) and not (tmp_path / "out").exists()


def test_a_trainer_option_for_gradients_is_a_one_line_error(tmp_path, fit_here):
    """Gradient accumulation and clipping need Lightning's automatic optimisation: a traceback, exit code 1."""
    result = fit_here(face_folder(tmp_path / "faces", 1), tmp_path / "out", "--trainer.gradient_clip_val", "1.0")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert last.startswith("facelock_pl fit: error: trainer: Automatic gradient clipping is not supported")


# 5, 8 ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("option", "message"), [
    (["--data.batch_size", "0"], "data.batch_size must be at least 1 or 'auto' (got 0)"),
    (["--data.resolution", "7"], "data.resolution must be 'native', or at least 32 and a multiple of 8 (got 7)"),
    (["--model.attack.eps", "0"], "need 0 < eps <= 2"),
    (["--model.attack.eps", "0.005"], "eps 0.005 allows no 8-bit level"),  # the PNG would be the photo itself
])
def test_impossible_values_are_one_line_errors_before_anything_loads(tmp_path, option, message, fit_here):
    started = time.time()
    result = fit_here(face_folder(tmp_path / "faces", 1), tmp_path / "out", *option)
    assert message in one_line_error(result)
    assert not (tmp_path / "out").exists() and time.time() - started < 60


@pytest.mark.parametrize(("text", "message"), [
    (None, "not found"),
    ("model: [unclosed", "is not valid YAML"),
    ("- a list, not keys", "must hold a mapping of keys to values"),
])
def test_a_config_file_that_cannot_be_read_is_a_one_line_error(tmp_path, text, message, cli_here):
    config = tmp_path / "mine.yaml"
    if text is not None:
        config.write_text(text)
    result = cli_here("fit", f"--config={config}", "--data.source", face_folder(tmp_path / "faces", 1),
                      "--output_dir", tmp_path / "out")
    assert one_line_error(result).startswith(f"facelock_pl fit: error: config file {config} {message}")
    assert not (tmp_path / "out").exists()


def test_an_output_dir_that_is_a_file_is_a_one_line_error(tmp_path, fit_here):
    (tmp_path / "taken").write_text("a file")
    faces = face_folder(tmp_path / "faces", 1)
    assert "is a file, not a folder" in one_line_error(fit_here(faces, tmp_path / "taken"))
    assert "cannot be written" in one_line_error(fit_here(faces, tmp_path / "taken" / "below"))


# 6 ------------------------------------------------------------------------------------------------------------
def test_missing_and_outside_files_named_by_a_dataset_are_error_rows(tmp_path, fit_here):
    data = tmp_path / "data"
    face_folder(data / "faces", 1)
    face_folder(tmp_path / "elsewhere", 1)
    table = datasets.Dataset.from_dict({"file": ["faces/face0.png", "faces/missing.png", str(tmp_path / "elsewhere" / "face0.png"),
                                                 "not a path at all"]})
    table.to_parquet(str(data / "rows.parquet"))
    result = fit_here(data / "rows.parquet", tmp_path / "out", "--data.image_column", "file")
    assert result.returncode == 3, result.stderr[-2000:]  # partly failed, nothing crashed
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert rows.loc["train-000000", "status"] in ("ok", "no_face")
    assert "cannot read the image file faces/missing.png" in rows.loc["train-000001", "message"]
    assert "outside the dataset's folder" in rows.loc["train-000002", "message"]
    assert rows.loc["train-000003", "status"] == "error"

    again = fit_here(data / "rows.parquet", tmp_path / "out", "--data.image_column", "file", "--data.allow_external_paths", "true")
    assert again.returncode == 3 and "3 to do" in again.stderr  # only the three error rows are tried again
    assert read_manifest(tmp_path / "out").set_index("uid").loc["train-000002", "status"] in ("ok", "no_face")


# 7 ------------------------------------------------------------------------------------------------------------
def test_uids_stay_the_same_when_files_with_the_same_stem_are_added(tmp_path, fit_here):
    faces, out = tmp_path / "faces", tmp_path / "out"
    faces.mkdir()
    astronaut().resize((96, 96)).save(faces / "x.jpg")
    assert fit_here(faces, out).returncode == 0
    before = read_manifest(out).set_index("uid")
    grace_hopper().resize((96, 96)).save(faces / "x.png")
    result = fit_here(faces, out)
    assert result.returncode == 0 and "skipping 1 already protected" in result.stderr and "1 to do" in result.stderr
    after = read_manifest(out).set_index("uid")
    assert sorted(after.index) == ["x", "x.png"] and after.loc["x", "source"] == "x.jpg"
    assert after.loc["x", "finished_at"] == before.loc["x", "finished_at"]  # not protected again
    assert {p.name for p in (out / "images").iterdir()} == {"x.png", "x.png.png"}


def test_a_file_name_that_is_not_utf8_is_protected_recorded_escaped_and_resumed(tmp_path, fit_here):
    """A name made on a system with another encoding (Latin-1 `café.png`): its bytes cannot go into the manifest's
    UTF-8 text as they are (the run used to stop at its first manifest part, the PNG already written, and every
    rerun again); the manifest records them escaped, and a rerun finds the file done."""
    faces, out = tmp_path / "faces", tmp_path / "out"
    faces.mkdir()
    astronaut().resize((96, 96)).save(faces / os.fsdecode(b"caf\xe9.png"))
    grace_hopper().resize((96, 96)).save(faces / "plain.png")
    result = fit_here(faces, out)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = read_manifest(out)
    assert sorted(rows["source"]) == ["caf\\xe9.png", "plain.png"] and (rows["status"] == "ok").all()
    uid = rows.loc[rows["source"] == "caf\\xe9.png", "uid"].item()
    assert uid.isascii() and (out / "images" / f"{uid}.png").is_file()
    again = fit_here(faces, out)
    assert again.returncode == 0 and "skipping 2 already protected" in again.stderr and "0 to do" in again.stderr


def test_a_link_whose_target_is_gone_is_an_error_row_never_passed_over(tmp_path, fit_here):
    """A photo library with links to a drive that is not mounted: the link was left out of the listing, and the run
    said everything asked for was protected (exit 0)."""
    faces, out = face_folder(tmp_path / "faces", 1), tmp_path / "out"
    (faces / "holiday.jpg").symlink_to(tmp_path / "unmounted" / "holiday.jpg")
    result = fit_here(faces, out)
    assert result.returncode == 3, result.stderr[-2000:]
    rows = read_manifest(out).set_index("uid")
    assert rows.loc["face0", "status"] == "ok" and rows.loc["holiday", "status"] == "error"
    assert "link to" in rows.loc["holiday", "message"] and "missing" in rows.loc["holiday", "message"]


def test_a_source_replaced_under_the_same_name_is_protected_again_never_taken_as_done(tmp_path, fit_here):
    """Another photo under a protected photo's name (edited in place, or another folder run into the same output)
    must not be skipped as done: its protected copy would be of the old photo."""
    faces, out = tmp_path / "faces", tmp_path / "out"
    faces.mkdir()
    for name, image in (("me", astronaut()), ("you", grace_hopper()), ("keep", astronaut().rotate(90))):
        image.resize((96, 96)).save(faces / f"{name}.png")
    assert fit_here(faces, out, "--model.output_format", "both").returncode == 0
    first = read_manifest(out).set_index("uid")
    assert first.loc["me", "source_sha256"] == hashlib.sha256((faces / "me.png").read_bytes()).hexdigest()
    kept_at = (out / "images" / "keep.png").stat().st_mtime_ns
    keep_source = (faces / "keep.png").stat()

    for name, angle in (("me", 20), ("you", 30)):
        grace_hopper().rotate(angle).resize((96, 96)).save(faces / f"{name}.png")
    # A run that stopped right after taking back `me`'s copy: the manifest says why, nothing stale remains.
    withdraw(out, first.reset_index()[lambda rows: rows.uid == "me"], CHANGED_SOURCE)
    state = read_manifest(out).set_index("uid")
    assert state.loc["me", "status"] == "error" and "source changed" in state.loc["me", "message"]
    # The file's size and time as read, exact (a 64-bit time in ns) also beside the withdrawn row's empty ones.
    assert pd.isna(state.loc["me", "source_mtime_ns"])
    assert (state.loc["keep", "source_size_bytes"], state.loc["keep", "source_mtime_ns"]) == (keep_source.st_size,
                                                                                             keep_source.st_mtime_ns)
    assert not (out / "images" / "me.png").exists()
    assert "me" not in datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")["uid"]

    result = fit_here(faces, out, "--model.output_format", "both")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 source image(s) changed since they were protected" in result.stderr and "(you)" in result.stderr
    assert "skipping 1 already protected" in result.stderr and "2 to do" in result.stderr
    after = read_manifest(out).set_index("uid")
    for name in ("me", "you"):
        source = np.asarray(Image.open(faces / f"{name}.png").convert("RGB")).astype(int)
        protected = np.asarray(Image.open(out / "images" / f"{name}.png")).astype(int)
        assert 0 < np.abs(protected - source).max() <= 3  # the new photo's protection, not the old one's
        assert after.loc[name, "source_sha256"] == hashlib.sha256((faces / f"{name}.png").read_bytes()).hexdigest()
    assert (out / "images" / "keep.png").stat().st_mtime_ns == kept_at
    assert after.loc["keep", "finished_at"] == first.loc["keep", "finished_at"]
    dataset = datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")
    assert sorted(dataset["uid"]) == ["keep", "me", "you"]  # each once: the stale rows are gone
    row = dataset[dataset["uid"].index("you")]
    assert np.array_equal(np.asarray(row["image"]), np.asarray(Image.open(out / "images" / "you.png")))

    os.utime(faces / "keep.png")  # touched: its time differs, so it is read again, and its bytes are the same
    again = fit_here(faces, out, "--model.output_format", "both")
    assert again.returncode == 0 and "skipping 3 already protected" in again.stderr and "changed" not in again.stderr


def test_a_protected_image_deleted_from_the_output_is_protected_again(tmp_path, fit_here):
    """A protected PNG deleted or moved away after the run: the manifest still said `ok`, so every rerun skipped the
    photo and reported it protected while no protected copy existed."""
    faces, out = face_folder(tmp_path / "faces", 3), tmp_path / "out"
    assert fit_here(faces, out).returncode == 0
    first = read_manifest(out).set_index("uid")
    (out / "images" / "face1.png").unlink()
    (out / "images" / "face2.png").unlink()
    (faces / "face2.png").unlink()  # a photo given up: source and copy gone, nothing to do for it
    result = fit_here(faces, out)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1 protected image(s) missing" in result.stderr and "(face1:" in result.stderr and "1 to do" in result.stderr
    after = read_manifest(out).set_index("uid")
    assert (out / "images" / "face1.png").is_file() and after.loc["face1", "status"] == "ok"
    assert after.loc["face1", "finished_at"] > first.loc["face1", "finished_at"]
    for uid in ("face0", "face2"):
        assert after.loc[uid, "finished_at"] == first.loc[uid, "finished_at"]

    # A copy in the protected dataset counts: a parquet-only run has no images/ folder and nothing is missing.
    parquet_only = tmp_path / "parquet-only"
    assert fit_here(faces, parquet_only, "--model.output_format", "parquet").returncode == 0
    again = fit_here(faces, parquet_only, "--model.output_format", "parquet")
    assert again.returncode == 0 and "skipping 2 already protected" in again.stderr and "missing" not in again.stderr


def test_a_rerun_at_another_working_resolution_is_refused_never_skipped_as_done(tmp_path, fit_here):
    """Rerun at a larger resolution for stronger protection, every photo was skipped as already protected (at the old
    one): the working image decides the protection as the attack's settings do, and is recorded with them."""
    faces, out = face_folder(tmp_path / "faces"), tmp_path / "out"
    assert fit_here(faces, out, "--data.resolution", "96").returncode == 0
    assert json.loads((out / "protection.json").read_text())["data"] == {"resolution": 96, "region": "frame", "keep_grey": True}
    (out / "images" / "face0.png").unlink()  # a copy gone: the refused rerun must not touch the manifest
    refused = fit_here(faces, out, "--data.resolution", "128")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "holds images protected with other settings (data.resolution differs: 96 in the folder, 128 now; see" in refused.stderr.splitlines()[-1]
    # Refused before the data module's resume step: no listing, nothing withdrawn.
    assert "skipping" not in refused.stderr and "missing" not in refused.stderr
    assert read_manifest(out).set_index("uid").loc["face0", "status"] == "ok"
    again = fit_here(faces, out, "--data.resolution", "96")
    assert again.returncode == 0 and "skipping 1 already protected" in again.stderr and "1 to do" in again.stderr

    # A folder made before `keep_grey` was recorded was made with a colour perturbation on every photo: its record
    # reads so, and the folder goes on with the setting it was made with.
    settings = json.loads((out / "protection.json").read_text())
    del settings["data"]["keep_grey"]
    (out / "protection.json").write_text(json.dumps(settings))
    (out / "images" / "face0.png").unlink()
    refused = fit_here(faces, out, "--data.resolution", "96")
    assert refused.returncode == 2 and "(data.keep_grey differs: false in the folder, true now; see" in refused.stderr.splitlines()[-1]
    assert fit_here(faces, out, "--data.resolution", "96", "--data.keep_grey", "false").returncode == 0

    # One made before `attack.both_positions` optimised a photo lying in its file upright only: the same.
    settings = json.loads((out / "protection.json").read_text())
    del settings["attack"]["both_positions"]
    (out / "protection.json").write_text(json.dumps(settings))
    (out / "images" / "face0.png").unlink()
    refused = fit_here(faces, out, "--data.resolution", "96", "--data.keep_grey", "false")
    assert refused.returncode == 2 and "(attack.both_positions differs: false in the folder, true now; see" in refused.stderr.splitlines()[-1]
    assert fit_here(faces, out, "--data.resolution", "96", "--data.keep_grey", "false",
                    "--model.attack.both_positions", "false").returncode == 0

    # A folder made before the working image was recorded resumes as it did: its resolution is not known.
    settings = json.loads((out / "protection.json").read_text())
    del settings["data"]
    (out / "protection.json").write_text(json.dumps(settings))
    assert fit_here(faces, out, "--data.resolution", "128", "--model.attack.both_positions", "false").returncode == 0
    assert "data" not in json.loads((out / "protection.json").read_text())


def test_another_dataset_into_the_same_output_is_protected_not_skipped(tmp_path, fit_here):
    features = datasets.Features({"image": datasets.Image()})
    for name, image in (("first", astronaut()), ("second", grace_hopper())):
        datasets.Dataset.from_dict({"image": [{"bytes": png(image.resize((96, 96))), "path": None}]},
                                   features=features).to_parquet(str(tmp_path / f"{name}.parquet"))
    out = tmp_path / "out"
    assert fit_here(tmp_path / "first.parquet", out).returncode == 0
    result = fit_here(tmp_path / "second.parquet", out)  # the same uid (train-000000), another photo
    assert result.returncode == 0 and "1 source image(s) changed" in result.stderr and "1 to do" in result.stderr
    source = np.asarray(grace_hopper().resize((96, 96)).convert("RGB")).astype(int)
    protected = np.asarray(Image.open(out / "images" / "train-000000.png")).astype(int)
    assert 0 < np.abs(protected - source).max() <= 3


def test_a_folder_protected_by_an_earlier_version_resumes_without_protecting_anything_again(tmp_path, fit_here):
    """Rows written before `source_sha256` existed read back with no digest: they cannot be checked, and must never
    count as changed (every published image would be withdrawn and protected again)."""
    faces, out = face_folder(tmp_path / "faces"), tmp_path / "out"
    assert fit_here(faces, out).returncode == 0
    for part in (out / "manifest").glob("*.parquet"):
        pq.write_table(pq.read_table(part).drop(["source_sha256"]), part)
    kept = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    result = fit_here(faces, out)
    assert result.returncode == 0 and "skipping 2 already protected" in result.stderr and "changed" not in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == kept
    assert read_manifest(out)["source_sha256"].isna().all()


def test_only_a_readable_source_with_other_bytes_counts_as_changed():
    class Sources:
        files = [b"same", b"other", None, b"anything", b"same", b"replaced"]
        stats = [None, (5, 1), None, None, (4, 2), (8, 1)]  # (size, time in ns) now
        reads = []

        def stat(self, index: int) -> tuple[int, int] | None:
            return self.stats[index]

        def read(self, index: int) -> bytes:
            self.reads.append(index)
            if self.files[index] is None:
                raise BadImageError("cannot read the image file: Permission denied")
            return self.files[index]

    recorded = {"a": (sha256(b"same"), None), "b": (sha256(b"before"), (5, 2)), "c": (sha256(b"before"), None),
                "e": (sha256(b"same"), (4, 1)), "f": (sha256(b"before"), (8, 1))}
    # a: unchanged (no size and time recorded: read); b: changed; c: unreadable now (its copy stays); d: not recorded
    # (an earlier version's row); e: touched, the same bytes; f: size and time as recorded, so not read, whatever
    # its bytes (the trade `make` and `rsync` make: a file rewritten with both kept is not seen).
    assert changed_sources(Sources(), ["a", "b", "c", "d", "e", "f"], recorded) == ["b"]
    assert Sources.reads == [0, 1, 2, 4]
    assert changed_sources(Sources(), ["a", "b", "c", "d", "e", "f"], {}) == []  # nothing protected yet


def test_generated_names_for_repeated_ids_never_collide_with_real_ids(tmp_path, fit_here):
    generated = f"a-dup1-{hashlib.sha1(b'a#2').hexdigest()[:6]}"  # what the second "a" is renamed to
    images = [{"bytes": png(astronaut().rotate(10 * i).resize((96, 96))), "path": None} for i in range(3)]
    features = datasets.Features({"id": datasets.Value("string"), "image": datasets.Image()})
    datasets.Dataset.from_dict({"id": ["a", "a", generated], "image": images}, features=features).to_parquet(
        str(tmp_path / "rows.parquet"))
    result = fit_here(tmp_path / "rows.parquet", tmp_path / "out", "--data.id_column", "id")
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = read_manifest(tmp_path / "out")
    assert len(manifest) == 3 and len(set(manifest["uid"])) == 3 and len(list((tmp_path / "out" / "images").iterdir())) == 3


# 8 ------------------------------------------------------------------------------------------------------------
def test_a_damaged_manifest_part_is_quarantined_not_fatal(tmp_path, fit_here):
    faces, out = face_folder(tmp_path / "faces"), tmp_path / "out"
    assert fit_here(faces, out).returncode == 0
    (out / "manifest" / "part-0-r0-000000.parquet").write_bytes(b"")  # a 0-byte part, e.g. from a full disk
    result = fit_here(faces, out)
    assert result.returncode == 0 and "damaged manifest part part-0-r0-000000.parquet" in result.stderr
    assert (out / "manifest" / "damaged" / "part-0-r0-000000.parquet").exists() and len(read_manifest(out)) == 2


def test_the_manifest_reads_an_earlier_versions_parts_and_skips_an_unreadable_one(tmp_path, caplog):
    import pyarrow as pa

    folder = tmp_path / "out" / "manifest"
    folder.mkdir(parents=True)
    # an earlier version's part: finished_at in unix seconds (a float), and none of the columns added since
    pq.write_table(pa.table({"uid": ["a", "b"], "status": ["ok", "error"], "iterations": [100, 0],
                             "finished_at": [1_700_000_000.5, 1_700_000_000.0]}), folder / "part-old-r0-000000.parquet")
    pq.write_table(pa.table({"uid": ["b"], "status": ["ok"], "iterations": [100], "finished_at": [1_800_000_000.0]}),
                   folder / "part-new-r0-000000.parquet")  # b protected again later: its newer row wins
    (folder / "part-torn-r0-000000.parquet").write_bytes(b"PAR1 torn")
    manifest = read_manifest(tmp_path / "out").set_index("uid")
    assert manifest["status"].to_dict() == {"a": "ok", "b": "ok"}
    assert str(manifest.loc["a", "finished_at"]) == "2023-11-14 22:13:20.500000+00:00"
    assert manifest["recognised_by"].isna().all() and manifest["seconds"].isna().all()  # absent then: unknown now
    assert "skipping unreadable manifest part" in caplog.text and "part-torn-r0-000000.parquet" in caplog.text


def test_error_rows_keep_real_sizes_gifs_are_listed_and_animations_refused(tmp_path, fit_here):
    faces = face_folder(tmp_path / "faces", 1)
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(faces / "tiny.png")
    astronaut().resize((96, 96)).convert("P").save(faces / "still.gif")
    frames = [astronaut().resize((96, 96)).convert("P"), grace_hopper().resize((96, 96)).convert("P")]
    frames[0].save(faces / "moving.gif", save_all=True, append_images=frames[1:])
    result = fit_here(faces, tmp_path / "out")
    assert result.returncode == 3, result.stderr[-2000:]
    rows = read_manifest(tmp_path / "out").set_index("uid")
    assert (rows.loc["tiny", "width"], rows.loc["tiny", "height"]) == (12, 8) and rows.loc["tiny", "status"] == "error"
    assert rows.loc["still", "status"] in ("ok", "no_face")
    assert rows.loc["moving", "status"] == "error" and "animated image with 2 frames" in rows.loc["moving", "message"]
    assert (rows.loc["moving", "width"], rows.loc["moving", "height"]) == (96, 96)


# 9 ------------------------------------------------------------------------------------------------------------
def test_benchmark_sizes_are_parsed_never_evaluated(tmp_path):
    marker = tmp_path / "evaluated"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kernel.py"), "--sizes",
                             f"__import__('pathlib').Path('{marker}').touch()"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "is not a shape like 1x3x256x256" in result.stderr and not marker.exists()


def test_a_pickled_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    """Checkpoints are read with torch.load(weights_only=True): a .pt that would run code never loads."""
    import torch

    from facelock_pl.models import RecognizerSpec, WeightsUnavailableError, load_recognizer

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsUnavailableError, match=r"(?s)Weights only load failed.*plain tensor checkpoint"):
        load_recognizer(RecognizerSpec(kind="facenet", weights=str(tmp_path / "evil.pt")))
    assert not (tmp_path / "ran").exists()
