"""The console side of main.py: device panel, summary, --stats-json, --list-models, fallbacks."""

from __future__ import annotations

import json

from rich.console import Console

import main as cli
from pipeline.stats import RunStats
from tests import probe


def _stats() -> RunStats:
    stats = RunStats(num_frames_expected=100, num_frames_decoded=60, num_frames_written=50)
    w0 = stats.add_worker("worker-gpu0", "cuda:0")
    w0.batch_size, w0.health = 8, "ok"
    w0.record_batch(8)
    w0.record_device_sample((20 * 2**30, 80 * 2**30), 97)
    w1 = stats.add_worker("worker-gpu1", "cuda:1")
    w1.batch_size, w1.health, w1.num_failures = 4, "failed", 3
    stats.queue_depths.update(work=lambda: 12, results=lambda: 3)
    return stats


def test_device_panel_shows_memory_util_batch_health_and_queues():
    console = Console(record=True, width=140)
    console.print(cli.device_table(_stats()))
    text = console.export_text()
    assert "queues: work 12, results 3" in text
    row0 = next(line for line in text.splitlines() if "worker-gpu0" in line)
    assert "███" in row0 and "20.0/80 GiB" in row0 and "97%" in row0 and " 8 " in row0 and "ok" in row0
    row1 = next(line for line in text.splitlines() if "worker-gpu1" in line)
    assert "failed" in row1 and " - " in row1  # no NVML figures for it: shown as "-"


def test_device_figures_reach_stats_json():
    w = _stats().workers["worker-gpu0"]
    w.record_device_sample((30 * 2**30, 80 * 2**30), 50)
    d = w.to_dict()
    assert d["memory_used_bytes"] == 30 * 2**30 and d["peak_memory_used_bytes"] == 30 * 2**30
    assert d["utilization_percent"] == 50 and d["mean_utilization_percent"] == 73.5


def test_nvcodec_probes_run_in_a_thread_of_their_own(monkeypatch):
    """Regression: a failed NVENC probe left a CUDA context current on the main thread, and
    --nvdec --nvenc then failed with CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH (H100)."""
    import threading

    from hw import nv_probe
    from pipeline import plan as planning

    seen = []
    monkeypatch.setattr(nv_probe, "probe_nvenc", lambda **kw: (seen.append(threading.current_thread()), (False, "no"))[1])
    assert planning._probe("probe_nvenc", codec="h264", gpu=0) == (False, "no")
    assert seen and seen[0] is not threading.main_thread()


def test_summary_lists_stages_devices_and_warnings():
    stats = _stats()
    stats.clock("reader").busy_seconds = 1.5
    stats.warn("audio stream 1 (wavpack) cannot be stored in .mp4: re-encoded to aac")
    stats.finished_at = stats.started_at + 2.0
    console = Console(record=True, width=160)
    cli.render_summary(console, stats)
    text = console.export_text()
    assert "done: 50 frame(s) in 2.00 s = 25.00 fps" in text
    assert "reader" in text and "1.50" in text
    assert "worker-gpu1" in text and "failed" in text
    assert "warning: audio stream 1 (wavpack)" in text


def test_stats_json_has_the_summary_figures(clips, tmp_path, capsys):
    src = clips("cli.mp4", num_frames=20, audio=True)
    out, js = tmp_path / "o.mp4", tmp_path / "s.json"
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2",
                     "--parallel", "--stats-json", str(js)])
    assert code == 0
    data = json.loads(js.read_text())
    assert data["status"] == "ok" and data["frames_written"] == data["frames_decoded"] == 20
    assert set(data["stages"]) == {"reader", "collector", "writer"}
    assert data["workers"][0]["name"] == "worker-cpu0" and data["workers"][0]["frames"] == 20
    assert data["model"] == "bicubic" and data["scale"] == 2 and data["mode"] == "parallel"
    err = capsys.readouterr().err
    assert f"Output: {out}" in err and "done: 20 frame(s)" in err


def test_failed_run_still_writes_stats_json(clips, tmp_path, capsys, monkeypatch):
    from pipeline.worker import Worker

    def boom(self, items):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(Worker, "process", boom)
    src = clips("cli.mp4", num_frames=20, audio=True)
    js = tmp_path / "s.json"
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "--parallel",
                     "--stats-json", str(js)])
    assert code == 1
    data = json.loads(js.read_text())
    assert data["status"] == "failed" and "kaboom" in data["error"]
    err = capsys.readouterr().err
    assert "error: worker-cpu0: RuntimeError: kaboom" in err and "Traceback" not in err


