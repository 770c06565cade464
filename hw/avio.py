"""CPU codecs and muxing through PyAV (FFmpeg): probe, decode, encode, copy audio.

- `probe_source(path)` opens a file and describes its video stream (`SourceInfo`), or
  raises one of the user-facing errors (missing, a directory, not a video, no video).
- `PyAVDecoder` yields `DecodedFrame`s in presentation order with their source PTS.
  Planar YUV is passed through as integer planes (the worker converts to RGB on its
  device); anything else goes through swscale to rgb24. A corrupt packet is counted,
  logged and skipped, and decoding goes on: what can be decoded is decoded.
- `PyAVWriter` encodes yuv420p planes (never rgb24: CPU colour conversion is the
  bottleneck we avoid) with libx264/libx265/libsvtav1, keeps the source timestamps
  (VFR stays VFR), carries the colour tags, and copies audio and subtitle packets from
  the source, re-encoding audio only where the container cannot hold its codec.
  `close()` always leaves a playable file holding every frame written so far.
"""

from __future__ import annotations

import errno
import heapq
import io
import logging
import os
import stat
import struct
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from core.errors import InvalidOption, InvalidSource, NoVideoStream, OutputNotWritable, SourceNotFound
from core.files import FreeSpaceGuard, describe_file_kind, disk_full_error, ffmpeg_path
from hw.color import ColorInfo, color_info_from_tags

__all__ = [
    "SourceInfo",
    "DecodedFrame",
    "probe_source",
    "PyAVDecoder",
    "PyAVWriter",
    "ENCODERS",
    "StreamCopier",
    "open_output",
    "add_video_stream",
    "PtsFiller",
    "TimestampRepair",
]

log = logging.getLogger(__name__)

Codec = Literal["h264", "hevc", "av1"]
ENCODERS: dict[str, str] = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}

# Planar YUV formats passed through as integer planes: name -> bit depth.
_PLANAR_YUV: dict[str, int] = {
    "yuv420p": 8, "yuvj420p": 8, "yuv422p": 8, "yuvj422p": 8, "yuv444p": 8, "yuvj444p": 8,
    "yuv420p10le": 10, "yuv422p10le": 10, "yuv444p10le": 10,
    "yuv420p12le": 12, "yuv422p12le": 12, "yuv444p12le": 12,
}


@dataclass(frozen=True)
class SourceInfo:
    """What the reader learned about the source's video stream before decoding."""

    path: Path
    width: int
    height: int
    codec: str
    pix_fmt: str
    bit_depth: int
    chroma_format: str  # "420", "422", "444", or "" for non-YUV
    time_base: Fraction
    average_rate: Fraction | None
    num_frames_from_header: int  # 0 when the container does not say
    duration_seconds: float | None
    color: ColorInfo
    num_audio_streams: int = 0
    num_subtitle_streams: int = 0
    sample_aspect_ratio: Fraction | None = None  # None: square pixels / unspecified
    display_matrix: tuple[int, ...] | None = None  # 9 ints (FFmpeg AV_PKT_DATA_DISPLAYMATRIX), None: none
    rotation: int = 0  # degrees counter-clockwise a player applies (from display_matrix)
    interlaced: bool = False  # the first frame is flagged interlaced

    def __repr__(self) -> str:
        return (
            f"SourceInfo({self.path.name!r}, {self.width}x{self.height} {self.codec} {self.pix_fmt}, "
            f"{float(self.average_rate or 0):.3f} fps, {self.num_frames_from_header} frames, "
            f"{self.num_audio_streams} audio)"
        )


@dataclass(frozen=True)
class DecodedFrame:
    """One decoded picture: planes (Y, U, V integer arrays), one (H, W, 3) rgb24 array, or
    one NV12/P016 device tensor (from NVDEC, `hw.gpu_io`)."""

    pts: int | None
    fmt: Literal["yuv", "rgb24", "nv12"]
    planes: tuple
    bit_depth: int = 8

    def __repr__(self) -> str:
        shapes = ", ".join(str(p.shape) for p in self.planes)
        return f"DecodedFrame(pts={self.pts}, {self.fmt}{self.bit_depth}, [{shapes}])"


