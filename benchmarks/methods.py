"""The published methods side by side, and a budget sweep, in the offline evaluation (real weights, no network).

    python benchmarks/methods.py --assets ../shared/assets --faces 4 --iterations 100 --work-dir W \
        --json benchmarks/results/methods-offline.json

On the last `--faces` shared CelebA-HQ faces (256 px; TAESD; facenet CASIA-WebFace in FaceLock's loss, as
`configs/offline.yaml` but with the published loop: continuous iterate, LPIPS off offline), every method at ε = 0.03
(`facelock`, `photoguard`, `encoder`, `vae`, `cw`) and FaceLock over `--budgets` (`fit --sweep_eps`), all through
`python -m facelock_pl`; then the TAESD round trip, plain and after a JPEG-75 re-save, and the offline evaluation
(face detected anew; SFace, facenet CASIA-WebFace, w600k_mbf, and dlib with `--evaluate-config
configs/evaluate-transfer.yaml`; match rates at the calibrated thresholds). Prints FR cosine and match rate per method
and per ε; `--work-dir` keeps and resumes the runs; JSON only with --json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pandas as pd

from facelock_pl.evaluation.rates import worst_judges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, cli, held_out_faces, options, print_table, work_dir, write_json  # noqa: E402

from facelock_pl.outputs import read_manifest  # noqa: E402

METHODS = ("facelock", "photoguard", "encoder", "vae", "cw")


def main() -> None:
    parser = options(__doc__, faces=4, iterations=100)
    parser.add_argument("--budgets", default="[0.01, 0.02, 0.05]")  # ε = 0.03 is the `facelock` row
    args = parser.parse_args()
    work, assets = work_dir(args, "facelock-methods-"), args.assets.resolve()
    faces = work / "faces"
    faces.mkdir(parents=True, exist_ok=True)
    for path in held_out_faces(assets, args.faces):
        (faces / path.name).write_bytes(path.read_bytes())
    common = ["--config", ROOT / "configs" / "offline.yaml", "--assets", assets, "--data.source", faces,
              "--model.attack.iterations", args.iterations, "--model.attack.quantise_forward", "false",
              "--data.num_workers", 0, "--trainer.enable_progress_bar", "false"]
    sets = {}
    for method in METHODS:
        sets[method] = work / method
        # LPIPS off for FaceLock (offline, as offline.yaml); the other methods take no FaceLock terms: back to the default
        objective = ["--model.objective.lpips_weight", 0 if method == "facelock" else 1]
        cli("fit", *common, "--model.method", method, *objective, "--output_dir", sets[method])
    sets["facelock-sweep"] = work / "sweep"
    cli("fit", *common, "--model.objective.lpips_weight", 0, "--sweep_eps", args.budgets, "--output_dir", sets["facelock-sweep"])
    evaluation = work / "eval"
    cli("edit", "--config", ROOT / "configs" / "edit-offline.yaml", "--assets", assets, "--data.source", faces,
        "--purify", "[jpeg:75]", "--sets", json.dumps({k: str(v) for k, v in sets.items()}), "--output_dir", evaluation)
    cli("evaluate", "--config", args.evaluate_config, "--assets", assets, "--output_dir", evaluation)

    frame = pd.read_parquet(evaluation / "report" / "per_image.parquet")
    recognizers = worst_judges(frame)  # a network behind several crops once, by its worst
    rows = []
    for name, part in frame.groupby("set", sort=False):
        row = {"set": name, "fdfr": float(1 - part["face_found"].mean())}
        for recognizer in recognizers:
            row[f"{recognizer} cos"] = float(part[f"fr:{recognizer}"].mean())
            row[f"{recognizer} cos all"] = float(part[f"fr_all:{recognizer}"].mean())
            row[f"{recognizer} match"] = float(part[f"match:{recognizer}"].mean())
        base = name.split("+")[0]
        if base in sets or "@eps" in base:
            folder = sets.get(base) or sets["facelock-sweep"] / f"eps-{base.split('@eps')[1]}"
            manifest = read_manifest(folder)
            row.update(linf_255=float(manifest["linf_255"].max()), psnr_db=float(manifest["psnr_db"].mean()))
        rows.append(row)
    write_json(args.json, {"faces": sorted(p.name for p in faces.iterdir()), "iterations": args.iterations,
                           "judges": recognizers, "rows": rows})
    print_table(f"{args.faces} held-out faces, 256 px, {args.iterations} iterations; TAESD round trip, face detected anew; "
                "match rate (mean FR cosine over detected faces; FR-all over every edit)",
                ["set", *recognizers, "FDFR", "max linf_255", "PSNR dB"],
                [[row["set"], *[f"{100 * row[f'{r} match']:.0f}% ({row[f'{r} cos']:.2f}; all {row[f'{r} cos all']:.2f})"
                                for r in recognizers], f"{100 * row['fdfr']:.0f}%",
                  *([f"{row['linf_255']:.0f}", f"{row['psnr_db']:.2f}"] if "psnr_db" in row else ["–", "–"])] for row in rows])


if __name__ == "__main__":
    main()
