"""Photos lying sideways or upside down: does the engine turn them the right way up?

The engine detects faces in each photo as it stands and turned by each quarter turn, and optimises it turned the way
`FaceDetector.upright_turns` picks: the turn whose face is the most probable. MTCNN also finds faces in photos turned
the wrong way (sometimes as they stand), so the rule until this benchmark — as it stands where a face is found
there, else the first quarter turn that shows one — could optimise a face lying on its side or upside down. This
benchmark puts every face of the bundle (`faces/celebahq` and `faces/pairs`, each at `--side` pixels, upright in the
bundle) upright, on its left side, on its right and upside down, and counts the turns each rule picks: right,
wrong, none (left as it stands although it does not stand upright). It records every turn's probability, and what
finding the way up costs per photo: the seconds of one detection (what the engine ran on a photo with a face found as
it stands) against those of `upright_turns` (every turn), timed in turn on each upright face.

    python benchmarks/orientation.py --assets ../shared/assets [--side 256] [--json benchmarks/results/orientation-256.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from facelock_pl.models import FaceDetector
from facelock_pl.models.faces import TURNS
from facelock_pl.pixels import pil_to_levels

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import print_table, write_json  # noqa: E402

POSITIONS = {0: "upright", 1: "on its left side", 3: "on its right side", 2: "upside down"}  # turned from upright
RULES = {"most_probable": "the most probable turn (this version)",
         "first_found": "as it stands where a face is found, else the first turn that shows one (until this version)"}


def first_found(probabilities: dict[int, float], threshold: float) -> int:
    """The rule until this benchmark (0 where no turn shows a face)."""
    return next((turn for turn in TURNS if probabilities[turn] >= threshold), 0)


def positions(detector: FaceDetector, photo: torch.Tensor, name: str) -> list[dict]:
    """An upright `photo` ([3, H, W] uint8) in each position: every turn's probability and each rule's verdict."""
    rows = []
    for position, label in POSITIONS.items():
        turned = {turn: torch.rot90(photo, position + turn, (1, 2)) for turn in TURNS}
        probabilities = dict(zip(TURNS, detector.probabilities(list(turned.values()))))
        right = (4 - position) % 4
        picks = {"most_probable": detector.upright_turns([turned])[0],
                 "first_found": first_found(probabilities, detector.min_probability)}
        rows.append({"face": name, "position": label, "right_turn": right, "probabilities": probabilities,
                     **{rule: "right" if pick == right else "none" if pick == 0 else "wrong" for rule, pick in picks.items()}})
    return rows


def seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle, e.g. ../shared/assets")
    parser.add_argument("--side", type=int, default=256, help="each face resized to this square (the working size)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    detector = FaceDetector()
    paths = sorted(path for folder in ("celebahq", "pairs") for path in (args.assets / "faces" / folder).iterdir()
                   if path.suffix.lower() in {".jpg", ".jpeg", ".png"})
    rows, one_detection, every_turn = [], [], []
    for path in paths:
        with Image.open(path) as image:
            photo = pil_to_levels(image.convert("RGB").resize((args.side, args.side), Image.Resampling.LANCZOS))
        rows += positions(detector, photo, path.name)
        turned = {turn: torch.rot90(photo, turn, (1, 2)) for turn in TURNS}
        one_detection.append(seconds(lambda: detector(photo[None])))
        every_turn.append(seconds(lambda: detector.upright_turns([turned])))
    summary = {rule: {label: {outcome: sum(row["position"] == label and row[rule] == outcome for row in rows)
                              for outcome in ("right", "wrong", "none")} for label in POSITIONS.values()}
               for rule in RULES}
    table = [[RULES[rule], label, *(str(summary[rule][label][outcome]) for outcome in ("right", "wrong", "none"))]
             for rule in RULES for label in POSITIONS.values()]
    print_table(f"{len(paths)} faces at {args.side} px, each in four positions", ["rule", "position", "right turn",
                "wrong turn", "left as it stands, not upright"], table)
    cost = {"one_detection_s": statistics.median(one_detection), "upright_turn_s": statistics.median(every_turn)}
    print(f"\nper photo (median over the faces): one detection {cost['one_detection_s']:.3f} s, upright_turns "
          f"{cost['upright_turn_s']:.3f} s")
    write_json(args.json, {"side": args.side, "faces": len(paths), "summary": summary, "cost": cost, "positions": rows})


if __name__ == "__main__":
    main()
