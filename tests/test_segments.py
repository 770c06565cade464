"""Segmented output (issue 11): a pool of encoders on consecutive segments, closed segment
files in `<output>.parts/`, a stream-copy join, and `--resume` after any stop — `kill -9`
included.

Pixel comparisons use lossless x264 (crf 0, ultrafast): at its default settings this x264
build does not give the same bytes twice for the same frames (benchmarks/RESULTS.md)."""

from __future__ import annotations

import json
import logging
import signal
from dataclasses import replace
from fractions import Fraction
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest

import main as cli
from core.errors import InvalidOption, OutputExists
from pipeline import RunConfig, run
from pipeline.segments import PartsFolder, SegmentLayout
from tests import probe

LOSSLESS = dict(crf=0, preset="ultrafast")


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=8, **LOSSLESS)
    base.update(kw)
    return RunConfig(**base)



def _decode_errors(path: Path) -> list[str]:
    """Everything FFmpeg logs at warning level or worse while decoding `path` start to end."""
    import av.logging

    seen: list[str] = []
    with av.logging.Capture() as logs:
        with av.open(str(path)) as c:
            for _ in c.decode(video=0):
                pass
    seen += [f"{level} {name}: {text.strip()}" for level, name, text in logs if level <= av.logging.WARNING]
    return seen


def _av1_decoder() -> bool:
    for name in ("libdav1d", "libaom-av1"):
        try:
            av.codec.Codec(name, "r")
            return True
        except Exception:  # noqa: BLE001 - not in this build
            continue
    return False


def test_layout_segments_by_index():
    layout = SegmentLayout(segment_frames=10, end=25)
    assert [layout.segment_of(i) for i in (0, 9, 10, 24)] == [0, 0, 1, 2]
    assert (layout.start_of(2), layout.stop_of(2)) == (20, 25)
    assert layout.is_last_of_segment(9) and layout.is_last_of_segment(24) and not layout.is_last_of_segment(10)


@pytest.mark.parametrize("segment_frames, encoders", [(1, 3), (7, 2), (13, 1), (30, 4), (500, 2)],
                         ids=["1-frame", "7", "13-one-encoder", "30", "longer-than-the-clip"])
def test_any_segment_size_gives_the_frames_and_timestamps_of_one_encoder(clips, tmp_path, segment_frames, encoders):
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    one = tmp_path / "one.mp4"
    run(_cfg(src, one))
    assert not (tmp_path / "one.mp4.parts").exists()  # short clip, nothing asked: one file, no work folder
    seg = tmp_path / "seg.mp4"
    stats = run(_cfg(src, seg, segment_frames=segment_frames, encoders=encoders))
    probe.assert_same_video(one, seg)
    assert probe.indices(seg) == list(range(45))
    assert probe.packet_times(seg, "audio") == probe.packet_times(src, "audio")  # bytes and timing, packet by packet
    assert not (tmp_path / "seg.mp4.parts").exists()  # removed after the join
    assert "segments" in stats.notes and _decode_errors(seg) == []


@pytest.mark.parametrize("codec, suffix", [("h264", ".mp4"), ("h264", ".mkv"), ("hevc", ".mp4"), ("hevc", ".mkv"),
                                           ("av1", ".mp4"), ("av1", ".mkv")])
