"""Same-person thresholds of face recognisers, calibrated on labelled pairs.

`pair_scores` embeds every image of a pairs file (`file_x,file_y,Decision` with Yes/No, as in
`../shared/assets/faces/pairs/master.csv`) through MTCNN and the recogniser's own alignment;
`calibrate` returns the AUC and the threshold halfway between the highest different-person and the
lowest same-person cosine (or the best-accuracy threshold when the two overlap).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch

from ..data import load_rgb
from ..models import FaceScorer, RecognizerSpec
from ..pixels import pil_to_levels


def pair_scores(pairs_csv: Path, specs: list[RecognizerSpec], device: torch.device | None = None) -> tuple[dict[str, list[float]], list[bool]]:
    """Cosine per recogniser name and pair, and whether each pair is the same person."""
    folder = Path(pairs_csv).parent
    rows = list(csv.DictReader(open(pairs_csv)))
    scorer = FaceScorer(specs, device or torch.device("cpu"))
    embeddings = {}
    for name in sorted({r["file_x"] for r in rows} | {r["file_y"] for r in rows}):
        levels = pil_to_levels(load_rgb(folder / name))[None]
        geometry, embs = scorer.embed(levels)
        if not bool(geometry.found[0]):
            raise ValueError(f"no face found in {folder / name}: pairs must show detectable faces")
        embeddings[name] = [e[0] for e in embs]
    scores = {n: [float(embeddings[r["file_x"]][k] @ embeddings[r["file_y"]][k]) for r in rows]
              for k, n in enumerate(scorer.names)}
    return scores, [r["Decision"].strip().lower() == "yes" for r in rows]


def calibrate(scores: list[float], same: list[bool]) -> dict[str, float]:
    """AUC, threshold and the accuracy at that threshold."""
    pos = np.array([s for s, y in zip(scores, same) if y])
    neg = np.array([s for s, y in zip(scores, same) if not y])
    auc = float(((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg)))
    if pos.min() > neg.max():
        threshold = float((pos.min() + neg.max()) / 2)
    else:
        candidates = np.unique(np.concatenate([pos, neg]))
        accuracy = [((pos >= t).sum() + (neg < t).sum()) for t in candidates]
        threshold = float(candidates[int(np.argmax(accuracy))])
    accuracy = float(((pos >= threshold).sum() + (neg < threshold).sum()) / (len(pos) + len(neg)))
    return {"auc": auc, "threshold": threshold, "accuracy": accuracy}
