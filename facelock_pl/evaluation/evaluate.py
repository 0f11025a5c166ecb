"""`python -m facelock_pl evaluate --config …`: score every edit, then write the report.

Per (set, prompt, image): PSNR/SSIM/LPIPS of edit(set) against edit(clean), CLIP-S, CLIP-I, FR for every
recogniser (face re-detected in the edit) and whether a face was found. Source features (CLIP, FR) are
computed once per image, text features once per prompt.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pandas as pd
import torch

from ..config_files import ConfigError
from ..models import LPIPSSpec, RecognizerSpec, load_lpips
from ..outputs.settings import read_settings
from ..pixels import editor_input, levels_to_pm1, read_levels
from . import metrics
from .edit import clean_sources, edit_path, resolve_device
from .metrics import ClipScorer, ClipSpec, FaceScorer
from .prompts import load_prompts
from .record import EditRecord
from .report import ReportContext, write_report
from .sets import CLEAN, DataSpec, image_sets, shape_chunks

log = logging.getLogger("facelock_pl")


def load_edit(out: Path, set_name: str, prompt_id: int, uid: str) -> torch.Tensor | None:
    path = edit_path(out, set_name, prompt_id, uid)
    return read_levels(path) if path.exists() else None


def run_evaluate(
    data: DataSpec | None = None,
    sets: dict[str, str] | None = None,
    purify: list[str] | None = None,
    prompt_ids: list[int] | None = None,
    clip: ClipSpec | None = ClipSpec(),
    recognizers: list[RecognizerSpec] | None = None,
    lpips: LPIPSSpec | None = LPIPSSpec(),
    batch_size: int = 8,
    samples: int = 3,
    device: str = "auto",
    output_dir: str = "outputs/eval",
) -> pd.DataFrame:
    """Score the edits that `edit` wrote into `output_dir` and write `report/`.

    What was edited comes from `edit`'s record (`edits/edit.json`); `sets`, `purify` and `prompt_ids` narrow
    it down (naming anything that was not edited is an error), `data` may set a `limit`.

    Args:
        data, sets, purify, prompt_ids, output_dir: as for `edit`; None: everything `edit` recorded.
        clip: CLIP model of CLIP-S and CLIP-I (`ClipSpec`); None skips both (e.g. offline, where CLIP's
            weights cannot be had).
        recognizers: face recognisers, each scoring every edit (the report marks, per set, the ones that were in
            its loss; the others are unseen by it: the transfer check).
        lpips: LPIPS network between edits; None skips LPIPS.
        batch_size: images scored together.
        samples: images shown per sample grid in `index.html`.
        device: `auto`, `cpu`, `cuda`, ...
    """
    out = Path(output_dir)
    record = EditRecord.load(out)
    if record is None:
        raise ConfigError(f"no edits in {out} (no {EditRecord.path(out)}): run `python -m facelock_pl edit` first")
    record = record.select(sets, purify, prompt_ids)
    if data is not None and (str(Path(data.source).expanduser().resolve()), data.resolution) != (
            record.data.source, record.data.resolution):
        raise ConfigError(f"data {data} is not what was edited ({record.data}); leave data out to use it")
    dev = resolve_device(device)
    resolution = (data or record.data).resolution
    sources = {u: editor_input(levels, resolution) for u, levels in clean_sources(data or record.data, record.sets).items()}
    uids = sorted(sources)
    chunks = shape_chunks(uids, {u: levels.shape for u, levels in sources.items()}, batch_size)
    all_sets = image_sets(record.sets, record.purify)
    prompt_map = load_prompts(record.prompts, record.prompt_ids)
    clip_scorer = ClipScorer(clip, dev) if clip is not None else None
    faces = FaceScorer(recognizers or [RecognizerSpec()], dev)
    lpips_net = load_lpips(lpips).to(dev) if lpips is not None else None

    source_clip, source_found, source_fr = {}, {}, {}
    for chunk in chunks:
        levels = torch.stack([sources[u] for u in chunk])
        features = clip_scorer.image_features(levels) if clip_scorer else [None] * len(chunk)
        found, embeddings = faces.embed(levels)
        for i, uid in enumerate(chunk):
            source_clip[uid], source_found[uid] = features[i], bool(found[i])
            source_fr[uid] = [e[i] for e in embeddings]
    text = clip_scorer.text_features(list(prompt_map.values())) if clip_scorer else [None] * len(prompt_map)

    rows = []
    for pid, text_features in zip(prompt_map, text):
        for chunk in chunks:
            clean_edits = {u: load_edit(out, CLEAN, pid, u) for u in chunk}
            for image_set in all_sets:
                pairs = [(u, load_edit(out, image_set.name, pid, u)) for u in chunk]
                pairs = [(u, e) for u, e in pairs if e is not None]
                if pairs:
                    rows += _score(image_set, pid, pairs, clean_edits, source_clip, source_found, source_fr, text_features,
                                   clip_scorer, faces, lpips_net, dev)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise FileNotFoundError(f"no edits found under {out / 'edits'}: run `python -m facelock_pl edit` first")
    context = ReportContext(recognizers or [RecognizerSpec()], {n: read_settings(Path(f)) for n, f in record.sets.items()},
                            prompt_map, prompt_free=record.editor["kind"] == "vae-roundtrip", resolution=resolution)
    write_report(frame, out / "report", faces.names, sources, all_sets, samples, context)
    log.info("facelock_pl evaluate: %d rows; report in %s", len(frame), out / "report")
    return frame


def _score(image_set, pid, pairs, clean_edits, source_clip, source_found, source_fr, text_features, clip_scorer,
           faces, lpips_net, dev) -> list[dict]:
    uids = [u for u, _ in pairs]
    edits = torch.stack([e for _, e in pairs])
    clip_s = clip_i = torch.full((len(uids),), math.nan)
    if clip_scorer is not None:
        edit_clip = clip_scorer.image_features(edits)
        src_clip = torch.stack([source_clip[u] for u in uids])
        clip_s = metrics.clip_directional(src_clip, edit_clip, text_features[None]).cpu()
        clip_i = metrics.clip_image(src_clip, edit_clip).cpu()
    found, embeddings = faces.embed(edits)
    comparable = [u for u in uids if clean_edits.get(u) is not None] if image_set.name != CLEAN else []
    versus = {}
    if comparable:
        index = [uids.index(u) for u in comparable]
        a, b = edits[index], torch.stack([clean_edits[u] for u in comparable])
        lp = torch.full((len(comparable),), math.nan)
        if lpips_net is not None:
            with torch.no_grad():
                lp = lpips_net.distance(lpips_net.features(levels_to_pm1(b.to(dev))), levels_to_pm1(a.to(dev))).cpu()
        for j, u in enumerate(comparable):
            versus[u] = (float(metrics.psnr(a[j : j + 1], b[j : j + 1])), float(metrics.ssim(a[j : j + 1], b[j : j + 1])),
                         float(lp[j]))
    rows = []
    for i, uid in enumerate(uids):
        psnr_db, ssim_value, lpips_value = versus.get(uid, (math.nan, math.nan, math.nan))
        row = {"set": image_set.name, "base_set": image_set.name.split("+")[0], "purification": image_set.purification or "",
               "prompt_id": pid, "uid": uid, "psnr": psnr_db, "ssim": ssim_value, "lpips": lpips_value,
               "clip_s": float(clip_s[i]), "clip_i": float(clip_i[i]), "face_found": bool(found[i])}
        usable = bool(found[i]) and source_found[uid]  # FR needs a face in the source and in the edit
        for k, name in enumerate(faces.names):
            row[f"fr:{name}"] = float(embeddings[k][i] @ source_fr[uid][k]) if usable else math.nan
            if faces.thresholds[k] is not None:
                row[f"match:{name}"] = float(usable and row[f"fr:{name}"] >= faces.thresholds[k])
        rows.append(row)
    return rows
