"""Never destroy a user's file (issue 8, part 1): aliases of the source or of another
output, FFmpeg protocol prefixes, replacing only by rename, temporary names that never
clobber, one run per output, sources that are not regular files.

Each test runs the real CLI (`main.main`) on generated clips and checks the bytes of every
file that must not change."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

import main as cli
from core.errors import OutputBusy, OutputExists, OutputNotWritable, UnsafeOutput
from core.files import OutputFile, check_output_paths, ffmpeg_path, same_file, write_file_atomically
from tests import probe


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main([*map(str, argv), "--model", "bicubic", "--scale", "2"])
    return code, capsys.readouterr().err


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def source(clips, tmp_path) -> Path:
    src = tmp_path / "clip.mp4"
    src.write_bytes(clips("safety.mp4", num_frames=12, audio=True).read_bytes())
    return src


# -- aliases of the source -------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("alias", ["hardlink", "symlink", "same-path-spelled-differently", "relative"])
def test_output_that_is_the_source_is_refused(capsys, source, tmp_path, monkeypatch, alias, overwrite):
    before = _digest(source)
    if alias == "hardlink":
        out = tmp_path / "linked.mp4"
        os.link(source, out)
    elif alias == "symlink":
        out = tmp_path / "sym.mp4"
        out.symlink_to(source)
    elif alias == "same-path-spelled-differently":
        (tmp_path / "sub").mkdir()
        out = tmp_path / "sub" / ".." / "clip.mp4"
    else:
        monkeypatch.chdir(tmp_path)
        out = Path("clip.mp4")
    code, err = _cli(capsys, "--source", source, "--output", out, *(["--overwrite"] if overwrite else []))
    assert code == 2
    assert "is the same file as --source" in _one_error(err)
    assert _digest(source) == before


@pytest.mark.parametrize("victim", ["source", "output", "existing"])
def test_stats_json_never_replaces_a_video(capsys, source, tmp_path, victim):
    out = tmp_path / "out.mp4"
    other = tmp_path / "precious.mp4"
    other.write_bytes(b"precious video")
    if victim == "source":
        stats, args = source, []
    elif victim == "output":
        stats, args = out, []
    else:
        stats, args = other, []
    before = {p: _digest(p) for p in (source, other)}
    code, err = _cli(capsys, "--source", source, "--output", out, "--stats-json", stats, *args)
    assert code == 2
    line = _one_error(err)
    assert ("same file" in line) if victim != "existing" else ("already exists" in line and "--overwrite" in line)
    assert {p: _digest(p) for p in (source, other)} == before
    assert not out.exists()


def test_stats_json_replaced_only_with_overwrite_and_by_rename(capsys, source, tmp_path):
    out, stats = tmp_path / "out.mp4", tmp_path / "run.json"
    stats.write_text("old")
    os.link(stats, tmp_path / "run-hardlink.json")  # a rename leaves the other name's contents alone
    (tmp_path / "run.json.tmp").write_text("not framepipe's")  # the old code wrote here
    code, err = _cli(capsys, "--source", source, "--output", out, "--stats-json", stats, "--overwrite")
    assert code == 0, err
    assert '"status": "ok"' in stats.read_text()
    assert (tmp_path / "run-hardlink.json").read_text() == "old"
    assert (tmp_path / "run.json.tmp").read_text() == "not framepipe's"


@pytest.mark.parametrize("flag", ["--output", "--stats-json"])
def test_protocol_prefix_is_a_plain_file_name(capsys, source, tmp_path, monkeypatch, flag):
    """`file:victim.mp4` is a file of that name in the current folder, never FFmpeg's file: protocol."""
    monkeypatch.chdir(tmp_path)
    victim = tmp_path / "victim.mp4"
    victim.write_bytes(b"do not touch")
    name = "file:victim.mp4" if flag == "--output" else "file:victim.json"
    args = ["--output", "out.mp4", "--stats-json", name] if flag == "--stats-json" else ["--output", name]
    if flag == "--stats-json":
        (tmp_path / "victim.json").write_bytes(b"do not touch")
    code, err = _cli(capsys, "--source", source, *args)
    assert code == 0, err
    assert victim.read_bytes() == b"do not touch"
    written = tmp_path / name
    assert written.is_file()
    if flag == "--output":
        assert probe.indices(written) == list(range(12))
        assert f"Output: {name}" in err  # the path reported is the one written
    else:
        assert (tmp_path / "victim.json").read_bytes() == b"do not touch"


