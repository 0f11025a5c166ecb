"""The benchmark scripts keep working: the throughput comparison on tiny random models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_throughput_benchmark_reports_every_variant(tmp_path):
    out = tmp_path / "throughput.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--preset", "cpu-tiny", "--images", "2",
         "--iterations", "6", "--variants", "reference,pipeline,adaptive", "--stop-below", "2", "--min-iterations", "2",
         "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["speedup"] == report["pipeline"]["images_per_s"] / report["reference"]["images_per_s"]
    assert set(report["reference"]["fr_cos_recon"]) == set(report["pipeline"]["fr_cos_recon"]) == {"face000", "face001"}
    assert set(report["pipeline"]["iterations"].values()) == {6}
    # Always below +2: checked from iteration 2 on, every iteration, two in a row -> stops at 3. An image
    # without a detected face (NaN) has nothing to check and runs all 6.
    adaptive = report["adaptive"]
    with_face = {uid for uid, value in adaptive["fr_cos_recon"].items() if value == value}
    assert with_face and {adaptive["iterations"][uid] for uid in with_face} == {3}
    assert all(adaptive["iterations"][uid] == 6 for uid in set(adaptive["iterations"]) - with_face)
    assert report["adaptive"]["settings"]["quantise_forward"] is True
    assert report["pipeline"]["achieved_tflops"] > 0 and 0 < report["pipeline"]["share_of_peak"]
    assert "speedup" in result.stdout and "adaptive" in result.stdout


def test_throughput_benchmark_refuses_unknown_variants(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--variants", "pipeline,turbo"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "turbo" in result.stderr