def test_the_joined_stream_decodes_without_a_warning(clips, tmp_path, codec, suffix):
    """Each segment is a fresh encoder (an IDR first) with the same settings, so the first
    segment's parameter sets are valid for all of them; the join checks that, and FFmpeg
    decodes the joined stream without one error or warning. Lossy defaults, B-frames on."""
    src = clips("seg-codecs.mp4", num_frames=30, width=96, height=64)
    out = tmp_path / f"out{suffix}"
    run(RunConfig(source=src, output=out, model="bicubic", scale=1, parallel=True, codec=codec, segment_frames=8,
                  encoders=2))
    if codec == "av1" and not _av1_decoder():
        # This PyAV build decodes no AV1 (no libdav1d/libaom): the packets and their keyframes are checked.
        with av.open(str(out)) as c:
            assert len([p for p in c.demux(video=0) if p.size]) == 30
    else:
        assert probe.indices(out) == list(range(30))
        assert _decode_errors(out) == []
    with av.open(str(out)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert keys[0] and sum(keys) >= 4  # every segment starts with a keyframe
    if codec == "hevc" and suffix == ".mp4":
        with av.open(str(out)) as c:
            assert c.streams.video[0].codec_context.codec_tag == "hvc1"
    with av.open(str(out)) as c:  # Matroska's DefaultDuration too: it said 1 ms ("1000 fps") after a join
        assert c.streams.video[0].average_rate == 24, c.streams.video[0].average_rate


def test_variable_frame_rate_survives_segments(clips, tmp_path):
    src = clips("seg-vfr.mkv", num_frames=33, vfr=True)
    out = tmp_path / "out.mkv"
    run(_cfg(src, out, segment_frames=5, encoders=3))
    np.testing.assert_allclose(probe.pts_seconds(out), probe.pts_seconds(src), atol=1e-3)
    assert probe.indices(out) == list(range(33))


def test_an_existing_work_folder_needs_resume_or_overwrite(capsys, clips, tmp_path):
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    (tmp_path / "out.mp4.parts").mkdir()
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2",
                     "--segment-frames", "10"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "--resume" in line and "--overwrite" in line and "Work folder" in line


def _kill_mid_run(src: Path, out: Path, extra: list[str]) -> None:
    """Start the CLI with a slow worker and kill -9 it once two segments are finished."""
    from tests.cli_runs import SLOW_WORKER, slow_cli

    args = slow_cli(SLOW_WORKER, "--source", src, "--output", out, "--model", "bicubic", "--scale", "2",
                    "--parallel", "--quality", "0", "--preset", "ultrafast", *extra)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out.with_name(out.name + ".parts") / "manifest.json"
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline and proc.poll() is None:
        try:
            if len(json.loads(manifest.read_text())["segments"]) >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def test_kill_9_then_resume_is_frame_exact(clips, tmp_path):
    """The CI proof: a real process killed with SIGKILL mid-run, then the same command with
    --resume: the output equals an uninterrupted run's, frames, timestamps and audio."""
    src = clips("seg-long.mp4", num_frames=120, audio=True)
    whole = tmp_path / "whole.mp4"
    run(_cfg(src, whole, segment_frames=12, encoders=2))
    out = tmp_path / "out.mp4"
    _kill_mid_run(src, out, ["--segment-frames", "12", "--encoders", "2"])
    assert not out.exists()
    manifest = json.loads((tmp_path / "out.mp4.parts" / "manifest.json").read_text())
    done_before = set(manifest["segments"])
    assert 2 <= len(done_before) < 10
    stats = run(_cfg(src, out, segment_frames=12, encoders=2, resume=True))
    assert stats.notes["segments"].endswith(f"{len(done_before)} finished segment(s) taken over from an earlier run")
    assert stats.num_frames_done == stats.num_frames_written == 120  # the kept frames counted once
    assert stats.num_frames_kept == 12 * len(done_before)
    probe.assert_same_video(whole, out)
    assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")
    assert not (tmp_path / "out.mp4.parts").exists()


def test_ctrl_c_keeps_a_playable_partial_output_and_the_parts(clips, tmp_path):
    from tests.cli_runs import SLOW_WORKER, slow_cli

    src = clips("seg-long.mp4", num_frames=120, audio=True)
    out = tmp_path / "out.mp4"
    parts = tmp_path / "out.mp4.parts"
    args = slow_cli(SLOW_WORKER, "--source", src, "--output", out, "--model", "bicubic", "--scale", "2", "--parallel",
                    "--segment-frames", "12", "--encoders", "2", "--quality", "0", "--preset", "ultrafast")
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.perf_counter() + 60
    while not (parts / "segment-000001.mp4").exists() and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted")][0]
    assert "(finalized, playable)" in line and "--resume" in line
    got = probe.indices(out)
    assert got == list(range(len(got))) and 12 <= len(got) < 120
    assert (parts / "manifest.json").is_file()
    # The same command again without --resume says what --resume does (it said only --overwrite)
    with pytest.raises(OutputExists, match=r"is the partial output a stopped run left: the same command with "
                                           r"--resume takes it up \(from its finished segments, if any\); "
                                           r"--overwrite starts again"):
        run(_cfg(src, out, segment_frames=12, encoders=2))
    # The command the stop suggests works as said: --resume replaces the partial output this
    # run left (and only that file, unchanged since: see the next test).
    run(_cfg(src, out, segment_frames=12, encoders=2, resume=True))
    assert probe.indices(out) == list(range(120))
    assert probe.packet_times(out, "audio") == probe.packet_times(src, "audio")


@pytest.mark.parametrize("written", ["joined", "direct"])
@pytest.mark.parametrize("pause", [False, True])
def test_matroska_frames_last_as_long_as_they_are_shown(clips, tmp_path, monkeypatch, pause, written):
    """Segments (MP4: their durations are decode-time deltas) joined into Matroska, which stores
    how long each frame shows: each frame lasts until the next one in presentation order, across
    B-frames and segment cuts, a variable frame rate and a long pause included, and the video
    ends where the source's does (before, the pause landed on another frame and a 10 s video with
    a 9.8 s pause was written 19.9 s long). The same for a Matroska file the encoder writes
    directly (one segment, sequential): it kept the encoder's nominal 1/fps durations."""
    if pause:  # 5 frames at 24 fps, 9.8 s of nothing, 5 more (a camera's pause)
        src = tmp_path / "pause.mkv"
        with av.open(str(src), "w") as out:
            stream = out.add_stream("libx264", rate=24, options={"bf": "3"})
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            stream.time_base = stream.codec_context.time_base = Fraction(1, 2400)
            for i, pts in enumerate([0, 100, 200, 300, 400, 24000, 24100, 24200, 24300, 24400]):
                frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 20, np.uint8), format="rgb24")
                frame = frame.reformat(format="yuv420p")
                frame.pts, frame.time_base = pts, Fraction(1, 2400)
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        segment_frames = 8
    else:
        src = clips("vfr-bframes.mkv", num_frames=60, vfr=True, codec_options={"bf": "3"})
        segment_frames = 12
    out = tmp_path / "out.mkv"
    if written == "joined":
        stats = run(_cfg(src, out, segment_frames=segment_frames, encoders=2, preset="medium", crf=23))  # B-frames
        assert "segments" in stats.notes
    else:
        monkeypatch.setattr("pipeline.plan.DEFAULT_SEGMENT_SECONDS", 3600)  # the pause is longer than 6 s
        stats = run(_cfg(src, out, parallel=False, preset="medium", crf=23))  # shorter than a segment: direct
        assert "segments" not in stats.notes
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        packets = sorted((p.pts, p.duration) for p in c.demux(stream) if p.size)
        tb = stream.time_base
    with av.open(str(src)) as c:
        source_pts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    assert [round(float(pts * tb), 3) for pts, _ in packets] == [round(t, 3) for t in source_pts]
    shown = [b - a for (a, _), (b, _) in zip(packets, packets[1:])]
    if written == "joined":
        assert [d for _, d in packets[:-1]] == shown
    else:  # a frame lasting the stream's nominal 1/24 s is stored without a duration, read back as 41 ms
        assert all(abs(d - want) <= 1 for (_, d), want in zip(packets, shown)), (packets, shown)
    end = float((packets[-1][0] + packets[-1][1]) * tb)
    assert source_pts[-1] < end < source_pts[-1] + 0.1


