#!/usr/bin/env python3
"""Host memory is bounded by queue sizes, not video length (issue 2).

Runs the same job on a clip and on one ten times longer, each in a fresh process, and
reports the peak RSS of each (ru_maxrss of the child). Same model, size, queues, batch.

    python benchmarks/bench_memory.py --frames 300 --size 320x180
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import sys, json
sys.path.insert(0, {root!r})
from pathlib import Path
from pipeline import RunConfig, run
stats = run(RunConfig(source=Path({src!r}), output=Path({out!r}), model="bicubic", scale=2, parallel=True,
                      queue_size={queue}, batch_size=4, overwrite=True, preset="veryfast"))
print(json.dumps({{"frames": stats.num_frames_written, "fps": stats.fps}}))
"""


def measure(src: Path, out: Path, queue: int) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), src=str(src), out=str(out), queue=queue)],
                          capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # ru_maxrss of children is the max over all children so far: run the short clip first.
    return {**result, "peak_rss_mib": round(peak_kib / 1024, 1), "prior_max_mib": round(before / 1024, 1), "wall_s": round(wall, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="320x180")
    p.add_argument("--queue-size", type=int, default=50)
    args = p.parse_args()
    width, height = map(int, args.size.split("x"))
    from hw.clips import make_clip

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows = []
        for n in (args.frames, args.frames * 10):
            src = make_clip(tmp / f"clip{n}.mp4", width=width, height=height, num_frames=n)
            rows.append((n, measure(src, tmp / f"out{n}.mp4", args.queue_size)))
    print("| frames | output | peak RSS (MiB) | fps | wall s |")
    print("|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {width * 2}x{height * 2} | {r['peak_rss_mib']} | {r['fps']:.1f} | {r['wall_s']} |")
    growth = rows[1][1]["peak_rss_mib"] / rows[0][1]["peak_rss_mib"]
    print(f"\npeak RSS ratio (10x frames / 1x): {growth:.3f}")


if __name__ == "__main__":
    main()
