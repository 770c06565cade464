"""Bad input (issue 2): one clear line, a non-zero exit, no traceback, no hang, nothing lost."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import av
import pytest

import main as cli
from hw.gpus import GpuInfo
from tests import probe

ROOT = Path(__file__).resolve().parents[1]


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([*map(str, argv), "--model", "bicubic", "--scale", "2"] if "--model" not in argv else list(map(str, argv)))
    err = capsys.readouterr().err
    return code, err


def _error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1, err
    assert "Traceback" not in err
    return errors[0]


def test_missing_file(capsys, tmp_path):
    code, err = _cli(capsys, "--source", tmp_path / "nope.mp4", "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "Source not found" in _error_line(err)


def test_directory(capsys, tmp_path):
    """A folder is a picture sequence (issue 13); one without pictures is one line."""
    code, err = _cli(capsys, "--source", tmp_path, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "holds no pictures" in _error_line(err)


def test_text_file_named_mp4(capsys, tmp_path):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is not a video\n" * 20)
    code, err = _cli(capsys, "--source", fake, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "not a video FFmpeg can read" in _error_line(err)


def test_audio_only_file(capsys, tmp_path):
    src = tmp_path / "tone.m4a"
    with av.open(str(src), "w") as out:
        s = out.add_stream("aac", rate=48000)
        import numpy as np

        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 48000
        frame.pts = 0
        for p in s.encode(frame):
            out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "has no video stream" in _error_line(err)


def test_zero_video_frames(capsys, clips, tmp_path):
    """An MP4 whose index (moov, moved to the front) is intact but whose frame data is gone."""
    src_full = clips("plain.mp4", num_frames=10)
    faststart = tmp_path / "fast.mp4"
    with av.open(str(src_full)) as inp, av.open(str(faststart), "w", options={"movflags": "faststart"}) as out:
        ost = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = ost
                out.mux(packet)
    data = faststart.read_bytes()
    mdat = data.index(b"mdat")
    assert data.index(b"moov") < mdat
    src = tmp_path / "empty.mp4"
    src.write_bytes(data[: mdat + 4])
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "no decodable video frames" in _error_line(err)
    assert not (tmp_path / "o.mp4").exists()


def test_codec_ffmpeg_cannot_decode(capsys, tmp_path):
    """A stream FFmpeg has no decoder for (PyAV gives it no codec context): was an AttributeError."""
    raw = tmp_path / "raw.mkv"
    with av.open(str(raw), "w") as out:
        stream = out.add_stream("rawvideo", rate=24)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        frame = av.VideoFrame(16, 16, "yuv420p")
        frame.pts = 0
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    src = tmp_path / "unknown.mkv"
    src.write_bytes(raw.read_bytes().replace(b"V_UNCOMPRESSED", b"V_NO_SUCH_CODE"))
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "codec this FFmpeg build cannot decode" in _error_line(err)


def test_subtitle_running_past_the_video_is_not_called_damaged(capsys, clips, tmp_path):
    """Matroska has no per-stream duration: FFmpeg gives the video the container's, here the
    subtitle's 0.9 s, and a whole 3-frame video was reported as truncated."""
    src = clips("subs.mkv", num_frames=3, subtitles=["hello"])
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mkv")
    assert code == 0, err
    assert not any("damaged" in ln or "truncated" in ln for ln in _warning_lines(err)), err
    assert len(probe.frames_rgb(tmp_path / "o.mkv")) == 3


@pytest.mark.parametrize("kind", ["text", "folder", "fifo"])
def test_audio_that_is_not_a_media_file_names_audio(capsys, clips, tmp_path, kind):
    """--audio's line names --audio and what the path is (was "Source ... is not a video", or
    "no such file" for a folder or FIFO that exists)."""
    audio = tmp_path / "track.m4a"
    if kind == "text":
        audio.write_text("not audio\n" * 20)
    elif kind == "folder":
        audio.mkdir()
    else:
        os.mkfifo(audio)
    code, err = _cli(capsys, "--source", clips("plain.mp4", num_frames=10), "--output", tmp_path / "o.mp4",
                     "--audio", audio)
    assert code == 2
    line = _error_line(err)
    assert "--audio" in line and "Source" not in line
    assert {"text": "not a file FFmpeg can read", "folder": "a directory", "fifo": "a FIFO"}[kind] in line


def test_model_that_is_a_fifo_is_called_a_fifo(capsys, clips, tmp_path):
    model = tmp_path / "weights.pth"
    os.mkfifo(model)
    code, err = _cli(capsys, "--source", clips("plain.mp4", num_frames=10), "--output", tmp_path / "o.mp4",
                     "--model", model)
    assert code == 2
    assert "is a FIFO (named pipe), not a model file" in _error_line(err)


def _warning_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.startswith("warning:")]


