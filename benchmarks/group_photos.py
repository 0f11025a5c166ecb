"""Photos of several people: how much identity the faces other than the largest keep.

FaceLock's identity term sees one face per photo, the largest (as the published code, made for single portraits;
the manifest's `faces_in_photo` counts the others). This benchmark takes the photos of the bundle's `faces/pairs`
that show more than one face at the working size (a couple, a selfie with four faces found, two portraits with people
behind), protects them with a recipe (`--config`, default `configs/protect-offline.yaml`, its own 256 px), makes the editor's
autoencoder round trip of the clean and the protected photos (`edit` with `configs/edit-offline.yaml`, plain and after
JPEG-75) and scores every face of the clean photo as `evaluate` scores an edit, each in a window around its box (the
box grown by half its side each way) of the clean photo and of the round trip: the face detected anew there, every
recogniser of `--evaluate-config`, its calibrated threshold, a network behind several crops judged by its worst.
Prints a Markdown table (match rate and mean cosine per recogniser, for the largest face and the others) and the
run's own verdict per photo (the manifest's `recognised_by`) beside the networks that match any of its faces here;
writes JSON with every face's scores and the manifest's measurement columns. `--objective-faces N` protects the N largest faces of each photo (`objective.faces`; 1, the
default: the largest only, as the published code).

    python benchmarks/group_photos.py --assets ../shared/assets --work-dir W --json W.json [--objective-faces 8]
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import torch

from facelock_pl.data.images import load_photo
from facelock_pl.evaluation.evaluate import load_edit, worst_over_crops
from facelock_pl.evaluation.rates import worst_judges
from facelock_pl.models import FaceScorer
from facelock_pl.models.faces import face_windows
from facelock_pl.outputs import read_manifest
from facelock_pl.pixels import editor_input, pil_to_levels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, judges_scorer, options, print_table, work_dir, write_json  # noqa: E402

RESOLUTION = 256  # protect-offline.yaml's and edit-offline.yaml's working size
SETS = ("clean", "protected", "protected+jpeg75")
MANIFEST_COLUMNS = ("faces_in_photo", "faces_protected", "fr_cos_recon", "fr_cos_recon_detected", "recognised_by")


def score_faces(scorer: FaceScorer, clean: torch.Tensor, edit: torch.Tensor) -> list[dict]:
    """Per face of the clean photo (the largest first): each recogniser's cosine between its face in the clean
    window and the face detected anew in the same window of the edit, and whether it reaches the threshold (NaN
    cosine and no match where either face is missing)."""
    scores = []
    for rows, columns in face_windows(scorer.detector.all_boxes(clean[None])[0], *clean.shape[-2:]):
        source_faces, source_embeddings = scorer.embed(clean[None, :, rows, columns])
        faces, embeddings = scorer.embed(edit[None, :, rows, columns])
        found = bool(source_faces.found[0] and faces.found[0])
        row = {}
        for name, threshold, a, b in zip(scorer.names, scorer.thresholds, source_embeddings, embeddings):
            cosine = float(a[0] @ b[0]) if found else math.nan
            row[f"fr:{name}"], row[f"match:{name}"] = cosine, float(found and cosine >= threshold)
        scores.append({**row, **worst_over_crops(row, scorer.names)})
    return scores


def verdict(recognised_by) -> str:
    """A manifest's `recognised_by` cell as the table shows it."""
    if not isinstance(recognised_by, str):
        return "not judged"
    return recognised_by or "none"


def group_photos(scorer: FaceScorer, folder: Path) -> list[Path]:
    """The photos of `folder` that show more than one face at the working size."""
    return [path for path in sorted(folder.glob("*.jpg"))
            if len(scorer.detector.all_boxes(working(path)[None])[0]) > 1]


def working(path: Path) -> torch.Tensor:
    """A photo as the editor (and the recipe) sees it: upright, uint8 [3, h, w], the longest side RESOLUTION."""
    return editor_input(pil_to_levels(load_photo(path).image), RESOLUTION)


def main() -> None:
    parser = options(__doc__, faces=None, iterations=150)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "protect-offline.yaml", help="the recipe")
    parser.add_argument("--objective-faces", type=int, default=1, help="faces of each photo in the FR term")
    args = parser.parse_args()
    assets, work = args.assets.resolve(), work_dir(args, "group-photos-")
    scorer = judges_scorer(args.evaluate_config, assets)
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for path in group_photos(scorer, assets / "faces" / "pairs"):
        (photos / path.name).write_bytes(path.read_bytes())
    cli("fit", "--config", args.config, "--assets", assets, "--data.source", photos, "--data.resolution", RESOLUTION,
        "--data.num_workers", 0, "--model.attack.iterations", args.iterations,
        "--model.objective.faces", args.objective_faces, "--output_dir", work / "protected",
        "--trainer.enable_progress_bar", "false")
    cli("edit", "--config", ROOT / "configs/edit-offline.yaml", "--assets", assets, "--data.source", photos,
        "--data.resolution", RESOLUTION, "--sets", json.dumps({"protected": str(work / "protected")}),
        "--purify", json.dumps(["jpeg:75"]), "--output_dir", work / "eval")

    per_face = []
    for photo in sorted(photos.glob("*.jpg")):
        for set_name in SETS:
            edit = load_edit(work / "eval", set_name, 0, photo.stem)
            for index, row in enumerate(score_faces(scorer, working(photo), edit)):
                per_face.append({"photo": photo.name, "set": set_name, "face": index,
                                 "which": "largest" if index == 0 else "other", **row})
    frame = pd.DataFrame(per_face)
    judges = worst_judges(frame)
    rows = [[set_name, which, str(len(group)),
             *(f"{100 * group[f'match:{j}'].mean():.0f}% ({group[f'fr:{j}'].mean():.2f})" for j in judges)]
            for (set_name, which), group in frame.groupby(["set", "which"], sort=False)]
    manifest = read_manifest(work / "protected").set_index("uid")[list(MANIFEST_COLUMNS)]
    write_json(args.json, {"config": str(args.config), "photos": sorted(frame["photo"].unique()),
                           "iterations": args.iterations, "objective_faces": args.objective_faces, "judges": judges,
                           "per_face": per_face,
                           "manifest": json.loads(manifest.to_json(orient="index"))})
    print_table(f"{frame['photo'].nunique()} photos of several people, {RESOLUTION} px, the {args.objective_faces} "
                "largest face(s) of each in the FR term, TAESD round trip, each face detected anew in its window: match "
                "rate (mean cosine)", ["round trip of", "face", "faces", *judges], rows)
    protected = frame[frame["set"] == "protected"]
    print_table("The manifest's verdict (the run's own measurement) beside the networks that match any face here",
                ["photo", "faces_protected", "fr_cos_recon_detected", "recognised_by", "networks matching a face here"],
                [[uid, str(row["faces_protected"]), f"{row['fr_cos_recon_detected']:.2f}", verdict(row["recognised_by"]),
                  ", ".join(j for j in judges if protected.loc[protected["photo"].str.startswith(f"{uid}."),
                                                                 f"match:{j}"].any()) or "none"]
                 for uid, row in manifest.iterrows()])


if __name__ == "__main__":
    main()
