"""Writer stage: encodes the ordered results and muxes the output file.

Thread name `writer`, non-daemon, always joined. Reads `ResultItem`s from the writer
queue (already in index order) and hands them to an encoder: `PyAVWriter` (CPU
x264/x265/SVT-AV1 fed yuv420p planes) or the NVENC writer (device NV12). On `END`, a
failure anywhere, or a stop request, it closes the encoder, which finalizes the file:
the output is playable and holds every frame written so far.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Protocol

from pipeline.messages import END, ErrorChannel, ResultItem
from pipeline.reader import InjectedFault
from pipeline.stats import RunStats

__all__ = ["Encoder", "Writer"]

log = logging.getLogger("writer")


class Encoder(Protocol):
    """What the writer drives: one frame at a time, then close (finalize) once."""

    def write_result(self, item: ResultItem) -> None: ...

    def close(self, *, complete: bool) -> None: ...


class Writer:
    name = "writer"

    def __init__(
        self,
        encoder: Encoder,
        from_collector: "queue.Queue",
        *,
        stats: RunStats,
        errors: ErrorChannel,
        stop: threading.Event,
        fail_at_frame: int | None = None,
        max_frames: int | None = None,
        stop_budget_seconds: float = 1.0,
    ) -> None:
        self.encoder = encoder
        self.max_frames = max_frames
        self.stop_budget_seconds = stop_budget_seconds
        self.num_frames_dropped_at_stop = 0
        self.finished_cleanly = False
        self.inbox = from_collector
        self.stats = stats
        self.errors = errors
        self.stop = stop
        self.fail_at_frame = fail_at_frame
        self.clock = stats.clock(self.name)
        self.complete = False

    def write(self, item: ResultItem) -> None:
        """Encode one frame; checks the order invariant. The sequential path calls this too."""
        expected = self.stats.num_frames_written
        if item.index != expected:
            raise RuntimeError(f"writer got frame {item.index}, expected {expected}: order broken")
        if self.fail_at_frame is not None and item.index == self.fail_at_frame:
            raise InjectedFault(f"injected writer failure at frame {item.index}")
        with self.clock.busy():
            self.encoder.write_result(item)
        self.stats.num_frames_written = expected + 1

    @property
    def run_complete(self) -> bool:
        """Every frame of the source went through: end of stream reached this stage, nothing
        stopped the run (a failure posted on the error channel sets stop at once), the reader
        read the source to its end (not --max-frames), and every decoded frame was written."""
        stats = self.stats
        return (self.complete and not self.stop.is_set() and stats.source_exhausted
                and stats.num_frames_written == stats.num_frames_decoded)

    def finish(self) -> None:
        """Finalize the file. Audio is copied whole only for a complete run: after a stop,
        a failure or --max-frames it ends with the last video frame."""
        with self.clock.busy():
            self.encoder.close(complete=self.run_complete)
        self.finished_cleanly = True

    def run(self) -> None:
        stopped_at: float | None = None
        try:
            while True:
                with self.clock.waiting():
                    try:
                        item = self.inbox.get(timeout=0.1)
                    except queue.Empty:
                        continue
                if item is END:
                    self.complete = True
                    return
                if self.stop.is_set():
                    # Stopping: finish what fits in ~1 s, drop the rest (not yet encoded), so
                    # Ctrl-C is quick even behind a slow encoder; the file still gets finalized.
                    stopped_at = stopped_at if stopped_at is not None else time.perf_counter()
                    if time.perf_counter() - stopped_at > self.stop_budget_seconds:
                        self.num_frames_dropped_at_stop += 1
                        continue
                self.write(item)
        except BaseException as exc:  # noqa: BLE001
            self.errors.post(self.name, exc)
        finally:
            try:
                self.finish()
            except BaseException as exc:  # noqa: BLE001
                self.errors.post(self.name, exc)