def test_hardware_flags_fall_back_with_one_line_each(clips, tmp_path, capsys):
    src = clips("cli.mp4", num_frames=20, audio=True)
    out = tmp_path / "o.mp4"
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--parallel",
                     "--nvdec", "--nvenc", "--multi-gpu"])
    assert code == 0
    warnings = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 3
    assert any("--nvdec" in w and "PyAV" in w for w in warnings)
    assert any("--nvenc" in w and "CPU" in w for w in warnings)
    assert any("--multi-gpu" in w and "CPU" in w for w in warnings)
    assert probe.indices(out) == list(range(20))


def test_a_log_gets_a_progress_line_every_few_seconds(clips, tmp_path, capsys):
    """Not a terminal (nohup, a log file): plain lines, counting up, none after -q or by default
    in a run shorter than the interval."""
    import re

    src = clips("cli.mp4", num_frames=20)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic",
                     "--batch-size", "1", "--progress-every", "0.001"])
    err = capsys.readouterr().err
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("progress:")]
    counts = [int(re.match(r"progress: (\d+)/20 frames \(\d+\.\d%\), \d+\.\d fps, 0:00:\d\d elapsed", ln).group(1))
              for ln in lines]
    assert counts and counts == sorted(counts) and counts[-1] <= 20, lines
    for args in (["--progress-every", "0.001", "-q"], []):  # -q; the default (30 s) in a run of a second
        cli.main(["--source", str(src), "--output", str(tmp_path / f"o{len(args)}.mp4"), "--model", "bicubic", *args])
        assert "progress:" not in capsys.readouterr().err


def test_a_matroska_source_has_a_fixed_progress_total(clips, tmp_path, capsys):
    """Regression (user report: an MKV's progress lines read 2/54, 4/56, ... 72/72): Matroska and
    WebM carry no frame count, and the total was the frames decoded so far, which runs a queue
    ahead of the frames done; the duration x the frame rate estimates it, and the decoded count
    replaces the estimate once the source has ended."""
    import re

    src = clips("cli.mkv", num_frames=20)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mkv"), "--model", "bicubic", "--parallel",
                     "--batch-size", "1", "--queue-size", "2", "--progress-every", "0.001"])
    err = capsys.readouterr().err
    assert code == 0, err
    totals = {int(m.group(1)) for ln in err.splitlines() if (m := re.match(r"progress: \d+/(\d+) frames", ln))}
    assert totals == {20}, err


def test_the_progress_total_is_the_estimate_until_the_source_ends():
    stats = RunStats(num_frames_estimate=72, num_frames_decoded=54, num_frames_written=2)
    stats.started_at, stats.finished_at = 100.0, 101.0
    assert cli.progress_line(stats, 1).startswith("progress: 2/72 frames (2.8%)")
    stats.num_frames_decoded, stats.num_frames_written, stats.source_exhausted = 70, 70, True
    assert cli.progress_line(stats, 1).startswith("progress: 70/70 frames (100.0%)")
    stats.num_frames_expected = 75  # a header's count the source fell short of
    assert cli.progress_line(stats, 1).startswith("progress: 70/70 frames (100.0%)")


def test_the_progress_line_gives_the_rate_and_what_is_left():
    stats = RunStats(num_frames_expected=14400, num_frames_decoded=1300, num_frames_written=1200)
    stats.started_at, stats.finished_at = 100.0, 130.0
    assert cli.progress_line(stats, 30.4) == ("progress: 1200/14400 frames (8.3%), 40.0 fps, 0:00:30 elapsed, "
                                              "ETA 0:05:30")
    unknown = RunStats(num_frames_written=50)
    unknown.started_at, unknown.finished_at = 100.0, 102.0
    assert cli.progress_line(unknown, 3725) == "progress: 50 frames, 25.0 fps, 1:02:05 elapsed"


def test_a_resumed_run_gives_its_own_rate():
    """Regression (user report): a resumed segmented run said 'done: 72 frame(s) in 6.17 s = 11.67 fps'
    having made 24 of them; the joined output's count held the 48 an earlier run finished. The
    rate is this run's, and the line says how many frames came from the earlier run."""
    stats = RunStats(num_frames_decoded=72, num_frames_written=72, num_frames_kept=48, written_is_output=True)
    stats.started_at, stats.finished_at = 100.0, 106.0
    assert stats.fps == 4.0 and stats.to_dict()["fps"] == 4.0
    console = Console(record=True, width=140)
    cli.render_summary(console, stats)
    assert "done: 72 frame(s), 48 of them finished by an earlier run, in 6.00 s = 4.00 fps" in console.export_text()
    pictures = RunStats(num_frames_decoded=8, num_frames_written=6, num_frames_kept=2)  # this run's count
    pictures.started_at, pictures.finished_at = 100.0, 103.0
    assert pictures.fps == 2.0
    cli.render_summary(console, pictures)
    assert "done: 8 frame(s), 2 of them finished by an earlier run, in 3.00 s = 2.00 fps" in console.export_text()


