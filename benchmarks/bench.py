#!/usr/bin/env python3
"""One benchmark command (issue 12): every stage alone and the whole pipeline, on one clip,
one model, one device or several GPUs, in one run; plus the loop people usually write. Prints a
table of ratios, writes JSON and a PNG chart, and names the stage that bounds the pipeline.

    python benchmarks/bench.py --source CLIP --model M [--scale S] [--device cuda:0 | --gpus 0,1] --out DIR
    python benchmarks/bench.py --make-clip 480x270 --frames 600 --model realesrgan-x4plus-anime --out DIR
    python benchmarks/bench.py --make-clip 160x120 --frames 60 --model bicubic --scale 2 --device cpu --out DIR

Steps (each timed on its own; a failed step is recorded and the rest go on):
  decode alone         PyAV (CPU threads), and NVDEC where present (`NvDecoder`)
  model alone          eager, eager channels_last (GPU), compiled (torch.compile, after its
                       compile time; PSNR against eager), at the batch the pipeline's probe chose;
                       with --gpus, on every GPU at once (each at its worker's batch, timed over
                       the same seconds): the frames per second of all of them together
  encode alone         the frames the pipeline hands its encoders (a run into lossless x264,
                       decoded into memory first) through 1 encoder and through the segmented
                       pool of k encoders; and, for the difference, the pool on the measured
                       run's own output decoded (`encode_alone_k_reencoded`: x264's output is
                       easier to encode again than the model's)
  pipeline             sequential, --parallel with one encoder, --parallel with the automatic
                       encoder pool (segments of --segment-seconds), and --output-mode none
                       (decode + model, no encoder); whole-call wall time and time to the
                       first frame out of the model
  naive baseline       cv2.VideoCapture -> one frame at a time through the same model, same
                       precision and device, eager -> cv2.VideoWriter (H.264 where this OpenCV
                       has it, else MPEG-4 Part 2: said in the results); on the first GPU only
                       with --gpus, as such loops are written
  first frame (CLI)    `python main.py ... --output-mode none --max-frames 8` in a fresh process:
                       seconds from the command to the first frame out of the model, the second of
                       two starts (the first fills framepipe's bytecode cache; reported beside it)
Ratios: model compiled / eager; each pipeline / its slowest stage alone (the bound); the best
pipeline / the naive loop, on whole wall time. The first pipeline run starts with an empty
compile cache (its helper is ended with the run if still compiling); `compile_cache_warmup`
then runs the helper to the end (the cold compile time), and later runs compile from the
cache in about a second: the pipeline figures after it are warm-cache figures.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks._steps import Steps, steady_fps  # noqa: E402
from benchmarks.bench_gpu_path import make_source  # noqa: E402
from benchmarks.bench_segments import encoders_alone, lossless, output_frames  # noqa: E402



def max_encode_bytes() -> int:
    """Frames held in memory for "encode alone": the pipeline's whole output where a third of
    the available memory holds it (else its first part: the pool then encodes fewer segments
    than the pipeline did, and its tail weighs more)."""
    from pipeline.plan import _available_memory_bytes

    return max(1 << 30, _available_memory_bytes() // 3)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_alone(src: Path, *, nvdec: bool, gpu: int = 0) -> dict:
    from hw.av_decode import PyAVDecoder

    if nvdec:
        from hw.nvdec import NvDecoder

        source = NvDecoder(src, gpu=gpu)
    else:
        source = PyAVDecoder(src)
    t0 = time.perf_counter()
    n = sum(1 for _ in source)
    seconds = time.perf_counter() - t0
    source.close()
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 1)}


def model_alone(args, *, batch: int, height: int, width: int, mode: str, seconds_target: float = 4.0,
                device: str | None = None, together: threading.Barrier | None = None) -> dict:
    """The model on random frames of the source's size: `mode` eager, channels_last or compiled, on
    `device` (default --device). `together`: timed once every other GPU's copy is ready too."""
    from models import choose_precision, load_model
    from models.compiled import CompiledModel, psnr_db

    dev = torch.device(device or args.device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # this thread's, as each worker's (the compiled code runs on it)
    dtype, why = choose_precision(args.precision, dev)
    module = load_model(args.model, scale=args.scale).build(dev, dtype)
    x = torch.rand(batch, 3, height, width, device=dev, dtype=dtype)
    result = {"mode": mode, "batch": batch, "dtype": str(dtype).removeprefix("torch."), "precision": why}
    with torch.inference_mode():
        ref = module(x)
        if mode == "eager":
            fn = module
        else:
            wrapped = CompiledModel(module, name=args.model, enabled=mode == "compiled", warn=print)
            wrapped.batch_size = batch
            if mode == "compiled":
                t0 = time.perf_counter()
                wrapped(x)  # starts the background compilation
                state = wrapped.wait()
                result.update(compile_seconds=round(time.perf_counter() - t0, 2), status=state.status,
                              note=state.note)
                if state.status != "compiled":
                    if together is not None:
                        together.abort()  # no figure for all GPUs together: the others stop waiting
                    return result
                result["psnr_vs_eager_db"] = round(min(psnr_db(wrapped(x), ref), 999.0), 2)
            fn = wrapped if mode == "compiled" else wrapped.eager
        for _ in range(2):
            fn(x)
        _sync(dev)
        if together is not None:
            together.wait(timeout=600)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds_target or n == 0:
            fn(x)
            n += batch
        _sync(dev)
        t1 = time.perf_counter()
    result.update(fps=round(n / (t1 - t0), 1), timed_from=t0, timed_to=t1)
    return result


def model_alone_together(args, *, placements: list[tuple[str, int]], height: int, width: int, mode: str,
                         seconds_target: float = 4.0) -> dict:
    """`model_alone` on each (device, batch) of `placements` at once, one thread each as the
    pipeline's workers run, timed over the same seconds (a barrier after each one's warm-up): the
    frames per second of all together (`fps`), each one's result in `per_device`. With one
    placement, `model_alone` itself. Raises where one fails or does not compile."""
    if len(placements) == 1:
        (device, batch), = placements
        return model_alone(args, batch=batch, height=height, width=width, mode=mode, seconds_target=seconds_target,
                           device=device)
    together = threading.Barrier(len(placements))
    results: list[dict | None] = [None] * len(placements)
    errors: list[str] = []

    def one(i: int, device: str, batch: int) -> None:
        try:
            results[i] = model_alone(args, batch=batch, height=height, width=width, mode=mode,
                                     seconds_target=seconds_target, device=device, together=together)
        except threading.BrokenBarrierError:
            pass  # another device failed: said there
        except Exception as exc:  # noqa: BLE001 - said for all of them below
            errors.append(f"{device}: {type(exc).__name__}: {exc}")
            together.abort()

    threads = [threading.Thread(target=one, args=(i, d, b), name=f"model-alone-{d}") for i, (d, b) in enumerate(placements)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    errors += [f"{d}: {r.get('status')}: {r.get('note')}" for (d, _), r in zip(placements, results)
               if r is not None and "fps" not in r]
    if not errors and None in results:  # the barrier's wait ran out
        errors = [f"{', '.join(d for d, _ in placements)}: not all ready to be timed within 600 s of each other"]
    if errors:
        raise RuntimeError("; ".join(errors))
    return {"mode": mode, "fps": round(sum(r["fps"] for r in results), 1), "devices": [d for d, _ in placements],
            "batch": [r["batch"] for r in results], "dtype": results[0]["dtype"], "precision": results[0]["precision"],
            **({"status": "compiled"} if mode == "compiled" else {}), "per_device": results}


def warm_compile_cache(args, *, batch: int, height: int, width: int, device: str | None = None) -> dict:
    """The compile helper, run to the end, for the shape the pipelines use on `device` (default
    --device): what a first run's background compilation costs (cold), and the cache every later
    run compiles from (each GPU its own: the GPU is part of the key)."""
    from hw.memory import ProbeMemo
    from models import choose_precision, load_model
    from models.compile_helper import CacheWarmer, artefacts_folder
    from models.registry import default_cache_dir

    dev = torch.device(device or args.device)
    dtype, _ = choose_precision(args.precision, dev)
    warmer = CacheWarmer(args.model, load_model(args.model, scale=args.scale).scale,
                         memo=ProbeMemo(default_cache_dir() / "compiled.json"), artefacts=artefacts_folder())
    shape = (batch, 3, height, width)
    already = bool(warmer.memo.get(warmer.key(shape, dtype, dev, "default")))
    t0 = time.perf_counter()
    warmer(shape, dtype, dev, "default")
    filled = time.perf_counter() - t0
    warmer.join()  # and the precompiled artefact: nothing of it runs beside the pipelines measured next
    return {"shape": list(shape), "seconds": round(time.perf_counter() - t0, 2), "cache_filled_seconds": round(filled, 2),
            "was_cached": already}


def pipeline(args, src: Path, out: Path | None, *, parallel: bool = True, encoders: int = 0,
             output_mode: str = "file", compile: str = "auto") -> dict:
    """One run as `run()` makes it; `encoders` 0: the automatic pool (segments of
    --segment-seconds), 1: one encoder."""
    from pipeline import RunConfig, run

    cfg = RunConfig(source=src, output=out, model=args.model, scale=args.scale, parallel=parallel, device=args.device,
                    gpus=args.gpus, nvdec=args.nvdec, precision=args.precision, codec="h264",
                    crf=args.crf, preset=args.preset,
                    overwrite=True, output_mode=output_mode, compile=compile,
                    encoders=encoders if output_mode == "file" else 0,
                    segment_seconds=args.segment_seconds if output_mode == "file" else None)
    planned = {}
    t0 = time.perf_counter()
    stats = run(cfg, on_start=lambda plan, _: planned.update(encoders=plan.num_encoders, segmented=bool(plan.segments),
                                                             line=plan.encoder_line, encoders_fps=plan.encoders_fps))
    wall = time.perf_counter() - t0
    d = stats.to_dict()
    worker = d["workers"][0]
    frames = d["frames_written"]
    # After the first frame: the pipeline's rate once it runs (the time to it is target 5's, and
    # stage-alone rates leave their start out too); the eager batches before a switch stay in.
    steady = steady_fps(d)
    steady = round(steady, 3) if steady is not None else None
    # Once every worker's model settled (compiled, where a background compilation finished): the
    # rate the rest of a longer video goes at; compiling from the disk cache takes seconds.
    # And to the last frame handed on: the encoders' tail and the join left out (`flow_fps`).
    settled = d.get("settled_fps")
    return {"fps": d["fps"], "steady_fps": steady, "settled_fps": settled, "flow_fps": d.get("flow_fps"),
            "settled_after_seconds": d.get("settled_after_seconds"), "frames": frames, "run_seconds": d["wall_seconds"],
            "whole_call_seconds": round(wall, 3), "whole_call_fps": round(d["frames_written"] / wall, 2),
            "first_frame_seconds": d["first_frame_seconds"], "encoders": planned["encoders"] if planned["segmented"] else 1,
            "encoders_line": planned["line"], "encoders_fps_estimate": planned["encoders_fps"],
            "batch": worker["batch_size_now"], "probe": worker["probe_note"], "compile": worker["compile"],
            "placements": [[w["device"], w["batch_size_now"]] for w in d["workers"]],  # (device, batch) of each worker
            "busy_seconds": {**{k: v["busy_seconds"] for k, v in d["stages"].items()},
                             **{w["name"]: w["busy_seconds"] for w in d["workers"]}}}


def naive(args, src: Path, out: Path) -> dict:
    """What people write by hand: OpenCV in and out, one frame at a time through the model."""
    import cv2
    import numpy as np

    from models import choose_precision, load_model

    t_start = time.perf_counter()
    dev = torch.device(args.device)
    dtype, _ = choose_precision(args.precision, dev)
    module = load_model(args.model, scale=args.scale).build(dev, dtype)
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS) or 30
    writer, codec, n = None, None, 0
    with torch.inference_mode():
        while True:
            ok, bgr = cap.read()
            if not ok:
                break
            x = torch.from_numpy(bgr[:, :, ::-1].copy()).to(dev).permute(2, 0, 1)[None].to(dtype) / 255.0
            y = module(x).clamp(0, 1).mul(255).round().to(torch.uint8)[0].permute(1, 2, 0).cpu().numpy()
            frame = np.ascontiguousarray(y[:, :, ::-1])
            if writer is None:
                for codec in ("avc1", "mp4v"):
                    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*codec), fps,
                                             (frame.shape[1], frame.shape[0]))
                    if writer.isOpened():
                        break
            writer.write(frame)
            n += 1
    cap.release()
    if writer is not None:
        writer.release()
    wall = time.perf_counter() - t_start
    return {"frames": n, "whole_call_seconds": round(wall, 3), "whole_call_fps": round(n / wall, 2),
            "codec": {"avc1": "H.264 (OpenCV's FFmpeg)", "mp4v": "MPEG-4 Part 2 (this OpenCV has no H.264 encoder)"}
            .get(codec, codec), "note": "cv2 decode, batch 1, eager, same model/precision/device"}


