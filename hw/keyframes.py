"""Where a video can be cut for several decoders: a demux-only pass over its packets (PyAV).

`scan_packets(path)` reads every video packet's timestamp and keyframe flag without decoding
(cheap next to decoding: no picture is made), and `cut_spans(scan, ...)` cuts the stream at
keyframes into consecutive `DecodeSpan`s, each decodable alone, that together give exactly
the frames one decoder gives: the same pictures, timestamps and order.

How a cut is made exact
-----------------------
Positions count the video packets (those with data) in decode order from 0. A keyframe at
position p with timestamp T is a cut when every packet before it has a timestamp below T
(nothing decoded before the cut is shown after it) and no packet the demuxer marks discard
(an MP4 edit list's pre-roll) comes after it, and (H.264/HEVC) every parameter set sent in a
packet before it is in the stream's configuration record or in the keyframe's own packet (a
decoder starting there has only those: `_ParameterSets`). The span from that cut keeps the
frames with T <= pts < T' (T' the next cut's), so each frame belongs to exactly one span by its
timestamp. Its decoder seeks to the keyframe, skips (demux only) to position p, and feeds
until the last packet whose frame it keeps, then flushes. With an open GOP, the pictures
after the next keyframe in decode order but shown before it (leading pictures: they refer
to this span's frames) are decoded by this span, which has their references; the next span's
decoder drops them by timestamp. A "clean" cut also has no leading pictures (every packet
after it has a larger timestamp): NVDEC needs that (hw/nvdec.py pairs frames with timestamps
by count, so a picture it silently drops at a cut would shift every timestamp after it).

A video is cut only where that holds by construction: MP4/MOV and Matroska/WebM (their
seeking is by an index, exact), every packet with a timestamp, no two the same, timestamps
that are presentation times (frames come out of the decoder in timestamp order). Otherwise
`cut_spans` returns one span (the whole video) and `why_not` says why, in one line.
"""

from __future__ import annotations

import bisect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from hw.annexb import PARAMETER_SET_TYPES, config_parameter_sets, nal_type, split_annexb
from hw.av_source import fraction, main_video_stream, open_input

__all__ = ["DecodeSpan", "PacketScan", "scan_packets", "cut_spans", "span_packets", "SPLITTABLE_FORMATS"]

log = logging.getLogger(__name__)

# Containers whose seeking lands on the asked keyframe through an index (checked anyway).
SPLITTABLE_FORMATS = ("mov", "mp4", "matroska", "webm")
_FIRST_FRAME_PACKETS = 64  # packets the scan decodes at most to learn the first frame's shape
# Packets the scan decodes at most to see whether frames come out in timestamp order, for a codec
# that reorders whose packets' timestamps all ascend in decode order (no B-frames, or the muxer
# wrote decode times): the first mini-GOPs show it.
_ORDER_PACKETS = 32
# A frame is shown after at most this many frames decoded after it (H.264/HEVC keep at most 16
# reordered pictures): a timestamp below one this far back in decode order is a jump back in
# time (files joined end to end), which presentation order by timestamp would not keep.
_REORDER_DEPTH = 32


@dataclass(frozen=True)
class DecodeSpan:
    """One decoder's part of a video (positions: video packets in decode order, from 0).

    The decoder feeds packets [first_packet, end_packet), then flushes, and keeps the frames
    with start_pts <= pts < stop_pts (None: unbounded). It counts the packets
    [first_packet, owned_end) as its own (decoded, corrupt), so each packet is counted once
    although leading pictures after a cut are fed to two decoders. `seek_pts` is the
    keyframe's timestamp (None: read from the start); `landmarks` are (pts, position) of the
    keyframes a seek may land on, so the decoder knows where it is after seeking.

    `preroll_packet`/`preroll_pts`: the keyframe before an open cut (None at a clean one). After
    an open GOP's I picture the reference buffer still holds the GOP before; a decoder that
    started at the cut lacks it, which changes nothing for an intact stream, but a damaged
    picture is concealed from what the buffer holds. A decoder meeting damage in such a span
    decodes again from the pre-roll keyframe (hw.av_decode), as one decoder would have it.
    """

    index: int
    first_packet: int
    end_packet: int
    owned_end: int
    start_pts: int | None
    stop_pts: int | None
    num_frames: int  # frames it yields when every packet decodes (packets kept, not discarded)
    num_packets_total: int  # packets in the whole stream (the last span's truncation check)
    seek_pts: int | None = None
    landmarks: tuple[tuple[int, int], ...] = ()
    preroll_packet: int | None = None
    preroll_pts: int | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.first_packet < self.owned_end <= self.end_packet <= self.num_packets_total:
            raise ValueError(f"DecodeSpan #{self.index}: positions {self.first_packet} < {self.owned_end} <= "
                             f"{self.end_packet} <= {self.num_packets_total} do not hold")
        if (self.first_packet == 0) != (self.seek_pts is None):
            raise ValueError(f"DecodeSpan #{self.index}: a span after the first needs its keyframe's seek_pts")

    @property
    def is_last(self) -> bool:
        return self.owned_end == self.num_packets_total

    def keeps(self, pts: int | None) -> bool:
        """Whether the frame with this timestamp is this span's (a frame without one is kept)."""
        if pts is None:
            return True
        return (self.start_pts is None or pts >= self.start_pts) and (self.stop_pts is None or pts < self.stop_pts)

    def __repr__(self) -> str:
        return (f"DecodeSpan(#{self.index}, packets {self.first_packet}..{self.owned_end}"
                f"{'' if self.end_packet == self.owned_end else f' (+{self.end_packet - self.owned_end} fed)'}, "
                f"pts [{self.start_pts}, {self.stop_pts}), {self.num_frames} frames)")


