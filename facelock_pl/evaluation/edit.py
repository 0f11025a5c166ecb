"""`python -m facelock_pl edit --config …`: edit every set with every prompt, resumably.

Output: `<output_dir>/edits/<set>/<prompt_id>/<uid>.png` (lossless, written atomically), and
`<output_dir>/edits/edit.json`, the record of what was edited that `evaluate` reads. Existing edits are
skipped, so a rerun finishes an interrupted job; a later `edit` into the same folder may add sets,
purifications and prompts, made with the same sources, editor and seed.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from ..config_files import ConfigError
from ..data import ImageItem
from ..logs import first_few
from ..outputs import write_bytes_atomic
from ..outputs.lock import FolderGuard
from ..outputs.settings import local_digests
from ..pixels import png_bytes
from ..progress import CountProgress
from .editors import Editor, EditorSpec, edit_seed
from .prompts import DEFAULT_PROMPTS, load_prompts
from .record import EditRecord
from .sets import (DataSpec, ImageSet, clean_images, expand_sweeps, held_uids, image_sets, recorded_data,
                   recorded_sources, shape_chunks)

log = logging.getLogger("facelock_pl")


def resolve_device(device: str) -> torch.device:
    """`auto` (a CUDA GPU where one is visible, else the CPU) or a torch device name; a `ConfigError` for a name
    torch does not know or a CUDA device on a machine without one."""
    try:
        resolved = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    except RuntimeError as error:
        raise ConfigError(f"device {device!r}: {error}") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: no CUDA GPU is visible here; use --device auto or cpu")
    return resolved


def edit_path(output_dir: Path, set_name: str, prompt_id: int, uid: str) -> Path:
    return Path(output_dir) / "edits" / set_name / str(prompt_id) / f"{uid}.png"


def clean_sources(data: DataSpec, sets: dict[str, str], output_dir: Path) -> dict[str, ImageItem]:
    """uid -> the clean source (`ImageItem`: `native` at its own size, `source_sha256`), for every photo the protected
    `sets` were made from (every photo of the source when no set is named; uids as the sets have them) that decodes
    and is the photo each set protected under its uid: a source whose bytes differ from a set's recorded
    `source_sha256` (replaced since, or another folder) is left out, since comparing the set's image with it would
    measure two photos, not a protection."""
    known, digests = recorded_sources(sets)
    images, uids = clean_images(data, known, output_dir)
    held = held_uids(sets, set(known.values())) if sets else set(uids)
    wanted = [i for i, uid in enumerate(uids) if uid in held][: data.limit]
    if not wanted:
        raise ConfigError(f"no photo in {data.source} is one the protected sets were made from (they hold "
                          f"{first_few(sorted(held))}; it has {first_few(uids)}): give the data.source that `fit` "
                          "protected, with its data.* options (a dataset's split and id_column name its photos)")
    elsewhere = sorted(held - set(uids))
    if elsewhere:
        log.warning("facelock_pl: %d photo(s) the protected sets were made from are not in %s (%s): they are left out "
                    "(made from another source? name it with --data.source)", len(elsewhere), data.source,
                    first_few(elsewhere))
    sources, others = {}, []
    for i in wanted:
        item = images[i]
        mismatched = sorted(name for name, digest in digests.get(item.uid, {}).items() if digest != item.source_sha256)
        if item.status != "ok":
            log.warning("facelock_pl: skipping %s: %s", item.source, item.message)
        elif mismatched:
            others.append(item.uid)
            log.warning("facelock_pl: skipping %s: not the photo that %s protected as %s (its source_sha256 differs)",
                        item.source, ", ".join(mismatched), item.uid)
        else:
            sources[item.uid] = item
    if others and not sources:
        raise ConfigError(f"no clean source in {data.source} is a photo the protected sets were made from (their "
                          "manifests' source_sha256 differ): give the data.source that `fit` protected")
    return sources


def edited_sources(record: EditRecord, output_dir: Path) -> dict[str, torch.Tensor]:
    """uid -> the clean source at its native size, for the photos whose edits were made from this very photo (the
    record's `source_sha256`); one replaced since is left out until `edit` makes its edits again."""
    sources = {}
    for uid, item in clean_sources(record.data, record.sets, output_dir).items():
        if record.photo_changed(uid, item.source_sha256):
            log.warning("facelock_pl: skipping %s: the photo changed after it was edited; rerun `edit`", item.source)
        else:
            sources[uid] = item.native
    return sources


def _forget_changed(out: Path, record: EditRecord, sources: dict[str, ImageItem], changed: set[str]) -> EditRecord:
    """Remove the edits of the photos that `changed` since they were made (all sets, all prompts), then the record
    with each photo's current `source_sha256` (saved after the removal, so a crash in between removes them again)."""
    for uid in changed:
        for path in (out / "edits").glob(f"*/*/{uid}.png"):
            path.unlink()
    if changed:
        log.warning("facelock_pl edit: %d photo(s) changed since they were edited (%s): their edits are made again",
                    len(changed), first_few(sorted(changed)))
    return dataclasses.replace(record, source_sha256={**record.source_sha256,
                                                      **{uid: item.source_sha256 for uid, item in sources.items()}})


def run_edit(
    data: DataSpec,
    sets: dict[str, str] | None = None,
    purify: list[str] | None = None,
    editor: EditorSpec | None = None,
    prompts: str = DEFAULT_PROMPTS,
    prompt_ids: list[int] | None = None,
    seed: int = 0,
    batch_size: int = 4,
    device: str = "auto",
    output_dir: str = "outputs/eval",
) -> dict:
    """Edit the clean sources and every protected (and purified) set with every prompt.

    Args:
        data: the clean portraits and the working resolution used by `fit` (no source: the one the sets recorded).
        sets: protected sets, name -> `fit` output folder (or a folder of `<uid>.png`); a budget sweep's folder
            (`fit --sweep_eps`) gives one set per budget, `<name>@eps<ε>`.
        purify: purifications applied to protected images before editing, e.g. `[jpeg:75, resize:0.5]`.
        editor: which editor and its settings (`EditorSpec`).
        prompts: prompt file, or the name of a shipped prompt set (default: FaceLock's 25).
        prompt_ids: only these prompts (default: all).
        seed: base seed; each (image, prompt) pair gets its own, shared by every set.
        batch_size: images edited together.
        device: `auto`, `cpu`, `cuda`, ...
        output_dir: where `edits/` goes.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1 (got {batch_size})")
    out = Path(output_dir)
    dev = resolve_device(device)
    prompt_map = load_prompts(prompts, prompt_ids)
    editor = editor or EditorSpec()
    sets = expand_sweeps(sets or {})
    data = (data if data.source else recorded_data(data, sets)).absolute()
    if data.missing:
        raise ConfigError(f"data.source {data.source} does not exist: give the folder or dataset that `fit` protected")
    record = EditRecord(data, {n: str(Path(f).expanduser().resolve()) for n, f in sets.items()}, purify or [],
                        prompts, list(prompt_map), editor.record(), seed)
    all_sets = image_sets(record.sets, record.purify)  # a set that cannot be read is refused before anything is recorded
    items = clean_sources(data, record.sets, out)  # refused before anything is recorded: no photo the sets protected
    previous = EditRecord.load(out)
    # Refused before any work if it cannot merge; a new folder records its editor's weights by content.
    merged = (previous.merged_with(record) if previous
              else dataclasses.replace(record, files=local_digests(record.editor)))
    changed = {uid for uid, item in items.items() if merged.photo_changed(uid, item.source_sha256)}
    sources = {uid: item.native for uid, item in items.items()}
    _name_absent(all_sets, sources)
    todo = [(s, pid, [u for u in sources if u in changed or not edit_path(out, s.name, pid, u).exists()])
            for s in all_sets for pid in prompt_map]
    todo = [(s, pid, uids) for s, pid, uids in todo if uids]
    skipped = len(all_sets) * len(prompt_map) * len(sources) - sum(len(uids) for *_, uids in todo)
    log.info("facelock_pl edit: %d sets x %d prompts x %d images; %d edits already done", len(all_sets), len(prompt_map),
             len(sources), skipped)
    # Loaded before anything is recorded: an editor that cannot load (no network, a typo) must not pin the folder.
    model = Editor(editor, dev) if todo else None
    _forget_changed(out, merged, items, changed).save(out)
    folder = FolderGuard(out)  # the edits go only into the folder as it is now (its lock: the command's)
    edited = 0
    with CountProgress(sum(len(uids) for *_, uids in todo), "edits", "facelock_pl edit") as progress:
        for image_set, pid, uids in todo:
            edited += _edit_set(model, image_set, pid, prompt_map[pid], uids, sources, data.resolution, seed,
                                batch_size, folder, progress)
    log.info("facelock_pl edit: %d edits written to %s/edits", edited, out)
    return {"edited": edited, "skipped": skipped}


def _name_absent(image_sets: list[ImageSet], sources: dict) -> None:
    """Warn, once per protected set, of the photos it holds no image of: they are left out of it, and its rows in a
    report then count fewer photos than the clean set's. A set that holds none is refused: a wrong folder, with
    which only the clean photos would be edited."""
    for image_set in image_sets:
        if image_set.folder is None or image_set.purification:
            continue
        absent = [uid for uid in sources if not image_set.holds(uid)]
        if len(absent) == len(sources):
            raise ConfigError(f"protected set {image_set.name!r}: {image_set.folder} holds no protected image of the "
                              f"{len(sources)} photo(s) in data.source ({first_few(absent)}): give the --output_dir "
                              "`fit` protected these photos into")
        if absent:
            log.warning("facelock_pl edit: set %r has no protected image of %d photo(s) (%s): left out of it (a photo "
                        "`fit` could not protect is an `error` row of its manifest; rerunning `fit` protects one whose "
                        "protected image was deleted since)", image_set.name, len(absent),
                        first_few(absent))


def _edit_set(model: Editor, image_set: ImageSet, pid: int, prompt: str, uids: list[str], sources: dict,
              resolution: int | str, seed: int, batch_size: int, folder: FolderGuard, progress: CountProgress) -> int:
    inputs = {u: image_set.load(u, sources[u], resolution) for u in uids}
    inputs = {u: levels for u, levels in inputs.items() if levels is not None}
    progress.advance(len(uids) - len(inputs))  # photos the set holds no image of: nothing to edit
    for chunk in shape_chunks(list(inputs), {u: levels.shape for u, levels in inputs.items()}, batch_size):
        edits = model(torch.stack([inputs[u] for u in chunk]), prompt, [edit_seed(seed, u, pid) for u in chunk])
        folder.check()
        for uid, levels in zip(chunk, edits):
            write_bytes_atomic(edit_path(folder.output_dir, image_set.name, pid, uid), png_bytes(levels))
        progress.advance(len(chunk))
    return len(inputs)
