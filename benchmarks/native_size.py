"""Native-size protection: carried from the working resolution, or optimised at native size? (offline, real weights)

    python benchmarks/native_size.py --assets ../shared/assets --faces 2 --iterations 50 --work-dir W \
        --json benchmarks/results/native-size.json

On shared CelebA-HQ faces at their native 1024x1024 (the last `--faces` of the sorted list: never used for
tuning), TAESD + facenet CASIA-WebFace in the loss (`configs/offline.yaml`), ε = 0.03, the same iterations:
  (a) carried   protect at 512 px, the perturbation carried to 1024 (the default path);
  (b) native    protect at 1024 px (`data.resolution: native`);
  (c) crop      the source resized to 512 first, protected and delivered at 512 (what earlier versions gave a
                user: the lower bound of usability, for reference).
Each protected image then goes through an editor's preprocessing — resized (antialiased) to 512 and to 256 —
the TAESD round trip and the offline evaluation (face detected anew; SFace, facenet CASIA, w600k_mbf; match
rates at the thresholds calibrated on the shared pairs). Reported per variant: mean cosine and match rate per
recogniser and editor resolution, PSNR at the delivered size, seconds per image; the JSON has every face's scores. `--work-dir` keeps the runs; a
rerun resumes. JSON only with --json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, held_out_faces, options, print_table, work_dir, write_json  # noqa: E402

from facelock_pl.outputs import read_manifest  # noqa: E402

RECOGNIZERS = ("sface", "facenet-casia", "w600k-mbf")
VARIANTS = {"carried": ["--data.resolution", "512"], "native": ["--data.resolution", "native", "--data.batch_size", "1"],
            "crop": ["--data.resolution", "512"]}


def main() -> None:
    args = options(__doc__, faces=2, iterations=50).parse_args()
    work = work_dir(args, "facelock-native-")
    faces, small = work / "faces", work / "faces-512"
    for folder in (faces, small):
        folder.mkdir(parents=True, exist_ok=True)
    for path in held_out_faces(args.assets, args.faces):
        image = Image.open(path).convert("RGB")
        image.save(faces / f"{path.stem}.png")
        image.resize((512, 512), Image.Resampling.LANCZOS).save(small / f"{path.stem}.png")

    sets = {}
    for name, variant in VARIANTS.items():
        sets[name] = work / name
        cli("fit", "--config", ROOT / "configs" / "offline.yaml", "--assets", args.assets.resolve(), "--data.source",
            small if name == "crop" else faces, "--model.attack.iterations", args.iterations, "--data.num_workers", 0,
            "--output_dir", sets[name], "--trainer.enable_progress_bar", "false", *variant)
    results = {}
    for resolution in (512, 256):
        evaluation = work / f"eval-{resolution}"
        cli("edit", "--config", ROOT / "configs" / "edit-offline.yaml", "--assets", args.assets.resolve(), "--data.source", faces,
            "--data.resolution", resolution, "--purify", "[]", "--sets", json.dumps({k: str(v) for k, v in sets.items()}),
            "--output_dir", evaluation)
        cli("evaluate", "--config", ROOT / "configs" / "evaluate-offline.yaml", "--assets", args.assets.resolve(),
            "--output_dir", evaluation)
        results[resolution] = pd.read_parquet(evaluation / "report" / "per_image.parquet")

    rows = []
    for name in ["clean", *VARIANTS]:
        row = {"variant": name}
        for resolution, frame in results.items():
            part = frame[frame["set"] == name]
            for recognizer in RECOGNIZERS:
                row[f"{recognizer} cos @{resolution}"] = float(part[f"fr:{recognizer}"].mean())
                row[f"{recognizer} match @{resolution}"] = float(part[f"match:{recognizer}"].mean())
        if name != "clean":
            manifest = read_manifest(sets[name])
            row.update(psnr_db=float(manifest["psnr_db"].mean()), seconds_per_image=float(manifest["seconds"].mean()),
                       delivered=f"{int(manifest['width'].iloc[0])}x{int(manifest['height'].iloc[0])}")
        rows.append(row)
    per_face = [{"resolution": resolution, **record} for resolution, frame in results.items()
                for record in frame[["set", "uid", *[f"{k}:{r}" for r in RECOGNIZERS for k in ("fr", "match")]]]
                .to_dict(orient="records")]
    write_json(args.json, {"faces": sorted(p.name for p in faces.iterdir()), "iterations": args.iterations, "rows": rows,
                           "per_face": per_face})
    print_table(f"{args.faces} faces at 1024x1024, {args.iterations} iterations, eps 0.03; match rate (mean cosine) after "
                "the editor's resize and the TAESD round trip, face detected anew",
                ["variant", *[f"{r} @{s}" for s in (512, 256) for r in RECOGNIZERS], "PSNR dB", "delivered", "s/image"],
                [[row["variant"], *[f"{100 * row[f'{r} match @{s}']:.0f}% ({row[f'{r} cos @{s}']:.2f})"
                                    for s in (512, 256) for r in RECOGNIZERS],
                  *([f"{row['psnr_db']:.2f}", row["delivered"], f"{row['seconds_per_image']:.0f}"] if "psnr_db" in row
                    else ["–"] * 3)] for row in rows])


if __name__ == "__main__":
    main()
