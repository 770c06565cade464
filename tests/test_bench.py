"""benchmarks/bench.py, the one benchmark command (issue 12), on the CPU: every step runs,
the JSON holds the figures and the summary names what bounds each pipeline, the chart is a
PNG. Figures from this machine mean nothing; that the command works on any host does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(300)
def test_bench_runs_every_step_on_the_cpu(tmp_path):
    pytest.importorskip("cv2")
    pytest.importorskip("matplotlib")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--make-clip", "64x48", "--frames", "48",
         "--model", "bicubic", "--scale", "2", "--device", "cpu", "--preset", "ultrafast", "--segment-seconds", "1",
         "--out", str(tmp_path)], capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((tmp_path / "bench-bicubic-64x48-x2.json").read_text())
    errors = {k: v["error"] for k, v in results.items() if isinstance(v, dict) and "error" in v}
    assert errors == {}
    for step in ("decode_pyav", "model_eager", "pipeline_sequential", "pipeline_parallel_1_encoder",
                 "pipeline_parallel", "pipeline_output_none", "encoder_input", "encode_alone_1", "encode_alone_k",
                 "encode_alone_k_reencoded"):
        assert results[step]["fps"] > 0, step
    assert results["pipeline_parallel"]["frames"] == results["pipeline_output_none"]["frames"] == 48
    assert results["encoder_input"]["frames"] == results["encode_alone_k"]["frames"] == 48
    assert results["naive"]["frames"] == 48
    cli = results["first_frame_cli"]  # two fresh starts: the warm one reported, the first beside it
    assert 0 < cli["from_command_s"] <= cli["process_wall_s"] and cli["first_start_from_command_s"] > 0
    assert cli["from_run_start_s"] <= cli["from_command_s"]
    summary = results["summary"]
    assert summary["encoder_pool"]["bound_by"] in ("decode", "model", "encode")
    for name, step in (("one_encoder", "pipeline_parallel_1_encoder"), ("encoder_pool", "pipeline_parallel")):
        run_ = results[step]  # after the first frame: faster than over the whole run, which counts the start
        assert run_["steady_fps"] > run_["fps"] and summary[name]["steady_fps"] == run_["steady_fps"]
        assert summary[name]["steady_ratio_to_slowest"] == round(run_["steady_fps"] / summary[name]["slowest_alone_fps"], 3)
        after = run_["settled_after_seconds"]  # settled (eager: at its first batch) by the run's end at the latest
        assert run_["first_frame_seconds"] <= after <= run_["whole_call_seconds"]
        settled = run_["settled_fps"]  # None where less than a second followed
        assert summary[name]["settled_ratio_to_slowest"] == (
            round(settled / summary[name]["slowest_alone_fps"], 3) if settled else None)
        flow = run_["flow_fps"]
        assert summary[name]["flow_ratio_to_slowest"] == (
            round(flow / summary[name]["slowest_alone_fps"], 3) if flow else None)
    assert summary["best_pipeline_vs_naive_wall"] > 0
    assert results["devices"] == ["cpu"] and results["pipeline_parallel_cold"]["placements"] == [["cpu", 1]]
    assert results["model_eager"]["batch"] == 1  # the batch the pipeline's worker ran
    assert (tmp_path / "bench-bicubic-64x48-x2.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("extra, says", [
    (["--gpus", "99"], "Invalid --gpus ('99'): this machine has "),  # no GPU, or GPUs 0-N
    (["--gpus", "0", "--device", "cpu"], "--gpus 0 was given with --device cpu: drop one of them"),
])
def test_bench_refuses_gpus_it_cannot_use_in_one_line(tmp_path, extra, says):
    """--gpus as main.py takes it; where it cannot be used, one line and exit 2 before any step."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--make-clip", "64x48", "--frames", "8",
                           "--model", "bicubic", "--scale", "2", "--out", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "Traceback" not in done.stderr and last.startswith("bench.py: error: ") and says in last, done.stderr
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.mp4"))


def _bench_args():
    from types import SimpleNamespace

    return SimpleNamespace(model="bicubic", scale=2, precision="auto", device="cpu", gpus=None)


def test_the_model_alone_on_several_devices_is_timed_over_the_same_seconds(monkeypatch):
    """With --gpus the model stage alone is every GPU's copy at once, as the workers run them: one
    thread each, timed from a barrier after each one's warm-up, the figure their frames together.
    (Two CPU placements here: the same code the GPUs run. The first model takes a second longer
    to load than the other's timing lasts, as a GPU's copy may: the windows still overlap.)"""
    import threading
    import time

    import models
    from benchmarks.bench import model_alone_together

    load, first = models.load_model, threading.Lock()

    def slow_once(*a, **k):
        if first.acquire(blocking=False):
            time.sleep(1.0)
        return load(*a, **k)

    monkeypatch.setattr(models, "load_model", slow_once)
    r = model_alone_together(_bench_args(), placements=[("cpu", 1), ("cpu", 2)], height=24, width=32, mode="eager",
                             seconds_target=0.5)
    one, two = r["per_device"]
    assert r["devices"] == ["cpu", "cpu"] and r["batch"] == [1, 2] and (one["batch"], two["batch"]) == (1, 2)
    assert one["fps"] > 0 and two["fps"] > 0 and r["fps"] == pytest.approx(one["fps"] + two["fps"], abs=0.11)
    assert max(one["timed_from"], two["timed_from"]) < min(one["timed_to"], two["timed_to"])  # overlapping
    single = model_alone_together(_bench_args(), placements=[("cpu", 1)], height=24, width=32, mode="eager",
                                  seconds_target=0.2)
    assert "per_device" not in single and single["fps"] > 0 and single["batch"] == 1


