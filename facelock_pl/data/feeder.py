"""Continuous batching: a fixed number of slots, each refilled with the next image as soon as its
image is finished (after `iterations` steps, or earlier under adaptive stopping).

The loader Lightning iterates yields the same `SlotBoard` every step. The board pulls new images only
when the module asks (`refill()`, inside the training step), after the module released the slots it
finished in the previous step — so Lightning's one-batch prefetch never delays a refill.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator


class SlotBoard:
    """Which slots are free, and the stream of images waiting for one.

    Args:
        items: an iterator of dataset items (decoded in loader workers).
        slots: number of slots (the batch size).
    """

    def __init__(self, items: Iterator[dict], slots: int):
        self.items = items
        self.slots = slots
        self.free = list(range(slots))
        self.requeued: deque[dict] = deque()
        self.exhausted = False

    def refill(self) -> list[tuple[int, dict]]:
        """(slot, item) for every free slot that can get an image, lowest slot first."""
        filled = []
        self.free.sort()
        while self.free:
            item = self.requeued.popleft() if self.requeued else next(self.items, None)
            if item is None:
                self.exhausted = True
                break
            filled.append((self.free.pop(0), item))
        return filled

    def release(self, slots: list[int]) -> None:
        self.free.extend(slots)

    def requeue(self, items: list[dict]) -> None:
        """Put unfinished images back at the front of the queue (they restart from their random start)."""
        self.requeued.extendleft(reversed(items))
        self.exhausted = False

    def shrink(self, slots: int) -> list[int]:
        """Use only `slots` slots from now on; returns the slot indices dropped."""
        dropped = list(range(slots, self.slots))
        self.slots = slots
        self.free = [s for s in self.free if s < slots]
        return dropped

    @property
    def busy(self) -> bool:
        """Images in flight or still waiting."""
        return len(self.free) < self.slots or bool(self.requeued) or not self.exhausted


class SlotFeeder:
    """What Lightning iterates: yields the `SlotBoard` once per step.

    With `until_stopped` (several processes) it never ends by itself: every rank keeps stepping until the
    module sees, collectively, that no rank is busy — ranks must run the same number of steps.
    """

    def __init__(self, loader: Iterable, slots: int, until_stopped: bool = False):
        self.loader = loader
        self.slots = slots
        self.until_stopped = until_stopped
        self.board: SlotBoard | None = None

    def __iter__(self) -> Iterator[SlotBoard]:
        self.board = SlotBoard(iter(self.loader), self.slots)
        while self.until_stopped or self.board.busy:
            yield self.board
