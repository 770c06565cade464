"""hw/keyframes.py: the demux-only scan, where a video may be cut, and the spans' packets."""

from __future__ import annotations

import dataclasses
import re

import av
import numpy as np
import pytest

from hw.keyframes import DecodeSpan, PacketScan, cut_points, cut_spans, scan_packets, span_packets

OPEN_GOP = {"x264-params": "keyint=10:min-keyint=10:open-gop=1:bframes=3:scenecut=0"}
CLOSED_GOP = {"x264-params": "keyint=10:min-keyint=10:bframes=3:scenecut=0"}


def forced_keyframes(path, *, num_frames: int, keys: set[int], suffix_options=None):
    """A clip with keyframes exactly at `keys` (x264 never adds one of its own)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        s.options = {"x264-params": "keyint=infinite:scenecut=0:bframes=2", "forced-idr": "1", **(suffix_options or {})}
        rng = np.random.default_rng(1)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), format="rgb24")
            frame.pts = i
            if i in keys:
                frame.pict_type = av.video.frame.PictureType.I
            for packet in s.encode(frame):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def _scan(pts, keyframes, *, discards=(), fmt="mov,mp4,m4a,3gp,3g2,mj2"):
    return PacketScan(format_name=fmt, time_base=1, pts=tuple(pts), keyframes=tuple(keyframes), discards=tuple(discards),
                      first_shape=(64, 48, "yuv420p"))


def test_scan_reads_every_packet_and_the_keyframes(clips):
    clip = clips("kf.mp4", num_frames=40, codec_options=CLOSED_GOP)
    scan = scan_packets(clip)
    with av.open(str(clip)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    assert scan.pts == tuple(p.pts for p in packets)
    assert scan.keyframes == tuple(i for i, p in enumerate(packets) if p.is_keyframe) == (0, 10, 20, 30)
    assert scan.first_shape == (64, 48, "yuv420p") and scan.why_not() is None


def test_open_gop_cuts_have_leading_pictures_and_are_not_clean(clips):
    scan = scan_packets(clips("og.mkv", num_frames=40, codec_options=OPEN_GOP))
    points = cut_points(scan)
    assert len(points) == 3 and cut_points(scan, clean=True) == []
    for q in points:  # every packet before a cut is shown before it; some after it are too (leading)
        assert max(scan.pts[:q]) < scan.pts[q] and min(scan.pts[q + 1:]) < scan.pts[q]
    closed = scan_packets(clips("cg.mkv", num_frames=40, codec_options=CLOSED_GOP))
    assert cut_points(closed, clean=True) == cut_points(closed) == [10, 20, 30]


def test_spans_own_every_packet_once_and_every_frame_once(clips):
    scan = scan_packets(clips("og.mp4", num_frames=60, codec_options=OPEN_GOP))
    for span_frames in (1, 10, 25, 59, 1000):
        spans = cut_spans(scan, span_frames=span_frames)
        assert spans[0].first_packet == 0 and spans[-1].owned_end == scan.num_packets
        assert all(a.owned_end == b.first_packet for a, b in zip(spans, spans[1:]))
        assert all(a.stop_pts == b.start_pts for a, b in zip(spans, spans[1:]))
        assert sum(s.num_frames for s in spans) == 60
        for s in spans:  # every frame a span keeps comes from a packet it feeds
            fed = set(scan.pts[s.first_packet:s.end_packet])
            assert all(p in fed for p in scan.pts if s.keeps(p))
        if span_frames == 1000:
            assert len(spans) == 1 and spans[0].seek_pts is None


def test_cut_needs_everything_before_it_shown_before_it():
    # position 3 is a keyframe, but packet 2 (shown at 9) comes after it: not a cut; 5 is
    scan = _scan([0, 2, 9, 4, 6, 10, 12, 11], keyframes=[0, 3, 5])
    assert cut_points(scan) == [5]
    # no cut before the last packet the demuxer discards (an edit list's pre-roll)
    assert cut_points(_scan([0, 1, 2, 3, 4, 5], keyframes=[0, 2, 4], discards=[0, 1, 2])) == [4]


def test_an_open_cut_needs_a_keyframe_before_it():
    # a stream that starts without a keyframe: 3 (pts 5) has leading pictures (3, 4) and no
    # keyframe before it to pre-roll from; 6 (pts 8) has keyframe 3 before it
    scan = _scan([0, 1, 2, 5, 3, 4, 8, 6, 7], keyframes=[3, 6])
    assert cut_points(scan) == [6] and cut_points(scan, clean=True) == []
    assert [s.first_packet for s in cut_spans(scan, span_frames=1)] == [0, 6]


def test_decode_order_timestamps_are_not_cut(clips, tmp_path):
    """A muxer that wrote decode times as timestamps (they ascend in decode order, the frames
    come out in another): a span's frames are not those of its timestamps. B-frames with
    presentation times, and no B-frames, are cut."""
    source = clips("og.mkv", num_frames=40, codec_options=OPEN_GOP)
    dest = tmp_path / "dts.mkv"
    with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
        ost = out.add_stream_from_template(inp.streams.video[0])
        packets = [p for p in inp.demux(inp.streams.video[0]) if p.size]
        for packet, pts in zip(packets, sorted(p.pts for p in packets)):
            packet.pts = packet.dts = pts
            packet.stream = ost
            out.mux(packet)
    scan = scan_packets(dest)
    assert scan.why_not() == "its timestamps are not in presentation order (the muxer wrote decode times)"
    assert len(cut_spans(scan, span_frames=1)) == 1
    assert scan_packets(source).why_not() is None
    assert scan_packets(clips("nob.mp4", num_frames=30, codec_options={"g": "10", "bf": "0"})).why_not() is None


@pytest.mark.parametrize("pts, keyframes, fmt, reason", [
    ([0, None, 2, 3], [0, 2], "matroska,webm", "1 of its packets have no timestamp"),
    ([0, 1, 1, 3], [0, 2], "matroska,webm", "share a timestamp"),
    ([0, 1, 2, 3], [0], "matroska,webm", "a single keyframe"),
    ([0, 1, 2, 3], [0, 2], "avi", r"its container \(avi\) has no index"),
    ([0, 1, 2, 3], [0, 2], "mpegts", r"its container \(mpegts\)"),
])
def test_videos_that_are_not_cut(pts, keyframes, fmt, reason):
    scan = _scan(pts, keyframes, fmt=fmt)
    assert scan.why_not() is not None and re.search(reason, scan.why_not())
    assert len(cut_spans(scan, span_frames=1)) == 1


def test_demux_error_is_not_cut():
    scan = dataclasses.replace(_scan([0, 1, 2, 3], [0, 2]), error="Invalid data found")
    assert scan.why_not() == "the container could not be read to its end (Invalid data found)"


def test_a_keyframe_less_tail_stays_with_the_last_cut(tmp_path):
    scan = scan_packets(forced_keyframes(tmp_path / "tail.mp4", num_frames=120, keys={0, 6, 13}))
    spans = cut_spans(scan, span_frames=4)
    assert [s.first_packet for s in spans] == [0, 6, 13] and spans[-1].num_frames == 107


def test_a_short_tail_joins_the_span_before_it():
    scan = _scan(range(30), keyframes=[0, 10, 20, 28])
    assert [s.first_packet for s in cut_spans(scan, span_frames=8)] == [0, 10, 20]  # 28: a 2-frame tail


@pytest.mark.parametrize("name", ["og.mp4", "og.mkv"])
def test_span_packets_seek_to_the_keyframe(clips, name):
    clip = clips(name, num_frames=60, codec_options=OPEN_GOP)
    scan = scan_packets(clip)
    for span in cut_spans(scan, span_frames=1):
        with av.open(str(clip)) as c:
            got = [(q, p.pts) for q, p in span_packets(c, c.streams.video[0], span)]
        assert got == [(q, scan.pts[q]) for q in range(span.first_packet, span.end_packet)]


def test_span_packets_landing_elsewhere_is_a_broken_contract(clips):
    clip = clips("og.mp4", num_frames=60, codec_options=OPEN_GOP)
    span = cut_spans(scan_packets(clip), span_frames=1)[2]
    lost = dataclasses.replace(span, landmarks=((-99, 0),))  # no keyframe the seek can land on is known
    with av.open(str(clip)) as c, pytest.raises(RuntimeError, match=r"decode span #2: seeking .* landed elsewhere\. "
                                                                     r"Run with --decoders 1"):
        list(span_packets(c, c.streams.video[0], lost))


def test_span_checks_itself():
    with pytest.raises(ValueError, match=r"DecodeSpan #1: positions 5 < 5 <= 6 <= 9 do not hold"):
        DecodeSpan(index=1, first_packet=5, end_packet=6, owned_end=5, start_pts=5, stop_pts=None, num_frames=0,
                   num_packets_total=9, seek_pts=5)
    with pytest.raises(ValueError, match=r"DecodeSpan #1: a span after the first needs its keyframe's seek_pts"):
        DecodeSpan(index=1, first_packet=5, end_packet=9, owned_end=9, start_pts=5, stop_pts=None, num_frames=4,
                   num_packets_total=9)
    with pytest.raises(ValueError, match="cut_spans needs a video with at least one packet"):
        cut_spans(_scan([], []), span_frames=1)


def test_timestamps_that_jump_back_are_not_cut():
    """Two videos joined end to end, the second's timestamps starting again below the first's
    (unique all the same): presentation order by timestamp is not the decoder's, so no cut; a
    B-pyramid's reordering (a few packets back) is no jump."""
    first = [0, 30, 10, 20, 60, 40, 50] + [70 + 10 * i for i in range(40)]
    assert _scan(first, [0, 4, 20]).why_not() is None
    joined = first + [5 + 10 * i for i in range(3)] + [1000 + 10 * i for i in range(40)]
    assert "jump back in time at packet 47" in _scan(joined, [0, 4, 20, 47, 60]).why_not()
