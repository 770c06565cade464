"""Audio and subtitles beside the video: copied bit for bit, or re-encoded where they must be.

`StreamCopier` adds a source's audio and subtitle streams to an output container and muxes
their packets by time as the video is written. `copy_problem` finds out, by trying, whether
a stream can be copied into a container format at all.

What else the video source holds goes with it, as `ffmpeg -map 0 -c copy` keeps it: the file's
tags (title, artist, date, location ...), its chapters (moved and cut with the video), its
attachments (Matroska's subtitle fonts), and each stream's language, title and default/forced
flags, the video's included (its timecode too, unless --start moved the first frame). Tags
that describe the old file's bytes (encoder, durations, bit rates, frame counts, MP4 brands)
are not copied: the new file's muxer writes its own. What a container cannot hold (attachments
outside Matroska) and data streams (camera telemetry) are left out with one line each.
"""

from __future__ import annotations

import io
import logging
import math
import os
import re
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

from core.cut import TimeShift
from core.errors import one_line
from hw.av_source import open_for_reading

__all__ = ["StreamCopier", "copy_problem", "stream_copier"]

log = logging.getLogger(__name__)


@dataclass
class _CopiedStream:
    out_stream: object
    reencode: bool = False
    resampler: object = None
    next_pts: int | None = None  # re-encoded audio: the next sample's timestamp (1/rate), from the source's timing
    end: int | None = None  # copied MP4/MOV audio: where its edit list ends the track (source ticks), see `_track_end`
    muxed: int = 0  # packets written
    frame_ticks: int = 0  # copied audio: the longest packet duration seen (source ticks), one whole frame (`_end_padding`)
    text_from: str | None = None  # a text subtitle converted (`subtitle_text`): the source's codec


# Tags about the source file's own bytes, stale in another file (Matroska's statistics tags
# from mkvmerge, MP4's brands, the muxer's and encoder's names); a display matrix is carried as such
_STALE_TAG = re.compile(r"(encoder|duration|bps|number_of_frames|number_of_bytes|_statistics_.*|major_brand|"
                        r"minor_version|compatible_brands|rotate)(-[a-z]{3})?", re.IGNORECASE)  # FFmpeg's KEY-lng


def _copy_tags(source_stream, out_stream, *, drop: tuple[str, ...] = ()) -> None:
    """The stream's tags (language, title, handler ...) and flags (default, forced, hearing
    impaired ...), as `ffmpeg -map 0 -c copy` keeps them."""
    import av.stream

    for key, value in source_stream.metadata.items():
        if not _STALE_TAG.fullmatch(key) and key.lower() not in drop:
            out_stream.metadata[key] = value
    flags = source_stream.disposition & ~(av.stream.Disposition.attached_pic | av.stream.Disposition.still_image)
    out_stream.disposition = av.stream.Disposition(flags)


