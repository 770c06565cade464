"""Exactness of a run end to end on the CPU (issue 2): count, order, timestamps, audio,
subtitles, colour tags, odd sizes, non-4:2:0 sources, sequential == parallel."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from pipeline import RunConfig, run
from tests import probe


def _run(source: Path, out: Path, **kw):
    cfg = RunConfig(source=source, output=out, model=kw.pop("model", "bicubic"), scale=kw.pop("scale", 2),
                    parallel=kw.pop("parallel", True), **kw)
    return run(cfg)


def test_frame_count_and_order_kept(clips, tmp_path, no_stage_threads_left):
    src = clips("plain.mp4", num_frames=40)
    stats = _run(src, tmp_path / "out.mp4", batch_size=3, queue_size=4)
    assert stats.num_frames_decoded == 40
    assert stats.num_frames_written == 40
    assert probe.indices(tmp_path / "out.mp4") == list(range(40))
    assert probe.video_size(tmp_path / "out.mp4") == (128, 96)


def test_sequential_and_parallel_identical(clips, tmp_path):
    src = clips("plain.mp4", num_frames=40)
    _run(src, tmp_path / "seq.mp4", parallel=False)
    _run(src, tmp_path / "par.mp4", parallel=True, batch_size=4, cpu_workers=2)
    seq, par = probe.frames_yuv(tmp_path / "seq.mp4"), probe.frames_yuv(tmp_path / "par.mp4")
    assert len(seq) == len(par) == 40
    for a, b in zip(seq, par):
        np.testing.assert_array_equal(a, b)


def test_variable_frame_rate_timestamps_kept(clips, tmp_path):
    src = clips("vfr.mp4", num_frames=21, vfr=True)
    _run(src, tmp_path / "out.mp4")
    src_pts, out_pts = probe.pts_seconds(src), probe.pts_seconds(tmp_path / "out.mp4")
    assert len(out_pts) == len(src_pts) == 21
    np.testing.assert_allclose(out_pts, src_pts, atol=1e-3)
    steps = np.round(np.diff(out_pts), 4)
    assert set(steps.tolist()) == {round(1 / 24, 4), round(2 / 24, 4)}  # still VFR


def test_duration_within_one_frame(clips, tmp_path):
    src = clips("audio.mp4", num_frames=48, audio=True)
    _run(src, tmp_path / "out.mp4")
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        assert abs(a.duration - b.duration) / 1e6 <= 1 / 24 + 1e-3


def test_audio_copied_unchanged(clips, tmp_path):
    src = clips("audio.mp4", num_frames=48, audio=True)
    _run(src, tmp_path / "out.mp4")
    assert ("audio", "aac") in probe.streams(tmp_path / "out.mp4")
    assert probe.packets(tmp_path / "out.mp4", "audio") == probe.packets(src, "audio")


def test_audio_reencoded_when_container_refuses_codec(clips, tmp_path):
    src = clips("wavpack.mkv", num_frames=24, audio=True, audio_codec="wavpack")
    stats = _run(src, tmp_path / "out.mp4")
    assert ("audio", "aac") in probe.streams(tmp_path / "out.mp4")
    assert any("re-encoded to aac" in w for w in stats.warnings)
    with av.open(str(tmp_path / "out.mp4")) as c:
        seconds = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert seconds == pytest.approx(1.0, abs=0.05)


def test_no_audio_flag_drops_audio(clips, tmp_path):
    src = clips("audio.mp4", num_frames=48, audio=True)
    _run(src, tmp_path / "out.mp4", copy_audio=False)
    assert [k for k, _ in probe.streams(tmp_path / "out.mp4")] == ["video"]


def test_subtitles_copied_where_possible(clips, tmp_path):
    src = clips("subs.mkv", num_frames=48, subtitles=["hello", "world"])
    _run(src, tmp_path / "out.mkv")
    src_subs = [s for s in probe.streams(src) if s[0] == "subtitle"]
    assert len(src_subs) == 1 and src_subs[0] in probe.streams(tmp_path / "out.mkv")
    assert probe.packets(tmp_path / "out.mkv", "subtitle") == probe.packets(src, "subtitle")
    stats = _run(src, tmp_path / "out.mp4")  # MP4 cannot hold SubRip: said, not silent
    assert [k for k, _ in probe.streams(tmp_path / "out.mp4")] == ["video"]
    assert any("subtitle" in w and "not copied" in w for w in stats.warnings)


@pytest.mark.parametrize(
    "tags",
    [(1, 1, 1, 1), (6, 6, 6, 1), (9, 9, 16, 1), (5, 5, 6, 2)],
    ids=["bt709", "bt601", "bt2020-pq", "bt470bg-full"],
)
def test_color_tags_carried(clips, tmp_path, tags):
    src = clips(f"color{tags}.mp4", num_frames=6, color=tags)
    assert probe.color_tags(src) == tags
    _run(src, tmp_path / "out.mp4")
    assert probe.color_tags(tmp_path / "out.mp4") == tags


def test_color_preserved_through_matrix(clips, tmp_path):
    """bt601 full-range source, identity model: colours come back within a few code values."""
    src = clips("full601.mp4", num_frames=6, color=(5, 5, 6, 2))
    _run(src, tmp_path / "out.mp4", scale=1)
    a, b = probe.frames_rgb(src), probe.frames_rgb(tmp_path / "out.mp4")
    assert len(a) == len(b)
    diff = np.abs(a[3].astype(int) - b[3].astype(int))
    assert np.median(diff) <= 2


def test_odd_size_padded_to_even(clips, tmp_path):
    src = clips("odd.mp4", width=65, height=49, num_frames=12, pix_fmt="yuv444p")
    stats = _run(src, tmp_path / "x1.mp4", scale=1)
    assert probe.video_size(tmp_path / "x1.mp4") == (66, 50)  # rule: pad by repeating the last row/column
    assert probe.indices(tmp_path / "x1.mp4") == list(range(12))
    _run(src, tmp_path / "x3.mp4", scale=3)
    assert probe.video_size(tmp_path / "x3.mp4") == (196, 148)
    assert stats.num_frames_written == 12


@pytest.mark.parametrize("pix_fmt", ["yuv444p", "yuv422p", "yuv420p10le"])
def test_non_420_and_10bit_sources(clips, tmp_path, pix_fmt):
    src = clips(f"{pix_fmt}.mkv", num_frames=10, pix_fmt=pix_fmt)
    _run(src, tmp_path / "out.mkv")
    assert probe.indices(tmp_path / "out.mkv") == list(range(10))
    a = probe.frames_rgb(src)[5].astype(int)
    b = probe.frames_rgb(tmp_path / "out.mkv")[5][::2, ::2].astype(int)
    assert np.median(np.abs(a - b)) <= 3


def test_max_frames(clips, tmp_path):
    src = clips("plain.mp4", num_frames=40)
    stats = _run(src, tmp_path / "out.mp4", max_frames=7)
    assert probe.indices(tmp_path / "out.mp4") == list(range(7))
    assert stats.num_frames_expected == 7


def test_max_frames_cuts_the_audio_too(clips, tmp_path):
    """Regression (review): --max-frames kept the whole source's audio."""
    import av

    src = clips("audio.mp4", num_frames=48, audio=True)
    _run(src, tmp_path / "out.mp4", max_frames=12)
    with av.open(str(tmp_path / "out.mp4")) as c:
        audio_seconds = sum(f.samples for f in c.decode(audio=0)) / 48000
    video_seconds = 12 / 24
    assert abs(audio_seconds - video_seconds) <= 1 / 24 + 0.05  # one frame + one AAC packet of slack