def test_truncated_stream_keeps_what_decodes(capsys, clips, tmp_path):
    good = clips("long.mkv", num_frames=60)
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "o.mp4"
    code, err = _cli(capsys, "--source", cut, "--output", out)
    assert code == 0, err
    got = probe.indices(out)
    assert 20 < len(got) < 60 and got == list(range(len(got)))


@pytest.mark.parametrize("fraction", [0.6, 0.9])
def test_truncated_stream_says_so(capsys, clips, tmp_path, fraction):
    """README: "A damaged source is decoded as far as it can be, with a warning" (issue 8: a
    truncated file lost its tail without one)."""
    good = clips("long.mkv", num_frames=60)
    data = good.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * fraction)])
    code, err = _cli(capsys, "--source", cut, "--output", tmp_path / "o.mp4")
    assert code == 0, err
    assert len(probe.frames_rgb(tmp_path / "o.mp4")) < 60
    assert any("damaged" in ln or "truncated" in ln for ln in _warning_lines(err)), err


def _with_broken_packets(source: Path, dest: Path, broken: set[int]) -> tuple[Path, list]:
    """Remux `source` with the video packets numbered in `broken` (decode order) cut to 8
    bytes: the container is intact, and FFmpeg's decoder refuses exactly those packets.
    Returns the file and the timestamps (seconds) of the frames a decoder that skips
    them yields, in order."""
    with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
        ost = out.add_stream_from_template(inp.streams.video[0])
        k = 0
        for packet in inp.demux(inp.streams.video[0]):
            if not packet.size:
                continue
            data = bytes(packet)[:8] if k in broken else bytes(packet)
            copy = av.Packet(data)
            copy.pts, copy.dts, copy.time_base, copy.is_keyframe = packet.pts, packet.dts, packet.time_base, packet.is_keyframe
            copy.stream = ost
            out.mux(copy)
            k += 1
    decodable, refused = [], 0
    with av.open(str(dest)) as c:
        stream = c.streams.video[0]
        for packet in c.demux(stream):
            try:
                decodable += [f.pts * Fraction(stream.time_base) for f in packet.decode()]
            except av.error.InvalidDataError:
                refused += 1
    assert refused == len(broken)  # the fixture really reaches the decoder's error path
    return dest, decodable


@pytest.mark.parametrize("mode", ["--parallel", None])
def test_corrupted_packets_skipped(capsys, clips, tmp_path, mode):
    """Two packets FFmpeg refuses: each is skipped, decoding goes on to the end of the file,
    and one warning line says so (issue 8: the old fixture never reached the skip path)."""
    bad, decodable = _with_broken_packets(clips("long.mkv", num_frames=60), tmp_path / "bad.mkv", {20, 40})
    assert len(decodable) == 58
    out = tmp_path / "o.mp4"
    code, err = _cli(capsys, "--source", bad, "--output", out, *([mode] if mode else []))
    assert code == 0, err
    assert probe.pts_exact(out) == decodable  # every decodable frame to the end of the file, at its own time
    assert probe.indices(out)[:18] == list(range(18))  # (after a lost reference, pictures are concealed)
    warnings = _warning_lines(err)
    assert len(warnings) == 1 and "2 corrupt packet(s) skipped" in warnings[0], err
    assert "Traceback" not in err


def test_unwritable_output(capsys, clips, tmp_path):
    src = clips("plain.mp4", num_frames=10)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "no" / "such" / "dir" / "o.mp4")
    assert code == 2
    assert "does not exist" in _error_line(err)
    (tmp_path / "folder.mp4").mkdir()
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "folder.mp4")
    assert code == 2
    assert "is a directory" in _error_line(err)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.avi")
    assert code == 2
    assert "must end in .mp4, .mkv or .mov" in _error_line(err)


def test_existing_output_needs_overwrite(capsys, clips, tmp_path):
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "o.mp4"
    out.write_bytes(b"precious")
    code, err = _cli(capsys, "--source", src, "--output", out)
    assert code == 2
    assert "--overwrite" in _error_line(err)
    assert out.read_bytes() == b"precious"
    code, err = _cli(capsys, "--source", src, "--output", out, "--overwrite")
    assert code == 0, err
    assert len(probe.frames_rgb(out)) == 10


@pytest.mark.parametrize(
    "args, message",
    [
        (["--batch-size", "-1"], "Invalid --batch-size (-1)"),
        (["--queue-size", "0"], "Invalid --queue-size (0)"),
        (["--max-batch-size", "0"], "Invalid --max-batch-size (0)"),
        (["--max-frames", "0"], "Invalid --max-frames (0)"),
        (["--quality", "70"], "Invalid --quality (70) for h264: allowed is 0-51"),
        (["--preset", "warp"], "Invalid --preset ('warp') for h264"),
        (["--device", "tpu"], "Invalid --device ('tpu')"),
        (["--device", "cuda"], "no CUDA GPU is visible"),
        (["--gpus", "9"], "Invalid --gpus"),
        (["--segment-seconds", "inf"], "Invalid --segment-seconds (inf)"),  # was an OverflowError traceback
        (["--cpu-workers", "99999999999999999999"], "Invalid --cpu-workers"),  # was memory exhausted, no line
        (["--encoders", "1000000000"], "Invalid --encoders (1000000000): use 0"),  # grew memory 100 MB/s
        (["--decoders", "1000000000"], "Invalid --decoders (1000000000): use 0"),
        (["--segment-seconds", "1e308"], "Invalid --segment-seconds (1e+308)"),  # an OverflowError in a job
    ],
)
def test_invalid_values(capsys, clips, tmp_path, args, message):
    src = clips("plain.mp4", num_frames=10)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4", *args)
    assert code == 2
    assert message in _error_line(err)
    assert not (tmp_path / "o.mp4").exists()


