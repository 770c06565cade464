"""The source: what a video file holds, checked before anything runs (PyAV / FFmpeg).

`probe_source(path)` opens a file, describes its first video stream (`SourceInfo`: size,
codec, pixel format, timing, colour, pixel aspect ratio, rotation, interlacing) and closes
it again, or raises one of the user-facing errors (missing, a directory, a FIFO or device,
unreadable, not a video, no video). `open_input` is the one way framepipe opens a source.
"""

from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from core.errors import InvalidOption, InvalidSource, NoVideoStream, SourceNotFound
from core.files import describe_file_kind, ffmpeg_path
from hw.color import ColorInfo, color_info_from_tags
from hw.hdr import HdrMetadata, hdr_metadata, side_data

__all__ = ["GRAY_DEPTH", "PLANAR_YUV", "SourceInfo", "display_matrix", "format_bit_depth", "open_for_reading", "open_input",
           "probe_audio", "probe_source", "VideoExtent", "video_extent"]

# Planar YUV formats passed through as integer planes: name -> bit depth. With alpha too (ProRes
# 4444 decodes to yuva444p12le): its Y, U and V planes are read, the alpha plane left out.
PLANAR_YUV: dict[str, int] = {
    "yuv420p": 8, "yuvj420p": 8, "yuv422p": 8, "yuvj422p": 8, "yuv444p": 8, "yuvj444p": 8,
    **{f"{kind}{chroma}p": 8 for kind in ("yuv", "yuva") for chroma in ("420", "422", "444")},
    **{f"{kind}{chroma}p{depth}le": depth for kind in ("yuv", "yuva") for chroma in ("420", "422", "444")
       for depth in (10, 12, 16)},
}

# Monochrome formats (HEVC/AV1 4:0:0, FFV1, raw gray): name -> bit depth (hw.av_decode reads those
# tagged limited range as YUV with neutral chroma)
GRAY_DEPTH: dict[str, int] = {"gray": 8, "gray9le": 9, "gray10le": 10, "gray12le": 12, "gray14le": 14, "gray16le": 16}


def format_bit_depth(pix_fmt: str) -> int:
    """Bits of a pixel format's deepest component (gbrp10le: 10; float formats: 16 or 32)."""
    import av

    return max(component.bits for component in av.VideoFormat(pix_fmt).components)



def _decoded_as_rgb(pix_fmt: str | None) -> bool:
    """Whether this format's colours are RGB (RGB and palette formats): decoded as such by
    hw.av_decode, with no YUV matrix or range of their own. Gray keeps its tagged range
    (GRAY_DEPTH)."""
    import av

    try:
        return bool(pix_fmt) and (pix_fmt == "pal8" or av.VideoFormat(pix_fmt).is_rgb)
    except ValueError:  # a format this PyAV cannot describe
        return False


def _has_alpha(pix_fmt: str | None) -> bool:
    import av

    try:
        return bool(pix_fmt) and any(c.is_alpha for c in av.VideoFormat(pix_fmt).components)
    except ValueError:  # a format this PyAV cannot describe
        return False


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
    num_frames_estimate: int  # the header's count, else duration x frame rate; 0 when neither is known
    color: ColorInfo
    num_audio_streams: int = 0
    num_subtitle_streams: int = 0
    sample_aspect_ratio: Fraction | None = None  # None: square pixels / unspecified
    display_matrix: tuple[int, ...] | None = None  # 9 ints (FFmpeg AV_PKT_DATA_DISPLAYMATRIX), None: none
    rotation: int = 0  # degrees counter-clockwise a player applies (from display_matrix)
    interlaced: bool = False  # the first frame is flagged interlaced
    hdr: HdrMetadata | None = None  # static HDR10 metadata of the first frame (hw.hdr)
    has_alpha: bool = False  # an alpha channel: pictures (hw.pictures), or a video's pixel format (not read)
    other_video_streams: str = ""  # one line naming the video streams left out (more than one in the file)
    # The earliest start (seconds) of the audio and subtitle streams; None: none, or not known.
    # With the video's first frame it says where the file starts (core.cut: a late start moves to 0)
    other_streams_start: float | None = None

    def __repr__(self) -> str:
        return (
            f"SourceInfo({self.path.name!r}, {self.width}x{self.height} {self.codec} {self.pix_fmt}, "
            f"{float(self.average_rate or 0):.3f} fps, {self.num_frames_from_header} frames, "
            f"{self.num_audio_streams} audio)"
        )