@dataclass(frozen=True)
class PacketScan:
    """Every video packet's timestamp, in decode order, and which are keyframes / discarded."""

    format_name: str
    time_base: Fraction
    pts: tuple[int | None, ...]
    keyframes: tuple[int, ...]  # positions
    discards: tuple[int, ...]  # positions of packets the demuxer marks discard
    first_shape: tuple[int, int, str] | None  # (width, height, pix_fmt) of the first decoded frame
    error: str | None = None  # the demuxer stopped early with this error (then the video is not cut)
    decode_order_pts: bool = False  # frames came out of the decoder out of timestamp order (scan_packets)
    missing_sets: tuple[int, ...] = ()  # keyframes a decoder starting at would lack a parameter set (not cuts)

    @property
    def num_packets(self) -> int:
        return len(self.pts)

    def why_not(self) -> str | None:
        """Why this video cannot be cut exactly (one line), or None if it can."""
        if self.error is not None:
            return f"the container could not be read to its end ({self.error})"
        names = set(self.format_name.split(","))
        if not names & set(SPLITTABLE_FORMATS):
            return f"its container ({self.format_name.split(',')[0]}) has no index to seek by exactly; MP4/MOV/MKV/WebM do"
        known = [p for p in self.pts if p is not None]
        if len(known) < len(self.pts):
            return f"{len(self.pts) - len(known)} of its packets have no timestamp"
        if len(set(known)) < len(known):
            return "some of its frames share a timestamp"
        if self.decode_order_pts:
            return "its timestamps are not in presentation order (the muxer wrote decode times)"
        back = _jump_back(known)
        if back is not None:
            return f"its timestamps jump back in time at packet {back}"
        if len(self.keyframes) < 2:
            return "it has a single keyframe"
        return None


def _jump_back(pts: list[int]) -> int | None:
    """The first position whose timestamp is below one `_REORDER_DEPTH` or more packets before
    it (more than a decoder reorders), or None."""
    high = None
    for q in range(_REORDER_DEPTH, len(pts)):
        back = pts[q - _REORDER_DEPTH]
        high = back if high is None else max(high, back)
        if pts[q] < high:
            return q
    return None


def scan_packets(path: str | os.PathLike) -> PacketScan:
    """Demux (never decode, but the first frames) the video stream of `path` (`main_video_stream`)."""
    import av

    container = open_input(Path(path))
    try:
        stream = main_video_stream(container)
        first_shape = None
        pts: list[int | None] = []
        keyframes: list[int] = []
        discards: list[int] = []
        missing_sets: list[int] = []
        parameter_sets = _ParameterSets.of(stream)
        # A codec that reorders, its packets' timestamps ascending in decode order so far: decode
        # to see the frames come out in that order too (a few packets; see _ORDER_PACKETS).
        check_order = bool(stream.codec_context.codec.reorder)
        shown: list[int] = []  # the decoded frames' timestamps, while checked
        error = None
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                if packet.is_keyframe:
                    keyframes.append(len(pts))
                if packet.is_discard:
                    discards.append(len(pts))
                if parameter_sets is not None and parameter_sets.missing_at(packet):
                    missing_sets.append(len(pts))
                if check_order and pts and (packet.pts is None or pts[-1] is None or packet.pts < pts[-1]):
                    check_order = False  # reordered in the packets: presentation times
                pts.append(packet.pts)
                order = check_order and len(pts) <= _ORDER_PACKETS
                if (first_shape is None and len(pts) <= _FIRST_FRAME_PACKETS) or order:
                    frames = _decode(packet)
                    if first_shape is None and frames:
                        first_shape = frames[0].width, frames[0].height, frames[0].format.name
                    if order:
                        shown += [frame.pts for frame in frames if frame.pts is not None]
        except av.error.FFmpegError as exc:
            error = str(exc)
        return PacketScan(format_name=container.format.name, time_base=fraction(stream.time_base) or Fraction(1, 90000),
                          pts=tuple(pts), keyframes=tuple(keyframes), discards=tuple(discards),
                          first_shape=first_shape, error=error,
                          decode_order_pts=check_order and any(b < a for a, b in zip(shown, shown[1:])),
                          missing_sets=tuple(missing_sets))
    finally:
        container.close()


