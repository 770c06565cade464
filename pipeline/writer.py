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
from typing import Protocol

from pipeline.messages import END, ResultItem, StageFailed
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
        errors: "queue.Queue[StageFailed]",
        stop: threading.Event,
        fail_at_frame: int | None = None,
    ) -> None:
        self.encoder = encoder
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

    def finish(self) -> None:
        """Finalize the file (complete only when END arrived and nothing failed)."""
        with self.clock.busy():
            self.encoder.close(complete=self.complete and not self.stop.is_set())

    def run(self) -> None:
        try:
            while True:
                with self.clock.waiting():
                    item = self.inbox.get()
                if item is END:
                    self.complete = True
                    return
                self.write(item)
        except BaseException as exc:  # noqa: BLE001
            self.errors.put(StageFailed(self.name, exc))
            self.stop.set()
        finally:
            try:
                self.finish()
            except BaseException as exc:  # noqa: BLE001
                self.errors.put(StageFailed(self.name, exc))
