"""Image sequences in and out (issue 13): folders, globs and patterns of PNG/TIFF/JPEG, 8 and
16-bit, gray/RGB/RGBA; pictures out with the source's numbering, written atomically, resumable.

Pictures here are random noise (every pixel a test of the round trip), made with the writer's
own encoder (hw.pictures.encode_picture, OpenCV), FFmpeg's (gray) or, for JPEG, its MJPEG encoder."""

from __future__ import annotations

import os
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import main as cli
from core.errors import InvalidOption, InvalidSource, OutputExists, UnsafeOutput
from hw.pictures import encode_picture, find_pictures
from pipeline import RunConfig, run
from tests import probe


def _noise(h=24, w=32, *, depth=8, channels=3, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = 255 if depth == 8 else 65535
    return rng.integers(0, top + 1, (h, w, channels)).astype(np.uint8 if depth == 8 else np.uint16)


def _save(path: Path, array: np.ndarray) -> Path:
    """A PNG/TIFF of `array`: (H, W, 3) RGB, (H, W, 4) RGBA, or (H, W) gray."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 2:  # gray: through FFmpeg's own gray formats
        fmt = "gray" if array.dtype == np.uint8 else "gray16le"
        frame = av.VideoFrame.from_ndarray(array, format=fmt)
        codec = "png" if path.suffix == ".png" else "tiff"
        out_fmt = "gray16be" if fmt == "gray16le" and codec == "png" else fmt
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = array.shape[1], array.shape[0], out_fmt, Fraction(1, 25)
        frame = frame.reformat(format=out_fmt)
        path.write_bytes(b"".join(bytes(p) for p in ctx.encode(frame)) + b"".join(bytes(p) for p in ctx.encode(None)))
        return path
    alpha = array[..., 3] if array.shape[2] == 4 else None
    path.write_bytes(encode_picture(np.ascontiguousarray(array[..., :3]), alpha, path.suffix))
    return path


def _read(path: Path, fmt: str) -> np.ndarray:
    with av.open(str(path)) as c:
        return next(c.decode(video=0)).reformat(format=fmt).to_ndarray()


def _undecodable_png() -> bytes:
    """A PNG whose headers and chunks are whole (so that listing the folder finds nothing wrong with
    it) and whose pixel data FFmpeg cannot decode: damage only reading the picture finds."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return encode_picture(_noise(), None, ".png")[:33] + chunk(b"IDAT", b"garbage!" * 4) + chunk(b"IEND", b"")


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=Path(src), output=Path(out) if out is not None else None, model="bicubic", scale=1,
                parallel=True, queue_size=8, precision="fp32")  # fp32 on a GPU too: fp16 holds 11 bits of 16
    base.update(kw)
    return RunConfig(**base)


# -- finding the pictures -------------------------------------------------------------------


def test_folder_glob_and_pattern_find_the_same_sequence_in_number_order(tmp_path):
    for n in (9, 10, 100, 11):  # by number, not by name: 9 before 10 before 100
        _save(tmp_path / "shots" / f"shot_{n}.png", _noise(seed=n))
    (tmp_path / "shots" / "notes.txt").write_text("not a picture")
    (tmp_path / "shots" / ".hidden_1.png").write_bytes(b"")
    folder = find_pictures(tmp_path / "shots")
    assert [p.name for p in folder.paths] == ["shot_9.png", "shot_10.png", "shot_11.png", "shot_100.png"]
    assert folder.numbers == (9, 10, 11, 100) and folder.gaps == [(12, 99)]
    assert "88 number(s) missing: 12-99" in folder.describe_gaps()
    assert find_pictures(str(tmp_path / "shots" / "shot_*.png")).paths == folder.paths
    assert find_pictures(str(tmp_path / "shots" / "shot_%d.png")).paths == folder.paths
    one = find_pictures(tmp_path / "shots" / "shot_9.png")  # one picture: a sequence of one
    assert one.paths == (tmp_path / "shots" / "shot_9.png",) and one.numbers == (9,)


def test_a_camera_folder_named_in_several_ways_is_taken_in_natural_name_order(tmp_path):
    """A phone's or camera's folder (IMG_20230101_101500.jpg; DSC_0001.JPG beside DSC_0002.jpg)
    follows no one numbering template: it was refused, with advice (a pattern) no pattern could
    follow (the models reviewer, 2026-12-07). Such names are taken in natural order (numbers by
    value, letters without case), their names kept, and the plan says so in one line."""
    names = ["IMG_20230105_093012.jpg", "IMG_20230101_184233.jpg", "IMG_20230101_101500.jpg", "DSC_10.JPG",
             "dsc_9.jpg"]
    folder = tmp_path / "phone"
    folder.mkdir()
    for k, name in enumerate(names):
        _save(folder / name, _noise(seed=k))
    seq = find_pictures(folder)
    assert [p.name for p in seq.paths] == ["dsc_9.jpg", "DSC_10.JPG", "IMG_20230101_101500.jpg",
                                           "IMG_20230101_184233.jpg", "IMG_20230105_093012.jpg"]
    assert seq.numbers == (None,) * 5 and seq.template == "(by name)"
    stats = run(_cfg(folder, tmp_path / "up", parallel=False))
    assert sorted(p.name for p in (tmp_path / "up").iterdir() if not p.name.startswith(".")) == sorted(
        Path(n).with_suffix(".png").name for n in names)
    assert any("taken in name order" in w for w in stats.notes["fallbacks"]), stats.notes


@pytest.mark.parametrize("names, message", [
    (["f_1.png", "f_001.png"], r"have the same number \(1\)"),
    ([], "holds no pictures"),
    (["x_1.exr"], "OpenEXR holds scene-linear light"),
])
def test_sequences_that_cannot_be_ordered_are_refused(tmp_path, names, message):
    folder = tmp_path / "seq"
    folder.mkdir()
    for name in names:
        if name.endswith(".exr"):
            (folder / name).write_bytes(b"v/1\x01")
        else:
            _save(folder / name, _noise())
    with pytest.raises(InvalidSource, match=message):
        find_pictures(folder)


def test_a_pattern_that_matches_nothing_is_one_line(tmp_path, capsys):
    rc = cli.main(["--source", str(tmp_path / "scan_%06d.png"), "--model", "bicubic"])
    err = capsys.readouterr().err
    assert rc == 2 and "no file in" in err and "matches it" in err and "Traceback" not in err


# -- pictures in, pictures out ----------------------------------------------------------------


@pytest.mark.parametrize("depth, suffix, fmt", [(8, ".png", "rgb24"), (16, ".png", "rgb48le"), (16, ".tif", "rgb48le")])
def test_identity_keeps_every_value_and_the_names(tmp_path, depth, suffix, fmt):
    """bicubic x1 is the identity: every 8- or 16-bit value comes back exactly (float32 holds
    every 16-bit level), the names keep the source's numbering, nothing else is written."""
    pictures = {n: _noise(21, 33, depth=depth, seed=n) for n in (7, 8, 10)}  # odd sizes stay exact
    for n, a in pictures.items():
        _save(tmp_path / "in" / f"plate.{n:04d}{suffix}", a)
    out = tmp_path / "out"
    stats = run(_cfg(tmp_path / "in", out, picture_format="tiff" if suffix == ".tif" else "png"))
    assert stats.num_frames_written == 3
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [f"plate.{n:04d}{suffix}" for n in (7, 8, 10)]
    for n, a in pictures.items():
        assert np.array_equal(_read(out / f"plate.{n:04d}{suffix}", fmt), a)


