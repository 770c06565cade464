"""The CPU decoder: a file's video frames in presentation order, through PyAV (FFmpeg).

`PyAVDecoder` yields `Frame`s numbered from 0 with their source timestamps. Planar YUV is
passed through as integer planes (the worker converts to RGB on its device); anything else
goes through swscale to rgb24, or to rgb48 when deeper than 8 bits. What can be decoded is decoded: a corrupt packet is counted,
logged and skipped; timestamps that do not ascend are repaired (`TimestampRepair`); a
stream that changes size or pixel format mid-way is converted to the first frame's; a
stream shorter than its header says is reported (`stopped_early_reason`).

With a `span` (hw.keyframes), it decodes one part of the stream for a decoder running beside
others (pipeline/decoders.py): it seeks to the span's keyframe, keeps only the span's frames,
counts only the span's own packets, and leaves the end-of-stream warnings to its owner
(`end_warnings`), which adds up every span's counts.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from core.errors import NoVideoStream
from core.frame import Frame
from hw.av_source import GRAY_DEPTH, PLANAR_YUV, format_bit_depth, fraction, main_video_stream, open_input
from hw.keyframes import DecodeSpan, span_packets

__all__ = ["PyAVDecoder", "PtsFiller", "TimestampRepair", "end_warnings"]

log = logging.getLogger(__name__)

_TAIL_REACH = 64  # frames: more than a frame-threaded decoder holds with its reordering (`_tail_again`)


def _plane_array(plane, dtype: np.dtype) -> np.ndarray:
    """Copy one plane out of an AVFrame (dropping line padding)."""
    itemsize = np.dtype(dtype).itemsize
    buf = np.frombuffer(plane, dtype=dtype)
    rows = buf.reshape(plane.height, plane.line_size // itemsize)
    return np.ascontiguousarray(rows[:, : plane.width])


class PtsFiller:
    """Frames without a timestamp (raw streams) get the previous one plus one frame duration."""

    def __init__(self, rate: Fraction | None, time_base: Fraction | None) -> None:
        self._step = max(1, round(1 / ((rate or Fraction(25)) * (time_base or Fraction(1, 90000)))))
        self._last: int | None = None

    def fill(self, pts: int | None) -> int:
        if pts is None:
            pts = 0 if self._last is None else self._last + self._step
        self._last = pts
        return pts


class TimestampRepair:
    """Makes presentation timestamps strictly ascending, without touching good ones.

    The decoder returns frames in presentation order, so their timestamps should ascend.
    Some sources break that: H.264 with B-frames in AVI (decode-order timestamps),
    muxers that wrote DTS as PTS, duplicated timestamps at splices. Frames pass through a
    window of `window` frames, and the frame leaving it takes the smallest timestamp in
    the window — for a good source that is its own timestamp (nothing changes); for
    decode-order timestamps it sorts them back into presentation order. Then every
    timestamp is at least the previous one plus one tick, and a missing one is the
    previous plus one frame duration. `num_repaired` counts the frames whose timestamp
    changed (the reader warns once when it is not 0).
    """

    def __init__(self, *, step: int, window: int = 8) -> None:
        if step < 1 or window < 1:
            raise ValueError(f"TimestampRepair needs step >= 1 and window >= 1, got {step}, {window}")
        self.step = step
        self.window = window
        self.num_repaired = 0
        self._held: list[tuple[object, int | None]] = []  # (frame, original pts), FIFO
        self._known: list[int] = []  # min-heap of the held frames' known timestamps
        self._last: int | None = None

    def push(self, frame: object, pts: int | None) -> list[tuple[object, int]]:
        """Add one frame; returns the frames that leave the window, with their timestamps."""
        self._held.append((frame, pts))
        if pts is not None:
            heapq.heappush(self._known, pts)
        out = []
        while len(self._held) > self.window:
            out.append(self._pop())
        return out

    @property
    def num_held(self) -> int:
        return len(self._held)

    def flush(self) -> list[tuple[object, int]]:
        out = []
        while self._held:
            out.append(self._pop())
        return out

    def _pop(self) -> tuple[object, int]:
        frame, original = self._held.pop(0)
        if original is None:
            pts = 0 if self._last is None else self._last + self.step
        else:
            pts = heapq.heappop(self._known)
            if self._last is not None and pts <= self._last:
                pts = self._last + 1
        if original is not None and pts != original:
            self.num_repaired += 1
        self._last = pts
        return frame, pts


def _duration_tag(text: str | None) -> float | None:
    """Seconds from a Matroska DURATION tag ("00:01:02.500000000"), None if absent or unreadable."""
    try:
        hours, minutes, seconds = (text or "").split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError:
        return None


def end_warnings(*, num_repaired: int, num_resized: int, shape: tuple[int, int, str] | None,
                 num_damaged: int) -> list[str]:
    """The lines a decoder says once at the end of the video about what it changed or could not do."""
    lines = []
    if num_repaired:
        lines.append(f"source: {num_repaired} frame timestamp(s) were out of order or repeated; they were made "
                     "ascending (frames kept in presentation order)")
    if num_resized:
        w, h, fmt = shape or (0, 0, "")
        lines.append(f"source: the picture size or format changes mid-stream; {num_resized} frame(s) were "
                     f"converted to the first frame's {w}x{h} {fmt} (bicubic) before the model")
    if num_damaged:
        lines.append(f"source: {num_damaged} damaged frame(s) were decoded as well as they could be")
    return lines


class PyAVDecoder:
    """Decode the first video stream of a file on the CPU, in presentation order.

    Every frame comes out with the first frame's size and pixel format (a stream that
    changes either mid-way is converted to the first, with one warning), a timestamp that
    ascends (`TimestampRepair`, one warning when any was changed), and a corrupt packet is
    counted and skipped (`num_corrupt_packets`). At the end, a stream that held fewer
    frames than its header announced is reported (`warn`).

    `span`: decode only that part of the stream (module docstring), converting to `first_shape`
    (the whole video's first frame) where the span's first frame differs.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0, warn: Callable[[str], None] | None = None,
                 span: DecodeSpan | None = None, first_shape: tuple[int, int, str] | None = None) -> None:
        self.path = Path(path)
        self.span = span
        self._warn = warn or (lambda message: log.warning("%s", message))
        self._container = open_input(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise NoVideoStream(f"Source {str(self.path)!r} has no video stream.")
        self._stream = main_video_stream(self._container)
        self._stream.thread_type = "AUTO"
        if threads:
            self._stream.codec_context.thread_count = threads
        self.num_corrupt_packets = 0
        self.num_damaged_frames = 0
        self.num_packets = 0
        self.num_frames_decoded = 0
        self.num_frames_resized = 0
        self.num_frames_from_header = int(self._stream.frames or 0)
        self.stopped_early_reason: str | None = None
        self._shape: tuple[int, int, str] | None = first_shape  # (width, height, pix_fmt) of the first frame
        self._gray_as_yuv: bool | None = None  # monochrome tagged limited range: read as YUV (_planes)
        self._chroma: tuple[tuple, np.ndarray] | None = None  # its neutral chroma plane
        self._last_pts: int | None = None
        # How long the last frame handed on lasts (its packet's duration, as ffmpeg takes it), in seconds.
        # MP4/MOV store decode-time deltas: with B-frames the last frame shown is not the last decoded,
        # and its delta is another frame's (0.32 s for a 0.04 s frame); there the sample table's last
        # entry, the last packet's, is the one its muxer gave the last frame.
        self.last_frame_seconds: Fraction | None = None
        self._deltas_only = self._container.format.name.split(",")[0] == "mov"
        self._last_packet_duration: int | None = None
        self._handed_pts: int | None = None  # the largest decoded timestamp handed on (`_tail_again`)
        # The last frames' decoded timestamps and the last decode times taken (AVI), for `_tail_again`:
        # an AVI's made-up timestamps do not ascend in presentation order
        self._recent_pts: deque[int] = deque(maxlen=2 * _TAIL_REACH)
        self._recent_dts: deque[int] = deque(maxlen=_TAIL_REACH)
        self._spacing: deque[int] = deque(maxlen=32)  # the last frames' timestamp steps
        rate = fraction(self._stream.average_rate) or fraction(self._stream.guessed_rate)
        filler = PtsFiller(rate, fraction(self._stream.time_base))
        self._repair = TimestampRepair(step=filler._step)
        # AVI stores when each frame is decoded, not when it is shown: FFmpeg makes up a PTS (the
        # DTS plus its guess of the reordering delay, one frame), so with B-frames the first frame
        # came out one frame late (0.04 s at 25 fps), after the audio and ffmpeg's first frame at 0.
        # There the frames, in presentation order, take the decode timestamps in order.
        self._decode_times: list[int] | None = [] if self._container.format.name.split(",")[0] == "avi" else None

    def __iter__(self) -> Iterator[Frame]:
        # Planes are copied out of each FFmpeg frame at once, so the timestamp window holds our
        # copies, never FFmpeg's frame buffers (holding those made the decoder allocate anew).
        span = self.span
        for frame in self._decoded_frames():
            if span is not None and not span.keeps(frame.pts):
                continue  # another span's frame (a leading picture next to a cut): decoded there too
            if getattr(frame, "is_corrupt", False):
                self.num_damaged_frames += 1
            pts = heapq.heappop(self._decode_times) if self._decode_times else frame.pts
            for ready, pts in self._repair.push((*self._planes(frame), frame.duration), pts):
                yield self._numbered(ready, pts)
        for ready, pts in self._repair.flush():
            if self._deltas_only and not self._repair.num_held:  # the last frame (see __init__)
                ready = (*ready[:3], self._last_packet_duration or ready[3])
            yield self._numbered(ready, pts)
        self._report_end()

    def _decoded_frames(self) -> Iterator:
        import av

        span = self.span
        if span is None:
            packets = ((0, packet) for packet in self._container.demux(self._stream))
        else:  # the span's packets, then a flush (the demuxer's end-of-stream packet does that without a span)
            packets = span_packets(self._container, self._stream, span)
        # A span after an open cut meeting damage decodes again from its pre-roll keyframe (hw.keyframes:
        # the reference buffer as one decoder has it); what was handed on already is not again, and
        # no packet is counted twice.
        may_replay = span is not None and span.preroll_packet is not None
        replaying = False
        counted = -1  # span: the last position counted
        demuxed = handed = 0  # the whole stream's packets and frames (no span): one frame a packet
        while True:
            try:
                position, packet = next(packets)
            except StopIteration:
                if span is not None:
                    yield from self._flush(count=span.end_packet == span.owned_end)
                elif handed < demuxed:  # frames lost at the end (a damaged last packet): decoded again
                    yield from self._tail_again(self._handed_pts)
                return
            except av.error.FFmpegError as exc:
                # A broken container: stop here, keep what was decoded.
                self.stopped_early_reason = f"demuxing stopped: {exc}"
                log.warning("source %s: %s; keeping the frames decoded so far", self.path.name, self.stopped_early_reason)
                yield from self._flush()
                return
            # leading pictures past a cut are counted by the next span; a replayed packet once
            fresh = span is None or position > counted
            owned = fresh and (span is None or span.first_packet <= position < span.owned_end)
            counted = max(counted, position)
            damaged = False
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                if owned:
                    self._corrupt(exc)
                frames, damaged = [], True
            if packet.size and owned and not damaged:
                self.num_packets += 1
            demuxed += bool(packet.size)
            if packet.size and owned:
                self._last_packet_duration = packet.duration
            if self._decode_times is not None and packet.size and packet.dts is not None and not damaged:
                heapq.heappush(self._decode_times, packet.dts)
                self._recent_dts.append(packet.dts)
            for frame in frames:
                if may_replay and getattr(frame, "is_corrupt", False) and span.keeps(frame.pts):
                    damaged = True
                    break
                handed_pts = self._handed_pts
                if replaying and frame.pts is not None and handed_pts is not None and frame.pts <= handed_pts:
                    continue
                if frame.pts is not None:
                    self._handed_pts = frame.pts if handed_pts is None else max(handed_pts, frame.pts)
                    self._recent_pts.append(frame.pts)
                handed += 1
                yield frame
            if damaged and may_replay:
                may_replay, replaying = False, True
                log.debug("source %s: span #%d is damaged after an open cut; decoding it again from packet %d",
                          self.path.name, span.index, span.preroll_packet)
                self._stream.codec_context.flush_buffers()
                packets = span_packets(self._container, self._stream, span, preroll=True)

    def _flush(self, *, count: bool = True) -> Iterator:
        import av

        try:
            frames = self._stream.codec_context.decode(None)
        except av.error.FFmpegError as exc:
            if count:
                self._corrupt(exc)
            frames = self._tail_again(self._handed_pts)
        yield from frames

    def _tail_again(self, after: int | None) -> Iterator:
        """The frames not handed on yet (`after`: the last timestamp handed on), decoded again by a
        decoder of one thread from the keyframe before them. A frame-threaded decoder meeting a
        damaged last packet (a file cut short: a download that stopped) drops the frames it still
        held, raising at the flush or, with more threads, without a word; FFmpeg's own command line
        keeps them (a 480-frame clip cut at 250 kB: 224 frames from ffmpeg, 222 here before). Asked
        where fewer frames came out than packets went in, or where the flush raised; a stream whose
        packets are all frames loses nothing to it but one keyframe interval decoded again.

        A frame was not handed on if its timestamp is not among the last ones handed on, and above
        the least of them: an AVI's timestamps are FFmpeg's made-up ones, which do not ascend in
        presentation order with B-frames (..., 119, 120, 118), so a frame lost at 118 after 119 went
        out was left out. An AVI's frames take the decode times in order (`__init__`): a packet this
        decoder gets a frame from that the first one could not decode gives its decode time too, or
        the last frame kept its made-up time, one frame late."""
        import av

        if after is None:
            return
        handed = set(self._recent_pts)  # the last 2 x _TAIL_REACH; the least of the last _TAIL_REACH
        floor = min(itertools.islice(reversed(self._recent_pts), _TAIL_REACH), default=after)
        taken_dts = set(self._recent_dts)
        try:
            with open_input(self.path) as container:
                stream = container.streams.video[self._stream.index]
                stream.thread_type = "SLICE"
                container.seek(floor, stream=stream, backward=True)
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.error.FFmpegError:
                        continue
                    if (self._decode_times is not None and packet.size and packet.dts is not None
                            and packet.dts not in taken_dts and packet.dts > min(taken_dts, default=-(1 << 62))):
                        heapq.heappush(self._decode_times, packet.dts)
                        taken_dts.add(packet.dts)
                    yield from (f for f in frames if f.pts is not None and f.pts > floor and f.pts not in handed)
        except (av.error.FFmpegError, OSError) as exc:
            log.debug("source %s: decoding the end again failed: %s", self.path.name, exc)

    def _corrupt(self, exc: Exception) -> None:
        self.num_corrupt_packets += 1
        if self.num_corrupt_packets <= 3:
            log.warning("source %s: skipped a corrupt packet (%s)", self.path.name, exc)

    @property
    def num_timestamps_repaired(self) -> int:
        return self._repair.num_repaired

    @property
    def first_shape(self) -> tuple[int, int, str] | None:
        return self._shape

    def _report_end(self) -> None:
        if self.span is None:
            for line in end_warnings(num_repaired=self._repair.num_repaired, num_resized=self.num_frames_resized,
                                     shape=self._shape, num_damaged=self.num_damaged_frames):
                self._warn(line)
        if self.stopped_early_reason is None and (self.span is None or self.span.is_last):
            # a span read to the end of the stream demuxed every packet: the whole stream's count
            demuxed = self.span.num_packets_total if self.span is not None else None
            self.stopped_early_reason = self._truncation(num_packets_demuxed=demuxed)

    def _truncation(self, *, num_packets_demuxed: int | None = None) -> str | None:
        """Why the source looks cut short (fewer frames or less time than its header says), or None."""
        announced = self.num_frames_from_header
        demuxed = self.num_packets + self.num_corrupt_packets if num_packets_demuxed is None else num_packets_demuxed
        # Packets, not frames: an edit list may hide frames on purpose (their packets are still there).
        if announced and demuxed < announced:
            return (f"the stream ended after {demuxed - self.num_corrupt_packets} of the {announced} frames its "
                    "header announces (the file is likely truncated)")
        if self._last_pts is None or not self._stream.time_base:
            return None
        # One frame's time: the last frames' own spacing where known, not the container's frame rate,
        # which may be wrong (a Matroska remux said 2400 fps for 24: a whole file reported truncated)
        ticks = self._step_ticks()
        step = ticks * self._stream.time_base
        end = float((self._last_pts + ticks) * self._stream.time_base)
        start = float((self._stream.start_time or 0) * self._stream.time_base)
        tagged = _duration_tag(self._stream.metadata.get("DURATION"))  # Matroska's per-track length
        # The tag first: Matroska has no per-stream duration, so FFmpeg fills a video stream's in
        # from the container's, the longest stream's (a subtitle running past the video).
        if tagged is not None:
            announced_end, slack = start + tagged, 2 * float(step)
        elif self._stream.duration:
            announced_end, slack = start + float(self._stream.duration * self._stream.time_base), 2 * float(step)
        elif self._container.duration and not self._container.streams.subtitles:
            # The container's: the longest stream's (audio may run a little longer; subtitles
            # often run seconds past the video, so with them it says nothing about the video).
            announced_end, slack = self._container.duration / 1_000_000, max(3 * float(step), 0.25)
        else:
            return None
        if announced_end - end > slack:
            return (f"the video ends at {end:.2f} s, but the file announces {announced_end:.2f} s "
                    "(the file is likely truncated)")
        return None

    def _normalized(self, frame):
        shape = (frame.width, frame.height, frame.format.name)
        if self._shape is None:
            self._shape = shape
        if shape == self._shape:
            return frame
        self.num_frames_resized += 1
        width, height, fmt = self._shape
        return frame.reformat(width=width, height=height, format=fmt, interpolation="BICUBIC")

    def _planes(self, frame) -> tuple[str, tuple, int]:
        """(fmt, planes, bit_depth) copied out of a decoded frame, at the first frame's size."""
        frame = self._normalized(frame)
        depth = PLANAR_YUV.get(frame.format.name)
        if depth is not None:
            dtype = np.uint8 if depth == 8 else np.uint16
            return "yuv", tuple(_plane_array(frame.planes[i], dtype) for i in range(3)), depth
        gray = GRAY_DEPTH.get(frame.format.name)
        if gray is not None and self._gray_as_yuv is None:  # decided once: a batch holds one format
            self._gray_as_yuv = frame.color_range == 1  # tagged limited range (MPEG)
        if gray is not None and self._gray_as_yuv:
            # Limited-range monochrome (HEVC/AV1 4:0:0, FFV1 gray tagged tv): the luma plane as YUV
            # with neutral chroma, so the range tag is honoured. FFmpeg's conversion to RGB takes
            # gray as full range whatever the tag: black 16 came out 30, white 235 came out 218.
            # Untagged gray stays full range, as FFmpeg reads it.
            luma = _plane_array(frame.planes[0], np.uint8 if gray == 8 else np.uint16)
            return "yuv", (luma, *self._neutral_chroma(luma.shape, gray, luma.dtype)), gray
        if format_bit_depth(frame.format.name) > 8:  # gbrp10, gray12, rgb48...: not rounded to 8 bits
            return "rgb48", (frame.to_ndarray(format="rgb48le"),), 16
        return "rgb24", (frame.to_ndarray(format="rgb24"),), 8

    def _neutral_chroma(self, shape: tuple[int, int], depth: int, dtype) -> tuple[np.ndarray, np.ndarray]:
        """Cb and Cr planes of no colour (4:2:0, the code 2^(depth-1)) for a gray plane of `shape`:
        one array, made once, read by every frame's conversion."""
        key = (shape, depth)
        if self._chroma is None or self._chroma[0] != key:
            plane = np.full(((shape[0] + 1) // 2, (shape[1] + 1) // 2), 1 << (depth - 1), dtype)
            plane.flags.writeable = False
            self._chroma = (key, plane)
        return self._chroma[1], self._chroma[1]

    def _step_ticks(self) -> int:
        """One frame's time, in ticks: the last frames' own spacing (the median step) where known,
        else the step the container's frame rate gives."""
        return sorted(self._spacing)[len(self._spacing) // 2] if self._spacing else self._repair.step

    def _numbered(self, data: tuple[str, tuple, int, int | None], pts: int) -> Frame:
        fmt, planes, depth, duration = data
        index = self.num_frames_decoded
        self.num_frames_decoded += 1
        if self._last_pts is not None and pts > self._last_pts:
            self._spacing.append(pts - self._last_pts)
        self._last_pts = pts
        if self._decode_times is not None:  # AVI: a packet lasts one tick of its index (1/600 s for a 1/24 s frame)
            duration = self._step_ticks()
        time_base = self._stream.time_base
        self.last_frame_seconds = duration * Fraction(time_base) if duration and duration > 0 and time_base else None
        return Frame(index=index, pts=pts, fmt=fmt, planes=planes, bit_depth=depth)

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "PyAVDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