def open_for_reading(path: Path):
    """`av.open` of a user's file for reading: tags that are not UTF-8 (an old muxer's Latin-1) are
    read with the bad bytes replaced; PyAV 18 decodes them strictly by default (UnicodeDecodeError,
    a traceback before any frame). PyAV 19 has no such option: it is opened as it reads them."""
    import av

    try:
        return av.open(ffmpeg_path(path), "r", metadata_errors="replace")
    except TypeError:  # PyAV 19: "unexpected keyword argument 'metadata_errors'"
        return av.open(ffmpeg_path(path), "r")


def open_input(path: Path):
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
        return open_for_reading(path)
    except av.error.FFmpegError as exc:
        raise InvalidSource(
            f"Source {str(path)!r} is not a video FFmpeg can read ({exc.strerror or type(exc).__name__}). Is it a video file?"
        ) from exc


def fraction(value) -> Fraction | None:
    """A PyAV rational as a `Fraction`, None where unset.

    PyAV 18 gives `Fraction` or None; PyAV 19 gives its own `AVRational`, never None (unset is
    a falsy 0/1, and 1/0 or 0/0 are falsy too), which prints as "30/1" and has no `round`.
    Everything past the reading of a container holds `Fraction`s, whichever PyAV it runs on."""
    return Fraction(value.numerator, value.denominator) if value else None


# Decoders whose frames' side data can carry metadata (PNG's iCCP: the profile's name). PyAV 18's
# SideData takes that metadata for its own and frees it, then the frame frees it again: any use of
# `frame.side_data` on such a frame crashed the process at the next garbage collection (exit 139,
# no message; every PNG from a Mac screenshot, GIMP or Photoshop). Such frames are read through
# `frame.rotation` (FFmpeg reads the matrix in C) instead: see `png_has_profile`.
SIDE_DATA_UNSAFE_CODECS = frozenset({"png", "apng"})


def display_matrix(frame, *, safe: bool = True) -> tuple[int, ...] | None:
    """The frame's display matrix side data (9 ints), or None. `safe=False` (a frame whose side
    data PyAV cannot read without crashing, SIDE_DATA_UNSAFE_CODECS): the matrix is made from the
    frame's rotation, so a mirrored orientation reads as unmirrored."""
    if not safe:
        rotation = int(getattr(frame, "rotation", 0) or 0)
        return _rotation_matrix(rotation) if rotation % 360 else None
    for name, data in side_data(frame):
        if name == "DISPLAYMATRIX" and data.buffer_size == 36:
            return struct.unpack("<9i", bytes(data))
    return None


