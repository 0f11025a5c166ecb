"""Shared fixtures. Kernel tests run Triton on CPU through its interpreter (set before triton loads)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"
needs_shared = pytest.mark.skipif(
    not SHARED_ASSETS.is_dir(), reason=f"real offline weights and faces not found at {SHARED_ASSETS} (../shared/assets)"
)


def astronaut() -> Image.Image:
    from skimage import data

    return Image.fromarray(data.astronaut())


def grace_hopper() -> Image.Image:
    import matplotlib

    return Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")


@pytest.fixture
def face_folder(tmp_path: Path) -> Path:
    """Two real public-domain portraits that installed packages carry."""
    folder = tmp_path / "faces"
    folder.mkdir()
    astronaut().save(folder / "astronaut.png")
    grace_hopper().save(folder / "grace_hopper.jpg", quality=95)
    return folder


@pytest.fixture
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"real offline weights and faces not found at {SHARED_ASSETS}")
    return SHARED_ASSETS


def tiny_module_kwargs(**overrides) -> dict:
    """ProtectionModule arguments for the tiny random models (CPU, seconds). Settings of the attack, FaceLock's
    objective and the speed switches may be given by their field names (`eps=0.1`, `lpips_weight=0`)."""
    import dataclasses

    from facelock_pl.engine import AttackConfig, SpeedConfig
    from facelock_pl.models import LPIPSSpec, RecognizerSpec, VAESpec
    from facelock_pl.objectives import FaceLockObjective

    def group(cls, **defaults):
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**defaults, **{k: overrides.pop(k) for k in list(overrides) if k in names}}
        return cls(**values)

    kwargs = dict(method="facelock", attack=group(AttackConfig, iterations=8), objective=group(FaceLockObjective),
                  speed=group(SpeedConfig, amp_dtype=None), vae=VAESpec(kind="tiny-random-kl"),
                  recognizers=[RecognizerSpec(kind="tiny-random")], lpips=LPIPSSpec(net="tiny-random"))
    kwargs.update(overrides)
    return kwargs


def run_cli(*args) -> int:
    """The command line, in this process; returns its exit code."""
    from facelock_pl.cli import main

    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in args])
    return stop.value.code


@pytest.fixture
def cli_here(capfd):
    """The command line in this process, for whatever does not depend on the process (not signals from outside it,
    ranks, a run that must hold its lock while another starts, the environment libraries read when imported): a
    subprocess spends ~8 s importing torch and Lightning.
    `cli_here(*args)` returns a CompletedProcess, as `subprocess.run(..., capture_output=True, text=True)` would.
    The environment variables a run sets are undone afterwards."""
    environment = dict(os.environ)

    def call(*args) -> subprocess.CompletedProcess:
        capfd.readouterr()  # only this call's output
        code = run_cli(*args)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(["facelock_pl", *map(str, args)], code, out, err)

    yield call
    os.environ.clear()
    os.environ.update(environment)


def random_image(size=(80, 96), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
