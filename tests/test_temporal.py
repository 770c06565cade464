"""Temporal models (issue 15): windows, frame interpolation through the whole pipeline, chains.

The pipeline tests use the built-in `blend` interpolator (a cross-fade: exact arithmetic, no
weights), so every made frame can be checked against its neighbours; RIFE itself is checked
against its reference package in tests/test_rife.py, and runs through the pipeline once here.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.frame import Frame
from core.errors import InvalidOption, UnsafeOutput
from pipeline import RunConfig
from pipeline.reader import windows
from pipeline.runner import run
from tests import probe


def _frames(n: int) -> list[Frame]:
    return [Frame(index=i, pts=10 * i, fmt="rgb24", planes=(np.full((2, 2, 3), i, np.uint8),)) for i in range(n)]


@pytest.mark.parametrize("before,after,pad", [(0, 1, False), (1, 1, True), (2, 2, True), (0, 2, True), (3, 0, True)])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7])
def test_windows_every_position(n, before, after, pad):
    """Each frame's window exactly once, in order, its neighbours the right ones, clamped (or cut
    short for interpolation) at both ends, at every position of a video of every short length."""
    out = list(windows(_frames(n), before, after, pad_ends=pad))
    assert [w.index for w in out] == list(range(n))
    for w in out:
        i = w.index
        want = [min(max(j, 0), n - 1) for j in range(i - before, i + after + 1)]
        if not pad:
            want = [j for j in range(i - before, i + after + 1) if 0 <= j < n]
        assert [f.index for f in w.frames] == want, (n, i)
        assert w.frame.index == i and w.pts == 10 * i


def _run(src: Path, out: Path, **kw) -> object:
    kw.setdefault("device", "cpu")
    kw.setdefault("overwrite", True)
    kw.setdefault("crf", 0)
    kw.setdefault("preset", "ultrafast")
    return run(RunConfig(source=src, output=out, **kw))


def _expected_pts(src_pts: list[Fraction], n: int) -> list[Fraction]:
    out = []
    for a, b in zip(src_pts, src_pts[1:]):
        out += [a + (b - a) * k / n for k in range(n)]
    return out + src_pts[-1:]


@pytest.mark.parametrize("factor", [2, 3])
@pytest.mark.parametrize("batch,parallel", [(1, True), (2, True), (3, False), (5, True)])
def test_interpolate_counts_timestamps_and_pixels(clips, tmp_path, factor, batch, parallel):
    """(N-1) x (n-1) + n frames; each source frame where it was, each made frame at k/N between
    its neighbours' timestamps (VFR stays VFR, to the tick); a made frame is the cross-fade of
    its neighbours — at every batch boundary (batch sizes 1, 2, 3, 5 over 11 frames)."""
    src = clips("vfr.mp4", num_frames=11, vfr=True)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, model="bicubic", scale=1, interpolate=factor, interpolation_model="blend",
                 scene_threshold=0, batch_size=batch, parallel=parallel, cpu_workers=2 if parallel else 1)
    n = 11
    assert stats.num_frames_written == n and stats.num_frames_made == (factor - 1) * (n - 1)
    src_pts, out_pts = probe.pts_exact(src), probe.pts_exact(out)
    assert len(out_pts) == (factor - 1) * (n - 1) + n
    assert out_pts == _expected_pts(src_pts, factor)
    frames = [f.astype(np.float64) for f in probe.frames_rgb(out)]
    for j in range(n - 1):
        a, b = frames[j * factor], frames[(j + 1) * factor]
        for k in range(1, factor):
            made = frames[j * factor + k]
            want = a * (1 - k / factor) + b * k / factor
            assert np.abs(made - want).mean() < 1.5, (j, k)  # 4:2:0 rounding of a blend, not another frame
            if np.abs(a - b).mean() > 3:
                assert np.abs(made - a).mean() > 0.2 and np.abs(made - b).mean() > 0.2


def test_interpolate_keeps_audio_and_output_rate(clips, tmp_path):
    src = clips("audio.mp4", num_frames=24, audio=True)
    out = tmp_path / "out.mp4"
    _run(src, out, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0)
    assert ("audio", "aac") in probe.streams(out)
    assert probe.packets(out, "audio") == probe.packets(src, "audio")  # copied, untouched
    import av

    with av.open(str(out)) as c:
        assert c.streams.video[0].base_rate == 48  # CFR doubled exactly (the average counts the last frame once)


@pytest.mark.parametrize("vfr", [False, True])
@pytest.mark.parametrize("segmented", [False, True])
def test_an_interpolated_video_lasts_as_long_as_its_source(clips, tmp_path, segmented, vfr):
    """The last source frame has no frame made after it, so it must last its own source duration
    (N output frames): an --interpolate 2 MP4 of a 1 s video was 0.979 s long (its sample table
    ended a frame early), whole or joined from segments; a VFR one of 1.292 s was 1.250 s (its
    last frame decoded further behind its timestamp than the first)."""
    import av

    src = clips("vfr21.mp4", num_frames=21, vfr=True) if vfr else clips("audio.mp4", num_frames=24, audio=True)
    out = tmp_path / "out.mp4"
    _run(src, out, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0,
         preset="medium", crf=23,  # B-frames: the last frames decoded are reordered
         **({"segment_frames": 8, "encoders": 2} if segmented else {}))
    with av.open(str(src)) as c:
        want = c.streams.video[0].duration * c.streams.video[0].time_base
        frames = c.streams.video[0].frames
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert video.frames == 2 * frames - 1
        # (the VFR clip's edit list trims its last frame by 0.7 ms: its sample table says 1/24 s)
        assert abs(video.duration * video.time_base - want) < Fraction(1, 1000), float(video.duration * video.time_base)
        assert abs(Fraction(c.duration, 1_000_000) - want) < Fraction(1, 1000)  # the edit list ends it there too


def test_chain_equals_two_passes(clips, tmp_path):
    """--model bicubic --scale 2 --interpolate 2 in one pass == bicubic x2 to 16-bit pictures, then
    --interpolate 2 over those pictures (within one code: the 16-bit pictures between the passes)."""
    src = clips("plain.mp4", num_frames=7)
    one = tmp_path / "one"
    _run(src, one, model="bicubic", scale=2, interpolate=2, interpolation_model="blend", scene_threshold=0,
         bit_depth=16)
    mid = tmp_path / "mid"
    _run(src, mid, model="bicubic", scale=2, bit_depth=16)
    two = tmp_path / "two"
    _run(mid, two, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0,
         bit_depth=16, fps="24")
    a, b = _listed(one), _listed(two)
    assert len(a) == len(b) == 6 + 7
    for x, y in zip(a, b):
        pa = cv2.imread(str(x), cv2.IMREAD_UNCHANGED).astype(np.int64)
        pb = cv2.imread(str(y), cv2.IMREAD_UNCHANGED).astype(np.int64)
        assert pa.shape == pb.shape == (96, 128, 3)
        assert np.abs(pa - pb).max() <= 1, (x.name, y.name)


def _listed(folder: Path) -> list[Path]:
    """The pictures in `folder` (not framepipe's hidden run record)."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _picture_folder(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir()
    for i, f in enumerate(frames):
        cv2.imwrite(str(folder / f"f_{i:04d}.png"), f)
    return folder


def test_scene_cut_repeats_the_frame(tmp_path):
    """Across a hard cut the made frame is the first shot's last frame, not a blend of two shots;
    within a shot, frames are blended. Pictures in and out: exact values, numbered afresh."""
    pytest.importorskip("models.rife")
    rng = np.random.default_rng(1)
    shot_a = np.clip(rng.normal(120, 40, (48, 64, 3)), 0, 255).astype(np.uint8)
    shot_b = np.clip(rng.normal(60, 60, (48, 64, 3)), 0, 255).astype(np.uint8)[:, ::-1]
    frames = [np.clip(shot_a.astype(int) + 2 * i, 0, 255).astype(np.uint8) for i in range(4)]
    frames += [np.clip(shot_b.astype(int) + 2 * i, 0, 255).astype(np.uint8) for i in range(3)]
    src = _picture_folder(tmp_path / "src", frames)
    out = tmp_path / "out"
    stats = _run(src, out, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", fps="24")
    pics = _listed(out)
    assert len(pics) == 6 + 7
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in pics]
    for i, f in enumerate(frames):
        np.testing.assert_array_equal(got[2 * i], f)
    np.testing.assert_array_equal(got[7], frames[3])  # between frame 3 (shot A) and 4 (shot B): a cut
    within = (frames[1].astype(float) + frames[2]) / 2
    assert np.abs(got[3] - within).max() <= 1  # inside shot A: blended
    assert sum(w.num_scene_cuts for w in stats.workers.values()) == 1


def test_default_output_name_and_bad_options(clips, tmp_path):
    from pipeline.config import default_output_path

    src = Path("/v/clip.mp4")
    assert default_output_path(src, model_name="bicubic", scale=1, interpolate=2, identity=True).name == "clip.fps2x.mp4"
    assert (default_output_path(src, model_name="realesr-animevideov3", scale=4, interpolate=3).name
            == "clip.realesr-animevideov3-x4.fps3x.mp4")
    for bad in (dict(interpolate=0), dict(interpolate=99), dict(scene_threshold=1.5), dict(split_transport="tcp")):
        with pytest.raises(InvalidOption):
            RunConfig(source=clips("plain.mp4", num_frames=7), **bad).validate()


def test_segments_of_any_size_match_one_file(clips, tmp_path):
    """Interpolated output through segments (1 frame, 4 frames, longer than the clip) gives the
    same frames and timestamps as one file: a made frame after a segment's last source frame
    is in that segment, its window holding the next segment's first frame."""
    src = clips("vfr.mp4", num_frames=11, vfr=True)
    whole = tmp_path / "whole.mp4"
    _run(src, whole, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0)
    for size in (1, 4, 50):
        seg = tmp_path / f"seg{size}.mp4"
        _run(src, seg, model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0,
             segment_frames=size, encoders=2)
        probe.assert_same_video(whole, seg)
    st = _run(src, tmp_path / "counted.mp4", model="bicubic", scale=1, interpolate=2, interpolation_model="blend",
              scene_threshold=0, segment_frames=4, encoders=2)
    assert (st.num_frames_written, st.num_frames_made) == (11, 10)  # source frames, and frames made


def test_kill_9_then_resume_interpolated_is_frame_exact(clips, tmp_path):
    """A real process killed with SIGKILL mid-run (interpolating, segmented), then --resume: the
    same frames, timestamps and audio as an uninterrupted run; the window of a segment's last
    frame reaches into the next (finished or not) segment's first frame."""
    from tests.test_segments import LOSSLESS, _kill_mid_run

    src = clips("seg-long.mp4", num_frames=120, audio=True)
    common = dict(model="bicubic", scale=2, interpolate=2, interpolation_model="blend", scene_threshold=0,
                  segment_frames=12, encoders=2, queue_size=8, parallel=True, **LOSSLESS)
    whole = tmp_path / "whole.mp4"
    run(RunConfig(source=src, output=whole, **common))
    out = tmp_path / "out.mp4"
    _kill_mid_run(src, out, ["--segment-frames", "12", "--encoders", "2", "--interpolate", "2",
                             "--interpolation-model", "blend", "--scene-threshold", "0"])
    assert not out.exists()
    stats = run(RunConfig(source=src, output=out, resume=True, **common))
    assert "finished segment(s) taken over" in stats.notes["segments"]
    probe.assert_same_video(whole, out)
    assert len(probe.pts_exact(out)) == 2 * 119 + 1
    assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")
    with pytest.raises(InvalidOption, match="Cannot resume: .*interpolate"):  # another factor: refused
        _kill_mid_run(src, tmp_path / "again.mp4", ["--segment-frames", "12", "--encoders", "2", "--interpolate",
                                                    "2", "--interpolation-model", "blend", "--scene-threshold", "0"])
        run(RunConfig(source=src, output=tmp_path / "again.mp4", resume=True, **{**common, "interpolate": 3}))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_restoration_window_exact_at_every_boundary(tmp_path, n, batch):
    """A restoration model (temporal-median: 3 frames in, the middle one out) sees each frame with
    its neighbours, the first/last frame repeated at the ends: output j is exactly the per-pixel
    median of source frames j-1, j, j+1 (clamped), whatever the batch boundaries."""
    rng = np.random.default_rng(n * 10 + batch)
    frames = [rng.integers(0, 256, (24, 32, 3), dtype=np.uint8) for _ in range(n)]
    src = _picture_folder(tmp_path / "src", frames)
    out = tmp_path / "out"
    stats = _run(src, out, model="temporal-median", batch_size=batch, parallel=batch != 3, fps="24")
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in _listed(out)]
    assert len(got) == n and stats.num_frames_written == n
    for j in range(n):
        window = np.stack([frames[min(max(k, 0), n - 1)] for k in (j - 1, j, j + 1)])
        np.testing.assert_array_equal(got[j], np.median(window, axis=0).astype(np.uint8), err_msg=f"frame {j}")


