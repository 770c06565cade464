#!/usr/bin/env python3
"""Segmented output (issue 11): one encoder vs the automatic pool vs the encoders alone, in one run.

On a clip generated here (panned photographs, x264 with B-frames) upscaled by the model:
  pipeline, 1 encoder     --encoders 1 (one x264 instance: the wall the issue measured)
  pipeline, auto pool     --encoders 0 (the plan's choice: measured speeds, cores, memory)
  encoders alone, k       no model: the frames the pipeline hands its encoders (a run into
                          lossless x264, decoded into memory first; before 2026-12-06 its own
                          output decoded, which x264 encodes again ~4% faster) through the same
                          pool of k encoders: the ceiling
  encoders alone, 1       the same with one encoder
and checks the issue's targets: auto pipeline >= 90% of the k-encoder ceiling, and
>= 1.5x the one-encoder pipeline. Both outputs are checked to hold every frame in order.

    python benchmarks/bench_segments.py --size 640x480 --scale 4 --preset medium --frames 300 --out $OUT
    python benchmarks/bench_segments.py --size 960x540 --scale 4 --preset medium --frames 300 --out $OUT  # 4K out
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._steps import Steps  # noqa: E402
from benchmarks.bench_gpu_path import make_source  # noqa: E402


def pipeline(src: Path, out: Path, *, encoders: int, args) -> dict:
    from pipeline import RunConfig, run

    cfg = RunConfig(source=src, output=out, model=args.model, scale=args.scale, parallel=True, device=args.device,
                    codec="h264", crf=args.crf, preset=args.preset, encoders=encoders, overwrite=True,
                    segment_seconds=args.segment_seconds)
    planned = {}
    stats = run(cfg, on_start=lambda plan, _: planned.update(encoders=plan.num_encoders))
    return {"fps": stats.fps, "frames": stats.num_frames_written, "seconds": stats.wall_seconds,
            "encoders": planned["encoders"], "segments": stats.notes.get("segments", "one file"),
            "devices": stats.notes.get("devices"),
            "stages_busy_s": {name: round(c.busy_seconds, 2) for name, c in stats.stages.items()}}


def lossless(args):
    """`args` for a run whose output keeps the frames the pipeline hands its encoders exactly: x264
    crf 0 (lossless for 8-bit yuv420p), ultrafast. Decoded (`output_frames`), that file gives
    "encode alone" the very input the pipeline's encoders had. Decoding the measured run's own
    output instead (as these benchmarks did before 2026-12-06) gives frames x264 already smoothed,
    which it encodes again faster than the model's output: that overstated the encoders alone."""
    from types import SimpleNamespace

    return SimpleNamespace(**{**vars(args), "crf": 0, "preset": "ultrafast"})


def output_frames(path: Path) -> list:
    """A run's output frames as yuv420p planes, in memory: the encoders' input, where the run was
    `lossless`."""
    import av

    with av.open(str(path)) as c:
        return [tuple(p.copy() for p in _planes(f.reformat(format="yuv420p"))) for f in c.decode(video=0)]


