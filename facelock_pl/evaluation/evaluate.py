"""`python -m facelock_pl evaluate --config …`: score every edit, then write the report.

Per (set, prompt, image): PSNR/SSIM/LPIPS of edit(set) against edit(clean), CLIP-S, CLIP-I, FR for every
recogniser (face re-detected in the edit) and whether a face was found; for a network listed behind several crop
conventions (`NAME`, `NAME@box40`, ...), its worst over them (`fr:NAME@worst`, `match:NAME@worst`). Source features (CLIP, FR) are
computed once per image, text features once per prompt.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from ..config_files import ConfigError
from ..models import FaceGeometry, FaceScorer, LPIPSSpec, RecognizerSpec, load_lpips
from ..outputs.settings import read_settings
from ..pixels import editor_input, levels_to_pm1, read_levels
from ..progress import CountProgress
from . import metrics
from .edit import edit_path, edited_sources, resolve_device
from .metrics import ClipScorer, ClipSpec
from .prompts import load_prompts
from .record import EditRecord
from .report import ReportContext, write_report
from .sets import CLEAN, DataSpec, ImageSet, image_sets, shape_chunks

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
    it down (naming anything that was not edited is an error), `data` may set a `limit` or name the clean photos'
    new place (each photo checked against the SHA-256 `edit` recorded), `sets` a protected set's new place.

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
    if batch_size < 1 or samples < 0:
        raise ConfigError(f"batch_size must be at least 1 and samples at least 0 (got {batch_size} and {samples})")
    if recognizers == []:  # the face match is the protection's measure: an evaluation never goes without it
        raise ConfigError("recognizers is empty: name at least one face recogniser, or leave it out for facenet")
    out = Path(output_dir)
    _no_feature_layers(recognizers or [])
    record = _edited(out, data, sets, purify, prompt_ids)
    dev = resolve_device(device)
    resolution = record.data.resolution
    sources = {u: editor_input(levels, resolution) for u, levels in edited_sources(record, out).items()}
    if not any(uid in record.source_sha256 for uid in sources) and record.source_sha256:
        raise ConfigError(f"no photo in {record.data.source} is one whose edits are in {out / 'edits'} (none has the "
                          f"name and the SHA-256 that {EditRecord.path(out)} recorded): give the folder that was edited")
    uids = sorted(sources)
    chunks = shape_chunks(uids, {u: levels.shape for u, levels in sources.items()}, batch_size)
    all_sets = image_sets(record.sets, record.purify)
    prompt_map = load_prompts(record.prompts, record.prompt_ids)
    _name_unedited(out, all_sets, list(prompt_map), uids)
    clip_scorer = ClipScorer(clip, dev) if clip is not None else None
    faces = FaceScorer(recognizers or [RecognizerSpec()], dev)
    lpips_net = load_lpips(lpips).to(dev) if lpips is not None else None

    reference = SourceFeatures.of(sources, chunks, clip_scorer, faces)
    text = clip_scorer.text_features(list(prompt_map.values())) if clip_scorer else [None] * len(prompt_map)
    scorers = Scorers(clip_scorer, faces, lpips_net, dev)

    rows = _score_all(out, prompt_map, text, chunks, all_sets, reference, scorers)
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise ConfigError(f"no edits found under {out / 'edits'}: run `python -m facelock_pl edit` first")
    context = ReportContext(recognizers or [RecognizerSpec()], {n: read_settings(Path(f)) for n, f in record.sets.items()},
                            prompt_map, prompt_free=record.editor["kind"] == "vae-roundtrip", resolution=resolution)
    summary = write_report(frame, out / "report", faces.names, sources, all_sets, samples, context)
    log.info("facelock_pl evaluate: %d rows; report in %s", len(frame), out / "report")
    for line in summary:
        log.info("  %s", line)
    return frame


def _name_unedited(out: Path, all_sets: list[ImageSet], prompt_ids: list[int], uids: list[str]) -> None:
    """Warn, per set, of the edits `edit` has not made (stopped half-way, or a set added and not edited yet): the
    report covers the edits that exist, and a set without any would be missing from it without a word."""
    for image_set in all_sets:
        # A photo the set holds no image of (it failed to protect) has no edit to make; `edit` names those.
        held = [u for u in uids if image_set.holds(u)]
        missing = sum(not edit_path(out, image_set.name, pid, u).exists() for pid in prompt_ids for u in held)
        if missing:
            log.warning("facelock_pl evaluate: set %r lacks %d of its %d edits (was `edit` stopped?): the report covers "
                        "the edits that exist; rerun the same `edit` command to make the rest", image_set.name, missing,
                        len(held) * len(prompt_ids))


def _no_feature_layers(recognizers: list[RecognizerSpec]) -> None:
    """A feature layer is a loss term: its cosine has no same-person threshold, so it cannot judge an edit."""
    for spec in recognizers:
        if spec.feature_layer is not None:
            raise ConfigError(f"recogniser {spec.label}: feature_layer {spec.feature_layer!r} is a loss setting; an "
                              "evaluation judges by the embedding (leave feature_layer out)")


def _edited(out: Path, data: DataSpec | None, sets, purify, prompt_ids) -> EditRecord:
    """`edit`'s record of `out`, narrowed to what was asked; an error for anything that was not edited."""
    record = EditRecord.load(out)
    if record is None:
        raise ConfigError(f"no edits in {out} (no {EditRecord.path(out)}): run `python -m facelock_pl edit` first")
    record = record.select(sets, purify, prompt_ids)
    if data is not None:
        if data.resolution != record.data.resolution:
            raise ConfigError(f"data.resolution {data.resolution} is not the one edited ({record.data.resolution}); "
                              "leave data out to use it")
        # No source named: the one edited, read as it was (the given limit applies).
        given = data.absolute() if data.source else dataclasses.replace(record.data, limit=data.limit)
        if given.source != record.data.source and not record.source_sha256:
            raise ConfigError(f"data.source {given.source} is not the one edited ({record.data.source}), and "
                              f"{EditRecord.path(out)} records no photo's SHA-256 to check another source against")
        if not given.read_alike(record.data):
            raise ConfigError(f"data.source {given.source} read with {given.reading()} names other photos than the "
                              f"edited {record.data.source} read with {record.data.reading()}: give the data.* options "
                              "`edit` had")
        record = dataclasses.replace(record, data=given)
    if record.data.missing:
        raise ConfigError(f"the clean photos that were edited, {record.data.source}, are not there (moved, or the edits "
                          "were copied to another machine): give their place with --data.source SOURCE "
                          f"--data.resolution {record.data.resolution} (and the other data.* options `edit` had); each "
                          f"photo is checked against the SHA-256 that {EditRecord.path(out)} recorded")
    return record


