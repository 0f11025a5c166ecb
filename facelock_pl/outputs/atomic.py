"""Atomic file writes: a temporary name in the same folder, fsync, then rename.

A crash leaves either the old file, the new file, or a `.tmp-*` file that readers ignore — never a
half-written file under the final name. Files get the permissions the umask gives any new file (0644 under
umask 022), not the 0600 of a temporary file, so a web server or a colleague can read the protected images.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

TMP_PREFIX = ".tmp-"


def _current_umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; put it back at once
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_current_umask()  # read once, at import, in the main thread


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
