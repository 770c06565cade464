#!/usr/bin/env python3
"""A whole run beside a thread that runs Python without pause, as the compile thread does while it
loads or compiles the model: how much the run slows, and whether a shorter GIL switch interval, or
that thread giving up the GIL often, gives it back.

    python benchmarks/bench_convoy.py [--frames 600] [--size 320x240] [--yields "1,0;0.5,0.05"] [--out DIR]

Each variant is one `pipeline.run` in this process (bicubic x2 on the CPU, `--output-mode none`,
so the stages' own Python is what is timed): alone; beside a thread compiling Python source and
running it in a loop (what the compile thread spent half its samples on, benchmarks/RESULTS.md)
at the default switch interval (5 ms); the same at 0.5 ms; beside that thread giving up the GIL
as `--yields` says (every EVERY_MS, asleep PAUSE_MS: a profile hook of that thread's own, checking
the clock at each call and return). The thread's rate alone is measured too. Every stage thread that
gives up the GIL (a decode, a torch op, a queue wait) must wait for it again, up to the switch
interval while the other thread runs Python.

Then what giving up the GIL costs the load itself (`--import-rounds`, 0 to skip): in a fresh
process per variant, the imports torch.compile's loading starts with (Dynamo and Inductor: 67% of
the compile thread's samples in a run on the H100) under each yield, beside a stand-in for the GPU
worker's eager batches (38 ops a batch, each giving up the GIL for 20 us around a little Python,
then 30 ms waiting on the GPU): the imports' seconds and the batches meanwhile, against the
stand-in alone. Prints one line per variant and writes JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_SOURCE = "\n".join(f"def f{i}(x):\n    return [x * {i} for _ in range(10)]\n" for i in range(300))


@contextlib.contextmanager
def _yielding(every: float, pause: float):
    """The calling thread gives up the GIL at least every `every` seconds while inside, `pause`
    seconds asleep (a profile hook, this thread's alone; none where `every` is 0)."""
    if every <= 0:
        yield
        return
    clock, sleep = time.perf_counter, time.sleep
    due = clock() + every

    def hook(frame, event, arg):
        nonlocal due
        if clock() >= due:
            sleep(pause)
            due = clock() + every

    sys.setprofile(hook)
    try:
        yield
    finally:
        sys.setprofile(None)


def _busy(stop: threading.Event, counter: list[int], yielding: tuple[float, float] = (0.0, 0.0)) -> None:
    """Python without pause: source compiled to bytecode and run, as an import does, giving up
    the GIL as `yielding` (every, pause) says."""
    with _yielding(*yielding):
        while not stop.is_set():
            namespace: dict = {}
            exec(compile(_SOURCE, "<busy>", "exec"), namespace)
            for i in range(300):
                namespace[f"f{i}"](i)
            counter[0] += 1


def _imports_beside_worker(yielding: tuple[float, float]) -> dict:
    """In this (fresh) process: Dynamo's and Inductor's imports under `yielding`, beside a stand-in
    for the GPU worker's eager batches; the imports' seconds, the batches per second meanwhile
    and alone after."""
    importlib.import_module("torch")  # the run's process has it before the compile thread starts
    stop, batches = threading.Event(), [0]

    def worker():
        while not stop.is_set():
            for _ in range(38):  # an op: the GIL given up for its dispatch and taken back
                time.sleep(0.00002)
                sum(range(200))  # its Python around it
            time.sleep(0.030)  # waiting on the GPU
            batches[0] += 1

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)
        before, t0 = batches[0], time.perf_counter()
        with _yielding(*yielding):
            for name in ("torch._dynamo", "torch._inductor.codecache", "torch._inductor.compile_fx"):
                importlib.import_module(name)
        seconds = time.perf_counter() - t0
        meanwhile = batches[0] - before
        time.sleep(1.0)
        alone = batches[0] - before - meanwhile
    finally:
        stop.set()
        thread.join()
    return {"import_seconds": round(seconds, 3), "batches_per_second_meanwhile": round(meanwhile / seconds, 1),
            "batches_per_second_alone": float(alone)}


