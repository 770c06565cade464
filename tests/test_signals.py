"""SIGTERM and SIGHUP stop a run exactly as Ctrl-C does (issue 8): every thread joined, a
playable partial output, one line, exit status 128 + the signal number; with --overwrite the
previous output stays until a new one is complete. `timeout`, `kill`, `docker stop` and
systemd send SIGTERM; a dropped ssh session sends SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests import probe
from tests.cli_runs import ROOT, SLOW_WORKER, signal_mid_run, slow_cli

@pytest.mark.parametrize("mode", ["--parallel", "sequential"])
@pytest.mark.parametrize("signum, code, word", [(signal.SIGTERM, 143, "stopped by SIGTERM"),
                                                (signal.SIGHUP, 129, "stopped by SIGHUP"),
                                                (signal.SIGINT, 130, "interrupted")])
def test_signal_finalizes_a_playable_partial_output(clips, tmp_path, signum, code, word, mode):
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2"]
    if mode != "sequential":
        args.append(mode)
    rc, err, seconds = signal_mid_run(slow_cli(SLOW_WORKER, *args), out, signum, settle_seconds=1.0)
    assert rc == code, err
    assert seconds < 10, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith(word)]
    assert len(lines) == 1 and "(finalized, playable)" in lines[0], err
    got = probe.indices(out)
    assert 0 < len(got) < 400 and got == list(range(len(got)))
    with __import__("av").open(str(out)) as c:  # the audio was cut with the video, not copied whole
        audio = sum(f.samples for f in c.decode(audio=0)) / 48000
    assert audio <= len(got) / 24 + 0.2
    assert not any(tmp_path.glob(".*")), list(tmp_path.iterdir())  # no temporary file, no lock left


def test_a_stopped_interpolated_run_counts_the_frames_in_its_file(clips, tmp_path):
    """With --interpolate, the stop line counted source frames: "21 frame(s) written" of a file
    holding 63 (the temporal reviewer, 2026-12-07). It counts the file's frames, made ones
    included, as segmented and picture outputs do."""
    import re

    src = clips("short-signal.mp4", num_frames=130, audio=True)  # under one segment: a single file
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--interpolate", "3",
            "--interpolation-model", "blend", "--device", "cpu", "--batch-size", "1"]  # paced on a GPU host too
    rc, err, _ = signal_mid_run(slow_cli(SLOW_WORKER, *args), out, signal.SIGTERM, settle_seconds=1.0)
    assert rc == 143, err
    said = re.search(r"(\d+) frame\(s\) written to", err)
    assert said and ".parts" not in err, err
    assert int(said.group(1)) == len(probe.pts_exact(out)) > 3


def test_sigterm_with_overwrite_keeps_the_previous_output(clips, tmp_path):
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    out.write_bytes(b"yesterday's finished output")
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--parallel",
            "--overwrite"]
    rc, err, _ = signal_mid_run(slow_cli(SLOW_WORKER, *args), out, signal.SIGTERM, settle_seconds=1.0)
    assert rc == 143, err
    assert out.read_bytes() == b"yesterday's finished output"
    partial = tmp_path / "out.partial.mp4"
    assert f"written to {partial}" in err and "left unchanged" in err
    got = probe.indices(partial)
    assert got == list(range(len(got))) and got


def test_sigterm_before_the_first_frame_leaves_nothing(clips, tmp_path):
    """A stop while the model loads: one line, 143, no file."""
    script = textwrap.dedent(
        """
        import sys, time, os, signal
        sys.path.insert(0, {root!r})
        import main
        import models
        original = models.load_model
        def slow_load(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
            return original(*a, **k)
        import pipeline.runner  # noqa
        models.load_model = slow_load
        sys.exit(main.main(sys.argv[1:]))
        """
    ).format(root=str(ROOT))
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", script, "--source", str(src), "--output", str(out), "--model",
                           "bicubic"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped by SIGTERM")], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_stats_json_records_the_signal(clips, tmp_path):
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out, stats = tmp_path / "out.mp4", tmp_path / "run.json"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--parallel",
            "--stats-json", str(stats)]
    rc, err, _ = signal_mid_run(slow_cli(SLOW_WORKER, *args), out, signal.SIGTERM, settle_seconds=1.0)
    assert rc == 143, err
    import json

    data = json.loads(stats.read_text())
    assert data["status"] == "interrupted" and "SIGTERM" in data["error"]
    assert data["frames_written"] == len(probe.indices(out))


@pytest.mark.parametrize("step, extra", [("_process_settings", []), ("_list_models", ["--list-models"])])
def test_a_stop_while_starting_up_is_one_line(clips, tmp_path, step, extra):
    """A stop while the process sets itself up (importing torch: seconds) or lists the models:
    one line and 143, never a traceback."""
    script = textwrap.dedent(
        """
        import sys, time, os, signal
        sys.path.insert(0, {root!r})
        import main
        original = getattr(main, {step!r})
        def slow(*a, **k):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.5)
            return original(*a, **k)
        setattr(main, {step!r}, slow)
        sys.exit(main.main(sys.argv[1:]))
        """
    ).format(root=str(ROOT), step=step)
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", script, "--source", str(src), "--output", str(out), *extra],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()] == [
        f"stopped by SIGTERM before the {'list was complete' if extra else 'run started'}"], proc.stderr
    assert list(tmp_path.iterdir()) == []


_SWALLOWS_THE_STOP = """
import sys, time, os, signal
sys.path.insert(0, {root!r})
import main
import {module} as where
original = getattr(where, {name!r})
def swallowing(*a, **k):
    try:  # library code that catches what is raised while it runs (torch's import: every Exception)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
    except {caught}:
        pass
    return original(*a, **k)
