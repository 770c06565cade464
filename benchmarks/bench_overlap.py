#!/usr/bin/env python3
"""The worker's overlapped chunks (issue 12) on vs off, side by side in one run.

For one model and frame size (fp16 on a GPU, frames decoded into memory first from a clip made
here: what the reader hands a worker), at each batch size of --batches, eager and compiled:
  model alone         the model on random frames of that batch (no conversions, no copies);
                      "eager" is channels_last eager, as the worker runs it
  worker, off         the worker stage alone, `overlap=False`: takes of one batch, each chunk
                      converted in, run, converted out and copied to host memory, waited for
  worker, on          `overlap=None` (on for a GPU): takes of TAKE_BATCHES batches whose chunks
                      overlap on three CUDA streams; also with every plane then copied into a
                      fresh numpy array (what handing copies, not pinned views, would cost)
for output yuv420p (host planes, what a CPU encoder takes) and none (--output-mode none); the
first take of on and off compared byte for byte (eager). Then the whole pipeline on the same
clip (`run()`, --parallel, x264 --preset, the automatic encoder pool, and --output-mode none)
with FRAMEPIPE_OVERLAP=0 and with the overlap on, at a fixed batch size, after one warm-up run
(the compile cache). Prints JSON as it goes and writes it to --out. `--device cpu` runs every
step (the overlapped scheduling without streams, fp32) to check the script, not to measure.

    python benchmarks/bench_overlap.py --model realesrgan-x4plus-anime --size 480x270 --batches 1,4 --out OUT
    python benchmarks/bench_overlap.py --model realesr-animevideov3 --size 640x480 --batches 4,16 --out OUT
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._steps import Steps  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _dtype(device: torch.device) -> torch.dtype:
    return torch.float16 if device.type == "cuda" else torch.float32


def decoded_frames(src: Path, count: int) -> list:
    from hw.av_decode import PyAVDecoder

    with PyAVDecoder(src) as decoder:
        return list(itertools.islice(decoder, count))


def make_worker(args, *, batch: int, output_format: str, overlap: bool, compiled: bool, frame_size):
    from hw.color import ColorInfo
    from models import load_model
    from pipeline.stats import WorkerStats
    from pipeline.worker import Worker

    model = load_model(args.model, scale=args.scale)
    dev = torch.device(args.device)
    worker = Worker("worker-0", dev, model.build, stats=WorkerStats("worker-0", str(dev)), warn=print,
                    color=ColorInfo(matrix="bt709"), dtype=_dtype(dev), model_name=model.name, scale=model.scale,
                    output_format=output_format, batch_size=batch, max_batch_size=batch, frame_size=frame_size,
                    compile=(compiled, "bench_overlap"), overlap=overlap)
    worker.start()
    return worker


def takes(frames: list, size: int):
    """Consecutive takes of `size` frames, round and round the decoded frames."""
    for k in itertools.count(0, size):
        yield [frames[(k + i) % len(frames)] for i in range(size)]


def worker_alone(args, frames, *, batch: int, output_format: str, overlap: bool, compiled: bool,
                 copy_planes: bool = False) -> dict:
    """The worker stage on in-memory frames, its takes one after the other, for --seconds."""
    dev = torch.device(args.device)
    height, width = frames[0].planes[0].shape
    worker = make_worker(args, batch=batch, output_format=output_format, overlap=overlap, compiled=compiled,
                         frame_size=(height, width))
    source = takes(frames, worker.take_size)
    result = {"overlap": worker.overlap, "take": worker.take_size, "batch": batch}
    for _ in range(3):  # warm-up: cuDNN's choices, the compilation started
        worker.process(next(source))
    if compiled:
        state = worker.model.wait()
        result["compile"] = f"{state.status}: {state.note}"
        if state.status != "compiled":
            return result
        for _ in range(2):
            worker.process(next(source))
    _sync(dev)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < args.seconds or n == 0:
        results = worker.process(next(source))
        if copy_planes:
            held = [np.array(p, copy=True) for r in results for p in r.planes]  # noqa: F841
        n += len(results)
    _sync(dev)
    seconds = time.perf_counter() - t0
    if compiled:
        result["compiled_batches"] = worker.model.state.num_compiled_batches
    worker.close(complete=True)
    del worker
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {**result, "frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 2)}


def same_bytes(args, frames, *, batch: int, output_format: str) -> dict:
    """The first take through the overlapped and the plain worker (eager): equal bytes?"""
    height, width = frames[0].planes[0].shape
    on = make_worker(args, batch=batch, output_format=output_format, overlap=True, compiled=False,
                     frame_size=(height, width))
    off = make_worker(args, batch=batch, output_format=output_format, overlap=False, compiled=False,
                      frame_size=(height, width))
    take = frames[: on.take_size]
    a, b = on.process(take), off.process(take)
    differ = sum(int(np.count_nonzero(p != q)) for x, y in zip(a, b) for p, q in zip(x.planes, y.planes))
    return {"frames": len(take), "identical": differ == 0 and len(a) == len(b), "samples_differing": differ}


def pipeline(args, src: Path, out: Path | None, *, batch: int, overlap: bool, output_mode: str) -> dict:
    """One `run()` with FRAMEPIPE_OVERLAP set as asked; frames/s of the run and in steady state."""
    from pipeline import RunConfig, run

    os.environ["FRAMEPIPE_OVERLAP"] = "1" if overlap else "0"
    try:
        precision = "fp16" if args.device.startswith("cuda") else "fp32"
        cfg = RunConfig(source=src, output=out, model=args.model, scale=args.scale, parallel=True, device=args.device,
                        precision=precision, codec="h264", crf=args.crf, preset=args.preset, overwrite=True,
                        output_mode=output_mode, batch_size=batch, max_batch_size=max(batch, 1),
                        segment_seconds=args.segment_seconds if output_mode == "file" else None)
        t0 = time.perf_counter()
        stats = run(cfg)
        wall = time.perf_counter() - t0
    finally:
        os.environ.pop("FRAMEPIPE_OVERLAP", None)
    d = stats.to_dict()
    worker = d["workers"][0]
    frames, first = d["frames_written"], d["first_frame_seconds"] or 0.0
    steady = (frames - 1) / max(d["wall_seconds"] - first, 1e-9) if frames > 1 else None
    return {"overlap": worker["overlap"], "fps": d["fps"], "steady_fps": round(steady, 2) if steady else None,
            "frames": frames, "run_seconds": d["wall_seconds"], "whole_call_seconds": round(wall, 3),
            "first_frame_seconds": d["first_frame_seconds"], "batch_sizes": worker["batch_sizes"],
            "compile": worker["compile"], "busy_seconds": {**{k: v["busy_seconds"] for k, v in d["stages"].items()},
                                                           worker["name"]: worker["busy_seconds"]}}


def summarize(results: dict) -> dict:
    """on / off ratios, and each worker figure against the model alone, per batch and mode."""
    out = {}
    for key, value in results.items():
        if not (isinstance(value, dict) and key.startswith("worker on ") and "fps" in value):
            continue
        tail = key.removeprefix("worker on ")
        off = results.get(f"worker off {tail}", {})
        b, mode = tail.split(" ")[0], tail.split(" ")[1]
        model = results.get(f"model alone {b} {mode}", {})
        row = {"on_fps": value["fps"], "off_fps": off.get("fps")}
        if off.get("fps"):
            row["on_vs_off"] = round(value["fps"] / off["fps"], 3)
        if model.get("fps"):
            row["on_vs_model_alone"] = round(value["fps"] / model["fps"], 3)
            if off.get("fps"):
                row["off_vs_model_alone"] = round(off["fps"] / model["fps"], 3)
        copied = results.get(f"worker on+copy {tail}", {})
        if copied.get("fps"):
            row["on_planes_copied_fps"] = copied["fps"]
        out[tail] = row
    for mode in ("file", "none"):
        on, off = results.get(f"pipeline on {mode}", {}), results.get(f"pipeline off {mode}", {})
        if on.get("steady_fps") and off.get("steady_fps"):
            out[f"pipeline {mode}"] = {"on_steady_fps": on["steady_fps"], "off_steady_fps": off["steady_fps"],
                                       "on_vs_off": round(on["steady_fps"] / off["steady_fps"], 3)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="realesrgan-x4plus-anime")
    p.add_argument("--scale", type=int)
    p.add_argument("--size", default="480x270", help="WxH of the clip made here")
    p.add_argument("--frames", type=int, default=240, help="frames of the clip (decoded into memory)")
    p.add_argument("--batches", default="1,4", help="batch sizes to measure (comma-separated)")
    p.add_argument("--modes", default="eager,compiled", help="eager, compiled, or both")
    p.add_argument("--outputs", default="yuv420p,none", help="worker output formats to measure")
    p.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    p.add_argument("--pipeline-batch", type=int, default=0, help="batch of the pipeline runs (0: the first of --batches)")
    p.add_argument("--pipeline-frames", type=int, default=480, help="frames of the pipelines' clip (0: no pipeline runs)")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-overlap"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # as main.py sets it
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(args.work / "torch-compile-cache"))
    import av

    from benchmarks.bench import model_alone
    from benchmarks.bench_gpu_path import make_source
    from models import load_model

    width, height = map(int, args.size.split("x"))
    scale = load_model(args.model, scale=args.scale).scale
    dev = torch.device(args.device)
    tag = f"{Path(args.model).stem}-{width}x{height}-x{scale}"
    results: dict = {"date": time.strftime("%Y-%m-%d"),
                     "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU (a check, not a measurement)",
                     "torch": torch.__version__, "pyav": av.__version__, "cpu_count": os.cpu_count(),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    step = Steps(results, args.out / f"bench_overlap-{tag}.json", preview_chars=400)
    src = make_source(args.work / f"src-{width}x{height}-{args.frames}.mp4", width=width, height=height,
                      num_frames=args.frames)
    frames = decoded_frames(src, args.frames)
    batches = [int(b) for b in args.batches.split(",") if b]
    modes = [m for m in args.modes.split(",") if m]
    outputs = [o for o in args.outputs.split(",") if o]
    model_args = argparse.Namespace(model=args.model, scale=args.scale, device=args.device,
                                    precision="fp16" if dev.type == "cuda" else "fp32")
    for b in batches:
        step(f"same bytes {b} yuv420p", lambda: same_bytes(args, frames, batch=b, output_format="yuv420p"))
        for mode in modes:
            compiled = mode == "compiled"
            eager = "channels_last" if dev.type == "cuda" else "eager"
            step(f"model alone {b} {mode}", lambda: model_alone(model_args, batch=b, height=height, width=width,
                                                                 mode="compiled" if compiled else eager,
                                                                 seconds_target=args.seconds))
            for fmt in outputs:
                for overlap in (False, True):
                    name = f"worker {'on' if overlap else 'off'} {b} {mode} {fmt}"
                    step(name, lambda: worker_alone(args, frames, batch=b, output_format=fmt, overlap=overlap,
                                                    compiled=compiled))
            if "yuv420p" in outputs:
                step(f"worker on+copy {b} {mode} yuv420p", lambda: worker_alone(
                    args, frames, batch=b, output_format="yuv420p", overlap=True, compiled=compiled, copy_planes=True))
    if args.pipeline_frames:
        batch = args.pipeline_batch or batches[0]
        clip = make_source(args.work / f"pipe-{width}x{height}-{args.pipeline_frames}.mp4", width=width,
                           height=height, num_frames=args.pipeline_frames)
        out = args.work / f"out-{tag}.mp4"
        step("pipeline warm-up none", lambda: pipeline(args, clip, None, batch=batch, overlap=True, output_mode="none"))
        for mode, target in (("file", out), ("none", None)):
            for overlap in (False, True):
                step(f"pipeline {'on' if overlap else 'off'} {mode}",
                     lambda: pipeline(args, clip, target, batch=batch, overlap=overlap, output_mode=mode))
    results["summary"] = summarize(results)
    step.save()
    import json

    print(json.dumps(results["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
