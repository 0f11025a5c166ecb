"""Continuous batching, data side: the queue of images waiting for a slot of the attack.

Lightning iterates a `QueueFeed`, which yields the same `ImageQueue` at every step; the engine takes as many
images from it as it has free slots (`take`), inside the training step, after freeing the slots it finished
in the previous step — so Lightning's one-batch prefetch never delays a refill. The feed never ends by
itself: the engine stops the run (`trainer.should_stop`) once no process has work left, so every process
runs the same number of steps.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

from .items import ImageItem


class ImageQueue:
    """The images still to protect on this process: the loader's stream, with re-queued images first."""

    def __init__(self, items: Iterator[ImageItem]):
        self._items = items
        self._requeued: deque[ImageItem] = deque()
        self._exhausted = False

    def take(self, count: int) -> list[ImageItem]:
        """Up to `count` images, in order."""
        taken = []
        while len(taken) < count:
            item = self._requeued.popleft() if self._requeued else next(self._items, None)
            if item is None:
                self._exhausted = True
                break
            taken.append(item)
        return taken

    def requeue(self, items: list[ImageItem]) -> None:
        """Put unfinished images back at the front of the queue (they restart from their random start)."""
        self._requeued.extendleft(reversed(items))

    def close(self) -> None:
        """Let go of the loader: its worker processes are shut down now (through the loader's own shutdown, which
        runs when its iterator is released), not left to the interpreter's exit, where an interrupted run's busy
        workers — which ignore the stop signals, see `facelock_pl.signals` — would be waited for forever."""
        self._items = iter(())
        self._requeued.clear()
        self._exhausted = True

    @property
    def empty(self) -> bool:
        """Whether no image is left (known once a `take` came up short)."""
        return self._exhausted and not self._requeued


class QueueFeed:
    """What Lightning iterates: the same `ImageQueue` at every step, until the engine stops the run."""

    def __init__(self, loader: Iterable[ImageItem]):
        self.loader = loader
        self.queue: ImageQueue | None = None

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    def __iter__(self) -> Iterator[ImageQueue]:
        self.queue = ImageQueue(iter(self.loader))
        while True:
            yield self.queue