setattr(where, {name!r}, swallowing)
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("module, name", [("main", "_process_settings"), ("models", "load_model")])
@pytest.mark.parametrize("caught", ["Exception", "BaseException"])
def test_a_stop_that_library_code_swallows_still_stops_the_run(clips, tmp_path, module, name, caught):
    """A stop raised inside code that catches it (`except Exception` in torch's own import: the
    stop was an Exception too; a bare `except:`, a weakref callback) while the process imports or
    loads the model: the run still stops before its first frame, one line, 143, no file. Before,
    the run went on and finished with exit 0."""
    script = textwrap.dedent(_SWALLOWS_THE_STOP).format(root=str(ROOT), module=module, name=name, caught=caught)
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", script, "--source", str(src), "--output", str(out), "--model",
                           "bicubic", "--scale", "2"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped by SIGTERM")], proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_stop_raised_inside_a_callback_is_not_printed_and_still_stops_the_run(clips, tmp_path):
    """A signal handled while Python runs a weakref callback: Python cannot raise it there and
    hands it to sys.unraisablehook ("Exception ignored ..." and a traceback, by default). framepipe
    keeps it quiet, and the run stops before its first frame all the same."""
    script = textwrap.dedent("""
        import sys, os, signal, time, weakref
        sys.path.insert(0, {root!r})
        import main
        original = main._process_settings
        class Thing: pass
        def settings_then_a_callback():
            original()
            thing = Thing()
            def callback(ref):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)
            ref = weakref.ref(thing, callback)
            del thing  # runs the callback; what it raises goes to sys.unraisablehook
            print("went on after the callback", file=sys.stderr, flush=True)
        main._process_settings = settings_then_a_callback
        sys.exit(main.main(sys.argv[1:]))
        """).format(root=str(ROOT))
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "out.mp4"
    proc = subprocess.run([sys.executable, "-c", script, "--source", str(src), "--output", str(out), "--model",
                           "bicubic", "--scale", "2"], capture_output=True, text=True, timeout=120)
    assert "went on after the callback" in proc.stderr  # the callback swallowed it, as Python does
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("delay", [0.3, 0.6, 1.0, 1.5, 2.5])
def test_a_stop_at_any_moment_of_the_start_never_lets_the_run_finish(clips, tmp_path, delay):
    """SIGINT to `python main.py` at moments of its start (imports, torch's import, the plan):
    130 and one line, never a traceback, never a finished output with exit 0 (seen at 0.18-0.30 s
    before: the stop was caught by torch's own import). The job is long (120 frames to 1440p at
    x264's medium preset), so no moment here comes after its end: exit 0 is a failure (before,
    it passed as "finished before the signal"), and any output must be a playable prefix (a
    signal after the first frames finalizes a partial output)."""
    src = clips("start-stop.mp4", num_frames=120, width=640, height=360)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--source", str(src), "--output", str(out),
                             "--model", "bicubic", "--scale", "4", "--preset", "medium", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1, err
    if out.exists():  # stopped after its first frames: a playable prefix
        got = probe.indices(out)
        assert got == list(range(len(got))) and 0 < len(got) < 120