def _decode(packet) -> list:
    """The frames a packet gives (the first one's size and pixel format: every span converts to
    it, as one decoder converts to its first: hw.av_decode); none where it does not decode."""
    import av

    try:
        return list(packet.decode())
    except (av.error.FFmpegError, ValueError):
        return []


class _ParameterSets:
    """H.264/HEVC parameter sets (VPS/SPS/PPS) sent in packets, against the configuration record.

    A decoder starting at a keyframe knows the record's sets and those in the keyframe's packet;
    one decoder also knows every set sent in a packet before (a stream that changes size mid-way
    may send the new ones once). A keyframe where that may differ is not a cut: where a set sent
    before it is neither in the record nor in its packet (compared by content: ids are not
    parsed, so a set sent again unchanged is no reason)."""

    def __init__(self, codec: str, extradata: bytes) -> None:
        self._codec = codec
        self._wanted = PARAMETER_SET_TYPES[codec]
        self._known = {nal.rstrip(b"\x00") for nal in split_annexb(config_parameter_sets(extradata, codec=codec))}
        self._sent: set[bytes] = set()  # sets sent in packets, not in the record
        # The NAL units' length size of an avcC/hvcC record (its lengthSizeMinusOne); 0: Annex-B packets
        at = 21 if codec == "hevc" else 4
        self._length_size = (extradata[at] & 3) + 1 if len(extradata) > at and extradata[0] == 1 else 0

    @classmethod
    def of(cls, stream) -> "_ParameterSets | None":
        codec = stream.codec_context.name
        return cls(codec, bytes(stream.codec_context.extradata or b"")) if codec in ("h264", "hevc") else None

    def missing_at(self, packet) -> bool:
        """Whether a decoder starting at this packet (a keyframe) would lack a set sent before it."""
        found = self._sets(memoryview(packet))
        missing = bool(packet.is_keyframe) and not self._sent <= found
        self._sent |= found - self._known
        return missing

    def _sets(self, data: memoryview) -> set[bytes]:
        nals = self._length_prefixed(data) if self._length_size else None
        if nals is None:
            nals = split_annexb(bytes(data))
        return {bytes(nal).rstrip(b"\x00") for nal in nals if len(nal) and nal_type(nal, self._codec) in self._wanted}

    def _length_prefixed(self, data: memoryview) -> list[memoryview] | None:
        """The NAL units of a packet in the record's form, or None where the lengths do not add up."""
        nals, pos, size = [], 0, self._length_size
        while pos + size <= len(data):
            length = int.from_bytes(data[pos:pos + size], "big")
            pos += size
            if length == 0 or pos + length > len(data):
                return None
            nals.append(data[pos:pos + length])
            pos += length
        return nals if pos == len(data) else None


def cut_points(scan: PacketScan, *, clean: bool = False) -> list[int]:
    """Positions of the keyframes the video may be cut at (see the module's docstring). An open
    cut (leading pictures after it) needs a keyframe before it: its pre-roll (`DecodeSpan`)."""
    pts = scan.pts
    n = len(pts)
    after_discard = (scan.discards[-1] + 1) if scan.discards else 1
    suffix_min = [0] * n  # the smallest timestamp after position q
    low = None
    for q in range(n - 1, -1, -1):
        suffix_min[q] = low if low is not None else pts[q] + 1
        low = pts[q] if low is None else min(low, pts[q])
    points = []
    keys = set(scan.keyframes) - set(scan.missing_sets)
    first_key = scan.keyframes[0] if scan.keyframes else n
    high = None  # the largest timestamp before position q
    for q in range(n):
        if q in keys and q >= after_discard and high is not None and pts[q] > high:
            if suffix_min[q] > pts[q] or (not clean and q > first_key):
                points.append(q)
        high = pts[q] if high is None else max(high, pts[q])
    return points