def test_quiet_prints_nothing_on_success(clips, tmp_path, capsys):
    src = clips("cli.mp4", num_frames=20, audio=True)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "-q"])
    assert code == 0
    assert capsys.readouterr().err.strip() == ""


def test_list_models(capsys):
    assert cli.main(["--list-models"]) == 0
    out = capsys.readouterr().out
    for name in ("realesr-animevideov3", "realesrgan-x4plus", "realesrgan-x4plus-anime", "bicubic"):
        assert name in out
    assert "SRVGGNetCompact" in out and "RRDBNet" in out and "16,697,987" in out


def test_nvenc_preset_on_cpu_encoder_falls_back(clips, tmp_path, capsys):
    """Regression (review): an NVENC preset was handed to libx264 when NVENC was absent."""
    src = clips("cli.mp4", num_frames=20, audio=True)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "--parallel",
                     "--nvenc", "--preset", "p5"])
    assert code == 0
    err = capsys.readouterr().err
    assert "warning: --preset p5 is an NVENC preset; the CPU encoder uses its default (medium)." in err


def test_bad_stats_json_path_is_bad_input(clips, tmp_path, capsys):
    src = clips("cli.mp4", num_frames=20, audio=True)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic",
                     "--stats-json", str(tmp_path / "nope" / "s.json")])
    assert code == 2
    assert "Invalid --stats-json" in capsys.readouterr().err


def test_interpolation_flags_without_interpolate_say_they_do_nothing(clips, tmp_path, capsys):
    """Given without --interpolate they did nothing and said nothing; left out, nothing is said."""
    src = clips("cli.mp4", num_frames=20, audio=True)
    common = ["--source", str(src), "--model", "bicubic", "--max-frames", "2", "--overwrite"]
    runs = [([], []),
            (["--scene-threshold", "0.2"], ["warning: --scene-threshold does nothing without --interpolate N: ignored."]),
            (["--interpolation-model", "blend", "--scene-threshold", "0"],
             ["warning: --interpolation-model and --scene-threshold do nothing without --interpolate N: ignored."])]
    for flags, want in runs:
        assert cli.main([*common, "--output", str(tmp_path / "o.mp4"), *flags]) == 0
        assert [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("warning:")] == want


def test_matroska_output_refuses_frames_under_a_millisecond_apart(clips, tmp_path, capsys):
    """.mkv stores whole milliseconds: 120 fps x 16 (0.52 ms apart) would give made frames equal
    timestamps, so the run is refused before it starts, naming the fix; .mp4 is fine."""
    src = clips("fast.mp4", num_frames=3, fps=120)
    args = ["--source", str(src), "--interpolate", "16", "--interpolation-model", "blend"]
    assert cli.main([*args, "--output", str(tmp_path / "o.mkv")]) == 2
    err = capsys.readouterr().err
    assert [ln for ln in err.splitlines() if ln.strip()] == [
        "error: --interpolate 16 of 120.000 fps makes 1920 fps: frames under 1 ms apart, which .mkv (timestamps in "
        "whole milliseconds) cannot tell apart. Write .mp4 or .mov (--output o.mp4), whose timestamps are finer, or "
        "use --interpolate 8 or less."], err
    assert not (tmp_path / "o.mkv").exists()
    assert cli.main([*args, "--output", str(tmp_path / "o.mp4")]) == 0
    assert len(probe.pts_exact(tmp_path / "o.mp4")) == len(set(probe.pts_exact(tmp_path / "o.mp4"))) == 2 * 16 + 1


def test_a_rate_misreported_high_does_not_refuse_matroska(clips, tmp_path):
    """A remuxed file's average rate can be far off (2,400 fps for a 24 fps video): the video's own
    frame intervals decide, so .mkv is refused only for frames really under 1 ms apart."""
    from fractions import Fraction
    from types import SimpleNamespace

    import pytest

    from core.errors import InvalidOption
    from pipeline.plan import _check_frame_spacing

    slow, fast = clips("slow.mp4", num_frames=3, fps=24), clips("fast.mp4", num_frames=3, fps=120)
    misreported = SimpleNamespace(average_rate=Fraction(2400))
    _check_frame_spacing(tmp_path / "o.mkv", misreported, 16, video=slow)  # 24 x 16 = 384 fps: fine
    with pytest.raises(InvalidOption, match="under 1 ms apart"):
        _check_frame_spacing(tmp_path / "o.mkv", misreported, 16, video=fast)
    with pytest.raises(InvalidOption, match="under 1 ms apart"):  # pictures: --fps is the rate
        _check_frame_spacing(tmp_path / "o.mkv", misreported, 1, video=None)