def _catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler of its own for `signum` (Linux: /proc/<pid>/status SigCgt)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_stop_during_the_imports_before_main_runs_ends_the_run_before_it_starts(clips, tmp_path):
    """SIGTERM as soon as main.py's first lines install the early handler, while its imports run
    (torch's take seconds): kept, and acted on as main() starts: 143, one line, nothing written.
    Without the early handler the signal was lost and the run wrote its whole output, exit 0."""
    src = clips("plain.mp4", num_frames=10)
    out = tmp_path / "out.mp4"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--source", str(src), "--output", str(out),
                             "--model", "bicubic", "--scale", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while not _catches(proc.pid, signal.SIGTERM) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.001)
    proc.send_signal(signal.SIGTERM)  # SIGTERM has no Python handler until main.py installs one
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []


# -- a stop signal while stage threads run is raised by the runner's loop, not the handler ---------

_HOLDS_A_LOCK = """
import os, signal, sys, threading
sys.path.insert(0, {root!r})
import main
from {module} import {cls}
original = {cls}.{method}
calls = []
def signalled_in_main_thread(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 5 and threading.current_thread() is threading.main_thread():
        # The main thread at a point where a raise would leave a lock held: the handler must
        # return, and the run stop from its own loop.
        signal.raise_signal(signal.{signame})
        print("carried on after the signal", file=sys.stderr, flush=True)
    return original(self, *args, **kwargs)
{cls}.{method} = signalled_in_main_thread
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("mode, where", [("--parallel", ("pipeline.sampler", "DeviceSampler", "maybe_sample")),
                                         ("sequential", ("pipeline.segment_writer", "SegmentWriter", "process"))])
def test_a_signal_while_threads_run_is_raised_by_the_run_loop(clips, tmp_path, mode, where):
    """The handler never raises into the main thread while stage threads run (an exception
    between a lock's acquire and release left `Event.wait`'s lock held and hung the writer):
    the signal is recorded, the main thread carries on, and the run's loop stops the run the
    usual way."""
    module, cls, method = where
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    script = _HOLDS_A_LOCK.format(root=str(ROOT), module=module, cls=cls, method=method, signame="SIGTERM")
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--batch-size", "2"]
    if mode != "sequential":
        args.append(mode)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    assert "carried on after the signal" in proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert len(lines) == 1 and "(finalized, playable)" in lines[0], proc.stderr
    got = probe.indices(out)
    assert 0 < len(got) < 400 and got == list(range(len(got)))


def test_deferral_rules(monkeypatch):
    """core/stopping: outside a run the handler raises; inside, the first stop waits for the
    loop; a second raises only once the first has gone unseen for STUCK_SECONDS (a stuck loop);
    once seen, or while the run finalizes, signals are only recorded; inside interruptible()
    the first raises at once."""
    from core import stopping

    clock = [100.0]
    monkeypatch.setattr(stopping.time, "monotonic", lambda: clock[0])
    first, second = KeyboardInterrupt("first"), KeyboardInterrupt("second")
    assert not stopping.deferring()
    with stopping.signals_deferred():
        assert stopping.deferring() and stopping.requested() is None
        assert stopping.defer(first)
        assert stopping.defer(second)  # a quick second one (double Ctrl-C): the loop will see the first
        clock[0] += stopping.STUCK_SECONDS + 0.1
        assert not stopping.defer(second)  # unseen for a second: the loop is stuck, raise this one
        assert stopping.requested() is first
        assert stopping.defer(second)  # the run is stopping already
    assert not stopping.deferring() and stopping.requested() is None
    with stopping.signals_deferred():
        with stopping.interruptible():
            assert not stopping.defer(first)  # a model batch in the main thread: raise at once
        stopping.finishing()
        with stopping.interruptible():
            assert stopping.defer(first)  # finalizing: only recorded...
        clock[0] += 10
        assert stopping.defer(second)  # ...however long it takes
        assert stopping.requested() is first  # and read after the joins
    assert stopping.requested() is None


_KILL_AT = """
import os, signal, sys, time
sys.path.insert(0, {root!r})
import main
import {module} as target
owner = target if {cls!r} == "" else getattr(target, {cls!r})
original = getattr(owner, {name!r})
def at_call(*args, **kwargs):
    if {after!r}:
        result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)  # the handler runs here (main thread) or in the main thread's loop
    return result if {after!r} else original(*args, **kwargs)
