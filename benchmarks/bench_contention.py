#!/usr/bin/env python3
"""Why a whole run is slower than its slowest stage alone (issue 12, target 2): CPU and GIL
contention between the GPU worker and the encoders, measured side by side in one run.

The model-bound job (realesrgan-x4plus-anime, 480x270 -> 1920x1080, x264 veryfast crf 23, the
encoder pool, eager model unless --compile on, batch 4) runs whole, in these variants, alternated and repeated:
  default        framepipe as it is (the pool's x264 threads together match the cores; since 2026-12-06
                 the worker's overlap where the model compiles)
  ffmpeg-threads each encoder of the pool with x264's own thread count (~1.5 per core each:
                 framepipe before 2026-12-06)
  switch-1ms     sys.setswitchinterval(0.001): a thread waiting for the GIL (the worker, after
                 each CUDA wait) gets it after 1 ms instead of 5
  encoders-nice  each encoder thread (and the x264 threads it starts) at nice +10: under a full
                 CPU the worker, reader and collector run first
  both           the two together
  spare-threads  the pool's x264 threads together leave 2 cores to the worker, reader and collector
  pin-2, pin-4   the encoder threads (and the x264 threads they start) kept off the first 2 (4) cores
                 the process may use (sched_setaffinity): those cores are the worker's, reader's and
                 collector's alone, whatever x264 does
  overlap        FRAMEPIPE_OVERLAP=1: the worker's chunks overlapped on CUDA streams (pipeline/worker.py;
                 the default where the model compiles)
  no-overlap     FRAMEPIPE_OVERLAP=0: never overlapped
  no-taper       --segment-frames 144: every segment 6 s long (the clip is 24 fps), the last ones too, not
                 shorter towards the end (the default since 2026-12-06, pipeline.segments.SegmentLayout)
Variants join with "+" (overlap+spare-threads: both changes in one run). Each run reports the GPU's
mean utilization (NVML, sampled by the run) and the worker's busy and waiting seconds.
and once with `--output-mode none` (the stages before the encoder, for the ratio).

    python benchmarks/bench_contention.py --frames 960 --out bench-out/contention
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._steps import Steps, steady_fps  # noqa: E402

_WRAP = """
import os, sys, threading
sys.path.insert(0, {root!r})
if {interval!r}:
    sys.setswitchinterval({interval!r})
if {own_threads!r}:
    from pipeline import plan
    plan.encoder_threads = lambda num_encoders, num_cores: 0
if {spare!r}:
    from pipeline import plan
    plan.encoder_threads = lambda num_encoders, num_cores: 0 if num_encoders <= 1 else max(1, (num_cores - {spare!r}) // num_encoders)
if {nice!r} or {pin!r}:  # each encoder thread, and the x264 threads it starts (they inherit both)
    from pipeline import segment_writer
    original = segment_writer.EncoderPool._run_encoder
    allowed = sorted(os.sched_getaffinity(0))
    def encoder_thread(runner, gone):
        if {nice!r}:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), {nice!r})
        if {pin!r}:
            os.sched_setaffinity(0, allowed[{pin!r}:])
        return original(runner, gone)
    segment_writer.EncoderPool._run_encoder = staticmethod(encoder_thread)
