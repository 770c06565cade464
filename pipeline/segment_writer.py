"""Segment writer stage: the ordered results cut into segments, each encoded by one of a pool
of encoders into a closed file in the work folder.

`SegmentWriter` takes the writer's place after the collector: `process(result)` hands the
frame to the encoder that owns its segment (a fresh encoder per segment, so every segment
starts with an IDR frame) and blocks while that encoder's queue is full (backpressure). A
segment goes, as its first frame comes, to the encoder with the fewest frames handed to it
whose segments are not closed yet (a frame x264 took may still wait in its look-ahead: the work
is done when the segment closes; among equals, the one handed a segment longest ago), so an
encoder slowed by a hard segment is not handed the next one while others wait for frames
(segment k to encoder k mod N did that). The N encoders run at
once on consecutive segments: the collector's stream is in order, so while encoder 1 still
works on segment 1, segment 2's frames are already queued for another. Host memory is bounded by the queues (about one
segment of frames per encoder; the plan picks N and the segment length to fit memory).

`SegmentEncoder` is the stage each encoder thread runs: it opens a segment's encoder at its
first frame, writes its frames, and at its last frame closes it, renames the finished file
into place and records it in the manifest (atomically). Stopped mid-segment, it finalizes
that segment as a playable partial file (`partial-<k>`), never recorded as finished: a
resume makes it again, a partial output may still show it.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hw.encoding import Encoder
from pipeline.messages import ErrorChannel, ResultItem
from pipeline.queues import FifoInbox, FifoOutbox
from pipeline.segments import PartsFolder, SegmentLayout
from pipeline.stage import StageRunner
from pipeline.stats import RunStats

__all__ = ["SegmentWriter", "SegmentEncoder", "EncoderPool", "SegmentStart", "SegmentEnd"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentStart:
    segment: int


@dataclass(frozen=True)
class SegmentEnd:
    segment: int


class SegmentEncoder:
    """Stage (one per encoder thread): SegmentStart, frames, SegmentEnd in; closed segment files out."""

    def __init__(self, name: str, parts: PartsFolder, layout: SegmentLayout, open_encoder: Callable[[Path], Encoder],
                 *, on_frame: Callable[[], None], on_segment: Callable[[int], None] | None = None) -> None:
        self.name = name
        self.parts = parts
        self.layout = layout
        self.open_encoder = open_encoder
        self.on_frame = on_frame  # a frame written (the encoder may still hold it: x264's look-ahead)
        self.on_segment = on_segment  # a segment closed, with its number of source frames: all of them encoded
        self._segment: int | None = None
        self._encoder: Encoder | None = None
        self._temp: Path | None = None
        self._num_frames = 0
        self._base: int | None = None  # the segment's first timestamp: the segment file starts at 0

    def _temp_path(self, segment: int) -> Path:
        final = self.parts.segment_path(segment)
        return final.with_name(f".{final.stem}.part{final.suffix}")

    def process(self, item: object) -> list:
        if isinstance(item, SegmentStart):
            self._segment, self._num_frames, self._base = item.segment, 0, None
            self._temp = self._temp_path(item.segment)
            self._encoder = self.open_encoder(self._temp)
        elif isinstance(item, SegmentEnd):
            self._finish_segment()
        else:
            assert isinstance(item, ResultItem) and self._encoder is not None, item
            if self._base is None:
                self._base = item.pts
            for pts, planes in item.frames():  # with frames made after it (--interpolate)
                self._encoder.write(planes, pts - self._base)
            self._num_frames += 1  # source frames: what the segment's range counts
            self.on_frame()
        return []

    def _finish_segment(self) -> None:
        segment, encoder, temp = self._segment, self._encoder, self._temp
        self._segment = self._encoder = self._temp = None
        encoder.close(complete=True)
        final = self.parts.segment_path(segment)
        os.replace(temp, final)
        first = self.layout.start_of(segment)
        self.parts.record(segment, first=first, stop=first + self._num_frames, path=final, pts_offset=self._base or 0)
        log.debug("%s: segment %d done (%d frames)", self.name, segment, self._num_frames)
        if self.on_segment is not None:
            self.on_segment(self._num_frames)

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        """Stopped mid-segment: finalize what was encoded as a playable partial segment."""
        if self._encoder is None:
            return
        segment, encoder, temp = self._segment, self._encoder, self._temp
        self._segment = self._encoder = self._temp = None
        try:
            encoder.close(complete=False)
        finally:
            if self._num_frames and temp is not None and temp.exists():
                os.replace(temp, self.parts.partial_path(segment))
                self.parts.record_partial(segment, pts_offset=self._base or 0)
            elif temp is not None:
                temp.unlink(missing_ok=True)


class EncoderPool:
    """N encoder threads, each a `StageRunner` around a `SegmentEncoder`, fed through a bounded
    queue. A segment goes to the encoder with the fewest frames handed to it in segments not
    closed yet, among equals the one handed a segment longest ago (`dispatch="least-loaded"`, the
    default: with equal encoders and segments that is k mod N again), or segment k to encoder k mod N
    (`dispatch="round-robin"`, kept for the benchmark that compares them). Without threads (the
    sequential loop) one encoder takes them all in turn, in the caller's thread."""

    def __init__(self, num_encoders: int, *, queue_frames: int, parts: PartsFolder, layout: SegmentLayout,
                 open_encoder: Callable[[Path], Encoder], errors: ErrorChannel, stats: RunStats,
                 threaded: bool = True, dispatch: str = "least-loaded") -> None:
        if dispatch not in ("least-loaded", "round-robin"):
            raise ValueError(f"dispatch must be least-loaded or round-robin, got {dispatch!r}")
        self.errors = errors
        self._lock = threading.Lock()
        self.stats = stats
        self.dispatch = dispatch
        self.encoders = [SegmentEncoder(f"encoder{i}", parts, layout, open_encoder, on_frame=self._count,
                                        on_segment=lambda n, i=i: self._closed(i, n))
                         for i in range(num_encoders)]
        self._handed = [0] * num_encoders  # frames handed to each encoder (by the writer's thread alone) ...
        self._closed_frames = [0] * num_encoders  # ... and in its closed segments (the encoders' threads, locked)
        self._last_handed = [-1] * num_encoders  # the segment each was handed last (-1: none yet)
        self._slot_of: dict[int, int] = {}  # the open segments' encoders
        self.queues = [queue.Queue(maxsize=queue_frames + 2) for _ in range(num_encoders)]
        self.gone = [threading.Event() for _ in range(num_encoders)]  # set when an encoder's thread has ended
        self.outboxes = [FifoOutbox(q, consumer_gone=gone) for q, gone in zip(self.queues, self.gone)]
        self.runners = [StageRunner(e.name, e, inbox=FifoInbox(q), outbox=None, errors=errors,
                                    clock=stats.clock(e.name), on_stop="until_end", stop_budget_seconds=1.0)
                        for e, q in zip(self.encoders, self.queues)]
        self.threaded = threaded
        self.threads: list[threading.Thread] = []
        if threaded:
            self.threads = [threading.Thread(target=self._run_encoder, args=(r, gone), name=r.name, daemon=False)
                            for r, gone in zip(self.runners, self.gone)]
            for t in self.threads:
                t.start()

    @staticmethod
    def _run_encoder(runner: StageRunner, gone: threading.Event) -> None:
        try:
            runner.run()
        finally:
            gone.set()  # nobody waits on a queue this encoder no longer reads

    def _count(self) -> None:
        with self._lock:
            self.stats.num_frames_encoded += 1

    def _closed(self, slot: int, num_frames: int) -> None:
        with self._lock:
            self._closed_frames[slot] += num_frames

    def slot_of(self, segment: int) -> int:
        """The encoder of `segment`: chosen at its first item (least-loaded: the fewest frames in
        segments not closed yet, then the one handed a segment longest ago)."""
        slot = self._slot_of.get(segment)
        if slot is None:
            if self.dispatch == "round-robin" or not self.threaded:
                slot = segment % len(self.encoders)
            else:
                with self._lock:
                    closed = list(self._closed_frames)
                backlog = [handed - done for handed, done in zip(self._handed, closed)]
                slot = min(range(len(self.encoders)), key=lambda i: (backlog[i], self._last_handed[i], i))
            self._slot_of[segment] = slot
            self._last_handed[slot] = segment
        return slot

    def send(self, segment: int, item: object) -> bool:
        """Hand `item` to the encoder of `segment`; False when the run stopped first."""
        slot = self.slot_of(segment)
        if isinstance(item, SegmentEnd):
            del self._slot_of[segment]  # the next item of this segment number (a resume's) chooses again
        elif isinstance(item, ResultItem):
            self._handed[slot] += 1
        if not self.threaded:  # the sequential loop: the encoder works in the caller's thread
            self.encoders[slot].process(item)
            return True
        return self.outboxes[slot].put(item, stop=self.errors.stop)

    @property
    def num_dropped_at_stop(self) -> int:
        return sum(r.num_dropped_at_stop for r in self.runners)

    def close(self, *, complete: bool) -> bool:
        """End every encoder and wait for it; True when each closed cleanly."""
        if not self.threaded:
            ok = True
            for e in self.encoders:
                try:
                    e.close(complete=complete)
                except Exception as exc:  # noqa: BLE001 - a second error after the first
                    log.warning("while closing %s: %s", e.name, exc)
                    ok = False
            return ok
        for outbox in self.outboxes:
            outbox.end(stop=self.errors.stop)
        for t in self.threads:
            while t.is_alive():
                try:
                    t.join(0.1)
                except KeyboardInterrupt:
                    log.warning("still finalizing the segments; please wait")
        return all(r.closed_cleanly for r in self.runners)


