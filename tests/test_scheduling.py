"""Multi-device scheduling with CPU workers standing in for GPUs (issue 5): pull-based
balance, OOM halving with retry, device failure with hand-back, every device failing.
Each run checks the exact frame count and order of the output."""

from __future__ import annotations

import pytest

from pipeline import HardwareUnavailable, RunConfig, StageError, run
from tests import probe
from tests.faults import WorkerFaults, inject


def _run(src, out, *, workers: int, batch: int, faults=None, **kw):
    """A run with `workers` CPU workers at batch `batch`, faults injected from outside (tests.faults)."""
    cfg = RunConfig(source=src, output=out, model="bicubic", scale=2, parallel=True, cpu_workers=workers,
                    batch_size=batch, max_batch_size=max(batch, 1), queue_size=8, **kw)
    return run(cfg, wrap=inject(workers=faults or {}, backoff_seconds=0.05))


def _frames_by_worker(stats) -> dict[str, int]:
    return {name: w.num_frames for name, w in stats.workers.items()}


def test_slow_worker_takes_fewer_batches(clips, tmp_path, no_stage_threads_left):
    src = clips("sched.mp4", num_frames=90)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, workers=3, batch=2,
                     faults={"worker-cpu0": WorkerFaults(seconds_per_batch=0.12),
                             "worker-cpu1": WorkerFaults(seconds_per_batch=0.02),
                             "worker-cpu2": WorkerFaults(seconds_per_batch=0.02)})
    share = _frames_by_worker(stats)
    assert sum(share.values()) == 90
    assert share["worker-cpu0"] * 2 < min(share["worker-cpu1"], share["worker-cpu2"]), share
    assert all(n > 0 for n in share.values())  # nobody idle
    assert probe.indices(out) == list(range(90))


def test_oom_halves_batch_and_retries_same_frames(clips, tmp_path):
    src = clips("sched.mp4", num_frames=90)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, workers=2, batch=8,
                     faults={"worker-cpu0": WorkerFaults(oom_when_batch_over=2),
                             "worker-cpu1": WorkerFaults(oom_at_batch=3)})
    w0, w1 = stats.workers["worker-cpu0"], stats.workers["worker-cpu1"]
    assert w0.num_oom >= 2 and max(w0.batch_sizes) <= 2  # 8 -> 4 -> 2, never above again
    assert w1.num_oom == 1
    assert w0.num_frames + w1.num_frames == 90
    assert probe.indices(out) == list(range(90))


def test_batch_grows_back_after_oom(clips, tmp_path):
    src = clips("sched-long.mp4", num_frames=200)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, workers=1, batch=4, faults={"worker-cpu0": WorkerFaults(oom_at_batch=1)})
    w = stats.workers["worker-cpu0"]
    assert w.num_oom == 1
    assert 2 in w.batch_sizes and 4 in w.batch_sizes  # shrank, then grew back to the target
    assert probe.indices(out) == list(range(200))


def test_device_failure_hands_frames_back(clips, tmp_path, no_stage_threads_left):
    src = clips("sched-long.mp4", num_frames=200)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, workers=3, batch=3,
                     faults={"worker-cpu0": WorkerFaults(seconds_per_batch=0.02),
                             "worker-cpu1": WorkerFaults(device_fault_at_batch=2, device_fault_permanent=True),
                             "worker-cpu2": WorkerFaults(seconds_per_batch=0.02)})
    bad = stats.workers["worker-cpu1"]
    assert bad.health == "failed"
    assert bad.num_failures == 3 and bad.num_frames_given_back >= 9
    assert sum(_frames_by_worker(stats).values()) == 200
    assert any("worker-cpu1" in w and "taken out of the run" in w for w in stats.warnings)
    assert probe.indices(out) == list(range(200))


def test_transient_device_fault_recovers(clips, tmp_path):
    src = clips("sched.mp4", num_frames=90)
    out = tmp_path / "out.mp4"
    stats = _run(src, out, workers=2, batch=3, faults={"worker-cpu0": WorkerFaults(device_fault_at_batch=2)})
    w = stats.workers["worker-cpu0"]
    assert w.num_failures == 1 and w.health == "done" and w.num_frames > 0
    assert probe.indices(out) == list(range(90))


def test_every_device_failing_is_one_clear_error(clips, tmp_path, no_stage_threads_left):
    src = clips("sched.mp4", num_frames=90)
    out = tmp_path / "out.mp4"
    faults = {f"worker-cpu{i}": WorkerFaults(device_fault_at_batch=4, device_fault_permanent=True) for i in range(2)}
    with pytest.raises(HardwareUnavailable, match=r"every device failed: worker-cpu0: 3 fault\(s\); worker-cpu1: 3"):
        _run(src, out, workers=2, batch=2, faults=faults)
    got = probe.indices(out)  # partial output finalized
    assert 0 < len(got) < 90 and got == list(range(len(got)))


def test_reorder_buffer_stays_bounded(clips, tmp_path):
    """A very slow worker must not let the others run ahead without bound."""
    from pipeline.collector import Collector

    seen = {}
    original = Collector.close

    def spy(self, *, complete):
        seen["max_pending"] = self.max_pending_seen
        original(self, complete=complete)

    Collector.close = spy
    try:
        src = clips("sched-long.mp4", num_frames=200)
        _run(src, tmp_path / "out.mp4", workers=2, batch=1,
             faults={"worker-cpu0": WorkerFaults(seconds_per_batch=0.3)})
    finally:
        Collector.close = original
    window = 8 + 2 * 1 * 2  # queue_size + workers * batch * 2 (runner's window)
    assert 0 < seen["max_pending"] <= window


@pytest.mark.parametrize("lost_frame", [40, 89], ids=["middle", "last"])
def test_a_lost_batch_fails_the_run_fast(clips, tmp_path, monkeypatch, lost_frame, no_stage_threads_left):
    """A worker that silently drops a batch (a bug) must fail the run with FramesLost, not
    succeed short of frames and not hang (issue 8: a gap mid-stream stalled the run forever,
    the collector waiting on it and the workers behind the reorder window). The frames
    before the gap are kept."""
    from pipeline.worker import Worker

    original = Worker.process

    def lossy(self, items):
        results = original(self, items)
        return [] if any(it.index == lost_frame for it in items) else results

    monkeypatch.setattr(Worker, "process", lossy)
    src = clips("sched.mp4", num_frames=90)
    out = tmp_path / "out.mp4"
    with pytest.raises(StageError, match=r"^collector: FramesLost: .*"):
        _run(src, out, workers=2, batch=3)
    got = probe.indices(out)
    assert got == list(range(len(got))) and len(got) <= lost_frame
