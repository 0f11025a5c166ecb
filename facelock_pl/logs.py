"""The project's own messages: the `facelock_pl` logger, from global rank 0 only (every rank runs the same code)."""

from __future__ import annotations

import logging

from lightning.fabric.utilities.rank_zero import rank_zero_only

log = logging.getLogger("facelock_pl")


def info(message: str) -> None:
    if rank_zero_only.rank == 0:
        log.info(message)


def warning(message: str) -> None:
    if rank_zero_only.rank == 0:
        log.warning(message)


def first_few(names, shown: int = 5) -> str:
    """`a, b, c, d, e, ...`: the first `shown` of `names`, for a message about many."""
    names = list(names)
    return ", ".join(names[:shown]) + (", ..." if len(names) > shown else "")