def _stop_once_segment_is_finished(args: list, parts: Path, segment: int, signum: int) -> tuple[int, str]:
    """Start the CLI (`args`), wait for `segment` to be finished in `parts`, send `signum`."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.perf_counter() + 90
    while not (parts / f"segment-{segment:06d}.mp4").exists() and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err


@pytest.mark.parametrize("earlier_output", [False, True])
def test_stop_resume_stop_resume_leaves_one_partial_output_then_the_whole_one(clips, tmp_path, earlier_output):
    """A job stopped, resumed, stopped again (the second stop's partial output has more frames)
    and resumed: each stop's partial output replaces the one before it at the same name, the
    command each stop advises works, and the finished job leaves no partial file behind. Before,
    the second stop kept its partial output beside the first as out.partial.mp4 and the advised
    `--resume` was refused ("already exists"). With an earlier output and --overwrite, that output
    stays untouched until the job is complete."""
    from tests.cli_runs import SLOW_WORKER, slow_cli

    src = clips("seg-long.mp4", num_frames=120, audio=True)
    out, parts = tmp_path / "out.mp4", tmp_path / "out.mp4.parts"
    if earlier_output:
        out.write_bytes(b"yesterday's finished output")
    flags = ["--source", src, "--output", out, "--model", "bicubic", "--scale", "2", "--parallel", "--segment-frames",
             "12", "--encoders", "2", "--quality", "0", "--preset", "ultrafast", *(["--overwrite"] if earlier_output else [])]
    partial = tmp_path / "out.partial.mp4" if earlier_output else out
    rc, err = _stop_once_segment_is_finished(slow_cli(SLOW_WORKER, *flags), parts, 1, signal.SIGINT)
    assert rc == 130 and "--resume" in err, err
    first = len(probe.indices(partial))
    kept = json.loads((parts / "manifest.json").read_text())["segments"]
    rc, err = _stop_once_segment_is_finished(slow_cli(SLOW_WORKER, *flags, "--resume"), parts,
                                             max(map(int, kept)) + 2, signal.SIGHUP)
    assert rc == 129 and "--resume" in err, err
    got = probe.indices(partial)
    assert len(got) > first and got == list(range(len(got)))  # the newer partial output, at the same name
    assert sorted(p.name for p in tmp_path.glob("out*.mp4")) == sorted({"out.mp4", partial.name})
    if earlier_output:
        assert out.read_bytes() == b"yesterday's finished output"
    code = cli.main([*map(str, flags), "--resume", "-q"])  # the command the stop advised
    assert code == 0
    assert probe.indices(out) == list(range(120))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4"]  # no partial output, no work folder


def test_resume_replaces_only_the_partial_output_as_it_was_left(clips, tmp_path):
    src = clips("seg-long.mp4", num_frames=120, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=12, encoders=2, max_frames=30, keep_parts=True))  # a finished job
    with pytest.raises(OutputExists, match="--overwrite"):  # not a partial output this work folder left
        run(_cfg(src, out, segment_frames=12, encoders=2, max_frames=30, resume=True))
    recorded = json.loads((tmp_path / "out.mp4.parts" / "manifest.json").read_text())
    parts = PartsFolder(out)
    parts.open(resume=True, overwrite=False, source=recorded["source"], settings=recorded["settings"])
    parts.record_partial_output(out)  # as a stopped run records the partial output it leaves
    assert PartsFolder.holds_partial_output_of(out)
    out.write_bytes(out.read_bytes() + b"edited")  # changed since: no longer that file
    assert not PartsFolder.holds_partial_output_of(out)


@pytest.mark.parametrize("change, word", [
    (dict(scale=3), "scale"),
    (dict(crf=5), "quality"),
    (dict(preset="veryfast"), "preset"),
    (dict(segment_frames=11), "segment_frames"),
    (dict(codec="hevc"), "codec"),
])
def test_resume_with_other_settings_is_refused_naming_them(clips, tmp_path, change, word):
    src = clips("seg-long.mp4", num_frames=120, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=12, encoders=2, keep_parts=True, max_frames=40))
    out.unlink()
    kw = dict(segment_frames=12, encoders=2, resume=True, max_frames=40)
    kw.update(change)
    with pytest.raises(InvalidOption, match=rf"Cannot resume: .*{word}.*--overwrite"):
        run(_cfg(src, out, **kw))


def test_resume_with_another_source_is_refused(clips, tmp_path):
    out = tmp_path / "out.mp4"
    run(_cfg(clips("seg-long.mp4", num_frames=120, audio=True), out, segment_frames=12, keep_parts=True, max_frames=30))
    out.unlink()
    with pytest.raises(InvalidOption, match=r"Cannot resume: .*the source file"):
        run(_cfg(clips("seg-audio.mp4", num_frames=45, audio=True), out, segment_frames=12, resume=True, max_frames=30))


def test_overwrite_starts_the_work_folder_again(clips, tmp_path):
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=10, keep_parts=True))
    (tmp_path / "out.mp4.parts" / ".segment-000003.part.mp4").write_text("a killed run's temporary")
    out.unlink()
    with pytest.raises(OutputExists, match="--resume"):
        run(_cfg(src, out, segment_frames=10, overwrite=False))
    run(_cfg(src, out, segment_frames=10, overwrite=True))
    assert probe.indices(out) == list(range(45)) and not (tmp_path / "out.mp4.parts").exists()


@pytest.mark.parametrize("how", ["overwrite", "resume"])
def test_files_framepipe_did_not_make_in_the_work_folder_are_never_removed(capsys, clips, tmp_path, how):
    """`--overwrite` names the output, not what a user put in `<output>.parts/`: a run that finds
    a file (or folder) there that it did not make stops in one line before any work, and the file
    stays; so does a resume, which removes a killed run's leftovers."""
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=10, keep_parts=True))
    out.unlink()
    parts = tmp_path / "out.mp4.parts"
    (parts / "notes.txt").write_text("mine")
    (parts / "segment-000009.mp4").mkdir()  # a framepipe name, but framepipe makes no folders
    before = sorted(p.name for p in parts.iterdir())
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2",
                     "--segment-frames", "10", f"--{how}"])
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "2 file(s) framepipe did not make ('notes.txt', 'segment-000009.mp4')" in line and "Move them" in line
    assert "Traceback" not in err
    assert sorted(p.name for p in parts.iterdir()) == before and (parts / "notes.txt").read_text() == "mine"


