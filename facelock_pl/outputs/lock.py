"""One run per output folder: an exclusive lock file, `OUT/.facelock.lock`.

Created atomically (`O_CREAT | O_EXCL`, which also holds on network file systems), it records the holder's
host and process id. A second run is refused at once with a clear message. A lock left by a process that
is gone (killed, crashed) on this host is taken over with a message; one held from another host cannot be
checked, and the message says how to remove it if that run is over. A lock recorded with this process's own host
and id was left by an earlier process that had them (a restarted container): it is taken over too.
"""

from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from .. import logs

LOCK_NAME = ".facelock.lock"


class OutputLockedError(RuntimeError):
    """Another run is writing into the same output folder."""


class OutputFolderGoneError(RuntimeError):
    """The output folder was deleted, moved away or replaced while a run wrote into it."""

    def __init__(self, output_dir: str | Path):
        super().__init__(
            f"stopped: the output folder {output_dir} was deleted, moved away or replaced while this command wrote "
            f"into it (its lock file {LOCK_NAME} is gone or another run's); nothing more was written (a folder made "
            "anew would hold neither the command's lock nor its settings). Rerun the same command to start anew "
            "there, or with --output_dir where you moved the folder, to go on there")


def _lock_record(output_dir: Path) -> bytes | None:
    try:
        return (output_dir / LOCK_NAME).read_bytes()
    except FileNotFoundError:
        return None


class FolderGuard:
    """The output folder as a command found it, told by its lock file (every rank reads the one its rank 0 holds):
    `check()` raises `OutputFolderGoneError` once the folder was deleted, moved away or replaced since — before a
    write that would make it anew, without the lock and the settings. (Not by inode: a folder made anew can have
    the old one's number.) Without a lock to go by (a writer used on its own), it never raises."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.lock = _lock_record(self.output_dir)

    def gone(self) -> bool:
        return self.lock is not None and _lock_record(self.output_dir) != self.lock

    def check(self) -> None:
        if self.gone():
            raise OutputFolderGoneError(self.output_dir)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputLock:
    """`with OutputLock(output_dir):` — held for the whole run by one process (global rank 0)."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self._created_folder = False  # a run that stops before writing anything leaves no empty folder behind

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as handle:
            json.dump({**self.me, "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}, handle)
        return True

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # being written right now, or damaged

    def acquire(self) -> None:
        self._created_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._create():
            return
        holder = self._holder()
        pid = holder.get("pid")
        # Our own id: an earlier process that had it is gone (a restarted container runs as the same pid, often 1,
        # under the same host name); no run of this process holds a lock it has not taken yet.
        stale = holder.get("host") == self.me["host"] and isinstance(pid, int) and (pid == self.me["pid"] or not _alive(pid))
        if not stale:
            raise OutputLockedError(
                f"another run is writing into {self.path.parent} (process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} since {holder.get('since', '?')}): wait for it, or use another "
                f"--output_dir. If that run is over, delete {self.path}")
        logs.warning(f"facelock_pl: taking over the lock of process {holder['pid']}, which is gone ({self.path})")
        self.path.unlink(missing_ok=True)
        if not self._create():
            raise OutputLockedError(f"another run took {self.path} at the same moment: use another --output_dir")

    def release(self) -> None:
        holder = self._holder()
        if (holder.get("host"), holder.get("pid")) == (self.me["host"], self.me["pid"]):  # only our own lock
            self.path.unlink(missing_ok=True)
            if self._created_folder and not any(self.path.parent.iterdir()):
                self.path.parent.rmdir()

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
