"""Several processes (gloo on CPU), crash safety and resume — through the real command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

import facelock_pl
from conftest import ROOT, astronaut, grace_hopper, run_cli
from facelock_pl.outputs import read_manifest


def portraits(folder: Path, n: int) -> Path:
    folder.mkdir()
    faces = [astronaut(), grace_hopper()]
    for i in range(n):
        faces[i % 2].rotate(2 * i).save(folder / f"face{i:02d}.png")
    return folder


def fit_command(source: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "facelock_pl", "fit", "--config", "configs/tiny.yaml", "--data.source", str(source),
            "--output_dir", str(out), "--data.resolution", "96", "--trainer.enable_progress_bar", "false", *extra]


# In-process fits of other tests leave torch.distributed's variables (and a live store on MASTER_PORT).
_DIST_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
              "LOCAL_WORLD_SIZE")


def clean_env() -> dict:
    # One thread per process in every run, so reductions round alike in 1- and 2-process runs.
    env = {k: v for k, v in os.environ.items() if k not in _DIST_VARS}
    # Faulthandler: a rank that dies on a signal prints its stack, which the failure message then shows.
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}


def run(command: list[str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, failure_report(result.stderr)
    return result


def failure_report(stderr: str) -> str:
    """The first rank's crash is what matters; the other rank only reports a closed connection later.
    A few lines before it too: a C++ abort names its cause there ("terminate called after throwing ...")."""
    lines = stderr.splitlines()
    first = next((i for i, line in enumerate(lines) if "Fatal Python error" in line or "Traceback" in line), 0)
    return "\n".join(lines[max(0, first - 10):first + 60]) + "\n...\n" + stderr[-2000:]


@pytest.mark.slow
def test_two_ranks_protect_each_image_once_like_one_process(tmp_path):
    source = portraits(tmp_path / "faces", 7)
    run(fit_command(source, tmp_path / "one", "--data.batch_size", "2"))
    run(fit_command(source, tmp_path / "two", "--data.batch_size", "2", "--trainer.devices", "2",
                    "--trainer.accelerator", "cpu"))
    one, two = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    parts = [p for p in (tmp_path / "two" / "manifest").glob("*.parquet")]
    rows = sum(len(read_manifest_part(p)) for p in parts)
    assert rows == 7  # each image written exactly once, no padding duplicates
    assert sorted(two["uid"]) == sorted(one["uid"]) == [f"face{i:02d}" for i in range(7)]
    assert sorted(two["rank"].unique()) == [0, 1] and (two.groupby("rank").size().to_dict() == {0: 4, 1: 3})
    assert (two["status"] == one["status"]).all()
    for uid in one["uid"]:
        a = np.asarray(Image.open(tmp_path / "one" / "images" / f"{uid}.png")).astype(int)
        b = np.asarray(Image.open(tmp_path / "two" / "images" / f"{uid}.png")).astype(int)
        assert np.array_equal(a, b), uid  # same start (seed, uid), same steps, same arithmetic
    both = one.set_index("uid").join(two.set_index("uid"), rsuffix="_2")
    assert (both["fr_cos_recon"] - both["fr_cos_recon_2"]).abs().max() < 1e-5
    last_run = json.loads((tmp_path / "two" / "summary.json").read_text())["last_run"]
    assert last_run["images"] == 7 and last_run["world_size"] == 2 and len(last_run["images_per_s_per_rank"]) == 2
    assert last_run["images_per_s_total"] > 0 and last_run["interrupted"] is None
    assert last_run["version"] == facelock_pl.__version__  # which version made the run, for a bug report


def read_manifest_part(path: Path):
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pandas()


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_loses_and_repeats_nothing(tmp_path):
    source = portraits(tmp_path / "faces", 8)
    out = tmp_path / "out"
    command = fit_command(source, out, "--data.batch_size", "1", "--model.iterations", "12", "--model.output_format", "both")
    log = tmp_path / "killed-run.log"
    with open(log, "wb") as stderr:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr, env=clean_env())
        deadline = time.time() + 300
        while time.time() < deadline and len(list((out / "manifest").glob("part-*.parquet"))) < 2:
            assert process.poll() is None, log.read_text()[-3000:]
            time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = read_manifest(out)
    assert 2 <= len(done_before) < 8, "the kill should land mid-run"

    assert run_cli(*command[3:]) == 0  # the rerun needs no process of its own (command[:3]: python -m facelock_pl)
    manifest = read_manifest(out)
    assert sorted(manifest["uid"]) == [f"face{i:02d}" for i in range(8)]
    assert set(manifest["status"]) <= {"ok", "no_face"}
    ok_before = set(done_before.loc[done_before.status == "ok", "uid"])
    rerun_rows = manifest[manifest["finished_at"] > done_before["finished_at"].max()]
    assert not ok_before & set(rerun_rows["uid"])  # finished images were not protected again
    protected = datasets.load_dataset("parquet", data_dir=str(out / "dataset"), split="train")
    assert sorted(protected["uid"]) == sorted(set(protected["uid"]))  # no duplicates
    assert set(protected["uid"]) >= set(manifest["uid"][manifest.status == "ok"])
    for path in (out / "images").glob("*.png"):
        Image.open(path).load()
    assert not list(out.rglob(".tmp-*"))


def _join_then_leave(store_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_file, 2), rank=1, world_size=2)
    os._exit(0)  # gone without a word, as a process that stopped on its own error


def test_a_collective_left_by_a_stopped_process_ends_in_one_line_not_a_traceback(tmp_path, monkeypatch, capfd):
    """A process that stops on an error it reports (its output folder gone, a full disk) left the others' next
    collective to fail, and their tracebacks ("Connection closed by peer") buried the line that says why."""
    import multiprocessing
    from types import SimpleNamespace

    import torch.distributed as dist

    from facelock_pl import fit
    from facelock_pl.engine.strategy import peer_stopped

    if dist.is_initialized():  # left by an in-process fit of another test that stopped before closing it
        dist.destroy_process_group()
    peer = multiprocessing.get_context("fork").Process(target=_join_then_leave, args=(str(tmp_path / "store"),))
    peer.start()
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 2), rank=0, world_size=2)
    try:
        peer.join(timeout=60)
        with pytest.raises(RuntimeError) as failed:
            dist.barrier()
    finally:
        dist.destroy_process_group()
    error = failed.value
    assert peer_stopped(error, world_size=2) and not peer_stopped(error, world_size=1)
    assert not peer_stopped(_raised(RuntimeError("a bug of ours")), world_size=2)  # raised outside torch.distributed

    def fails(error):
        def fit_(*args, **kwargs):
            raise error
        return SimpleNamespace(trainer=SimpleNamespace(fit=fit_, world_size=2, global_rank=1), model=None, datamodule=None)

    with pytest.raises(fit.PeerStoppedError, match="process 1 of 2 stopped: another process of this run stopped first"):
        fit._train(fails(error))
    with pytest.raises(RuntimeError, match="a bug of ours"):  # anything else keeps its traceback
        fit._train(fails(RuntimeError("a bug of ours")))

    def stopped(args):
        fit._train(fails(error))

    monkeypatch.setattr(fit, "run_fit", stopped)
    capfd.readouterr()
    assert run_cli("fit", "--config", ROOT / "configs" / "tiny.yaml") == 1
    [line] = capfd.readouterr().err.splitlines()
    assert line.startswith("facelock_pl fit: process 1 of 2 stopped: another process of this run stopped first (its own "
                           "message says why); what was written is kept") and "(here: RuntimeError: " in line


def _raised(error: Exception) -> Exception:
    try:
        raise error
    except Exception as caught:
        return caught