def test_a_file_put_in_the_work_folder_during_the_run_stays_with_it(caplog, clips, tmp_path, monkeypatch):
    """The finished job removes its own parts, and leaves the folder (with a warning) where a
    user's file appeared in it meanwhile."""
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    record = PartsFolder.record

    def record_and_drop(self, segment, **kwargs):
        record(self, segment, **kwargs)
        (self.path / "dropped-in.txt").write_text("mine")

    monkeypatch.setattr(PartsFolder, "record", record_and_drop)
    with caplog.at_level(logging.WARNING):
        run(_cfg(src, out, segment_frames=10))
    assert probe.indices(out) == list(range(45))
    assert [p.name for p in (tmp_path / "out.mp4.parts").iterdir()] == ["dropped-in.txt"]
    assert any("was left in place" in r.getMessage() for r in caplog.records)


def test_a_damaged_finished_segment_is_made_again(clips, tmp_path):
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=10, keep_parts=True))
    reference = probe.frames_yuv(out)
    out.unlink()
    seg = tmp_path / "out.mp4.parts" / "segment-000002.mp4"
    seg.write_bytes(seg.read_bytes()[:200])  # truncated by a crash of the disk, say
    run(_cfg(src, out, segment_frames=10, resume=True))
    got = probe.frames_yuv(out)
    assert len(got) == 45 and all(np.array_equal(a, b) for a, b in zip(got, reference))


def test_parts_folder_rules(tmp_path):
    out = tmp_path / "o.mp4"
    folder = PartsFolder(out)
    folder.check(resume=False, overwrite=False)  # nothing there
    (tmp_path / "o.mp4.parts").write_text("a file in the way")
    with pytest.raises(Exception, match="in the way"):
        folder.check(resume=True, overwrite=True)


