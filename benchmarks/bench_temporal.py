#!/usr/bin/env python3
"""Frame interpolation on one GPU, in one run (issue 15): RIFE 2x on 1080p.

  model alone     the worker stage on in-memory 1080p pairs (bench_split's `whole`)
  pipeline, none  main.py --interpolate 2 --output-mode none (decode + RIFE, nothing written)
  pipeline, file  main.py --interpolate 2 -> x264 (the encoder pool writes twice the frames)
  chain           main.py --model realesr-animevideov3 --scale 2 --interpolate 2 on 960x540 -> 1080p
Each CLI run is checked: (N-1)(n-1)+n frames out, timestamps strictly increasing.

    python benchmarks/bench_temporal.py --out $OUT [--frames 240]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._steps import Steps  # noqa: E402


def cli(out_dir: Path, name: str, *args: str) -> dict:
    stats = out_dir / f"{name}.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--parallel", "--overwrite", "--stats-json",
                           str(stats), *args], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    (out_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": (proc.stdout + proc.stderr)[-800:], "rc": proc.returncode}
    d = json.loads(stats.read_text())
    keep = ("frames_written", "frames_made", "frames_out", "wall_seconds", "fps", "first_frame_seconds")
    result = {k: d.get(k) for k in keep}
    result["process_seconds"] = round(wall, 2)
    result["fps_out"] = round(d["frames_out"] / d["wall_seconds"], 2) if d.get("wall_seconds") else None
    result["stages"] = d.get("stages")
    result["workers"] = [{k: w.get(k) for k in ("name", "batch_size_now", "busy_seconds", "scene_cuts", "probe_note")}
                         for w in d.get("workers", [])]
    return result


def check_output(path: Path, n: int, factor: int) -> dict:
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        pts = [f.pts for f in c.decode(s)]
        rate = s.average_rate
    ok = len(pts) == (factor - 1) * (n - 1) + n and all(b > a for a, b in zip(pts, pts[1:]))
    return {"frames": len(pts), "expected": (factor - 1) * (n - 1) + n, "increasing": ok, "rate": str(rate)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--frames", type=int, default=240)
    args = p.parse_args()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    from hw.clips import make_clip

    results: dict = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "frames": args.frames,
                     "date": time.strftime("%Y-%m-%d")}
    step = Steps(results, out / "bench_temporal.json")
    src = make_clip("/tmp/t1080.mp4", width=1920, height=1080, num_frames=args.frames, fps=24, photo=True, audio=True)
    src540 = make_clip("/tmp/t540.mp4", width=960, height=540, num_frames=args.frames, fps=24, photo=True, audio=True)

    def model_alone() -> dict:
        from benchmarks.bench_split import frames_for, run_workers

        items = frames_for("interpolation", 1920, 1080, 64)
        return run_workers("rife", items, [torch.device("cuda", 0)], 4)

    step("rife 1080p: model alone (worker stage, batch 4, fp16)", model_alone)
    step("rife 1080p: pipeline, output none", lambda: cli(out, "none", "--source", str(src), "--interpolate", "2",
                                                          "--output-mode", "none"))
    step("rife 1080p: pipeline -> x264 veryfast", lambda: cli(out, "file", "--source", str(src), "--interpolate", "2",
                                                              "--preset", "veryfast", "--output", "/tmp/t1080_2x.mp4"))
    step("rife 1080p: output check", lambda: check_output(Path("/tmp/t1080_2x.mp4"), args.frames, 2))
    step("chain 540p: animevideov3 x2 + rife 2x, output none",
         lambda: cli(out, "chain_none", "--source", str(src540), "--model", "realesr-animevideov3", "--scale", "2",
                     "--interpolate", "2", "--output-mode", "none"))
    step("chain 540p: animevideov3 x2 alone, output none",
         lambda: cli(out, "upscale_none", "--source", str(src540), "--model", "realesr-animevideov3", "--scale", "2",
                     "--output-mode", "none"))
    step("chain 540p -> x264 veryfast",
         lambda: cli(out, "chain_file", "--source", str(src540), "--model", "realesr-animevideov3", "--scale", "2",
                     "--interpolate", "2", "--preset", "veryfast", "--output", "/tmp/t540_chain.mp4"))
    step("chain: output check", lambda: check_output(Path("/tmp/t540_chain.mp4"), args.frames, 2))
    print(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
