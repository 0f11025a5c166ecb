"""Stop signals. Until a run's steps start, SIGTERM and SIGUSR1 stop a command at once, as Ctrl+C does
(`interrupting`): while models load and the data is listed nothing is half-done, and a cluster's notice should
not wait for a step.

Once the steps run, they are stop requests: SIGTERM (what schedulers send before they kill), SIGINT (Ctrl+C) and
SIGUSR1 (SLURM's pre-timeout signal, `sbatch --signal=USR1@120`) only set a flag. The module reads it at the end of each
step, every process votes on it together with the "work left" vote, and all of them stop after the same
step: finished images are kept, the summary says `interrupted`, the command exits with its own code.

The handlers replace Lightning's SIGTERM handler for the run: that one broadcasts from inside the signal
handler, which deadlocks against a collective that another process is already in.

Schedulers and terminals signal every process of the job or group (SLURM's time limit and `scancel`, `timeout`,
Ctrl+C), the data loader's worker processes included. A worker killed by one makes the main process raise
("DataLoader worker ... is killed by signal") instead of stopping after the step, so the workers ignore the stop
signals (`ignore_stop_signals`): the main process decides, and ends its workers itself.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


@contextmanager
def interrupting() -> Iterator[None]:
    """SIGTERM and SIGUSR1 raise KeyboardInterrupt inside the block (SIGINT already does); the previous handlers
    come back after it, SIGINT's too (Lightning leaves Ctrl+C ignored once it has caught one). The command catches
    the KeyboardInterrupt, releases its folder's lock and says what is kept."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals are delivered to the main thread only
        return
    previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, _interrupt)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt


class StopRequests:
    """Records the first stop signal; a second Ctrl+C stops at once (KeyboardInterrupt)."""

    def __init__(self):
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals are delivered to the main thread only
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum)


def ignore_stop_signals(worker_id: int) -> None:
    """A data loader's `worker_init_fn`: the worker leaves the stop signals to the main process (see above)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
