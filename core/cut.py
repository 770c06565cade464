"""--start / --end: part of a video, with its timestamps and audio cut to match.

A cut point is a time measured from the first video frame ("12.5", "1:02:03.5", "2:03")
or a frame number counting decoded frames from 0 ("300f"). The start is included and the
end is not: `--start 10 --end 20` keeps the frames at times 10 <= t < 20, `--start 100f
--end 300f` frames 100 to 299.

`CutSource` wraps any frame source (PyAV or NVDEC). Frames before the start are decoded
and dropped (a frame number is exact only that way); the kept frames are numbered from 0
and moved back in time so that the first one has the source's first timestamp (or 0, where
that is negative). What the cut did is recorded in a `TimeShift`, which the audio copier reads: audio packets that
start before the first kept frame or at/after the first frame past the end are left out,
and the rest are moved back by the same amount as the video. Stream-copied audio cannot
be cut inside a packet, so the audio starts at the first packet at or after the first
kept frame (at most one packet later: about 21 ms for 48 kHz AAC). The packets move by the
shift exactly, in the output's time base where the source's ticks are too coarse to say it
(AVI counts AAC/MP3 time in whole packets: `hw.av_streams._move_back`).

A video whose first frame is before 0 (an MPEG-TS whose 33-bit clock wrapped, unwrapped by
FFmpeg to negative times; an edited MP4) goes through `CutSource` with an empty `Cut()`: nothing
is cut, every frame and every audio packet moves forward together so that the first frame is at
0. MP4 and MOV keep negative times as an edit list that starts at 0, and players then skipped
every frame before it (a 3 s TS that began at -0.82 s played 2.18 s of its 75 frames).
A file whose every stream starts late (the earliest of the video's first frame and the other
streams' starts is > 0: `CutSource._late_start`) moves back by that much, as ffmpeg moves it: an MPEG-TS starts at
1.4 s (ffmpeg's own muxer) or hours in (a broadcast's clock), and MP4 and MKV kept that start as
an empty edit or a gap, a 2 s clip from a TS at 3600 s written as a 3603 s file of one blank hour.
The streams keep their offsets to each other; a cut's first frame lands where it would have.

A temporal model sees each frame with its neighbours (`core.frame.Window`). `context=(before,
after)` has `CutSource` also yield up to `before` frames just before the start and `after` from
the end on, marked `neighbour` (never processed or written themselves): a window at the cut
then holds the video's real neighbours, so the kept frames come out exactly as in a run over
the whole video, and with `--interpolate N` the last kept frame brings the frames made between
it and the next one. Runs over consecutive parts ([a, b) then [b, c)) join into the run over
[a, c), frame for frame.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from fractions import Fraction

from core.errors import InvalidOption
from core.frame import Frame

__all__ = ["Cut", "CutPoint", "CutSource", "TimeShift", "parse_cut_point"]

_HOW = "give seconds (12.5), a time (1:02:03.5) or a frame number (300f)"
_NUMBER = re.compile(r"^\d+(\.\d+)?$")


@dataclass(frozen=True)
class CutPoint:
    """A frame number (`frames`) or a time in seconds from the first frame (`seconds`)."""

    frames: int | None = None
    seconds: Fraction | None = None

    def __post_init__(self) -> None:
        if (self.frames is None) == (self.seconds is None):
            raise ValueError("a CutPoint is either a frame number or a time")

    def __str__(self) -> str:
        if self.frames is not None:
            return f"{self.frames}f"
        text = f"{float(self.seconds):.6f}".rstrip("0").rstrip(".")
        return f"{text}s"

    def reached(self, index: int, seconds: Fraction) -> bool:
        """Whether the frame numbered `index` at `seconds` from the first frame is at or past this point."""
        return index >= self.frames if self.frames is not None else seconds >= self.seconds

    def frame_estimate(self, rate: float) -> int:
        return self.frames if self.frames is not None else math.ceil(float(self.seconds) * rate)


def parse_cut_point(text: str, flag: str) -> CutPoint:
    """'12.5' / '1:02:03.5' / '2:03' -> seconds, '300f' -> frame 300; InvalidOption otherwise."""
    raw = text.strip().lower()
    bad = InvalidOption(f"Invalid {flag} ({text!r}): {_HOW}.")
    if raw.endswith("f"):
        if not raw[:-1].isdigit():
            raise bad
        return CutPoint(frames=int(raw[:-1]))
    fields = raw.split(":")
    if len(fields) > 3 or not all(_NUMBER.match(f) for f in fields):
        raise bad
    if any("." in f for f in fields[:-1]):
        raise bad  # only the seconds may have a fraction
    if len(fields) > 1 and any(Fraction(f) >= 60 for f in fields[1:]):
        raise InvalidOption(f"Invalid {flag} ({text!r}): minutes and seconds after a ':' must be below 60; {_HOW}.")
    seconds = Fraction(0)
    for field in fields:
        seconds = seconds * 60 + Fraction(field)
    return CutPoint(seconds=seconds)


@dataclass(frozen=True)
class Cut:
    """The part of the video a run processes (`--start`, `--end`); either may be None."""

    start: CutPoint | None = None
    end: CutPoint | None = None

    @classmethod
    def from_flags(cls, start: str | None, end: str | None) -> "Cut | None":
        """The cut the flags ask for, checked; None when neither flag was given."""
        if start is None and end is None:
            return None
        cut = cls(start=parse_cut_point(start, "--start") if start is not None else None,
                  end=parse_cut_point(end, "--end") if end is not None else None)
        s, e = cut.start, cut.end
        if e is not None and not (e.frames or e.seconds):
            raise InvalidOption(f"--end {e} is the very first frame: nothing would be processed.")
        if s is not None and e is not None:
            same_unit = (s.frames is None) == (e.frames is None)
            if same_unit and (e.frames or e.seconds or 0) <= (s.frames or s.seconds or 0):
                raise InvalidOption(f"--end ({e}) is not after --start ({s}): nothing would be processed.")
        return cut

    def frame_estimate(self, rate: float, total: int) -> int:
        """Frames in the cut, from the frame rate and the source's estimated count (0: unknown)."""
        first = self.start.frame_estimate(rate) if self.start is not None else 0
        stop = self.end.frame_estimate(rate) if self.end is not None else total
        if total:
            stop = min(stop, total)
        elif self.end is None:
            return 0
        return max(0, stop - first)

    def settings(self) -> dict[str, str | None]:
        return {"start": str(self.start) if self.start else None, "end": str(self.end) if self.end else None}

    def __str__(self) -> str:
        return f"from {self.start or 'the first frame'} to {self.end or 'the end'}"