def _score_all(out: Path, prompt_map: dict, text: list, chunks: list[list[str]], all_sets, reference: "SourceFeatures",
               scorers: "Scorers") -> list[dict]:
    """One row per (prompt, set, image) whose edit exists; each chunk's clean edits are read once per prompt."""
    rows = []
    total = len(prompt_map) * sum(map(len, chunks)) * len(all_sets)
    with CountProgress(total, "edits", "facelock_pl evaluate") as progress:
        for pid, text_features in zip(prompt_map, text):
            for chunk in chunks:
                clean_edits = {u: load_edit(out, CLEAN, pid, u) for u in chunk}
                for image_set in all_sets:
                    pairs = [(u, load_edit(out, image_set.name, pid, u)) for u in chunk]
                    pairs = [(u, e) for u, e in pairs if e is not None]
                    if pairs:
                        rows += _score(image_set, pid, pairs, clean_edits, reference, text_features, scorers)
                    progress.advance(len(chunk))
    return rows


@dataclass
class SourceFeatures:
    """What every edit of a source is compared with: CLIP features, the detected face, FR embeddings, and the
    quarter turns that show the face upright (per uid). A photo lying sideways or upside down is scored turned
    upright, its edits too, as `fit` protects and measures it: a face lying down is often not found, or is found the
    wrong way up."""

    clip: dict[str, torch.Tensor | None]
    geometry: dict[str, FaceGeometry]
    fr: dict[str, list[torch.Tensor]]
    turn: dict[str, int]

    @classmethod
    def of(cls, sources: dict[str, torch.Tensor], chunks: list[list[str]], clip_scorer, faces: FaceScorer) -> "SourceFeatures":
        features = cls({}, {}, {}, {})
        for chunk in chunks:
            levels = torch.stack([sources[u] for u in chunk])
            clips = clip_scorer.image_features(levels) if clip_scorer else [None] * len(chunk)
            turns = faces.upright_turns(levels)
            geometry, embeddings = faces.embed_turned(levels, turns)
            for i, uid in enumerate(chunk):
                features.clip[uid], features.geometry[uid] = clips[i], geometry.select([i])
                features.fr[uid], features.turn[uid] = [e[i] for e in embeddings], turns[i]
        return features