def test_restoration_model_on_video_keeps_frames_and_time(clips, tmp_path):
    src = clips("vfr.mp4", num_frames=9, vfr=True, audio=True)
    out = tmp_path / "out.mp4"
    _run(src, out, model="temporal-median", parallel=True, batch_size=2, cpu_workers=2, segment_frames=4, encoders=2)
    assert probe.pts_exact(out) == probe.pts_exact(src)
    assert ("audio", "aac") in probe.streams(out)


def test_restoration_model_does_not_chain_with_interpolate(clips, tmp_path):
    with pytest.raises(InvalidOption, match="two passes"):
        _run(clips("plain.mp4", num_frames=5), tmp_path / "o.mp4", model="temporal-median", interpolate=2,
             interpolation_model="blend")


def test_resume_pictures_after_a_run_stopped_mid_frame(tmp_path):
    """Picture output, --interpolate 3, then --resume after a run that left some of a source
    frame's pictures (a stop between the pictures of one frame) and the last picture: the
    frame is redone without writing the pictures that are there, and the last frame (no frames
    made after it) is not taken for unfinished. The result equals an uninterrupted run's."""
    rng = np.random.default_rng(3)
    src = _picture_folder(tmp_path / "src", [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(4)])
    out = tmp_path / "out"
    common = dict(model="bicubic", scale=1, interpolate=3, interpolation_model="blend", scene_threshold=0, fps="24")
    _run(src, out, **common)
    whole = {p.name: p.read_bytes() for p in _listed(out)}
    assert len(whole) == 2 * 3 + 4
    for k in (2, 3, 5):  # frame 0's last made picture, frame 1's own and its second made one
        (out / sorted(whole)[k]).unlink()
    _run(src, out, resume=True, overwrite=False, **common)
    assert {p.name: p.read_bytes() for p in _listed(out)} == whole