def test_rgba_keeps_alpha_upscaled_with_bicubic(tmp_path):
    rgba = _noise(16, 20, channels=4, seed=3)
    rgba[..., 3] = np.linspace(0, 255, 20).astype(np.uint8)[None, :]
    _save(tmp_path / "in" / "a_1.png", rgba)
    run(_cfg(tmp_path / "in", tmp_path / "same"))
    assert np.array_equal(_read(tmp_path / "same" / "a_1.png", "rgba"), rgba)  # x1: alpha and colour exact
    run(_cfg(tmp_path / "in", tmp_path / "up", scale=2))
    up = _read(tmp_path / "up" / "a_1.png", "rgba")
    assert up.shape == (32, 40, 4)
    ramp = up[8, :, 3].astype(int)  # a horizontal ramp stays a ramp
    assert ramp[0] < 10 and ramp[-1] > 245 and (np.diff(ramp) >= -1).all()


def _pix_fmt(path: Path) -> str:
    with av.open(str(path)) as c:
        return c.streams.video[0].codec_context.pix_fmt


def test_gray_16bit_and_jpeg_pictures_are_read(tmp_path):
    gray = (np.arange(24 * 32, dtype=np.uint32).reshape(24, 32) * 80).astype(np.uint16)
    _save(tmp_path / "gray" / "g_1.png", gray)
    run(_cfg(tmp_path / "gray", tmp_path / "gray_out"))
    out = tmp_path / "gray_out" / "g_1.png"
    assert _pix_fmt(out) == "gray16be"  # 16-bit gray in: 16-bit gray out, every value kept
    assert np.array_equal(_read(out, "gray16le"), gray)
    jpg = tmp_path / "jpg" / "photo_01.jpg"
    jpg.parent.mkdir()
    with av.open(str(jpg), "w", format="image2") as out:
        s = out.add_stream("mjpeg", rate=1)
        s.width, s.height, s.pix_fmt = 32, 24, "yuvj420p"
        for p in s.encode(av.VideoFrame.from_ndarray(_noise(), format="rgb24").reformat(format="yuvj420p")):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    run(_cfg(tmp_path / "jpg", tmp_path / "jpg_out", scale=2))
    assert _read(tmp_path / "jpg_out" / "photo_01.png", "rgb24").shape == (48, 64, 3)


@pytest.mark.parametrize("batch_size, parallel", [(0, True), (4, True), (3, False)])
def test_pictures_of_several_sizes_each_keep_their_own(tmp_path, batch_size, parallel):
    """A folder of photos, landscape and portrait: each written at its own size x scale, as
    Real-ESRGAN's script writes them (they were all scaled to the first's, the portraits
    squashed); the model calls take pictures of one size, in order, none lost."""
    sizes = [(24, 32), (32, 24), (32, 24), (24, 32), (10, 14), (24, 32), (24, 32), (24, 32)]
    pictures = {n: _noise(h, w, seed=n) for n, (h, w) in enumerate(sizes)}
    for n, a in pictures.items():
        _save(tmp_path / "in" / f"p_{n}.png", a)
    stats = run(_cfg(tmp_path / "in", tmp_path / "out", batch_size=batch_size, parallel=parallel))
    assert stats.num_frames_written == len(sizes) and not any("differ in size" in w for w in stats.warnings)
    for n, a in pictures.items():  # bicubic x1: the identity, every value
        assert np.array_equal(_read(tmp_path / "out" / f"p_{n}.png", "rgb24"), a), n
    run(_cfg(tmp_path / "in", tmp_path / "up", scale=2, batch_size=batch_size, parallel=parallel))
    assert [_read(tmp_path / "up" / f"p_{n}.png", "rgb24").shape[:2] for n in range(len(sizes))] == \
        [(2 * h, 2 * w) for h, w in sizes]


def test_transparent_pictures_of_several_sizes_keep_their_alpha(tmp_path):
    pictures = {n: _noise(h, w, seed=n, channels=4) for n, (h, w) in enumerate([(16, 20), (20, 16), (16, 20)])}
    for n, a in pictures.items():
        _save(tmp_path / "in" / f"a_{n}.png", a)
    run(_cfg(tmp_path / "in", tmp_path / "out", batch_size=3))
    for n, a in pictures.items():
        assert np.array_equal(_read(tmp_path / "out" / f"a_{n}.png", "rgba"), a), n


def test_pictures_of_another_size_into_a_video_are_scaled_with_one_warning(tmp_path):
    _save(tmp_path / "in" / "p_1.png", _noise(24, 32))
    _save(tmp_path / "in" / "p_2.png", _noise(12, 16))
    stats = run(_cfg(tmp_path / "in", tmp_path / "out.mp4"))
    assert probe.indices(tmp_path / "out.mp4") is not None
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert (c.streams.video[0].width, c.streams.video[0].height) == (32, 24)
    assert sum("differ in size from the first (32x24)" in w for w in stats.warnings) == 1


def test_pattern_output_uses_the_source_numbers(tmp_path):
    for n in (3, 4):
        _save(tmp_path / "in" / f"s{n:03d}.png", _noise(seed=n))
    run(_cfg(str(tmp_path / "in" / "s%03d.png"), tmp_path / "up" / "frame_%06d.png", scale=2))
    assert sorted(p.name for p in (tmp_path / "up").iterdir() if not p.name.startswith(".")) == [
        "frame_000003.png", "frame_000004.png"]


# -- video <-> pictures -------------------------------------------------------------------------


def test_video_to_pictures_and_back(clips, tmp_path):
    src = clips("pics.mp4", num_frames=12, audio=True)
    frames_dir = tmp_path / "frames"
    run(_cfg(src, frames_dir))
    names = sorted(p.name for p in frames_dir.iterdir() if not p.name.startswith("."))
    assert names == [f"{src.stem}_{k:06d}.png" for k in range(12)]
    video = tmp_path / "back.mp4"
    stats = run(_cfg(str(frames_dir / f"{src.stem}_%06d.png"), video, fps="24000/1001", audio=src, crf=0,
                     preset="ultrafast"))
    assert probe.indices(video) == list(range(12))  # the index blocks survive both ways
    zero = probe.video_start(video)
    assert [t - zero for t in probe.pts_exact(video)] == [Fraction(1001 * k, 24000) for k in range(12)]
    audio = probe.packet_times(video, "audio")
    end = Fraction(12 * 1001, 24000)
    assert audio and max(p for p, *_ in audio) - zero < end  # the soundtrack ends with the pictures
    assert stats.notes["source_video"].endswith("23.976 fps")


# -- safety and resume ------------------------------------------------------------------------


def test_pictures_are_never_written_over_the_source(tmp_path):
    _save(tmp_path / "in" / "p_1.png", _noise())
    with pytest.raises(UnsafeOutput, match="is the source picture"):
        run(_cfg(tmp_path / "in", tmp_path / "in", overwrite=True))
    with pytest.raises(UnsafeOutput, match="is the source picture"):
        run(_cfg(tmp_path / "in", tmp_path / "in" / "p_%d.png", overwrite=True))
    run(_cfg(tmp_path / "in", tmp_path / "in", picture_format="tiff"))  # other names in the same folder: fine
    assert (tmp_path / "in" / "p_1.tif").is_file()


