"""Progress in the user's units: `fit`'s images (done and to do, the current image's iteration, elapsed, ETA,
images/s) and `edit`'s edits.

On a terminal, a live rich bar; in a log (not a terminal), a line every 5% of the work and at least one a minute
while work goes on (`LogCadence`), so a slow image never reads as a hang. `fit`'s ETA counts the
PGD steps left — the iterations left of the images in flight plus, for images not started, the mean
iterations that finished images needed (under adaptive stopping fewer than `iterations`) — divided by the
slots, times the recent seconds per step; `edit`'s is the mean time per edit so far times the edits left.
"""

from __future__ import annotations

import time

from lightning.pytorch.callbacks import ProgressBar
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from . import logs


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


HEARTBEAT_S = 60.0


class LogCadence:
    """When a progress line is due in a log: every 5% of the work, its end, and after a minute without a line (a tenth
    of the time so far once a run is past ten minutes: an eight-hour run logs a few dozen such lines, not 480)."""

    def __init__(self, total: int, started: float):
        self.total, self.started = total, started
        self.logged, self.last_line = 0, started

    def due(self, done: int, now: float) -> bool:
        finished = done >= self.total and done > self.logged
        quiet = now - self.last_line >= max(HEARTBEAT_S, (now - self.started) / 10)
        if finished or quiet or done >= self.logged + max(1, self.total // 20):
            self.logged, self.last_line = done, now
            return True
        return False


class ImagesProgress(ProgressBar):
    """Shown by global rank 0 for its own share of the images."""

    def __init__(self):
        super().__init__()
        self._enabled = True
        self.bar: Progress | None = None
        self.task = None
        self.step_seconds: float | None = None  # exponential moving average
        self._last: float | None = None
        self._started = 0.0
        self.cadence: LogCadence | None = None

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        self.total = trainer.datamodule.num_pending if trainer.datamodule is not None else 0
        self._started = self._last = time.perf_counter()
        self.cadence = LogCadence(self.total, self._started)
        console = Console(stderr=True)
        if console.is_terminal:
            self.bar = Progress(TextColumn("images"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
                                TimeElapsedColumn(), console=console, transient=False)
            self.task = self.bar.add_task("protect", total=self.total, status="")
            self.bar.start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not (self._enabled and trainer.is_global_zero):
            return
        now = time.perf_counter()
        step = now - self._last
        self.step_seconds = step if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * step
        self._last = now
        done = pl_module.images_done
        # The status reads the slots (on the GPU: a copy to the host): in a log, only for a line that is due.
        if self.bar is not None:
            self.bar.update(self.task, completed=done, status=self.status(pl_module))
        elif self.total and self.cadence.due(done, now):
            logs.info(f"facelock_pl: images {done}/{self.total} {self.status(pl_module)} elapsed "
                      f"{_duration(now - self._started)}")

    def status(self, pl_module) -> str:
        attack, done = pl_module.attack, pl_module.images_done
        iterations = attack.config.iterations
        in_flight = attack.slots.iteration[attack.slots.occupied].tolist() if attack.busy else []
        finished_iterations = pl_module.stats.iterations_mean(iterations)
        not_started = max(0, self.total - done - len(in_flight))
        steps_left = (sum(finished_iterations - i if finished_iterations > i else 0 for i in in_flight)
                      + not_started * finished_iterations) / max(1, attack.capacity)
        elapsed = time.perf_counter() - self._started
        if in_flight:
            current = f"iteration {max(in_flight)}/{iterations}"
        else:  # between images: all done, or the next batch not yet loaded
            current = "finished" if done >= self.total else "loading"
        rate = f"{done / elapsed:.3f} images/s" if done and elapsed > 0 else "– images/s"
        eta = _duration(steps_left * self.step_seconds) if self.step_seconds is not None else "?"
        return f"{current}  {rate}  ETA {eta}"

    def on_train_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


class CountProgress:
    """Progress of `total` units of work (e.g. `edit`'s edits), as a context: `advance(n)` after each n done.

    Example:
        with CountProgress(120, "edits", "facelock_pl edit") as progress:
            for chunk in chunks:
                ...
                progress.advance(len(chunk))
    """

    def __init__(self, total: int, unit: str, prefix: str):
        self.total, self.unit, self.prefix = total, unit, prefix
        self.done = 0
        self._started = 0.0
        self.cadence: LogCadence | None = None
        self.bar: Progress | None = None

    def __enter__(self) -> "CountProgress":
        self._started = time.perf_counter()
        self.cadence = LogCadence(self.total, self._started)
        console = Console(stderr=True)
        if console.is_terminal and self.total:
            self.bar = Progress(TextColumn(self.unit), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                TextColumn("ETA"), TimeRemainingColumn(), console=console)
            self.task = self.bar.add_task(self.unit, total=self.total)
            self.bar.start()
        return self

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif self.cadence.due(self.done, now := time.perf_counter()):
            elapsed = now - self._started
            left = (self.total - self.done) * elapsed / self.done if self.done else None
            logs.info(f"{self.prefix}: {self.unit} {self.done}/{self.total} elapsed {_duration(elapsed)} ETA "
                      f"{_duration(left)} ({self.done / max(elapsed, 1e-9):.3f} {self.unit}/s)")

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()