@pytest.mark.timeout(120)
def test_the_model_alone_on_several_devices_fails_whole_without_waiting_for_ever():
    """One device that fails (here a GPU this machine lacks; on a host, one out of memory) ends the
    step with its device named: the others, waiting at the barrier, stop instead of hanging."""
    from benchmarks.bench import model_alone_together

    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    with pytest.raises(RuntimeError, match=r"^cuda:0: "):
        model_alone_together(_bench_args(), placements=[("cuda:0", 1), ("cpu", 1)], height=24, width=32,
                             mode="eager", seconds_target=0.2)


def test_encode_alone_gets_the_very_frames_the_pipeline_encoded(tmp_path):
    """bench_segments.lossless: a run into lossless x264 decodes (`output_frames`) to the planes its
    writer was handed, every frame bit for bit, so "encode alone" encodes what the pipeline's
    encoders did (not their smoothed output, which x264 encodes again faster)."""
    from types import SimpleNamespace

    import numpy as np

    from benchmarks.bench_segments import lossless, output_frames
    from hw.clips import make_clip
    from pipeline import RunConfig, run

    clip = make_clip(tmp_path / "v.mp4", width=64, height=48, num_frames=12, fps=24, photo=True)
    args = lossless(SimpleNamespace(crf=23, preset="medium", segment_seconds=2.0))
    assert (args.crf, args.preset, args.segment_seconds) == (0, "ultrafast", 2.0)
    handed = []

    def capture(name, stage):
        if name != "writer":
            return stage

        class Capturing:
            def __getattr__(self, attr):
                return getattr(stage, attr)

            def process(self, item):
                handed.append(tuple(np.array(p, copy=True) for p in item.planes))
                return stage.process(item)

        return Capturing()

    out = tmp_path / "o.mkv"
    run(RunConfig(source=clip, output=out, model="bicubic", scale=2, device="cpu", parallel=True, crf=args.crf,
                  preset=args.preset), wrap=capture)
    got = output_frames(out)
    assert len(got) == len(handed) == 12
    for k, (g, h) in enumerate(zip(got, handed)):
        assert [p.shape for p in g] == [p.shape for p in h] == [(96, 128), (48, 64), (48, 64)], k
        assert all(np.array_equal(a, b) for a, b in zip(g, h)), k
    lossy = tmp_path / "lossy.mkv"  # the check can fail: crf 23 output differs from what was handed
    handed.clear()
    run(RunConfig(source=clip, output=lossy, model="bicubic", scale=2, device="cpu", parallel=True, crf=23,
                  preset="ultrafast"), wrap=capture)
    assert not all(np.array_equal(a, b) for g, h in zip(output_frames(lossy), handed) for a, b in zip(g, h))


def _rrdb(blocks: int):
    import torch

    from models.rrdb import RRDBNet

    torch.manual_seed(0)
    return RRDBNet(num_filters=8, num_blocks=blocks, scale=2).eval().requires_grad_(False)


def test_bench_regional_marks_the_outermost_repeated_blocks_and_changes_no_eager_output():
    """benchmarks/bench_regional.py's regions: an RRDBNet's RRDB blocks (not the dense blocks inside
    them), none in a plain stack of torch.nn layers; marking them leaves eager output and other
    models alone, and marks a block once."""
    import torch

    from benchmarks.bench_regional import mark_regions, repeated_blocks
    from models.compact import SRVGGNetCompact

    net, other = _rrdb(3), _rrdb(3)
    blocks = repeated_blocks(net)
    assert [type(b).__name__ for b in blocks] == ["_RRDB"] * 3
    assert blocks == [m for m in net.modules() if type(m).__name__ == "_RRDB"]
    assert repeated_blocks(SRVGGNetCompact(num_conv=4, upscale=2)) == []
    x = torch.rand(1, 3, 12, 12)
    with torch.inference_mode():
        before = net(x)
        assert mark_regions(net) == 3
        marked = type(repeated_blocks(net)[0])
        assert mark_regions(net) == 3 and type(repeated_blocks(net)[0]) is marked  # not wrapped twice
        assert torch.equal(net(x), before)
    unmarked = type(repeated_blocks(other)[0])
    assert unmarked is not marked and issubclass(marked, unmarked) and marked.forward is not unmarked.forward
