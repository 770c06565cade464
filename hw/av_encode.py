"""The CPU encoder: yuv420p planes to an H.264/HEVC/AV1 file through PyAV (FFmpeg).

`PyAVWriter` implements `hw.encoding.Encoder`: `write(planes, pts)` encodes yuv420p planes
(never rgb24: CPU colour conversion is the bottleneck avoided) with libx264/libx265/libsvtav1
at the source's timestamps (VFR stays VFR), with the source's colour tags, pixel aspect
ratio and rotation, and the source's audio/subtitles beside it (`StreamCopier`).
`close(complete=)` always leaves a playable file holding every frame written so far.
`add_video_stream` and `open_output` are shared with the NVENC writer.
"""

from __future__ import annotations

import errno
import logging
import math
import os
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from core.choices import CPU_ENCODERS, OUTPUT_PIX_FMT, Codec
from core.cut import TimeShift
from core.errors import InvalidOption, OutputNotWritable, one_line
from core.files import FreeSpaceGuard, disk_errors, ffmpeg_path
from hw.av_streams import stream_copier
from hw.color import ColorInfo
from hw.hdr import HdrMetadata, encoder_hdr_options
from hw.scheduling import restore_scheduling

__all__ = ["PresentationDurations", "PyAVWriter", "add_video_stream", "encoder_options", "open_output",
           "presentation_durations"]

log = logging.getLogger(__name__)


