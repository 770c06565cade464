"""Collector stage: restores frame order between the workers and the writer.

Thread name `collector`. Reads `ResultItem`s from the results queue in whatever order
the workers finish them, and releases them to the writer queue strictly by index.
Invariant: indices are contiguous from 0; a gap stalls release until the missing frame
arrives (a worker that fails hands its frames back, so they do arrive). The reorder
buffer is bounded by the work queue's window: no frame at or beyond
`next_index + window` is handed to a worker. After every worker has sent `END`, any
frame still held means one was lost, which is an error, never silently skipped.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from pipeline.messages import END, ErrorChannel, ResultItem
from pipeline.scheduling import WorkQueue
from pipeline.stats import RunStats

__all__ = ["Collector", "FramesLost"]

log = logging.getLogger("collector")


class FramesLost(RuntimeError):
    """Workers ended with frames missing from the sequence (a bug, or every device failed)."""


class Collector:
    name = "collector"

    def __init__(
        self,
        results: "queue.Queue",
        to_writer: "queue.Queue",
        work_queue: WorkQueue,
        *,
        num_workers: int,
        stats: RunStats,
        errors: ErrorChannel,
        stop: threading.Event,
        writer_done: threading.Event | None = None,
    ) -> None:
        self.writer_done = writer_done or threading.Event()
        self.results = results
        self.to_writer = to_writer
        self.work_queue = work_queue
        self.num_workers = num_workers
        self.stats = stats
        self.errors = errors
        self.stop = stop
        self.clock = stats.clock(self.name)
        self.next_index = 0
        self._pending: dict[int, ResultItem] = {}
        self.max_pending_seen = 0

    def _forward(self, item) -> bool:
        """Put on the writer queue. After a stop, keep offering for a while: the writer
        still takes what it can write within its stop budget (frames) and must get END."""
        stopped_at: float | None = None
        while True:
            try:
                self.to_writer.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.writer_done.is_set():
                    return False  # the writer has ended (failed): nobody will read this
                if self.stop.is_set():
                    stopped_at = stopped_at if stopped_at is not None else time.perf_counter()
                    # The writer drops what it cannot write within ~1 s of the stop; 30 s is a safety net.
                    limit = 30.0 if item is END else 2.0
                    if time.perf_counter() - stopped_at > limit:
                        return False

    def _drain_after_stop(self) -> None:
        """Stopping: hand the writer every finished frame already here that continues the
        sequence, so nothing produced before the stop is lost (the writer's stop budget
        bounds how long that takes)."""
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                break
            if item is END or item.index < self.next_index or item.index in self._pending:
                continue
            self._pending[item.index] = item
        self._release_ready()

    def _check_not_lost(self) -> None:
        """Fail fast when the frame the writer waits for has left every worker but never came:
        a lost frame would otherwise stall the run forever (workers wait behind the reorder
        window, the reader behind the full queue). Order matters: a worker puts results
        before `done()`, so `delivered` first, then an empty results queue, means lost."""
        index = self.next_index
        if index in self._pending or not self.work_queue.delivered(index):
            return
        if self.results.empty() and index not in self._pending:
            raise FramesLost(f"frame {index} left its worker but never arrived ({len(self._pending)} later frame(s) "
                             "held): a worker lost it")

    def _release_ready(self) -> bool:
        while self.next_index in self._pending:
            item = self._pending.pop(self.next_index)
            with self.clock.waiting():
                if not self._forward(item):
                    return False
            self.next_index += 1
            self.work_queue.release_upto(self.next_index)
        return True

    def run(self) -> None:
        num_ended = 0
        try:
            while num_ended < self.num_workers:
                with self.clock.waiting():
                    try:
                        item = self.results.get(timeout=0.1)
                    except queue.Empty:
                        if self.stop.is_set():
                            self._drain_after_stop()
                            return
                        self._check_not_lost()
                        continue
                if item is END:
                    num_ended += 1
                    continue
                with self.clock.busy():
                    if item.index < self.next_index or item.index in self._pending:
                        raise FramesLost(f"frame {item.index} arrived twice")
                    self._pending[item.index] = item
                    self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
                if not self._release_ready():
                    return
                if self.stop.is_set():
                    self._drain_after_stop()
                    return
            if self._pending and not self.stop.is_set():
                missing = self.next_index
                raise FramesLost(
                    f"workers ended but frame {missing} never arrived ({len(self._pending)} later frame(s) held)"
                )
        except BaseException as exc:  # noqa: BLE001
            self.errors.post(self.name, exc)
        finally:
            self._forward(END)
