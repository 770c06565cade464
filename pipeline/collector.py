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

from pipeline.messages import END, ResultItem, StageFailed
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
        errors: "queue.Queue[StageFailed]",
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
        """Put on the writer queue; on stop give up (frames) or retry for a while (END)."""
        tries_after_stop = 0
        while True:
            try:
                self.to_writer.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self.writer_done.is_set():
                    return False  # the writer has ended (failed): nobody will read this
                if self.stop.is_set():
                    tries_after_stop += 1
                    # A stopping writer drops what is queued within ~1 s; 30 s is a safety net.
                    if item is not END or tries_after_stop > 300:
                        return False

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
                            return
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
                    return
            if self._pending and not self.stop.is_set():
                missing = self.next_index
                raise FramesLost(
                    f"workers ended but frame {missing} never arrived ({len(self._pending)} later frame(s) held)"
                )
        except BaseException as exc:  # noqa: BLE001
            self.errors.put(StageFailed(self.name, exc))
        finally:
            self._forward(END)
