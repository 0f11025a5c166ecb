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