def test_ffmpeg_path_is_absolute():
    assert ffmpeg_path("file:x.mp4") == os.path.join(os.getcwd(), "file:x.mp4")
    assert ffmpeg_path("pipe:1").startswith("/")


@pytest.mark.parametrize("special", ["device", "fifo"])
def test_output_that_is_not_a_regular_file_is_refused_even_with_overwrite(capsys, source, tmp_path, special):
    out = tmp_path / "special.mp4"
    if special == "fifo":
        os.mkfifo(out)
    else:  # renaming over it would replace /dev/null itself (as root), writing into it would be lost
        out.symlink_to("/dev/null")
    code, err = _cli(capsys, "--source", source, "--output", out, "--overwrite")
    assert code == 2
    assert "not a regular file" in _one_error(err)
    assert out.exists()


@pytest.mark.parametrize("flag", ["--output", "--stats-json"])
def test_output_that_is_the_audio_file_is_refused(capsys, source, tmp_path, flag):
    """--audio is an input like the source: replaced by the output or the report, it was lost."""
    audio = tmp_path / "soundtrack.mp4"
    audio.write_bytes(source.read_bytes())
    before = _digest(audio)
    where = ["--output", audio] if flag == "--output" else ["--output", tmp_path / "o.mp4", "--stats-json", audio]
    code, err = _cli(capsys, "--source", source, "--audio", audio, *where, "--overwrite")
    assert code == 2
    assert f"{flag} '{audio}' is the same file as --audio" in _one_error(err)
    assert _digest(audio) == before


@pytest.mark.parametrize("victim", ["source", "fifo"])
def test_stats_json_of_a_run_writing_no_video_is_checked_too(capsys, source, tmp_path, victim):
    """--output-mode none writes only --stats-json: it was never checked, and replaced the source
    (or, as root, /dev/null itself) by rename."""
    target = source if victim == "source" else tmp_path / "pipe.json"
    if victim == "fifo":
        os.mkfifo(target)
    before = _digest(source)
    code, err = _cli(capsys, "--source", source, "--output-mode", "none", "--stats-json", target, "--overwrite")
    assert code == 2
    assert ("same file as --source" if victim == "source" else "a FIFO (named pipe), not a regular file") in _one_error(err)
    assert _digest(source) == before
    assert victim == "source" or not target.is_file()


def test_atomic_write_never_replaces_a_device_or_fifo(tmp_path):
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    with pytest.raises(OutputNotWritable, match="not a regular file"):
        write_file_atomically(fifo, b"{}", overwrite=True, flag="--stats-json")
    assert not fifo.is_file() and fifo.exists()


def test_check_output_paths_outputs_among_themselves(tmp_path):
    a = tmp_path / "a.mp4"
    with pytest.raises(UnsafeOutput, match="are the same file"):
        check_output_paths([("--output", a), ("--stats-json", tmp_path / "x" / ".." / "a.mp4")], overwrite=True)
    assert same_file(a, tmp_path / "a.mp4") and not same_file(a, tmp_path / "b.mp4")


# -- replacing an existing output ------------------------------------------------------