def _open_input(path: Path):
    """Open a source for reading: a regular file, never a pipe, device or FFmpeg URL."""
    import av

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise SourceNotFound(f"Source not found: {str(path)!r}. Check the path, or run without --source for the built-in sample.") from None
    except OSError as exc:
        raise InvalidSource(f"Source {str(path)!r} cannot be read: {exc.strerror or exc}.") from None
    if stat.S_ISDIR(mode):
        raise InvalidSource(f"Source {str(path)!r} is a directory, not a video file. Pass one file, e.g. --source {path}/clip.mp4.")
    if not stat.S_ISREG(mode):
        raise InvalidSource(
            f"Source {str(path)!r} is {describe_file_kind(mode)}, not a regular file: framepipe reads the source more "
            "than once (probe, decode, audio copy). Save the stream to a file first and pass that."
        )
    if not os.access(path, os.R_OK):
        raise InvalidSource(f"Source {str(path)!r} cannot be read: permission denied.")
    try:
        return av.open(ffmpeg_path(path), "r")
    except av.error.FFmpegError as exc:
        raise InvalidSource(
            f"Source {str(path)!r} is not a video FFmpeg can read ({exc.strerror or type(exc).__name__}). Is it a video file?"
        ) from exc


def _display_matrix(frame) -> tuple[int, ...] | None:
    """The frame's display matrix side data (9 ints), or None.

    PyAV 18 iterates a frame's side data as `SideData` objects; PyAV 19 made the container a
    mapping that iterates its `Type` keys (seen on the GPU host: 'Type' object has no
    attribute 'type'). Both are read here."""
    side = getattr(frame, "side_data", None) or ()
    for entry in side:
        data = entry if hasattr(entry, "buffer_size") else side[entry]
        kind = getattr(data, "type", entry)
        if getattr(kind, "name", "") == "DISPLAYMATRIX" and data.buffer_size == 36:
            return struct.unpack("<9i", bytes(data))
    return None


def _first_frame(container, stream):
    """Decode the first frame (rotation and interlacing are frame properties); None if none decodes."""
    import av

    try:
        for packet in container.demux(stream):
            for frame in packet.decode():
                return frame
    except (av.error.FFmpegError, ValueError):
        return None
    return None


