#!/usr/bin/env python3
"""One model over two GPUs, three ways, side by side in one run (issue 15).

For each model (RIFE at 1920x1080, realesrgan-x4plus at 480x270 -> 1920x1080) the model stage
alone — the pipeline's own stage classes, fed in-memory frames, output dropped on the device
(no decoder, no encoder: those are measured elsewhere) — runs:
  whole   one GPU, one `Worker`
  split   `SplitFront` on GPU 0 -> 2-deep queue -> `SplitBack` on GPU 1, each in its thread
          (transport p2p, then bytes)
  dp      two `Worker`s, a whole copy on each GPU, pulling from one queue (data-parallel)
and reports frames/s and each device's peak memory (the split's point: each GPU holds half).

    python benchmarks/bench_split.py --out $OUT [--frames 64] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._steps import Steps  # noqa: E402


def frames_for(kind: str, width: int, height: int, count: int):
    """In-memory frames: the stage sees what the reader hands it (RGB frames, or windows of two)."""
    from core.frame import Frame
    from pipeline.reader import windows

    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    frames = [Frame(index=i, pts=i, fmt="rgb24", planes=(np.roll(base, 4 * i, axis=1),)) for i in range(count)]
    return list(windows(frames, 0, 1, pad_ends=False)) if kind == "interpolation" else frames


def batches(items, size):
    return [items[i : i + size] for i in range(0, len(items), size)]


def _temporal(name: str):
    from models import load_model
    from pipeline.worker import Temporal

    return Temporal(model=load_model("rife"), factor=2, scene_threshold=0.2, spatial=False) if name == "rife" else None


def _model(name: str):
    from models import load_model

    return load_model("bicubic", scale=1) if name == "rife" else load_model(name)


def _peaks(devices) -> dict:
    return {str(d): round(torch.cuda.max_memory_allocated(d) / 2**30, 2) for d in devices}


def _reset(devices) -> None:
    for d in devices:
        torch.cuda.synchronize(d)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(d)


def _timed(bodies, devices, frames: int) -> dict:
    """Run `bodies` in threads at once; frames/s until all are done and the devices idle."""
    t0 = time.perf_counter()
    threads = [threading.Thread(target=b) for b in bodies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for d in devices:
        torch.cuda.synchronize(d)
    seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 2), "peak_gib": _peaks(devices)}


def run_workers(name: str, items, devices, batch: int) -> dict:
    """Whole copies, one per device, pulling batches from one queue."""
    from hw.color import ColorInfo
    from pipeline.stats import RunStats
    from pipeline.worker import Worker

    stats, model, temporal = RunStats(), _model(name), _temporal(name)
    workers = [Worker(f"w{d.index}", d, model.build, stats=stats.add_worker(f"w{d.index}", str(d)), warn=print,
                      color=ColorInfo(matrix="bt709"), dtype=torch.float16, model_name=model.name, scale=model.scale,
                      output_format="none", batch_size=batch, temporal=temporal) for d in devices]
    for w in workers:
        w.start()
    for w in workers:  # warm-up (cuDNN choices) outside the clock
        w.process(items[:batch])
    _reset(devices)
    work: queue.Queue = queue.Queue()
    for b in batches(items, batch):
        work.put(b)

    def body(w) -> None:
        while True:
            try:
                b = work.get_nowait()
            except queue.Empty:
                return
            w.process(b)

    return _timed([lambda w=w: body(w) for w in workers], devices, len(items))


def run_split(name: str, items, devices, batch: int, transport: str) -> dict:
    from hw.color import ColorInfo
    from models.split import split_model
    from pipeline.split import InTransit, SplitBack, SplitFront, SplitPlan
    from pipeline.stats import RunStats

    model, temporal = _model(name), _temporal(name)
    whole = (temporal.model if temporal is not None else model).make_module()
    stage_a, stage_b = split_model(whole)
    plan = SplitPlan(part="interpolation" if temporal is not None else "spatial", stage_a=stage_a, stage_b=stage_b,
                     devices=tuple(devices), dtype=torch.float16, transport=transport)
    stats, in_transit, color = RunStats(), InTransit(), ColorInfo(matrix="bt709")
    front = SplitFront("a", plan, stats=stats.add_worker("a", str(devices[0])), color=color, batch_size=batch,
                       temporal=temporal, in_transit=in_transit)
    back = SplitBack("b", plan, stats=stats.add_worker("b", str(devices[1])), color=color, output_format="none",
                     model_name=model.name, scale=model.scale, temporal=temporal, in_transit=in_transit)
    front.start()
    back.start()
    for h in front.process(items[:batch]):  # warm-up
        back.process(h)
    _reset(devices)
    handoffs: queue.Queue = queue.Queue(maxsize=2)
    busy = {"a": 0.0, "b": 0.0}

    def run_front() -> None:
        for b in batches(items, batch):
            t = time.perf_counter()
            out = front.process(b)
            busy["a"] += time.perf_counter() - t
            for h in out:
                handoffs.put(h)
        handoffs.put(None)

    def run_back() -> None:
        while (h := handoffs.get()) is not None:
            t = time.perf_counter()
            back.process(h)
            busy["b"] += time.perf_counter() - t

    result = _timed([run_front, run_back], devices, len(items))
    return {**result, "busy_a": round(busy["a"], 3), "busy_b": round(busy["b"], 3)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--models", default="rife,realesrgan-x4plus")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    n = torch.cuda.device_count()
    devices = [torch.device("cuda", i) for i in range(min(n, 2))]
    results: dict = {"gpus": [torch.cuda.get_device_name(d) for d in devices], "torch": torch.__version__,
                     "frames": args.frames, "batch": args.batch, "date": time.strftime("%Y-%m-%d")}
    step = Steps(results, args.out / "bench_split.json")
    sizes = {"rife": (1920, 1080), "realesrgan-x4plus": (480, 270)}
    for name in args.models.split(","):
        kind = "interpolation" if name == "rife" else "spatial"
        items = frames_for(kind, *sizes[name], args.frames)
        step(f"{name}: whole, 1 GPU", lambda: run_workers(name, items, devices[:1], args.batch))
        if len(devices) < 2:
            continue
        step(f"{name}: split p2p", lambda: run_split(name, items, devices, args.batch, "p2p"))
        step(f"{name}: split bytes", lambda: run_split(name, items, devices, args.batch, "bytes"))
        step(f"{name}: data-parallel, 2 GPUs", lambda: run_workers(name, items, devices, args.batch))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