class PresentationDurations:
    """Video packets in decode order in, the same packets out in the same order, each with its
    presentation duration: the next timestamp in presentation order minus its own. A packet's
    successor in presentation order comes at most an encoder's reordering reach later in decode
    order, so `reach` packets are held (B-frames and pyramids reorder by a few; x264 and x265
    at most 16 B-frames). The last frame in presentation order lasts `flush(last_seconds=)` where
    given (the source's last frame), else keeps the duration it had (the encoder's: one frame at
    the stream's frame rate, the average one for a variable frame rate).

    `tick` (Matroska: 1 ms, the unit it stores): the packets come out in that time base, each
    timestamp rounded as FFmpeg would round it and each duration the difference of the rounded
    timestamps (rounded apart, they disagreed by 1 ms: a frame seemed to last past the next one's
    start). Frames less than a tick apart would share one timestamp (a broken file): such a frame
    is moved to the tick after the one before it, with one warning. The plan refuses a video
    whose first frames are that close (pipeline.plan._check_frame_spacing); this keeps later ones
    apart."""

    def __init__(self, reach: int = 48, *, tick: Fraction | None = None) -> None:
        self.reach = reach
        self.tick = tick
        self._held: deque = deque()
        self._seen: deque = deque(maxlen=2 * reach)  # timestamps of the packets around: before and after
        self._ticks: dict[int, int] = {}  # tick mode: a held packet's timestamp -> its timestamp in ticks
        self._top: tuple[int, int] | None = None  # tick mode: the latest timestamp given ticks, and its ticks
        self.moved = 0  # tick mode: frames moved off a tick the one before had
        self._first_dts: int | None = None  # decode-time mode: the stream's first decode time
        self._min_pts: int | None = None  # and its earliest presentation time

    def push(self, packet) -> Iterator:
        """`packet` held; the packets now settled, in order."""
        self._held.append(packet)
        if self._first_dts is None and packet.dts is not None:
            self._first_dts = packet.dts
        if packet.pts is not None:
            self._seen.append(packet.pts)
            self._min_pts = packet.pts if self._min_pts is None else min(self._min_pts, packet.pts)
        while len(self._held) > self.reach:
            yield self._settled(self._held.popleft())

    def flush(self, *, last_seconds: Fraction | None = None) -> Iterator:
        """Every packet still held, settled, in order (the end of the stream); the last frame in
        presentation order lasts `last_seconds` where given."""
        timed = [p for p in self._held if p.pts is not None and p.time_base is not None]
        shown_last = max(timed, key=lambda p: p.pts) if timed else None
        if shown_last is not None and last_seconds is not None and last_seconds > 0:
            shown_last.duration = max(1, round(Fraction(last_seconds) / Fraction(shown_last.time_base)))
        # Where the last frame shown ends, read now: a packet yielded is muxed before the next one is
        # settled, and muxing moves it into the stream's time base in place (an MP4 of a WebM's
        # 1/1000 counts 1/16000), so read after, a 1.48 s cut of a WebM came out 23.7 s long.
        shown_end = (shown_last.pts + shown_last.duration
                     if shown_last is not None and shown_last.duration is not None else None)
        previous_dts = None
        while self._held:
            packet = self._settled(self._held.popleft())
            if not self._held and shown_end is not None:
                self._end_with(packet, packet is shown_last, shown_end, previous_dts)
            previous_dts = packet.dts
            yield packet

    def _end_with(self, decoded_last, shown: bool, shown_end: int, previous_dts: int | None) -> None:
        """Decode-time mode (MP4/MOV): the track's sample durations add up to its time from the
        first decode time to the last one's end, and a player (and ffprobe) takes that for the
        video's length, while the edit list ends it where the last frame shown ends (`shown_end`,
        in the packets' time base). The last packet decoded is the table's last entry; it is made
        to end the table there too:
        - not the last frame shown (`shown`: an encoder that ends on a B-frame): its duration does
          it (with its own presentation duration, an --interpolate 2 output of a 2 s video was
          1.98 s long);
        - the last frame shown, decoded further behind its timestamp than the first frame (a
          variable frame rate's reordering): its decode time moves up to the first frame's distance
          behind, where its own duration ends the table at its end (the table ended a source frame
          early, 1.250 s for a 1.292 s video), if that keeps the decode times rising."""
        if self.tick is not None or None in (self._first_dts, self._min_pts, decoded_last.dts):
            return
        if shown:
            dts = decoded_last.pts - (self._min_pts - self._first_dts)
            if dts != decoded_last.dts and dts <= decoded_last.pts and (previous_dts is None or dts > previous_dts):
                decoded_last.dts = dts
            return
        end = shown_end - self._min_pts  # the presentation's length
        duration = end - (decoded_last.dts - self._first_dts)
        if duration > 0:
            decoded_last.duration = duration

    def _settled(self, packet):
        if packet.pts is None:
            return packet
        later = [pts for pts in self._seen if pts > packet.pts]
        if self.tick is None or packet.time_base is None:
            if later:
                packet.duration = min(later) - packet.pts
            return packet
        time_base = Fraction(packet.time_base)
        pts = self._in_ticks(packet.pts, time_base)
        if later:
            following = min(later)
            duration = self._ticks.get(following, max(_round_ticks(following * time_base / self.tick), pts + 1)) - pts
        else:
            duration = _round_ticks((packet.duration or 0) * time_base / self.tick)
        dts = _round_ticks(packet.dts * time_base / self.tick) if packet.dts is not None else None
        self._ticks.pop(packet.pts, None)
        packet.time_base = self.tick
        packet.pts, packet.dts = pts, min(dts, pts) if dts is not None else None
        packet.duration = duration
        return packet

    def _in_ticks(self, pts: int, time_base: Fraction) -> int:
        """`pts` in ticks; the timestamps up to it are given theirs first, in presentation order,
        each at least a tick after the one before."""
        if pts in self._ticks:
            return self._ticks[pts]
        top = self._top
        for earlier in sorted(t for t in set(self._seen) if t <= pts and (top is None or t > top[0])):
            ticks = _round_ticks(earlier * time_base / self.tick)
            if top is not None and ticks <= top[1]:
                if not self.moved:
                    log.warning("frames less than %g ms apart at %.3f s: the output stores whole milliseconds, so each "
                                "such frame is moved to the millisecond after the one before (.mp4/.mov keep exact "
                                "times)", float(self.tick * 1000), float(earlier * time_base))
                self.moved += 1
                ticks = top[1] + 1
            self._ticks[earlier] = ticks
            top = self._top = (earlier, ticks)
        return self._ticks.get(pts, _round_ticks(pts * time_base / self.tick))


def _round_ticks(value: Fraction) -> int:
    """`value` rounded to the nearest whole number, halves away from zero (FFmpeg's av_rescale_q)."""
    return math.floor(value + Fraction(1, 2)) if value >= 0 else -math.floor(-value + Fraction(1, 2))


