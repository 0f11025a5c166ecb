"""Run summary: counts, throughput per rank and in total, mean protection and stealth."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from ..outputs import ManifestRow, write_bytes_atomic

_FIELDS = ("ok", "no_face", "error", "fr_n", "fr_sum", "psnr_n", "psnr_sum", "seconds")


class RunStats:
    """Per-rank running sums; ranks exchange them as one float64 tensor."""

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

    def as_tensor(self) -> torch.Tensor:
        return torch.tensor([self.values[k] for k in _FIELDS], dtype=torch.float64)

    @staticmethod
    def summarise(per_rank: torch.Tensor) -> dict:
        """`per_rank`: [world, fields] from `as_tensor` of each rank."""
        ranks = [dict(zip(_FIELDS, row.tolist())) for row in per_rank]
        total = {k: sum(r[k] for r in ranks) for k in _FIELDS}
        images = [r["ok"] + r["no_face"] + r["error"] for r in ranks]
        wall = max(r["seconds"] for r in ranks)
        return {
            "images": int(sum(images)),
            "ok": int(total["ok"]),
            "no_face": int(total["no_face"]),
            "error": int(total["error"]),
            "images_per_s_per_rank": [n / r["seconds"] if r["seconds"] > 0 else 0.0 for n, r in zip(images, ranks)],
            "images_per_s_total": sum(images) / wall if wall > 0 else 0.0,
            "wall_seconds": wall,
            "mean_fr_cos_recon": total["fr_sum"] / total["fr_n"] if total["fr_n"] else None,
            "mean_psnr_db": total["psnr_sum"] / total["psnr_n"] if total["psnr_n"] else None,
            "world_size": len(ranks),
        }

    @staticmethod
    def write(summary: dict, output_dir: Path) -> None:
        write_bytes_atomic(Path(output_dir) / "summary.json", json.dumps(summary, indent=2).encode())

    @staticmethod
    def describe(summary: dict, output_dir: Path) -> str:
        fr = summary["mean_fr_cos_recon"]
        psnr = summary["mean_psnr_db"]
        per_rank = ", ".join(f"{v:.3f}" for v in summary["images_per_s_per_rank"])
        return (
            f"facelock_pl: {summary['images']} images this run — ok {summary['ok']}, no_face {summary['no_face']}, "
            f"error {summary['error']}; {summary['images_per_s_total']:.3f} images/s total over {summary['world_size']} "
            f"process(es) (per rank: {per_rank}); mean fr_cos_recon "
            f"{'n/a' if fr is None else f'{fr:.3f}'}, mean psnr_db {'n/a' if psnr is None else f'{psnr:.2f}'}; "
            f"outputs in {output_dir}"
        )