def _hashes(folder: Path) -> dict[str, str]:
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
@pytest.mark.parametrize("output", ["folder", "pattern"])
def test_source_pictures_reached_through_links_are_never_written(tmp_path, link, output):
    """A source folder of links into the output folder: the output's names are the pictures the
    links lead to. Compared as files, not names: refused with --overwrite too, every picture left
    as it was (before, the upscales replaced the originals)."""
    real = tmp_path / "real"
    for i in range(3):
        _save(real / f"src_{i:06d}.png", _noise(seed=i))
    links = tmp_path / "links"
    links.mkdir()
    for i in range(3):
        make = os.symlink if link == "symlink" else os.link
        make(real / f"src_{i:06d}.png", links / f"src_{i:06d}.png")
    before = _hashes(real)
    target = real if output == "folder" else real / "src_%06d.png"
    with pytest.raises(UnsafeOutput, match="is the source picture .*through a link"):
        run(_cfg(links, target, overwrite=True))
    assert _hashes(real) == before


@pytest.mark.parametrize("target", ["video", "pictures", "none"])
def test_stats_json_never_names_a_source_picture(tmp_path, capsys, target):
    """--stats-json naming one of the source pictures, with --overwrite: refused before any work,
    whatever the output (before, with a video output, the picture was replaced by the JSON)."""
    for i in range(3):
        _save(tmp_path / "in" / f"p_{i}.png", _noise(seed=i))
    before = _hashes(tmp_path / "in")
    out = {"video": ["--output", str(tmp_path / "v.mp4")], "pictures": ["--output", str(tmp_path / "up")],
           "none": ["--output-mode", "none"]}[target]
    code = cli.main(["--source", str(tmp_path / "in"), *out, "--model", "bicubic", "--scale", "1", "-q",
                     "--overwrite", "--stats-json", str(tmp_path / "in" / "p_1.png")])
    err = capsys.readouterr().err
    assert code == 2 and "is the same file as --source" in err and "never writes its input" in err, err
    assert _hashes(tmp_path / "in") == before
    assert not (tmp_path / "v.mp4").exists() and not (tmp_path / "up").exists()


@pytest.mark.parametrize("name", ["{stem}_000001.png", ".framepipe-run.json"])
def test_stats_json_never_names_a_file_the_run_writes_among_its_pictures(clips, tmp_path, capsys, name):
    """--stats-json naming one of the pictures the run writes (or its resume manifest): refused
    before any work, as --stats-json equal to a video --output is (before, the picture was
    replaced by the JSON and a later --resume kept it as finished)."""
    src = clips("plain.mp4", num_frames=4)
    (tmp_path / "outd").mkdir()
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "outd"), "--model", "bicubic", "--scale", "1",
                     "-q", "--overwrite", "--stats-json", str(tmp_path / "outd" / name.format(stem=src.stem))])
    err = capsys.readouterr().err
    assert code == 2 and "is one of the files this run writes" in err, err
    assert list((tmp_path / "outd").iterdir()) == []


def test_resume_keeps_finished_pictures_and_refuses_other_settings(tmp_path):
    for n in range(6):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    out = tmp_path / "out"
    run(_cfg(tmp_path / "in", out, max_frames=2))  # as far as a stopped run got
    first = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    with pytest.raises(OutputExists, match="--resume to keep them and write the rest, or --overwrite"):
        run(_cfg(tmp_path / "in", out))
    with pytest.raises(InvalidOption, match=r"Cannot resume: .*scale"):
        run(_cfg(tmp_path / "in", out, scale=2, resume=True, max_frames=2))
    stats = run(_cfg(tmp_path / "in", out, resume=True, max_frames=2))
    stats = run(_cfg(tmp_path / "in", out, resume=True))
    assert stats.num_frames_written == 4  # only the missing ones
    now = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    assert sorted(now) == [f"p_{n}.png" for n in range(6)]
    assert all(now[name] == t for name, t in first.items())  # the finished ones untouched
    for n in range(6):
        assert np.array_equal(_read(out / f"p_{n}.png", "rgb24"), _noise(seed=n))


def test_resume_after_a_stopped_overwrite_redoes_the_pictures_it_had_not_replaced(tmp_path):
    """A scale-2 folder, then --overwrite at scale 3 stopped after 2 pictures, then --resume: the
    resume kept the 4 scale-2 pictures as if done (a folder of two sizes, exit 0). Only pictures
    written since the manifest's run started count as done. --resume --overwrite with other
    settings starts again instead of refusing."""
    for n in range(6):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    out = tmp_path / "out"
    run(_cfg(tmp_path / "in", out, scale=2))
    run(_cfg(tmp_path / "in", out, scale=3, overwrite=True, max_frames=2))  # as far as the stopped run got
    stats = run(_cfg(tmp_path / "in", out, scale=3, resume=True))
    assert stats.num_frames_written == 4
    assert {_read(out / f"p_{n}.png", "rgb24").shape for n in range(6)} == {(72, 96, 3)}
    with pytest.raises(InvalidOption, match=r"Cannot resume: .*scale"):
        run(_cfg(tmp_path / "in", out, scale=1, resume=True))
    stats = run(_cfg(tmp_path / "in", out, scale=1, resume=True, overwrite=True))
    assert stats.num_frames_written == 6
    assert all(np.array_equal(_read(out / f"p_{n}.png", "rgb24"), _noise(seed=n)) for n in range(6))


def test_resume_with_interpolate_counts_the_pictures_it_writes(tmp_path):
    """--resume counts what the run writes, as without --interpolate (only the missing ones): the
    pictures an earlier run left are neither written nor counted, made ones included."""
    for n in range(4):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    out = tmp_path / "out"
    common = dict(interpolate=3, interpolation_model="blend", scene_threshold=0, fps="24")
    stats = run(_cfg(tmp_path / "in", out, **common))
    assert (stats.num_frames_written, stats.num_frames_made) == (4, 6)
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".png")
    for k in (2, 3, 5):  # frame 0's last made picture, frame 1's own and its second made one
        (out / names[k]).unlink()
    stats = run(_cfg(tmp_path / "in", out, resume=True, **common))  # redoes frames 0, 1 and the last
    assert (stats.num_frames_written, stats.num_frames_made) == (1, 2)
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == names