def test_a_variable_rate_burst_under_a_millisecond_is_refused_for_matroska(tmp_path, capsys):
    """A variable frame rate whose average is low (8 fps) but whose first frames are 1 ms apart:
    --interpolate 3 put made frames on the same millisecond in .mkv (a broken file, exit 0). The
    video's own intervals are read whatever its average rate says."""
    from fractions import Fraction

    import av
    import numpy as np

    src = tmp_path / "burst.mp4"
    with av.open(str(src), "w") as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"bf": "0"}
        for k, ms in enumerate([0, 1, 42, 125, 250, 500, 750, 1000]):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 20 * k, np.uint8), format="rgb24")
            frame.pts, frame.time_base = ms, Fraction(1, 1000)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    args = ["--source", str(src), "--interpolate", "3", "--interpolation-model", "blend", "--model", "bicubic",
            "--scale", "1"]
    assert cli.main([*args, "--output", str(tmp_path / "o.mkv")]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error: --interpolate 3 of 1000.000 fps at its fastest makes 3000 fps"), err
    assert not (tmp_path / "o.mkv").exists()
    assert cli.main([*args, "--output", str(tmp_path / "o.mkv"), "--interpolate", "1"]) == 0  # 1 ms apart: fine


def test_av1_in_mov_is_bad_input(clips, tmp_path, capsys):
    src = clips("cli.mp4", num_frames=20, audio=True)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mov"), "--model", "bicubic", "--codec", "av1"])
    assert code == 2
    assert "error: --codec av1 cannot be stored in a .mov file" in capsys.readouterr().err
    assert not (tmp_path / "o.mov").exists()


def test_default_output_is_named_after_the_models_scale(clips, tmp_path, capsys):
    import shutil

    src = tmp_path / "clip.mp4"
    shutil.copy(clips("cli.mp4", num_frames=20, audio=True), src)
    assert cli.main(["--source", str(src), "--model", "bicubic", "--scale", "3", "-q"]) == 0
    assert (tmp_path / "clip.bicubic-x3.mp4").exists()


def test_fps_is_checked_with_a_video_and_said_to_do_nothing(clips, tmp_path, capsys):
    """--fps times a picture sequence; with a video, 0 and -5 ran silently (the new-user reviewer,
    2026-12-07). A bad value is one line and exit 2; a good one is said to be ignored."""
    src = clips("fps.mp4", num_frames=3)
    args = ["--source", str(src), "--model", "bicubic", "--scale", "1"]
    for bad in ("0", "-5"):
        assert cli.main([*args, "--output", str(tmp_path / "bad.mp4"), "--fps", bad]) == 2
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert err == [f"error: Invalid --fps ('{bad}'): give frames per second, e.g. 24, 23.976 or 24000/1001."]
    assert not (tmp_path / "bad.mp4").exists()
    assert cli.main([*args, "--output", str(tmp_path / "o.mp4"), "--fps", "30"]) == 0
    assert ("warning: --fps 30 sets the rate of a picture sequence; a video keeps its own timestamps: ignored."
            in capsys.readouterr().err.splitlines())


def test_the_summary_keeps_names_and_counts_whole_on_an_80_column_terminal():
    """The wide table cut "worker-gpu0" to "wor…" at 80 columns: there the notes go below it."""
    stats = _stats()
    stats.started_at, stats.finished_at = 0.0, 10.0
    w = stats.workers["worker-gpu0"]
    w.probe_seconds, w.probe_note = 1.2, "batch 8 of 1, 2, 4, 8 (within 5% of the fastest)"
    for width in (80, 160):
        console = Console(record=True, width=width)
        cli.render_summary(console, stats)
        text = console.export_text()
        table = [line for line in text.splitlines() if not line.startswith(("worker-gpu0:", "worker-gpu1:"))]
        assert "…" not in text and max(len(line) for line in table) <= width, text  # the notes soft-wrap
        row = next(line for line in text.splitlines() if line.lstrip("│ ").startswith("worker-gpu0") and "cuda:0" in line)
        assert " 8x1 " in row and "failed" in text
        assert "1.2 s: batch 8 of 1, 2, 4, 8" in text  # whole (at 160 columns, wrapped in its cell)
