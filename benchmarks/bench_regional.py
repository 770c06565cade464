#!/usr/bin/env python3
"""How long torch.compile takes in a fresh process, whole model against its repeated blocks
compiled once (issue 12): the seconds a new `python main.py` spends compiling while its worker
runs eagerly, cold (an empty cache) and warm (the cache a first run left).

Each variant runs in its own fresh process, twice: cold, then warm, with its own inductor and
Triton cache folders. Variants:
  whole     torch.compile(model): framepipe as it is
  nested    each repeated block's forward marked torch.compiler.nested_compile_region, then
            torch.compile(model): the block is traced and compiled once, stamped out for the others
  regional  each repeated block compiled alone (module.compile()); the rest of the model eager

Each child reports: import and build seconds, the first compiled call (the compilation), the
second, the compiled and eager rates (CUDA events, the same batches), PSNR against eager.
--profile runs one more warm child of the first variant under cProfile and prints where its
compilation spends its time (the functions with the most cumulative seconds).

Measured on the H100 host on 2026-12-06 (benchmarks/RESULTS.md): neither variant shortened the
warm compilation (~9 s each), so framepipe compiles the whole model.

    python benchmarks/bench_regional.py --model realesrgan-x4plus-anime --shape 4,3,270,480 --out bench-out/regional
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def repeated_blocks(module) -> list:
    """The outermost submodules whose class (a model's own, not torch.nn's) occurs twice or more
    and holds weights, in order: an RRDBNet's RRDB blocks. None for a plain stack of torch.nn
    layers (SRVGGNetCompact)."""
    counts: dict[type, int] = {}
    for sub in module.modules():
        cls = type(sub)
        if sub is not module and not cls.__module__.startswith("torch.") and next(sub.parameters(), None) is not None:
            counts[cls] = counts.get(cls, 0) + 1
    found: list = []

    def walk(parent) -> None:
        for child in parent.children():
            if counts.get(type(child), 0) >= 2:
                found.append(child)
            else:
                walk(child)

    walk(module)
    return found


_REGION_CLASSES: dict[type, type] = {}


def mark_regions(module) -> int:
    """Each repeated block's forward marked a `torch.compiler.nested_compile_region` (its class
    becomes a subclass whose forward is marked, one per class; eager calls are unchanged). The
    number of blocks marked (0: none, or a torch without it)."""
    import torch

    region = getattr(torch.compiler, "nested_compile_region", None)
    blocks = repeated_blocks(module) if region is not None else []
    for block in blocks:
        cls = type(block)
        if cls not in _REGION_CLASSES.values():
            if cls not in _REGION_CLASSES:
                _REGION_CLASSES[cls] = type(cls.__name__, (cls,), {"forward": region(cls.forward),
                                                                  "__module__": cls.__module__,
                                                                  "__qualname__": cls.__qualname__})
            block.__class__ = _REGION_CLASSES[cls]
    return len(blocks)


def child(model_name: str, shape: tuple[int, ...], variant: str, iters: int) -> dict:
    t0 = time.perf_counter()
    import torch
    sys.path.insert(0, str(ROOT))
    from models import load_model
    from models.compiled import psnr_db
    t_import = time.perf_counter() - t0

    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    t1 = time.perf_counter()
    module = load_model(model_name).build(device, torch.float16)
    module.to(memory_format=torch.channels_last)
    x = torch.rand(shape, device=device).half().contiguous(memory_format=torch.channels_last)
    torch.cuda.synchronize()
    t_build = time.perf_counter() - t1
    blocks = repeated_blocks(module)
    with torch.inference_mode():
        t2 = time.perf_counter()
        if variant == "whole":
            fn = torch.compile(module, dynamic=False)
        elif variant == "nested":
            mark_regions(module)
            fn = torch.compile(module, dynamic=False)
        elif variant == "regional":
            for block in blocks:
                block.compile(dynamic=False)
            fn = module
        else:
            raise SystemExit(f"unknown variant {variant}")
        out = fn(x)
        torch.cuda.synchronize()
        t_first = time.perf_counter() - t2
        t3 = time.perf_counter()
        out = fn(x)
        torch.cuda.synchronize()
        t_second = time.perf_counter() - t3

        def rate(f) -> float:
            for _ in range(3):
                f(x)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                f(x)
            end.record()
            end.synchronize()
            return iters * shape[0] / (start.elapsed_time(end) / 1000)

        compiled_fps = rate(fn)
        if variant == "regional":  # the blocks' compiled calls off: the module as it was
            for block in blocks:
                block._compiled_call_impl = None
        ref = module(x)  # eager: torch.compile wrapped it (whole, nested) without changing it; marks are no-ops
        eager_fps = rate(module)
        quality = psnr_db(out, ref)
    return {"variant": variant, "blocks": len(blocks), "block_class": type(blocks[0]).__name__ if blocks else None,
            "import_s": round(t_import, 2), "build_s": round(t_build, 2), "compile_s": round(t_first, 2),
            "second_call_s": round(t_second, 3), "compiled_fps": round(compiled_fps, 1),
            "eager_fps": round(eager_fps, 1), "psnr_db": round(quality, 1), "torch": torch.__version__}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="realesrgan-x4plus-anime")
    p.add_argument("--shape", default="4,3,270,480")
    p.add_argument("--variants", default="whole,nested,regional")
    p.add_argument("--iters", type=int, default=40)
    p.add_argument("--out", type=Path, default=Path("bench-out/regional"))
    p.add_argument("--profile", action="store_true", help="one more warm child of the first variant under cProfile")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    if args.child:
        print("RESULT " + json.dumps(child(args.model, shape, args.child, args.iters)), flush=True)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in args.variants.split(","):
        cache = Path(tempfile.mkdtemp(prefix=f"regional-{variant}-"))
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
        for run in ("cold", "warm"):
            t0 = time.perf_counter()
            done = subprocess.run([sys.executable, __file__, "--model", args.model, "--shape", args.shape,
                                   "--iters", str(args.iters), "--child", variant], env=env, capture_output=True,
                                  text=True, timeout=900)
            wall = time.perf_counter() - t0
            line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
            row = json.loads(line[7:]) if line else {"variant": variant, "error": (done.stderr.strip().splitlines()
                                                                                   or ["?"])[-1][:300]}
            row.update(run=run, process_wall_s=round(wall, 1))
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.profile:
        variant = args.variants.split(",")[0]
        cache = Path(tempfile.gettempdir()) / "regional-profile"
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"), TRITON_CACHE_DIR=str(cache / "triton"))
        for run in ("cold", "warm"):  # the profile is of the warm one
            command = [sys.executable] + (["-m", "cProfile", "-s", "cumulative"] if run == "warm" else []) + \
                [__file__, "--model", args.model, "--shape", args.shape, "--iters", "5", "--child", variant]
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        (args.out / "profile.txt").write_text("\n".join(done.stdout.splitlines()[:400]))
        print("\n".join(done.stdout.splitlines()[:60]))
    (args.out / "regional.json").write_text(json.dumps({"model": args.model, "shape": shape, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
