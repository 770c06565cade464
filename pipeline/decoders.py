"""Several decoders on consecutive parts of one video, so that decoding is never the wall.

`SplitSource` is a `FrameSource` (pipeline/reader.py): the video is cut at keyframes into
consecutive spans (hw/keyframes.py says how a cut is made exact), a pool of decoder threads
(`reader-dec0`, `reader-dec1`, ...) decodes the spans in order, each span with a decoder of its
own (PyAV, or an NVDEC session), and the reader takes the frames span after span, numbered
afresh from 0: the same frames, indices and timestamps as one decoder gives.

Why many spans and not one per decoder: the reader takes span k's frames before span k+1's,
so a decoder that ran ahead holds its frames until the reader gets there. With one span per
decoder, each would have to hold nearly its whole part (unbounded on a long video) for the
decoders to work at once; with short spans, K decoders stay busy while holding about K spans.

The buffer between the decoder threads and the reader, and its invariant: a decoder starts span
j only when the frames of spans current..j (current: the span the reader takes from) add up to
at most `max_frames_ahead`, or j is the current span; and the current span's decoder waits
while it holds `max_frames_ahead` frames (a span is as long as its GOPs: one of thousands of
frames would otherwise be held whole). A span holds at most its own frames, so the frames held
are at most `max_frames_ahead`. The reader never waits on a span a decoder could not start: the
current span is always admitted, and holds a frame whenever its decoder waits.

`plan_decoders` decides how many decoders and which spans (a pure function: the scan, the cores
and the GPU are passed in); `pipeline/plan.py` calls it, `pipeline/build.py` makes the source.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

from core.frame import Frame
from hw.av_decode import end_warnings
from hw.keyframes import DecodeSpan, PacketScan, cut_spans

__all__ = ["DecodePlan", "SplitSource", "choose_decoders", "plan_decoders", "MIN_SPAN_FRAMES", "DECODE_BUFFER_BYTES",
           "MAX_AUTO_NVDEC_SESSIONS"]

log = logging.getLogger("reader")

# A span is at least this many frames (cut at the first keyframe past it): a span costs opening
# a decoder and seeking (a few ms with PyAV; creating an NVDEC session), paid back over its frames.
MIN_SPAN_FRAMES = 48
# Frames the decoders may hold ahead of the reader, in bytes (and at most a quarter of the
# memory available). 2 GiB is ~680 decoded 1080p 4:2:0 frames: 8 spans of ~85 frames.
DECODE_BUFFER_BYTES = 2 << 30
# --decoders 0 with PyAV: one decoder per 8 cores, at most 4 (see `choose_decoders`).
CORES_PER_PYAV_DECODER = 8
MAX_AUTO_PYAV_DECODERS = 4
# --decoders 0 with NVDEC: one session per engine, at most this many (see `choose_decoders`).
MAX_AUTO_NVDEC_SESSIONS = 4


@dataclass(frozen=True)
class DecodePlan:
    """Several decoders on consecutive spans: which spans, how many decoders at once."""

    spans: tuple[DecodeSpan, ...]
    num_decoders: int
    max_frames_ahead: int  # the buffer's bound (module docstring)
    first_shape: tuple[int, int, str] | None  # the video's first frame (width, height, pix_fmt): every span converts to it
    threads_per_decoder: int  # PyAV: each decoder's FFmpeg threads (0: FFmpeg's choice)
    line: str  # one line for the user: how many decoders, and why

    def __post_init__(self) -> None:
        if len(self.spans) < 2 or not 2 <= self.num_decoders <= len(self.spans):
            raise ValueError(f"DecodePlan needs 2 <= decoders ({self.num_decoders}) <= spans ({len(self.spans)})")


def choose_decoders(*, asked: int, use_nvdec: bool, num_cores: int, num_frames: int,
                    nvdec_engines: int | None) -> tuple[int, str]:
    """(decoders wanted, why): `--decoders N` as given, or for 0 (auto):

    - NVDEC: one session per NVDEC engine of the GPU (hw.nv_probe.NVDEC_ENGINES), at most 4;
      one where the engine count is not known. On an H100 (7 engines), 1080p H.264, with the
      sessions kept between parts and the caps query asked once: decoding alone 542 fps with
      one session, 932 with 2, 1,377 with 4, 1,568 with 7; end to end (bicubic x1, no output)
      4 sessions were the fastest, 2,131 fps steady against 1,317 with 7 and 645 with one
      (benchmarks/RESULTS.md, 2026-12-05). Before the sessions were kept, a new session per part
      and a caps query per part (~0.2 s each) made several sessions slower than one.
    - PyAV: one decoder per 8 cores, at most 4 (so 1 below 16 cores). One PyAV decoder is
      already multi-threaded, but FFmpeg gives one decoder at most 16 frame threads, frame
      threads scale less than linearly (each adds a frame of delay and a hand-over), and the
      per-frame work in Python (demuxing, copying the planes out) runs in one thread: on the
      H100 host (16 cores) one decoder made 1,219 fps at 1080p, right at issue 12's 1,200 fps
      end-to-end target. Below 16 cores a second decoder only splits the same cores.
    - Either way one decoder for a video shorter than two spans.
    """
    if asked:
        return asked, "--decoders"
    if 0 < num_frames < 2 * MIN_SPAN_FRAMES:
        return 1, f"a short video ({num_frames} frames)"
    if use_nvdec:
        if not nvdec_engines:
            return 1, "auto: one NVDEC session (this GPU's NVDEC engines are not known here; --decoders N asks for more)"
        wanted = min(nvdec_engines, MAX_AUTO_NVDEC_SESSIONS)
        if wanted < 2:
            return 1, f"auto: one NVDEC session (this GPU has {nvdec_engines} NVDEC engine)"
        return wanted, f"auto: this GPU has {nvdec_engines} NVDEC engines, one session each, at most {MAX_AUTO_NVDEC_SESSIONS}"
    wanted = min(MAX_AUTO_PYAV_DECODERS, num_cores // CORES_PER_PYAV_DECODER)
    if wanted < 2:
        return 1, f"auto: {num_cores} cores, one multi-threaded PyAV decoder"
    return wanted, f"auto: {num_cores} cores, one PyAV decoder per {CORES_PER_PYAV_DECODER}"


def plan_decoders(scan: PacketScan | Callable[[], PacketScan], *, wanted: int, why: str, use_nvdec: bool,
                  frame_bytes: int, memory_bytes: int, num_cores: int) -> tuple[DecodePlan | None, str]:
    """The spans and decoders for `wanted` decoders (`choose_decoders`), or (None, why one decoder).

    `scan` may be a callable: the demux pass runs only when more than one decoder is wanted.
    NVDEC spans start at clean cuts only (hw/keyframes.py)."""
    if wanted < 2:
        return None, why
    if callable(scan):
        scan = scan()
    reason = scan.why_not()
    if reason is not None:
        return None, f"the video cannot be cut exactly: {reason}"
    budget_bytes = min(DECODE_BUFFER_BYTES, memory_bytes // 4)
    max_ahead = budget_bytes // max(1, frame_bytes)
    if max_ahead < 2 * MIN_SPAN_FRAMES:  # not two parts' frames: the decoders could not work at once
        where = "on the GPU" if use_nvdec else "in memory"
        return None, (f"two parts of {MIN_SPAN_FRAMES}+ frames of {frame_bytes / 2**20:.0f} MiB do not fit the "
                      f"{budget_bytes / 2**20:.0f} MiB kept for frames decoded ahead {where}")
    # Spans short enough that wanted + 1 of them fit the buffer, and that the video gives each
    # decoder about 4 (the last spans then end close together), but never below MIN_SPAN_FRAMES.
    span_frames = max(MIN_SPAN_FRAMES, min(max_ahead // (wanted + 1), scan.num_packets // (4 * wanted)))
    spans = cut_spans(scan, span_frames=span_frames, clean=use_nvdec)
    if len(spans) < 2:
        kind = "clean keyframes (no leading pictures: NVDEC needs them)" if use_nvdec else "keyframes"
        return None, f"no {kind} at least {span_frames} frames apart to cut at"
    num = min(wanted, len(spans))
    kind = "NVDEC sessions" if use_nvdec else "PyAV decoders"
    line = (f"decoders: {num} {kind} at once on {len(spans)} consecutive parts of the video cut at keyframes "
            f"({why}{f'; only {len(spans)} parts' if num < wanted else ''})")
    threads = 0 if use_nvdec else max(1, num_cores // num)
    return DecodePlan(spans=spans, num_decoders=num, max_frames_ahead=max_ahead, first_shape=scan.first_shape,
                      threads_per_decoder=threads, line=line), line


@dataclass(eq=False)
class _Part:
    """One span's decoding: its frames (until the reader takes them) and how it ended."""

    span: DecodeSpan
    frames: deque = field(default_factory=deque)
    done: bool = False
    error: BaseException | None = None
    stopped_early_reason: str | None = None
    counts: dict[str, int] = field(default_factory=dict)
    last_frame_seconds: Fraction | None = None  # how long its last frame lasts (its decoder's word)