def test_closing_the_picture_pool_runs_the_jobs_not_started_yet():
    """A stop or an error closes the writer's pool; a picture handed to it but not started yet (its
    threads busy) is still written and counted, not dropped."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.writer import _PicturePool

    pool = _PicturePool(num_threads=2, max_bytes=1 << 20)
    pool._executor = ThreadPoolExecutor(max_workers=1)  # one thread: the second job waits, not started
    release, ran, counted = threading.Event(), [], []
    pool.submit(lambda: release.wait(10) and ran.append("first"), num_bytes=1, done=lambda: counted.append("first"))
    pool.submit(lambda: ran.append("second"), num_bytes=1, done=lambda: counted.append("second"))
    threading.Timer(0.2, release.set).start()  # the first job ends while close() waits
    pool.close()
    assert ran == counted == ["first", "second"]


def test_a_damaged_picture_stops_with_one_line_and_keeps_the_pictures_before_it(tmp_path, capsys):
    for n in range(4):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    (tmp_path / "in" / "p_2.png").write_bytes(_undecodable_png())
    out = tmp_path / "out"
    rc = cli.main(["--source", str(tmp_path / "in"), "--output", str(out), "--model", "bicubic", "--scale", "1"])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert rc != 0 and len(errors) == 1 and "p_2.png" in errors[0] and "--resume" in errors[0], err
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".png") == ["p_0.png", "p_1.png"]


@pytest.mark.parametrize("args, words", [
    (["--bit-depth", "10"], "--bit-depth 10 is for video"),
    (["--fps", "fast"], "Invalid --fps ('fast')"),
    (["--output", "{tmp}/x.png"], "for pictures give a folder"),
    (["--output", "{tmp}/v.mp4", "--bit-depth", "16"], "--bit-depth 16 is for pictures"),
    (["--audio", "{tmp}/none.wav"], "Invalid --audio"),
    (["--output", "/dev/null"], "neither a folder for pictures nor a video file"),  # was "pictures need a folder"
])
def test_picture_flags_give_one_line(tmp_path, capsys, args, words):
    _save(tmp_path / "in" / "p_1.png", _noise())
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    rc = cli.main(["--source", str(tmp_path / "in"), "--model", "bicubic", *args])
    err = capsys.readouterr().err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert rc == 2 and len(errors) == 1 and words in errors[0], err
    assert sorted(os.listdir(tmp_path)) == ["in"]


def test_pictures_to_segmented_video_with_a_soundtrack(clips, tmp_path):
    """Segments and the join take the soundtrack from --audio as a one-file run does."""
    src = clips("pics-seg.mp4", num_frames=30, audio=True)
    run(_cfg(src, tmp_path / "frames"))
    pattern = str(tmp_path / "frames" / f"{src.stem}_%06d.png")
    one, seg = tmp_path / "one.mkv", tmp_path / "seg.mkv"
    run(_cfg(pattern, one, audio=src, crf=0, preset="ultrafast"))
    run(_cfg(pattern, seg, audio=src, crf=0, preset="ultrafast", segment_frames=7, encoders=2))
    assert probe.indices(seg) == list(range(30))
    assert probe.pts_exact(seg) == probe.pts_exact(one)
    assert probe.packet_times(seg, "audio") == probe.packet_times(one, "audio") != []


def test_the_number_is_found_where_it_varies_or_where_the_pattern_says(tmp_path):
    for n in range(3):
        _save(tmp_path / "r" / f"render_{n:04d}_1080p.png", _noise(seed=n))
    by_folder = find_pictures(tmp_path / "r")
    assert by_folder.numbers == (0, 1, 2) and by_folder.template == "render_#_1080p.png"
    assert find_pictures(str(tmp_path / "r" / "render_%04d_1080p.png")).paths == by_folder.paths
    assert find_pictures(str(tmp_path / "r" / "render_*_1080p.png")).paths == by_folder.paths
    for name in ("cover.png", "back.png"):  # no numbers at all: by name
        _save(tmp_path / "n" / name, _noise())
    assert [p.name for p in find_pictures(tmp_path / "n").paths] == ["back.png", "cover.png"]


def test_palette_transparency_is_kept_and_late_alpha_is_said(tmp_path):
    from PIL import Image

    rgb = np.full((24, 32, 3), 100, np.uint8)
    rgb[:, :16] = (200, 30, 30)
    (tmp_path / "pal").mkdir()
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=4).save(tmp_path / "pal" / "p_0.png", transparency=0)
    run(_cfg(tmp_path / "pal", tmp_path / "pal_out"))
    alpha = _read(tmp_path / "pal_out" / "p_0.png", "rgba")[..., 3]
    assert (alpha == 0).sum() == (np.array(Image.open(tmp_path / "pal" / "p_0.png").convert("RGBA"))[..., 3] == 0).sum() > 0
    _save(tmp_path / "mix" / "m_0.png", _noise())
    _save(tmp_path / "mix" / "m_1.png", _noise(channels=4))
    stats = run(_cfg(tmp_path / "mix", tmp_path / "mix_out"))
    assert sum("have transparency the first picture has not (e.g. m_1.png)" in w for w in stats.warnings) == 1


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_gray_pictures_come_out_gray_and_colour_among_them_is_said(tmp_path, suffix):
    """As Real-ESRGAN's script does: a gray scan is upscaled as RGB and written gray (one channel,
    a third of the file), not as an RGB picture whose three channels are equal."""
    page = np.tile(np.linspace(0, 255, 40).astype(np.uint8), (30, 1))
    _save(tmp_path / "in" / f"page_1{suffix}", page)
    _save(tmp_path / "in" / f"page_2{suffix}", _noise(30, 40, seed=5))  # a colour page among the gray ones
    stats = run(_cfg(tmp_path / "in", tmp_path / "out", scale=2, picture_format=suffix[1:].replace("tif", "tiff")))
    first = tmp_path / "out" / f"page_1{suffix}"
    assert _pix_fmt(first) == "gray"
    up = _read(first, "gray")
    assert up.shape == (60, 80) and abs(int(up[:, 0].mean()) - 0) <= 2 and abs(int(up[:, -1].mean()) - 255) <= 2
    assert _pix_fmt(tmp_path / "out" / f"page_2{suffix}") == "gray"
    said = [w for w in stats.warnings if "in colour in a sequence whose first picture is gray" in w]
    assert len(said) == 1 and "page_2" in said[0], stats.warnings


def test_gray_with_alpha_and_a_gray_video_as_pictures(tmp_path):
    """Gray with alpha is written RGBA (no gray+alpha writer); a gray video's frames are written gray."""
    la = np.zeros((16, 20, 2), np.uint8)
    la[..., 0], la[..., 1] = 120, np.linspace(0, 255, 20).astype(np.uint8)[None, :]
    (tmp_path / "la").mkdir()
    from PIL import Image
    Image.fromarray(la, mode="LA").save(tmp_path / "la" / "a_1.png")
    run(_cfg(tmp_path / "la", tmp_path / "la_out"))
    got = _read(tmp_path / "la_out" / "a_1.png", "rgba")
    assert _pix_fmt(tmp_path / "la_out" / "a_1.png") == "rgba"
    assert np.array_equal(got[..., 3], la[..., 1]) and (got[..., :3] == 120).all()
    video = tmp_path / "gray.mkv"
    with av.open(str(video), "w") as out:
        s = out.add_stream("ffv1", rate=24)
        s.width, s.height, s.pix_fmt = 32, 24, "gray"
        for k in range(3):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32), 40 * k, np.uint8), format="gray")
            for pkt in s.encode(frame):
                out.mux(pkt)
        for pkt in s.encode(None):
            out.mux(pkt)
    run(_cfg(video, tmp_path / "frames", picture_format="png"))
    written = sorted((tmp_path / "frames").glob("*.png"))
    assert len(written) == 3 and all(_pix_fmt(p) == "gray" for p in written)
    assert [int(_read(p, "gray").mean()) for p in written] == [0, 40, 80]


def test_a_lossless_webp_without_transparency_is_read_without_alpha(tmp_path):
    """FFmpeg decodes every lossless WebP to ARGB: opaque ones come out RGB, transparent ones RGBA."""
    from PIL import Image

    (tmp_path / "opaque").mkdir()
    (tmp_path / "clear").mkdir()
    Image.fromarray(_noise(24, 32, seed=2)).save(tmp_path / "opaque" / "w_1.webp", lossless=True)
    rgba = _noise(24, 32, channels=4, seed=3)
    rgba[..., 3] = 128
    Image.fromarray(rgba).save(tmp_path / "clear" / "w_1.webp", lossless=True)
    run(_cfg(tmp_path / "opaque", tmp_path / "opaque_out"))
    run(_cfg(tmp_path / "clear", tmp_path / "clear_out"))
    assert _pix_fmt(tmp_path / "opaque_out" / "w_1.png") == "rgb24"
    assert _pix_fmt(tmp_path / "clear_out" / "w_1.png") == "rgba"
    assert (_read(tmp_path / "clear_out" / "w_1.png", "rgba")[..., 3] == 128).all()


