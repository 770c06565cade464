"""A pile of videos from the command line: --source a folder of videos or a glob of them, one run
each (main.py `_batch`, `_run_batch`). Real-ESRGAN's video script and video2x users expect it;
before, a folder of videos was "holds no pictures" and a glob of them "Source not found" (the
new-user reviewer, 2026-12-07)."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time

import pytest

import main as cli
from tests import probe
from tests.cli_runs import SLOW_WORKER, is_writing, slow_cli

COMMON = ["--model", "bicubic", "--scale", "2", "--quality", "0", "--preset", "ultrafast"]


def _pile(clips, folder, names=("b10", "b9", "a1"), num_frames=12):
    folder.mkdir()
    for name in names:
        shutil.copy(clips(f"pile-{num_frames}.mp4", num_frames=num_frames, audio=True), folder / f"{name}.mp4")
    return folder


def _lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_a_folder_of_videos_gets_one_output_each_in_natural_order(clips, tmp_path, capsys):
    src = _pile(clips, tmp_path / "in")
    (src / "broken.mkv").write_bytes(b"\x1aE\xdf\xa3 not a whole file")
    (src / "notes.txt").write_text("not a video")
    assert cli.main(["--source", str(src), "--output", str(tmp_path / "out"), "-q", *COMMON]) == 1
    lines = _lines(capsys)
    assert lines[0].startswith("error: broken.mkv: Source") and len(lines) == 2, lines
    assert lines[1] == "3 of 4 video(s) done; 1 failed (broken.mkv)."
    outputs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert outputs == ["a1.bicubic-x2.mp4", "b10.bicubic-x2.mp4", "b9.bicubic-x2.mp4"]
    for name in outputs:
        assert probe.indices(tmp_path / "out" / name) == list(range(12))
    (src / "broken.mkv").unlink()
    assert cli.main(["--source", str(src), "--output", str(tmp_path / "out"), *COMMON]) == 0  # done ones skipped
    lines = _lines(capsys)
    assert [ln.split(":")[0] for ln in lines if ln.startswith("skipped")] == ["skipped"] * 3
    assert [ln for ln in lines if "/3 " in ln] == [f"{k}/3 {src / n}.mp4" for k, n in enumerate(["a1", "b9", "b10"], 1)]
    assert lines[-1] == "0 of 3 video(s) done; 3 skipped (output exists)."


def test_a_glob_of_videos_writes_beside_them_and_never_takes_its_outputs_as_inputs(clips, tmp_path, capsys):
    src = _pile(clips, tmp_path / "in", names=("x", "y"))
    for _ in range(2):  # the second time, x.bicubic-x2.mp4 matches the glob too: not an input
        assert cli.main(["--source", str(src / "*.mp4"), "-q", "--overwrite", *COMMON]) == 0
        assert _lines(capsys)[-1] == "2 of 2 video(s) done."
    assert sorted(p.name for p in src.iterdir()) == ["x.bicubic-x2.mp4", "x.mp4", "y.bicubic-x2.mp4", "y.mp4"]


def test_a_batch_refuses_flags_for_one_file_in_one_line(clips, tmp_path, capsys):
    src = _pile(clips, tmp_path / "in", names=("x", "y"))
    for flags, words in ((["--output", str(tmp_path / "o.mp4")], "a folder of videos gets one output each"),
                         (["--stats-json", str(tmp_path / "s.json")], "--stats-json names one file for one run"),
                         (["--source", str(tmp_path / "*.avi")], "Source not found")):
        assert cli.main(["--source", str(src), *flags, *COMMON]) == 2
        lines = _lines(capsys)
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "o.mp4").exists() and not (tmp_path / "s.json").exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_stopped_batch_is_finished_by_resume(clips, tmp_path, overwrite):
    """SIGTERM in the second video: the first is complete, the second finalized as a partial, the
    third not started; the same command finishes the second and the third and skips the first
    (each video of a batch is written in segments, so a stopped one's partial is its own). With
    --overwrite too, where every output existed before: the first is not replaced again."""
    src = _pile(clips, tmp_path / "in", names=("a", "b", "c"), num_frames=60)
    out = tmp_path / "out"
    args = ["--source", str(src), "--output", str(out), "--parallel", "--device", "cpu", "--batch-size", "1", *COMMON]
    # (the CPU, a frame a batch: the slowed worker paces the run on a GPU host too)
    if overwrite:
        out.mkdir()
        for name in "abc":
            (out / f"{name}.bicubic-x2.mp4").write_bytes(b"an earlier output")
        args.append("--overwrite")

    proc = subprocess.Popen(slow_cli(SLOW_WORKER, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.perf_counter() + 120
    while not is_writing(out / "b.bicubic-x2.mp4") and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    rc = proc.returncode
    assert rc == 143, err
    assert "the same command finishes the batch (done videos are skipped, this one resumed)" in err, err
    assert probe.indices(out / "a.bicubic-x2.mp4") == list(range(60))
    first = (out / "a.bicubic-x2.mp4").stat().st_mtime_ns
    assert not (out / "c.bicubic-x2.mp4").exists() or overwrite
    assert cli.main([*args, "-q"]) == 0
    for name in "abc":
        assert probe.indices(out / f"{name}.bicubic-x2.mp4") == list(range(60))
    assert (out / "a.bicubic-x2.mp4").stat().st_mtime_ns == first  # done before the stop: not done again
    if overwrite:  # through every video: the same command again replaces them all, as --overwrite asks
        assert cli.main([*args, "-q"]) == 0
        assert (out / "a.bicubic-x2.mp4").stat().st_mtime_ns != first


def test_two_videos_with_one_output_name_are_refused_before_any_runs(clips, tmp_path, capsys):
    """a.m4v and a.mp4 both name a.<model>-x<scale>.mp4: the second was skipped as done (or with
    --overwrite replaced the first one's output, the summary saying both were done)."""
    src = _pile(clips, tmp_path / "in", names=("a", "b"))
    shutil.copy(src / "a.mp4", src / "a.m4v")  # an MP4 by another suffix: its output is a.<model>-x2.mp4 too
    for extra in ([], ["--overwrite"]):
        assert cli.main(["--source", str(src), "--output", str(tmp_path / "out"), *extra, *COMMON]) == 2
        lines = _lines(capsys)
        assert len(lines) == 1 and "'a.m4v' and 'a.mp4' would both be written to" in lines[0], lines
        assert not (tmp_path / "out").exists()


def test_outputs_partials_and_look_alike_names_are_left_out_and_said(clips, tmp_path, capsys):
    """A stopped run's `.partial-1.mp4` is framepipe's too (it was taken as a new video); a
    camera's `clip.sony-x3.mp4` looks like an output: left out, but named in one line."""
    src = _pile(clips, tmp_path / "in", names=("ok",))
    for name in ("ok.bicubic-x2.partial-1.mp4", "ok.bicubic-x2.partial.mp4", "camera.sony-x3.mp4"):
        shutil.copy(src / "ok.mp4", src / name)
    assert cli.main(["--source", str(src), "--output", str(tmp_path / "out"), *COMMON]) == 0
    lines = _lines(capsys)
    said = [ln for ln in lines if ln.startswith("left out 3 file(s) named as framepipe names its outputs")]
    assert len(said) == 1 and "camera.sony-x3.mp4" in said[0], lines
    assert lines[-1] == "1 of 1 video(s) done."
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok.bicubic-x2.mp4"]


def test_a_url_or_a_folder_of_nothing_is_named_for_what_it_is(tmp_path, capsys):
    """A URL came back mangled as "not found" ('https:/host/v.mp4'); an empty folder said it
    held no pictures only."""
    import pytest

    with pytest.raises(SystemExit) as stop:
        cli.main(["--source", "https://example.com/v.mp4"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == ("framepipe: error: argument --source: 'https://example.com/v.mp4' "
                                                       "is a URL; framepipe reads local files: download it first")
    (tmp_path / "empty").mkdir()
    assert cli.main(["--source", str(tmp_path / "empty")]) == 2
    assert _lines(capsys)[-1].endswith("holds no pictures (png, tif, tiff, jpg, jpeg, bmp, webp, dpx) and no videos.")
