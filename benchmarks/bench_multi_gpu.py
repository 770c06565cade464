#!/usr/bin/env python3
"""Multi-GPU scaling and self-balancing, in one run (issue 5).

A model-bound job: realesrgan-x4plus (RRDBNet, 23 blocks) on a 480x270 clip of
photographs (1920x1080 output), so neither decoding nor the CPU encoder bounds it.
  1 GPU  vs  2 GPUs                      -> scaling factor (target >= 1.9x)
  2 GPUs, GPU 1 deliberately slowed      -> the other takes the larger share, neither idles
  2 GPUs with --nvdec (decode on GPU 0, frames copied to GPU 1) vs CPU decode
The timed runs use a fixed batch (default 4, what the probe picks for this job) so the
comparison holds the same work; one more 2-GPU run probes (--batch-size 0) to report
each GPU's choice and the probe's cost.

    python benchmarks/bench_multi_gpu.py --frames 600 --out $OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._steps import Steps  # noqa: E402


def make_source(path: Path, *, width: int, height: int, num_frames: int) -> Path:
    from hw.clips import make_clip

    return make_clip(path, width=width, height=height, num_frames=num_frames, fps=30, photo=True, audio=True)


def one_run(src: Path, out: Path, *, gpus: str, model: str, preset: str, nvdec: bool = False,
            slow_gpu: int | None = None, slow_seconds: float = 0.0, batch_size: int = 0) -> dict:
    from pipeline import RunConfig, run
    from tests.faults import WorkerFaults, inject

    slowed = {f"worker-gpu{slow_gpu}": WorkerFaults(seconds_per_batch=slow_seconds)} if slow_gpu is not None else {}
    cfg = RunConfig(source=src, output=out, model=model, parallel=True, gpus=gpus, batch_size=batch_size,
                    nvdec=nvdec, preset=preset, overwrite=True)
    stats = run(cfg, wrap=inject(workers=slowed, backoff_seconds=None))
    d = stats.to_dict()
    return {
        "gpus": gpus, "nvdec": nvdec, "slowed": slow_gpu, "frames": d["frames_written"], "seconds": d["wall_seconds"],
        "fps": d["fps"], "decoder": d["decoder"],
        "stages": d["stages"],
        "workers": [{k: w[k] for k in ("name", "frames", "batches", "batch_sizes", "busy_seconds", "wait_seconds",
                                        "probe_seconds", "probe_note", "health")} for w in d["workers"]],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=600)
    p.add_argument("--size", default="480x270")
    p.add_argument("--model", default="realesrgan-x4plus")
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--slow-seconds", type=float, default=0.15, help="sleep added to each batch of the slowed GPU")
    p.add_argument("--batch-size", type=int, default=4, help="fixed batch for the timed runs (the probe gets its own run)")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    width, height = map(int, args.size.split("x"))
    n = torch.cuda.device_count()
    results: dict = {"devices": [torch.cuda.get_device_name(i) for i in range(n)], "torch": torch.__version__,
                     "args": vars(args) | {"out": str(args.out)}}
    src = make_source(Path("/tmp/bench_src_270p.mp4"), width=width, height=height, num_frames=args.frames)

    step = Steps(results, args.out / "bench_multi_gpu.json")

    b = args.batch_size
    step("one_gpu", lambda: one_run(src, Path("/tmp/mg1.mp4"), gpus="0", model=args.model, preset=args.preset,
                                    batch_size=b))
    if n >= 2:
        step("two_gpus", lambda: one_run(src, Path("/tmp/mg2.mp4"), gpus="0,1", model=args.model, preset=args.preset,
                                         batch_size=b))
        if "fps" in results.get("one_gpu", {}) and "fps" in results.get("two_gpus", {}):
            results["scaling"] = round(results["two_gpus"]["fps"] / results["one_gpu"]["fps"], 3)
            print(f"scaling 2 GPUs / 1 GPU: {results['scaling']}x", flush=True)
        step("two_gpus_gpu1_slowed", lambda: one_run(src, Path("/tmp/mg3.mp4"), gpus="0,1", model=args.model,
                                                     preset=args.preset, slow_gpu=1, slow_seconds=args.slow_seconds,
                                                     batch_size=b))
        step("two_gpus_nvdec", lambda: one_run(src, Path("/tmp/mg4.mp4"), gpus="0,1", model=args.model,
                                               preset=args.preset, nvdec=True, batch_size=b))
        step("two_gpus_probe", lambda: one_run(src, Path("/tmp/mg5.mp4"), gpus="0,1", model=args.model,
                                               preset=args.preset, batch_size=0))
        step("outputs_identical_frame_count", lambda: _check_outputs(
            [f"/tmp/mg{i}.mp4" for i in range(1, 6)], src))
    step.save()


def _check_outputs(paths: list[str], src: Path) -> dict:
    """Every output: same frame count and timestamps as the source, audio kept."""
    import av

    def info(p):
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            pts = [float(f.pts * s.time_base) for f in c.decode(s)]
            return len(pts), pts, [st.type for st in c.streams]

    n_src, pts_src, _ = info(src)
    out = {}
    for p in paths:
        if Path(p).exists():
            n, pts, kinds = info(p)
            out[Path(p).name] = {"frames": n, "pts_equal_source": pts == pts_src, "streams": kinds}
    out["source_frames"] = n_src
    return out


if __name__ == "__main__":
    main()