def test_temporal_models_keep_the_alpha_of_pictures(tmp_path):
    """RGBA pictures out of a temporal model keep their alpha, as out of a spatial one: a made
    frame's is its neighbours' cross-faded, a restored frame's its own."""
    frames = []
    for i in range(3):
        f = np.full((16, 24, 4), 40 * i, np.uint8)
        f[..., 3] = 60 * i + 10
        frames.append(f)
    src = _picture_folder(tmp_path / "src", frames)
    _run(src, tmp_path / "fps", model="bicubic", scale=1, interpolate=2, interpolation_model="blend",
         scene_threshold=0, fps="24")
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in _listed(tmp_path / "fps")]
    assert [g.shape for g in got] == [(16, 24, 4)] * 5
    assert [int(g[0, 0, 3]) for g in got] == [10, 40, 70, 100, 130]
    _run(src, tmp_path / "median", model="temporal-median", fps="24")
    got = [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in _listed(tmp_path / "median")]
    for g, f in zip(got, frames, strict=True):
        np.testing.assert_array_equal(g[..., 3], f[..., 3])


def test_hevc_segments_of_a_vfr_interpolated_video_join(clips, tmp_path):
    """x265 starts each segment's DTS back by its reordering delay in the segment's own frame
    spacing, which at a cut where the spacing changes (VFR, made frames) reached the previous
    segment's last DTS: the join failed. Segments of 3 and 5 source frames now join into the
    same video as one file."""
    src = clips("vfr.mp4", num_frames=11, vfr=True)
    common = dict(model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0,
                  codec="hevc")
    whole = tmp_path / "whole.mp4"
    _run(src, whole, **common)
    for size in (3, 5):
        seg = tmp_path / f"seg{size}.mp4"
        _run(src, seg, segment_frames=size, encoders=2, **common)
        probe.assert_same_video(whole, seg)