def png_has_profile(path: str | os.PathLike) -> bool:
    """Whether a PNG file holds an ICC profile (an iCCP chunk before its pixels), whose frame side
    data PyAV 18 cannot read without crashing (SIDE_DATA_UNSAFE_CODECS). Reads chunk headers only."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            while header := f.read(8):
                if len(header) < 8:
                    return False
                length, kind = struct.unpack(">I4s", header)
                if kind == b"iCCP":
                    return True
                if kind in (b"IDAT", b"IEND"):
                    return False
                f.seek(length + 4, os.SEEK_CUR)  # the chunk's data and CRC
    except OSError:
        return True  # unknown: the careful way
    return False


def _rotation_matrix(degrees: int) -> tuple[int, ...]:
    """The display matrix whose rotation FFmpeg reads as `degrees` (PyAV's `frame.rotation`,
    av_display_rotation_get), as av_display_rotation_set(-degrees) writes it."""
    radians = math.radians(degrees)
    c, s = round(math.cos(radians), 12), round(math.sin(radians), 12)
    fixed = lambda x: int(x * (1 << 16))  # noqa: E731 (16.16 fixed point)
    return (fixed(c), fixed(-s), 0, fixed(s), fixed(c), 0, 0, 0, 1 << 30)


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


def _estimate_frames(stream, container) -> int:
    if stream.frames:
        return int(stream.frames)
    rate = stream.average_rate or stream.guessed_rate
    if stream.duration and stream.time_base and rate:
        return int(round(float(stream.duration * stream.time_base * rate)))
    if container.duration and rate:
        return int(round(container.duration / 1_000_000 * float(rate)))
    return 0


def probe_audio(path: str | os.PathLike) -> int:
    """The number of audio streams of `--audio FILE`; one line (InvalidOption) when it has none
    or cannot be read."""
    path = Path(path)
    try:
        container = open_input(path)
    except InvalidSource as exc:  # its line speaks of the source
        reason = getattr(exc.__cause__, "strerror", None) or "permission denied"
        raise InvalidOption(f"--audio {str(path)!r} is not a file FFmpeg can read ({reason}). "
                            "Give a video or audio file.") from None
    try:
        count = len(container.streams.audio)
    finally:
        container.close()
    if not count:
        raise InvalidOption(f"--audio {str(path)!r} has no audio stream.")
    return count


def main_video_stream(container):
    """The video stream framepipe processes, as FFmpeg's own command line picks one (the largest
    picture, a stream flagged default before others of about its size, the first of equals), and
    never a cover picture (`attached_pic`: one still image, e.g. an MP4's cover art, which may come
    first) where the file has another. None where it has no video stream."""
    import av.stream

    videos = list(container.streams.video)
    moving = [s for s in videos if not _is_cover(s)] or videos

    def score(stream) -> int:
        cc = stream.codec_context
        area = cc.width * cc.height if cc is not None else 0
        return area + 5_000_000 * bool(int(stream.disposition) & int(av.stream.Disposition.default))

    return max(moving, key=lambda s: (score(s), -s.index)) if moving else None


def _is_cover(stream) -> bool:
    """A cover picture (`attached_pic`): one still image shown for the file, not its video."""
    import av.stream

    return bool(int(stream.disposition) & int(av.stream.Disposition.attached_pic))


def _other_video_streams_note(container, chosen) -> str:
    """One line naming the video streams left out, where the file has more than the one processed."""
    others = [s for s in container.streams.video if s.index != chosen.index]
    if not others:
        return ""

    def text(stream) -> str:
        cc = stream.codec_context
        what = f"#{stream.index} {cc.name} {cc.width}x{cc.height}" if cc is not None else f"#{stream.index}"
        return what + (", a cover picture" if _is_cover(stream) else "")

    return (f"the source has {len(others) + 1} video streams: framepipe processes {text(chosen)} and leaves out "
            f"{'; '.join(text(s) for s in others)}.")


def probe_source(path: str | os.PathLike) -> SourceInfo:
    """Open `path`, describe its video stream (`main_video_stream`), and close it again."""
    path = Path(path)
    container = open_input(path)
    try:
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["nothing"]
            raise NoVideoStream(
                f"Source {str(path)!r} has no video stream (it holds {', '.join(kinds)}). framepipe needs a video."
            )
        stream = main_video_stream(container)
        cc = stream.codec_context
        if cc is None:  # PyAV gives no codec context where FFmpeg has no decoder for the codec
            raise InvalidSource(f"Source {str(path)!r}: its video is in a codec this FFmpeg build cannot decode. "
                                "Convert it to H.264, HEVC or AV1 first.")
        if not cc.width or not cc.height:
            raise NoVideoStream(f"Source {str(path)!r}: the video stream has no picture size; the file is likely damaged.")
        pix_fmt = cc.format.name if cc.format is not None else ""
        bit_depth = PLANAR_YUV.get(pix_fmt) or (min(format_bit_depth(pix_fmt), 16) if pix_fmt else 8)
        chroma = ""
        if pix_fmt in PLANAR_YUV:
            chroma = "444" if "444" in pix_fmt else "422" if "422" in pix_fmt else "420"
        # The container's pixel aspect ratio first, then the bitstream's, as FFmpeg chooses
        # (av_guess_sample_aspect_ratio): a remux with `-aspect 16:9`, an MP4 `pasp` box, ProRes and
        # FFV1 in MOV/MKV hold it in the container only, and their outputs played 5:4 for 16:9
        sar = next((Fraction(r) for r in (getattr(stream, "sample_aspect_ratio", None), cc.sample_aspect_ratio)
                    if r and r.numerator > 0 and r.denominator > 0), None)
        sar = sar if sar is not None and sar != 1 else None
        first = _first_frame(container, stream)
        matrix = display_matrix(first, safe=cc.name not in SIDE_DATA_UNSAFE_CODECS) if first is not None else None
        return SourceInfo(
            path=path,
            width=cc.width,
            height=cc.height,
            codec=cc.name,
            pix_fmt=pix_fmt,
            bit_depth=bit_depth,
            chroma_format=chroma,
            time_base=fraction(stream.time_base) or Fraction(1, 90000),
            average_rate=fraction(stream.average_rate) or fraction(stream.guessed_rate),
            num_frames_from_header=int(stream.frames or 0),
            num_frames_estimate=_estimate_frames(stream, container),
            has_alpha=_has_alpha(pix_fmt),
            color=color_info_from_tags(
                colorspace=cc.colorspace,
                color_range=cc.color_range,
                color_primaries=cc.color_primaries,
                color_trc=cc.color_trc,
                height=cc.height,
                pix_fmt=pix_fmt,
                rgb=_decoded_as_rgb(pix_fmt),
            ),
            num_audio_streams=len(container.streams.audio),
            num_subtitle_streams=len(container.streams.subtitles),
            sample_aspect_ratio=sar,
            display_matrix=matrix,
            rotation=int(getattr(first, "rotation", 0) or 0) if first is not None else 0,
            interlaced=bool(getattr(first, "interlaced_frame", False)) if first is not None else False,
            hdr=hdr_metadata(first) if first is not None and cc.name not in SIDE_DATA_UNSAFE_CODECS else None,
            other_video_streams=_other_video_streams_note(container, stream),
            other_streams_start=_other_streams_start(container),
        )
    finally:
        container.close()


@dataclass(frozen=True)
class VideoExtent:
    """How far a video reaches, from its container, without decoding: `num_frames_from_header`
    (0: the container does not say) and `last_frame_seconds`, the last video packet's time from the
    stream's start (None: not known). Frames a decoder drops only make the video shorter than this."""

    num_frames_from_header: int
    last_frame_seconds: Fraction | None


