"""Photos lying in their files: protected for the editor that turns them upright, and for the one that does not?

A photo lying sideways or upside down with no EXIF orientation to say so is optimised turned upright; an editor may
turn it upright before the edit, or take the file as it is. This benchmark lays the last `--faces` shared CelebA-HQ
faces (never used for tuning) down in their files, in turn on their left side, on their right and upside down,
protects them with a recipe (`--config`, default `configs/protect-offline.yaml`) seen upright only
(`attack.both_positions: false`, the engine until this benchmark) and seen upright and as they lie at every iteration
(`both_positions: true`), and makes the editor's autoencoder round trip (`edit` with `configs/edit-offline.yaml`,
plain and after JPEG-75) of each protected file as it lies and of the same file turned upright. `evaluate` (with
`--evaluate-config`) scores every round trip against the clean photo, each turned upright, the face detected anew.
Prints a Markdown table (match rate and mean cosine per recogniser, per loss and the editor's position) and the
seconds per photo; writes JSON with every image's scores.

    python benchmarks/lying_photos.py --assets ../shared/assets --work-dir W --json W.json [--faces 4]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from facelock_pl.evaluation.rates import worst_judges
from facelock_pl.outputs import read_manifest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, held_out_faces, options, print_table, work_dir, write_json  # noqa: E402

LYING = (1, 3, 2)  # quarter turns counter-clockwise from upright: on its left side, on its right, upside down
LOSSES = {"upright only": "false", "upright and as it lies": "true"}
EDITORS = ("as it lies", "turned upright")


def lay_down(faces: list[Path], folder: Path) -> dict[str, int]:
    """Each face in `folder` as `<uid>.png`, turned by the next of `LYING`; returns uid -> quarter turns."""
    folder.mkdir(parents=True, exist_ok=True)
    turns = {}
    for index, path in enumerate(faces):
        turns[path.stem] = LYING[index % len(LYING)]
        with Image.open(path) as image:
            image.convert("RGB").rotate(90 * turns[path.stem], expand=True).save(folder / f"{path.stem}.png")
    return turns


def stand_up(files: Path, turns: dict[str, int], folder: Path) -> None:
    """Each `<uid>.png` of `files` turned upright (losslessly) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    for uid, turn in turns.items():
        with Image.open(files / f"{uid}.png") as image:
            image.rotate(-90 * turn, expand=True).save(folder / f"{uid}.png")


def edit_and_evaluate(assets: Path, evaluate_config: Path, sources: Path, protected: Path, out: Path) -> pd.DataFrame:
    """The round trips of `protected` (plain, JPEG-75) and of the clean `sources`, scored; evaluate's per-image rows."""
    cli("edit", "--config", ROOT / "configs/edit-offline.yaml", "--assets", assets, "--data.source", sources,
        "--sets", json.dumps({"protected": str(protected)}), "--purify", json.dumps(["jpeg:75"]), "--output_dir", out)
    cli("evaluate", "--config", evaluate_config, "--assets", assets, "--output_dir", out)
    return pd.read_parquet(out / "report" / "per_image.parquet")


def table_rows(frame: pd.DataFrame, names: list[str]) -> list[list[str]]:
    return [[loss, editor, set_name, *(f"{100 * group[f'match:{n}'].mean():.0f}% ({group[f'fr:{n}'].mean():.2f})"
                                       for n in names)]
            for (loss, editor, set_name), group in frame.groupby(["loss", "editor", "set"], sort=False)]


def main() -> None:
    parser = options(__doc__, faces=4, iterations=150)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "protect-offline.yaml", help="the recipe")
    args = parser.parse_args()
    assets, work = args.assets.resolve(), work_dir(args, "lying-photos-")
    faces = held_out_faces(assets, args.faces)
    turns = lay_down(faces, work / "photos")
    upright_sources = work / "upright-photos"
    stand_up(work / "photos", turns, upright_sources)
    frames, seconds = [], {}
    for loss, both_positions in LOSSES.items():
        run = work / f"both-positions-{both_positions}"
        cli("fit", "--config", args.config, "--assets", assets, "--data.source", work / "photos",
            "--model.attack.iterations", args.iterations, "--model.attack.both_positions", both_positions,
            "--output_dir", run / "protected", "--trainer.enable_progress_bar", "false")
        seconds[loss] = read_manifest(run / "protected").set_index("uid")["seconds"].to_dict()
        stand_up(run / "protected" / "images", turns, run / "protected-upright")
        for editor, sources, protected, out in (
                ("as it lies", work / "photos", run / "protected", run / "eval-as-it-lies"),
                ("turned upright", upright_sources, run / "protected-upright", run / "eval-turned-upright")):
            frame = edit_and_evaluate(assets, args.evaluate_config, sources, protected, out)
            frames.append(frame.assign(loss=loss, editor=editor))
    frame = pd.concat(frames, ignore_index=True)
    clean = frame[(frame["set"] == "clean") & (frame["loss"] == next(iter(LOSSES)))].assign(loss="(the clean photo)")
    frame = pd.concat([clean, frame[frame["set"] != "clean"]], ignore_index=True)
    frame = frame.sort_values("editor", kind="stable")
    names = worst_judges(frame)  # a network behind several crops once, by its worst
    write_json(args.json, {"config": str(args.config), "faces": {uid: turn for uid, turn in turns.items()},
                           "iterations": args.iterations, "judges": names, "seconds": seconds,
                           "per_image": json.loads(frame.to_json(orient="records"))})
    print_table(f"{len(faces)} held-out faces lying in their files, protected by {args.config.name}, the TAESD round "
                "trip of each file as it lies and turned upright, scored turned upright, face detected anew: match "
                "rate (mean cosine)", ["the loss sees", "the editor takes the file", "set", *names],
                table_rows(frame, names))
    print_table("Seconds per photo", ["the loss sees", *turns],
                [[loss, *(f"{seconds[loss][uid]:.0f}" for uid in turns)] for loss in LOSSES])


if __name__ == "__main__":
    main()