def probe_source(path: str | os.PathLike) -> SourceInfo:
    """Open `path`, describe its first video stream, and close it again."""
    path = Path(path)
    container = _open_input(path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise NoVideoStream(
                f"Source {str(path)!r} has no video stream (it holds {', '.join(kinds)}). framepipe needs a video."
            )
        stream = container.streams.video[0]
        cc = stream.codec_context
        if not cc.width or not cc.height:
            raise NoVideoStream(f"Source {str(path)!r}: the video stream has no picture size; the file is likely damaged.")
        pix_fmt = cc.format.name if cc.format is not None else ""
        bit_depth = _PLANAR_YUV.get(pix_fmt, 8)
        chroma = ""
        if pix_fmt in _PLANAR_YUV:
            chroma = "444" if "444" in pix_fmt else "422" if "422" in pix_fmt else "420"
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        sar = cc.sample_aspect_ratio
        sar = Fraction(sar) if sar and sar.numerator > 0 and Fraction(sar) != 1 else None
        first = _first_frame(container, stream)
        matrix = _display_matrix(first) if first is not None else None
        return SourceInfo(
            path=path,
            width=cc.width,
            height=cc.height,
            codec=cc.name,
            pix_fmt=pix_fmt,
            bit_depth=bit_depth,
            chroma_format=chroma,
            time_base=stream.time_base or Fraction(1, 90000),
            average_rate=stream.average_rate or stream.guessed_rate,
            num_frames_from_header=int(stream.frames or 0),
            duration_seconds=duration,
            color=color_info_from_tags(
                colorspace=cc.colorspace,
                color_range=cc.color_range,
                color_primaries=cc.color_primaries,
                color_trc=cc.color_trc,
                height=cc.height,
                pix_fmt=pix_fmt,
            ),
            num_audio_streams=len(container.streams.audio),
            num_subtitle_streams=len(container.streams.subtitles),
            sample_aspect_ratio=sar,
            display_matrix=matrix,
            rotation=int(getattr(first, "rotation", 0) or 0) if first is not None else 0,
            interlaced=bool(getattr(first, "interlaced_frame", False)) if first is not None else False,
        )
    finally:
        container.close()


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


class PyAVDecoder:
    """Decode the first video stream of a file on the CPU, in presentation order.

    Every frame comes out with the first frame's size and pixel format (a stream that
    changes either mid-way is converted to the first, with one warning), a timestamp that
    ascends (`TimestampRepair`, one warning when any was changed), and a corrupt packet is
    counted and skipped (`num_corrupt_packets`). At the end, a stream that held fewer
    frames than its header announced is reported (`warn`).
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0, warn: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self._warn = warn or (lambda message: log.warning("%s", message))
        self._container = _open_input(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise NoVideoStream(f"Source {str(self.path)!r} has no video stream.")
        self._stream = self._container.streams.video[0]
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
        self._shape: tuple[int, int, str] | None = None  # (width, height, pix_fmt) of the first frame
        self._last_pts: int | None = None
        rate = self._stream.average_rate or self._stream.guessed_rate
        filler = PtsFiller(rate, self._stream.time_base)
        self._repair = TimestampRepair(step=filler._step)

    def __iter__(self) -> Iterator[DecodedFrame]:
        for frame in self._decoded_frames():
            for ready, pts in self._repair.push(frame, frame.pts):
                yield self._convert(ready, pts)
        for ready, pts in self._repair.flush():
            yield self._convert(ready, pts)
        self._report_end()

    def _decoded_frames(self) -> Iterator:
        import av

        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:
                # A broken container: stop here, keep what was decoded.
                self.stopped_early_reason = f"demuxing stopped: {exc}"
                log.warning("source %s: %s; keeping the frames decoded so far", self.path.name, self.stopped_early_reason)
                yield from self._flush()
                return
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                self._corrupt(exc)
                continue
            if packet.size:
                self.num_packets += 1
            for frame in frames:
                if getattr(frame, "is_corrupt", False):
                    self.num_damaged_frames += 1
                yield frame

    def _flush(self) -> Iterator:
        import av

        try:
            yield from self._stream.codec_context.decode(None)
        except av.error.FFmpegError as exc:
            self._corrupt(exc)

    def _corrupt(self, exc: Exception) -> None:
        self.num_corrupt_packets += 1
        if self.num_corrupt_packets <= 3:
            log.warning("source %s: skipped a corrupt packet (%s)", self.path.name, exc)

    def _report_end(self) -> None:
        if self._repair.num_repaired:
            self._warn(
                f"source: {self._repair.num_repaired} frame timestamp(s) were out of order or repeated; they were made "
                "ascending (frames kept in presentation order)"
            )
        if self.num_frames_resized:
            w, h, fmt = self._shape or (0, 0, "")
            self._warn(
                f"source: the picture size or format changes mid-stream; {self.num_frames_resized} frame(s) were "
                f"converted to the first frame's {w}x{h} {fmt} (bicubic) before the model"
            )
        if self.num_damaged_frames:
            self._warn(f"source: {self.num_damaged_frames} damaged frame(s) were decoded as well as they could be")
        if self.stopped_early_reason is None:
            self.stopped_early_reason = self._truncation()

    def _truncation(self) -> str | None:
        """Why the source looks cut short (fewer frames or less time than its header says), or None."""
        announced = self.num_frames_from_header
        # Packets, not frames: an edit list may hide frames on purpose (their packets are still there).
        if announced and self.num_packets + self.num_corrupt_packets < announced:
            return (f"the stream ended after {self.num_packets} of the {announced} frames its header announces "
                    "(the file is likely truncated)")
        if self._last_pts is None or not self._stream.time_base:
            return None
        step = self._repair.step * self._stream.time_base
        end = float((self._last_pts + self._repair.step) * self._stream.time_base)
        start = float((self._stream.start_time or 0) * self._stream.time_base)
        if self._stream.duration:
            announced_end, slack = start + float(self._stream.duration * self._stream.time_base), 2 * float(step)
        elif self._container.duration:  # the container's: may include audio that runs a little longer
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
            if getattr(frame, "interlaced_frame", False):
                self._warn(
                    "source: the video is interlaced; frames are processed as progressive pictures (fields stay "
                    "woven). For best results deinterlace first, e.g. ffmpeg -i in -vf bwdif out"
                )
        if shape == self._shape:
            return frame
        self.num_frames_resized += 1
        width, height, fmt = self._shape
        return frame.reformat(width=width, height=height, format=fmt, interpolation="BICUBIC")

    def _convert(self, frame, pts: int) -> DecodedFrame:
        frame = self._normalized(frame)
        self.num_frames_decoded += 1
        self._last_pts = pts
        name = frame.format.name
        depth = _PLANAR_YUV.get(name)
        if depth is not None:
            dtype = np.uint8 if depth == 8 else np.uint16
            planes = tuple(_plane_array(frame.planes[i], dtype) for i in range(3))
            return DecodedFrame(pts=pts, fmt="yuv", planes=planes, bit_depth=depth)
        return DecodedFrame(pts=pts, fmt="rgb24", planes=(frame.to_ndarray(format="rgb24"),))

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> "PyAVDecoder":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class _CopiedStream:
    out_stream: object
    reencode: bool = False
    resampler: object = None


_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:160] if text else type(exc).__name__


def copy_problem(fmt: str, source: Path, stream_index: int, *, num_packets: int = 8) -> str | None:
    """Why stream `stream_index` of `source` cannot be stream-copied into a `fmt` file, or None.

    Found by doing it, in memory: header, the first packets and trailer. Asking the muxer
    is not enough: MP4 accepts PCM without a channel layout at the header and refuses it
    at the trailer — after every frame of a long run was processed.
    """
    import av

    try:
        with av.open(ffmpeg_path(source)) as src:
            stream = src.streams[stream_index]
            test = av.open(io.BytesIO(), "w", format=fmt)
            try:
                out_stream = test.add_stream_from_template(stream)
                test.start_encoding()
                muxed = 0
                for packet in src.demux(stream):
                    if packet.size == 0 or (packet.pts is None and packet.dts is None):
                        continue
                    packet.stream = out_stream
                    test.mux(packet)
                    muxed += 1
                    if muxed >= num_packets:
                        break
            finally:
                test.close()
    except (av.error.FFmpegError, ValueError, OSError, TypeError) as exc:
        return f"the {fmt} muxer refuses it: {getattr(exc, 'strerror', None) or _short(exc)}"
    return None


def _audio_layout(cc) -> str:
    """The source's channel layout, or the standard one for its channel count where it has none."""
    layout = cc.layout
    name = getattr(layout, "name", "") or ""
    channels = int(getattr(cc, "channels", 0) or getattr(layout, "nb_channels", 0) or 2)
    if name and not name.endswith("channels") and channels <= 8:
        return name
    return _DEFAULT_LAYOUTS.get(channels, "stereo")


class StreamCopier:
    """Copies a source's audio and subtitle streams into an output container.

    Streams are added to `out` at construction (before its header is written). Each is
    copied bit for bit where a trial copy into the same container format works
    (`copy_problem`); audio that cannot be copied (a codec the container refuses, PCM
    from a camera without a channel layout, ADPCM, WMA, mu-law ...) is re-encoded to AAC
    with the standard layout for its channel count, with one warning; such subtitles are
    left out, with one warning. Packets are demuxed from a second opening of the source
    and muxed by time as the caller writes video (`mux_until(seconds)`);
    `finish(complete=...)` copies the rest (or, for a run that stopped early, only up to
    the last video time).
    """

    def __init__(self, out, source: Path, *, warn: Callable[[str], None]) -> None:
        import av

        self._out = out
        self._warn = warn
        self._src = None
        self._copied: dict[int, _CopiedStream] = {}
        self._pending = None  # next source packet not yet muxed
        self._packets = None
        self.last_video_seconds = 0.0
        self.num_audio_packets = 0
        self.num_subtitle_packets = 0
        try:
            self._src = av.open(ffmpeg_path(source), "r")
        except av.error.FFmpegError as exc:
            warn(f"audio not copied: cannot reopen source ({exc})")
            return
        fmt = out.format.name.split(",")[0]
        suffix = Path(out.name).suffix
        chosen = []
        for stream in list(self._src.streams.audio) + list(self._src.streams.subtitles):
            name = stream.codec_context.name
            problem = copy_problem(fmt, Path(source), stream.index)
            if problem is None:
                self._copied[stream.index] = _CopiedStream(out.add_stream_from_template(stream))
            elif stream.type == "audio":
                try:
                    self._copied[stream.index] = self._reencoder(stream, why=problem)
                except (av.error.FFmpegError, ValueError) as exc:
                    warn(f"audio stream {stream.index} ({name}) can neither be copied into {suffix} ({problem}) nor "
                         f"re-encoded ({_short(exc)}): left out. Try --output with .mkv")
                    continue
            else:
                warn(f"subtitle stream {stream.index} ({name}) cannot be stored in {suffix}: not copied")
                continue
            chosen.append(stream)
        if chosen:
            self._packets = self._src.demux(*chosen)

    def _reencoder(self, stream, *, why: str) -> _CopiedStream:
        import av

        target = "aac"
        cc = stream.codec_context
        layout = _audio_layout(cc)
        source_layout = getattr(cc.layout, "name", "") or "?"
        rate = cc.sample_rate or 48000
        out = self._out.add_stream(target, rate=rate)
        out.codec_context.layout = layout
        fmt = out.codec_context.codec.audio_formats[0].name
        self._warn(
            f"audio stream {stream.index} ({cc.name}, {source_layout}) cannot be copied into "
            f"{Path(self._out.name).suffix} ({why}): re-encoded to {target} ({layout})"
        )
        return _CopiedStream(out, reencode=True, resampler=av.AudioResampler(format=fmt, layout=layout, rate=rate))

    def _next_packet(self):
        import av

        while self._packets is not None:
            try:
                packet = next(self._packets)
            except StopIteration:
                self._packets = None
                return None
            except av.error.FFmpegError as exc:
                log.warning("audio copy stopped at a damaged packet (%s)", exc)
                self._packets = None
                return None
            if packet.size == 0 and not self._copied[packet.stream.index].reencode:
                continue  # the demuxer's flush packet
            if packet.pts is None and packet.dts is None and packet.size:
                continue
            return packet
        return None

    @staticmethod
    def _packet_seconds(packet) -> float:
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None or packet.time_base is None:
            return float("inf")  # flush packets sort last
        return float(ts * packet.time_base)

    def mux_until(self, seconds: float) -> None:
        """Mux every source packet up to `seconds` (interleaving with the video)."""
        while True:
            if self._pending is None:
                self._pending = self._next_packet()
                if self._pending is None:
                    return
            if self._packet_seconds(self._pending) > seconds:
                return
            self._mux(self._pending)
            self._pending = None

    def _mux(self, packet) -> None:
        import av

        copied = self._copied[packet.stream.index]
        if copied.reencode:
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                log.warning("skipped a damaged audio packet (%s)", exc)
                return
            for frame in frames:
                frame.pts = None
                for rf in copied.resampler.resample(frame):
                    for p in copied.out_stream.encode(rf):
                        self._out.mux(p)
                        self.num_audio_packets += 1
            return
        if packet.size == 0:
            return
        is_audio = packet.stream.type == "audio"
        packet.stream = copied.out_stream
        self._out.mux(packet)
        if is_audio:
            self.num_audio_packets += 1
        else:
            self.num_subtitle_packets += 1

    def finish(self, *, complete: bool) -> None:
        """Copy what is left (all of it when complete, else up to the last video time)."""
        self.mux_until(float("inf") if complete else self.last_video_seconds)
        for copied in self._copied.values():
            if copied.reencode:
                if complete:
                    for rf in copied.resampler.resample(None):
                        for p in copied.out_stream.encode(rf):
                            self._out.mux(p)
                for p in copied.out_stream.encode(None):
                    self._out.mux(p)

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


def add_video_stream(out, codec: str, *, width: int, height: int, time_base: Fraction, frame_rate: Fraction | None,
                     color: ColorInfo, sample_aspect_ratio: Fraction | None = None,
                     display_matrix: tuple[int, ...] | None = None):
    """A yuv420p video stream on `out` in the source's time base, with the source's colour
    tags, pixel aspect ratio and display matrix (rotation), so the output plays as the
    source does. HEVC in MP4/MOV is tagged `hvc1` (Apple players refuse `hev1`)."""
    stream = out.add_stream(codec, rate=frame_rate or Fraction(25))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = time_base
    cc = stream.codec_context
    cc.time_base = time_base
    cc.colorspace = color.output_matrix_tag
    cc.color_range = color.output_range_tag
    cc.color_primaries = color.primaries_tag
    cc.color_trc = color.transfer_tag
    if sample_aspect_ratio is not None:
        cc.sample_aspect_ratio = sample_aspect_ratio
    if display_matrix is not None:
        stream.set_display_matrix(list(display_matrix))
    if codec in ("hevc", "libx265", "hevc_nvenc") and out.format.name.split(",")[0] in ("mp4", "mov"):
        cc.codec_tag = "hvc1"
    return stream


def open_output(path: Path):
    """Open `path` for writing with PyAV; OutputNotWritable (one line) when it cannot be."""
    import av

    # Matroska buffers a whole cluster (5 s by default) in memory: a write the disk refuses, and
    # what a killed run loses, would show up only seconds of video later. One second instead.
    options = {"cluster_time_limit": "1000"} if Path(path).suffix.lower() in (".mkv", ".webm") else {}
    try:
        return av.open(ffmpeg_path(path), "w", options=options)
    except (av.error.FFmpegError, OSError) as exc:
        raise OutputNotWritable(f"Cannot write output {str(path)!r}: {getattr(exc, 'strerror', None) or exc}.") from exc


def _open_error(exc: BaseException, *, what: str) -> Exception:
    """A one-line error for a failure to start writing, naming what really went wrong."""
    number = getattr(exc, "errno", None)
    if number in (errno.EACCES, errno.EPERM):
        return OutputNotWritable(f"Cannot write the output: permission denied ({what}).")
    if number in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OutputNotWritable(f"Cannot write the output: no space left on the device ({what}).")
    if number == errno.EROFS:
        return OutputNotWritable(f"Cannot write the output: the file system is read-only ({what}).")
    if number == errno.EIO:
        return OutputNotWritable(f"Cannot write the output: input/output error on the device ({what}).")
    return InvalidOption(f"The output container refused these streams ({_short(exc)}). Try --output with .mkv.")


@dataclass
class WriterTotals:
    num_video_frames: int = 0
    warnings: list[str] = field(default_factory=list)


class PyAVWriter:
    """Encode yuv420p frames to `path` and mux the source's audio/subtitles beside them.

    Video timestamps are the source's (`pts` in `time_base`). Audio and subtitle
    packets are read from the source by a second demuxer and interleaved by time as
    video is written; `close(complete=True)` copies the rest, `close(complete=False)`
    (a run that stopped early) copies only up to the last video frame.

    Writing stops with `DiskFull` at the first write the file system refuses (no space,
    a size limit) and, before that happens, once free space runs below what finishing
    the file needs (`FreeSpaceGuard`): the run then finalizes a playable file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        width: int,
        height: int,
        time_base: Fraction,
        frame_rate: Fraction | None,
        color: ColorInfo,
        codec: Codec = "h264",
        crf: int | None = None,
        preset: str | None = None,
        source_path: str | os.PathLike | None = None,
        copy_audio: bool = True,
        threads: int = 0,
        warn: Callable[[str], None] | None = None,
        sample_aspect_ratio: Fraction | None = None,
        display_matrix: tuple[int, ...] | None = None,
        free_space: FreeSpaceGuard | None = None,
    ) -> None:
        if codec not in ENCODERS:
            raise InvalidOption(f"Invalid --codec {codec!r}: allowed are {', '.join(ENCODERS)}.")
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p output needs even sizes, got {width}x{height}")
        self.path = Path(path)
        self.totals = WriterTotals()
        self._warn_fn = warn
        self._time_base = time_base
        self._frame_seconds = float(1 / frame_rate) if frame_rate else 0.04
        self._closed = False
        self._space = free_space if free_space is not None else FreeSpaceGuard(self.path)
        # Matroska holds a cluster (about a second, see open_output) in memory before writing it.
        self._frames_per_cluster = (int(float(frame_rate or 25)) + 1) if self.path.suffix.lower() == ".mkv" else 0
        self.num_bytes_written = 0
        self.num_packets_written = 0
        self._out = open_output(self.path)
        try:
            self._video = self._add_video(
                codec, width, height, time_base, frame_rate, color, crf, preset, threads,
                sample_aspect_ratio, display_matrix,
            )
            self._copier = (
                StreamCopier(self._out, Path(source_path), warn=self._warn)
                if source_path is not None and copy_audio
                else None
            )
            self._start()
        except BaseException:
            self._out.close()
            raise

    def _start(self) -> None:
        """Open the encoder and write the header now: settings the encoder or the container
        refuse are bad input, reported before any frame is processed, each with its cause."""
        import av

        cc = self._video.codec_context
        try:
            cc.open()
        except av.error.FFmpegError as exc:
            raise InvalidOption(
                f"The {cc.name} encoder refused to start for {cc.width}x{cc.height} yuv420p with these settings "
                f"({_short(exc)}). Try another --codec, --scale, --quality or --preset."
            ) from exc
        try:
            self._out.start_encoding()
        except (av.error.FFmpegError, OSError) as exc:
            raise _open_error(exc, what="writing the file header") from exc

    def _warn(self, message: str) -> None:
        """One line for the user: to the run's warnings if given, else the log."""
        self.totals.warnings.append(message)
        if self._warn_fn is not None:
            self._warn_fn(message)
        else:
            log.warning("%s", message)

    # -- video ------------------------------------------------------------------
    def _add_video(self, codec, width, height, time_base, frame_rate, color, crf, preset, threads,
                   sample_aspect_ratio, display_matrix):
        import av

        encoder = ENCODERS[codec]
        if encoder not in av.codecs_available:
            raise InvalidOption(f"--codec {codec}: this FFmpeg build has no {encoder} encoder.")
        if codec not in self._out.supported_codecs and encoder not in self._out.supported_codecs:
            raise InvalidOption(
                f"--codec {codec} cannot be stored in a {self.path.suffix or 'this'} file. Use .mp4 or .mkv."
            )
        stream = add_video_stream(self._out, encoder, width=width, height=height, time_base=time_base,
                                  frame_rate=frame_rate, color=color, sample_aspect_ratio=sample_aspect_ratio,
                                  display_matrix=display_matrix)
        cc = stream.codec_context
        if threads:
            cc.thread_count = threads
        options: dict[str, str] = {}
        if crf is not None:
            options["crf"] = str(crf)
        if preset is not None:
            options["preset"] = str(preset)
        if encoder == "libx265":
            options["x265-params"] = "log-level=error"
        if encoder == "libsvtav1":
            os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints ~20 info lines to stderr otherwise
        stream.options = options
        return stream

    def write(self, y: np.ndarray, u: np.ndarray, v: np.ndarray, *, pts: int) -> None:
        """Encode one yuv420p picture (uint8 planes) at source timestamp `pts`."""
        import av

        height, width = y.shape
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, data in zip(frame.planes, (y, u, v)):
            if plane.line_size == data.shape[1]:
                plane.update(np.ascontiguousarray(data))  # one copy, no repacking
            else:  # the frame's rows are padded: copy row by row through a view
                rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
                rows[:, : data.shape[1]] = data
        frame.pts = pts
        frame.time_base = self._time_base
        cc = self._video.codec_context
        frame.colorspace = cc.colorspace
        frame.color_range = cc.color_range
        num_frames = self.totals.num_video_frames
        self._space.check(bytes_written=self.num_bytes_written, frames_written=num_frames,
                          frames_pending=num_frames - self.num_packets_written,
                          frames_buffered=self._frames_per_cluster)
        seconds = float(pts * self._time_base)
        try:
            if self._copier is not None:
                self._copier.mux_until(seconds)
                self._copier.last_video_seconds = seconds + self._frame_seconds  # the end of this frame
            self._mux_video(self._video.encode(frame))
        except OSError as exc:
            full = disk_full_error(exc, self.path, frames_written=num_frames)
            if full is not None:
                raise full from exc
            raise
        self.totals.num_video_frames += 1

    def _mux_video(self, packets) -> None:
        for packet in packets:
            self.num_bytes_written += packet.size
            self.num_packets_written += 1
            self._out.mux(packet)

    # -- end ---------------------------------------------------------------------
    def close(self, *, complete: bool = True) -> None:
        """Flush the encoder, copy the remaining audio, and finalize the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mux_video(self._video.encode(None))
            if self._copier is not None:
                self._copier.finish(complete=complete)
        except OSError as exc:
            full = disk_full_error(exc, self.path, frames_written=self.totals.num_video_frames)
            if full is not None:
                raise full from exc
            raise
        finally:
            try:
                self._close_container()
            finally:
                if self._copier is not None:
                    self._copier.close()

    def _close_container(self) -> None:
        try:
            self._out.close()
        except OSError as exc:
            full = disk_full_error(exc, self.path, frames_written=self.totals.num_video_frames)
            if full is not None:
                raise full from exc
            raise
