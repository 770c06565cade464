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

A video of a constant frame rate whose timestamps skip frames is said once at its end
(`FrameGaps`): a damaged part of a Matroska file is skipped by FFmpeg's demuxer without an error
the decoder sees (seen: 20 of 60 frames gone, silently), and a recorder may have dropped frames.
"""

from __future__ import annotations

import itertools
import logging
from array import array
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Protocol

from core.frame import Frame, Window
from pipeline.stats import RunStats

__all__ = ["FrameGaps", "FrameSource", "Reader"]

log = logging.getLogger("reader")


class FrameSource(Protocol):
    """What the reader decodes from: `Frame`s in presentation order, numbered from 0."""

    num_corrupt_packets: int
    stopped_early_reason: str | None

    def __iter__(self) -> Iterator[Frame]: ...

    def close(self) -> None: ...


class FrameGaps:
    """Where a constant-frame-rate video's timestamps skip frames, from each frame's timestamp in
    presentation order (`add`). A video is taken as constant-rate where 95% of its frame intervals
    are the median one (within a tenth of it: 41 and 42 ms are 24 fps in Matroska's milliseconds);
    a variable frame rate (a phone's, a screen recording's) is never
    judged, its pauses being its own. 8 bytes a frame."""

    REGULAR_SHARE = 0.95
    MIN_FRAMES = 24

    def __init__(self) -> None:
        self._last: int | None = None
        self._steps = array("q")  # interval to the frame before, per frame after the first
        self._pts = array("q")  # the timestamp each interval ends at

    def add(self, pts: int) -> None:
        if self._last is not None and pts > self._last:
            self._steps.append(pts - self._last)
            self._pts.append(pts)
        self._last = pts if self._last is None else max(self._last, pts)

    def gaps(self) -> list[tuple[int, int, int]]:
        """(timestamp before the gap, timestamp after it, frames missing) where the video is
        constant-rate and skips frames; [] otherwise."""
        steps = self._steps
        if len(steps) + 1 < self.MIN_FRAMES:
            return []
        step = sorted(steps)[len(steps) // 2]
        slack = step / 10  # a tick of rounding where ticks are fine (41 and 42 ms); none where a frame is 1-9 ticks
        if sum(1 for d in steps if abs(d - step) <= slack) < self.REGULAR_SHARE * len(steps):
            return []
        return [(pts - d, pts, round(d / step) - 1) for d, pts in zip(steps, self._pts) if round(d / step) >= 2]


class Reader:
    """Stage: no input; `finish()` yields the source's frames."""

    def __init__(self, source: FrameSource, *, stats: RunStats, max_frames: int | None = None,
                 skip: Callable[[int], bool] | None = None, window: tuple[int, int] | None = None,
                 pad_ends: bool = True, time_base=None) -> None:
        self.source = source
        self.time_base = time_base  # of the frames' timestamps: where frames are missing is said in seconds
        self._gaps = FrameGaps()
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
            if self.window is not None and item.frame.neighbour:
                continue
            if self.skip is not None and self.skip(item.index):
                self.stats.num_frames_kept += 1
                continue
            yield item

    def _frames(self) -> Iterator[Frame]:
        iterator = iter(self.source)
        count = 0
        while self.max_frames is None or count < self.max_frames:
            try:
                frame = next(iterator)
            except StopIteration:
                # every frame of the source was read, unless it ended at a picture it could not read
                # (hw.pictures.PictureSource.failure: the frames before it go through first)
                self.stats.source_failure = getattr(self.source, "failure", None)
                self.stats.source_exhausted = self.stats.source_failure is None
                self.stats.last_frame_seconds = getattr(self.source, "last_frame_seconds", None)
                self._report(count)
                return
            if not frame.neighbour:
                count += 1
                self._gaps.add(frame.pts)
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
        gaps = self._gaps.gaps()
        missing = sum(n for _, _, n in gaps)
        # corrupt packets skipped (said already, one line) explain as many missing frames
        if gaps and self.time_base is not None and missing > self.stats.num_corrupt_packets:
            before, after, _ = gaps[0]
            self.stats.warn(
                f"source: the video runs at a constant frame rate but its timestamps skip {missing} frame(s) in "
                f"{len(gaps)} place(s) (first from {float(before * self.time_base):.3f} s to "
                f"{float(after * self.time_base):.3f} s): the file lacks those frames (a damaged part, which FFmpeg "
                "skips, or frames its recorder dropped). The output keeps the source's timestamps: a player shows the "
                "frame before each gap until the next one")

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
