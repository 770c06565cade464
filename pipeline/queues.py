"""The queues between stages, and the policies they carry.

- `WorkQueue`: reader -> workers (below).
- `FifoInbox` / `FifoOutbox`: a bounded `queue.Queue` between two other stages (workers ->
  collector, collector -> writer). Backpressure: a full queue blocks its producer, so host
  memory is bounded by queue sizes, never by the length of the video.

Work distribution: the shared work queue that free workers pull batches from.

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
import queue
import threading
import time
from collections import deque
from typing import Any, Sequence

from core.frame import Frame
from pipeline.messages import END

__all__ = ["WorkQueue", "FifoInbox", "FifoOutbox"]


class WorkQueue:
    """Bounded, pull-based queue of `Frame`s with give-back and a reorder window."""

    def __init__(self, maxsize: int, *, window: int | None = None) -> None:
        if maxsize < 1:
            raise ValueError(f"maxsize must be >= 1, got {maxsize}")
        self.maxsize = maxsize
        self.window = window
        self._items: deque[Frame] = deque()
        self._returned: list[tuple[int, Frame]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False
        self._released = 0
        self._in_flight: set[int] = set()
        self._num_put = 0

    # -- reader side --------------------------------------------------------------
    def put(self, item: Frame, *, stop: threading.Event, poll_seconds: float = 0.1) -> bool:
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

    def take(self, max_items: int, *, stop: threading.Event, poll_seconds: float = 0.1,
             deadline: float | None = None) -> list[Frame] | None:
        """Wait for work and take up to `max_items` frames (returned ones first).

        Returns None when there is no more work (end of stream, or the run stopped), or
        when `deadline` (a `time.perf_counter()` value) passes first. The caller must later
        call `done(items)` or `give_back(items)` for what it took.
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
                wait = poll_seconds if deadline is None else min(poll_seconds, deadline - time.perf_counter())
                if wait <= 0:
                    return None
                self._cond.wait(wait)

    def take_more(self, max_items: int) -> list[Frame]:
        """Non-blocking: up to `max_items` more frames for a batch being filled."""
        with self._cond:
            return self._gather(max_items)

    def _gather(self, max_items: int) -> list[Frame]:
        """Under the lock: returned frames first, then queued ones inside the window."""
        batch: list[Frame] = []
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

    def done(self, items: Sequence[Frame]) -> None:
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

    def give_back(self, items: Sequence[Frame]) -> None:
        """A worker returns frames it took but could not finish; they go out again first."""
        with self._cond:
            for item in items:
                heapq.heappush(self._returned, (item.index, item))
            self._in_flight.difference_update(it.index for it in items)
            self._cond.notify_all()

    def qsize(self) -> int:
        with self._cond:
            return len(self._items) + len(self._returned)

    # -- as the workers' inbox and the reader's outbox (pipeline.stage) -------------------
    def get(self, *, stop: threading.Event, timeout: float, want: int, fill_seconds: float = 0.05) -> Any:
        """A batch of up to `want` frames (waiting up to `fill_seconds` more to fill it while
        the reader is still going), END when there is no more work, None on stop/timeout."""
        deadline = time.perf_counter() + timeout
        batch = self.take(want, stop=stop, deadline=deadline)
        if batch is None:
            return None if (stop.is_set() or self._aborted or not self._finished()) else END
        fill_until = time.perf_counter() + fill_seconds
        while len(batch) < want and not self.reader_done and time.perf_counter() < fill_until:
            self.wait_for_items(max(0.0, fill_until - time.perf_counter()))
            batch.extend(self.take_more(want - len(batch)))
        return batch

    def get_nowait(self) -> Any:
        return self.take_more(1 << 30) or None

    def task_done(self, batch: Sequence[Frame]) -> None:
        self.done(batch)

    def empty(self) -> bool:
        return self.qsize() == 0

    def end(self, *, stop: threading.Event | None = None) -> None:
        self.close()

    def _finished(self) -> bool:
        with self._cond:
            return self._closed and not self._items and not self._returned and not self._in_flight


class FifoInbox:
    """A bounded `queue.Queue` as an inbox, fed by `num_producers` stages: `END` is
    returned once, after every producer has sent its own."""

    def __init__(self, q: queue.Queue, *, num_producers: int = 1) -> None:
        self.queue = q
        self.num_producers = num_producers
        self._num_ended = 0

    def _count(self, item: Any) -> Any:
        if item is END:
            self._num_ended += 1
            return END if self._num_ended >= self.num_producers else None
        return item

    def get(self, *, stop: threading.Event, timeout: float, want: int = 1) -> Any:
        try:
            return self._count(self.queue.get(timeout=timeout))
        except queue.Empty:
            return None

    def get_nowait(self) -> Any:
        try:
            return self._count(self.queue.get_nowait())
        except queue.Empty:
            return None

    def task_done(self, item: Any) -> None:
        pass

    def give_back(self, item: Any) -> None:
        raise ValueError("a FIFO inbox cannot take an item back: only the work queue hands work out again")

    def empty(self) -> bool:
        return self.queue.empty()


class FifoOutbox:
    """A bounded `queue.Queue` as an outbox. Blocks while full (backpressure). Once the run
    is stopped an item is delivered only if there is room at once (the next stage drains
    what is there; nobody waits), and END is offered for up to `end_patience_seconds`
    (a stopping consumer takes everything within about a second; this is a safety net)."""

    def __init__(self, q: queue.Queue, *, poll_seconds: float = 0.1, end_patience_seconds: float = 30.0,
                 consumer_gone: threading.Event | None = None) -> None:
        self.queue = q
        self.poll_seconds = poll_seconds
        self.end_patience_seconds = end_patience_seconds
        self.consumer_gone = consumer_gone or threading.Event()

    def put(self, item: Any, *, stop: threading.Event) -> bool:
        stopped_at: float | None = None
        while not self.consumer_gone.is_set():
            try:
                self.queue.put(item, timeout=self.poll_seconds)
                return True
            except queue.Full:
                if stop.is_set():
                    stopped_at = stopped_at if stopped_at is not None else time.perf_counter()
                    if time.perf_counter() - stopped_at > 2.0:  # the writer drops what it cannot write in ~1 s
                        return False
        return False

    def end(self, *, stop: threading.Event | None = None) -> None:
        """END downstream. After a stop the consumer may be gone (it drains and leaves): offer
        END for a second, not `end_patience_seconds`."""
        deadline = time.perf_counter() + self.end_patience_seconds
        while not self.consumer_gone.is_set() and time.perf_counter() < deadline:
            if stop is not None and stop.is_set():  # now or while waiting: a consumer that failed drains nothing
                deadline = min(deadline, time.perf_counter() + 1.0)
            try:
                self.queue.put(END, timeout=self.poll_seconds)
                return
            except queue.Full:
                continue