class TimeShift:
    """What a cut did to the timestamps, learned while the source is read and read by the
    audio copier. Times are in seconds on the source's clock."""

    def __init__(self) -> None:
        self.shift = Fraction(0)  # subtracted from every kept timestamp
        self.first: float | None = None  # the first kept frame's time
        self.end: float | None = None  # the first frame past the cut's end; None: the source's end
        self.planned_end: float | None = None  # a time --end on the source's clock, known from the first frame
        self.cuts_start = False  # --start: the first frame written is not the source's first
        # The video's first frame (seconds on its clock): another file's soundtrack (--audio) starts
        # there, its time 0 is this time on the video's clock (hw.av_streams.StreamCopier)
        self.video_start = Fraction(0)

    def keeps(self, seconds: float) -> bool:
        """Whether an audio/subtitle packet starting at `seconds` lies inside the cut."""
        if self.first is not None and seconds < self.first - 1e-6:
            return False
        return self.end is None or seconds < self.end - 1e-6


class CutSource:
    """A frame source that yields only the frames inside `cut`, numbered from 0 and moved
    back in time, and the `context` neighbours around them (see the module's docstring);
    `shift` records what it did."""

    def __init__(self, source, cut: Cut, shift: TimeShift, *, time_base: Fraction,
                 context: tuple[int, int] = (0, 0), others_start: float | None = None,
                 rebase: bool = False) -> None:
        """`others_start`: the earliest start (seconds) of the streams written beside the video
        (None: only the video counts, as beside another file's soundtrack); `rebase`: a file that
        starts late moves to 0 (False: pictures, which start at 0)."""
        self.source = source
        self.cut = cut
        self.shift = shift
        self.time_base = Fraction(time_base)
        self.context = context
        self.others_start = others_start
        self.rebase = rebase
        self.num_frames_before_start = 0
        self._last_kept_pts: int | None = None
        self._cut_at_pts: int | None = None  # --end: the first frame left out

    @property
    def last_frame_seconds(self) -> Fraction | None:
        """How long the last frame yielded lasts: until the first frame --end leaves out, else as
        long as the source's last frame (its decoder's word; None where it has none)."""
        if self._cut_at_pts is not None and self._last_kept_pts is not None:
            return (self._cut_at_pts - self._last_kept_pts) * self.time_base
        return getattr(self.source, "last_frame_seconds", None)

    @property
    def num_corrupt_packets(self) -> int:
        return getattr(self.source, "num_corrupt_packets", 0)

    @property
    def stopped_early_reason(self) -> str | None:
        return getattr(self.source, "stopped_early_reason", None)

    @property
    def failure(self) -> Exception | None:
        return getattr(self.source, "failure", None)

    def __iter__(self) -> Iterator[Frame]:
        first_pts = None
        moved_by: int | None = None
        kept = 0
        seconds = Fraction(0)
        before, after = self.context
        held: deque[Frame] = deque(maxlen=before)  # the last frames before the start
        frames = iter(self.source)
        for frame in frames:
            if first_pts is None:
                first_pts = frame.pts
                self.shift.video_start = first_pts * self.time_base
                if self.cut.end is not None and self.cut.end.seconds is not None:
                    self.shift.planned_end = float(first_pts * self.time_base + self.cut.end.seconds)
            seconds = (frame.pts - first_pts) * self.time_base
            if self.cut.end is not None and self.cut.end.reached(frame.index, seconds):
                self.shift.end = float(frame.pts * self.time_base)
                self._cut_at_pts = frame.pts
                if kept == 0:
                    raise InvalidOption(f"--end {self.cut.end} comes before --start {self.cut.start}: the video "
                                        f"reaches the end at frame {frame.index} ({float(seconds):.3f} s). Nothing to process.")
                for k, later in zip(range(after), itertools.chain([frame], frames)):
                    yield replace(later, index=kept + k, pts=later.pts - moved_by, neighbour=True)
                return
            if self.cut.start is not None and not self.cut.start.reached(frame.index, seconds):
                self.num_frames_before_start += 1
                if before:
                    held.append(frame)
                continue
            if moved_by is None:  # the first kept frame lands on the source's first timestamp, or 0 if before it
                moved_by = frame.pts - max(first_pts, 0) + self._late_start(first_pts)
                self.shift.shift = moved_by * self.time_base
                if self.cut.start is not None or self.cut.end is not None:  # Cut(): only moved, nothing cut
                    self.shift.first = float(frame.pts * self.time_base)
                for k, earlier in enumerate(held):
                    yield replace(earlier, index=k - len(held), pts=earlier.pts - moved_by, neighbour=True)
                held.clear()
            self._last_kept_pts = frame.pts
            yield frame if moved_by == 0 and frame.index == kept else replace(frame, index=kept, pts=frame.pts - moved_by)
            kept += 1
        if kept == 0 and self.cut.start is not None:
            length = f"{self.num_frames_before_start} frames, {float(seconds):.2f} s from the first to the last"
            raise InvalidOption(f"--start {self.cut.start} is past the end of the video ({length}). Nothing to process.")

    def _late_start(self, first_pts: int) -> int:
        """Ticks every stream moves back for a file that starts late (0: it starts at 0 or before)."""
        if not self.rebase or first_pts <= 0:
            return 0
        ticks = first_pts if self.others_start is None else min(first_pts, round(Fraction(self.others_start) / self.time_base))
        return max(ticks, 0)

    def close(self) -> None:
        self.source.close()
