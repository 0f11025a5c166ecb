"""Per-image random streams: every random draw of the project is keyed by (seed, uid, ...), never by a
batch position, a device or a process, so an image's result does not depend on how the work was split."""

from __future__ import annotations

import hashlib

import torch


def uid_seed(seed: int, key: str) -> int:
    """A 63-bit seed from a user seed and a string key (an image's uid, possibly with more context)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "little") & (2**63 - 1)


def uid_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator seeded by `uid_seed(seed, key)`."""
    return torch.Generator().manual_seed(uid_seed(seed, key))