def first_frame_cli(args, src: Path, out_dir: Path) -> dict:
    """A fresh process, as a user starts it, twice: seconds to the first frame out of the model.
    The first start after an install (or on a fresh host) compiles Python's bytecode into
    framepipe's cache; the second is the warm start (issue 12's target 5): `from_command_s`."""
    report = out_dir / "first_frame.json"
    cmd = [sys.executable, str(ROOT / "main.py"), "--source", str(src), "--model", args.model, "--device", args.device,
           "--precision", args.precision, "--output-mode", "none", "--max-frames", "8", "-q", "--stats-json", str(report)]
    if args.scale:
        cmd += ["--scale", str(args.scale)]
    if args.gpus:
        cmd += ["--gpus", args.gpus]
    starts = []
    for _ in range(2):
        report.unlink(missing_ok=True)
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        wall = time.perf_counter() - t0
        if done.returncode != 0:
            raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
        starts.append((json.loads(report.read_text()), wall))
    (first, _), (d, wall) = starts
    return {"from_command_s": d.get("first_frame_seconds_from_command"), "from_run_start_s": d.get("first_frame_seconds"),
            "process_wall_s": round(wall, 2), "probe": d["workers"][0]["probe_note"],
            "first_start_from_command_s": first.get("first_frame_seconds_from_command")}


