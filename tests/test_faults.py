"""Fault injection (issue 2): a stage raising at frame k, Ctrl-C mid-run. The run reports
it, joins every thread, does not hang, and leaves a playable output holding every frame
finished so far, contiguous from 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline import RunConfig, StageError, run
from pipeline.worker import WorkerFaults
from tests import probe

ROOT = Path(__file__).resolve().parents[1]


def _cfg(src, out, **kw) -> RunConfig:
    return RunConfig(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=4, **kw)


@pytest.mark.parametrize("stage", ["reader", "writer"])
def test_stage_failure_stops_run_and_keeps_partial_output(clips, tmp_path, stage, no_stage_threads_left):
    src = clips("fault.mp4", num_frames=60)
    out = tmp_path / "out.mp4"
    t0 = time.perf_counter()
    with pytest.raises(StageError, match=rf"^{stage}: InjectedFault: injected {stage} failure at frame 25"):
        run(_cfg(src, out, faults={stage: {"fail_at_frame": 25}}))
    assert time.perf_counter() - t0 < 30
    got = probe.indices(out)  # playable: it decodes
    assert got == list(range(len(got)))
    assert 0 < len(got) <= 25
    if stage == "writer":
        assert len(got) == 25  # every frame before the failing one was written


def test_worker_failure_stops_run_and_keeps_partial_output(clips, tmp_path, no_stage_threads_left):
    src = clips("fault.mp4", num_frames=60)
    out = tmp_path / "out.mp4"
    with pytest.raises(StageError, match=r"^worker-cpu0: InjectedFault: injected worker failure at frame 30"):
        run(_cfg(src, out, faults={"workers": {"worker-cpu0": WorkerFaults(fail_at_frame=30)}}))
    got = probe.indices(out)
    assert got == list(range(len(got))) and 0 < len(got) <= 30


def test_sequential_failure_keeps_partial_output(clips, tmp_path):
    src = clips("fault.mp4", num_frames=60)
    out = tmp_path / "out.mp4"
    cfg = _cfg(src, out, faults={"workers": {"worker-cpu0": WorkerFaults(fail_at_frame=30)}})
    cfg.parallel = False
    with pytest.raises(StageError, match="injected worker failure at frame 30"):
        run(cfg)
    assert probe.indices(out) == list(range(30))


def _interrupt_once_running(args: list[str], out: Path, *, settle_seconds: float) -> tuple[str, float]:
    """Start the CLI, wait until its writer has opened `out`, let it run a little, send
    SIGINT; return (stderr, seconds from the signal to exit). The exit status must be 130."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.perf_counter() + 60
    while not out.exists() and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.1)  # imports and set-up done once the writer has opened the file
    time.sleep(settle_seconds)
    assert proc.poll() is None, proc.communicate()
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 130, err
    return err, elapsed


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import main
    from pipeline.worker import Worker
    original = Worker.process
    def slow(self, items):
        time.sleep(0.05)
        return original(self, items)
    Worker.process = slow
    sys.exit(main.main(sys.argv[1:]))
    """
)


@pytest.mark.parametrize("mode", ["--parallel", None])
def test_ctrl_c_mid_run(clips, tmp_path, mode):
    src = clips("long-sigint.mp4", num_frames=400)
    out = tmp_path / "out.mp4"
    args = [sys.executable, "-c", _SIGINT_SCRIPT.format(root=str(ROOT)), "--source", str(src), "--output", str(out),
            "--model", "bicubic", "--scale", "2"] + ([mode] if mode else [])
    err, elapsed = _interrupt_once_running(args, out, settle_seconds=1.5)
    assert elapsed < 3.0, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in err
    assert "interrupted:" in err and "playable" in err
    got = probe.indices(out)
    assert 0 < len(got) < 400
    assert got == list(range(len(got)))


_SLOW_WRITER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {root!r})
    import main
    from hw.avio import PyAVWriter
    original = PyAVWriter.write
    def slow(self, *a, **k):
        time.sleep(0.5)
        return original(self, *a, **k)
    PyAVWriter.write = slow
    sys.exit(main.main(sys.argv[1:]))
    """
)


def test_ctrl_c_behind_a_slow_encoder_is_still_quick(clips, tmp_path):
    """Regression (review of issue 2): a full writer queue used to be encoded before stopping."""
    src = clips("long-sigint.mp4", num_frames=400)
    out = tmp_path / "out.mp4"
    args = [sys.executable, "-c", _SLOW_WRITER_SCRIPT.format(root=str(ROOT)), "--source", str(src), "--output",
            str(out), "--model", "bicubic", "--scale", "2", "--parallel", "--queue-size", "50"]
    err, elapsed = _interrupt_once_running(args, out, settle_seconds=3.0)  # queues fill behind the slow encoder
    assert elapsed < 5.0, f"took {elapsed:.1f} s to stop"
    assert "dropped to stop quickly" in err
    got = probe.indices(out)
    assert 0 < len(got) and got == list(range(len(got)))


def test_writer_failure_behind_full_queues_does_not_hang(clips, tmp_path, monkeypatch, no_stage_threads_left):
    """Regression (review): the collector kept offering END to a dead writer for 30 s."""
    from hw.avio import PyAVWriter

    original = PyAVWriter.write

    def slow(self, *a, **k):
        time.sleep(0.05)
        return original(self, *a, **k)

    monkeypatch.setattr(PyAVWriter, "write", slow)
    src = clips("fault.mp4", num_frames=60)
    t0 = time.perf_counter()
    with pytest.raises(StageError, match="injected writer failure at frame 10"):
        run(_cfg(src, tmp_path / "out.mp4", faults={"writer": {"fail_at_frame": 10}}))
    assert time.perf_counter() - t0 < 8.0
    assert probe.indices(tmp_path / "out.mp4") == list(range(10))


def test_device_fault_while_starting_leaves_that_worker_out(clips, tmp_path, monkeypatch):
    from hw.memory import DeviceFault
    from pipeline.worker import Worker

    original = Worker.setup

    def setup(self):
        if self.name == "worker-cpu1":
            raise DeviceFault("injected: device lost while loading the model")
        original(self)

    monkeypatch.setattr(Worker, "setup", setup)
    src = clips("fault.mp4", num_frames=60)
    stats = run(_cfg(src, tmp_path / "out.mp4", cpu_workers=2))
    assert stats.workers["worker-cpu1"].health == "failed"
    assert stats.workers["worker-cpu0"].num_frames == 60
    assert any("worker-cpu1" in w and "failed to start" in w for w in stats.warnings)
    assert probe.indices(tmp_path / "out.mp4") == list(range(60))
