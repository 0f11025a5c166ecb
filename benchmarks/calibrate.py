"""Same-person thresholds of every recogniser an evaluation config lists, calibrated on the shared pairs.

    python benchmarks/calibrate.py --assets /path/to/bundle --config configs/evaluate-crops.yaml \
        --json benchmarks/results/calibration-crops.json

Each recogniser (as the config spells it: kind, weights, crop convention, margin) embeds the faces of
`faces/pairs/master.csv` (MTCNN detection, then its crop); per recogniser: AUC of same- against different-person
cosines, the threshold (halfway between the classes where they separate, else the best-accuracy cosine), the
accuracy there, and the threshold the config now states. Prints a Markdown table; writes JSON with --json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from facelock_pl.config_files import read_config
from facelock_pl.evaluation.calibrate import calibrate, pair_scores
from facelock_pl.models import RecognizerSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import print_table, write_json  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle (with the judges' weights)")
    parser.add_argument("--config", type=Path, required=True, help="an evaluate config listing `recognizers`")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    config = yaml.safe_load(read_config(args.config, args.assets.resolve()))
    specs = [RecognizerSpec(**entry) for entry in config["recognizers"]]
    scores, same = pair_scores(args.assets / "faces/pairs/master.csv", specs)
    results = {spec.label: {**calibrate(scores[spec.label], same), "stated": spec.threshold} for spec in specs}
    write_json(args.json, {"config": str(args.config), "pairs": len(same), "recognizers": results})
    print_table(f"{len(same)} pairs of faces/pairs/master.csv; threshold: halfway between the classes, or the best accuracy",
                ["recogniser", "AUC", "threshold", "accuracy", "stated in the config"],
                [[name, f"{r['auc']:.3f}", f"{r['threshold']:.3f}", f"{r['accuracy']:.3f}", str(r["stated"])]
                 for name, r in results.items()])


if __name__ == "__main__":
    main()