def test_overwrite_replaces_by_rename_and_keeps_permissions(capsys, source, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"old output")
    os.chmod(out, 0o640)
    os.link(out, tmp_path / "backup-link.mp4")  # written in place, this name would change too
    code, err = _cli(capsys, "--source", source, "--output", out, "--overwrite")
    assert code == 0, err
    assert probe.indices(out) == list(range(12))
    assert (tmp_path / "backup-link.mp4").read_bytes() == b"old output"
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary, no lock left


def test_failed_run_with_overwrite_leaves_the_old_output(capsys, source, tmp_path, monkeypatch):
    """The new output replaces the old one only when finalized and complete; a partial one goes beside it."""
    from pipeline.worker import Worker

    original = Worker.process

    def fail_late(self, items):
        if any(it.index >= 6 for it in items):
            raise RuntimeError("boom")
        return original(self, items)

    monkeypatch.setattr(Worker, "process", fail_late)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"the previous output")
    code, err = _cli(capsys, "--source", source, "--output", out, "--overwrite")
    assert code == 1
    line = _one_error(err)
    assert "out.partial.mp4" in line and "left unchanged" in line
    assert out.read_bytes() == b"the previous output"
    assert probe.indices(tmp_path / "out.partial.mp4") == list(range(6))


def test_partial_name_never_replaces_an_existing_file(tmp_path):
    out = tmp_path / "o.mp4"
    out.write_bytes(b"old")
    (tmp_path / "o.partial.mp4").write_bytes(b"an older partial")
    f = OutputFile(out, overwrite=True)
    f.begin().write_bytes(b"new partial")
    assert f.commit(complete=False) == tmp_path / "o.partial-1.mp4"
    assert (tmp_path / "o.partial.mp4").read_bytes() == b"an older partial"
    assert out.read_bytes() == b"old"


def test_output_appearing_during_the_run_is_not_replaced(tmp_path):
    out = tmp_path / "o.mp4"
    f = OutputFile(out, overwrite=False)
    f.begin().write_bytes(b"ours")
    out.write_bytes(b"someone else's")  # created by another program meanwhile
    kept = f.commit(complete=True)
    assert out.read_bytes() == b"someone else's"
    assert kept.read_bytes() == b"ours" and kept != out


def test_run_without_frames_leaves_nothing(capsys, source, tmp_path, monkeypatch):
    """Regression (issue 8): a run that wrote no frame left an audio-only file behind."""
    from pipeline.worker import Worker

    monkeypatch.setattr(Worker, "process", lambda self, items: (_ for _ in ()).throw(RuntimeError("boom")))
    out = tmp_path / "out.mp4"
    for parallel in ([], ["--parallel"]):
        code, err = _cli(capsys, "--source", source, "--output", out, *parallel)
        assert code == 1
        assert "No frame was written" in _one_error(err)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


# -- one run per output ----------------------------------------------------------------


def test_second_run_on_the_same_output_is_refused(capsys, source, tmp_path):
    out = tmp_path / "out.mp4"
    holder = OutputFile(out, overwrite=False)
    holder.begin()  # another run is writing out.mp4
    try:
        code, err = _cli(capsys, "--source", source, "--output", out, "--overwrite")
        assert code == 2
        assert "being written by another framepipe run" in _one_error(err)
    finally:
        holder.discard()
    code, err = _cli(capsys, "--source", source, "--output", out)  # the lock went with the holder
    assert code == 0, err


def test_a_second_run_without_flags_names_the_run_writing_now_not_an_earlier_ones_parts(capsys, source, tmp_path):
    """Its work folder exists while the first run writes: the second said "parts of an earlier
    run ... Pass --resume", as if the first had died."""
    out = tmp_path / "seg.mp4"
    (tmp_path / "seg.mp4.parts").mkdir()  # the first run's, in flight
    holder = OutputFile(out, overwrite=False)
    holder.begin()
    try:
        code, err = _cli(capsys, "--source", source, "--output", out, "--segment-frames", "4")
        assert code == 2 and "being written by another framepipe run" in _one_error(err), err
    finally:
        holder.discard()
    assert not any(p.name.endswith(".framepipe-lock") for p in tmp_path.iterdir())  # none made by the check


