"""`data.region: faces`: is the crop found around a small face, in colour and in grey, and at what cost?

The face region is searched on a copy of the photo whose longest side is the search side (`faces_squares`); a face
smaller than MTCNN's 20 px there is not found, and the photo is then protected whole at the working size, where the
face is smaller still. This benchmark pastes each of the last `--faces` shared CelebA-HQ faces (held out) at several
widths into a 1600x1200 frame of dull noise, in colour and made grey, and counts for each search side the photos whose
crop holds the whole face, those whose crop misses it (a face found elsewhere) and those with no crop; and the seconds
per photo of the search (the loader's work, on this machine's CPU).

    python benchmarks/face_region.py --assets ../shared/assets [--faces 16] [--json benchmarks/results/face-region.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from facelock_pl.data.items import faces_squares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from offline_runs import held_out_faces, print_table, write_json  # noqa: E402

FRAME = (1600, 1200)  # width, height
FACE_AT = (900, 500)  # the pasted face's top-left corner (x, y)


def frame_with_face(face: Image.Image, width: int) -> Image.Image:
    noise = np.random.default_rng(0).integers(0, 256, (FRAME[1], FRAME[0], 3)) // 4 + 96  # one frame for every photo
    photo = Image.fromarray(noise.astype(np.uint8))
    photo.paste(face.resize((width, width), Image.Resampling.LANCZOS), FACE_AT)
    return photo


def outcome(squares: list[tuple[int, int, int]], width: int) -> str:
    if not squares:
        return "no crop"
    (x, y) = FACE_AT
    holds = any(top <= y and left <= x and top + side >= y + width and left + side >= x + width
                for top, left, side in squares)
    return "holds the face" if holds else "misses it"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--assets", type=Path, required=True, help="the offline bundle, e.g. ../shared/assets")
    parser.add_argument("--faces", type=int, default=16)
    parser.add_argument("--widths", default="50,60,70,80,100", help="face widths in the frame, pixels")
    parser.add_argument("--search-sides", default="640,1280")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]
    photos = []
    for path in held_out_faces(args.assets, args.faces):
        with Image.open(path) as face:
            for width in widths:
                photo = frame_with_face(face.convert("RGB"), width)
                photos += [("colour", width, photo), ("grey", width, photo.convert("L").convert("RGB"))]
    results, rows = {}, []
    for side in (int(s) for s in args.search_sides.split(",")):
        counts, started = {}, time.perf_counter()
        for kind, width, photo in photos:
            key = (kind, outcome(faces_squares(photo, 0.5, side), width))
            counts[key] = counts.get(key, 0) + 1
        seconds = (time.perf_counter() - started) / len(photos)
        results[side] = {"seconds_per_photo": seconds, **{f"{kind}: {what}": n for (kind, what), n in sorted(counts.items())}}
        for kind in ("colour", "grey"):
            rows.append([str(side), kind, *(str(counts.get((kind, what), 0)) for what in ("holds the face", "misses it",
                                                                                         "no crop")), f"{seconds:.2f}"])
    print_table(f"{len(photos) // 2} photos each in colour and grey: {args.faces} faces x widths {widths} px in a "
                f"{FRAME[0]}x{FRAME[1]} frame", ["search side", "photo", "crop holds the face", "crop misses it",
                                                 "no crop", "s/photo (both kinds)"], rows)
    write_json(args.json, {"faces": args.faces, "widths": widths, "frame": FRAME, "search_sides": results})


if __name__ == "__main__":
    main()