_EDIT_LIST_FORMATS = frozenset({"mov", "mp4", "m4a", "3gp", "3g2", "ipod", "ismv", "psp", "f4v"})
_DEFAULT_LAYOUTS = {1: "mono", 2: "stereo", 3: "2.1", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


# Text subtitles: what each container holds (ffmpeg's defaults: MP4/MOV mov_text, Matroska SubRip)
# when the source's kind cannot be copied (SubRip/ASS into MP4, mov_text into Matroska)
_TEXT_SUBTITLES = ("subrip", "srt", "ass", "ssa", "mov_text", "webvtt", "text")
_TEXT_TARGET = {"mp4": "mov_text", "mov": "mov_text", "matroska": "subrip"}
# The ASS header FFmpeg's text encoders open with (its own default: Arial 16, white, bottom centre)
_ASS_HEADER = (b"[Script Info]\nScriptType: v4.00+\nPlayResX: 384\nPlayResY: 288\n\n[V4+ Styles]\nFormat: Name, "
               b"Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, "
               b"Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, "
               b"MarginL, MarginR, MarginV, Encoding\nStyle: Default,Arial,16,&Hffffff,&Hffffff,&H0,&H0,0,0,0,0,100,"
               b"100,0,0,1,1,0,2,10,10,10,0\n\n[Events]\nFormat: Layer, Start, End, Style, Name, MarginL, MarginR, "
               b"MarginV, Effect, Text\n")
_ASS_OVERRIDE = re.compile(r"\{[^}]*\}")
_MARKUP = re.compile(r"</?(i|b|u|s|font)\b[^>]*>", re.IGNORECASE)


def subtitle_text(data: bytes, codec: str) -> str:
    """The plain text of one text-subtitle packet: SubRip's and WebVTT's markup (<i>, <font ...>)
    and ASS's override codes ({\\i1}) dropped, ASS's line breaks (\\N) kept as lines; "" where
    it shows nothing (mov_text's empty samples between subtitles)."""
    if codec == "mov_text":
        size = int.from_bytes(data[:2], "big") if len(data) >= 2 else 0
        return data[2:2 + size].decode("utf-8", "replace")
    text = data.decode("utf-8", "replace")
    if codec in ("ass", "ssa"):  # Matroska's ASS: ReadOrder,Layer,Style,Name,MarginL,MarginR,MarginV,Effect,Text
        parts = text.split(",", 8)
        text = parts[8] if len(parts) == 9 else text
        text = _ASS_OVERRIDE.sub("", text).replace("\\N", "\n").replace("\\n", "\n").replace("\\h", " ")
    return _MARKUP.sub("", text).replace("\r\n", "\n").strip("\n")


def _text_payload(text: str, target: str) -> bytes:
    body = text.encode("utf-8")
    return (len(body).to_bytes(2, "big") + body) if target == "mov_text" else body


def copy_problem(fmt: str, source: Path, stream_index: int, *, num_packets: int = 8) -> str | None:
    """Why stream `stream_index` of `source` cannot be stream-copied into a `fmt` file, or None.

    Found by doing it, in memory: header, the first packets and trailer. Asking the muxer
    is not enough: MP4 accepts PCM without a channel layout at the header and refuses it
    at the trailer — after every frame of a long run was processed.
    """
    import av

    try:
        with open_for_reading(source) as src:
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
        return f"the {fmt} muxer refuses it: {getattr(exc, 'strerror', None) or one_line(exc, limit=160)}"
    return None


def _audio_layout(cc) -> str:
    """The source's channel layout, or the standard one for its channel count where it has none."""
    layout = cc.layout
    name = getattr(layout, "name", "") or ""
    channels = int(getattr(cc, "channels", 0) or getattr(layout, "nb_channels", 0) or 2)
    if name and not name.endswith("channels") and channels <= 8:
        return name
    return _DEFAULT_LAYOUTS.get(channels, "stereo")


def _move_back(packet, seconds: Fraction, out_time_base: Fraction | None) -> None:
    """Move `packet` back in time by `seconds` (a cut's shift), exactly where the output can say it.

    Where the shift is a whole number of the packet's ticks it is subtracted as it is. Where it
    is not, the packet is moved in the output stream's time base instead: AVI counts AAC and MP3
    time in whole packets (a tick of 1024/48000 s), and a shift rounded to such a tick put the
    audio up to half a packet (10.7 ms) off the video (issue 11). The output's time base (MP4:
    the sample rate; Matroska: 1 ms) holds it to within half of its own tick."""
    time_base = Fraction(packet.time_base)
    ticks = seconds / time_base
    if ticks.denominator == 1 or not out_time_base:
        ticks = round(ticks)
        if packet.pts is not None:
            packet.pts -= ticks
        if packet.dts is not None:
            packet.dts -= ticks
        return
    fine = Fraction(out_time_base)
    pts, dts, duration = packet.pts, packet.dts, packet.duration
    packet.time_base = fine
    if pts is not None:
        packet.pts = round((pts * time_base - seconds) / fine)
    if dts is not None:
        packet.dts = round((dts * time_base - seconds) / fine)
    if duration:
        packet.duration = round(duration * time_base / fine)


def _track_end(container, stream) -> int | None:
    """Where an MP4/MOV source's edit list ends `stream` (its ticks), or None elsewhere.

    The edit list trims the encoder's padding off the last packet (MP3's up to 1,151 samples), but
    FFmpeg's MP3 parser gives that packet its whole frame's duration again: copied as read, the
    track played ~20 ms of padding longer than the source's. The track's duration there is the edit
    list's, in the movie's time scale (FFmpeg writes milliseconds): a packet that ends less than
    1 ms past it is left whole (AAC's exact last duration would lose up to 1 ms). Other containers'
    durations are estimates (MPEG-TS: from the bit rate), not trims."""
    if container.format.name.split(",")[0] not in _EDIT_LIST_FORMATS or not stream.duration:
        return None
    return (stream.start_time or 0) + stream.duration


def _end_padding(packet) -> int:
    """The samples the packet's decoder is told to drop off its end (the `discard_padding` of
    FFmpeg's skip-samples side data: Opus's and Vorbis's end trim in Matroska/WebM), 0 if none."""
    if not packet.has_sidedata("skip_samples"):
        return 0
    data = bytes(packet.get_sidedata("skip_samples"))
    return int.from_bytes(data[4:8], "little") if len(data) >= 8 else 0


def _trim_end_padding(packet, copied: _CopiedStream, out_time_base: Fraction | None) -> None:
    """End the packet where its audio ends: its whole frame less the samples its `discard_padding`
    drops. Matroska/WebM carry that trim beside the packet and keep it on a copy; an MP4/MOV track
    ends where its packets' durations end it (its edit list), and the copy played the padding: a
    WebM's Opus came out 168 samples (3.5 ms) longer than the source's. Where the source's muxer
    also shortened the packet (a block duration), the frame is the longest packet seen before, so
    it is not trimmed twice. The packet is moved into the output's time base (MP4: the sample rate)
    first, so the trim is exact, not rounded to the source's milliseconds."""
    if not packet.duration or packet.time_base is None:
        return
    copied.frame_ticks = max(copied.frame_ticks, packet.duration)
    padding = _end_padding(packet)
    rate = packet.stream.codec_context.sample_rate if packet.stream.codec_context is not None else 0
    if not padding or not rate:
        return
    time_base = Fraction(packet.time_base)
    fine = out_time_base if out_time_base else time_base
    duration = copied.frame_ticks * time_base - Fraction(padding, rate)
    if duration <= 0 or duration >= packet.duration * time_base:
        return
    if fine != time_base:
        pts, dts = packet.pts, packet.dts
        packet.time_base = fine
        if pts is not None:
            packet.pts = round(pts * time_base / fine)
        if dts is not None:
            packet.dts = round(dts * time_base / fine)
    packet.duration = max(1, round(duration / fine))


def _timecode_at(timecode: str, factor: Fraction) -> str:
    """`timecode` (HH:MM:SS:FF, or ;FF drop-frame) of the first frame, at a frame rate `factor`
    times the source's: --interpolate N counts N frames where the source counted one, so frame 10
    at 24 fps is frame 20 at 48 (kept, the first frame's time moved 0.208 s earlier). Unchanged
    where the factor is not a whole number or the text not a timecode."""
    match = re.fullmatch(r"(\d+[:;.]\d+[:;.]\d+[:;.])(\d+)", timecode.strip())
    n = round(factor)
    if match is None or n <= 1 or abs(factor - n) > Fraction(1, 100):
        return timecode
    digits = len(match.group(2))
    return f"{match.group(1)}{int(match.group(2)) * n:0{digits}d}"


def _preroll(hidden: deque, first) -> list:
    """Of the packets an edit list hides just before `first` (the first one played), those its
    decoder needs first: none for PCM (each sample stands alone), Opus's 80 ms (its seek pre-roll),
    the last one for the rest (AAC's, MP3's and AC-3's frames overlap the one before)."""
    name = first.stream.codec_context.name if first.stream.codec_context is not None else ""
    if name.startswith("pcm_"):
        return []
    if name != "opus" or first.pts is None or first.time_base is None:
        return [hidden[-1]]
    since = first.pts - round(Fraction(80, 1000) / first.time_base)
    return [p for p in hidden if p.pts is not None and p.pts + (p.duration or 0) > since] or [hidden[-1]]


def stream_copier(out, source: str | os.PathLike | None, extras: str | os.PathLike | None, *,
                  warn: Callable[[str], None], shift: TimeShift | None = None) -> "StreamCopier | None":
    """What a writer copies beside its video: the audio and subtitles of `source`, the tags,
    chapters and attachments of `extras` (`StreamCopier`); None where it has neither."""
    if source is None and extras is None:
        return None
    return StreamCopier(out, Path(source) if source is not None else None, warn=warn, shift=shift,
                        extras=Path(extras) if extras is not None else None)


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
    the last video time). With `--start`/`--end`, `shift` (core.cut) says which packets lie
    inside the cut and how far to move them back; the times the caller gives are the
    output's.
    """

    def __init__(self, out, source: Path | None, *, warn: Callable[[str], None], shift: TimeShift | None = None,
                 extras: Path | None = None) -> None:
        """`source`: where the audio and subtitles come from (None: none); `extras`: the video
        source, whose tags, chapters and attachments the output takes (see the module's
        docstring). Call before the output's header is written."""
        import av

        self._out = out
        self._warn = warn
        self._shift = shift
        # Another file's soundtrack (--audio beside a video) starts with the video's first frame: its
        # time t is t + shift.video_start on the video's clock, where the cut's times are
        self._soundtrack = source is not None and extras is not None and Path(source) != Path(extras)
        self._src = None
        self._copied: dict[int, _CopiedStream] = {}
        self._pending = None  # next source packet not yet muxed
        self._packets = None
        self._chapters: list[dict] = []  # the video source's, set on the output at the end (moved, cut)
        self.last_video_seconds = 0.0
        if extras is not None:
            self._take_extras(Path(extras))
        if source is None:
            return
        # Packets the source's edit list hides (FFmpeg flags them "discard": an MP4 cut with `-c copy`
        # holds up to a keyframe interval of them before its start). MP4/MOV hide them again with an
        # edit list of their own; other containers cannot, and played them: Matroska moved every
        # stream 1 s later for a second of audio nobody was meant to hear. There only what the
        # decoder needs before a kept packet is kept (`_preroll`: AAC's priming packet, Opus's 80 ms,
        # nothing of PCM).
        self._edit_lists = out.format.name.split(",")[0] in _EDIT_LIST_FORMATS
        self._preroll: dict[int, deque] = {}
        try:
            self._src = open_for_reading(source)
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
                self._copied[stream.index] = _CopiedStream(out.add_stream_from_template(stream),
                                                           end=_track_end(self._src, stream) if stream.type == "audio" else None)
            elif stream.type == "audio":
                try:
                    self._copied[stream.index] = self._reencoder(stream, why=problem)
                except (av.error.FFmpegError, ValueError) as exc:
                    warn(f"audio stream {stream.index} ({name}) can neither be copied into {suffix} ({problem}) nor "
                         f"re-encoded ({one_line(exc, limit=160)}): left out. Try --output with .mkv")
                    continue
            elif name in _TEXT_SUBTITLES and _TEXT_TARGET.get(fmt):
                target = _TEXT_TARGET[fmt]
                try:
                    self._copied[stream.index] = self._text_converter(stream, target)
                except (av.error.FFmpegError, ValueError) as exc:
                    warn(f"subtitle stream {stream.index} ({name}) cannot be stored in {suffix} nor converted to "
                         f"{target} ({one_line(exc, limit=160)}): not copied")
                    continue
                warn(f"subtitle stream {stream.index} ({name}) cannot be stored in {suffix}: converted to {target} "
                     "(its text and timing kept, its styling dropped)")
            else:
                warn(f"subtitle stream {stream.index} ({name}) cannot be stored in {suffix}: not copied")
                continue
            _copy_tags(stream, self._copied[stream.index].out_stream)
            chosen.append(stream)
        if chosen:
            self._packets = self._src.demux(*chosen)

    def _take_extras(self, path: Path) -> None:
        """The video source's tags, video stream tags, attachments and chapters (module docstring)."""
        import av

        from hw.av_source import main_video_stream

        out = self._out
        fmt, suffix = out.format.name.split(",")[0], Path(out.name).suffix
        try:
            src = open_for_reading(path)
        except av.error.FFmpegError:
            return  # the run reads it as its source: that says what is wrong
        with src:
            for key, value in src.metadata.items():
                if not _STALE_TAG.fullmatch(key):
                    out.metadata[key] = value
            video = main_video_stream(src)
            timecode, timecode_said = None, False
            if video is not None and out.streams.video:
                timecode = next((v for k, v in video.metadata.items() if k.lower() == "timecode"), None)
                if timecode is not None and self._shift is not None and self._shift.cuts_start:
                    self._warn(f"the source's timecode ({timecode}) is not carried: it names the source's first frame, "
                               "and --start begins at another")
                    timecode, timecode_said = None, True
                rate = out.streams.video[0].codec_context.framerate or out.streams.video[0].average_rate
                if timecode is not None and fmt in _EDIT_LIST_FORMATS and rate and rate > 255:
                    # MP4/MOV's timecode track counts frames in one byte: the muxer refuses the file
                    self._warn(f"the source's timecode ({timecode}) is not carried: a {suffix} timecode track holds "
                               f"at most 255 frames a second, and the output has {float(rate):.0f}")
                    timecode, timecode_said = None, True
                _copy_tags(video, out.streams.video[0], drop=() if timecode is not None else ("timecode",))
                source_rate = video.average_rate or video.guessed_rate
                if timecode is not None and rate and source_rate:
                    scaled = _timecode_at(timecode, Fraction(rate) / Fraction(source_rate))
                    for tags in (out.streams.video[0].metadata, out.metadata):
                        for key in [k for k, v in tags.items() if k.lower() == "timecode" and v == timecode]:
                            tags[key] = scaled
            attachments = list(src.streams.attachments)
            if attachments and fmt == "matroska":
                for k, stream in enumerate(attachments):
                    name = stream.metadata.get("filename") or f"attachment-{k}"
                    mimetype = stream.mimetype or stream.metadata.get("mimetype") or "application/octet-stream"
                    out.add_attachment(name, mimetype, bytes(stream.data))
            elif attachments:
                names = ", ".join(s.metadata.get("filename") or f"#{s.index}" for s in attachments[:3])
                self._warn(f"{len(attachments)} attachment(s) ({names}{', ...' if len(attachments) > 3 else ''}) cannot "
                           f"be stored in {suffix}: left out (a .mkv output keeps them)")
            try:
                self._chapters = list(src.chapters())
            except (av.error.FFmpegError, AttributeError):
                self._chapters = []
            mov = src.format.name.split(",")[0] == "mov"  # FFmpeg's demuxer for MP4, MOV, M4V, 3GP
            for stream in src.streams.data:
                tags = {key.lower(): value for key, value in stream.metadata.items()}
                if "timecode" in tags and (timecode is not None or timecode_said):
                    continue  # a timecode track (MOV tmcd): written again from the video's timecode tag
                if (mov and self._chapters and stream.codec_context is None
                        and re.search(r"subtitle|chapter|text", tags.get("handler_name", ""), re.IGNORECASE)):
                    continue  # an MP4's chapter titles (a text track): written again from the chapters
                kind = getattr(stream, "name", None) or tags.get("handler_name") or "no codec FFmpeg knows"
                self._warn(f"data stream {stream.index} ({kind}) left out: framepipe copies audio and subtitles")

    def _write_chapters(self, *, complete: bool) -> None:
        """The source's chapters on the output's clock: moved with the video (--start, a start
        before 0), cut at its end (--end, a stopped run's last frame), those outside left out."""
        if not self._chapters:
            return
        shift = self._shift.shift if self._shift is not None else Fraction(0)
        end = None
        if not complete:
            end = Fraction(self.last_video_seconds)
        elif self._shift is not None and self._shift.end is not None:
            end = Fraction(self._shift.end) - shift
        chapters = []
        for chapter in self._chapters:
            time_base = Fraction(chapter["time_base"])
            start, stop = chapter["start"] * time_base - shift, chapter["end"] * time_base - shift
            start, stop = max(start, Fraction(0)), stop if end is None else min(stop, end)
            if stop > start:
                chapters.append({"id": len(chapters) + 1, "start": round(start / time_base), "end": round(stop / time_base),
                                 "time_base": time_base, "metadata": dict(chapter["metadata"])})
        self._out.set_chapters(chapters)

    def _text_converter(self, stream, target: str) -> _CopiedStream:
        """A `target` text subtitle stream for a text subtitle the container cannot hold: its
        packets are written as plain text (`subtitle_text`), timed in milliseconds."""
        out = self._out.add_stream(target)
        out.codec_context.subtitle_header = _ASS_HEADER  # the encoder writes the stream's header from it
        out.time_base = Fraction(1, 1000)
        return _CopiedStream(out, text_from=stream.codec_context.name)

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

    def _offset(self) -> Fraction:
        """Where the copied streams' time 0 is on the video's clock (`_soundtrack`)."""
        return self._shift.video_start if self._soundtrack and self._shift is not None else Fraction(0)

    def _packet_seconds(self, packet) -> float:
        """When the packet starts, on the video's clock."""
        ts = packet.dts if packet.dts is not None else packet.pts
        if ts is None or packet.time_base is None:
            return float("inf")  # flush packets sort last
        return float(ts * packet.time_base + self._offset())

    def mux_until(self, seconds: float) -> None:
        """Mux every source packet up to `seconds` (interleaving with the video)."""
        while True:
            if self._pending is None:
                self._pending = self._next_packet()
                if self._pending is None:
                    return
            source_seconds = seconds + float(self._shift.shift) if self._shift is not None else seconds
            if self._packet_seconds(self._pending) > source_seconds:
                return
            self._mux(self._pending)
            self._pending = None

    def _mux(self, packet) -> None:
        import av

        copied = self._copied[packet.stream.index]
        moved_by = Fraction(0)  # seconds the packet moves back: the cut's shift
        if self._shift is not None and packet.size:
            if packet.stream.type == "subtitle":
                self._trim_subtitle(packet)  # one on screen at --start is kept, from the start on
            if not self._shift.keeps(self._packet_seconds(packet)):
                return  # outside --start/--end
            moved_by = self._shift.shift - self._offset()
        if copied.reencode:
            try:
                frames = packet.decode()
            except av.error.FFmpegError as exc:
                log.warning("skipped a damaged audio packet (%s)", exc)
                return
            for frame in frames:
                if copied.next_pts is None:  # the re-encoded track starts where the source's audio does
                    start = frame.pts * frame.time_base - moved_by if frame.pts is not None and frame.time_base else 0
                    copied.next_pts = round(start * copied.out_stream.codec_context.sample_rate)
                frame.pts = None
                self._encode_audio(copied, frame)
            return
        if packet.size == 0:
            return
        if copied.text_from is not None:
            converted = self._as_text(packet, copied)
            if converted is not None:
                self._put(converted, copied, moved_by)
            return
        if packet.is_discard and not self._edit_lists:  # held: the last few may be the next one's pre-roll
            self._preroll.setdefault(packet.stream.index, deque(maxlen=16)).append(packet)
            return
        if (copied.end is not None and packet.pts is not None and packet.duration and packet.time_base is not None
                and packet.pts < copied.end < packet.pts + packet.duration
                and (packet.pts + packet.duration - copied.end) * packet.time_base > Fraction(1, 1000)):
            packet.duration = copied.end - packet.pts  # the source's end trim (`_track_end`)
        if self._edit_lists and packet.stream.type == "audio":
            _trim_end_padding(packet, copied, self._out_time_base(copied))
        held = self._preroll.pop(packet.stream.index, None)
        for ready in (*_preroll(held, packet), packet) if held else (packet,):
            self._put(ready, copied, moved_by)

    @staticmethod
    def _out_time_base(copied: _CopiedStream) -> Fraction | None:
        time_base = copied.out_stream.time_base
        return Fraction(time_base) if time_base else None

    def _put(self, packet, copied: _CopiedStream, moved_by: Fraction) -> None:
        """Mux `packet` into `copied`'s output stream, moved back by `moved_by` seconds."""
        if moved_by:
            _move_back(packet, moved_by, copied.out_stream.time_base)
        packet.stream = copied.out_stream
        self._out.mux(packet)
        copied.muxed += 1

    @staticmethod
    def _as_text(packet, copied: _CopiedStream):
        """A converted text subtitle's packet: its text in the target's form, the source's timing."""
        import av

        text = subtitle_text(bytes(packet), copied.text_from)
        if not text:
            return None  # an empty sample: the gap it marked is the output muxer's to mark
        out = av.Packet(_text_payload(text, copied.out_stream.codec_context.name))
        out.time_base = packet.time_base
        out.pts, out.dts, out.duration = packet.pts, packet.dts if packet.dts is not None else packet.pts, packet.duration
        return out

    def _trim_subtitle(self, packet) -> None:
        """A subtitle on screen across the cut's first frame starts at that frame instead, and
        one on screen across a time --end ends there (its duration shortened)."""
        first, end = self._shift.first, self._shift.end or self._shift.planned_end
        if packet.pts is None or not packet.duration or packet.time_base is None:
            return
        offset = float(self._offset())  # on the packets' own clock
        first, end = (first - offset if first is not None else None), (end - offset if end is not None else None)
        end_ticks = packet.pts + packet.duration
        if end is not None:
            cut_ticks = math.floor(Fraction(end) / packet.time_base + Fraction(1, 1000))
            if packet.pts < cut_ticks < end_ticks:
                end_ticks = cut_ticks
                packet.duration = end_ticks - packet.pts
        if first is not None:
            first_ticks = math.ceil(Fraction(first) / packet.time_base - Fraction(1, 1000))
            if packet.pts < first_ticks < end_ticks:
                packet.duration = end_ticks - first_ticks
                packet.pts = packet.dts = first_ticks

    def finish(self, *, complete: bool) -> None:
        """Copy what is left (all of it when complete, else up to the last video time), and
        write the chapters."""
        self._write_chapters(complete=complete)
        self.mux_until(float("inf") if complete else self.last_video_seconds)
        for index, copied in self._copied.items():
            if copied.reencode:
                if complete:
                    self._encode_audio(copied, None)
                for p in copied.out_stream.encode(None):
                    self._out.mux(p)
                    copied.muxed += 1
            stream = self._src.streams[index]
            if not copied.muxed and stream.type == "audio":  # the muxer leaves an empty track out (a subtitle
                # track with no cue inside the frames written is common, and needs no word)
                self._warn(f"audio stream {index} ({stream.codec_context.name}) has nothing within the frames written, "
                           "so the output has none")

    def _encode_audio(self, copied: _CopiedStream, frame) -> None:
        """Resample and encode (None: flush the resampler), the samples timed one after another
        from `next_pts`; the encoder's own start-up delay (AAC's 1024 samples) is in the
        packets it returns, which the muxer stores as the usual priming."""
        rate = copied.out_stream.codec_context.sample_rate
        for rf in copied.resampler.resample(frame):
            rf.pts = copied.next_pts or 0
            rf.time_base = Fraction(1, rate)
            copied.next_pts = rf.pts + rf.samples
            for p in copied.out_stream.encode(rf):
                self._out.mux(p)
                copied.muxed += 1

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None