def test_lock_is_per_output_and_released_by_the_kernel(tmp_path):
    a, b = OutputFile(tmp_path / "a.mp4", overwrite=False), OutputFile(tmp_path / "b.mp4", overwrite=False)
    a.begin(), b.begin()
    with pytest.raises(OutputBusy):
        OutputFile(tmp_path / "a.mp4", overwrite=True).begin()
    a.discard(), b.discard()
    assert list(tmp_path.iterdir()) == []


def test_lock_left_by_a_killed_run_does_not_block(tmp_path):
    """A crashed run leaves an empty lock file; flock died with it, so the next run goes on."""
    (tmp_path / ".o.mp4.framepipe-lock").write_bytes(b"")
    f = OutputFile(tmp_path / "o.mp4", overwrite=False)
    f.begin().write_bytes(b"x")
    f.commit(complete=True)
    assert not (tmp_path / ".o.mp4.framepipe-lock").exists()


def test_the_temporary_file_of_a_killed_run_goes_with_the_next_run_of_that_output(tmp_path):
    """`kill -9` (or a power cut) leaves the hidden temporary output it never renamed: the next run
    of the same output name removes it under the output's lock. Only framepipe's exact names of
    that output: another output's temporary, or a name that is not one, is left alone."""
    stale = tmp_path / ".o.0123abcd.part.mp4"
    others = [tmp_path / ".o.notahex1.part.mp4", tmp_path / ".other.0123abcd.part.mp4", tmp_path / ".o.0123abcd.part.mkv"]
    for path in [stale, *others]:
        path.write_bytes(b"ftyp")
    f = OutputFile(tmp_path / "o.mp4", overwrite=False)
    f.begin().write_bytes(b"x")
    assert not stale.exists() and all(p.read_bytes() == b"ftyp" for p in others)
    f.commit(complete=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["o.mp4", *(p.name for p in others)])


@pytest.mark.parametrize("complete", [True, False])
def test_a_resumed_jobs_output_replaces_or_removes_its_earlier_partial_output(tmp_path, complete):
    """The partial output an earlier stopped run of the job left beside an earlier output: a newer
    partial output replaces it (one partial file, at one name), the complete output removes it;
    the earlier output is replaced only when complete (--overwrite). A partial file changed since
    the run began is not the run's to replace: it is kept, and the new partial goes beside it."""
    out, earlier = tmp_path / "o.mp4", tmp_path / "o.partial.mp4"
    out.write_bytes(b"yesterday's output")
    earlier.write_bytes(b"the first stop's frames")
    f = OutputFile(out, overwrite=True, earlier_partial=earlier)
    f.begin().write_bytes(b"more frames")
    final = f.commit(complete=complete)
    if complete:
        assert final == out and out.read_bytes() == b"more frames" and not earlier.exists()
    else:
        assert final == earlier and earlier.read_bytes() == b"more frames" and out.read_bytes() == b"yesterday's output"
    earlier.write_bytes(b"the first stop's frames")
    f = OutputFile(out, overwrite=True, earlier_partial=earlier)
    f.begin().write_bytes(b"newer")
    earlier.write_bytes(b"edited by hand meanwhile")
    assert f.commit(complete=False) == tmp_path / "o.partial-1.mp4"
    assert earlier.read_bytes() == b"edited by hand meanwhile"


def test_atomic_write_refuses_existing_without_overwrite(tmp_path):
    p = tmp_path / "r.json"
    p.write_text("keep")
    with pytest.raises(OutputExists):
        write_file_atomically(p, b"new", overwrite=False, flag="--stats-json")
    assert p.read_text() == "keep"
    write_file_atomically(p, b"new", overwrite=True, flag="--stats-json")
    assert p.read_text() == "new"