@dataclass
class Scorers:
    clip: ClipScorer | None
    faces: FaceScorer
    lpips: torch.nn.Module | None
    device: torch.device


def _versus_clean(edits: torch.Tensor, clean: torch.Tensor, scorers: Scorers) -> list[tuple[float, float, float]]:
    """(PSNR, SSIM, LPIPS) of each edit against the edit of the clean image."""
    lp = torch.full((len(edits),), math.nan)
    if scorers.lpips is not None:
        with torch.no_grad():
            lp = scorers.lpips.distance(scorers.lpips.features(levels_to_pm1(clean.to(scorers.device))),
                                        levels_to_pm1(edits.to(scorers.device))).cpu()
    return [(float(metrics.psnr(a[None], b[None])), float(metrics.ssim(a[None], b[None])), float(value))
            for a, b, value in zip(edits, clean, lp)]


def _score(image_set, pid, pairs, clean_edits, reference: SourceFeatures, text_features, scorers: Scorers) -> list[dict]:
    uids = [u for u, _ in pairs]
    edits = torch.stack([e for _, e in pairs])
    clip_s = clip_i = torch.full((len(uids),), math.nan)
    if scorers.clip is not None:
        edit_clip = scorers.clip.image_features(edits)
        source_clip = torch.stack([reference.clip[u] for u in uids])
        clip_s = scorers.clip.directional(source_clip, edit_clip, text_features[None]).cpu()
        clip_i = metrics.clip_image(source_clip, edit_clip).cpu()
    # Where no face is found in the edit, its embedding is of the crop where the source's face was (FR-all).
    geometry, embeddings = scorers.faces.embed_turned(edits, [reference.turn[u] for u in uids],
                                                      FaceGeometry.stack([reference.geometry[u] for u in uids]))
    comparable = [u for u in uids if clean_edits.get(u) is not None] if image_set.name != CLEAN else []
    versus = {}
    if comparable:
        index = [uids.index(u) for u in comparable]
        versus = dict(zip(comparable, _versus_clean(edits[index], torch.stack([clean_edits[u] for u in comparable]), scorers)))
    rows = []
    for i, uid in enumerate(uids):
        psnr_db, ssim_value, lpips_value = versus.get(uid, (math.nan, math.nan, math.nan))
        found, source_found = bool(geometry.found[i]), bool(reference.geometry[uid].found[0])
        row = {"set": image_set.name, "base_set": image_set.name.split("+")[0], "purification": image_set.purification or "",
               "prompt_id": pid, "uid": uid, "psnr": psnr_db, "ssim": ssim_value, "lpips": lpips_value,
               "clip_s": float(clip_s[i]), "clip_i": float(clip_i[i]), "face_found": found,
               "source_turn": reference.turn[uid]}
        for k, name in enumerate(scorers.faces.names):
            cosine = float(embeddings[k][i] @ reference.fr[uid][k]) if source_found else math.nan
            row[f"fr:{name}"] = cosine if found else math.nan  # FR needs a face in the source and in the edit
            row[f"fr_all:{name}"] = cosine  # every edit, as the published evaluation aggregates FR
            if scorers.faces.thresholds[k] is not None:
                row[f"match:{name}"] = float(found and source_found and cosine >= scorers.faces.thresholds[k])
        row.update(worst_over_crops(row, scorers.faces.names))
        rows.append(row)
    return rows


def worst_over_crops(row: dict, names: list[str]) -> dict:
    """A network listed behind several crop conventions (`NAME@CONVENTION`, e.g. `sface` and `sface@box0`) is
    judged by its worst: `fr:NAME@worst` is the highest cosine, `match:NAME@worst` whether any convention matched."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.split("@")[0], []).append(name)
    worst = {}
    for base, members in groups.items():
        if len(members) < 2:
            continue
        for column in ("fr", "fr_all", "match"):
            values = [row[f"{column}:{m}"] for m in members if f"{column}:{m}" in row]
            if len(values) == len(members):
                worst[f"{column}:{base}@worst"] = math.nan if any(map(math.isnan, values)) else max(values)
    return worst
