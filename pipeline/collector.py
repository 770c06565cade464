"""Collector stage: restores frame order between the workers and the writer.

Takes `ResultItem`s in whatever order the workers finish them and returns them strictly
by index. Invariant: indices are contiguous from 0; a gap holds release back until the
missing frame arrives (a worker whose device fails hands its frames back to the work
queue, so they do arrive). The reorder buffer is bounded by the work queue's window: no
frame at or beyond `next_index + window` is handed to a worker (`on_release` tells the
work queue how far the writer has got).

A frame that left its worker (`is_delivered`) but never came is lost — a bug: `on_idle`
notices it while waiting instead of stalling forever, and at end of stream every decoded
frame must have been released. Either way `FramesLost`, never a silently short output.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.messages import ResultItem

__all__ = ["Collector", "FramesLost"]


class FramesLost(RuntimeError):
    """Frames are missing from the sequence: a bug (a worker lost them)."""


class Collector:
    """Stage: results in any order in, the same results in index order out."""

    def __init__(self, *, on_release: Callable[[int], None], is_delivered: Callable[[int], bool],
                 num_frames_in: Callable[[], int], is_skipped: Callable[[int], bool] = lambda index: False) -> None:
        self.on_release = on_release
        self.is_skipped = is_skipped  # frames of finished segments (--resume): never sent, passed over
        self.is_delivered = is_delivered
        self.num_frames_in = num_frames_in
        self.next_index = 0
        self._pending: dict[int, ResultItem] = {}
        self.max_pending_seen = 0

    def _skip_ahead(self) -> None:
        start = self.next_index
        while self.is_skipped(self.next_index):
            self.next_index += 1
        if self.next_index != start:
            self.on_release(self.next_index)

    def process(self, item: ResultItem) -> list[ResultItem]:
        self._skip_ahead()
        if item.index < self.next_index or item.index in self._pending:
            raise FramesLost(f"frame {item.index} arrived twice")
        self._pending[item.index] = item
        self.max_pending_seen = max(self.max_pending_seen, len(self._pending))
        ready = []
        while self.next_index in self._pending:
            ready.append(self._pending.pop(self.next_index))
            self.next_index += 1
            while self.is_skipped(self.next_index):
                self.next_index += 1
        if ready:
            self.on_release(self.next_index)
        return ready

    def on_idle(self, inbox_is_empty: Callable[[], bool]) -> None:
        """Nothing arrived for a while: is the frame the writer waits for lost? A worker puts a
        result before it reports the frame done, so `delivered` first, then an empty inbox,
        means the result was never sent."""
        self._skip_ahead()
        index = self.next_index
        if index in self._pending or not self.is_delivered(index):
            return
        if inbox_is_empty():
            raise FramesLost(f"frame {index} left its worker but never arrived ({len(self._pending)} later frame(s) "
                             "held): a worker lost it")

    def finish(self) -> list[ResultItem]:
        self._skip_ahead()
        if self._pending:
            raise FramesLost(f"workers ended but frame {self.next_index} never arrived ({len(self._pending)} later "
                             "frame(s) held)")
        if self.next_index != self.num_frames_in():
            raise FramesLost(f"{self.num_frames_in()} frame(s) decoded but {self.next_index} came out of the workers")
        return []

    def close(self, *, complete: bool) -> None:
        self._pending.clear()
