"""The picture writer's thread pool (pipeline/writer.py, issue 13): pictures are compressed a few
at a time (OpenCV releases the GIL), with bounded pictures and bytes in flight, each written
atomically; every picture comes out exact, results are counted in order, and one failed
picture is one error."""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

import main as cli
from core.errors import OutputExists
from pipeline import writer as writing
from pipeline.messages import ResultItem
from pipeline.stats import RunStats
from pipeline.writer import PictureWriter


def _picture(i: int, *, depth: int, alpha: bool, h: int = 20, w: int = 28):
    rng = np.random.default_rng(i)
    top = 255 if depth == 8 else 65535
    dtype = np.uint8 if depth == 8 else np.uint16
    rgb = rng.integers(0, top + 1, (h, w, 3)).astype(dtype)
    return (rgb, rng.integers(0, top + 1, (h, w)).astype(dtype)) if alpha else (rgb,)


def _read(path: Path, fmt: str) -> np.ndarray:
    with av.open(str(path)) as c:  # FFmpeg's decoder: what framepipe reads pictures with
        return next(c.decode(video=0)).reformat(format=fmt).to_ndarray()


def _writer(folder: Path, *, suffix=".png", overwrite=False, **kw) -> PictureWriter:
    folder.mkdir(parents=True, exist_ok=True)
    return PictureWriter(folder, lambda i: f"p_{i:04d}{suffix}", suffix, overwrite=overwrite, stats=RunStats(), **kw)


def _pool_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("writer-picture")]


@pytest.mark.parametrize("suffix", [".png", ".tif"])
@pytest.mark.parametrize("depth, alpha", [(8, False), (16, True)])
def test_every_picture_is_written_exactly(tmp_path, suffix, depth, alpha):
    out = tmp_path / "out"
    w = _writer(out, suffix=suffix, num_threads=3)
    items = [ResultItem(index=i, pts=i, fmt="rgb24" if depth == 8 else "rgb48", planes=_picture(i, depth=depth, alpha=alpha))
             for i in range(17)]
    for item in items:
        assert w.process(item) == []
        assert w.stats.num_frames_written <= item.index + 1
    w.finish()
    assert w.stats.num_frames_written == 17
    w.close(complete=True)
    assert w.closed_cleanly and _pool_threads() == []
    assert sorted(p.name for p in out.iterdir()) == [f"p_{i:04d}{suffix}" for i in range(17)]  # no temporary files left
    fmt = {(8, False): "rgb24", (16, True): "rgba64le"}[(depth, alpha)]
    for item in items:
        want = item.planes[0] if not alpha else np.dstack([item.planes[0], item.planes[1]])
        assert np.array_equal(_read(out / f"p_{item.index:04d}{suffix}", fmt), want)


def _tracking(monkeypatch, *, delay=0.02, fail_on=None):
    """encode_picture replaced by one that records how many run at once (and may fail once)."""
    state = {"now": 0, "most": 0, "lock": threading.Lock(), "calls": []}
    real = writing.encode_picture

    def encode(rgb, alpha, suffix, **kw):
        with state["lock"]:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
            state["calls"].append(int(rgb[0, 0, 0]))
        try:
            time.sleep(delay)
            if fail_on is not None and int(rgb[0, 0, 0]) == fail_on:
                raise RuntimeError(f"OpenCV could not encode picture {fail_on}")
            return real(rgb, alpha, suffix, **kw)
        finally:
            with state["lock"]:
                state["now"] -= 1
    monkeypatch.setattr(writing, "encode_picture", encode)
    return state


def _tagged(i: int) -> ResultItem:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[0, 0, 0] = i  # which picture the encoder is given
    return ResultItem(index=i, pts=i, fmt="rgb24", planes=(rgb,))


