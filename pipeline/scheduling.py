"""Work distribution: the shared work queue that free workers pull batches from.

`WorkQueue` is the reader -> workers queue. It is bounded (a full queue blocks the
reader: backpressure) and pull-based: a free worker takes the next batch, so a slower
device simply takes fewer batches. It adds three things `queue.Queue` lacks:

- `give_back(items)`: a worker whose device failed or ran out of memory returns its
  frames; they are handed out again before anything newer.
- a reorder window: a frame is handed out only while its index is below
  `released + window`, where `released` is the collector's next index to release.
  This bounds the collector's reorder buffer even when one device stalls.
- end of stream that is safe with give-backs: `take()` returns `None` (no more work)
  only when the reader closed the queue, nothing is queued or returned, and no frame
  is held by a worker (a held batch may still come back).

Invariant: every index the reader put is, at any moment, in exactly one place: this
queue, the returned heap, a worker's hands (`in flight`), or downstream. A worker puts a
batch's results downstream *before* calling `done(items)`, so `delivered(index)` — put,
and now in none of the first three places — means its result has left the worker:
the collector uses it to tell a lost frame (a bug) from a slow one, instead of waiting
on the gap forever.
"""

from __future__ import annotations

import heapq
import threading
from collections import deque
from typing import Sequence

from pipeline.messages import FrameItem

__all__ = ["WorkQueue"]


class WorkQueue:
    """Bounded, pull-based queue of `FrameItem`s with give-back and a reorder window."""

    def __init__(self, maxsize: int, *, window: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.window = window
        self._items: deque[FrameItem] = deque()
        self._returned: list[tuple[int, FrameItem]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False
        self._released = 0
        self._in_flight: set[int] = set()
        self._num_put = 0

    # -- reader side --------------------------------------------------------------
    def put(self, item: FrameItem, *, stop: threading.Event, poll_seconds: float = 0.1) -> bool:
        """Block while full. Returns False (item not queued) once `stop` is set."""
        with self._cond:
            while len(self._items) >= self.maxsize:
                if stop.is_set() or self._aborted:
                    return False
                self._cond.wait(poll_seconds)
            if stop.is_set() or self._aborted:
                return False
            self._items.append(item)
            self._num_put = max(self._num_put, item.index + 1)
            self._cond.notify_all()
            return True

    def close(self) -> None:
        """The reader has put its last item."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """Stop the run: every blocked `put` and `take` returns at once."""
        with self._cond:
            self._aborted = True
            self._closed = True
            self._cond.notify_all()

    # -- collector side ----------------------------------------------------------
    def release_upto(self, next_index: int) -> None:
        """The collector has released every frame below `next_index`."""
        with self._cond:
            if next_index > self._released:
                self._released = next_index
                self._cond.notify_all()

    # -- worker side -------------------------------------------------------------
    def _allowed(self, index: int) -> bool:
        return self.window is None or index < self._released + self.window

    def take(self, max_items: int, *, stop: threading.Event, poll_seconds: float = 0.1) -> list[FrameItem] | None:
        """Wait for work and take up to `max_items` frames (returned ones first).

        Returns None when there is no more work (end of stream, or the run stopped).
        The caller must later call `done(items)` or `give_back(items)` for what it took.
        """
        with self._cond:
            while True:
                if stop.is_set() or self._aborted:
                    return None
                batch = self._gather(max_items)
                if batch:
                    return batch
                if self._closed and not self._items and self.num_in_flight == 0:
                    return None
                self._cond.wait(poll_seconds)

    def take_more(self, max_items: int) -> list[FrameItem]:
        """Non-blocking: up to `max_items` more frames for a batch being filled."""
        with self._cond:
            return self._gather(max_items)

    def _gather(self, max_items: int) -> list[FrameItem]:
        """Under the lock: returned frames first, then queued ones inside the window."""
        batch: list[FrameItem] = []
        while self._returned and len(batch) < max_items:
            batch.append(heapq.heappop(self._returned)[1])
        while self._items and len(batch) < max_items and self._allowed(self._items[0].index):
            batch.append(self._items.popleft())
        if batch:
            self._in_flight.update(it.index for it in batch)
            self._cond.notify_all()  # room for the reader
        return batch

    def wait_for_items(self, timeout: float) -> None:
        """Block up to `timeout` seconds or until something is put or closed."""
        with self._cond:
            if not self._items and not self._returned and not self._closed:
                self._cond.wait(timeout)

    @property
    def reader_done(self) -> bool:
        return self._closed

    @property
    def num_in_flight(self) -> int:
        """Frames taken by workers and neither done nor given back."""
        return len(self._in_flight)

    def done(self, items: Sequence[FrameItem]) -> None:
        """A worker finished `items` (frames it took); their results are already downstream."""
        with self._cond:
            self._in_flight.difference_update(it.index for it in items)
            self._cond.notify_all()

    def delivered(self, index: int) -> bool:
        """Frame `index` was put and has left this queue and every worker: done (see the invariant)."""
        with self._cond:
            if index >= self._num_put or index in self._in_flight:
                return False
            return not any(it.index == index for it in self._items) and not any(i == index for i, _ in self._returned)

    def give_back(self, items: Sequence[FrameItem]) -> None:
        """A worker returns frames it took but could not finish; they go out again first."""
        with self._cond:
            for item in items:
                heapq.heappush(self._returned, (item.index, item))
            self._in_flight.difference_update(it.index for it in items)
            self._cond.notify_all()

    def qsize(self) -> int:
        with self._cond:
            return len(self._items) + len(self._returned)