def _one(clip: Path, *, beside: bool, interval: float, yielding: tuple[float, float] = (0.0, 0.0)) -> dict:
    from pipeline import RunConfig, run

    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=_busy, args=(stop, counter, yielding), daemon=True) if beside else None
    old = sys.getswitchinterval()
    sys.setswitchinterval(interval)
    try:
        if thread is not None:
            thread.start()
        t0 = time.perf_counter()
        stats = run(RunConfig(source=clip, output=None, output_mode="none", model="bicubic", scale=2, device="cpu",
                              compile="off", batch_size=4))
        seconds = time.perf_counter() - t0
    finally:
        stop.set()
        if thread is not None:
            thread.join()
        sys.setswitchinterval(old)
    frames = stats.to_dict()["frames_out"]
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 1),
            "busy_thread_rounds_per_second": round(counter[0] / seconds, 2) if beside else None}


def _yield_name(every: float, pause: float) -> str:
    return f"yielding every {every * 1000:g} ms for {pause * 1000:g} ms" if every else "not yielding"


def _runs_beside(args: argparse.Namespace, yields: list[tuple[float, float]], results: dict) -> None:
    """The whole runs: alone, beside the Python thread at each switch interval and yield."""
    from hw.clips import make_clip

    width, height = map(int, args.size.split("x"))
    variants = {"alone": (False, 0.005, (0.0, 0.0)), "beside a Python thread, 5 ms": (True, 0.005, (0.0, 0.0)),
                "beside a Python thread, 0.5 ms": (True, 0.0005, (0.0, 0.0))}
    for yielding in yields:
        variants["beside a Python thread " + _yield_name(*yielding)] = (True, 0.005, yielding)
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "v.mp4", width=width, height=height, num_frames=args.frames, fps=24)
        _one(clip, beside=False, interval=0.005)  # warm: imports, the first run's set-up
        for yielding in [(0.0, 0.0), *yields]:  # the Python thread alone, for its rate beside the run
            stop, counter = threading.Event(), [0]
            thread = threading.Thread(target=_busy, args=(stop, counter, yielding), daemon=True)
            thread.start()
            time.sleep(3.0)
            stop.set()
            thread.join()
            name = "the Python thread alone, " + _yield_name(*yielding)
            results[name] = {"rounds_per_second": round(counter[0] / 3.0, 2)}
            print(f"{name}: {results[name]['rounds_per_second']} rounds/s", flush=True)
        for repeat in range(args.repeats):
            for name, (beside, interval, yielding) in variants.items():
                r = _one(clip, beside=beside, interval=interval, yielding=yielding)
                results.setdefault(name, []).append(r)
                print(f"run {repeat + 1} {name}: {r['fps']} fps ({r['seconds']} s)"
                      + (f", the Python thread {r['busy_thread_rounds_per_second']} rounds/s" if beside else ""),
                      flush=True)


def _imports_each(args: argparse.Namespace, yields: list[tuple[float, float]], results: dict) -> None:
    """The imports beside the worker stand-in, a fresh process per variant and round."""
    for repeat in range(args.import_rounds):
        for yielding in [(0.0, 0.0), *yields]:
            spec = f"{yielding[0] * 1000:g},{yielding[1] * 1000:g}"
            done = subprocess.run([sys.executable, __file__, "--child-imports", spec], capture_output=True, text=True,
                                  timeout=300)
            r = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {"error": done.stderr[-500:]}
            name = "Dynamo and Inductor imported beside the worker stand-in, " + _yield_name(*yielding)
            results.setdefault(name, []).append(r)
            print(f"round {repeat + 1} {name}: {r}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--size", default="320x240")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the whole runs (0: none)")
    p.add_argument("--yields", default="1,0", help="GIL yields to try, EVERY_MS,PAUSE_MS separated by ';' (default 1,0)")
    p.add_argument("--import-rounds", type=int, default=2, help="rounds of the imports under each yield (0: none)")
    p.add_argument("--child-imports", default="", help=argparse.SUPPRESS)  # EVERY_MS,PAUSE_MS: one import measurement
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    if args.child_imports:
        print(json.dumps(_imports_beside_worker(_parse_yield(args.child_imports))))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0], "frames": args.frames,
                     "size": args.size}
    yields = [_parse_yield(y) for y in args.yields.split(";") if y.strip()]
    if args.repeats:
        _runs_beside(args, yields, results)
    _imports_each(args, yields, results)
    (args.out / "bench-convoy.json").write_text(json.dumps(results, indent=1))
    return 0


def _parse_yield(text: str) -> tuple[float, float]:
    every, pause = (tuple(float(x) / 1000.0 for x in text.split(",")) + (0.0, 0.0))[:2]
    return every, pause


if __name__ == "__main__":
    sys.exit(main())
