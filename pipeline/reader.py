"""Reader stage: the source's frames, numbered, counted, cut at --max-frames.

A source stage (no inbox): `finish()` yields the decoder's `Frame`s in presentation order
(the PyAV decoder on the CPU, NVDEC on a GPU) until the source ends or `max_frames` is
reached, and keeps the run's decode figures (`num_frames_decoded`, corrupt packets,
whether the source was read to its end). A source that stopped early is said once. With
`--resume`, frames of finished segments are decoded (the frame index is exact only that
way) but not passed on.

For a temporal model the reader hands out `Window`s instead (`window=(before, after)`: the
frames a model needs around each one): built from every decoded frame, so a window next to a
finished segment still holds its neighbour, and each frame's window is passed on exactly
once. Restoration windows repeat the first/last frame at the ends of the video; an
interpolation window (0, 1) of the last frame holds that frame alone. The ends of a part of the
video are not its ends: --start/--end lend the windows the frames around the part
(`core.cut.CutSource`'s `context`), and so does --max-frames the frames after it, marked
`neighbour`: they stand in windows, and no window of theirs is passed on.
"""

from __future__ import annotations

import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Protocol

from core.frame import Frame, Window
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
                 skip: Callable[[int], bool] | None = None, window: tuple[int, int] | None = None,
                 pad_ends: bool = True) -> None:
        self.source = source
        self.window = window  # (frames before, frames after) each frame for a temporal model; None: frames alone
        self.pad_ends = pad_ends
        self.stats = stats
        self.max_frames = max_frames
        self.skip = skip  # frames already in finished segments (--resume): decoded, counted, not passed on

    def process(self, item: object) -> Iterable[Frame]:
        raise TypeError("the reader is a source: it takes no input")

    def finish(self) -> Iterator[Frame | Window]:
        frames = self._frames()
        items = frames if self.window is None else windows(frames, *self.window, pad_ends=self.pad_ends)
        for item in items:
            if (self.window is not None and item.frame.neighbour) or (self.skip is not None and self.skip(item.index)):
                continue
            yield item

    def _frames(self) -> Iterator[Frame]:
        iterator = iter(self.source)
        count = 0
        while self.max_frames is None or count < self.max_frames:
            try:
                frame = next(iterator)
            except StopIteration:
                self.stats.source_exhausted = True  # every frame of the source was read
                self._report(count)
                return
            if not frame.neighbour:
                count += 1
                self.stats.num_frames_decoded = count
                self.stats.num_corrupt_packets = getattr(self.source, "num_corrupt_packets", 0)
            yield frame
        # --max-frames: the frames after the last one, for its window (a neighbour from the source
        # already is one); the video may end here
        for frame in itertools.islice(iterator, self.window[1] if self.window is not None else 0):
            yield replace(frame, neighbour=True)

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


def windows(frames: Iterable[Frame], before: int, after: int, *, pad_ends: bool = True) -> Iterator[Window]:
    """Each frame's `Window` of `before` frames before it and `after` after it, in order, each
    window as soon as its last frame is decoded. `pad_ends`: repeat the first/last frame where
    the video has none (restoration); else the window is cut short (interpolation)."""
    held: deque[Frame] = deque(maxlen=before + after + 1)
    pending = 0  # frames held whose window is not out yet
    for frame in frames:
        held.append(frame)
        pending += 1
        if pending > after:  # the frame `after` back now has every neighbour it needs
            yield _window(held, len(held) - 1 - after, before, after, pad_ends)
            pending -= 1
    while pending > 0:  # the last frames: their later neighbours never come
        yield _window(held, len(held) - pending, before, after, pad_ends)
        pending -= 1


def _window(held: deque[Frame], pos: int, before: int, after: int, pad_ends: bool) -> Window:
    me = held[pos]
    lo, hi = max(0, pos - before), min(len(held), pos + after + 1)
    frames = list(held)[lo:hi]
    center = pos - lo
    if pad_ends:  # `held` lacks frames before `me` only at the start of the video
        missing_before = before - center
        frames = [frames[0]] * missing_before + frames + [frames[-1]] * (before + after + 1 - missing_before - len(frames))
        center = before
    return Window(index=me.index, pts=me.pts, frames=tuple(frames), center=center)
