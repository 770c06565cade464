#!/usr/bin/env python3
"""A whole run beside a thread that runs Python without pause, as the compile thread does while it
loads or compiles the model: how much the run slows, and whether a shorter GIL switch interval
gives it back.

    python benchmarks/bench_convoy.py [--frames 600] [--size 320x240] [--out DIR]

Each variant is one `pipeline.run` in this process (bicubic x2 on the CPU, `--output-mode none`,
so the stages' own Python is what is timed): alone; beside a thread compiling Python source and
running it in a loop (what the compile thread spent half its samples on, benchmarks/RESULTS.md)
at the default switch interval (5 ms); the same at 0.5 ms; beside that thread giving up the GIL
every 1 ms (a profile hook). The thread's rate alone is measured too. Every stage thread that gives up the GIL (a decode,
a torch op, a queue wait) must wait for it again, up to the switch interval while the other
thread runs Python. Prints one line per variant and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

_SOURCE = "\n".join(f"def f{i}(x):\n    return [x * {i} for _ in range(10)]\n" for i in range(300))


def _busy(stop: threading.Event, counter: list[int], yield_every: float = 0.0) -> None:
    """Python without pause: source compiled to bytecode and run, as an import does. `yield_every`
    (seconds): the thread gives up the GIL that often (a profile hook that sleeps 0 s at a call
    or return past that time), as a loading thread could."""
    if yield_every:
        last = [time.perf_counter()]

        def hook(frame, event, arg):
            now = time.perf_counter()
            if now - last[0] >= yield_every:
                time.sleep(0)
                last[0] = time.perf_counter()

        sys.setprofile(hook)
    while not stop.is_set():
        namespace: dict = {}
        exec(compile(_SOURCE, "<busy>", "exec"), namespace)
        for i in range(300):
            namespace[f"f{i}"](i)
        counter[0] += 1


def _one(clip: Path, *, beside: bool, interval: float, yield_every: float = 0.0) -> dict:
    from pipeline import RunConfig, run

    stop, counter = threading.Event(), [0]
    thread = threading.Thread(target=_busy, args=(stop, counter, yield_every), daemon=True) if beside else None
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--size", default="320x240")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    from hw.clips import make_clip

    width, height = map(int, args.size.split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "frames": args.frames, "size": args.size}
    variants = {"alone": (False, 0.005, 0.0), "beside a Python thread, 5 ms": (True, 0.005, 0.0),
                "beside a Python thread, 0.5 ms": (True, 0.0005, 0.0),
                "beside a Python thread yielding every 1 ms": (True, 0.005, 0.001)}
    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "v.mp4", width=width, height=height, num_frames=args.frames, fps=24)
        _one(clip, beside=False, interval=0.005)  # warm: imports, the first run's set-up
        for yield_every in (0.0, 0.001):  # the Python thread alone, for its rate beside the run
            stop, counter = threading.Event(), [0]
            thread = threading.Thread(target=_busy, args=(stop, counter, yield_every), daemon=True)
            thread.start()
            time.sleep(3.0)
            stop.set()
            thread.join()
            name = "the Python thread alone" + (", yielding every 1 ms" if yield_every else "")
            results[name] = {"rounds_per_second": round(counter[0] / 3.0, 2)}
            print(f"{name}: {results[name]['rounds_per_second']} rounds/s", flush=True)
        for repeat in range(args.repeats):
            for name, (beside, interval, yield_every) in variants.items():
                r = _one(clip, beside=beside, interval=interval, yield_every=yield_every)
                results.setdefault(name, []).append(r)
                print(f"run {repeat + 1} {name}: {r['fps']} fps ({r['seconds']} s)"
                      + (f", the Python thread {r['busy_thread_rounds_per_second']} rounds/s" if beside else ""),
                      flush=True)
    (args.out / "bench-convoy.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
