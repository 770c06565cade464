#!/usr/bin/env python3
"""How the encoder pool hands out segments: least-loaded (framepipe's default since 2026-12-06)
against segment k to encoder k mod N (before), side by side in one run.

The pool alone (`bench_segments.encoders_alone`: the segmented writer feeding the pool as fast
as it takes frames, an encode-bound run, or at --pace frames a second, a model-bound one) on frames made here whose segments differ in how
hard they are to encode, as scenes of a video do: a segment is either noise (hard for x264) or a
flat picture with a moving square (easy), chosen at random (--hard share, fixed seed). Each
dispatch runs --repeats times, alternated; the JSON keeps every run. Paced, what counts is how
long the writer was held up by an encoder's full queue, which stalls the model in a real run
(`held_up_seconds`: the most the frames fell behind their schedule), and the time to the end.

    python benchmarks/bench_dispatch.py --size 640x360 --segments 24 --encoders 2 --out bench-out/dispatch
    python benchmarks/bench_dispatch.py --pace 120 --out bench-out/dispatch-paced
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_segments import encoders_alone  # noqa: E402

FPS = 24


def segment_frames(width: int, height: int, *, segments: int, per_segment: int, hard: float, seed: int) -> tuple:
    """(frames as yuv420p planes, the kind of each segment)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    kinds = ["hard" if rng.random() < hard else "easy" for _ in range(segments)]
    frames = []
    for k, kind in enumerate(kinds):
        for i in range(per_segment):
            if kind == "hard":
                y = rng.integers(0, 256, (height, width), dtype=np.uint8)
                u = rng.integers(0, 256, (height // 2, width // 2), dtype=np.uint8)
                v = rng.integers(0, 256, (height // 2, width // 2), dtype=np.uint8)
            else:
                y = np.full((height, width), 90, np.uint8)
                x0 = (8 * i) % max(1, width - 32)
                y[height // 2 - 16: height // 2 + 16, x0: x0 + 32] = 220
                u = np.full((height // 2, width // 2), 128, np.uint8)
                v = np.full((height // 2, width // 2), 128, np.uint8)
            frames.append((y, u, v))
    return frames, kinds


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="640x360")
    p.add_argument("--segments", type=int, default=24)
    p.add_argument("--segment-seconds", type=float, default=1.0)
    p.add_argument("--encoders", type=int, default=2)
    p.add_argument("--hard", type=float, default=0.4, help="share of segments that are noise")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--pace", type=float, default=0.0,
                   help="frames handed at this rate, as a model makes them (0: as fast as the pool takes them)")
    p.add_argument("--out", type=Path, default=Path("bench-out/dispatch"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    per_segment = max(1, round(args.segment_seconds * FPS))
    frames, kinds = segment_frames(width, height, segments=args.segments, per_segment=per_segment, hard=args.hard,
                                   seed=args.seed)
    from hw.clips import make_clip

    src = make_clip(args.out / "timebase.mp4", width=64, height=48, num_frames=2, fps=FPS)  # the time base only
    settings = SimpleNamespace(segment_seconds=args.segment_seconds, crf=args.crf, preset=args.preset)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "cpu_count": os.cpu_count(), "kinds": kinds,
                     "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": []}
    for r in range(args.repeats):
        for dispatch in ("round-robin", "least-loaded"):
            run = encoders_alone(frames, args.out, encoders=args.encoders, args=settings, src=src, dispatch=dispatch,
                                 pace_fps=args.pace or None, taper=False)  # segments of one length: hard or easy
            run = {"dispatch": dispatch, "repeat": r + 1, "fps": round(run["fps"], 2), "seconds": round(run["seconds"], 2),
                   "held_up_seconds": run.get("held_up_seconds")}
            results["runs"].append(run)
            print(json.dumps(run), flush=True)
    for dispatch in ("round-robin", "least-loaded"):
        fps = [x["fps"] for x in results["runs"] if x["dispatch"] == dispatch]
        results[dispatch] = {"best_fps": max(fps), "fps_runs": fps}
    results["least_loaded_vs_round_robin"] = round(results["least-loaded"]["best_fps"] / results["round-robin"]["best_fps"], 3)
    (args.out / "bench-dispatch.json").write_text(json.dumps(results, indent=2))
    held = {d: [x["held_up_seconds"] for x in results["runs"] if x["dispatch"] == d] for d in ("round-robin", "least-loaded")}
    print(f"{len(frames)} frames, {args.segments} segments ({kinds.count('hard')} hard), {args.encoders} encoders"
          f"{f', paced at {args.pace:g} fps' if args.pace else ''}: round-robin {results['round-robin']['fps_runs']} fps, "
          f"least-loaded {results['least-loaded']['fps_runs']} fps ({results['least_loaded_vs_round_robin']}x)"
          + (f"; the writer held up {held['round-robin']} s against {held['least-loaded']} s" if args.pace else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