setattr(owner, {name!r}, at_call if {cls!r} == "" else at_call)
sys.exit(main.main(sys.argv[1:]))
"""


def _kill_at(module, cls, name, *, after, args, timeout=120):
    script = _KILL_AT.format(root=str(ROOT), module=module, cls=cls, name=name, after=after)
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.mark.parametrize("mode", ["--parallel", "sequential"])
def test_a_signal_as_the_writer_finishes_is_not_lost(clips, tmp_path, mode):
    """SIGTERM at the very end (the writer has closed its last segment, every frame is written):
    never lost, and nothing is left to stop: the job completes (0), one line saying the signal
    came after the last frame. Before, a signal the run's loop saw before it saw the writer end
    (the parallel run's 0.1 s tick) reported a stop (143) and kept the work folder for a
    --resume that had nothing to do but join."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic"] + ([mode] if mode != "sequential" else [])
    proc = _kill_at("pipeline.segment_writer", "SegmentWriter", "close", after=True, args=args)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("SIGTERM came after the last frame was written; the output was completed") == 1
    assert probe.indices(out) == list(range(400))
    assert not (tmp_path / "out.mp4.parts").exists()


def test_a_signal_before_the_last_segment_is_finished_still_stops(clips, tmp_path):
    """The other side of the line: SIGTERM while the last segment's encoder is still at work is a
    stop (143), a playable partial output, the work folder kept for --resume."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--parallel", "--segment-frames", "100"]
    proc = _kill_at("pipeline.segments", "PartsFolder", "record", after=False, args=args)
    assert proc.returncode == 143, proc.stderr
    got = probe.indices(out)
    assert got and got == list(range(len(got))) and len(got) < 400
    assert (tmp_path / "out.mp4.parts" / "manifest.json").is_file()


def test_a_second_signal_while_the_interpreter_exits_changes_nothing(clips, tmp_path):
    """SIGTERM stops the run; a SIGINT while Python then shuts down (which puts back the default
    handlers) must not turn the exit status into a kill (-2)."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, {root!r})
        import main
        original = main._exit
        def announce(code):
            print("exiting", file=sys.stderr, flush=True)
            original(code)
        main._exit = announce
        main._exit(main.main(sys.argv[1:]))
        """
    ).format(root=str(ROOT))
    statuses = []
    for delay in (0.0, 0.05, 0.15):
        proc = subprocess.Popen([sys.executable, "-c", script, "--source", str(src), "--output", str(out), "--model",
                                 "bicubic", "--max-frames", "24", "--overwrite"], stderr=subprocess.PIPE, text=True)
        for line in proc.stderr:
            if line.strip() == "exiting":
                break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.stderr.read()
        statuses.append(proc.wait(timeout=60))
    assert statuses == [0, 0, 0]
    assert probe.indices(out) == list(range(24))


@pytest.mark.timeout(240)  # two whole runs of 400 frames: past a minute on a loaded 2-core machine
def test_a_signal_while_joining_keeps_the_segments_for_resume(clips, tmp_path):
    """SIGTERM while the finished segments of a complete run are joined: one line that says so
    and that --resume finishes the job (before, the line said "before the run started" and gave
    no hint); --resume then writes every frame."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--parallel"]
    proc = _kill_at("hw.av_join", "", "join_segments", after=False, args=args)
    assert proc.returncode == 143, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("stopped by SIGTERM")]
    assert len(lines) == 1 and "while joining the finished segments" in lines[0] and "--resume" in proc.stderr
    assert not out.exists() and (tmp_path / "out.mp4.parts").is_dir()
    again = subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--resume"], capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert probe.indices(out) == list(range(400))


