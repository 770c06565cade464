"""Reader stage: decodes the source and puts `FrameItem`s on the work queue.

Thread name `reader`. Reads from a frame source (PyAV on the CPU, NVDEC on a GPU),
numbers frames from 0 in presentation order, and puts them on the `WorkQueue`,
blocking while it is full. `close()`s the work queue at the end (end of stream),
whether it finished, hit `--max-frames`, or failed.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Iterable, Protocol

from pipeline.messages import ErrorChannel, FrameItem
from pipeline.scheduling import WorkQueue
from pipeline.stats import RunStats

__all__ = ["FrameSource", "Reader", "InjectedFault"]

log = logging.getLogger("reader")


class InjectedFault(RuntimeError):
    """Raised on purpose by fault injection (tests only)."""


class FrameSource(Protocol):
    """What the reader decodes from: an iterable of decoded frames."""

    num_corrupt_packets: int

    def __iter__(self) -> Iterable: ...  # yields objects with .pts .fmt .planes .bit_depth

    def close(self) -> None: ...


class Reader:
    """Decode `source` into `work_queue`; post failures on `errors`."""

    name = "reader"

    def __init__(
        self,
        source: FrameSource,
        work_queue: WorkQueue,
        *,
        stats: RunStats,
        errors: ErrorChannel,
        stop: threading.Event,
        max_frames: int | None = None,
        fail_at_frame: int | None = None,
    ) -> None:
        self.source = source
        self.work_queue = work_queue
        self.stats = stats
        self.errors = errors
        self.stop = stop
        self.max_frames = max_frames
        self.fail_at_frame = fail_at_frame
        self.clock = stats.clock(self.name)

    def frames(self) -> Iterable[FrameItem]:
        """Number the source's frames; the sequential path iterates this directly."""
        index = 0
        iterator = iter(self.source)
        while self.max_frames is None or index < self.max_frames:
            if self.stop.is_set():
                return
            with self.clock.busy():
                try:
                    decoded = next(iterator)
                except StopIteration:
                    self.stats.source_exhausted = True  # every frame of the source was read
                    break
                if self.fail_at_frame is not None and index == self.fail_at_frame:
                    raise InjectedFault(f"injected reader failure at frame {index}")
                item = FrameItem(
                    index=index, pts=decoded.pts, fmt=decoded.fmt, planes=tuple(decoded.planes), bit_depth=decoded.bit_depth
                )
            self.stats.num_frames_decoded = index + 1
            self.stats.num_corrupt_packets = getattr(self.source, "num_corrupt_packets", 0)
            yield item
            index += 1
        self.stats.num_corrupt_packets = getattr(self.source, "num_corrupt_packets", 0)
        reason = getattr(self.source, "stopped_early_reason", None)
        if reason:
            self.stats.warn(f"source damaged, {reason}: kept the {index} frame(s) decoded before it")

    def run(self) -> None:
        try:
            for item in self.frames():
                with self.clock.waiting():
                    if not self.work_queue.put(item, stop=self.stop):
                        return
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the error channel
            self.errors.post(self.name, exc)
        finally:
            self.work_queue.close()
            try:
                self.source.close()
            except Exception as exc:  # closing must not hide the real failure
                log.debug("closing the source failed: %s", exc)

