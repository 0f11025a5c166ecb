"""Match rates over several seeds: one recipe's protection, run at several `attack.seed`s, pooled.

    python benchmarks/seeds.py --run W0/eval W0/j-vggface2 --run W1/eval W1/j-vggface2 --run W2/eval W2/j-vggface2 \
        --json benchmarks/results/seeds.json

Each `--run` is one protection of the same faces (one seed): the `evaluate` output folders that scored its images
(each holding `report/per_image.parquet`; several folders when several evaluate configs judged it, e.g.
`benchmarks/robustness.py`'s `W/eval` and a judge's `W/j-NAME`). Sixteen faces make one face about 6 points, and a
seed moves a face across a threshold as often as a lever does (`benchmarks/robustness.md`, "The seed's share"), so
one run's match rate says little about a goal like "≤ 15%". Pooled over runs, each judge (a network behind several
crop conventions by its worst, `NAME@worst`) and purification gets: the match rate over every (run, face) with a
95% Wilson interval over the faces (n = faces: a face's runs mostly agree), each run's rate, the faces matched in at
least one run and in every run, and the mean cosine. The runs must hold the same faces. Seeds run as variants of one
`benchmarks/robustness.py` work dir are sets of one evaluation: name each run's with `--set`. One `--run` alone gives
that run's rates, every judge of its folders in one table, with the same intervals. JSON only with --json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from facelock_pl.evaluation.rates import wilson_95, worst_judges

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import print_table, write_json  # noqa: E402


def read_run(folders: list[Path], protected_set: str | None) -> pd.DataFrame:
    """One run's scores, every judge of every folder side by side: rows (uid, prompt_id, purification), columns
    `match:JUDGE` and `fr:JUDGE`; only the protected set's rows (`clean` is the unprotected reference)."""
    frames = []
    for folder in folders:
        path = folder / "report" / "per_image.parquet"
        if not path.is_file():
            raise SystemExit(f"seeds: {path} not found: give the folder `evaluate --output_dir` wrote")
        frame = pd.read_parquet(path)
        frame = frame[frame["base_set"] != "clean"]
        names = sorted(frame["base_set"].unique())
        wanted = protected_set or (names[0] if len(names) == 1 else None)
        if wanted is None:
            raise SystemExit(f"seeds: {path} scores several protected sets {names}: choose one with --set")
        if wanted not in names:
            raise SystemExit(f"seeds: {path} has no set {wanted!r} (it has {names})")
        frame = frame[frame["base_set"] == wanted].copy()
        frame["purification"] = frame["purification"].fillna("none").replace("", "none")
        scores = [c for c in frame.columns if c.startswith(("match:", "fr:"))]
        frames.append(frame.set_index(["uid", "prompt_id", "purification"])[scores])
    seen: set[str] = set()
    for folder, frame in zip(folders, frames):
        twice = sorted(seen & set(frame.columns))
        if twice:
            raise SystemExit(f"seeds: {folder} scores {twice[0].split(':', 1)[1]} again: give each judge once per run")
        seen |= set(frame.columns)
    return pd.concat(frames, axis=1, sort=False)  # rows in the evaluation's order: plain first, then purifications


def pool(runs: list[pd.DataFrame]) -> dict:
    """{judge: {purification: scores over every (run, face)}} for the judges and purifications every run has."""
    faces = [sorted(run.index.droplevel("purification").unique()) for run in runs]
    if any(f != faces[0] for f in faces[1:]):
        raise SystemExit("seeds: the runs hold different faces; pool runs of the same faces only")
    judges = [j for j in worst_judges(runs[0]) if all(f"match:{j}" in run.columns for run in runs)]
    purifications = [p for p in dict.fromkeys(runs[0].index.get_level_values("purification"))
                     if all(p in run.index.get_level_values("purification") for run in runs)]
    pooled: dict = {}
    for judge in judges:
        for purification in purifications:
            def by_run(column: str) -> pd.DataFrame:  # rows: (uid, prompt_id); a column per run
                return pd.concat([run.xs(purification, level="purification")[column] for run in runs], axis=1,
                                 keys=range(len(runs)))

            matches, cosines = by_run(f"match:{judge}"), by_run(f"fr:{judge}")
            matches = matches.dropna()  # an image with no score in some run (not judged) is left out of every run
            total, matched = matches.size, int(matches.to_numpy().sum())
            if total == 0:
                continue
            # n = the faces, not faces x runs: a face's runs mostly agree, so more seeds add little independent
            # evidence about faces; the interval is the conservative one (runs as copies of one another).
            low, high = wilson_95(matched / total, len(matches))
            pooled.setdefault(judge, {})[purification] = {
                "match_pct": 100 * matched / total, "ci95_pct": [100 * low, 100 * high], "matched": matched,
                "judged": total, "faces": len(matches),
                "match_pct_per_run": [100 * float(matches[run].mean()) for run in matches.columns],
                "faces_matched_in_any_run": int(matches.any(axis=1).sum()),
                "faces_matched_in_every_run": int(matches.all(axis=1).sum()),
                "mean_cos": float(cosines.loc[matches.index].to_numpy().mean()),
            }
    return pooled


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, nargs="+", action="append", required=True,
                        help="one seed's evaluate output folders (repeat --run per seed)")
    parser.add_argument("--set", action="append", default=None,
                        help="the protected set to pool (default: the only one); once for every run, or once per "
                             "--run in their order (seeds run as variants of one benchmarks/robustness.py work dir: "
                             "--run W/eval --set v0 --run W/eval --set v1 ...)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sets = args.set or [None]
    if len(sets) not in (1, len(args.run)):
        parser.error(f"give --set once, or once per --run ({len(args.run)}); got {len(sets)}")
    sets = sets * len(args.run) if len(sets) == 1 else sets
    pooled = pool([read_run(folders, protected_set) for folders, protected_set in zip(args.run, sets)])
    purifications = list(dict.fromkeys(p for by_purification in pooled.values() for p in by_purification))

    def cell(scores: dict | None) -> str:
        if scores is None:
            return "–"
        low, high = scores["ci95_pct"]
        runs = " / ".join(f"{p:.0f}" for p in scores["match_pct_per_run"])
        return f"{scores['match_pct']:.0f}% [{low:.0f}–{high:.0f}] ({runs})"

    rows = [[judge, *(cell(by_purification.get(p)) for p in purifications),
             f"{by_purification['none']['faces_matched_in_any_run']} / {by_purification['none']['faces_matched_in_every_run']}"
             if "none" in by_purification else "–"] for judge, by_purification in pooled.items()]
    pooling = f"{len(args.run)} runs pooled: match % over every (run, face)" if len(args.run) > 1 else "one run: match %"
    print_table(f"{pooling} [95% Wilson interval over the faces] (each run's %)",
                ["judge", *purifications, "faces matched plain: in any run / in every run"], rows)
    write_json(args.json, {"runs": [[str(f) for f in folders] for folders in args.run], "sets": sets,
                           "pooled": pooled})


if __name__ == "__main__":
    main()
