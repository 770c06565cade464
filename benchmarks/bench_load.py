#!/usr/bin/env python3
"""Where loading a precompiled model spends its seconds, in a fresh process with nothing beside it.

    python benchmarks/bench_load.py --model realesrgan-x4plus-anime --shape 4,3,270,480 [--profile]

The artefact is the one a compile helper kept for that model, shape, dtype and device
(`models.compile_helper.CacheWarmer.artefact`; a first `python main.py` makes it). Times, from
the script's start: the model built as a worker builds it, torch.compile's modules imported, the
file loaded (`Precompiled.load`), its guards checked, its first and second call (synchronized).
Prints one JSON line, with torch's inductor counters (kernels taken from the artefact's bundle or
compiled again). --profile adds cProfile's top functions of the load and the first call.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

T0 = time.perf_counter()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--scale", type=int, default=None)
    p.add_argument("--shape", required=True, help="N,C,H,W")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--dtype", default="float16")
    p.add_argument("--mode", default="default")
    p.add_argument("--profile", action="store_true")
    args = p.parse_args(argv)
    import torch

    from models import load_model
    from models.compile_helper import CacheWarmer, artefacts_folder
    from models.compiled import runs_channels_last

    marks: dict[str, float] = {"torch imported": time.perf_counter() - T0}
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = tuple(int(v) for v in args.shape.split(","))
    spec = load_model(args.model, scale=args.scale)
    module = spec.build(device, dtype)
    channels_last = runs_channels_last(module)  # as the worker feeds it
    if channels_last:
        module.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        x = torch.rand(shape, device=device).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        ref = module(x)
    _sync(device)
    marks["model built, eager call"] = time.perf_counter() - T0
    import torch._dynamo  # noqa: F401 - what the load imports first
    import torch._inductor.async_compile  # noqa: F401
    import torch._inductor.codecache  # noqa: F401

    marks["torch.compile's modules imported"] = time.perf_counter() - T0
    artefact = CacheWarmer(args.model, spec.scale, artefacts=artefacts_folder()).artefact(shape, dtype, device, args.mode)
    if artefact is None or not artefact.exists():
        print(json.dumps({"error": f"no artefact at {artefact.path if artefact else None}"}))
        return 1
    profiler = cProfile.Profile() if args.profile else None
    with torch.inference_mode():
        if profiler:
            profiler.enable()
        fn = artefact.load(module)
        marks["loaded"] = time.perf_counter() - T0
        if fn is None:
            print(json.dumps({"error": "it did not load", "marks": marks}))
            return 1
        ok = fn.func.guard_check(module, x)
        marks["guards checked"] = time.perf_counter() - T0
        y = fn(x)
        _sync(device)
        marks["first call"] = time.perf_counter() - T0
        if profiler:
            profiler.disable()
        y = fn(x)
        _sync(device)
        marks["second call"] = time.perf_counter() - T0
        error = (y.float() - ref.float()).abs().max().item()
    from torch._dynamo.utils import counters

    steps, last = {}, 0.0
    for name, at in marks.items():
        steps[name] = round(at - last, 3)
        last = at
    print(json.dumps({"model": args.model, "shape": shape, "device": str(device), "torch": torch.__version__,
                      "guards_ok": ok, "max_abs_error_vs_eager": error, "seconds_each": steps,
                      "seconds_load_to_second_call": round(marks["second call"] - marks["torch.compile's modules imported"], 3),
                      "inductor_counters": dict(counters["inductor"]), "artefact_bytes": artefact.path.stat().st_size}))
    if profiler:
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(25)
            print("\n".join(line[:170] for line in out.getvalue().splitlines()[:45]))
    return 0


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


if __name__ == "__main__":
    sys.exit(main())