def presentation_durations(out) -> PresentationDurations:
    """For a Matroska/WebM output (which stores how long each frame shows, in whole milliseconds),
    the packets' presentation durations, in milliseconds; for MP4/MOV, in the stream's time base:
    their sample durations are decode-time deltas, which the muxer takes from the DTS, but the
    track's length (its edit list, the file's duration) is where a frame ends last, timestamp plus
    duration. With the encoder's durations (one frame at the average rate) a variable frame rate's
    last frame lasted the average frame (0.048 s for a 0.04 s frame, 0.109 s for another source),
    and a frame before a short one could end past it."""
    if out.format.name.split(",")[0] in ("matroska", "webm"):
        return PresentationDurations(reach=48, tick=Fraction(1, 1000))
    return PresentationDurations(reach=48)


def add_video_stream(out, codec: str, *, width: int, height: int, time_base: Fraction, frame_rate: Fraction | None,
                     color: ColorInfo, sample_aspect_ratio: Fraction | None = None,
                     display_matrix: tuple[int, ...] | None = None, pix_fmt: str = "yuv420p"):
    """A yuv420p (or yuv420p10le) video stream on `out` in the source's time base, with the source's colour
    tags, pixel aspect ratio and display matrix (rotation), so the output plays as the
    source does. HEVC in MP4/MOV is tagged `hvc1` (Apple players refuse `hev1`)."""
    stream = out.add_stream(codec, rate=frame_rate or Fraction(25))
    stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
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


def encoder_options(encoder: str, *, crf: int | None, preset: str | None, hdr: HdrMetadata | None = None) -> dict[str, str]:
    """The options the CPU `encoder` (libx264/libx265/libsvtav1) is opened with: quality, preset,
    and the encoder's own parameters (x265 quiet and lossless at --quality 0, HDR10 metadata)."""
    options: dict[str, str] = {}
    if crf is not None:
        options["crf"] = str(crf)
    if preset is not None:
        options["preset"] = str(preset)
    params = {"libx265": {"log-level": "error"}, "libx264": {"force-cfr": "1"}}.get(encoder, {})
    # x264 writes the encoder's time base into the SPS as its clock (VUI time_scale 2/time base):
    # in the source's time base (1/12800 for 25 fps) that said 12800 frames a second, where
    # ffmpeg's re-encode (time base 1/frame rate) says 25, and FFmpeg 5.1 gave no MP4/MOV video
    # packet a duration (ffprobe: duration=N/A; it takes them from that rate where the file has
    # composition offsets). force-cfr makes x264 write the frame rate instead (as x265 always
    # does); the timestamps and decode times it puts out are still the ones given, VFR included.
    if encoder == "libx265" and crf == 0:
        params["lossless"] = "1"  # --quality 0 is lossless, as with x264 (x265's CRF 0 is not)
    params.update(encoder_hdr_options(encoder, hdr))  # HDR10 metadata into the bitstream (hw.hdr)
    if params:
        key = {"libx265": "x265-params", "libx264": "x264-params", "libsvtav1": "svtav1-params"}[encoder]
        options[key] = ":".join(f"{k}={v}" for k, v in params.items())
    return options


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
    return InvalidOption(f"The output container refused these streams ({one_line(exc, limit=160)}). Try --output with .mkv.")


