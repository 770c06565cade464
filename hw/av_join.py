"""Joining segment files into one output by stream copy (no re-encode), through PyAV.

`join_segments(segments, path, ...)` copies the video packets of each segment in order into
one output with the source's audio and subtitles beside them (`StreamCopier`, as the
single-file writer does). Each segment's timestamps start at 0 and come with the offset to
the source's (exact: a whole number of the segment's time-base ticks), so the joined stream
has the source's timestamps, as an uninterrupted run's does.

The header's parameter sets come from the first segment; every segment's must be the same
(each is a fresh encoder with the same settings, size and colour description, which fix its
SPS/PPS or sequence header). That is checked, segment by segment, before a packet is
copied: a segment whose parameter sets differ would decode wrongly after the join, so it is
an error, never a silent join.

Each packet's duration: MP4 segments carry decode-time deltas (the MP4 sample table has no
other), while Matroska stores how long each frame is shown. Copied as they were, a variable
frame rate video's pause landed on the wrong frame, and the track's end moved by it (a
10.2 s video with a 9.8 s pause was written as 19.9 s long). Into Matroska each packet gets
its presentation duration: the next timestamp in presentation order minus its own
(`hw.av_encode.PresentationDurations`, as a Matroska file written directly gets them).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

from core.cut import TimeShift
from core.errors import InvalidOption
from core.files import disk_errors, ffmpeg_path
from hw.av_encode import open_output, presentation_durations
from hw.av_streams import stream_copier

__all__ = ["join_segments", "segment_parameters"]

log = logging.getLogger(__name__)


def segment_parameters(path: Path) -> tuple[str, int, int, bytes]:
    """(codec, width, height, extradata) of a segment's video stream: what must match."""
    import av

    with av.open(ffmpeg_path(path)) as container:
        cc = container.streams.video[0].codec_context
        return cc.name, cc.width, cc.height, bytes(cc.extradata or b"")


def join_segments(
    segments: Sequence[tuple[Path, Fraction]],
    path: Path,
    *,
    source_path: Path | None,
    complete: bool,
    warn: Callable[[str], None],
    tag_hvc1: bool = True,
    audio_shift: TimeShift | None = None,
    extras_path: Path | None = None,
    last_frame_seconds: Fraction | None = None,
) -> int:
    """Join `segments` ((file, seconds to add to its timestamps), in order) into `path`;
    returns the number of video packets written.

    `complete`: every frame of the source is in the segments, so the audio is copied to its
    end; else it is cut at the last video frame (a partial output). `audio_shift`: what
    --start/--end did to the video's timestamps (core.cut). `last_frame_seconds`: how long the
    last frame shows (the source's last frame's, `hw.av_encode.PresentationDurations.flush`);
    None: as long as its segment gave it."""
    import av

    if not segments:
        raise ValueError("join_segments needs at least one segment")
    files = [Path(f) for f, _ in segments]
    first = segment_parameters(files[0])
    for segment in files[1:]:
        other = segment_parameters(segment)
        if other != first:
            raise InvalidOption(
                f"Cannot join {segment.name}: its stream parameters differ from {files[0].name}'s "
                f"({other[0]} {other[1]}x{other[2]} vs {first[0]} {first[1]}x{first[2]}, or other parameter sets). "
                "Run again with --overwrite."
            )
    out = open_output(path)
    num_packets = 0
    copier = None
    try:
        with av.open(ffmpeg_path(files[0])) as template_file:
            template = template_file.streams.video[0]
            # opaque: a stream for remuxing, with no encoder looked up (AV1 reads as "libdav1d",
            # which no encoder is called).
            video = out.add_stream_from_template(template, opaque=True)
            if out.format.name.split(",")[0] in ("mp4", "mov") and tag_hvc1 and template.codec_context.name == "hevc":
                video.codec_context.codec_tag = "hvc1"  # Apple players refuse hev1
            # MP4/MOV: a timecode (tmcd) track needs the rate (EINVAL at the header without it). Matroska:
            # its DefaultDuration, one tick of the time base without it (1 ms: "1000 fps" to ffprobe)
            if template.average_rate:
                video.codec_context.framerate = template.average_rate
        copier = stream_copier(out, source_path, extras_path, warn=warn, shift=audio_shift)
        # Matroska: how long each frame shows (the segments' MP4 durations are decode-time deltas)
        durations = presentation_durations(out)
        last_end = 0.0
        last_dts: Fraction | None = None  # seconds

        def put(packet) -> None:
            nonlocal num_packets, last_end
            seconds = float(packet.pts * packet.time_base) if packet.pts is not None else last_end
            duration = float((packet.duration or 0) * packet.time_base)
            if copier is not None:
                copier.mux_until(seconds)
                copier.last_video_seconds = max(copier.last_video_seconds, seconds + duration)
            out.mux(packet)
            num_packets += 1
            last_end = max(last_end, seconds + duration)

        with disk_errors(path):
            for segment, offset in segments:
                with av.open(ffmpeg_path(segment)) as container:
                    stream = container.streams.video[0]
                    shift = offset / stream.time_base
                    if shift.denominator != 1:
                        log.warning("segment %s: offset %s s is not a whole number of ticks of %s; rounded",
                                    segment.name, offset, stream.time_base)
                    shift = round(shift)
                    for packet in container.demux(stream):
                        if not packet.size:
                            continue
                        if packet.pts is not None:
                            packet.pts += shift
                        if packet.dts is not None:
                            packet.dts += shift
                            last_dts = _after(packet, last_dts)
                        packet.stream = video
                        for ready in durations.push(packet):
                            put(ready)
            for ready in durations.flush(last_seconds=last_frame_seconds):
                put(ready)
            if copier is not None:
                copier.finish(complete=complete)
    finally:
        try:
            with disk_errors(path):
                out.close()
        finally:
            if copier is not None:
                copier.close()
    return num_packets


def _after(packet, last_dts: Fraction | None) -> Fraction:
    """Keep the joined DTS increasing; returns the packet's DTS in seconds. A segment's encoder
    starts its DTS before its first PTS by its reordering delay in that segment's own frame
    spacing (x265: two B-frames' worth), which can reach back onto the previous segment's last
    DTS where the spacing changes at the cut (variable frame rate, frames made by --interpolate);
    the muxer refuses an equal DTS. Such a DTS is moved one tick past the last, never past the
    packet's PTS (the order of the packets and every PTS stay as encoded)."""
    tb = Fraction(packet.time_base)
    dts = packet.dts * tb
    if last_dts is not None and dts <= last_dts:
        packet.dts = last_dts // tb + 1
        if packet.pts is not None:
            packet.dts = min(packet.dts, packet.pts)
        dts = packet.dts * tb
    return dts