# What each span's decoder counted; added up at the end (a decoder without a count has 0).
_COUNTS = ("num_corrupt_packets", "num_damaged_frames", "num_frames_resized", "num_timestamps_repaired")


class SplitSource:
    """FrameSource: frames of consecutive spans, decoded by a pool of decoder threads (module
    docstring), renumbered from 0 in order. `open_span(span)` makes a span's decoder (any
    iterable of `Frame`s with `close()`); the first is made here, so a decoder that cannot be
    made fails the build, not the run. `on_close` releases what the spans' decoders share (NVDEC
    sessions) once the source is closed."""

    def __init__(self, spans: tuple[DecodeSpan, ...], open_span: Callable[[DecodeSpan], Any], *,
                 num_decoders: int, max_frames_ahead: int, warn: Callable[[str], None],
                 first_shape: tuple[int, int, str] | None = None, on_close: Callable[[], None] | None = None) -> None:
        if not spans or num_decoders < 1 or max_frames_ahead < 1:
            raise ValueError(f"SplitSource needs spans, decoders and room for a frame, got {len(spans)}, "
                             f"{num_decoders} and {max_frames_ahead}")
        self._parts = [_Part(span) for span in spans]
        self._open_span = open_span
        self._on_close = on_close
        self._num_decoders = min(num_decoders, len(spans))
        self._warn = warn
        self._first_shape = first_shape
        # frames of spans 0..j-1: the admission rule adds up spans current..j in O(1)
        self._frames_before = [0]
        for span in spans:
            self._frames_before.append(self._frames_before[-1] + span.num_frames)
        self._max_ahead = max_frames_ahead
        # One lock, three conditions: the reader waits for frames, the decoder threads for admission
        # and (the current span's) for room.
        self._lock = threading.Lock()
        self._has_frames = threading.Condition(self._lock)
        self._admission = threading.Condition(self._lock)
        self._has_room = threading.Condition(self._lock)
        self._num_corrupt_read = 0  # corrupt packets of the spans the reader is past
        self._current = 0  # the span the reader takes from
        self._next = 0  # the next span a decoder thread starts
        self._stop = False
        self._threads: list[threading.Thread] = []
        self._opened: dict[int, Any] = {0: open_span(spans[0])}
        self.stopped_early_reason: str | None = None
        self.num_timestamps_repaired = 0  # made ascending across spans (never, for a video cut exactly)

    @property
    def num_corrupt_packets(self) -> int:
        """Corrupt packets of the spans read so far (the current one's once it is decoded)."""
        part = self._parts[self._current]
        return self._num_corrupt_read + (part.counts.get("num_corrupt_packets", 0) if part.done else 0)

    @property
    def last_frame_seconds(self) -> Fraction | None:
        """How long the video's last frame lasts, as the last span's decoder says once it is done."""
        last = self._parts[-1]
        return last.last_frame_seconds if last.done and last.error is None else None

    @property
    def num_spans(self) -> int:
        return len(self._parts)

    def _admits(self, j: int) -> bool:
        ahead = self._frames_before[j + 1] - self._frames_before[self._current]
        return j <= self._current or ahead <= self._max_ahead

    def _decode(self) -> None:
        """A decoder thread: the next admitted span, then the next, until none is left or stop."""
        while True:
            with self._lock:
                while not self._stop and self._next < len(self._parts) and not self._admits(self._next):
                    self._admission.wait()
                if self._stop or self._next >= len(self._parts):
                    return
                j = self._next
                self._next += 1
                decoder = self._opened.pop(j, None)
            self._decode_part(j, decoder)

    def _decode_part(self, j: int, decoder: Any) -> None:
        part = self._parts[j]
        try:
            if decoder is None:
                decoder = self._open_span(part.span)
            for frame in decoder:
                with self._lock:
                    while not self._stop and j == self._current and len(part.frames) >= self._max_ahead:
                        self._has_room.wait()
                    if self._stop:
                        break
                    part.frames.append(frame)
                    self._has_frames.notify()
        except BaseException as exc:  # handed to the reader when it gets to this span
            part.error = exc
        finally:
            if decoder is not None:
                part.counts = {name: int(getattr(decoder, name, 0) or 0) for name in _COUNTS}
                part.stopped_early_reason = getattr(decoder, "stopped_early_reason", None)
                part.last_frame_seconds = getattr(decoder, "last_frame_seconds", None)
                if self._first_shape is None and j == 0:
                    self._first_shape = getattr(decoder, "first_shape", None)
                try:
                    decoder.close()
                except Exception as exc:  # noqa: BLE001 - closing must not hide how the span ended
                    log.debug("closing the decoder of span %d failed: %s", j, exc)
            with self._lock:
                part.done = True
                self._has_frames.notify()

    def _start(self) -> None:
        for k in range(self._num_decoders):
            thread = threading.Thread(target=self._decode, name=f"reader-dec{k}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def __iter__(self) -> Iterator[Frame]:
        if self._threads or self._stop:
            raise RuntimeError("SplitSource can be read once")
        self._start()
        index, last_pts = 0, None
        for j, part in enumerate(self._parts):
            with self._lock:
                if j:
                    self._num_corrupt_read += self._parts[j - 1].counts.get("num_corrupt_packets", 0)
                self._current = j
                self._admission.notify_all()  # the window moved
            while True:
                with self._lock:
                    while not part.frames and not part.done and not self._stop:
                        self._has_frames.wait()
                    if self._stop:  # closed while read (from another thread): the reader is stopping
                        return
                    if not part.frames:
                        break
                    frame = part.frames.popleft()
                    self._has_room.notify()
                pts = frame.pts
                if last_pts is not None and pts <= last_pts:  # a guard: a video cut exactly never gets here
                    pts = last_pts + 1
                    self.num_timestamps_repaired += 1
                last_pts = pts
                yield replace(frame, index=index, pts=pts)
                index += 1
            if part.error is not None:
                raise part.error
            if part.stopped_early_reason:  # one decoder would have stopped here too
                self.stopped_early_reason = part.stopped_early_reason
                break
        self._report_end()

    def _report_end(self) -> None:
        done = [p for p in self._parts if p.done]
        total = {name: sum(p.counts.get(name, 0) for p in done) for name in _COUNTS}
        for line in end_warnings(num_repaired=total["num_timestamps_repaired"] + self.num_timestamps_repaired,
                                 num_resized=total["num_frames_resized"], shape=self._first_shape,
                                 num_damaged=total["num_damaged_frames"]):
            self._warn(line)

    def close(self) -> None:
        """Stop the decoder threads, wait for them, close every decoder; safe to call twice."""
        with self._lock:
            self._stop = True
            self._admission.notify_all()
            self._has_frames.notify_all()
            self._has_room.notify_all()
        for thread in self._threads:
            thread.join()
        for decoder in self._opened.values():
            try:
                decoder.close()
            except Exception as exc:  # noqa: BLE001
                log.debug("closing a decoder failed: %s", exc)
        self._opened.clear()
        for part in self._parts:
            part.frames.clear()
        if self._on_close is not None:  # e.g. NVDEC sessions kept between spans
            self._on_close()
            self._on_close = None

    def __repr__(self) -> str:
        return f"SplitSource({len(self._parts)} spans, {self._num_decoders} decoders, {self._max_ahead} frames ahead)"