def _pictures(folder: Path) -> list[np.ndarray]:
    return [cv2.imread(str(p), cv2.IMREAD_UNCHANGED) for p in _listed(folder)]


@pytest.mark.parametrize("factor", [2, 3])
def test_interpolated_parts_join_into_the_whole_run(tmp_path, factor):
    """--start/--end (and --max-frames) cut the video, not the interpolation: the last frame of a
    part brings the frames made between it and the next one, so runs over [0, 4) and [4, end)
    give, one after the other, exactly the whole run's pictures (N x 4 + the whole rest)."""
    rng = np.random.default_rng(factor)
    frames = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(9)]
    src = _picture_folder(tmp_path / "src", frames)
    common = dict(model="bicubic", scale=1, interpolate=factor, interpolation_model="blend", scene_threshold=0,
                  fps="24", batch_size=2)
    _run(src, tmp_path / "whole", **common)
    first = _run(src, tmp_path / "first", end="4f", **common)
    _run(src, tmp_path / "second", start="4f", **common)
    _run(src, tmp_path / "preview", max_frames=4, **common)
    whole = _pictures(tmp_path / "whole")
    assert len(whole) == (factor - 1) * 8 + 9
    parts = _pictures(tmp_path / "first") + _pictures(tmp_path / "second")
    assert len(parts) == len(whole)
    for j, (a, b) in enumerate(zip(parts, whole)):
        np.testing.assert_array_equal(a, b, err_msg=f"picture {j}")
    preview = _pictures(tmp_path / "preview")
    assert len(preview) == factor * 4 and all(np.array_equal(a, b) for a, b in zip(preview, whole))
    assert first.num_frames_written == 4 and first.num_frames_made == (factor - 1) * 4