def test_pictures_in_flight_are_bounded_by_threads_and_bytes(tmp_path, monkeypatch):
    state = _tracking(monkeypatch)
    w = _writer(tmp_path / "a", num_threads=3)
    for i in range(12):
        w.process(_tagged(i))
        assert len(w._pool._in_flight) <= 3
    w.finish()
    w.close(complete=True)
    assert state["most"] == 3 and sorted(state["calls"]) == list(range(12))
    state = _tracking(monkeypatch)
    w = _writer(tmp_path / "b", num_threads=4, max_bytes_in_flight=16 * 16 * 3 * 3 // 2)  # 1.5 pictures
    for i in range(6):
        w.process(_tagged(i))
    w.finish()
    w.close(complete=True)
    assert state["most"] == 1  # the byte budget lets one picture in at a time (one always goes in)
    assert w.stats.num_frames_written == 6


def test_one_failed_picture_is_one_error_and_the_rest_are_whole(tmp_path, monkeypatch):
    _tracking(monkeypatch, fail_on=5)
    out = tmp_path / "out"
    w = _writer(out, num_threads=3)
    raised = []
    for i in range(12):
        try:
            w.process(_tagged(i))
        except RuntimeError as exc:
            raised.append(str(exc))
            break  # the stage runner posts the error and stops calling process
    else:
        with pytest.raises(RuntimeError) as info:
            w.finish()
        raised.append(str(info.value))
    assert raised == ["picture p_0005.png was not written: OpenCV could not encode picture 5"]
    w.close(complete=False)  # joins the pool; the other failures (none here) are not raised again
    assert w.closed_cleanly and _pool_threads() == []
    names = sorted(p.name for p in out.iterdir())
    assert all(n.endswith(".png") and not n.startswith(".") for n in names)  # whole pictures only, no temporaries
    assert "p_0005.png" not in names and {f"p_{i:04d}.png" for i in range(5)} <= set(names)
    assert w.stats.num_frames_written == len(names)  # counted: the pictures that landed


def test_an_existing_picture_is_a_clear_error_from_the_pool(tmp_path):
    """write_file_atomically's own error (here: the picture exists, no --overwrite) comes out of
    the pool unchanged, once."""
    out = tmp_path / "out"
    w = _writer(out, num_threads=2)
    (out / "p_0002.png").write_bytes(b"mine")
    with pytest.raises(OutputExists, match=r"p_0002.png"):
        for i in range(6):
            w.process(_tagged(i))
        w.finish()
    w.close(complete=False)
    assert (out / "p_0002.png").read_bytes() == b"mine"


@pytest.mark.parametrize("more", [[], ["--interpolate", "3", "--interpolation-model", "blend",
                                         "--scene-threshold", "0"]])
def test_a_run_whose_picture_fails_reports_one_error(tmp_path, monkeypatch, capsys, more):
    """Through the CLI: the pool's failure is the run's one error line, which names the failed
    picture and counts the pictures written right: with --interpolate, the made ones and those
    of a frame whose last picture failed too (it said "No picture was written" with pictures
    there). The pictures written are whole."""
    from hw.pictures import encode_picture

    src = tmp_path / "in"
    src.mkdir()
    for n in range(8):
        (src / f"s_{n}.png").write_bytes(encode_picture(_picture(n, depth=8, alpha=False)[0], None, ".png"))
    calls = itertools.count(1)
    real = writing.encode_picture

    def encode(rgb, alpha, suffix, **kw):
        if next(calls) == 3:  # with --interpolate 3: about the first frame's last picture
            raise RuntimeError("OpenCV could not encode this picture")
        return real(rgb, alpha, suffix, **kw)
    monkeypatch.setattr(writing, "encode_picture", encode)
    out = tmp_path / "out"
    rc = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "1", *more])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if "OpenCV could not encode" in ln]
    assert rc != 0 and len(errors) == 1, err
    pictures = [p for p in out.iterdir() if not p.name.endswith(".json")]  # (the --resume record)
    failed = re.search(r"picture (\S+) was not written", errors[0]).group(1)
    assert 0 < len(pictures) < (22 if more else 8) and failed not in {p.name for p in pictures}
    assert f" {len(pictures)} picture(s) written to " in errors[0], errors[0]
    for p in pictures:
        assert p.suffix == ".png" and _read(p, "rgb24").shape == (20, 28, 3)
    assert _pool_threads() == []