def test_gpus_out_of_range_on_two_gpu_machine(capsys, clips, tmp_path, monkeypatch):
    fake = [GpuInfo(i, "Fake GPU", 16 << 30, (8, 6), True, 80) for i in range(2)]
    monkeypatch.setattr("hw.gpus.list_gpus", lambda: fake)
    src = clips("plain.mp4", num_frames=10)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4", "--gpus", "9")
    assert code == 2
    assert "Invalid --gpus ('9'): this machine has GPUs 0-1" in _error_line(err)


def test_scale_the_model_cannot_do(capsys, clips, tmp_path):
    src = clips("plain.mp4", num_frames=10)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4", "--model", "realesr-animevideov3",
                     "--scale", "5")
    assert code == 2
    assert "scale" in _error_line(err).lower()


def test_unknown_model(capsys, clips, tmp_path):
    src = clips("plain.mp4", num_frames=10)
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / "o.mp4", "--model", "realesr-animevideo")
    assert code == 2
    assert "realesr-animevideov3" in _error_line(err)  # suggests the close name


def test_bad_input_from_a_real_process(clips, tmp_path):
    """The whole program as a user runs it: exit code and one line, no traceback."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--source", str(tmp_path / "missing.mp4")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"error: Source not found: '{tmp_path / 'missing.mp4'}'. Check the path, or run without --source for the built-in sample."
    ]


def test_paths_are_printed_as_they_are(capsys, clips, tmp_path):
    """Paths with brackets or a % in their names are files like any other, printed verbatim
    (not read as console markup, a picture pattern or a glob)."""
    src = tmp_path / "take [x] 100%d.mp4"
    src.write_bytes(clips("plain.mp4", num_frames=6).read_bytes())
    out = tmp_path / "out [final].mp4"
    code, err = _cli(capsys, "--source", src, "--output", out, "--max-frames", "2")
    assert code == 0, err
    assert f"Output: {out}" in err.replace("\n", "")
    code, err = _cli(capsys, "--source", src, "--output", out)
    assert code == 2 and str(out) in _error_line(err)
    code, err = _cli(capsys, "--source", tmp_path / "missing [red]x[/red].mp4", "--output", tmp_path / "o.mp4")
    assert code == 2 and "missing [red]x[/red].mp4" in _error_line(err) and "not found" in _error_line(err)


@pytest.mark.parametrize("flag", ["--output", "--stats-json", "--model", "--audio", "--source"])
def test_a_name_longer_than_the_file_system_takes_is_one_line(capsys, clips, tmp_path, flag):
    """A 300-byte file name (ENAMETOOLONG from the first stat of it): one line, never a traceback;
    an output name that leaves no room for framepipe's lock beside it says how long it may be."""
    src = clips("plain.mp4", num_frames=10)
    long = str(tmp_path / ("a" * 300 + (".pth" if flag == "--model" else ".json" if flag == "--stats-json" else ".mp4")))
    args = {"--source": ["--source", long, "--output", tmp_path / "o.mp4"]}.get(
        flag, ["--source", src, "--output", tmp_path / "o.mp4", flag, long])
    code, err = _cli(capsys, *args)
    assert code == 2 and "Traceback" not in err
    line = _error_line(err)
    assert "too long" in line or "bytes long" in line or (flag == "--audio" and "no such file" in line), err
    assert not (tmp_path / "o.mp4").exists()
    code, err = _cli(capsys, "--source", src, "--output", tmp_path / ("b" * 245 + ".mp4"))
    assert code == 2 and "Give a name of at most 238 bytes" in _error_line(err), err


@pytest.mark.parametrize("value", ["-5", "nan", "inf", "soon"])
def test_progress_every_refuses_what_is_not_seconds(capsys, clips, tmp_path, value):
    """--progress-every -5 (or nan) was taken and ran the job without a progress line, as 0 does."""
    src = clips("plain.mp4", num_frames=10)
    with pytest.raises(SystemExit) as stopped:
        cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic",
                  "--progress-every", value])
    assert stopped.value.code == 2
    assert "argument --progress-every: invalid value" in capsys.readouterr().err
    assert not (tmp_path / "o.mp4").exists()
