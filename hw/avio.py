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

import logging
import os
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from pipeline.errors import InvalidOption, InvalidSource, NoVideoStream, OutputNotWritable, SourceNotFound
from hw.color import ColorInfo, color_info_from_tags

__all__ = [
    "SourceInfo",
    "DecodedFrame",
    "probe_source",
    "PyAVDecoder",
    "PyAVWriter",
    "ENCODERS",
    "check_output_path",
    "StreamCopier",
    "open_output",
    "add_video_stream",
    "PtsFiller",
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
    import av

    if not path.exists():
        raise SourceNotFound(f"Source not found: {str(path)!r}. Check the path, or run without --source for the built-in sample.")
    if path.is_dir():
        raise InvalidSource(f"Source {str(path)!r} is a directory, not a video file. Pass one file, e.g. --source {path}/clip.mp4.")
    try:
        return av.open(str(path), "r")
    except av.error.FFmpegError as exc:
        raise InvalidSource(
            f"Source {str(path)!r} is not a video FFmpeg can read ({exc.strerror or type(exc).__name__}). Is it a video file?"
        ) from exc


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


class PyAVDecoder:
    """Decode the first video stream of a file on the CPU, in presentation order.

    `num_corrupt_packets` counts packets FFmpeg refused; they are skipped with one
    warning each (the first few) and decoding continues.
    """

    def __init__(self, path: str | os.PathLike, *, threads: int = 0) -> None:
        self.path = Path(path)
        self._container = _open_input(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise NoVideoStream(f"Source {str(self.path)!r} has no video stream.")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        if threads:
            self._stream.codec_context.thread_count = threads
        self.num_corrupt_packets = 0
        self.stopped_early_reason: str | None = None
        self._pts = PtsFiller(self._stream.average_rate or self._stream.guessed_rate, self._stream.time_base)

    def __iter__(self) -> Iterator[DecodedFrame]:
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
            for frame in frames:
                yield self._convert(frame)

    def _flush(self) -> Iterator[DecodedFrame]:
        import av

        try:
            for frame in self._stream.codec_context.decode(None):
                yield self._convert(frame)
        except av.error.FFmpegError as exc:
            self._corrupt(exc)

    def _corrupt(self, exc: Exception) -> None:
        self.num_corrupt_packets += 1
        if self.num_corrupt_packets <= 3:
            log.warning("source %s: skipped a corrupt packet (%s)", self.path.name, exc)

    def _convert(self, frame) -> DecodedFrame:
        pts = self._pts.fill(frame.pts)
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


def check_output_path(path: Path, *, overwrite: bool) -> None:
    """Raise OutputExists / OutputNotWritable before any work is done."""
    from pipeline.errors import OutputExists

    if path.is_dir():
        raise OutputNotWritable(f"Output {str(path)!r} is a directory. Give a file name, e.g. {path}/out.mp4.")
    if path.exists() and not overwrite:
        raise OutputExists(f"Output {str(path)!r} already exists. Pass --overwrite to replace it, or choose another --output.")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputNotWritable(f"Cannot write output {str(path)!r}: folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK):
        raise OutputNotWritable(f"Cannot write output {str(path)!r}: folder {str(parent)!r} is not writable.")


@dataclass
class _CopiedStream:
    out_stream: object
    reencode: bool = False
    resampler: object = None


class StreamCopier:
    """Copies a source's audio and subtitle streams into an output container.

    Streams are added to `out` at construction (before its header is written). Packets
    are demuxed from a second opening of the source and muxed by time as the caller
    writes video (`mux_until(seconds)`); `finish(complete=...)` copies the rest (or, for
    a run that stopped early, only up to the last video time). Audio whose codec the
    container cannot hold is re-encoded to its default audio codec, with one warning;
    such subtitles are left out, with one warning.
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
            self._src = av.open(str(source), "r")
        except av.error.FFmpegError as exc:
            warn(f"audio not copied: cannot reopen source ({exc})")
            return
        supported = out.supported_codecs
        chosen = []
        for stream in list(self._src.streams.audio) + list(self._src.streams.subtitles):
            name = stream.codec_context.name
            if name in supported:
                self._copied[stream.index] = _CopiedStream(out.add_stream_from_template(stream))
            elif stream.type == "audio":
                self._copied[stream.index] = self._reencoder(stream)
            else:
                warn(f"subtitle stream {stream.index} ({name}) cannot be stored in {Path(out.name).suffix}: not copied")
                continue
            chosen.append(stream)
        if chosen:
            self._packets = self._src.demux(*chosen)

    def _reencoder(self, stream) -> _CopiedStream:
        import av

        target = self._out.default_audio_codec
        if target not in av.codecs_available:
            target = "aac"
        self._warn(
            f"audio stream {stream.index} ({stream.codec_context.name}) cannot be stored in "
            f"{Path(self._out.name).suffix}: re-encoded to {target}"
        )
        rate = stream.codec_context.sample_rate or 48000
        out = self._out.add_stream(target, rate=rate)
        layout = stream.codec_context.layout.name if stream.codec_context.layout else "stereo"
        out.codec_context.layout = layout
        fmt = out.codec_context.codec.audio_formats[0].name
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
                     color: ColorInfo):
    """A yuv420p video stream on `out` in the source's time base, with its colour tags."""
    stream = out.add_stream(codec, rate=frame_rate or Fraction(25))
    stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
    stream.time_base = time_base
    cc = stream.codec_context
    cc.time_base = time_base
    cc.colorspace = color.output_matrix_tag
    cc.color_range = color.output_range_tag
    cc.color_primaries = color.primaries_tag
    cc.color_trc = color.transfer_tag
    return stream


def open_output(path: Path):
    """Open `path` for writing with PyAV; OutputNotWritable (one line) when it cannot be."""
    import av

    try:
        return av.open(str(path), "w")
    except (av.error.FFmpegError, OSError) as exc:
        raise OutputNotWritable(f"Cannot write output {str(path)!r}: {exc}") from exc


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
        self._out = open_output(self.path)
        try:
            self._video = self._add_video(
                codec, width, height, time_base, frame_rate, color, crf, preset, threads
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
        """Open the encoder and write the header now: a codec the container refuses is
        bad input, reported before any frame is processed."""
        import av

        try:
            self._out.start_encoding()
        except av.error.FFmpegError as exc:
            raise InvalidOption(
                f"Cannot write {self.path.suffix} with these streams ({exc.strerror or exc}). Try --output with .mkv."
            ) from exc

    def _warn(self, message: str) -> None:
        """One line for the user: to the run's warnings if given, else the log."""
        self.totals.warnings.append(message)
        if self._warn_fn is not None:
            self._warn_fn(message)
        else:
            log.warning("%s", message)

    # -- video ------------------------------------------------------------------
    def _add_video(self, codec, width, height, time_base, frame_rate, color, crf, preset, threads):
        import av

        encoder = ENCODERS[codec]
        if encoder not in av.codecs_available:
            raise InvalidOption(f"--codec {codec}: this FFmpeg build has no {encoder} encoder.")
        if codec not in self._out.supported_codecs and encoder not in self._out.supported_codecs:
            raise InvalidOption(
                f"--codec {codec} cannot be stored in a {self.path.suffix or 'this'} file. Use .mp4 or .mkv."
            )
        stream = add_video_stream(self._out, encoder, width=width, height=height, time_base=time_base,
                                  frame_rate=frame_rate, color=color)
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
        seconds = float(pts * self._time_base)
        if self._copier is not None:
            self._copier.mux_until(seconds)
            self._copier.last_video_seconds = seconds + self._frame_seconds  # the end of this frame
        for packet in self._video.encode(frame):
            self._out.mux(packet)
        self.totals.num_video_frames += 1

    # -- end ---------------------------------------------------------------------
    def close(self, *, complete: bool = True) -> None:
        """Flush the encoder, copy the remaining audio, and finalize the file. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            for packet in self._video.encode(None):
                self._out.mux(packet)
            if self._copier is not None:
                self._copier.finish(complete=complete)
        finally:
            self._out.close()
            if self._copier is not None:
                self._copier.close()
