"""A budget per photo, simulated from runs already made: each face takes the smallest budget whose protection the
verdict networks no longer recognise.

    python benchmarks/escalation.py --verdict sface,facenet-casia \
        --budget benchmarks/results/robustness-held-out-16-fill.json \
        --budget benchmarks/results/robustness-held-out-16-eps035.json \
        --budget benchmarks/results/robustness-held-out-16-eps045-rerun.json --json benchmarks/results/escalation.json

Each `--budget` is a `benchmarks/robustness.py --json` of the same faces (one protected set of it: `FILE#SET` where it
holds several), given in the order a run would escalate through them, smallest budget first. The verdict is what
`fit` can judge of a photo it protected (the manifest's `recognised_by`): the networks of its loss, each by its worst
crop, on the 8-bit image's autoencoder round trip with the face detected anew (`--verdict-on none`), or also after
purifications (`--verdict-on none,jpeg75`, a verdict `fit` does not compute today). A face keeps the first budget
whose verdict is clear, or the last. Every judge of the runs is then read on each face's chosen image: the match rate
per purification for the escalated set beside each fixed budget, how many faces each budget took, and the largest
change (linf_255) and lowest PSNR among the budgets used. The reserved judges may read the outcome, never decide it:
a verdict naming one is refused. JSON only with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def read_budget(text: str) -> dict:
    """One `--budget FILE[#SET]`: its label, linf_255 and PSNR, and {(purification, uid): scores} of its set."""
    path, _, wanted = text.partition("#")
    run = json.loads(Path(path).read_text())
    sets = run["sets"]  # {"v0": variant name, ...}
    if not wanted:
        if len(sets) != 1:
            raise SystemExit(f"escalation: {path} holds the sets {sorted(sets)}: choose one with {path}#SET")
        wanted = next(iter(sets))
    if wanted not in sets:
        raise SystemExit(f"escalation: {path} has no set {wanted!r} (it has {sorted(sets)})")
    row = next(r for r in run["rows"] if r["variant"] == sets[wanted])
    scores = {}
    for face in run["per_face"]:
        name, _, purification = face["set"].partition("+")
        if name == wanted:
            scores[(purification or "none", face["uid"])] = face
    return {"label": sets[wanted], "linf_255": row["linf_255_max"],
            "psnr_db_min": row["psnr_db_min"], "scores": scores}


def escalate(budgets: list[dict], verdict: list[str], verdict_on: list[str]) -> dict:
    """Each face's budget (index into `budgets`) and, per judge and purification, the match % of the escalated set
    and of each fixed budget."""
    faces = [sorted(uid for purification, uid in b["scores"] if purification == "none") for b in budgets]
    if any(f != faces[0] for f in faces[1:]):
        raise SystemExit("escalation: the runs hold different faces; give runs of the same faces")
    judges = [c.removeprefix("match:") for c in budgets[0]["scores"][("none", faces[0][0])]
              if c.startswith("match:") and c.endswith("@worst")]
    missing = [n for n in verdict if f"{n}@worst" not in judges]
    if missing:
        raise SystemExit(f"escalation: the runs do not score {missing} by their worst crop (they score {judges})")

    def matches(budget: dict, judge: str, purification: str, uid: str) -> bool:
        return bool(budget["scores"][(purification, uid)][f"match:{judge}"])

    chosen = {}
    for uid in faces[0]:
        clear = [i for i, b in enumerate(budgets)
                 if not any(matches(b, f"{n}@worst", p, uid) for n in verdict for p in verdict_on)]
        chosen[uid] = clear[0] if clear else len(budgets) - 1
    purifications = list(dict.fromkeys(p for p, _ in budgets[0]["scores"]))
    rates: dict = {}
    for judge in judges:
        for purification in purifications:
            fixed = [100 * sum(matches(b, judge, purification, uid) for uid in faces[0]) / len(faces[0]) for b in budgets]
            escalated = 100 * sum(matches(budgets[chosen[uid]], judge, purification, uid) for uid in faces[0]) / len(faces[0])
            rates.setdefault(judge, {})[purification] = {"escalated_pct": escalated, "fixed_pct": fixed}
    used = sorted(set(chosen.values()))
    return {"chosen": {uid: budgets[i]["label"] for uid, i in chosen.items()},
            "faces_per_budget": [sum(1 for i in chosen.values() if i == b) for b in range(len(budgets))],
            "still_recognised": [uid for uid, i in chosen.items() if i == len(budgets) - 1 and any(
                matches(budgets[i], f"{n}@worst", p, uid) for n in verdict for p in verdict_on)],
            "linf_255_max": max(budgets[i]["linf_255"] for i in used),
            "linf_255_mean": sum(budgets[i]["linf_255"] for i in chosen.values()) / len(chosen),
            "psnr_db_min": min(budgets[i]["psnr_db_min"] for i in used), "match": rates}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", action="append", required=True, metavar="FILE[#SET]",
                        help="a benchmarks/robustness.py --json of the same faces; repeat, smallest budget first")
    parser.add_argument("--verdict", required=True, help="comma-separated networks that decide (the loss's)")
    parser.add_argument("--verdict-on", default="none", help="comma-separated purifications the verdict reads")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if len(args.budget) < 2:
        parser.error("give at least two --budget, smallest first")
    verdict, verdict_on = args.verdict.split(","), args.verdict_on.split(",")
    reserved = sorted(set(verdict) & reserved_networks())
    if reserved:
        parser.error(f"{reserved} are reserved to judge transfer: they may read the outcome, never decide it")
    budgets = [read_budget(text) for text in args.budget]
    result = escalate(budgets, verdict, verdict_on)
    purifications = list(next(iter(result["match"].values())))
    rows = [[judge, *(" / ".join(f"{p:.0f}" for p in rates[purification]["fixed_pct"])
                      + f" → **{rates[purification]['escalated_pct']:.0f}**" for purification in purifications)]
            for judge, rates in result["match"].items()]
    print_table(f"match % per fixed budget ({' / '.join(b['label'] for b in budgets)}) → escalated (faces per budget "
                f"{result['faces_per_budget']}; verdict {verdict} on {verdict_on}; linf_255 up to "
                f"{result['linf_255_max']:.0f}, {result['linf_255_mean']:.2f} on average; PSNR min {result['psnr_db_min']:.1f} dB)", ["judge", *purifications], rows)
    write_json(args.json, {"budgets": args.budget, "verdict": verdict, "verdict_on": verdict_on, **result})


if __name__ == "__main__":
    main()