def _packets(pts_in_decode_order, time_base):
    packets = []
    for dts, pts in enumerate(pts_in_decode_order):
        packet = av.Packet(b"\0")
        packet.time_base, packet.pts, packet.dts, packet.duration = time_base, pts, dts - 2, 1
        packets.append(packet)
    return packets


def _settled(durations, packets):
    return [p for packet in packets for p in durations.push(packet)] + list(durations.flush())


def test_matroska_timestamps_are_whole_milliseconds_and_durations_their_differences():
    """Matroska stores milliseconds: the timestamps are rounded as FFmpeg rounds them, and each
    frame lasts until the next one's rounded start. Rounded apart (pts 2515.4 -> 2515, duration
    13.4 -> 13, next 2528.8 -> 2529), a frame lasted 1 ms short or past the next one's start
    (the temporal reviewer, 2026-12-07). B-frame order (decode order differs) is kept."""
    from fractions import Fraction

    from hw.av_encode import PresentationDurations

    time_base = Fraction(1, 3000)
    decode = [0, 81, 40, 160, 121, 241, 205]  # 1/3000 s: shown 0, 13.3, 27, 40.3, 53.3, 68.3, 80.3 ms
    out = _settled(PresentationDurations(reach=4, tick=Fraction(1, 1000)), _packets(decode, time_base))
    assert [p.pts for p in out] == [round(Fraction(t, 3)) for t in decode]  # same order, ms
    assert all(p.time_base == Fraction(1, 1000) for p in out)
    by_pts = sorted(out, key=lambda p: p.pts)
    assert [a.pts + a.duration for a in by_pts[:-1]] == [b.pts for b in by_pts[1:]]
    assert all(p.dts <= p.pts for p in out)


def test_matroska_frames_under_a_millisecond_apart_are_kept_apart(caplog):
    """Frames less than 1 ms apart past the first packets the plan looks at (a variable frame
    rate's burst, interpolated) shared a millisecond: a broken file, silently. Each such frame
    moves to the millisecond after the one before, with one warning, and the frames after it
    stay where they were."""
    from fractions import Fraction

    from hw.av_encode import PresentationDurations

    time_base = Fraction(1, 90000)
    shown = [0, 3000, 3030, 3060, 3090, 6000, 9000]  # 0, 33.3, 33.7, 34, 34.3, 66.7, 100 ms
    durations = PresentationDurations(reach=3, tick=Fraction(1, 1000))
    with caplog.at_level("WARNING"):
        out = _settled(durations, _packets(shown, time_base))
    assert [p.pts for p in out] == [0, 33, 34, 35, 36, 67, 100]
    assert [p.duration for p in out[:-1]] == [33, 1, 1, 1, 31, 33]
    assert durations.moved == 2
    assert len([r for r in caplog.records if "less than 1 ms apart" in r.getMessage()]) == 1


def test_mp4_packets_keep_their_times_and_get_presentation_durations(tmp_path):
    """MP4: timestamps and order untouched, each packet lasting until the next frame shown, and the
    last frame shown as long as the source's last frame (a VFR clip's last frame lasted the average
    one, which also set the file's length)."""
    from fractions import Fraction

    from hw.av_encode import presentation_durations

    with av.open(str(tmp_path / "x.mp4"), "w") as out:
        durations = presentation_durations(out)
        packets = _packets([0, 3, 1], Fraction(1, 90000))
        got = [p for packet in packets for p in durations.push(packet)]
        got += list(durations.flush(last_seconds=Fraction(5, 90000)))
        assert got == packets
        # the last packet decoded (pts 1, a B-frame) is the sample table's last entry: it lasts what
        # makes the table (decode-time deltas 1, 1, then its own) end where the last frame shown
        # ends, 3 + 5 = 8 (with its presentation duration, 2, the track was 4 ticks short)
        assert [(p.pts, p.duration, p.time_base) for p in packets] == [(0, 1, Fraction(1, 90000)), (3, 5, Fraction(1, 90000)),
                                                                      (1, 6, Fraction(1, 90000))]
        assert packets[-1].dts - packets[0].dts + packets[-1].duration == 3 + 5