def _check_encoder_opens(encoder: str, width: int, height: int, time_base: Fraction, frame_rate: Fraction | None,
                         options: dict[str, str], pix_fmt: str = "yuv420p") -> None:
    """Settings the encoder refuses (libx265 below its smallest size, a bad preset ...) are bad
    input, found on a throwaway encoder before the output file is touched: a stream whose
    encoder failed to open crashed PyAV 19 when its container was closed (seen on the GPU host)."""
    import av

    ctx = av.CodecContext.create(encoder, "w")
    ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = width, height, pix_fmt, time_base
    ctx.framerate = frame_rate or Fraction(25)  # as add_stream(rate=) sets it (SVT-AV1 refuses 1/time_base fps)
    ctx.options = dict(options)
    try:
        ctx.open()
    except av.error.FFmpegError as exc:
        raise InvalidOption(
            f"The {encoder} encoder refused to start for {width}x{height} {pix_fmt} with these settings "
            f"({one_line(exc, limit=160)}). Try another --codec, --scale, --quality or --preset."
        ) from exc
    finally:
        restore_scheduling()  # SVT-AV1 as root: real-time threads (hw/scheduling.py)


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
        audio_shift: TimeShift | None = None,
        extras_path: str | os.PathLike | None = None,
        bit_depth: int = 8,
        hdr: HdrMetadata | None = None,
        threads: int = 0,
        warn: Callable[[str], None] | None = None,
        sample_aspect_ratio: Fraction | None = None,
        display_matrix: tuple[int, ...] | None = None,
        free_space: FreeSpaceGuard | None = None,
    ) -> None:
        if codec not in CPU_ENCODERS:
            raise InvalidOption(f"Invalid --codec {codec!r}: allowed are {', '.join(CPU_ENCODERS)}.")
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p output needs even sizes, got {width}x{height}")
        self.path = Path(path)
        self.num_frames_written = 0
        self._warn_fn = warn
        self._pix_fmt = OUTPUT_PIX_FMT[bit_depth]
        self._hdr = hdr
        self._time_base = time_base
        self._frame_seconds = float(1 / frame_rate) if frame_rate else 0.04
        self._frame_ticks = max(1, round(self._frame_seconds / float(time_base)))  # one frame, the last frame's
        self._last_dts: int | None = None
        self._closed = False
        self._space = free_space if free_space is not None else FreeSpaceGuard(self.path)
        # Matroska holds a cluster (about a second, see open_output) in memory before writing it.
        self._frames_per_cluster = (int(float(frame_rate or 25)) + 1) if self.path.suffix.lower() == ".mkv" else 0
        self.num_bytes_written = 0
        self.num_packets_written = 0
        self._bytes_encoded = 0  # packets out of the encoder, written or held for their durations
        self._packets_encoded = 0
        self._out = open_output(self.path)
        self._durations = presentation_durations(self._out)  # Matroska: how long each frame shows
        try:
            self._video = self._add_video(
                codec, width, height, time_base, frame_rate, color, crf, preset, threads,
                sample_aspect_ratio, display_matrix,
            )
            self._copier = stream_copier(self._out, source_path, extras_path, warn=self._warn, shift=audio_shift)
            self._start()
        except BaseException:
            self._out.close()
            raise

    def _start(self) -> None:
        """Open the encoder and write the header now: settings the encoder or the container
        refuse are bad input, reported before any frame is processed, each with its cause."""
        import av

        try:
            self._out.start_encoding()
        except (av.error.FFmpegError, OSError) as exc:
            raise _open_error(exc, what="writing the file header") from exc

    def _warn(self, message: str) -> None:
        """One line for the user: to the run's warnings if given, else the log."""
        if self._warn_fn is not None:
            self._warn_fn(message)
        else:
            log.warning("%s", message)

    # -- video ------------------------------------------------------------------
    def _add_video(self, codec, width, height, time_base, frame_rate, color, crf, preset, threads,
                   sample_aspect_ratio, display_matrix):
        import av

        encoder = CPU_ENCODERS[codec]
        if encoder not in av.codecs_available:
            raise InvalidOption(f"--codec {codec}: this FFmpeg build has no {encoder} encoder.")
        options = encoder_options(encoder, crf=crf, preset=preset, hdr=self._hdr)
        _check_encoder_opens(encoder, width, height, time_base, frame_rate, options, self._pix_fmt)
        if codec not in self._out.supported_codecs and encoder not in self._out.supported_codecs:
            raise InvalidOption(
                f"--codec {codec} cannot be stored in a {self.path.suffix or 'this'} file. Use .mp4 or .mkv."
            )
        stream = add_video_stream(self._out, encoder, width=width, height=height, time_base=time_base,
                                  frame_rate=frame_rate, color=color, sample_aspect_ratio=sample_aspect_ratio,
                                  display_matrix=display_matrix, pix_fmt=self._pix_fmt)
        cc = stream.codec_context
        if threads:
            cc.thread_count = threads
        stream.options = options
        return stream

    def write(self, planes: tuple[np.ndarray, np.ndarray, np.ndarray], pts: int) -> None:
        """Encode one picture (Y, U, V planes: uint8 for yuv420p, uint16 codes for yuv420p10le)
        at source timestamp `pts`."""
        import av

        y, u, v = planes
        height, width = y.shape
        frame = av.VideoFrame(width, height, self._pix_fmt)
        for plane, data in zip(frame.planes, (y, u, v)):
            if plane.line_size == data.shape[1] * data.itemsize:
                plane.update(np.ascontiguousarray(data))  # one copy, no repacking
            else:  # the frame's rows are padded: copy row by row through a view
                rows = np.frombuffer(plane, data.dtype).reshape(plane.height, plane.line_size // data.itemsize)
                rows[:, : data.shape[1]] = data
        frame.pts = pts
        frame.time_base = self._time_base
        cc = self._video.codec_context
        frame.colorspace = cc.colorspace
        frame.color_range = cc.color_range
        # Asked as the encoder puts packets out, each frame not in the file yet pending (in the encoder,
        # or held for its duration: up to 48 packets): asked as packets reached the file, a disk that
        # filled while 48 lossless frames waited was not seen coming
        self._space.check(bytes_written=self._bytes_encoded, frames_written=self._packets_encoded,
                          frames_pending=self.num_frames_written - self.num_packets_written,
                          frames_buffered=self._frames_per_cluster)
        seconds = float(pts * self._time_base)
        with self._disk_errors():
            if self._copier is not None:
                self._copier.mux_until(seconds)
                self._copier.last_video_seconds = seconds + self._frame_seconds  # the end of this frame
            self._mux_video(self._video.encode(frame))
        if not self.num_frames_written:  # the encoder opened with its first frame
            restore_scheduling()
        self.num_frames_written += 1

    def _disk_errors(self):
        return disk_errors(self.path)

    def _mux_video(self, packets, *, end: bool = False, last_seconds: Fraction | None = None) -> None:
        """Mux the encoder's packets (`end`: the last of them, with those held for their durations,
        the last frame lasting `last_seconds` where given)."""
        for packet in packets:
            self._bytes_encoded += packet.size
            self._packets_encoded += 1
            self._repair_dts(packet)
            if not packet.duration:
                # FFmpeg's encoders give a packet the duration of its frame, and PyAV's frames have
                # none: without the source's word on the last frame (--max-frames, a stopped run)
                # it lasted nothing, and the video ended a frame early (19 frames' time for 20).
                # One frame at the stream's rate until the next frame's timestamp is known, as NVENC's.
                packet.duration = self._frame_ticks
            for ready in self._durations.push(packet):
                self._mux_packet(ready)
        if end:
            for ready in self._durations.flush(last_seconds=last_seconds):
                self._mux_packet(ready)

    def _mux_packet(self, packet) -> None:
        self.num_bytes_written += packet.size
        self.num_packets_written += 1
        self._out.mux(packet)

    def _repair_dts(self, packet) -> None:
        """x265 (3.x/4.x through FFmpeg's libx265) gives the packets of a stream of one or two
        frames an uninitialised DTS (e.g. -171798691880; seen for 8- and 10-bit), which the MP4
        muxer refuses ("Not yet implemented") — a 1- or 2-frame segment, clip or stopped run.
        Such a DTS (above the PTS, or further below it than any encoder's reordering reaches)
        is replaced by the PTS, kept above the previous DTS; those frames come out in order."""
        pts, dts = packet.pts, packet.dts
        if pts is None:
            return
        reach = 1024 * max(1, round(self._frame_seconds / float(self._time_base)))
        if dts is None or dts > pts or dts < pts - reach or (self._last_dts is not None and dts <= self._last_dts):
            fixed = pts if self._last_dts is None else max(pts, self._last_dts + 1)
            if dts is not None and dts != fixed:
                log.debug("%s: encoder DTS %s replaced by %s (PTS %s)", self.path.name, dts, fixed, pts)
            packet.dts = fixed
        self._last_dts = packet.dts

    # -- end ---------------------------------------------------------------------
    def close(self, *, complete: bool = True, last_frame_seconds: Fraction | None = None) -> None:
        """Flush the encoder, copy the remaining audio, and finalize the file (the last frame lasting
        `last_frame_seconds` where given: `hw.encoding.Encoder.close`). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            with self._disk_errors():
                self._mux_video(self._video.encode(None), end=True, last_seconds=last_frame_seconds)
                if self._copier is not None:
                    self._copier.finish(complete=complete)
        finally:
            try:
                with self._disk_errors():
                    self._out.close()
            finally:
                if self._copier is not None:
                    self._copier.close()
