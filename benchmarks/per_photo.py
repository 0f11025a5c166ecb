"""A choice per photo among runs already made, by a verdict: a budget per photo, or restarts, simulated.

    python benchmarks/per_photo.py --choose first-clear --verdict sface,facenet-casia \
        --run benchmarks/results/robustness-held-out-16-fill.json \
        --run benchmarks/results/robustness-held-out-16-eps035.json \
        --run benchmarks/results/robustness-held-out-16-eps045-rerun.json --json benchmarks/results/escalation.json

Each `--run` is a `benchmarks/robustness.py --json` of the same faces (one protected set of it: `FILE#SET` where it
holds several). The verdict is what `fit` can judge of a photo it protected (the manifest's `recognised_by`): the
networks of its loss and its judges, each by its worst crop, on the 8-bit image's autoencoder round trip with the face
detected anew (`--verdict-on none`), or also after purifications (`--verdict-on none,jpeg75`, a verdict `fit` does not
compute today). `--choose first-clear` escalates: the runs are budgets, smallest first, and a face keeps the first
whose verdict is clear, or the last. `--choose best` restarts: the runs are seeds of one recipe, and a face keeps the
one its verdict networks match least (then read least: the lowest mean cosine). Every judge of the runs is then read
on each face's chosen image: the match rate per purification for the chosen set beside each run, how many faces
each run gave, and the largest change (linf_255) and lowest PSNR among the runs used. The reserved judges may read the
outcome, never decide it: a verdict naming one is refused. JSON only with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Literal

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import ROOT, print_table, write_json  # noqa: E402

from facelock_pl.models.recognizers import RESERVED_FOR_EVALUATION  # noqa: E402


def reserved_networks() -> set[str]:
    """The networks (names before any `@crop`) that the evaluation configs give a reserved kind."""
    names = set()
    for config in sorted((ROOT / "configs").glob("evaluate*.yaml")):
        for spec in yaml.safe_load(config.read_text()).get("recognizers") or []:
            if spec.get("kind") in RESERVED_FOR_EVALUATION and "name" in spec:
                names.add(spec["name"].split("@")[0])
    return names


def read_run(text: str) -> dict:
    """One `--run FILE[#SET]`: its label, linf_255 and PSNR, and {(purification, uid): scores} of its set."""
    path, _, wanted = text.partition("#")
    run = json.loads(Path(path).read_text())
    sets = run["sets"]  # {"v0": variant name, ...}
    if not wanted:
        if len(sets) != 1:
            raise SystemExit(f"per_photo: {path} holds the sets {sorted(sets)}: choose one with {path}#SET")
        wanted = next(iter(sets))
    if wanted not in sets:
        raise SystemExit(f"per_photo: {path} has no set {wanted!r} (it has {sorted(sets)})")
    row = next(r for r in run["rows"] if r["variant"] == sets[wanted])
    scores = {}
    for face in run["per_face"]:
        name, _, purification = face["set"].partition("+")
        if name == wanted:
            scores[(purification or "none", face["uid"])] = face
    return {"label": sets[wanted], "linf_255": row["linf_255_max"],
            "psnr_db_min": row["psnr_db_min"], "scores": scores}


def choose(runs: list[dict], verdict: list[str], verdict_on: list[str], how: Literal["first-clear", "best"]) -> dict:
    """Each face's run (`first-clear` or `best`, see the module's doc) and, per judge and purification, the match % of
    the chosen set and of each run."""
    faces = [sorted(uid for purification, uid in r["scores"] if purification == "none") for r in runs]
    if any(f != faces[0] for f in faces[1:]):
        raise SystemExit("per_photo: the runs hold different faces; give runs of the same faces")
    judges = [c.removeprefix("match:") for c in runs[0]["scores"][("none", faces[0][0])]
              if c.startswith("match:") and c.endswith("@worst")]
    missing = [n for n in verdict if f"{n}@worst" not in judges]
    if missing:
        raise SystemExit(f"per_photo: the runs do not score {missing} by their worst crop (they score {judges})")
    purifications = list(dict.fromkeys(p for p, _ in runs[0]["scores"]))
    unknown = [p for p in verdict_on if p not in purifications]
    if unknown:
        raise SystemExit(f"per_photo: the runs hold no purification {unknown} (they hold {purifications})")

    def matches(run: dict, judge: str, purification: str, uid: str) -> bool:
        return bool(run["scores"][(purification, uid)][f"match:{judge}"])

    def reading(run: dict, uid: str) -> tuple[int, float]:  # the verdict's matches, then its mean cosine
        cells = [run["scores"][(p, uid)] for p in verdict_on]
        return (sum(cell[f"match:{n}@worst"] for cell in cells for n in verdict),
                sum(cell[f"fr:{n}@worst"] for cell in cells for n in verdict) / (len(cells) * len(verdict)))

    chosen = {}
    for uid in faces[0]:
        readings = [reading(run, uid) for run in runs]
        if how == "first-clear":
            clear = [i for i, (matched, _) in enumerate(readings) if matched == 0]
            chosen[uid] = clear[0] if clear else len(runs) - 1
        else:
            chosen[uid] = min(range(len(runs)), key=lambda i: readings[i])
    rates: dict = {}
    for judge in judges:
        for purification in purifications:
            each = [100 * sum(matches(r, judge, purification, uid) for uid in faces[0]) / len(faces[0]) for r in runs]
            picked = 100 * sum(matches(runs[chosen[uid]], judge, purification, uid) for uid in faces[0]) / len(faces[0])
            rates.setdefault(judge, {})[purification] = {"chosen_pct": picked, "per_run_pct": each}
    used = sorted(set(chosen.values()))
    return {"chosen": {uid: runs[i]["label"] for uid, i in chosen.items()},
            "faces_per_run": [sum(1 for i in chosen.values() if i == r) for r in range(len(runs))],
            "still_recognised": [uid for uid, i in chosen.items() if reading(runs[i], uid)[0] > 0],
            "linf_255_max": max(runs[i]["linf_255"] for i in used),
            "linf_255_mean": sum(runs[i]["linf_255"] for i in chosen.values()) / len(chosen),
            "psnr_db_min": min(runs[i]["psnr_db_min"] for i in used), "match": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="FILE[#SET]",
                        help="a benchmarks/robustness.py --json of the same faces; repeat (first-clear: smallest "
                             "budget first)")
    parser.add_argument("--choose", choices=["first-clear", "best"], required=True,
                        help="first-clear: a budget per photo (escalation); best: restarts")
    parser.add_argument("--verdict", required=True, help="comma-separated networks that decide (the loss's, its judges')")
    parser.add_argument("--verdict-on", default="none", help="comma-separated purifications the verdict reads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if len(args.run) < 2:
        parser.error("give at least two --run")
    verdict, verdict_on = args.verdict.split(","), args.verdict_on.split(",")
    reserved = sorted(set(verdict) & reserved_networks())
    if reserved:
        parser.error(f"{reserved} are reserved to judge transfer: they may read the outcome, never decide it")
    runs = [read_run(text) for text in args.run]
    result = choose(runs, verdict, verdict_on, args.choose)
    purifications = list(next(iter(result["match"].values())))
    rows = [[judge, *(" / ".join(f"{p:.0f}" for p in rates[purification]["per_run_pct"])
                      + f" → **{rates[purification]['chosen_pct']:.0f}**" for purification in purifications)]
            for judge, rates in result["match"].items()]
    print_table(f"match % per run ({' / '.join(r['label'] for r in runs)}) → chosen {args.choose} (faces per run "
                f"{result['faces_per_run']}; verdict {verdict} on {verdict_on}; linf_255 up to "
                f"{result['linf_255_max']:.0f}, {result['linf_255_mean']:.2f} on average; PSNR min "
                f"{result['psnr_db_min']:.1f} dB)", ["judge", *purifications], rows)
    write_json(args.json, {"runs": args.run, "choose": args.choose, "verdict": verdict, "verdict_on": verdict_on,
                           **result})


if __name__ == "__main__":
    main()