def test_a_signal_right_after_the_stages_are_built_does_not_hang(clips, tmp_path):
    """SIGTERM between building the stages (the encoder pool's threads started) and running
    them: before, the run raised there, left the pool's thread waiting, and never exited."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    proc = _kill_at("pipeline.runner", "", "build", after=True, timeout=60,
                    args=["--source", str(src), "--output", str(out), "--model", "bicubic", "--parallel"])
    assert proc.returncode == 143, proc.stderr
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("stopped by SIGTERM")]) == 1, proc.stderr


def test_a_sequential_stop_does_not_wait_for_a_long_batch(clips, tmp_path):
    """A model batch can take seconds on a CPU (and `docker stop` kills after 10 s): a stop
    during one is raised at once, as before the deferral."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    slow_batch = ("pipeline.worker", "Worker", "process", 4.0)
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--batch-size", "1"]
    rc, err, seconds = signal_mid_run(slow_cli(slow_batch, *args), out, signal.SIGTERM, settle_seconds=1.0)
    assert rc == 143, err
    assert seconds < 3.5, f"took {seconds:.1f} s to stop"


@pytest.mark.timeout(180)  # a whole run of 400 frames: near a minute on a loaded 2-core machine
@pytest.mark.parametrize("where", [("pipeline.runner", "", "remember_model_rate"),
                                   ("pipeline.segments", "PartsFolder", "remove")])
def test_a_signal_after_the_output_is_in_place_completes_the_job(clips, tmp_path, where):
    """SIGTERM after the last frame was written, while the run puts its output in place (the work
    folder removed, the model's rate remembered): the job is complete; before, the line said
    "stopped ... before the run started", exit 143, and the work folder was left."""
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    out = tmp_path / "out.mp4"
    module, cls, name = where
    proc = _kill_at(module, cls, name, after=False,
                    args=["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2",
                          "--parallel"])
    assert proc.returncode == 0, proc.stderr
    assert "SIGTERM came after the last frame was written; the output was completed" in proc.stderr
    assert probe.indices(out) == list(range(400))
    assert not (tmp_path / "out.mp4.parts").exists()


def test_a_stop_while_building_does_not_wait_for_the_workers_start(clips, tmp_path):
    """Sequential run: SIGTERM while the stages are built (recorded, not raised), then a 4 s
    `Worker.start` (model build, batch probe): the stop is acted on before the start, not after."""
    script = textwrap.dedent(
        """
        import os, signal, sys, time
        sys.path.insert(0, {root!r})
        import main
        from pipeline import runner, worker
        build = runner.build
        def build_then_signal(*args, **kwargs):
            stages = build(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            print("signalled", time.monotonic(), file=sys.stderr, flush=True)
            return stages
        runner.build = build_then_signal
        start = worker.Worker.start
        def slow_start(self, *args, **kwargs):
            time.sleep(4)
            return start(self, *args, **kwargs)
        worker.Worker.start = slow_start
        code = main.main(sys.argv[1:])
        print("ended", time.monotonic(), file=sys.stderr, flush=True)
        sys.exit(code)
        """
    ).format(root=str(ROOT))
    src = clips("long-signal.mp4", num_frames=400, audio=True)
    proc = subprocess.run([sys.executable, "-c", script, "--source", str(src), "--output", str(tmp_path / "out.mp4"),
                           "--model", "bicubic"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 143, proc.stderr
    times = {ln.split()[0]: float(ln.split()[1]) for ln in proc.stderr.splitlines() if ln.startswith(("signalled", "ended"))}
    assert times["ended"] - times["signalled"] < 2.0, proc.stderr


def test_a_stop_during_held_code_is_recorded_and_raised_when_it_ends():
    """torch's import runs Python module code from C++ (pybind11): a stop raised inside it aborted
    the process ("terminate called after throwing an instance of 'pybind11::error_already_set'",
    exit -6). Inside `held()` the handler records the stop, twice over too, and the block's end
    raises it, kept for the command to act on."""
    from core import stopping
    from core.errors import RunInterrupted

    first, second = RunInterrupted("", signal_name="SIGINT", signal_number=2), RunInterrupted("")
    with pytest.raises(RunInterrupted) as caught:
        with stopping.held():
            assert stopping.deferring()
            assert stopping.defer(first) and stopping.defer(second)
            time.sleep(stopping.STUCK_SECONDS + 0.1)
            assert stopping.defer(second)  # never raised inside, however long it holds
    assert caught.value is first
    assert not stopping.deferring() and stopping.requested() is None
    stopping.acted()  # acted on: nothing kept for the next test
