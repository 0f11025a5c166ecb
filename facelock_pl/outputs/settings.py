"""`OUT/protection.json`: the settings a protected set was made with (method, attack, objective, stopping,
autoencoders, recognisers, the working resolution and region). Written by the first run into an output folder; a later
run with other settings is refused, so every image of a folder is protected alike. Its `files` group holds the SHA-256
of every local file and folder the settings name (weights, identity targets), so that they are compared by content: a
run that names them elsewhere — the bundle moved, or copied to a node's scratch disk — resumes, and other bytes at the
recorded path are other settings. The evaluation report reads it to show how each set was made and which recognisers
were in its loss.

`OUT/source.json`: where the last run into the folder read its photos, and how (the `data.*` options that name
them); `edit` reads the clean photos from there when it is given no `data.source`."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from .. import logs
from ..config_files import ConfigError
from .atomic import write_bytes_atomic

SETTINGS_NAME = "protection.json"
SOURCE_NAME = "source.json"
FILES = "files"  # the group of protection.json that maps each local path the settings name to its content's digest
RECORDED_LATER = ("data",)  # groups that folders made by earlier versions lack
# Settings recorded from some version on, as the folders made before it were made (a folder that lacks one).
EARLIER_DEFAULTS = {"data": {"keep_grey": False}, "attack": {"both_positions": False}}


def read_settings(output_dir: Path, name: str = SETTINGS_NAME) -> dict | None:
    path = Path(output_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def record_source(output_dir: Path, reading: dict) -> None:
    write_bytes_atomic(Path(output_dir) / SOURCE_NAME, json.dumps(reading, indent=2).encode())


def keep_settings(output_dir: Path, settings: dict, write: bool) -> None:
    """Refuse `settings` that differ from those the folder was made with; record them if new (when `write`).
    A group earlier versions did not record (`RECORDED_LATER`) is not checked in a folder they made, and a setting
    they did not record is read as what they did (`EARLIER_DEFAULTS`). Weights are compared by content where the
    folder recorded it (`FILES`): named at another path with the same bytes is the same setting, other bytes at the
    same path are not. A folder made before the digests has only its paths: one named elsewhere is the same setting
    where the recorded path still holds the same bytes (as trusted as the path itself was)."""
    settings = json.loads(json.dumps(settings))  # as they read back from JSON
    recorded = read_settings(output_dir)
    if recorded is None:
        if write:
            record = settings | {FILES: local_digests(settings)}
            write_bytes_atomic(Path(output_dir) / SETTINGS_NAME, json.dumps(record, indent=2).encode())
        return
    digest = functools.cache(_digest)  # a weights file several recognisers (or both records) name is read once
    made_with_digests = FILES in recorded
    # Made before the digests: what its recorded paths hold now.
    recorded_files = recorded.pop(FILES) if made_with_digests else local_digests(recorded, digest)
    settings = {k: v for k, v in settings.items() if k in recorded or k not in RECORDED_LATER}
    recorded |= {group: earlier | recorded[group] for group, earlier in EARLIER_DEFAULTS.items() if group in recorded}
    differences = _differences(settings, recorded)
    if not _same(settings, recorded, recorded_files, digest):
        changed = [_change(*difference) for difference in differences
                   if not _same(*difference[1:], recorded_files, digest)]
        rewritten = sorted(path for path in _local_paths(settings) & recorded_files.keys()
                           if digest(path) != recorded_files[path])
        changed += [f"{path} holds other bytes than when the folder was made" for path in rewritten]
        raise ConfigError(f"{output_dir} holds images protected with other settings ({', '.join(changed)}; see "
                          f"{Path(output_dir) / SETTINGS_NAME}): use a new --output_dir, or the folder's values")
    if differences and write:  # said once: `fit` checks without writing first, before its resume step
        moved = logs.first_few(difference[0] for difference in differences)
        content = "the content recorded" if made_with_digests else "the bytes at the recorded paths"
        logs.info(f"facelock_pl: {output_dir}: {moved} name(s) the weights at other paths, with {content}")


def local_digests(settings: dict, digest: Callable[[str], str] | None = None) -> dict[str, str]:
    """The digest of every local file and folder that `settings` name (by absolute path), by path."""
    return {path: (digest or _digest)(path) for path in sorted(_local_paths(settings))}


def same_setting(now: object, was: object, recorded_digests: dict[str, str]) -> bool:
    """Whether the setting `now` is the recorded `was`, local paths compared by content where `recorded_digests`
    (`local_digests` of `was`) has it: the same bytes elsewhere are the same setting, other bytes at the same path
    are not."""
    return _same(now, was, recorded_digests, functools.cache(_digest))


def _local_paths(node) -> set[str]:
    """The absolute paths of existing files and folders among the values of `node` (hub ids are not paths)."""
    if isinstance(node, dict):
        return set().union(*map(_local_paths, node.values()))
    if isinstance(node, list):
        return set().union(*map(_local_paths, node))
    return {node} if _is_local(node) else set()


def _is_local(value: object) -> bool:
    return isinstance(value, str) and Path(value).is_absolute() and Path(value).exists()


def _same(now: object, was: object, recorded_files: dict[str, str], digest: Callable[[str], str]) -> bool:
    if isinstance(now, dict) and isinstance(was, dict):
        return now.keys() == was.keys() and all(_same(now[k], was[k], recorded_files, digest) for k in now)
    if isinstance(now, list) and isinstance(was, list):
        return len(now) == len(was) and all(_same(n, w, recorded_files, digest) for n, w in zip(now, was))
    if isinstance(was, str) and was in recorded_files and _is_local(now):
        return digest(now) == recorded_files[was]
    return now == was


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of a file's bytes, read a MiB at a time (weights files run to hundreds of MB)."""
    sha = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _digest(path: str) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (every one below it, with its relative name)."""
    path = Path(path)
    if path.is_file():
        return "sha256:" + file_sha256(path)
    listing = "".join(f"{file.relative_to(path).as_posix()}\0{_digest(str(file))}\n"
                      for file in sorted(p for p in path.rglob("*") if p.is_file()))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def _differences(new: dict, old: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(name, new value, old value) of the values that differ, named to the setting (`attack.eps`, `data.resolution`)."""
    changed = []
    for key in sorted(new.keys() | old.keys()):
        if isinstance(new.get(key), dict) and isinstance(old.get(key), dict):
            changed += _differences(new[key], old[key], f"{prefix}{key}.")
        elif new.get(key) != old.get(key):
            changed.append((prefix + key, new.get(key), old.get(key)))
    return changed


def _change(name: str, now: object, was: object) -> str:
    """`data.resolution differs: 96 in the folder, 128 now`; the values left out where one is long (a list of
    recognisers)."""
    values = [json.dumps(value) for value in (was, now)]
    return f"{name} differs" + (f": {values[0]} in the folder, {values[1]} now" if max(map(len, values)) <= 40 else "")
