"""What `edit` did, written next to its edits (`<output_dir>/edits/edit.json`) and read back by `evaluate`,
so the two commands cannot disagree about which sets, purifications and prompts there are."""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from ..config_files import ConfigError
from ..outputs import write_bytes_atomic
from ..outputs.settings import local_digests, same_setting
from .sets import DataSpec, expand_sweeps

log = logging.getLogger("facelock_pl")


@dataclass
class EditRecord:
    """The edits of one output folder.

    Attributes:
        data: the clean portraits (a local source as an absolute path), how they were read and the working resolution.
        sets: protected set name -> its folder (absolute).
        purify: purifications applied to every protected set before editing.
        prompts, prompt_ids: the prompt file and the ids edited.
        editor: the editor's settings (`EditorSpec` as a dict).
        seed: the base seed of the edits.
        source_sha256: uid -> the SHA-256 of the clean photo its edits were made from: a photo replaced since has
            its edits made again by `edit` and is left out by `evaluate` until then.
        files: the digest of each local file and folder the editor's settings name (its weights), by path: a later
            `edit` that names the same weights elsewhere (the bundle moved) merges with these edits.
    """

    data: DataSpec
    sets: dict[str, str]
    purify: list[str]
    prompts: str
    prompt_ids: list[int]
    editor: dict
    seed: int
    source_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    files: dict[str, str] = dataclasses.field(default_factory=dict)

    def photo_changed(self, uid: str, source_sha256: str) -> bool:
        """Whether `uid`'s edits were made from a photo with other bytes (False for a photo not edited yet)."""
        return self.source_sha256.get(uid, source_sha256) != source_sha256

    @staticmethod
    def path(output_dir: Path) -> Path:
        return Path(output_dir) / "edits" / "edit.json"

    @classmethod
    def load(cls, output_dir: Path) -> "EditRecord | None":
        path = cls.path(output_dir)
        if not path.is_file():
            return None
        fields = json.loads(path.read_text())
        return cls(**{**fields, "data": DataSpec(**fields["data"])})

    def save(self, output_dir: Path) -> None:
        write_bytes_atomic(self.path(output_dir), json.dumps(dataclasses.asdict(self), indent=2).encode())

    def merged_with(self, newer: "EditRecord") -> "EditRecord":
        """This record plus the sets, purifications and prompts of a later `edit` into the same folder; the
        edits themselves must have been made alike (same sources, editor and seed), else they would not compare."""
        limits = (self.data.limit, newer.data.limit)
        # The clean photos moved: the same photos, checked one by one against `source_sha256` (`edit` makes the edits
        # of a photo whose bytes differ again); without digests to check them by, another folder is refused.
        relocated = self.source_sha256 and _moved(self.data.source, newer.data.source)
        # A record made before the digests: the editor's weights as its recorded paths hold them now.
        files = self.files or local_digests(self.editor)
        source = newer.data.source if relocated else self.data.source
        data = dataclasses.replace(self.data, source=source, limit=None if None in limits else max(limits))
        for name, mine, theirs in (("sources", (source, self.data.resolution, self.data.reading()),
                                    (newer.data.source, newer.data.resolution, newer.data.reading())),
                                   ("prompts", self.prompts, newer.prompts), ("editor", self.editor, newer.editor),
                                   ("seed", self.seed, newer.seed)):
            if not same_setting(theirs, mine, files):
                raise ConfigError(f"this output folder holds edits made with other {name} ({mine!r}, now {theirs!r}): "
                                 "give a new --output_dir")
        for name in (n for n in self.sets.keys() & newer.sets.keys() if _moved(self.sets[n], newer.sets[n])):
            log.warning("facelock_pl edit: set %r is read from %s (it was edited from %s, which is gone); its edits "
                        "made there are kept", name, newer.sets[name], self.sets[name])
        clash = {n for n in self.sets.keys() & newer.sets.keys()
                 if self.sets[n] != newer.sets[n] and not _moved(self.sets[n], newer.sets[n])}
        if clash:
            raise ConfigError(f"set(s) {sorted(clash)} were edited from another folder: rename them or give a new --output_dir")
        return dataclasses.replace(self, data=data, sets={**self.sets, **newer.sets},
                                   purify=self.purify + [p for p in newer.purify if p not in self.purify],
                                   prompt_ids=sorted(set(self.prompt_ids) | set(newer.prompt_ids)))

    def select(self, sets: dict[str, str] | None, purify: list[str] | None, prompt_ids: list[int] | None) -> "EditRecord":
        """The part of the edits that `evaluate` was asked to score (everything when nothing is named); asking for
        anything that was not edited is an error, not a silently smaller report."""
        sets = {n: str(Path(f).expanduser().resolve()) for n, f in expand_sweeps(sets).items()} if sets is not None else self.sets
        moved = [n for n in sets if n in self.sets and _moved(self.sets[n], sets[n])]
        for name in moved:
            log.warning("facelock_pl evaluate: set %r is read from %s (it was edited from %s, which is gone)", name,
                        sets[name], self.sets[name])
        gone = [n for n in sets if n in self.sets and n not in moved and not Path(sets[n]).exists()]
        if gone:
            raise ConfigError(f"protected set {gone[0]!r} was edited from {sets[gone[0]]}, which is not there (moved, or "
                              f"the edits were copied to another machine): name its new place with --sets "
                              f"'{{{gone[0]}: DIR}}'")
        missing = [f"set {n!r}" for n in sets if self.sets.get(n) != sets[n] and n not in moved]
        missing += [f"purification {p!r}" for p in purify or [] if p not in self.purify]
        missing += [f"prompt {i}" for i in prompt_ids or [] if i not in self.prompt_ids]
        if missing:
            raise ConfigError(f"not edited in this output folder: {', '.join(missing)} (edited: sets {self.sets}, "
                             f"purify {self.purify}, prompts {self.prompt_ids}); run `edit` with them first")
        return dataclasses.replace(self, sets=sets, purify=self.purify if purify is None else purify,
                                   prompt_ids=self.prompt_ids if prompt_ids is None else prompt_ids)


def _moved(recorded: str, named: str) -> bool:
    """Whether `named` is the recorded folder's new place: another folder, where the recorded one is gone (moved, or
    the edits copied to another machine)."""
    return named != recorded and not Path(recorded).exists()