def summarize(r: dict) -> dict:
    """Ratios, bounds and the targets of issue 12, from the step results (missing steps: None)."""
    def fps(name, key="fps"):
        v = r.get(name)
        return v.get(key) if isinstance(v, dict) else None

    decode = fps("decode_nvdec") if r["args"]["nvdec"] else fps("decode_pyav")
    model_eager, model_compiled = fps("model_eager"), fps("model_compiled")
    model = max(filter(None, [model_eager, fps("model_channels_last"), model_compiled]), default=None)
    enc1, enck = fps("encode_alone_1"), fps("encode_alone_k")
    out: dict = {"stages_alone_fps": {"decode": decode, "model": model, "encode_1": enc1, "encode_k": enck}}

    def bound(pipeline_name, encode):
        stages = {"decode": decode, "model": model, "encode": encode}
        known = {k: v for k, v in stages.items() if v}
        p = fps(pipeline_name)
        if not known or not p:
            return None
        slowest = min(known, key=known.get)
        steady, settled, flow = fps(pipeline_name, "steady_fps"), fps(pipeline_name, "settled_fps"), fps(pipeline_name, "flow_fps")
        return {"fps": p, "bound_by": slowest, "slowest_alone_fps": known[slowest],
                "ratio_to_slowest": round(p / known[slowest], 3),
                "steady_fps": steady, "steady_ratio_to_slowest": round(steady / known[slowest], 3) if steady else None,
                "settled_fps": settled,
                "settled_ratio_to_slowest": round(settled / known[slowest], 3) if settled else None,
                "flow_fps": flow, "flow_ratio_to_slowest": round(flow / known[slowest], 3) if flow else None}

    out["one_encoder"] = bound("pipeline_parallel_1_encoder", enc1)
    out["encoder_pool"] = bound("pipeline_parallel", enck)
    out["no_encoder"] = bound("pipeline_output_none", None)
    if model_eager and model_compiled:
        out["model_compiled_vs_eager"] = round(model_compiled / model_eager, 2)
    best = max(filter(None, [fps("pipeline_parallel", "whole_call_fps"),
                             fps("pipeline_parallel_1_encoder", "whole_call_fps")]), default=None)
    if best and fps("naive", "whole_call_fps"):
        out["best_pipeline_vs_naive_wall"] = round(best / fps("naive", "whole_call_fps"), 2)
    return out