def _planes(frame):
    import numpy as np

    out = []
    for plane, (w, h) in zip(frame.planes, ((frame.width, frame.height), (frame.width // 2, frame.height // 2),
                                            (frame.width // 2, frame.height // 2))):
        rows = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)
        out.append(rows[:h, :w])
    return out


def encoders_alone(frames: list, folder: Path, *, encoders: int, args, src: Path, dispatch: str = "least-loaded",
                   pace_fps: float | None = None, taper: bool = True) -> dict:
    """The frames through the pool of `encoders` encoders, as the segmented writer drives it
    (`dispatch`: how it hands segments to encoders, `pipeline.segment_writer.EncoderPool`): as fast
    as the pool takes them, or handed at `pace_fps` (a model that makes that many a second), each
    frame at its time or late where the writer was held up: `held_up_seconds`, the most the frames
    fell behind that schedule, is how long such a model would have waited in all."""
    import shutil

    from hw.av_encode import PyAVWriter
    from hw.av_source import probe_source
    from pipeline.encoder_choice import encoder_threads
    from pipeline.messages import ErrorChannel, ResultItem
    from pipeline.plan import _num_cores
    from pipeline.segment_writer import EncoderPool, SegmentWriter
    from pipeline.segments import PartsFolder, SegmentLayout
    from pipeline.stats import RunStats

    info = probe_source(src)
    height, width = frames[0][0].shape
    out = folder / f"alone-{encoders}.mp4"
    parts = PartsFolder(out)
    shutil.rmtree(parts.path, ignore_errors=True)
    parts.open(resume=False, overwrite=True, source={}, settings={})
    # As the pipeline lays them out for a pool (`taper`: the last segments shorter, pipeline.plan._tapered)
    layout = SegmentLayout(segment_frames=max(1, round(args.segment_seconds * float(info.average_rate or 30))),
                           taper_end=len(frames) if taper and encoders > 1 else None)
    stats = RunStats()
    errors = ErrorChannel(threading.Event())
    threads = encoder_threads(encoders, _num_cores())  # as the pipeline's pool runs them

    def open_encoder(path):
        return PyAVWriter(path, width=width, height=height, time_base=info.time_base, frame_rate=info.average_rate,
                          color=info.color, codec="h264", crf=args.crf, preset=args.preset, threads=threads)

    t0 = time.perf_counter()
    pool = EncoderPool(encoders, queue_frames=layout.segment_frames, parts=parts, layout=layout,
                       open_encoder=open_encoder, errors=errors, stats=stats, dispatch=dispatch)
    writer = SegmentWriter(layout, pool, stats=stats, is_finished=lambda k: False)
    step = int(round(1 / (info.average_rate * info.time_base)))
    held_up = 0.0  # the most a frame was handed after its time (pace_fps): the writer's delays added up
    for index, planes in enumerate(frames):
        if pace_fps:
            due = t0 + index / pace_fps
            now = time.perf_counter()
            if now < due:
                time.sleep(due - now)
            else:
                held_up = max(held_up, now - due)
        writer.process(ResultItem(index, index * step, "yuv420p", planes))
    writer.finish()
    writer.close(complete=True)
    seconds = time.perf_counter() - t0
    failure = errors.first()
    parts.remove()
    if failure is not None:
        raise RuntimeError(f"encoder failed: {failure.exc}")
    return {"fps": len(frames) / seconds, "frames": len(frames), "seconds": seconds, "encoders": encoders,
            **({"pace_fps": pace_fps, "held_up_seconds": round(held_up, 3)} if pace_fps else {}),
            "threads_each": threads}


def frames_in_order(path: Path, expected: int) -> dict:
    """Frame count and strictly ascending timestamps (the clip is photographic: no index blocks)."""
    import av

    with av.open(str(path)) as c:
        pts = [f.pts for f in c.decode(video=0)]
    return {"frames": len(pts), "expected": expected, "ascending": pts == sorted(pts) and len(set(pts)) == len(pts)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="640x480")
    p.add_argument("--model", default="realesr-animevideov3")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--preset", default="medium")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    width, height = (int(v) for v in args.size.split("x"))
    tag = f"{width}x{height}x{args.scale}-{args.preset}"
    results: dict = {"args": vars(args) | {"out": str(args.out)}, "cpu_count": os.cpu_count()}
    steps = Steps(results, args.out / f"bench_segments-{tag}.json")
    src = make_source(args.out / f"seg-src-{width}x{height}.mp4", width=width, height=height, num_frames=args.frames)
    one, auto = args.out / f"seg-one-{tag}.mp4", args.out / f"seg-auto-{tag}.mp4"
    steps("pipeline_1_encoder", lambda: pipeline(src, one, encoders=1, args=args))
    steps("pipeline_auto", lambda: pipeline(src, auto, encoders=0, args=args))
    steps("output_1_encoder", lambda: frames_in_order(one, args.frames))
    steps("output_auto", lambda: frames_in_order(auto, args.frames))
    k = int(results["pipeline_auto"].get("encoders", 1))
    exact = args.out / f"seg-input-{tag}.mkv"
    exact.unlink(missing_ok=True)
    steps("encoder_input", lambda: pipeline(src, exact, encoders=0, args=lossless(args)))
    if not exact.exists():  # the ceiling needs the pipeline's own encoder input, not a stand-in
        print("encoders alone: not measured (no lossless run to take the frames from)")
        steps.save()
        return 1
    frames = output_frames(exact)
    steps(f"encoders_alone_{k}", lambda: encoders_alone(frames, args.out, encoders=k, args=args, src=src))
    if k != 1:
        steps("encoders_alone_1", lambda: encoders_alone(frames, args.out, encoders=1, args=args, src=src))
    try:
        auto_fps = results["pipeline_auto"]["fps"]
        ceiling = results[f"encoders_alone_{k}"]["fps"]
        one_fps = results["pipeline_1_encoder"]["fps"]
        results["targets"] = {
            "auto_encoders": k,
            "auto_vs_ceiling": round(auto_fps / ceiling, 3),
            "auto_vs_one_encoder": round(auto_fps / one_fps, 3),
            "met_90pct_of_ceiling": auto_fps >= 0.9 * ceiling,
            "met_1_5x_one_encoder": auto_fps >= 1.5 * one_fps,
        }
    except (KeyError, TypeError, ZeroDivisionError) as exc:
        results["targets"] = {"error": f"a step failed: {exc}"}
    steps.save()
    print("targets:", results["targets"])


if __name__ == "__main__":
    main()
