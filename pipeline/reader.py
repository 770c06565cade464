"""Reader stage: the source's frames, numbered, counted, cut at --max-frames.

A source stage (no inbox): `finish()` yields the decoder's `Frame`s in presentation order
(the PyAV decoder on the CPU, NVDEC on a GPU) until the source ends or `max_frames` is
reached, and keeps the run's decode figures (`num_frames_decoded`, corrupt packets,
whether the source was read to its end). A source that stopped early is said once. With
`--resume`, frames of finished segments are decoded (the frame index is exact only that
way) but not passed on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from core.frame import Frame
from pipeline.stats import RunStats

__all__ = ["FrameSource", "Reader"]

log = logging.getLogger("reader")


class FrameSource(Protocol):
    """What the reader decodes from: `Frame`s in presentation order, numbered from 0."""

    num_corrupt_packets: int
    stopped_early_reason: str | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class Reader:
    """Stage: no input; `finish()` yields the source's frames."""

    def __init__(self, source: FrameSource, *, stats: RunStats, max_frames: int | None = None,
                 skip: Callable[[int], bool] | None = None) -> None:
        self.source = source
        self.stats = stats
        self.max_frames = max_frames
        self.skip = skip  # frames already in finished segments (--resume): decoded, counted, not passed on

    def process(self, item: object) -> Iterable[Frame]:
        raise TypeError("the reader is a source: it takes no input")

    def finish(self) -> Iterator[Frame]:
        iterator = iter(self.source)
        count = 0
        while self.max_frames is None or count < self.max_frames:
            try:
                frame = next(iterator)
            except StopIteration:
                self.stats.source_exhausted = True  # every frame of the source was read
                self._report(count)
                return
            count += 1
            self.stats.num_frames_decoded = count
            self.stats.num_corrupt_packets = getattr(self.source, "num_corrupt_packets", 0)
            if self.skip is not None and self.skip(frame.index):
                continue
            yield frame

    def _report(self, count: int) -> None:
        self.stats.num_corrupt_packets = getattr(self.source, "num_corrupt_packets", 0)
        reason = getattr(self.source, "stopped_early_reason", None)
        if reason:
            self.stats.warn(f"source damaged, {reason}: kept the {count} frame(s) decoded before it")

    def close(self, *, complete: bool) -> None:
        try:
            self.source.close()
        except Exception as exc:  # closing must not hide the real failure
            log.debug("closing the source failed: %s", exc)
