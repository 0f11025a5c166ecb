"""Every module of the package imports on its own, as a user's first import does (no import cycle that only
the order of other imports hides)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

# Source folder -> package name (pyproject ships kernels/ and configs/ inside facelock_pl).
PACKAGES = {"facelock_pl": "facelock_pl", "kernels": "facelock_pl.kernels", "configs": "facelock_pl.configs"}

# One interpreter loads the third-party libraries once, then forks a fresh process per module: each child
# imports one of our modules with none of ours loaded, without paying torch's import time again; as many children
# at a time as there are cores.
# Usage: python -c SCRIPT LIBRARIES MODULE... (LIBRARIES: comma-separated, preloaded in the parent).
SCRIPT = r"""
import importlib, os, sys
for library in filter(None, sys.argv[1].split(",")):
    importlib.import_module(library)
packages = {name.split(".")[0] for name in sys.argv[2:]}
assert not [m for m in sys.modules if m.split(".")[0] in packages], "a library imported the package under test"
failed, running = 0, 0
for name in sys.argv[2:]:
    if running == os.cpu_count():  # one child per core at a time
        failed += os.wait()[1] != 0
        running -= 1
    if os.fork() == 0:
        try:
            importlib.import_module(name)
        except BaseException as error:
            print(f"{name}: {type(error).__name__}: {error}", flush=True)
            os._exit(1)
        os._exit(0)
    running += 1
for _ in range(running):
    failed += os.wait()[1] != 0
sys.exit(1 if failed else 0)
"""


LIBRARIES = ("torch,lightning,diffusers,transformers,datasets,kornia,pandas,pyarrow,jsonargparse,onnx2torch,"
             "facenet_pytorch,lpips,torchmetrics,rich,triton")


def modules() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            names.append(".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return names


def test_every_module_imports_alone_in_a_fresh_process():
    names = modules()
    assert {"facelock_pl.engine.attack", "facelock_pl.kernels.pgd_step", "facelock_pl.objectives.transforms"} <= set(names)
    result = subprocess.run([sys.executable, "-c", SCRIPT, LIBRARIES, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


def test_the_check_catches_an_import_cycle(tmp_path):
    """The same script on a package whose modules import each other first-thing fails."""
    package = tmp_path / "cyclic"
    package.mkdir()
    (package / "__init__.py").write_text("from .a import A\n")
    (package / "a.py").write_text("from .b import B\nA = 1\n")
    (package / "b.py").write_text("from . import A\nB = 2\n")
    result = subprocess.run([sys.executable, "-c", SCRIPT, "", "cyclic.a", "cyclic.b"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 1 and "cyclic.b: ImportError" in result.stdout
