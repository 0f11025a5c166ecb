"""Faces far apart in a large photo: is each person protected when someone crops them out and edits the crop?

A group photo at the working size leaves faces far apart a few pixels wide, and one crop around all of them is most of
the frame; `data.region: faces` gives each face (or each group of faces close together) its own square, shown in its
own cell of the working canvas. This benchmark pastes the last `--faces` shared CelebA-HQ faces (held out), three to
a photo (`--per-photo`), 160 px wide, far apart in a 2400x1600 frame of dull noise; protects the photos with a recipe
(`--config`, default `configs/protect-offline.yaml`) at `--resolution` (256 px) and each `--region`; then plays the person who crops one face out
(the pasted face grown by half its size each way) and edits it: the crop at 256 px, the autoencoder round trip of
`configs/edit-offline.yaml` (TAESD), plain and after JPEG-75, the face detected anew and scored by the recognisers of
`--evaluate-config` against the clean crop (a network behind several crops judged by its worst). Prints a Markdown
table (match rate and mean cosine per recogniser) and writes JSON with every face's scores, each photo's PSNR and
seconds, and the manifest's measurement columns.

    python benchmarks/spread_faces.py --assets ../shared/assets --evaluate-config configs/evaluate-crops.yaml \\
        --work-dir W --json W.json [--faces 6] [--region frame,faces]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from facelock_pl.data.items import face_cells, faces_squares
from facelock_pl.evaluation import purify
from facelock_pl.evaluation.metrics import psnr
from facelock_pl.evaluation.rates import worst_judges
from facelock_pl.outputs import read_manifest
from facelock_pl.pixels import pil_to_levels, resize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from group_photos import score_faces  # noqa: E402
from offline_runs import (ROOT, cli, held_out_faces, judges_scorer, offline_editor, options,  # noqa: E402
                          print_table, work_dir, write_json)

FRAME = (2400, 1600)  # width, height
FACE_PX = 160  # at 256 px the frame shows such a face 17 px wide: under MTCNN's 20 px
PLACES = ((200, 200), (1950, 350), (1100, 1200))  # the three faces' top-left corners (x, y)
EDIT_RESOLUTION = 256  # edit-offline.yaml's working size: the crop's size as it is edited
PURIFICATIONS = ("", "jpeg:75")
MANIFEST_COLUMNS = ("status", "message", "seconds", "faces_in_photo", "faces_protected", "fr_cos_recon",
                    "fr_cos_recon_detected", "recognised_by")


def group_photo(faces: list[Image.Image]) -> Image.Image:
    """Up to three faces, FACE_PX wide, at PLACES in a frame of dull noise (the same frame for every photo)."""
    noise = np.random.default_rng(0).integers(0, 256, (FRAME[1], FRAME[0], 3)) // 4 + 96
    photo = Image.fromarray(noise.astype(np.uint8))
    for face, place in zip(faces, PLACES):
        photo.paste(face.resize((FACE_PX, FACE_PX), Image.Resampling.LANCZOS), place)
    return photo


def person_crop(photo: Image.Image, place: tuple[int, int], size: int = EDIT_RESOLUTION) -> torch.Tensor:
    """The face pasted at `place` grown by half its size each way, as someone who crops that person takes it, at
    `size` (uint8 [3, size, size]; by default the editor's working size)."""
    x, y = place
    margin = FACE_PX // 2
    return resize(photo.crop((x - margin, y - margin, x + FACE_PX + margin, y + FACE_PX + margin)), (size, size))


def protected_scale(clean: Image.Image, region: str, resolution: int, place: tuple[int, int]) -> float:
    """Working pixels per photo pixel at which the face at `place` was optimised: the frame's at the working
    resolution, or (`faces`) its square's in its cell, found as the loader finds them."""
    if region == "frame":
        return resolution / max(clean.size)
    x, y = place[0] + FACE_PX / 2, place[1] + FACE_PX / 2
    for crop in face_cells(faces_squares(clean.convert("RGB"), 0.5), resolution):
        if crop.top <= y < crop.top + crop.side and crop.left <= x < crop.left + crop.side:
            return crop.cell_side / crop.side
    raise ValueError(f"no face square holds the face at {place}")


def main() -> None:
    parser = options(__doc__, faces=6, iterations=150)
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "protect-offline.yaml", help="the recipe")
    parser.add_argument("--region", default="frame,faces", help="the `data.region`s to protect with, comma-separated")
    parser.add_argument("--per-photo", type=int, default=len(PLACES), choices=range(1, len(PLACES) + 1),
                        help="faces in a photo")
    parser.add_argument("--resolution", type=int, default=256, help="the working resolution of the protection")
    parser.add_argument("--crop-scale", choices=("editor", "protection"), default="editor",
                        help="the person's crop at the editor's 256 px, or at the scale its face was optimised at")
    args = parser.parse_args()
    assets, work = args.assets.resolve(), work_dir(args, "spread-faces-")
    scorer = judges_scorer(args.evaluate_config, assets)
    editor = offline_editor(assets)
    faces = held_out_faces(assets, args.faces)
    photos = work / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    names = {}
    for start in range(0, len(faces), args.per_photo):
        group = faces[start : start + args.per_photo]
        name = f"group{start // args.per_photo}"
        names[name] = [path.stem for path in group]
        if not (photos / f"{name}.png").exists():
            group_photo([Image.open(path).convert("RGB") for path in group]).save(photos / f"{name}.png")
    regions = args.region.split(",")
    for region in regions:
        cli("fit", "--config", args.config, "--assets", assets, "--data.source", photos, "--data.region", region,
            "--data.resolution", args.resolution, "--data.num_workers", 0, "--model.attack.iterations", args.iterations,
            "--output_dir", work / region, "--trainer.enable_progress_bar", "false")

    per_face, per_photo = [], {}
    for name, stems in names.items():
        clean = Image.open(photos / f"{name}.png")
        sets = {"clean": clean, **{region: Image.open(work / region / "images" / f"{name}.png") for region in regions}}
        manifests = {region: read_manifest(work / region).set_index("uid").loc[[name], list(MANIFEST_COLUMNS)]
                     for region in regions}
        per_photo[name] = {region: {"psnr_db": float(psnr(*(pil_to_levels(image)[None] for image in (sets[region], clean)))),
                                    **json.loads(manifests[region].to_json(orient="records"))[0]}
                           for region in regions}
        for stem, place in zip(stems, PLACES):
            for set_name, photo in sets.items():
                size = EDIT_RESOLUTION
                if args.crop_scale == "protection" and set_name != "clean":
                    size = max(8, round(2 * FACE_PX * protected_scale(clean, set_name, args.resolution, place) / 8) * 8)
                source = person_crop(clean, place, size)
                for purification in PURIFICATIONS:
                    crop = person_crop(photo, place, size)
                    crop = purify.apply(purification, crop) if purification else crop
                    edit = editor(crop[None], "", [0])[0]
                    scores = score_faces(scorer, source, edit)
                    row = scores[0] if scores else {}
                    per_face.append({"photo": name, "face": stem, "set": set_name, "crop_px": size,
                                     "purification": purification or "plain", **row})
    frame = pd.DataFrame(per_face)
    judges = worst_judges(frame)
    rows = []
    for (set_name, purification), group in frame.groupby(["set", "purification"], sort=False):
        cells = [f"{100 * group[f'match:{j}'].fillna(0).mean():.0f}% ({group[f'fr:{j}'].mean():.2f})" for j in judges]
        least_psnr = "–" if set_name == "clean" else f"{min(per_photo[p][set_name]['psnr_db'] for p in names):.1f}"
        seconds = "–" if set_name == "clean" else f"{np.mean([per_photo[p][set_name]['seconds'] for p in names]):.0f}"
        rows.append([set_name, purification, str(len(group)), *cells, least_psnr, seconds])
    write_json(args.json, {"config": str(args.config), "iterations": args.iterations, "resolution": args.resolution,
                           "crop_scale": args.crop_scale,
                           "frame": FRAME,
                           "face_px": FACE_PX, "places": PLACES, "photos": names, "judges": judges,
                           "per_photo": per_photo, "per_face": json.loads(frame.to_json(orient="records"))})
    print_table(f"{len(faces)} held-out faces, {FACE_PX} px, {args.per_photo} to a {FRAME[0]}x{FRAME[1]} photo, protected "
                f"at {args.resolution} px; each face cropped out (grown by half its size each way) at "
                f"{'the scale it was optimised at' if args.crop_scale == 'protection' else f'{EDIT_RESOLUTION} px'}, TAESD "
                "round trip, detected anew: match rate (mean cosine)",
                ["protected with data.region", "re-save", "faces", *judges, "PSNR dB (min)", "s/photo"], rows)
    missing = int(frame[[f"fr:{j}" for j in judges]].isna().all(axis=1).sum())
    print(f"{missing} crop(s) with no face found anew (counted as not recognised)")


if __name__ == "__main__":
    main()