def test_auto_encoders_respect_cores_and_memory(monkeypatch, clips):
    """The limits of the automatic choice; how speed decides within them: tests/test_encoder_choice.py."""
    from hw.encode_speed import EncoderSpeed
    from pipeline import plan as planning
    from pipeline.config import RunConfig as Config

    src = clips("seg-long.mp4", num_frames=120, audio=True)
    import os

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(planning, "_num_cores", lambda: 16)
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=20.0, cores_busy=4.0))
    monkeypatch.setattr(planning, "_model_rate", lambda key: None)  # not known: the limits decide
    source = planning.probe_source(src)
    notes: list[str] = []
    layout, choice = planning._plan_segments(Config(source=src, segment_frames=10), source, 3840, 2160,
                                             use_nvenc=False, notes=notes)
    assert layout.segment_frames == 10 and choice.num_encoders == 6  # cores allow 8, MAX_AUTO_ENCODERS is 6, 12 segments
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 2 << 30)  # 2 GiB: 4K frames are 12 MiB
    _, choice = planning._plan_segments(Config(source=src, segment_frames=10), source, 3840, 2160, use_nvenc=False,
                                        notes=notes)
    assert choice.num_encoders == 1
    _, choice = planning._plan_segments(Config(source=src, segment_frames=10, encoders=8), source, 3840, 2160,
                                        use_nvenc=False, notes=notes)
    assert choice.num_encoders == 8 and any("may exhaust memory" in note for note in notes)
    short, _ = planning._plan_segments(Config(source=src), source, 128, 96, use_nvenc=False, notes=[])
    assert short is None  # 120 frames at 24 fps: one 6-second segment, written directly


def test_nvenc_sessions_are_probed_not_assumed(monkeypatch):
    """Consumer GPUs cap concurrent NVENC sessions: the pool gets what the GPU grants."""
    import types

    from hw import nv_probe, nv_runtime

    module = types.ModuleType("PyNvVideoCodec")
    opened: list[object] = []

    def create(width, height, fmt, cpu, **options):
        if len(opened) >= 3:
            raise RuntimeError("NV_ENC_ERR_OUT_OF_MEMORY: session limit")
        enc = object()
        opened.append(enc)
        return enc

    module.CreateEncoder = create
    monkeypatch.setattr(nv_runtime, "nvcodec_import", lambda: module)
    assert nv_probe.nvenc_sessions(codec="h264", gpu=0, width=640, height=360, wanted=6) == (True, 3)
    opened.clear()
    assert nv_probe.nvenc_sessions(codec="h264", gpu=0, width=640, height=360, wanted=2) == (True, 2)


def test_join_refuses_segments_with_other_parameter_sets(clips, tmp_path):
    from hw.av_join import join_segments

    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    a, b = tmp_path / "a.mp4", tmp_path / "b.mp4"
    run(_cfg(src, a, max_frames=10))
    run(_cfg(src, b, max_frames=10, scale=3))
    with pytest.raises(InvalidOption, match=r"Cannot join b\.mp4: its stream parameters differ"):
        join_segments([(a, Fraction(0)), (b, Fraction(0))], tmp_path / "j.mp4", source_path=None, complete=True,
                      warn=print)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_nvenc_segments_from_separate_sessions_join_into_one_stream(clips, tmp_path, codec):
    """NVENC's segment structure, on the CPU with the stand-in (tests/nvenc_standin.py: NVENC's
    parameter sets known only after the first picture, a profile libx264 would not pick, output
    3 frames late): a session per segment from a pool of three, joined by stream copy into one
    stream that decodes without a warning, every keyframe enterable, audio and timestamps kept."""
    import threading

    from hw.av_join import join_segments
    from hw.av_source import probe_source
    from hw.nvenc_writer import NvencFileWriter
    from pipeline.messages import ErrorChannel, ResultItem
    from pipeline.segment_writer import EncoderPool, SegmentWriter
    from pipeline.stats import RunStats
    from tests.nvenc_standin import GOP, NvencLikeEncoder, keyframe_entry_problems
    from tests.test_gpu_io import _nv12_frames

    src = clips("seg-nvenc.mp4", num_frames=40, audio=True, width=128, height=96)
    info = probe_source(src)
    out = tmp_path / "out.mp4"
    parts = PartsFolder(out)
    parts.open(resume=False, overwrite=False, source={}, settings={})
    sessions = []

    def open_nvenc(path):
        sessions.append(path.name)
        return NvencFileWriter(path, gpu=0, codec=codec, width=info.width, height=info.height,
                               time_base=info.time_base, frame_rate=info.average_rate, color=info.color,
                               source_path=None, warn=pytest.fail, encoder_factory=NvencLikeEncoder)

    layout = SegmentLayout(segment_frames=7)
    stats = RunStats()
    errors = ErrorChannel(threading.Event())
    pool = EncoderPool(3, queue_frames=7, parts=parts, layout=layout, open_encoder=open_nvenc, errors=errors,
                       stats=stats)
    writer = SegmentWriter(layout, pool, stats=stats, is_finished=lambda k: False)
    for index, (nv12, pts) in enumerate(_nv12_frames(src)):
        writer.process(ResultItem(index, pts, "nv12", (nv12,)))
    writer.finish()
    writer.close(complete=True)
    assert writer.closed_cleanly and errors.first() is None
    assert len(sessions) == 6  # 40 frames in segments of 7: a fresh session each
    finished = parts.finished()
    chain = [(parts.path / str(finished[k]["file"]), int(finished[k]["pts_offset"]) * info.time_base)
             for k in sorted(finished)]
    assert join_segments(chain, out, source_path=src, complete=True, warn=pytest.fail, tag_hvc1=False) == 40
    assert probe.indices(out) == list(range(40))
    assert probe.pts_exact(out) == probe.pts_exact(src)
    assert probe.packet_times(out, "audio") == probe.packet_times(src, "audio")
    assert _decode_errors(out) == []
    keys, problems = keyframe_entry_problems(out)
    assert keys == [s + g for s in range(0, 40, 7) for g in range(0, min(7, 40 - s), GOP)]
    assert problems == []


