"""The run summary, `OUT/summary.json`: `folder` describes everything the output folder holds (all runs),
`last_run` this run (counts, throughput per process and in total, whether it was interrupted)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pandas as pd
import torch

from ..outputs import ManifestRow, read_manifest, write_bytes_atomic
from ..outputs.records import SMALLEST_FACE_PX, shrunk_past_faces
from ..outputs.settings import read_settings

_FIELDS = ("ok", "no_face", "error", "fr_n", "fr_sum", "psnr_n", "psnr_sum", "iterations_sum", "seconds")


class RunStats:
    """Per-process running sums; processes exchange them as one float64 tensor."""

    def __init__(self):
        self.values = dict.fromkeys(_FIELDS, 0.0)
        self._started: float | None = None

    def start(self) -> None:
        self._started = time.perf_counter()

    def stop(self) -> None:
        if self._started is not None:
            self.values["seconds"] = time.perf_counter() - self._started

    def add(self, row: ManifestRow) -> None:
        self.values[row.status] += 1
        if row.fr_cos_recon is not None:
            self.values["fr_n"] += 1
            self.values["fr_sum"] += row.fr_cos_recon
        if row.psnr_db is not None and math.isfinite(row.psnr_db):
            self.values["psnr_n"] += 1
            self.values["psnr_sum"] += row.psnr_db
        self.values["iterations_sum"] += row.iterations

    def iterations_mean(self, default: float) -> float:
        """Mean PGD iterations of the images protected so far (`default` before the first)."""
        protected = self.values["ok"] + self.values["no_face"]
        return self.values["iterations_sum"] / protected if protected else default

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.values[k] for k in _FIELDS], dtype=torch.float64)

    @staticmethod
    def summarise(per_rank: torch.Tensor) -> dict:
        """This run, from `per_rank` ([world, fields], `as_tensor` of each process)."""
        ranks = [dict(zip(_FIELDS, row.tolist())) for row in per_rank]
        total = {k: sum(r[k] for r in ranks) for k in _FIELDS}
        images = [r["ok"] + r["no_face"] + r["error"] for r in ranks]
        wall = max(r["seconds"] for r in ranks)
        return {
            "images": int(sum(images)), "ok": int(total["ok"]), "no_face": int(total["no_face"]), "error": int(total["error"]),
            "images_per_s_per_rank": [n / r["seconds"] if r["seconds"] > 0 else 0.0 for n, r in zip(images, ranks)],
            "images_per_s_total": sum(images) / wall if wall > 0 else 0.0,
            "wall_seconds": wall,
            "mean_fr_cos_recon": total["fr_sum"] / total["fr_n"] if total["fr_n"] else None,
            "mean_psnr_db": total["psnr_sum"] / total["psnr_n"] if total["psnr_n"] else None,
            "world_size": len(ranks),
        }


def _mean(column: pd.Series) -> float | None:
    finite = column.dropna()
    finite = finite[finite.abs() != float("inf")]
    return float(finite.mean()) if len(finite) else None


def folder_summary(output_dir: Path) -> dict:
    """Everything the output folder holds: the newest row of every image, over all runs."""
    manifest = read_manifest(output_dir)
    counts = manifest["status"].value_counts()
    judged = manifest["recognised_by"].dropna()
    no_face = manifest[manifest["status"] == "no_face"]
    # In face-region mode (every image of a folder is protected alike) the face search saw each photo larger already.
    faces_searched = (read_settings(output_dir) or {}).get("data", {}).get("region") == "faces"
    seen_small = [] if faces_searched else [
        shrunk_past_faces(*sizes) is not None
        for sizes in no_face[["width", "height", "working_width", "working_height"]].itertuples(index=False)]
    return {"images": len(manifest), **{s: int(counts.get(s, 0)) for s in ("ok", "no_face", "error")},
            "no_face_seen_small": sum(seen_small),  # a face too small at the working size is not found
            "mean_fr_cos_recon": _mean(manifest["fr_cos_recon"]),
            "mean_fr_cos_recon_detected": _mean(manifest["fr_cos_recon_detected"]),
            "judged": len(judged), "still_recognised": int((judged != "").sum()),
            "more_than_one_face": int((manifest["faces_in_photo"] > 1).sum()),
            # rows of earlier versions have no faces_protected: their FR term saw the largest face only
            "more_faces_than_protected": int((manifest["faces_in_photo"] > manifest["faces_protected"].fillna(1)
                                              .clip(lower=1)).sum()),
            "mean_psnr_db": _mean(manifest["psnr_db"])}


def write_summary(output_dir: Path, last_run: dict) -> dict:
    summary = {"folder": folder_summary(output_dir), "last_run": last_run}
    write_bytes_atomic(Path(output_dir) / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def describe(summary: dict, output_dir: Path, autoencoder: str = "vae") -> str:
    """A short report for the terminal; `autoencoder`: the name of the loss's (first) autoencoder, the one the FR
    columns read the round trip of: an editor on another autoencoder is not measured (and, measured, not protected)."""
    run, folder = summary["last_run"], summary["folder"]
    lines = [f"facelock_pl: this run: {run['images']} image(s): ok {run['ok']}, no_face {run['no_face']}, "
             f"error {run['error']} in {run['wall_seconds']:.0f} s ({run['images_per_s_total']:.3f} images/s over "
             f"{run['world_size']} process(es))" + (f"; INTERRUPTED by {run['interrupted']}" if run.get("interrupted") else ""),
             f"  {output_dir} holds {folder['images']} image(s): ok {folder['ok']}, no_face {folder['no_face']}, error "
             f"{folder['error']}; mean FR cosine after the round trip through the loss's autoencoder ({autoencoder}), face "
             "detected anew as an evaluation does: "
             f"{_number(folder['mean_fr_cos_recon_detected'], 3)} (at the source's face: "
             f"{_number(folder['mean_fr_cos_recon'], 3)}); mean PSNR {_number(folder['mean_psnr_db'], 2)} dB"]
    if folder["judged"]:
        lines.append("  still recognised by a recogniser of the loss or a judge (face detected anew, its calibrated "
                     f"threshold): {folder['still_recognised']} of {folder['judged']} judged image(s); the manifest's "
                     "`recognised_by` names which")
    if folder["more_faces_than_protected"]:
        lines.append(f"  {folder['more_faces_than_protected']} photo(s) show more faces than the FR term protected: the "
                     "others keep their identity (the manifest's `faces_in_photo` and `faces_protected`; "
                     "--model.objective.faces N protects the N largest)")
    if folder.get("no_face_seen_small"):  # summaries of earlier versions lack the count
        lines.append(f"  {folder['no_face_seen_small']} no_face photo(s) were seen at least 2x smaller than they are, "
                     f"where a face under about {SMALLEST_FACE_PX} px is not found: --data.region faces (or a larger "
                     "--data.resolution) may find their faces")
    if run.get("interrupted"):
        lines.append("  finished images are kept: rerun the same command to protect the rest")
    if run["error"]:
        lines.append(f"  {run['error']} image(s) failed: their rows in {output_dir}/manifest have status 'error' and a message")
    return "\n".join(lines)