# -- sources that are not regular files ------------------------------------------------


def test_fifo_source_is_refused_without_hanging(tmp_path):
    """Regression (issue 8): a FIFO as --source hung forever (probing consumed it)."""
    import subprocess
    import sys

    fifo = tmp_path / "in.mp4"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, str(Path(cli.__file__)), "--source", str(fifo), "--output",
                           str(tmp_path / "o.mp4")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "is a FIFO (named pipe), not a regular file" in _one_error(proc.stderr)


@pytest.mark.parametrize("path", ["/dev/zero", "/dev/null"])
def test_device_source_is_refused(capsys, tmp_path, path):
    code, err = _cli(capsys, "--source", path, "--output", tmp_path / "o.mp4")
    assert code == 2
    assert "character device, not a regular file" in _one_error(err)


# -- the sample run and the cache ------------------------------------------------------


def test_no_source_with_a_file_named_out_in_the_way(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").write_text("a file, not a folder")
    code = cli.main(["--model", "bicubic", "--max-frames", "2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "a file of that name is in the way" in _one_error(err)
    assert (tmp_path / "out").read_text() == "a file, not a folder"


def test_unusable_cache_folder_still_runs_the_sample(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cachefile").write_text("x")
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cachefile"))
    code = cli.main(["--model", "bicubic", "--max-frames", "3"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    (out,) = (tmp_path / "out").iterdir()
    assert len(probe.frames_rgb(out)) == 3


@pytest.mark.parametrize("cache", ["a-file", "/proc/framepipe-cache"])
def test_unusable_cache_folder_is_not_given_to_torch(tmp_path, monkeypatch, cache):
    """torch makes TORCHINDUCTOR_CACHE_DIR when it is imported (the default model's spandrel
    imports it): pointed into a file or /proc, the run died with a traceback."""
    if cache == "a-file":
        cache = tmp_path / "cachefile"
        cache.write_text("x")
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(cache))
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    cli._process_settings()
    folder = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    assert folder is None or Path(folder).is_dir()


def test_concurrent_runs_in_threads_refuse_each_other(source, tmp_path):
    """Two library runs on one output at once: exactly one writes it, the other gets OutputBusy."""
    from pipeline import RunConfig, run
    from pipeline.worker import Worker

    results: list[object] = []
    original = Worker.process
    gate = threading.Event()

    def slow(self, items):
        gate.wait(5)
        return original(self, items)

    out = tmp_path / "o.mp4"

    def one() -> None:
        try:
            results.append(run(RunConfig(source=source, output=out, model="bicubic", scale=2, parallel=True,
                                         overwrite=True)))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    Worker.process = slow
    try:
        threads = [threading.Thread(target=one) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while not any(isinstance(r, OutputBusy) for r in results) and time.time() < deadline:
            time.sleep(0.05)
        gate.set()
        for t in threads:
            t.join(60)
    finally:
        Worker.process = original
    assert sorted(type(r).__name__ for r in results) == ["OutputBusy", "RunStats"]
    assert probe.indices(out) == list(range(12))


def test_output_folder_not_writable_message(tmp_path):
    with pytest.raises(OutputNotWritable, match="does not exist"):
        check_output_paths([("--output", tmp_path / "nope" / "o.mp4")], overwrite=False)


def test_a_source_named_as_the_outputs_temporary_is_refused_not_removed(capsys, source, tmp_path):
    """A run removes the hidden temporary files a killed run of its output left (`.o.<8 hex>.part.mp4`):
    a source that happens to bear such a name beside the output is refused, never removed."""
    odd = tmp_path / ".o.0123abcd.part.mp4"
    odd.write_bytes(Path(source).read_bytes())
    code, err = _cli(capsys, "--source", odd, "--output", tmp_path / "o.mp4")
    assert code == 2 and "is named as the hidden temporary file of --output" in err, err
    assert odd.read_bytes() == Path(source).read_bytes()