@pytest.mark.parametrize("fps", ["0.0001", "1/100000"])
def test_a_tiny_fps_is_one_line(tmp_path, capsys, fps):
    _save(tmp_path / "in" / "p_1.png", _noise())
    rc = cli.main(["--source", str(tmp_path / "in"), "--model", "bicubic", "--fps", fps, "--output", str(tmp_path / "v.mp4")])
    err = capsys.readouterr().err
    assert rc == 2 and "Invalid --fps" in err and "Traceback" not in err


def test_pictures_cut_keep_their_own_names(tmp_path):
    """--start/--end renumber the frames from 0 inside the run; pictures keep the source's names
    and numbers, so a job done in parts into one folder never overwrites a part."""
    for n in (1, 2, 3, 4, 5, 6, 50, 51):
        _save(tmp_path / "in" / f"s_{n:04d}.png", _noise(seed=n))
    run(_cfg(tmp_path / "in", tmp_path / "out", end="4f"))
    run(_cfg(tmp_path / "in", tmp_path / "out", start="4f", overwrite=True))
    names = sorted(p.name for p in (tmp_path / "out").iterdir() if p.suffix == ".png")
    assert names == [f"s_{n:04d}.png" for n in (1, 2, 3, 4, 5, 6, 50, 51)]
    for n in (1, 5, 51):
        assert np.array_equal(_read(tmp_path / "out" / f"s_{n:04d}.png", "rgb24"), _noise(seed=n))
    run(_cfg(str(tmp_path / "in" / "s_%04d.png"), tmp_path / "pat" / "x_%d.png", start="6f"))
    assert sorted(p.name for p in (tmp_path / "pat").iterdir() if p.suffix == ".png") == ["x_50.png", "x_51.png"]


def test_one_picture_given_as_a_file_is_read_as_a_picture(tmp_path):
    """Was decoded as a one-frame video: 8-bit RGB out, alpha dropped, named photo_000000."""
    rgba = _noise(channels=4, depth=16, seed=5)
    _save(tmp_path / "photo.png", rgba)
    stats = run(_cfg(tmp_path / "photo.png", None))  # the default output: a folder named after the picture
    assert stats.num_frames_written == 1
    assert np.array_equal(_read(tmp_path / "photo_bicubic-x1" / "photo.png", "rgba64le"), rgba)


def test_float_tiff_is_read_at_16_bits_and_a_cmyk_jpeg_has_no_alpha(tmp_path):
    import cv2
    from PIL import Image

    values = np.random.default_rng(6).random((24, 32, 3), dtype=np.float32)
    (tmp_path / "f").mkdir()
    assert cv2.imwrite(str(tmp_path / "f" / "f_1.tif"), values[..., ::-1])  # 32-bit float RGB (OpenCV: BGR)
    run(_cfg(tmp_path / "f", tmp_path / "f_out"))
    got = _read(tmp_path / "f_out" / "f_1.png", "rgb48le")
    assert got.dtype == np.uint16 and np.abs(got / 65535 - values).max() < 1 / 1024  # 8 bits: 1/510 off
    (tmp_path / "c").mkdir()
    Image.fromarray(_noise()).convert("CMYK").save(tmp_path / "c" / "c_1.jpg")
    run(_cfg(tmp_path / "c", tmp_path / "c_out"))
    with av.open(str(tmp_path / "c_out" / "c_1.png")) as c:
        assert c.streams.video[0].codec_context.format.name == "rgb24"  # not RGBA with an opaque alpha


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_viewers_apply_it(tmp_path, orientation):
    from PIL import Image, ImageOps

    from hw.pictures import PictureSource, probe_pictures

    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "in").mkdir()
    Image.fromarray(_noise(24, 32)).save(tmp_path / "in" / "p_1.png", exif=exif.tobytes())
    want = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "in" / "p_1.png")))
    seq = find_pictures(tmp_path / "in")
    info = probe_pictures(seq)
    frames = list(PictureSource(seq, info, warn=pytest.fail))
    assert (info.height, info.width) == want.shape[:2] and np.array_equal(frames[0].planes[0], want)