def test_segments_carry_rotation_aspect_ratio_and_colour(clips, tmp_path):
    """The join takes the segments' stream as its template: the display matrix, the pixel
    aspect ratio and the colour tags of the source survive it, as in a one-file run."""
    from tests.test_inputs import _frames, _write

    phone = _write(tmp_path / "phone.mp4", _frames(12), stream_setup=lambda s: s.set_display_rotation(90))
    run(_cfg(phone, tmp_path / "rot.mp4", segment_frames=5))
    with av.open(str(tmp_path / "rot.mp4")) as c:
        assert next(c.decode(video=0)).rotation == 90

    def anamorphic(stream):
        stream.codec_context.sample_aspect_ratio = Fraction(32, 27)

    wide = _write(tmp_path / "wide.mkv", _frames(12, 72, 48), stream_setup=anamorphic)
    for suffix in (".mp4", ".mkv"):
        out = tmp_path / f"sar{suffix}"
        run(_cfg(wide, out, segment_frames=5))
        with av.open(str(out)) as c:
            assert Fraction(c.streams.video[0].sample_aspect_ratio) == Fraction(32, 27)
    tagged = clips("seg-bt601.mp4", num_frames=12, color=(6, 6, 6, 1))
    for suffix in (".mp4", ".mkv"):
        out = tmp_path / f"colour{suffix}"
        run(_cfg(tagged, out, segment_frames=5))
        assert probe.color_tags(out) == (6, 6, 6, 1)


@pytest.mark.parametrize("num_frames, segment_frames", [(1, None), (2, None), (7, 3), (8, 3)])
def test_hevc_mp4_of_one_or_two_frames(clips, tmp_path, num_frames, segment_frames):
    """Regression: x265 gives a stream of one or two frames an uninitialised DTS, which the MP4
    muxer refused: a short clip, a stopped run, or a last segment of 1-2 frames failed."""
    src = clips("seg-short.mp4", num_frames=num_frames)
    out = tmp_path / "short.mp4"
    run(_cfg(src, out, codec="hevc", crf=20, segment_frames=segment_frames))
    assert probe.indices(out) == list(range(num_frames))
    assert probe.pts_exact(out) == probe.pts_exact(src)
    assert _decode_errors(out) == []


@pytest.mark.parametrize("dispatch", ["least-loaded", "round-robin"])
def test_a_slow_segment_does_not_hold_up_the_next_ones(tmp_path, dispatch):
    """Two encoders that behave as x264 does: a frame written returns at once (the look-ahead holds
    it) and the work is paid when the segment closes. Segment 0 is hard (its close lasts until
    every frame was handed over, or 2 s where round-robin blocks on its full queue), the rest easy;
    frames come every 20 ms. Least-loaded (the default) counts the frames of a
    segment not closed yet as the encoder's load, so segment 2 goes to the free encoder, not to
    the one still closing segment 0 (as segment k mod N did, and as counting the frames written
    would); every segment is finished and recorded whichever encoder made it."""
    import threading

    from pipeline.messages import ErrorChannel, ResultItem
    from pipeline.segment_writer import EncoderPool, SegmentWriter
    from pipeline.stats import RunStats

    made_by: dict[int, str] = {}
    all_sent = threading.Event()  # not a fixed 2 s: on a loaded machine the last frames came later than that

    class Writer:  # hw.encoding.Encoder's shape: write planes at a time stamp, close
        def __init__(self, path):
            self.path, self.segment = path, int(path.name.split(".")[1].split("-")[-1])

        def write(self, planes, pts):
            made_by[self.segment] = threading.current_thread().name

        def close(self, *, complete):
            if self.segment == 0:
                all_sent.wait(timeout=2.0 if dispatch == "round-robin" else 30.0)
            self.path.write_bytes(b"segment")

    parts = PartsFolder(tmp_path / "out.mp4")
    parts.open(resume=False, overwrite=False, source={}, settings={})
    layout = SegmentLayout(segment_frames=10)
    stats, errors = RunStats(), ErrorChannel(threading.Event())
    pool = EncoderPool(2, queue_frames=10, parts=parts, layout=layout, open_encoder=Writer, errors=errors,
                       stats=stats, dispatch=dispatch)
    writer = SegmentWriter(layout, pool, stats=stats, is_finished=lambda k: False)
    for index in range(50):  # frames as a model makes them, one every 20 ms
        if index >= 20 and index % 10 == 0 and dispatch != "round-robin":  # the easy encoder has finished the
            deadline = time.monotonic() + 30  # segment before this one, even on a loaded machine (CI twice
            while index // 10 - 1 not in parts.finished() and time.monotonic() < deadline:  # dispatched on a tie)
                time.sleep(0.01)
        writer.process(ResultItem(index, index, "none", ()))  # no pixels: the stand-in encoder needs none
        time.sleep(0.02)
    all_sent.set()
    writer.finish()
    writer.close(complete=True)
    assert writer.closed_cleanly and errors.first() is None and stats.num_frames_encoded == 50
    assert sorted(parts.finished()) == [0, 1, 2, 3, 4]
    if dispatch == "round-robin":
        assert [made_by[k] for k in range(5)] == ["encoder0", "encoder1", "encoder0", "encoder1", "encoder0"]
    else:
        assert made_by[0] == "encoder0" and [made_by[k] for k in range(1, 5)] == ["encoder1"] * 4, made_by