class SegmentWriter:
    """Stage in the writer's place: ordered results in, dispatched to the encoder pool."""

    def __init__(self, layout: SegmentLayout, pool: EncoderPool, *, stats: RunStats,
                 is_finished: Callable[[int], bool]) -> None:
        self.layout = layout
        self.pool = pool
        self.stats = stats
        self.is_finished = is_finished
        self._open: int | None = None
        self.closed_cleanly = False

    def process(self, item: ResultItem) -> list:
        segment = self.layout.segment_of(item.index)
        if self.is_finished(segment):
            raise RuntimeError(f"frame {item.index} belongs to segment {segment}, which is already finished")
        if self._open != segment:
            if self._open is not None:  # the previous segment ended short (the source's end is not known ahead)
                self.pool.send(self._open, SegmentEnd(self._open))
            self._open = segment
            if not self.pool.send(segment, SegmentStart(segment)):
                return []
        if self.pool.send(segment, item):
            self.stats.num_frames_written += 1
            self.stats.num_frames_made += len(item.extra)
        if self.layout.is_last_of_segment(item.index):
            self.pool.send(segment, SegmentEnd(segment))
            self._open = None
        return []

    def finish(self) -> list:
        if self._open is not None:  # the last segment: cut by the end of the source
            self.pool.send(self._open, SegmentEnd(self._open))
            self._open = None
        return []

    def close(self, *, complete: bool) -> None:
        self.closed_cleanly = self.pool.close(complete=complete)

    @property
    def num_dropped_at_stop(self) -> int:
        """Frames queued for the encoders but not encoded, to stop quickly."""
        return self.pool.num_dropped_at_stop
