"""Resume hardening: stops at any moment (during the join, between the join's rename and the
work folder's removal), damaged or hand-edited manifests, a join the disk refuses, the
source's fingerprint."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from core.errors import DiskFull, InvalidOption, OutputExists
from pipeline import run
from pipeline.segments import PartsFolder, source_fingerprint
from tests import probe
from tests.test_segments import _cfg


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _kill_when(argv: list[str], ready) -> None:
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.perf_counter() + 60
    while time.perf_counter() < deadline and proc.poll() is None and not ready():
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1]
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)


@pytest.mark.parametrize("moment", ["during the join", "after the join's rename"])
def test_kill_9_around_the_join_then_resume(clips, tmp_path, moment):
    """Killed while joining (its hidden temporary output left beside the output) or between the
    rename and the work folder's removal (a whole output and the folder left): --resume finishes
    the job, replaces only what that run left, and leaves no file behind."""
    from tests.cli_runs import slow_cli

    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    whole = tmp_path / "whole.mp4"
    run(_cfg(src, whole, segment_frames=10))
    out = tmp_path / "out.mp4"
    manifest = tmp_path / "out.mp4.parts" / "manifest.json"
    if moment == "during the join":
        slow, ready = ("hw.av_streams", "StreamCopier", "mux_until", 0.05), lambda: _num_finished(manifest) == 5
    else:
        slow, ready = ("pipeline.segments", "PartsFolder", "remove", 30), out.exists
    _kill_when(slow_cli(slow, "--source", src, "--output", out, "--model", "bicubic", "--scale", "2", "--parallel",
                        "--quality", "0", "--preset", "ultrafast", "--segment-frames", "10"), ready)
    assert manifest.is_file() and (out.exists() or any(n.endswith(".part.mp4") for n in _hidden(tmp_path)))
    run(_cfg(src, out, segment_frames=10, resume=True))
    probe.assert_same_video(whole, out)
    assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")
    assert _hidden(tmp_path) == [] and not manifest.parent.exists()


def _num_finished(manifest: Path) -> int:
    try:
        return len(json.loads(manifest.read_text())["segments"])
    except (OSError, ValueError, KeyError):
        return -1


def _edit(parts: Path, change) -> None:
    path = parts / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("change", [
    lambda m: m.update(segments="x"),
    lambda m: m["segments"].update({"0": "x"}),
    lambda m: m["segments"]["1"].pop("stop"),
    lambda m: m["segments"]["1"].update(stop="abc"),
    lambda m: m["segments"]["1"].update(pts_offset=None),
    lambda m: m.update(partial_output=5),
    lambda m: m.update(source="x"),
], ids=["segments", "entry", "no-stop", "stop-text", "offset-null", "partial-output", "source"])
def test_a_damaged_manifest_is_refused_in_one_line(tmp_path, change):
    out = tmp_path / "out.mp4"
    settings = {"segment_frames": 10}
    parts = PartsFolder(out)
    parts.open(resume=False, overwrite=False, source={}, settings=settings)
    for k in range(2):
        parts.segment_path(k).write_bytes(b"segment %d" % k)
        parts.record(k, first=10 * k, stop=10 * k + 10, path=parts.segment_path(k), pts_offset=1000 * k)
    _edit(parts.path, change)
    for flags in (dict(resume=True, overwrite=False), dict(resume=False, overwrite=True)):
        # not trusted, nor removed: a folder with framepipe's file names may be someone else's
        with pytest.raises(OutputExists, match=r"^Work folder .* holds a manifest\.json framepipe cannot read \(.*"
                                               r"Move it away"):
            PartsFolder(out).open(source={}, settings=settings, **flags)
        assert parts.segment_path(1).read_bytes() == b"segment 1"


def test_a_folder_of_framepipes_names_with_a_manifest_of_someone_elses_is_never_emptied(clips, tmp_path):
    """Names alone do not make a folder framepipe's: --overwrite removed a user's `out.mp4.parts/`
    holding `manifest.json` ({"mine": 1}) and `segment-000000.mp4`."""
    folder = tmp_path / "out.mp4.parts"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"mine": 1}')
    (folder / "segment-000000.mp4").write_bytes(b"mine too")
    for flag in ("overwrite", "resume"):
        with pytest.raises(OutputExists, match=r"holds a manifest\.json framepipe cannot read"):
            run(_cfg(clips("seg-audio.mp4", num_frames=45, audio=True), tmp_path / "out.mp4", segment_frames=10,
                     **{flag: True}))
    assert (folder / "segment-000000.mp4").read_bytes() == b"mine too"


def test_resume_with_overwrite_starts_again_where_the_parts_do_not_match(clips, tmp_path):
    """--resume --overwrite: resume what matches, else start again (the service runs every job so,
    and a job asked to overwrite an output whose work folder another run left failed)."""
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    run(_cfg(src, tmp_path / "out.mp4", segment_frames=10, keep_parts=True, max_frames=20, scale=1))
    (tmp_path / "out.mp4").unlink()  # as a stopped run leaves it: the parts, and no output
    with pytest.raises(InvalidOption, match=r"^Cannot resume: the parts .* do not match"):
        run(_cfg(src, tmp_path / "out.mp4", segment_frames=10, resume=True))
    run(_cfg(src, tmp_path / "out.mp4", segment_frames=10, resume=True, overwrite=True))
    assert probe.indices(tmp_path / "out.mp4") == list(range(45))
    assert not (tmp_path / "out.mp4.parts").exists()


def test_stats_json_inside_the_work_folder_is_refused(clips, tmp_path):
    """--resume --overwrite --stats-json out.mp4.parts/manifest.json replaced the manifest, and the
    stopped run could no longer be resumed; another name in the folder was lost with it."""
    from core.errors import UnsafeOutput

    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    run(_cfg(src, tmp_path / "out.mp4", segment_frames=10, keep_parts=True, max_frames=20))
    (tmp_path / "out.mp4").unlink()
    manifest = (tmp_path / "out.mp4.parts" / "manifest.json").read_bytes()
    for name, flags in (("manifest.json", dict(overwrite=True)), ("s.json", {})):
        with pytest.raises(UnsafeOutput, match=r"^--stats-json .* is inside the work folder"):
            run(_cfg(src, tmp_path / "out.mp4", segment_frames=10, max_frames=20, resume=True,
                     stats_json=tmp_path / "out.mp4.parts" / name, **flags))
    assert (tmp_path / "out.mp4.parts" / "manifest.json").read_bytes() == manifest


def test_entries_that_are_not_their_segments_are_made_again(clips, tmp_path):
    """An entry naming another file, a range outside its segment, or a short segment followed by
    more frames is not trusted: the segment is made again, and the output is exact."""
    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, segment_frames=10, keep_parts=True))
    reference = probe.frames_yuv(out)
    out.unlink()
    parts = tmp_path / "out.mp4.parts"

    def change(m):
        m["segments"]["0"]["file"] = "../seg-audio.mp4"
        m["segments"]["1"]["first"] = 5
        m["segments"]["2"]["stop"] = 25  # as if the video had ended there
        m["segments"]["9"] = m["segments"]["3"]

    _edit(parts, change)
    (parts / ".segment-000004.part.mp4").write_bytes(b"a killed run's temporary")
    (parts / "partial-000003.mp4").write_bytes(b"a stopped run's partial segment")
    run(_cfg(src, out, segment_frames=10, resume=True))
    got = probe.frames_yuv(out)
    assert len(got) == 45 and all((a == b).all() for a, b in zip(got, reference))
    assert not parts.exists()


def test_a_join_the_disk_refuses_says_how_to_finish(clips, tmp_path, monkeypatch):
    """Every segment finished, the join failed for space: the line says the segments are kept and
    --resume finishes the job (it only joins them)."""
    import hw.av_join

    src = clips("seg-audio.mp4", num_frames=45, audio=True)
    out = tmp_path / "out.mp4"
    join = hw.av_join.join_segments

    def full(*args, **kwargs):
        raise DiskFull(f"Writing the output in {str(tmp_path)!r} failed after 3 frame(s): no space left on the device. "
                       "Free some space and run again")

    monkeypatch.setattr(hw.av_join, "join_segments", full)
    with pytest.raises(DiskFull, match=r"Free some space and run again\. The finished segments are kept in .*--resume"):
        run(_cfg(src, out, segment_frames=10))
    assert not out.exists() and _hidden(tmp_path) == []
    monkeypatch.setattr(hw.av_join, "join_segments", join)
    stats = run(_cfg(src, out, segment_frames=10, resume=True))
    assert stats.notes["segments"].endswith("4 finished segment(s) taken over from an earlier run")  # the short 5th is made again
    assert probe.indices(out) == list(range(45))


def test_fingerprint_covers_a_source_of_one_to_two_mib(tmp_path):
    path = tmp_path / "source.bin"
    data = bytearray(3 << 19)  # 1.5 MiB
    path.write_bytes(bytes(data))
    before = source_fingerprint(path)
    data[(1 << 20) + 1000] = 1  # same size, changed after the first MiB
    path.write_bytes(bytes(data))
    assert source_fingerprint(path) != before


def test_a_stale_temporary_output_is_only_removed_when_it_is_named(tmp_path):
    """The manifest's temporary output is removed by the next run of that output; a name that is
    not one of its temporaries (hand-edited) is left alone."""
    out = tmp_path / "out.mp4"
    stale, other = tmp_path / ".out.0123abcd.part.mp4", tmp_path / "keep.mp4"
    stale.write_bytes(b"x")
    other.write_bytes(b"x")
    PartsFolder(out).open(resume=False, overwrite=False, source={}, settings={}, temp_output=stale)
    _edit(tmp_path / "out.mp4.parts", lambda m: None)
    PartsFolder(out).open(resume=True, overwrite=False, source={}, settings={}, temp_output=tmp_path / ".out.1.part.mp4")
    assert not stale.exists()
    _edit(tmp_path / "out.mp4.parts", lambda m: m.update(temp_output="../keep.mp4"))
    PartsFolder(out).open(resume=False, overwrite=True, source={}, settings={})
    assert other.exists()


@pytest.mark.parametrize("flag", ["overwrite", "resume"])
def test_a_source_inside_the_work_folder_is_refused_and_kept(clips, tmp_path, flag):
    """A run empties its work folder (--overwrite removes it, --resume removes what is not a
    finished segment): a source inside it is refused, never deleted."""
    from core.errors import UnsafeOutput

    inside = tmp_path / "out.mp4.parts" / "sub" / "source.mp4"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(clips("seg-audio.mp4", num_frames=45, audio=True).read_bytes())
    with pytest.raises(UnsafeOutput, match=r"^--source .* is inside the work folder"):
        run(_cfg(inside, tmp_path / "out.mp4", segment_frames=10, **{flag: True}))
    assert inside.is_file()


def test_resume_refuses_a_folder_framepipe_did_not_make(clips, tmp_path):
    from core.errors import OutputExists

    mine = tmp_path / "out.mp4.parts" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("mine")
    for flag in ("resume", "overwrite"):
        with pytest.raises(OutputExists, match=r"^Work folder .* holds 1 file\(s\) framepipe did not make \('notes.txt'\)"):
            run(_cfg(clips("seg-audio.mp4", num_frames=45, audio=True), tmp_path / "out.mp4", segment_frames=10,
                     **{flag: True}))
        assert mine.read_text() == "mine"


@pytest.mark.parametrize("where", ["while building", "after a few frames"])
def test_a_resume_stopped_early_keeps_the_job_resumable(clips, tmp_path, monkeypatch, where):
    """A run stopped before its first segment was finished leaves its partial output and its work
    folder; a --resume of it stopped before a frame was written removed that folder (no finished
    segment in it), and the job could never be finished: the next --resume said "already exists"
    of the earlier partial (the new-user reviewer, 2026-12-07; the service's restarts hit it too).
    The folder stays, the line says so, and the next --resume finishes the job."""
    import threading

    from core.errors import RunInterrupted
    from pipeline import runner
    from tests.cli_runs import SLOW_WORKER, signal_mid_run, slow_cli

    src = clips("resume-early.mp4", num_frames=96, audio=True)
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--segment-frames", "90",
            "--quality", "0", "--preset", "ultrafast", "--queue-size", "8", "--device", "cpu", "--batch-size", "1"]
    rc, err, _ = signal_mid_run(slow_cli(SLOW_WORKER, *args), out, signal.SIGTERM, settle_seconds=1.0)
    assert rc == 143 and "No segment was finished: the same command with --resume starts again" in err, err
    parts = tmp_path / "out.mp4.parts"
    assert out.is_file() and (parts / "manifest.json").is_file()
    partial = out.read_bytes()

    if where == "while building":
        def stopped(*_a, **_k):
            raise KeyboardInterrupt
        monkeypatch.setattr(runner, "build", stopped)
        with pytest.raises(RunInterrupted, match="work folder .* is kept: the same command with --resume"):
            run(_cfg(src, out, resume=True, segment_frames=90, parallel=False, device="cpu", batch_size=1))
    else:
        stop = threading.Event()
        stop.set()  # the run stops at its first look, a few frames in
        with pytest.raises(RunInterrupted, match="No segment was finished: the same command with --resume starts again"):
            run(_cfg(src, out, resume=True, segment_frames=90, parallel=True, device="cpu", batch_size=1), stop=stop)
        partial = out.read_bytes()
    assert (parts / "manifest.json").is_file() and out.read_bytes() == partial
    monkeypatch.undo()
    run(_cfg(src, out, resume=True, segment_frames=90, device="cpu", batch_size=1))
    assert probe.indices(out) == list(range(96)) and not parts.exists()


def test_a_link_in_the_work_folders_place_is_named_as_a_link(tmp_path):
    from core.errors import OutputNotWritable

    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out.mp4.parts").symlink_to(tmp_path / "elsewhere")
    for flags in (dict(resume=True, overwrite=False), dict(resume=False, overwrite=True)):
        with pytest.raises(OutputNotWritable, match=r"in the way of the work folder \(a link: the work folder is never one\)"):
            PartsFolder(tmp_path / "out.mp4").check(**flags)