def test_a_rotated_video_is_written_as_upright_pictures(tmp_path):
    """ffmpeg turns a phone video's frames by its display matrix when it writes pictures; the
    pictures written here were sideways (a picture file carries no rotation)."""
    rgb = np.zeros((16, 32, 3), np.uint8)
    rgb[:4, :4] = 255  # the top-left corner
    src = tmp_path / "phone.mp4"
    with av.open(str(src), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt = 32, 16, "yuv444p"
        s.options = {"qp": "0"}
        s.set_display_rotation(90)  # counter-clockwise: the corner ends at the bottom left
        for p in [*s.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv444p")), *s.encode(None)]:
            out.mux(p)
    run(_cfg(src, tmp_path / "pics"))
    got = _read(tmp_path / "pics" / "phone_000000.png", "rgb24")
    assert got.shape == (32, 16, 3) and got[-4:, :4].min() > 200 and got[:4, :4].max() < 50


@pytest.mark.parametrize("output", ["folder", "video.mp4"])
def test_a_png_with_a_colour_profile_does_not_crash_the_process(tmp_path, output):
    """PNGs from a Mac screenshot, GIMP or Photoshop carry an ICC profile (iCCP), whose name FFmpeg
    puts in the frame's side data as metadata; PyAV 18 frees that metadata twice, and reading the
    side data (the orientation) killed the process at the next garbage collection: exit 139, no
    message (the models reviewer, 2026-12-07). Run in a child process: a crash must fail this
    test, not end the suite. The orientation (EXIF 6: turned a quarter) is still honoured."""
    import subprocess
    import sys

    from PIL import Image, ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "shots"
    src.mkdir()
    for k in range(3):
        picture = Image.fromarray(np.random.default_rng(k).integers(0, 256, (24, 32, 3), dtype=np.uint8))
        exif = picture.getexif()
        exif[0x0112] = 6
        picture.save(src / f"shot_{k}.png", icc_profile=icc, exif=exif)
    out = tmp_path / output
    done = subprocess.run([sys.executable, str(Path(cli.__file__)), "--source", str(src), "--output", str(out),
                           "--model", "bicubic", "--scale", "2", "-q"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    if output == "folder":
        with av.open(str(out / "shot_0.png")) as c:
            frame = next(c.decode(video=0))
            assert (frame.width, frame.height) == (48, 64)  # upright: 24 x 32 turned, then x2
    else:
        assert len(probe.pts_exact(out)) == 3


def test_a_damaged_picture_mid_sequence_stops_with_exit_1_and_a_truncated_jpeg_is_said(tmp_path, capsys):
    """A picture after the first that cannot be read: exit 2 ("bad input, nothing processed")
    though pictures were written, and a hint (--resume) that met the same picture again; now exit
    1 and "move or repair it first"; the pictures before it, in flight in a batch (on a GPU), are
    written (they were dropped with the failure). A JPEG cut short decoded without a word, its lower part made
    up (PIL refuses it); now one line names it (the models reviewer, 2026-12-07)."""
    from PIL import Image

    src = tmp_path / "seq"
    src.mkdir()
    for k in range(1, 5):
        Image.fromarray(_noise(24, 32, seed=k)).save(src / f"p_{k}.jpg", quality=95)
    whole = (src / "p_2.jpg").read_bytes()
    (src / "p_2.jpg").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    assert cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "1"]) == 0
    err = capsys.readouterr().err
    assert "warning: source: picture p_2.jpg is truncated (no JPEG end marker)" in err, err
    damaged = bytearray(whole)  # headers whole (listing the folder finds nothing), no components: damage
    damaged[damaged.index(b"\xff\xc0") + 9] = 0  # only reading the picture finds
    (src / "p_3.jpg").write_bytes(bytes(damaged))
    import subprocess

    from tests.cli_runs import slow_cli

    # The worker slowed (as a GPU's batch is), so that the reader meets the damaged picture while the
    # pictures before it are in flight
    done = subprocess.run(slow_cli(("pipeline.worker", "Worker", "process", 0.3), "--source", str(src), "--output",
                                   str(tmp_path / "again"), "--model", "bicubic", "--scale", "1", "--parallel", "-q"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    (line,) = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert f"Picture {str(src / 'p_3.jpg')!r} cannot be read" in line and "move or repair it first" in line, line
    assert sorted(p.name for p in (tmp_path / "again").iterdir() if not p.name.startswith(".")) == ["p_1.png", "p_2.png"]


def test_the_24_fps_line_comes_only_where_pictures_become_a_video(tmp_path, capsys):
    """Pictures into pictures have no rate to choose: the "timed at 24 fps" line was noise there."""
    _save(tmp_path / "in" / "p_1.png", _noise())
    _save(tmp_path / "in" / "p_2.png", _noise(seed=1))
    for out, lines in ((tmp_path / "out", 0), (tmp_path / "out.mp4", 1)):
        assert cli.main(["--source", str(tmp_path / "in"), "--output", str(out), "--model", "bicubic",
                         "--scale", "1"]) == 0
        err = capsys.readouterr().err
        assert err.count("warning: 2 picture(s), timed at 24 fps (--fps sets the rate).") == lines, err


@pytest.mark.parametrize("depth", [8, 16])
def test_rgba_tiff_says_its_alpha_is_unassociated(depth):
    """An RGBA TIFF was written without ExtraSamples (OpenCV's): libtiff warns and calls the fourth
    sample unspecified, and programs that go by the tag drop the alpha or take it as premultiplied.
    It carries ExtraSamples = 2 (unassociated alpha) now; its pixels are unchanged, and an RGB TIFF
    gets no such tag."""
    from io import BytesIO

    from PIL import Image

    rgba = _noise(depth=depth, channels=4, seed=3)
    data = encode_picture(np.ascontiguousarray(rgba[..., :3]), np.ascontiguousarray(rgba[..., 3]), ".tif")
    with Image.open(BytesIO(data)) as picture:
        assert picture.tag_v2.get(338) == (2,) and picture.mode == "RGBA"
        assert picture.tag_v2[277] == 4 and picture.tag_v2[258] == (depth,) * 4
    with av.open(BytesIO(data)) as c:  # FFmpeg (framepipe's reader) gets the same pixels back
        got = next(c.decode(video=0)).reformat(format="rgba" if depth == 8 else "rgba64le").to_ndarray()
    assert np.array_equal(got, rgba)
    with Image.open(BytesIO(encode_picture(np.ascontiguousarray(rgba[..., :3]), None, ".tif"))) as picture:
        assert 338 not in picture.tag_v2


def _srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize("source_suffix, picture_format", [(".png", "tiff"), (".jpg", "png"), (".tif", "png"),
                                                           (".webp", "tiff")])
def test_colour_profile_of_a_picture_is_kept(tmp_path, source_suffix, picture_format):
    """The ICC profile of an input picture was dropped on output (OpenCV writes none): a photo in
    Adobe RGB or Display P3 came out to be shown as sRGB, its colours off. Each picture now keeps
    its own profile (PNG iCCP, TIFF InterColorProfile), read from PNG, JPEG, TIFF and WebP."""
    from PIL import Image

    icc = _srgb_profile()
    (tmp_path / "in").mkdir()
    for i in (1, 2):
        Image.fromarray(_noise(seed=i)).save(tmp_path / "in" / f"p_{i}{source_suffix}", icc_profile=icc, lossless=True)
    Image.fromarray(_noise(seed=3)).save(tmp_path / "in" / f"p_3{source_suffix}", lossless=True)  # none: none written
    stats = run(_cfg(tmp_path / "in", tmp_path / "out", scale=2, picture_format=picture_format))
    suffix = ".png" if picture_format == "png" else ".tif"
    for i, want in ((1, icc), (2, icc), (3, None)):
        with Image.open(tmp_path / "out" / f"p_{i}{suffix}") as picture:
            assert picture.info.get("icc_profile") == want and picture.size == (64, 48)
    assert np.array_equal(_read(tmp_path / "out" / f"p_1{suffix}", "rgb24").shape, (48, 64, 3))
    assert not [w for w in stats.warnings if "profile" in w]


def test_colour_profile_that_does_not_fit_is_left_out_with_one_line(tmp_path):
    """An RGB profile cannot describe a picture written gray (nor a CMYK one the RGB a CMYK JPEG is
    decoded to): such a profile is left out, said in one line, the picture written."""
    from PIL import Image

    (tmp_path / "in").mkdir()
    for i in (1, 2):
        Image.fromarray(_noise(seed=i)[..., 0]).save(tmp_path / "in" / f"g_{i}.png", icc_profile=_srgb_profile())
    stats = run(_cfg(tmp_path / "in", tmp_path / "out"))
    for i in (1, 2):
        with Image.open(tmp_path / "out" / f"g_{i}.png") as picture:
            assert picture.mode == "L" and "icc_profile" not in picture.info
    lines = [w for w in stats.warnings if "colour profile" in w]
    assert lines == ["output: 2 picture(s) carry a colour profile that does not describe the pictures written "
                     "(e.g. g_1.png, whose profile is for RGB); they were written without one"]


def test_resume_after_moving_a_damaged_picture_away_writes_the_rest(tmp_path, capsys):
    """The error line for a damaged picture says "move or repair it first ... the same command with
    --resume writes the rest"; moved away, --resume was refused ("do not match this run (the source
    file)": the count of pictures had changed), and only --overwrite, redoing every picture, went
    on. The pictures are matched by their names now; a pattern over unnumbered pictures, whose
    numbers are positions, still needs the same sequence."""
    src = tmp_path / "in"
    for n in range(5):
        _save(src / f"p_{n}.png", _noise(seed=n))
    (src / "p_2.png").write_bytes(_undecodable_png())
    out = tmp_path / "out"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "1", "-q"]
    assert cli.main(args) == 1
    assert "move or repair it first" in capsys.readouterr().err
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    assert sorted(before) == ["p_0.png", "p_1.png"]
    (src / "p_2.png").rename(tmp_path / "p_2.png")
    assert cli.main([*args, "--resume"]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.png")) == ["p_0.png", "p_1.png", "p_3.png", "p_4.png"]
    assert {n: (out / n).stat().st_mtime_ns for n in before} == before  # kept, not written again
    assert np.array_equal(_read(out / "p_4.png", "rgb24"), _noise(seed=4))
    # positions count: a changed sequence is refused
    named = tmp_path / "named"
    for n, word in enumerate(["apple", "banana", "cherry"]):
        _save(named / f"{word}.png", _noise(seed=n))
    pattern = str(tmp_path / "seq" / "f_%03d.png")
    assert cli.main(["--source", str(named), "--output", pattern, "--model", "bicubic", "--scale", "1", "-q"]) == 0
    (named / "banana.png").rename(tmp_path / "banana.png")  # cherry would take f_001.png, banana's
    assert cli.main(["--source", str(named), "--output", pattern, "--model", "bicubic", "--scale", "1", "-q",
                     "--resume"]) == 2
    assert "Cannot resume" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["x.jpg", "x.webp", "x.jpeg"])
def test_output_in_a_format_not_written_suggests_a_pattern_that_works(tmp_path, capsys, name):
    """--output x.jpg was answered "give a folder (e.g. x/) or a pattern (e.g. x_%06d.jpg)", and the
    pattern it suggested was then refused ("a picture pattern must end in .png, .tif or .tiff").
    The line now says pictures are written as PNG or TIFF and suggests a pattern that runs."""
    _save(tmp_path / "in" / "p_1.png", _noise())
    rc = cli.main(["--source", str(tmp_path / "in"), "--model", "bicubic", "--output", str(tmp_path / name)])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc == 2 and len(errors) == 1, errors
    assert "x_%06d.png" in errors[0] and "written as PNG or TIFF" in errors[0], errors[0]
    suggested = errors[0].split("e.g. ")[2].split(")")[0]
    assert cli.main(["--source", str(tmp_path / "in"), "--model", "bicubic", "-q", "--output",
                     str(tmp_path / suggested)]) == 0
    assert (tmp_path / "x_000001.png").is_file()


def test_resume_with_interpolate_needs_the_same_sequence(tmp_path):
    """Matched by name, a --resume with --interpolate took a picture put in since as done: with
    unnumbered pictures a folder output numbers them by position, so banana.png, put in between,
    kept cherry's pictures (in_000002.png was cherry), and an in-between picture kept is made
    toward a neighbour that is no longer the next one. With the pictures made from their
    neighbours, the sequence must be the same, as with a pattern over unnumbered pictures."""
    src = tmp_path / "in"
    for n, word in enumerate(["apple", "cherry", "date"]):
        _save(src / f"{word}.png", _noise(seed=n))
    out = tmp_path / "out"
    common = dict(interpolate=2, interpolation_model="blend", scene_threshold=0, fps="24")
    run(_cfg(src, out, **common))
    _save(src / "banana.png", _noise(seed=7))
    with pytest.raises(InvalidOption, match="Cannot resume"):
        run(_cfg(src, out, resume=True, **common))
    stats = run(_cfg(src, out, overwrite=True, **common))
    assert stats.num_frames_written == 4
    assert np.array_equal(_read(out / "in_000002.png", "rgb24"), _noise(seed=7))


def test_resume_over_other_pictures_names_the_pictures_not_a_source_file(tmp_path, capsys):
    """A --resume whose picture folder changed said "do not match this run (the source file)":
    the source is a folder of pictures; the line now says what of them differs (walkthrough defect 6)."""
    for n in range(3):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    out = tmp_path / "out"
    args = ["--source", str(tmp_path / "in"), "--output", str(out), "--model", "bicubic", "--scale", "1", "-q"]
    assert cli.main([*args, "--max-frames", "1"]) == 0
    _save(tmp_path / "in" / "p_0.png", _noise(seed=7))  # the first picture replaced by another
    assert cli.main([*args, "--resume"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert "source file" not in line and "the source pictures (the content of the first picture)" in line, line
    for word in ("apple", "banana"):  # unnumbered pictures into a pattern: counted by position
        _save(tmp_path / "named" / f"{word}.png", _noise())
    common = ["--source", str(tmp_path / "named"), "--output", str(tmp_path / "seq" / "f_%03d.png"), "--model",
              "bicubic", "--scale", "1", "-q"]
    assert cli.main([*common, "--max-frames", "1"]) == 0
    _save(tmp_path / "named" / "cherry.png", _noise())
    assert cli.main([*common, "--resume"]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert "the number of source pictures (2 then, 3 now)" in line, line


def test_progress_of_a_resumed_picture_run_counts_the_pictures_kept(tmp_path):
    """A resumed picture run's progress counted only what it wrote against every picture of the
    job: "28/40 frames" while 35 of 40 were done, and it never reached 40/40 (walkthrough
    defect 4). The pictures an earlier run left count as done; the rate stays this run's."""
    for n in range(8):
        _save(tmp_path / "in" / f"p_{n}.png", _noise(seed=n))
    out = tmp_path / "out"
    run(_cfg(tmp_path / "in", out, max_frames=3))
    (out / "p_1.png").unlink()  # p_0 and p_2 are kept
    lines = []
    stats = run(_cfg(tmp_path / "in", out, resume=True),
                on_progress=lambda s: lines.append(cli.progress_line(s, 1.0)))
    assert (stats.num_frames_written, stats.num_frames_kept) == (6, 2)
    assert stats.to_dict()["frames_kept"] == 2
    assert lines[-1].startswith("progress: 8/8 frames (100.0%)"), lines
    assert all(int(line.split()[1].split("/")[0]) <= 8 for line in lines), lines


def test_files_in_a_picture_folder_that_are_not_pictures_are_named_once(tmp_path, capsys):
    """anim.gif, notes.txt beside the pictures were left out without a word (walkthrough defect 1):
    one line now counts them and names a few; hidden files and a file manager's own are not named."""
    src = tmp_path / "in"
    for n in range(2):
        _save(src / f"p_{n}.png", _noise(seed=n))
    for name in ("notes.txt", "anim.gif", "clip.mp4", "e.exr", ".DS_Store", "Thumbs.db", ".hidden_3.png"):
        (src / name).write_bytes(b"x")
    (src / "sub").mkdir()
    assert find_pictures(src).left_out == ("anim.gif", "clip.mp4", "e.exr", "notes.txt")
    assert cli.main(["--source", str(src), "--output", str(tmp_path / "out"), "--model", "bicubic", "--scale", "1"]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "left out" in ln]
    assert len(lines) == 1 and "4 file(s) in the folder are not pictures" in lines[0], err
    assert "anim.gif, clip.mp4, e.exr and 1 more" in lines[0] and "DS_Store" not in err and "Thumbs" not in err, lines
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["p_0.png", "p_1.png"]
    for name in ("notes.txt", "anim.gif", "clip.mp4", "e.exr"):
        (src / name).unlink()
    assert cli.main(["--source", str(src), "--output", str(tmp_path / "again"), "--model", "bicubic", "--scale", "1"]) == 0
    assert "left out" not in capsys.readouterr().err  # only hidden files left: nothing said


def _animation(path: Path, fmt: str | None = None) -> Path:
    """Three pictures in one file (Pillow: an animated WebP, APNG or GIF by `fmt`/suffix)."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    frames = [Image.fromarray(_noise(seed=k)) for k in range(3)]
    frames[0].save(path, format=fmt, save_all=True, append_images=frames[1:])
    return path


def test_an_animated_picture_is_said_to_be_animated_not_damaged(tmp_path, capsys):
    """An animated WebP among pictures was "cannot be read: Invalid data ... move or repair it first":
    it is not damaged, FFmpeg's WebP decoder takes no animation. An APNG (or a GIF named .png) gave its
    first picture alone, without a word. Each is now said to be animated and not taken, with what to
    do instead (walkthrough defect 2)."""
    from hw.pictures import PictureSource, probe_pictures

    from hw.pictures import _is_still_picture

    src = tmp_path / "in"
    for n in range(2):
        _save(src / f"p_{n}.png", _noise(seed=n))
    _animation(src / "p_2.webp")
    # FFmpeg 8 (PyAV 19) reads an animated WebP as a video; FFmpeg 7 (PyAV 18) does not decode it
    as_video = not _is_still_picture(src / "p_2.webp")
    rc = cli.main(["--source", str(src), "--output", str(tmp_path / "out"), "--model", "bicubic", "--scale", "1"])
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert rc != 0 and "p_2.webp' is an animated WebP: animated pictures are not taken" in line, line
    how = "--source p_2.webp reads it as a video" if as_video else "magick p_2.webp -coalesce p_2_%03d.png"
    assert "Invalid data" not in line and "repair" not in line and how in line, line
    alone = _animation(tmp_path / "alone.webp")
    rc = cli.main(["--source", str(alone), "--output", str(tmp_path / "o2.mp4"), "--model", "bicubic"])
    if as_video:  # as the line says: alone, a video
        assert rc == 0 and len(probe.frames_rgb(tmp_path / "o2.mp4")) == 3
    else:
        assert rc == 2 and "is an animated WebP" in capsys.readouterr().err
    for name, fmt, kind in (("p_2.png", "PNG", "PNG (APNG)"), ("p_3.png", "GIF", "GIF")):
        (src / "p_2.webp").unlink(missing_ok=True)
        (src / "p_2.png").unlink(missing_ok=True)
        _animation(src / name, fmt)
        seq = find_pictures(src)
        source = PictureSource(seq, probe_pictures(seq), warn=lambda line: None)
        assert len(list(source)) == 2  # the sequence ends before it, and the run fails with it
        assert re.search(rf"{name}' is an animated {re.escape(kind)}: .*--source {name} reads it as a video",
                         str(source.failure)) and "repair" not in str(source.failure), source.failure
        assert find_pictures(src / name) is None  # as the line says: alone, it is a video


def test_pictures_unusable_from_their_headers_are_all_named_before_the_run(tmp_path, capsys):
    """A folder with a corrupt PNG and a zero-byte JPEG needed one run per bad file: each was found
    when the reader met it, after the pictures before it were made (walkthrough defect 3). Those
    the headers tell (empty, cut short, not a picture, animated) are now named together, before
    anything runs; a picture whose headers look odd but that FFmpeg reads (a still GIF named .png)
    is taken."""
    from PIL import Image

    src = tmp_path / "in"
    for n in range(3):
        _save(src / f"p_{n}.png", _noise(seed=n))
    Image.fromarray(_noise(seed=3)).save(src / "p_3.png", format="GIF")  # a still GIF under a PNG name: read
    (src / "p_4.jpg").write_bytes(b"")
    whole = (src / "p_1.png").read_bytes()
    (src / "p_5.png").write_bytes(whole[: len(whole) // 2])  # a copy that stopped
    (src / "p_6.png").write_text("not a picture")
    _animation(src / "p_7.webp")
    out = tmp_path / "out"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "1"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error")]
    for part in ("4 of 8 picture(s) cannot be used", "p_4.jpg is empty (0 bytes)", "p_5.png is cut short",
                 "p_6.png is no picture", "p_7.webp is an animated WebP", "nothing was processed"):
        assert part in line, line
    assert "p_3.png" not in line and not out.exists(), line
    for name in ("p_4.jpg", "p_5.png", "p_6.png", "p_7.webp"):
        (src / name).unlink()
    assert cli.main([*args, "-q"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"p_{n}.png" for n in range(4)]


def test_one_picture_to_one_named_picture_file(tmp_path, capsys):
    """--source photo.jpg --output photo4x.png was refused ("give a folder or a pattern"); a user
    upscaling one photo expects it to work (walkthrough defect 7). It is written atomically, as
    every picture is, nothing else is made beside it (no manifest, no lock left), an existing file
    is replaced only with --overwrite (--resume has nothing to resume), and never the source,
    through a link either."""
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    Image.fromarray(_noise(seed=1)).save(photo, quality=95)
    out = tmp_path / "photo4x.png"
    common = ["--source", str(photo), "--model", "bicubic", "--scale", "2", "-q"]
    assert cli.main([*common, "--output", str(out)]) == 0, capsys.readouterr().err
    assert _read(out, "rgb24").shape == (48, 64, 3)
    assert sorted(os.listdir(tmp_path)) == ["photo.jpg", "photo4x.png"]
    before = out.stat().st_mtime_ns
    for extra in ([], ["--resume"]):
        assert cli.main([*common, "--output", str(out), *extra]) == 2
        (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
        assert "already exists. Pass --overwrite to replace it" in line, line
    assert out.stat().st_mtime_ns == before
    assert cli.main([*common, "--scale", "1", "--output", str(out), "--overwrite"]) == 0
    assert _read(out, "rgb24").shape == (24, 32, 3)
    assert cli.main([*common, "--output", str(tmp_path / "photo4x.tiff")]) == 0
    assert _read(tmp_path / "photo4x.tiff", "rgb24").shape == (48, 64, 3)
    shot = _save(tmp_path / "shot.png", _noise(seed=2))
    source_bytes = shot.read_bytes()
    (tmp_path / "link.png").symlink_to(shot)
    for name in ("shot.png", "link.png"):  # the source, by its name and through a link
        assert cli.main([*common, "--source", str(shot), "--output", str(tmp_path / name), "--overwrite"]) == 2
        assert "framepipe never writes its input. Choose another name." in capsys.readouterr().err
    assert shot.read_bytes() == source_bytes and (tmp_path / "link.png").is_symlink()
    assert cli.main([*common, "--output", str(tmp_path / "photo4x.jpg")]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert "written as PNG or TIFF" in line and f"--output {tmp_path / 'photo4x.png'}" in line, line
    assert sorted(os.listdir(tmp_path)) == ["link.png", "photo.jpg", "photo4x.png", "photo4x.tiff", "shot.png"]


def test_one_picture_into_a_folder_that_does_not_exist_is_refused_before_the_run(tmp_path, capsys):
    """--source photo.png --output missing/photo4x.png started the run and failed after the model
    ran (exit 1, "sequential: RuntimeError: picture photo4x.png was not written: [Errno 2] No such
    file or directory: 'missing/.photo4x.png.framepipe-lock'"), where a video output into a folder
    that does not exist is refused in one line before anything runs (exit 2)."""
    photo = _save(tmp_path / "photo.png", _noise(seed=3))
    out = tmp_path / "missing" / "photo4x.png"
    assert cli.main(["--source", str(photo), "--model", "bicubic", "--scale", "2", "-q", "--output", str(out)]) == 2
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error")]
    assert f"Cannot write --output {str(out)!r}: folder {str(out.parent)!r} does not exist." in line, line
    assert sorted(os.listdir(tmp_path)) == ["photo.png"]