def video_extent(path: str | os.PathLike) -> VideoExtent:
    """The extent of `path`'s video (`main_video_stream`): the packets from the last keyframe on
    are read (a seek near the end), none decoded."""
    import av

    container = open_input(Path(path))
    try:
        stream = main_video_stream(container)
        if stream is None:
            raise NoVideoStream(f"Source {str(path)!r} has no video stream. framepipe needs a video.")
        frames, last = int(stream.frames or 0), None
        tb = fraction(stream.time_base)
        end = None
        if stream.start_time is not None and tb:  # (no end known: not the whole file read to find it)
            end = (stream.start_time + stream.duration if stream.duration
                   else round(container.duration / 1_000_000 / tb) if container.duration else None)
        if end is not None:
            try:
                container.seek(end, stream=stream, backward=True)
                pts = [p.pts for p in container.demux(stream) if p.pts is not None]
            except av.error.FFmpegError:
                pts = []
            last = (max(pts) - stream.start_time) * tb if pts else None
        return VideoExtent(num_frames_from_header=frames, last_frame_seconds=last)
    finally:
        container.close()


def _other_streams_start(container) -> float | None:
    """The earliest start_time of the audio and subtitle streams, in seconds (None: none known)."""
    starts = [float(s.start_time * s.time_base) for s in (*container.streams.audio, *container.streams.subtitles)
              if s.start_time is not None and s.time_base]
    return min(starts) if starts else None