import main
main._exit(main.main(sys.argv[1:]))  # as `python main.py` leaves (a compile thread still running)
"""

# What each variant changes: the GIL switch interval, the nice of the encoder threads, x264's own
# thread count in the pool, cores left to the pipeline's own threads by the pool's threads (or kept
# from the encoders by their affinity).
VARIANTS = {"default": {}, "ffmpeg-threads": {"own_threads": True}, "switch-1ms": {"interval": 0.001},
            "encoders-nice": {"nice": 10}, "both": {"interval": 0.001, "nice": 10}, "spare-threads": {"spare": 2},
            "pin-2": {"pin": 2}, "pin-4": {"pin": 4},
            "overlap": {"env": {"FRAMEPIPE_OVERLAP": "1"}}, "no-overlap": {"env": {"FRAMEPIPE_OVERLAP": "0"}},
            "no-taper": {"args": ["--segment-frames", "144"]}}  # 6 s at 24 fps, framepipe's length, all of it


def variant(name: str) -> dict:
    """The changes of `name`, variants joined with "+" merged (their env too)."""
    merged: dict = {}
    for part in name.split("+"):
        for key, value in VARIANTS[part].items():
            merged[key] = ({**merged.get(key, {}), **value} if key == "env" else
                           [*merged.get(key, []), *value] if key == "args" else value)
    return merged


def run(clip: Path, out: Path, tag: str, *, interval: float = 0, nice: int = 0, own_threads: bool = False,
        spare: int = 0, pin: int = 0, env: dict | None = None, args: list[str] | None = None, model: str,
        compile: str = "off", extra: list[str]) -> dict:
    stats_path = out / f"{tag}.json"
    script = _WRAP.format(root=str(ROOT), interval=interval, nice=nice, own_threads=own_threads, spare=spare, pin=pin)
    cmd = [sys.executable, "-c", script, "--source", str(clip), "--model", model, "--parallel", "--compile", compile,
           "--stats-json", str(stats_path), *extra, *(args or [])]
    t0 = time.perf_counter()
    inherited = {k: v for k, v in os.environ.items() if k != "FRAMEPIPE_OVERLAP"}  # "default" is framepipe's default
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**inherited, **(env or {})})
    seconds = time.perf_counter() - t0
    (out / f"{tag}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-600:]}
    s = json.loads(stats_path.read_text())
    steady = steady_fps(s)
    steady = round(steady, 1) if steady is not None else None
    return {"fps": s["fps"], "steady_fps": steady, "settled_fps": s.get("settled_fps"), "flow_fps": s.get("flow_fps"),
            "settled_after_seconds": s.get("settled_after_seconds"), "command_seconds": round(seconds, 2),
            "workers_steady_fps": [w.get("steady_fps") for w in s.get("workers", [])],
            "workers_busy": [w.get("busy_seconds") for w in s.get("workers", [])],
            "workers_waiting": [w.get("wait_seconds") for w in s.get("workers", [])],
            "gpu_utilization": [w.get("mean_utilization_percent") for w in s.get("workers", [])],
            "overlap": [w.get("overlap") for w in s.get("workers", [])],
            "compile": [(w.get("compile") or {}).get("status") for w in s.get("workers", [])],
            "stages": s.get("stages"),
            "batch_sizes": [w.get("batch_sizes") for w in s.get("workers", [])],
            "encoders": s.get("encoders")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="480x270")
    p.add_argument("--frames", type=int, default=960)
    p.add_argument("--model", default="realesrgan-x4plus-anime")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--encoders", type=int, default=6,
                   help="the pool's size in every run into a file (0: framepipe's choice, which follows the "
                        "model rate remembered by the runs before, so the variants would differ in it)")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--compile", choices=("off", "on"), default="off",
                   help="on: the compiled model (its compile cache filled first, as a second run finds it)")
    p.add_argument("--out", type=Path, default=Path("bench-out/contention"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    step = Steps(results, args.out / "bench-contention.json", preview_chars=300)
    w, h = map(int, args.size.split("x"))
    clip = args.out / f"contention-{w}x{h}-{args.frames}.mp4"

    def make() -> dict:
        from hw.clips import make_clip

        make_clip(clip, width=w, height=h, num_frames=args.frames, fps=24, photo=True)
        return {"clip": str(clip)}

    step("make_clip", make)
    if args.compile == "on":
        from types import SimpleNamespace

        from benchmarks.bench import warm_compile_cache

        step("compile_cache", lambda: warm_compile_cache(
            SimpleNamespace(model=args.model, scale=None, device="cuda:0", precision="auto"),
            batch=args.batch_size, height=h, width=w))
    common = ["--batch-size", str(args.batch_size)]
    file_args = [*common, "--output", str(args.out / "out.mp4"), "--overwrite", "--preset", "veryfast", "--quality", "23",
                 "--encoders", str(args.encoders)]
    # warm-up: weights converted, the shape's batch-size memo, the disk cache
    step("warmup", lambda: run(clip, args.out, "warmup", model=args.model, compile=args.compile,
                               extra=[*common, "--output-mode", "none", "--max-frames", "64"]))
    step("output_none", lambda: run(clip, args.out, "none", model=args.model, compile=args.compile,
                                    extra=[*common, "--output-mode", "none"]))
    names = [v for v in args.variants.split(",") if v]
    if any("overlap" in n.split("+") for n in names):
        step("output_none_overlap", lambda: run(clip, args.out, "none-overlap", **variant("overlap"), model=args.model,
                                                compile=args.compile, extra=[*common, "--output-mode", "none"]))
    for r in range(args.repeats):
        for name in names:
            step(f"{name}:{r + 1}", lambda: run(clip, args.out, f"{name}-{r + 1}", **variant(name), model=args.model,
                                                compile=args.compile, extra=file_args))
    print("\nsteady fps (whole-run fps), once settled / to the last frame handed on [GPU utilization %, worker busy/waiting s]")

    def line(x: dict) -> str:
        return (f"{x.get('steady_fps')} ({x.get('fps')}), {x.get('settled_fps')} / {x.get('flow_fps')} [{x.get('gpu_utilization')}, "
                f"{x.get('workers_busy')}/{x.get('workers_waiting')}]")

    print(f"  output none: {line(results['output_none'])}")
    if "output_none_overlap" in results:
        print(f"  output none, overlap: {line(results['output_none_overlap'])}")
    for name in names:
        runs = [results.get(f"{name}:{r + 1}", {}) for r in range(args.repeats)]
        print(f"  {name:14s} " + ", ".join(line(x) for x in runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