def chart(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    for name, value in r.items():
        if isinstance(value, dict) and ("fps" in value or "whole_call_fps" in value) and "error" not in value:
            kind = "stage alone" if name.split("_")[0] in ("decode", "model", "encode") else (
                "naive" if name == "naive" else "pipeline")
            rows.append((name, value.get("fps") or value.get("whole_call_fps"), kind))
    colours = {"stage alone": "#7f8c8d", "pipeline": "#2e86de", "naive": "#e74c3c"}
    rows.sort(key=lambda row: list(colours).index(row[2]))  # stages alone, pipelines, the naive loop
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.5))
    ax.barh([n for n, _, _ in rows], [v for _, v, _ in rows], color=[colours[k] for _, _, k in rows])
    for i, (_, v, _) in enumerate(rows):
        ax.text(v, i, f" {v:.1f}", va="center")
    ax.invert_yaxis()
    ax.set_xlabel("frames per second")
    a = r["args"]
    ax.set_title(f"{a['model']} on {r['device']}, {r['source_video']} -> x{r.get('scale', '?')}", fontsize=10)
    for kind, colour in colours.items():
        ax.bar(0, 0, color=colour, label=kind)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _devices(parser: argparse.ArgumentParser, args) -> list[str]:
    """The devices the run measures (["cpu"], ["cuda:0"], or --gpus's), --device set to the
    first; a wrong --gpus or --device ends the command with one line (argparse's error)."""
    from core.errors import InvalidOption
    from hw.gpus import parse_gpu_list

    if args.gpus is not None:
        if args.device not in ("auto", "cuda"):
            parser.error(f"--gpus {args.gpus} was given with --device {args.device}: drop one of them")
        try:
            indices = parse_gpu_list(args.gpus, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        except InvalidOption as exc:
            parser.error(str(exc))
        args.device = f"cuda:{indices[0]}"
        return [f"cuda:{i}" for i in indices]
    if args.device in ("auto", "cuda"):  # as the pipeline's workers name it
        args.device = "cuda:0" if torch.cuda.is_available() or args.device == "cuda" else "cpu"
    return [args.device]


def _device_name(devices: list[str]) -> str:
    """"NVIDIA H100 80GB HBM3", "2x Tesla P40", "CPU (16 cores)"."""
    if devices[0] == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    names = [torch.cuda.get_device_name(torch.device(d)) for d in devices]
    return ", ".join(f"{names.count(n)}x {n}" if names.count(n) > 1 else n for n in dict.fromkeys(names))


def _each_device(placements: list[tuple[str, int]], fn) -> dict:
    """`fn(device, batch)` for each placement in turn: one device's result, or each one's by device."""
    if len(placements) == 1:
        return fn(*placements[0])
    per = {d: fn(d, b) for d, b in placements}
    return {"per_device": per, "seconds": round(sum(r.get("seconds", 0) for r in per.values()), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", type=Path, help="the clip (default: one made here, see --make-clip)")
    p.add_argument("--make-clip", default="640x480", metavar="WxH", help="size of the clip made when no --source")
    p.add_argument("--frames", type=int, default=300, help="frames of the made clip")
    p.add_argument("--model", default="realesr-animevideov3")
    p.add_argument("--scale", type=int)
    p.add_argument("--device", default="auto", help="auto (cuda:0 where there is one), cuda:N or cpu")
    p.add_argument("--gpus", metavar="LIST", help='GPUs the pipelines use, as main.py\'s --gpus (e.g. "0,1"): the '
                   "model alone is measured on all of them at once; the naive loop runs on the first")
    p.add_argument("--precision", default="auto")
    p.add_argument("--nvdec", action="store_true", help="the pipelines decode with NVDEC")
    p.add_argument("--preset", default="medium")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--segment-seconds", type=float, default=2.0)
    p.add_argument("--skip", default="", help="comma-separated steps to leave out (e.g. naive,first_frame_cli)")
    p.add_argument("--out", type=Path, default=Path("bench-out"), help="JSON, chart")
    p.add_argument("--work", type=Path, help="the made clip and the output videos (default: --out)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or args.out
    work.mkdir(parents=True, exist_ok=True)
    devices = _devices(p, args)
    dev = torch.device(args.device)
    torch.backends.cudnn.benchmark = True  # as main.py sets it for the program
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(work / "torch-compile-cache"))
    skip = set(filter(None, args.skip.split(",")))
    if args.source is None:
        w, h = map(int, args.make_clip.split("x"))
        args.source = make_source(work / f"bench-src-{w}x{h}-{args.frames}.mp4", width=w, height=h,
                                  num_frames=args.frames)
    from hw.av_source import probe_source
    from models import load_model

    info = probe_source(args.source)
    scale = load_model(args.model, scale=args.scale).scale
    import av

    tag = f"{Path(args.model).stem}-{info.width}x{info.height}-x{scale}"
    results: dict = {
        "date": time.strftime("%Y-%m-%d"), "device": _device_name(devices), "devices": devices,
        "cpu_count": os.cpu_count(), "torch": torch.__version__, "pyav": av.__version__,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "source_video": f"{info.width}x{info.height} {info.codec}, {info.num_frames_estimate} frames", "scale": scale,
    }
    step = Steps(results, args.out / f"bench-{tag}.json", preview_chars=500)

    def maybe(name, fn):
        if name.split(":")[0] not in skip:
            step(name, fn)

    maybe("decode_pyav", lambda: decode_alone(args.source, nvdec=False))
    if dev.type == "cuda":
        maybe("decode_nvdec", lambda: decode_alone(args.source, nvdec=True, gpu=dev.index or 0))
    out_file = work / f"bench-out-{tag}.mp4"
    # The first pipeline: the probe's batch size and the compiled kernels (cold cache) for the rest.
    maybe("pipeline_parallel_cold", lambda: pipeline(args, args.source, out_file))
    def default_batch(d):
        return 4 if d.startswith("cuda") else 1

    # Each worker's device and batch, as the probe chose them (one device: --device; several: --gpus).
    placements = [(d, b or default_batch(d))  # 0: a worker left out of the run
                  for d, b in (results.get("pipeline_parallel_cold") or {}).get("placements") or []]
    if sorted(d for d, _ in placements) != sorted(devices):
        placements = [(d, default_batch(d)) for d in devices]

    def alone(mode):
        return lambda: model_alone_together(args, placements=placements, height=info.height, width=info.width, mode=mode)

    maybe("model_eager", alone("eager"))
    if dev.type == "cuda":
        maybe("model_channels_last", alone("channels_last"))
    from models.compiled import compile_choice

    if compile_choice("auto", dev)[0]:
        maybe("model_compiled", alone("compiled"))
        maybe("compile_cache_warmup", lambda: _each_device(placements, lambda d, b: warm_compile_cache(
            args, batch=b, height=info.height, width=info.width, device=d)))
    maybe("pipeline_sequential", lambda: pipeline(args, args.source, out_file, parallel=False))
    maybe("pipeline_parallel_1_encoder", lambda: pipeline(args, args.source, out_file, encoders=1))
    maybe("pipeline_parallel", lambda: pipeline(args, args.source, out_file))
    maybe("pipeline_output_none", lambda: pipeline(args, args.source, None, output_mode="none"))
    if "encode_alone" not in skip and out_file.exists():
        exact = work / f"bench-encoder-input-{tag}.mkv"  # the frames the pipeline's encoders had, kept exactly
        exact.unlink(missing_ok=True)
        measured = ((results.get("pipeline_parallel") or {}).get("compile") or {}).get("status")
        mode = "auto" if measured == "compiled" else "off"  # the model run as in the measured run (eager: exactly)
        maybe("encoder_input", lambda: pipeline(lossless(args), args.source, exact, compile=mode))
        frames = output_frames(exact) if exact.exists() else []  # no stand-in for the encoders' own input
        per_frame = sum(p.nbytes for p in frames[0]) if frames else 1
        kept = max(1, max_encode_bytes() // per_frame)
        if kept < len(frames):
            print(f"encode alone: the first {kept} of {len(frames)} frames (memory)")
        frames = frames[:kept]
        k = (results.get("pipeline_parallel") or {}).get("encoders") or 1

        def best_of_two(encoders):  # the stage's speed: the better of two runs (one ran 63 fps, the next 77)
            if not frames:
                raise RuntimeError("not measured: the lossless run of the pipeline's frames (encoder_input) failed")
            runs = [encoders_alone(frames, work, encoders=encoders, args=args, src=args.source) for _ in range(2)]
            return {**max(runs, key=lambda r: r["fps"]), "fps_runs": [round(r["fps"], 2) for r in runs]}

        maybe("encode_alone_1", lambda: best_of_two(1))
        maybe("encode_alone_k", lambda: best_of_two(k))
        # The same pool on segments all of one length (before 2026-12-06 the last ones were not shorter)
        maybe("encode_alone_k_untapered", lambda: encoders_alone(frames, work, encoders=k, args=args, src=args.source,
                                                                 taper=False))
        if "encode_alone_k_reencoded" not in skip:  # the earlier way, for the difference: the measured run's output
            frames = output_frames(out_file)[:kept]
            maybe("encode_alone_k_reencoded", lambda: encoders_alone(frames, work, encoders=k, args=args, src=args.source))
        frames = None
    maybe("naive", lambda: naive(args, args.source, work / f"bench-naive-{tag}.mp4"))
    maybe("first_frame_cli", lambda: first_frame_cli(args, args.source, work))
    results["summary"] = summarize(results)
    step.save()
    png = args.out / f"bench-{tag}.png"
    try:
        chart(results, png)
        print(f"chart: {png}")
    except Exception as exc:  # noqa: BLE001 - the figures are in the JSON either way
        print(f"chart not drawn: {type(exc).__name__}: {exc}")
    print(json.dumps(results["summary"], indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else str(v)))


if __name__ == "__main__":
    main()