def test_equal_encoders_take_segments_in_turn(tmp_path):
    """Least-loaded among equals: the encoder handed a segment longest ago, so equal encoders on
    equal segments take them in turn (k mod N), not all the lowest numbered one."""
    import threading

    from pipeline.messages import ErrorChannel, ResultItem
    from pipeline.segment_writer import EncoderPool, SegmentWriter
    from pipeline.stats import RunStats

    made_by: dict[int, str] = {}
    release = threading.Event()

    class Writer:
        def __init__(self, path):
            self.path, self.segment = path, int(path.name.split(".")[1].split("-")[-1])

        def write(self, planes, pts):
            made_by[self.segment] = threading.current_thread().name

        def close(self, *, complete):
            release.wait(10)  # every segment stays open until all were handed: equal loads
            self.path.write_bytes(b"segment")

    parts = PartsFolder(tmp_path / "out.mp4")
    parts.open(resume=False, overwrite=False, source={}, settings={})
    layout = SegmentLayout(segment_frames=2)
    stats, errors = RunStats(), ErrorChannel(threading.Event())
    pool = EncoderPool(3, queue_frames=8, parts=parts, layout=layout, open_encoder=Writer, errors=errors, stats=stats)
    writer = SegmentWriter(layout, pool, stats=stats, is_finished=lambda k: False)
    for index in range(12):
        writer.process(ResultItem(index, index, "none", ()))
    threading.Timer(0.3, release.set).start()
    writer.finish()
    writer.close(complete=True)
    assert errors.first() is None and sorted(parts.finished()) == list(range(6))
    assert [made_by[k] for k in range(6)] == [f"encoder{k % 3}" for k in range(6)]


# -- the last segments shorter, so that the encoders end together ---------------------------------------------


