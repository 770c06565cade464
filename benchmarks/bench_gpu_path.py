#!/usr/bin/env python3
"""The GPU data path, each stage alone and end to end, in one run (issue 4).

On a 1080p H.264 clip generated here (photographic content, B-frames), measures:
  decode alone      PyAV (CPU) vs NVDEC
  model alone       the model on the GPU at the clip's size (batch from the probe)
  encode alone      the CPU encoder fed GPU-made yuv420p at the output size
  end to end        sequential baseline, --parallel (PyAV decode), --parallel --nvdec
and checks the NVDEC run is frame-exact against the PyAV-decode run (same count, same
timestamps, PSNR of every frame) and, on the first frames, against the CPU path (fp32).

    python benchmarks/bench_gpu_path.py --frames 300 --out $OUT
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from fractions import Fraction
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._steps import Steps  # noqa: E402


def make_source(path: Path, *, width: int, height: int, num_frames: int) -> Path:
    """1080p H.264 (x264, B-frames) of panned photographs: real content, not noise."""
    import av

    from hw.clips import render_photo_frames

    frames = render_photo_frames(width, height, min(num_frames, 60))
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "veryfast", "crf": "18", "bf": "3"}
        cc = s.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = 1, 1, 1, 1
        for i in range(num_frames):
            rgb = frames[i % len(frames)]
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            f.colorspace, f.color_range = 1, 1
            f = f.reformat(format="yuv420p")
            f.pts = i
            for p in s.encode(f):
                out.mux(p)
        for p in s.encode(None):
            out.mux(p)
    return path


def timed(fn) -> tuple[float, object]:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    result = fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0, result


def decode_alone(src: Path, *, nvdec: bool) -> dict:
    from hw.av_decode import PyAVDecoder
    from hw.nvdec import NvDecoder

    def go():
        source = NvDecoder(src, gpu=0) if nvdec else PyAVDecoder(src)
        n = sum(1 for _ in source)
        source.close()
        return n

    seconds, n = timed(go)
    return {"frames": n, "seconds": round(seconds, 3), "fps": round(n / seconds, 1)}


def model_alone(model_name: str, scale: int | None, *, width: int, height: int, batch: int, seconds_target: float = 5) -> dict:
    from models import choose_precision, load_model

    dev = torch.device("cuda", 0)
    torch.backends.cudnn.benchmark = True  # as main.py does
    dtype, why = choose_precision("auto", dev)
    module = load_model(model_name, scale=scale).build(dev, dtype)
    x = torch.rand(batch, 3, height, width, device=dev, dtype=dtype)
    with torch.inference_mode():
        for _ in range(2):
            module(x)
        torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds_target:
            module(x)
            n += batch
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    return {"model": model_name, "dtype": str(dtype), "batch": batch, "fps": round(n / seconds, 1), "precision": why}


def encode_alone(out: Path, *, width: int, height: int, num_frames: int, preset: str) -> dict:
    """CPU encoder fed yuv420p planes converted on the GPU (what the writer does)."""
    from hw.color import ColorInfo
    from hw.av_encode import PyAVWriter
    from hw.frames import rgb_to_host_yuv420

    info = ColorInfo(matrix="bt709", matrix_tag=1, primaries_tag=1, transfer_tag=1, range_tag=1)
    rgb = torch.rand(1, 3, height // 8, width // 8, device="cuda")
    rgb = torch.nn.functional.interpolate(rgb, size=(height, width), mode="bilinear")
    planes = [rgb_to_host_yuv420(rgb.roll(i * 7, dims=3), info)[0] for i in range(8)]
    writer = PyAVWriter(out, width=width, height=height, time_base=Fraction(1, 30), frame_rate=Fraction(30),
                        color=info, codec="h264", crf=18, preset=preset)
    t0 = time.perf_counter()
    for i in range(num_frames):
        writer.write(planes[i % len(planes)], i)
    writer.close(complete=True)
    seconds = time.perf_counter() - t0
    return {"frames": num_frames, "size": f"{width}x{height}", "preset": preset, "fps": round(num_frames / seconds, 1)}


def end_to_end(src: Path, out: Path, *, model: str, scale: int | None, parallel: bool, nvdec: bool, preset: str,
               max_frames: int | None = None, device: str = "cuda", compile: str = "auto") -> dict:
    from pipeline import RunConfig, run

    cfg = RunConfig(source=src, output=out, model=model, scale=scale, parallel=parallel, nvdec=nvdec, device=device,
                    preset=preset, overwrite=True, max_frames=max_frames, compile=compile)
    stats = run(cfg)
    d = stats.to_dict()
    return {
        "mode": d["mode"], "decoder": d["decoder"], "encoder": d["encoder"], "frames": d["frames_written"],
        "seconds": d["wall_seconds"], "fps": d["fps"],
        "stages": {k: v for k, v in d["stages"].items()},
        "workers": [{k: w[k] for k in ("name", "frames", "batch_sizes", "busy_seconds", "wait_seconds", "probe_seconds", "probe_note")}
                    for w in d["workers"]],
    }


def compare_outputs(a: Path, b: Path, limit: int | None = None) -> dict:
    import av

    def read(p):
        with av.open(str(p)) as c:
            s = c.streams.video[0]
            out = []
            for f in c.decode(s):
                out.append((float(f.pts * s.time_base), f.to_ndarray(format="rgb24")))
                if limit and len(out) >= limit:
                    break
            return out

    fa, fb = read(a), read(b)
    psnrs = []
    for (_, x), (_, y) in zip(fa, fb):
        mse = float(np.mean((x.astype(np.float64) - y.astype(np.float64)) ** 2))
        psnrs.append(99.0 if mse == 0 else 10 * math.log10(255.0**2 / mse))
    return {
        "frames_a": len(fa), "frames_b": len(fb),
        "pts_equal": [t for t, _ in fa] == [t for t, _ in fb],
        "psnr_min_db": round(min(psnrs), 2), "psnr_mean_db": round(float(np.mean(psnrs)), 2),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--size", default="1920x1080")
    p.add_argument("--model", default="realesr-animevideov3")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--cpu-check-frames", type=int, default=4)
    p.add_argument("--out", type=Path, default=Path("bench-out"))
    p.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                   help="--compile of the end-to-end runs (off: as before issue 12, to compare with older figures)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.backends.cudnn.benchmark = True  # as main.py sets it for the program (a run never flips it)
    width, height = map(int, args.size.split("x"))
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}}
    try:
        from hw.nv_runtime import nvcodec_version

        results["pynvvideocodec"] = nvcodec_version()
    except Exception as exc:  # noqa: BLE001
        results["pynvvideocodec"] = f"unavailable: {exc}"
    import av

    results["pyav"] = av.__version__
    src = make_source(Path("/tmp/bench_src_1080p.mp4"), width=width, height=height, num_frames=args.frames)

    step = Steps(results, args.out / "bench_gpu_path.json", preview_chars=400)

    step("decode_pyav", lambda: decode_alone(src, nvdec=False))
    step("decode_nvdec", lambda: decode_alone(src, nvdec=True))
    out_w, out_h = width * args.scale, height * args.scale
    step("model_alone_b4", lambda: model_alone(args.model, args.scale, width=width, height=height, batch=4))
    step("encode_alone", lambda: encode_alone(Path("/tmp/enc_alone.mp4"), width=out_w, height=out_h,
                                              num_frames=min(args.frames, 120), preset=args.preset))
    step("e2e_sequential", lambda: end_to_end(src, Path("/tmp/e2e_seq.mp4"), model=args.model, scale=args.scale,
                                              parallel=False, nvdec=False, preset=args.preset, compile=args.compile))
    step("e2e_parallel_pyav", lambda: end_to_end(src, Path("/tmp/e2e_pyav.mp4"), model=args.model, scale=args.scale,
                                                 parallel=True, nvdec=False, preset=args.preset, compile=args.compile))
    step("e2e_parallel_nvdec", lambda: end_to_end(src, Path("/tmp/e2e_nvdec.mp4"), model=args.model, scale=args.scale,
                                                  parallel=True, nvdec=True, preset=args.preset, compile=args.compile))
    step("nvdec_vs_pyav_outputs", lambda: compare_outputs(Path("/tmp/e2e_nvdec.mp4"), Path("/tmp/e2e_pyav.mp4")))
    step("seq_vs_parallel_outputs", lambda: compare_outputs(Path("/tmp/e2e_seq.mp4"), Path("/tmp/e2e_pyav.mp4")))
    n = args.cpu_check_frames
    step("e2e_cpu_fp32_first_frames", lambda: end_to_end(src, Path("/tmp/e2e_cpu.mp4"), model=args.model, scale=args.scale,
                                                         parallel=True, nvdec=False, preset=args.preset, max_frames=n,
                                                         device="cpu", compile=args.compile))
    step("nvdec_fp16_vs_cpu_fp32_outputs", lambda: compare_outputs(Path("/tmp/e2e_nvdec.mp4"), Path("/tmp/e2e_cpu.mp4"), limit=n))
    # Pipeline ceiling at 1080p output: an identity-cost model, so decode/colour/encode dominate.
    step("e2e_parallel_nvdec_bicubic_x1", lambda: end_to_end(src, Path("/tmp/e2e_bicubic.mp4"), model="bicubic", scale=1,
                                                             parallel=True, nvdec=True, preset=args.preset, compile=args.compile))
    step("encode_alone_1080p", lambda: encode_alone(Path("/tmp/enc_alone2.mp4"), width=width, height=height,
                                                    num_frames=min(args.frames, 300), preset=args.preset))
    step.save()


if __name__ == "__main__":
    main()
