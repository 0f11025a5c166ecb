"""Photos of several people: how much identity the faces other than the largest keep.

FaceLock's identity term sees one face per photo, the largest (as the published code, made for single portraits;
the manifest's `faces_in_photo` counts the others). This benchmark puts two held-out CelebA-HQ faces side by side
in one 512x256 photo, the left one larger (256 px against 208 px), protects it with a recipe (`--config`, default
`configs/protect-offline.yaml`, at `--data.resolution 512`: the photo's own size), makes the editor's autoencoder
round trip of the clean and the protected photo (`edit` with `configs/edit-offline.yaml`, plain and after JPEG-75),
and scores each face in its own half of the photo as `evaluate` scores an edit: the face detected anew, every
recogniser of `--evaluate-config`, its calibrated threshold, a network behind several crops judged by its worst.
Prints a Markdown table (match rate and mean cosine per recogniser, for the protected face — the largest, which the loss sees —
and the other one);
writes JSON with every face's scores.

    python benchmarks/group_photos.py --assets ../shared/assets --faces 4 --work-dir W --json W.json
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch
import yaml
from PIL import Image

from facelock_pl.config_files import read_config
from facelock_pl.evaluation.evaluate import load_edit, worst_over_crops
from facelock_pl.models import FaceScorer, RecognizerSpec
from facelock_pl.pixels import pil_to_levels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, held_out_faces, options, print_table, work_dir, worst_judges, write_json  # noqa: E402

WIDTH, HEIGHT = 512, 256
SMALLER_SIDE = 208  # the right face; the left one fills its 256 px half (on CelebA-HQ faces, the detector's largest)
HALVES = (slice(0, WIDTH // 2), slice(WIDTH // 2, WIDTH))  # the columns of the left and the right half


def group_photo(left: Path, right: Path) -> Image.Image:
    """Two faces side by side: `left` at 256 px, `right` at 208 px, centred in its half."""
    photo = Image.new("RGB", (WIDTH, HEIGHT), (128, 128, 128))
    photo.paste(Image.open(left).convert("RGB").resize((HEIGHT, HEIGHT), Image.Resampling.LANCZOS), (0, 0))
    offset = ((WIDTH // 2 - SMALLER_SIDE) // 2, (HEIGHT - SMALLER_SIDE) // 2)
    photo.paste(Image.open(right).convert("RGB").resize((SMALLER_SIDE, SMALLER_SIDE), Image.Resampling.LANCZOS),
                (WIDTH // 2 + offset[0], offset[1]))
    return photo


def score_halves(scorer: FaceScorer, clean: torch.Tensor, edit: torch.Tensor) -> dict[str, dict]:
    """Per face, "protected" (the half holding the largest face of the clean photo, the one the loss sees) and
    "other": each recogniser's cosine between the clean half's face and the edit half's, each detected on its own, and
    whether it reaches the threshold (NaN cosine and no match where a face is missing)."""
    largest = scorer.detector(clean[None]).boxes[0]
    protected = 0 if (largest[0] + largest[2]) / 2 < WIDTH // 2 else 1
    scores = {}
    for side, columns in (("protected", HALVES[protected]), ("other", HALVES[1 - protected])):
        source_faces, source_embeddings = scorer.embed(clean[None, :, :, columns])
        faces, embeddings = scorer.embed(edit[None, :, :, columns])
        found = bool(source_faces.found[0] and faces.found[0])
        row = {}
        for name, threshold, a, b in zip(scorer.names, scorer.thresholds, source_embeddings, embeddings):
            cosine = float(a[0] @ b[0]) if found else math.nan
            row[f"fr:{name}"], row[f"match:{name}"] = cosine, float(found and cosine >= threshold)
        scores[side] = {**row, **worst_over_crops(row, scorer.names)}
    return scores


def main() -> None:
    parser = options(__doc__, faces=4, iterations=150)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "protect-offline.yaml", help="the recipe")
    args = parser.parse_args()
    assets, work = args.assets.resolve(), work_dir(args, "group-photos-")
    faces = held_out_faces(assets, args.faces)
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for left, right in zip(faces[0::2], faces[1::2]):
        target = photos / f"{left.stem}+{right.stem}.png"
        if not target.exists():
            group_photo(left, right).save(target)
    cli("fit", "--config", args.config, "--assets", assets, "--data.source", photos, "--data.resolution", WIDTH,
        "--data.num_workers", 0, "--model.attack.iterations", args.iterations, "--output_dir", work / "protected",
        "--trainer.enable_progress_bar", "false")
    cli("edit", "--config", ROOT / "configs/edit-offline.yaml", "--assets", assets, "--data.source", photos,
        "--data.resolution", WIDTH, "--sets", json.dumps({"protected": str(work / "protected")}),
        "--purify", json.dumps(["jpeg:75"]), "--output_dir", work / "eval")

    config = yaml.safe_load(read_config(args.evaluate_config, assets))
    scorer = FaceScorer([RecognizerSpec(**entry) for entry in config["recognizers"]])
    per_face = []
    for photo in sorted(photos.glob("*.png")):
        clean = pil_to_levels(Image.open(photo).convert("RGB"))
        for set_name in ("clean", "protected", "protected+jpeg75"):
            edit = load_edit(work / "eval", set_name, 0, photo.stem)
            for side, row in score_halves(scorer, clean, edit).items():
                per_face.append({"photo": photo.stem, "set": set_name, "face": side, **row})

    frame = pd.DataFrame(per_face)
    judges = worst_judges(frame)
    rows = []
    for (set_name, side), group in frame.groupby(["set", "face"], sort=False):
        rows.append([set_name, f"{side} face", *(f"{100 * group[f'match:{j}'].mean():.0f}% ({group[f'fr:{j}'].mean():.2f})"
                                                 for j in judges)])
    write_json(args.json, {"config": str(args.config), "faces": [p.name for p in faces], "iterations": args.iterations,
                           "judges": judges, "per_face": per_face})
    print_table(f"{frame['photo'].nunique()} photos of two held-out faces, {WIDTH}x{HEIGHT}, TAESD round trip, each face "
                "detected anew in its half: match rate (mean cosine)", ["round trip of", "face", *judges], rows)


if __name__ == "__main__":
    main()
