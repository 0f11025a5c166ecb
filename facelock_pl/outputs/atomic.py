"""Atomic file writes: a temporary name in the same folder, fsync, then rename.

A crash leaves either the old file, the new file, or a `.tmp-*` file that readers ignore — never a
half-written file under the final name.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

TMP_PREFIX = ".tmp-"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def png_bytes(levels: torch.Tensor) -> bytes:
    """Lossless PNG of a uint8 [3, H, W] tensor."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(levels.permute(1, 2, 0).cpu().numpy())).save(buffer, format="PNG")
    return buffer.getvalue()
