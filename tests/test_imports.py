"""Every module of the package imports on its own, in a fresh interpreter (no import cycle that only the
order of other imports hides)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT

# Source folder -> package name (pyproject ships kernels/ and configs/ inside facelock_pl).
PACKAGES = {"facelock_pl": "facelock_pl", "kernels": "facelock_pl.kernels", "configs": "facelock_pl.configs"}


def modules() -> list[str]:
    names = []
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            names.append(".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)]))
    return names


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # One interpreter per module: each import starts from an empty sys.modules, as a user's first import does.
    script = "import importlib, sys; importlib.import_module(sys.argv[1])"
    failures = {}
    for name in modules():
        result = subprocess.run([sys.executable, "-c", script, name], cwd=ROOT, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            failures[name] = result.stderr.strip().splitlines()[-1]
    assert {"facelock_pl.engine.attack", "facelock_pl.kernels.pgd_step", "facelock_pl.objectives.transforms"} <= set(modules())
    assert not failures, failures