def test_interpolated_part_keeps_the_whole_runs_timestamps(clips, tmp_path):
    """A VFR video cut at a time and at a frame: each part's timestamps are the whole run's, the
    second part's moved back to the source's start like any cut."""
    src = clips("vfr.mp4", num_frames=11, vfr=True)
    common = dict(model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0)
    _run(src, tmp_path / "whole.mp4", **common)
    _run(src, tmp_path / "first.mp4", end="5f", **common)
    _run(src, tmp_path / "second.mp4", start="5f", **common)
    whole = probe.pts_exact(tmp_path / "whole.mp4")
    assert probe.pts_exact(tmp_path / "first.mp4") == whole[:10]
    shift = whole[10] - whole[0]
    assert [p + shift for p in probe.pts_exact(tmp_path / "second.mp4")] == whole[10:]


@pytest.mark.parametrize("batch", [1, 2])
def test_restoration_parts_see_the_frames_around_them(tmp_path, batch):
    """temporal-median over [2, 5) and [5, end) and --max-frames: a frame next to the cut is the
    median of the video's real neighbours, exactly as in the whole run (the video's own first
    and last frames are still repeated)."""
    rng = np.random.default_rng(batch)
    frames = [rng.integers(0, 256, (16, 24, 3), dtype=np.uint8) for _ in range(8)]
    src = _picture_folder(tmp_path / "src", frames)
    common = dict(model="temporal-median", fps="24", batch_size=batch)
    _run(src, tmp_path / "whole", **common)
    _run(src, tmp_path / "middle", start="2f", end="5f", **common)
    _run(src, tmp_path / "last", start="5f", **common)
    _run(src, tmp_path / "preview", max_frames=3, **common)
    whole = _pictures(tmp_path / "whole")
    for name, want in (("middle", whole[2:5]), ("last", whole[5:]), ("preview", whole[:3])):
        got = _pictures(tmp_path / name)
        assert len(got) == len(want), name
        for j, (a, b) in enumerate(zip(got, want)):
            np.testing.assert_array_equal(a, b, err_msg=f"{name} {j}")


def test_interpolated_pictures_are_numbered_from_their_sources_numbers(tmp_path):
    """Source picture m and the frames made after it are m*N .. m*N+N-1, m its own number: a
    sequence from 1 with 4 missing came out renumbered from 0 (s_001 -> o_0000, s_005 ->
    o_0006; the temporal reviewer, 2026-12-07). --start keeps the numbers; an output pattern
    whose names would be source pictures is refused, --overwrite or not."""
    rng = np.random.default_rng(5)
    src = tmp_path / "seq"
    src.mkdir()
    for m in (1, 2, 3, 5, 6):
        cv2.imwrite(str(src / f"s_{m:03d}.png"), rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    common = dict(model="bicubic", scale=1, interpolate=2, interpolation_model="blend", scene_threshold=0, fps="24")
    _run(src / "s_%03d.png", tmp_path / "o_%04d.png", **common)
    assert [p.name for p in _listed(tmp_path) if p.name.startswith("o_")] == [
        f"o_{n:04d}.png" for n in (2, 3, 4, 5, 6, 7, 10, 11, 12)]
    _run(src, tmp_path / "folder", **common)
    assert [p.name for p in _listed(tmp_path / "folder")][:3] == ["seq_000002.png", "seq_000003.png", "seq_000004.png"]
    (tmp_path / "cut").mkdir()
    _run(src / "s_%03d.png", tmp_path / "cut" / "c_%04d.png", start="3f", **common)  # from s_005
    assert [p.name for p in _listed(tmp_path / "cut")] == ["c_0010.png", "c_0011.png", "c_0012.png"]
    before = {p.name: p.read_bytes() for p in _listed(src)}
    with pytest.raises(UnsafeOutput):  # s_002.png, s_003.png ... are the source's
        _run(src / "s_%03d.png", src / "s_%03d.png", **common)
    assert {p.name: p.read_bytes() for p in _listed(src)} == before
