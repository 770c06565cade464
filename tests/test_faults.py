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
    assert len(got) <= 25
    if stage == "writer":
        assert len(got) == 25  # every frame before the failing one was written


def test_worker_failure_stops_run_and_keeps_partial_output(clips, tmp_path, no_stage_threads_left):
    src = clips("fault.mp4", num_frames=60)
    out = tmp_path / "out.mp4"
    with pytest.raises(StageError, match=r"^worker-cpu0: InjectedFault: injected worker failure at frame 30"):
        run(_cfg(src, out, faults={"workers": {"worker-cpu0": WorkerFaults(fail_at_frame=30)}}))
    got = probe.indices(out)
    assert got == list(range(len(got))) and len(got) <= 30


def test_sequential_failure_keeps_partial_output(clips, tmp_path):
    src = clips("fault.mp4", num_frames=60)
    out = tmp_path / "out.mp4"
    cfg = _cfg(src, out, faults={"workers": {"worker-cpu0": WorkerFaults(fail_at_frame=30)}})
    cfg.parallel = False
    with pytest.raises(StageError, match="injected worker failure at frame 30"):
        run(cfg)
    assert probe.indices(out) == list(range(30))


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
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4.0)  # torch import + some frames
    assert proc.poll() is None, proc.communicate()
    t0 = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 130, err
    assert elapsed < 3.0, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in err
    assert "interrupted:" in err and "playable" in err
    got = probe.indices(out)
    assert 0 < len(got) < 400
    assert got == list(range(len(got)))
