#!/usr/bin/env python3
"""The compiled model replayed as one CUDA graph a batch, or its kernels launched one by one
(models/compiled.py `GraphedCall`; FRAMEPIPE_CUDA_GRAPHS=0 leaves the graph out), measured side
by side: the model alone, each way, on an idle CPU and with every core kept busy by spinning
processes (a stand-in for the x264 pool: does the graph keep the GPU fed when the launching
thread gets little CPU?). Same process, same weights, alternated.

    python benchmarks/bench_graph.py --out bench-out/graph
    python benchmarks/bench_graph.py --case realesr-animevideov3:640x480:8 --case realesrgan-x4plus-anime:480x270:4
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._steps import Steps  # noqa: E402
from benchmarks.bench import model_alone  # noqa: E402

CASES = ("realesr-animevideov3:640x480:8", "realesrgan-x4plus-anime:480x270:4", "realesr-animevideov3:320x240:8")


class Spinners:
    """`n` processes each spinning one core at nice 0, for the length of a `with`."""

    def __init__(self, n: int) -> None:
        self.n, self.procs = n, []

    def __enter__(self) -> "Spinners":
        self.procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.n)]
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.kill()
        for proc in self.procs:
            proc.wait()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", action="append", help="MODEL:WxH:BATCH (repeatable; default: %s)" % ", ".join(CASES))
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--seconds", type=float, default=3.0, help="each measurement's length")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--spinners", type=int, default=os.cpu_count() or 1, help="busy processes in the loaded runs")
    p.add_argument("--out", type=Path, default=Path("bench-out/graph"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(),
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    step = Steps(results, args.out / "bench-graph.json", preview_chars=300)
    rows = []
    for case in args.case or CASES:
        model, size, batch = case.split(":")
        w, h = map(int, size.split("x"))
        ns = SimpleNamespace(model=model, scale=None, device=args.device, precision="auto")
        for r in range(args.repeats):
            for load in ("idle", "loaded"):
                for graph in (True, False):
                    tag = f"{case}:{load}:{'graph' if graph else 'no-graph'}:{r + 1}"

                    def measure(graph=graph, load=load):
                        with Spinners(args.spinners if load == "loaded" else 0):
                            return model_alone(ns, batch=int(batch), height=h, width=w, mode="compiled",
                                               seconds_target=args.seconds, cuda_graph=graph)

                    step(tag, measure)
                    rows.append((case, load, graph, results[tag].get("fps")))
    print("\nfps, compiled model alone (graph / no graph), per case and CPU load")
    for case in args.case or CASES:
        for load in ("idle", "loaded"):
            fps = {g: [x[3] for x in rows if x[0] == case and x[1] == load and x[2] == g] for g in (True, False)}
            print(f"  {case:38s} {load:7s} graph {fps[True]}  no graph {fps[False]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
