#!/usr/bin/env python3
"""Tiles vs whole frames (issue 13): the largest |tiled - untiled| of realesr-animevideov3 (x4,
fp32, CPU) on three 97x64 crops of scikit-image's astronaut photo, at three tilings.

    python benchmarks/tile_error.py
    python benchmarks/tile_error.py --device cuda --precision fp16 --frame 1920x1080   # on a GPU: one
        # whole frame (the photo resized) vs tiles of 512/256 px, max difference and both times
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import skimage.data  # noqa: E402
import torch  # noqa: E402

from models import load_model  # noqa: E402
from models.tiling import Tiling, run_tiled  # noqa: E402

CROPS = [(60, 100), (200, 250), (300, 50)]  # (y, x) of each 97x64 crop


def whole_frame(device: str, precision: str, size: str) -> None:
    import time

    import torch.nn.functional as F

    dtype = torch.float16 if precision == "fp16" else torch.float32
    model = load_model("realesr-animevideov3").build(torch.device(device), dtype)
    width, height = map(int, size.split("x"))
    image = torch.from_numpy(skimage.data.astronaut().copy()).permute(2, 0, 1)[None].float() / 255
    x = F.interpolate(image, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
    x = x.to(device=device, dtype=dtype)

    def timed(fn):
        fn()  # warm-up (cuDNN picks its kernels)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return y.float(), time.perf_counter() - t0

    with torch.inference_mode():
        whole, seconds = timed(lambda: model(x))
        print(f"{size} {precision} on {device}: whole frame {seconds * 1000:.0f} ms")
        for tiling in (Tiling(512, 32), Tiling(256, 32), Tiling(257, 48)):
            tiled, t = timed(lambda: run_tiled(model, x, tiling, scale=4))
            diff = (tiled - whole).abs()
            print(f"tile {tiling.size}, overlap {tiling.overlap}: {t * 1000:.0f} ms, max |tiled - whole| = "
                  f"{float(diff.max()):.2e}, mean {float(diff.mean()):.2e} (8-bit level = {1 / 255:.1e})")


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16"))
    p.add_argument("--frame", metavar="WxH", help="one whole frame of this size instead of the three crops")
    args = p.parse_args()
    if args.frame:
        return whole_frame(args.device, args.precision, args.frame)
    model = load_model("realesr-animevideov3").build(torch.device("cpu"), torch.float32)
    image = skimage.data.astronaut()
    with torch.inference_mode():
        for name, tiling in [("tile 61, overlap 48", Tiling(61, 48)), ("tile 64, overlap 32", Tiling(64, 32)),
                             ("tile 49, overlap 0", Tiling(49, 0))]:
            worst = 0.0
            for y, x in CROPS:
                crop = torch.from_numpy(image[y : y + 64, x : x + 97].copy()).permute(2, 0, 1)[None].float() / 255
                worst = max(worst, float((run_tiled(model, crop, tiling, scale=4) - model(crop)).abs().max()))
            print(f"{name}: max |tiled - untiled| = {worst:.2e}")


if __name__ == "__main__":
    main()