@pytest.mark.parametrize("segment_frames", [1, 2, 7, 24, 48, 144])
@pytest.mark.parametrize("taper_end", [1, 5, 47, 100, 1201])
def test_a_tapered_layout_gives_every_frame_one_segment_in_order(segment_frames, taper_end):
    layout = SegmentLayout(segment_frames, taper_end=taper_end)
    last = -1
    for index in range(taper_end + 3 * segment_frames + 2):
        k = layout.segment_of(index)
        assert layout.start_of(k) <= index < layout.start_of(k + 1)
        assert k in (last, last + 1)  # contiguous, numbered in order
        last = k
    sizes = layout.sizes_at_end()
    begin = layout.start_of(layout.segment_of(taper_end - 1) - len(sizes) + 1) if sizes else None
    if sizes:
        assert begin % segment_frames == 0 and sum(sizes) == taper_end - begin
        assert list(sizes[2:]) == sorted(sizes[2:], reverse=True) and max(sizes) <= segment_frames
        assert sizes[-1] == min(sizes)  # the smallest last: 1/8 of S where the video holds the whole taper
        assert sizes[-1] == max(2, -(-segment_frames // 8)) or taper_end < 4 * segment_frames
        # past the frames expected (the estimate was short): segments of the full length again
        k = layout.segment_of(taper_end)
        assert layout.start_of(k) == taper_end and layout.length_of(k) == segment_frames
    else:  # no taper for segments of 1 or 2 frames
        assert segment_frames <= 2 and all(layout.length_of(k) == segment_frames for k in range(5))


def test_the_taper_ends_in_small_segments_and_a_long_video_keeps_its_length():
    layout = SegmentLayout(48, taper_end=4800)
    assert layout.sizes_at_end()[-3:] == (11, 8, 6)
    assert [layout.length_of(k) for k in range(90)] == [48] * 90  # all but the last ~160 frames
    assert SegmentLayout(48).sizes_at_end() == () and SegmentLayout(1, taper_end=100).sizes_at_end() == ()
    # the frames before the taper join its first segment (once a 1-frame segment of their own)
    assert SegmentLayout(144, taper_end=631).sizes_at_end()[:2] == (136, 101)
    assert SegmentLayout(180, taper_end=1000).sizes_at_end()[:3] == (95, 95, 130)


def test_a_run_with_framepipes_segment_length_tapers_and_keeps_every_frame(clips, tmp_path):
    """4 fps: 24 frames a segment (6 s), 120 frames: the last nine shorter, down to 3 frames."""
    src = clips("seg-taper.mp4", num_frames=120, fps=4, audio=True)
    one = tmp_path / "one.mp4"
    run(_cfg(src, one, encoders=1))
    out = tmp_path / "out.mp4"
    stats = run(_cfg(src, out, encoders=2, keep_parts=True))
    manifest = json.loads((tmp_path / "out.mp4.parts" / "manifest.json").read_text())
    ranges = [(v["first"], v["stop"]) for _, v in sorted(manifest["segments"].items(), key=lambda kv: int(kv[0]))]
    assert ranges == [(0, 24), (24, 44), (44, 64), (64, 80), (80, 92), (92, 101), (101, 108), (108, 113), (113, 117),
                      (117, 120)]
    assert manifest["settings"]["segment_taper"] == 120
    assert "the last 9 shorter, down to 3" in stats.notes["segments"]
    probe.assert_same_video(one, out)
    assert probe.indices(out) == list(range(120))
    assert probe.packet_times(out, "audio") == probe.packet_times(src, "audio")
    assert _decode_errors(out) == []


def test_segments_are_not_tapered_where_their_frames_are_asked_or_one_encoder_writes(clips, tmp_path):
    src = clips("seg-taper.mp4", num_frames=120, fps=4, audio=True)
    for i, kw in enumerate([dict(encoders=2, segment_frames=24), dict(encoders=1)]):
        out = tmp_path / f"out{i}.mp4"
        run(_cfg(src, out, keep_parts=True, **kw))
        manifest = json.loads((tmp_path / f"out{i}.mp4.parts" / "manifest.json").read_text())
        assert "segment_taper" not in manifest["settings"]
        assert sorted(v["stop"] - v["first"] for v in manifest["segments"].values()) == [24] * 5
    out = tmp_path / "seconds.mp4"  # --segment-seconds: a duration, tapered at the end as framepipe's own
    run(_cfg(src, out, keep_parts=True, encoders=2, segment_seconds=6.0))
    assert json.loads((tmp_path / "seconds.mp4.parts" / "manifest.json").read_text())["settings"]["segment_taper"] == 120


def test_a_resumed_run_lays_out_its_segments_as_the_manifest_says(clips, tmp_path):
    """The taper follows the frame count expected, which a resumed run must not recompute: it
    takes the recorded one, or none where the manifest has none (made before segments tapered)."""
    from pipeline import plan as plan_mod
    from pipeline.segments import Manifest

    src = clips("seg-taper.mp4", num_frames=120, fps=4)
    cfg = _cfg(src, tmp_path / "out.mp4", encoders=2, resume=True)
    info = plan_mod.probe_source(src)
    parts = PartsFolder(tmp_path / "out.mp4")
    layout = SegmentLayout(24)
    assert plan_mod._tapered(layout, cfg, info, 2, parts).taper_end == 120  # no manifest: the estimate
    parts.path.mkdir()
    for recorded, expected in (({"segment_taper": 100}, 100), ({}, None)):
        parts.manifest_path.write_bytes(Manifest(source={}, settings={"segment_frames": 24, **recorded}).to_json())
        assert plan_mod._tapered(layout, cfg, info, 2, parts).taper_end == expected
        assert plan_mod._tapered(layout, replace(cfg, resume=False), info, 2, parts).taper_end == 120


def test_kill_9_then_resume_a_tapered_run_is_frame_exact(clips, tmp_path):
    src = clips("seg-taper.mp4", num_frames=120, fps=4, audio=True)
    whole = tmp_path / "whole.mp4"
    run(_cfg(src, whole, encoders=2))
    out = tmp_path / "out.mp4"
    _kill_mid_run(src, out, ["--encoders", "2"])
    manifest = json.loads((tmp_path / "out.mp4.parts" / "manifest.json").read_text())
    assert manifest["settings"]["segment_taper"] == 120 and 2 <= len(manifest["segments"]) < 10
    stats = run(_cfg(src, out, encoders=2, resume=True))
    assert stats.notes["segments"].endswith(f"{len(manifest['segments'])} finished segment(s) taken over from an earlier run")
    probe.assert_same_video(whole, out)
    assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")
