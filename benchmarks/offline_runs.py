"""What the offline benchmarks (methods, native_size, robustness) share: the command line, their common options
and the held-out faces."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*args) -> None:
    """`python -m facelock_pl ARGS` from the checkout; a failure stops the benchmark."""
    print("+ python -m facelock_pl", " ".join(map(str, args[:3])), "...", flush=True)
    subprocess.run([sys.executable, "-m", "facelock_pl", *map(str, args)], cwd=ROOT, check=True)


def options(doc: str, faces: int | None, iterations: int) -> argparse.ArgumentParser:
    """--assets, --faces (unless None: a benchmark with its own photos), --iterations, --work-dir (keep and resume
    the runs), --json (write results only there), --evaluate-config (the judges)."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle, e.g. ../shared/assets")
    if faces is not None:
        parser.add_argument("--faces", type=int, default=faces)
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the runs here; a rerun resumes")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--evaluate-config", type=Path, default=ROOT / "configs" / "evaluate-offline.yaml",
                        help="the recognisers that judge; configs/evaluate-transfer.yaml adds dlib's (a bundle from "
                             "`python -m facelock_pl assets download`)")
    return parser


def work_dir(args: argparse.Namespace, prefix: str) -> Path:
    return (args.work_dir or Path(tempfile.mkdtemp(prefix=prefix))).resolve()


def judges_scorer(evaluate_config: Path, assets: Path):
    """The recognisers of an evaluate config (its paths in the bundle `assets`), as `evaluate` scores with them."""
    import yaml

    from facelock_pl.config_files import read_config
    from facelock_pl.models import FaceScorer, RecognizerSpec

    config = yaml.safe_load(read_config(evaluate_config, assets))
    return FaceScorer([RecognizerSpec(**entry) for entry in config["recognizers"]])


def offline_editor(assets: Path):
    """`configs/edit-offline.yaml`'s editor (the TAESD round trip) on the CPU, its weights in the bundle `assets`."""
    import torch
    import yaml

    from facelock_pl.config_files import read_config
    from facelock_pl.evaluation.editors import Editor, EditorSpec
    from facelock_pl.models import VAESpec

    spec = yaml.safe_load(read_config(ROOT / "configs" / "edit-offline.yaml", assets))["editor"]
    return Editor(EditorSpec(**{**spec, "vae": VAESpec(**spec["vae"])}), torch.device("cpu"))


def held_out_faces(assets: Path, count: int) -> list[Path]:
    """The last `count` of the sorted shared CelebA-HQ faces: never used for tuning."""
    return sorted((assets / "faces" / "celebahq").glob("*.jpg"))[-count:]


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table under a one-line title."""
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