def cut_spans(scan: PacketScan, *, span_frames: int, clean: bool = False,
              max_spans: int | None = None) -> tuple[DecodeSpan, ...]:
    """Consecutive spans of about `span_frames` frames each (at least that many, cut at the first
    keyframe past it; a short tail joins the span before it). One span when the video cannot be
    cut (`scan.why_not()`) or is too short."""
    n = scan.num_packets
    if n == 0:
        raise ValueError("cut_spans needs a video with at least one packet")
    points = [] if scan.why_not() is not None else cut_points(scan, clean=clean)
    cuts = [0]
    for q in points:
        if q - cuts[-1] >= span_frames and n - q >= max(1, span_frames // 2):
            cuts.append(q)
            if max_spans is not None and len(cuts) == max_spans:
                break
    pts = scan.pts
    starts = [pts[q] for q in cuts[1:]]  # ascending: a cut's timestamp is above every one before it
    num_frames = [0] * len(cuts)
    last_fed = [0] * len(cuts)
    discards = set(scan.discards)
    for q, t in enumerate(pts):
        if t is not None and q not in discards:
            k = bisect.bisect_right(starts, t)
            num_frames[k] += 1
            last_fed[k] = q
    spans = []
    for k, first in enumerate(cuts):
        owned_end = cuts[k + 1] if k + 1 < len(cuts) else n
        start = pts[first] if k > 0 else None
        stop = pts[owned_end] if k + 1 < len(cuts) else None
        landmarks: tuple[tuple[int, int], ...] = ()
        preroll = None
        if k > 0:  # where a seek may land: the keyframes since the span before, and the first packet
            landmarks = tuple((pts[q], q) for q in scan.keyframes if cuts[k - 1] <= q <= first)
            landmarks = ((pts[0], 0),) + landmarks
            if last_fed[k - 1] >= first:  # an open cut: the span before feeds this one's leading pictures
                preroll = max(q for q in scan.keyframes if q < first)
        spans.append(DecodeSpan(index=k, first_packet=first, end_packet=max(owned_end, last_fed[k] + 1),
                                owned_end=owned_end, start_pts=start, stop_pts=stop, num_frames=num_frames[k],
                                num_packets_total=n, seek_pts=start, landmarks=landmarks, preroll_packet=preroll,
                                preroll_pts=pts[preroll] if preroll is not None else None))
    return tuple(spans)


def span_packets(container, stream, span: DecodeSpan, *, preroll: bool = False) -> Iterator[tuple[int, object]]:
    """(position, packet) for the packets a span feeds, [first_packet, end_packet), in decode
    order (with `preroll`, from its pre-roll keyframe): seek to the keyframe, then skip (demux
    only) to it. Raises `RuntimeError` (a broken internal contract: the video was cut where it
    should not have been) when the seek lands where the span cannot tell its position."""
    first, seek_pts = (span.preroll_packet, span.preroll_pts) if preroll else (span.first_packet, span.seek_pts)
    if first is None:
        raise ValueError(f"decode span #{span.index} has no pre-roll keyframe (a clean cut)")
    position = 0
    packets = container.demux(stream)
    if first > 0:
        packets, position = _seek(container, stream, span, first, seek_pts)
    for packet in packets:
        if not packet.size:
            continue  # PyAV's end-of-stream marker
        if position >= span.end_packet:
            return
        if position >= first:
            yield position, packet
        position += 1


def _seek(container, stream, span: DecodeSpan, first: int, seek_pts: int | None):
    """Seek to the keyframe at position `first`; (packets from there, the position of the first one)."""
    marks = dict(span.landmarks)
    for target in (seek_pts, min(marks) if marks else None):
        if target is None:
            continue
        container.seek(target, stream=stream, backward=True, any_frame=False)
        packets = container.demux(stream)
        for packet in packets:
            if not packet.size:
                continue
            position = marks.get(packet.pts)
            if position is not None and position <= first:
                return _chain(packet, packets), position
            log.debug("span #%d: a seek to %s landed on pts %s, not a known keyframe at or before position %d",
                      span.index, target, packet.pts, first)
            break
    raise RuntimeError(f"decode span #{span.index}: seeking to the keyframe at packet {first} "
                       f"(pts {seek_pts}) landed elsewhere. Run with --decoders 1.")


def _chain(first, rest) -> Iterator:
    yield first
    yield from rest

