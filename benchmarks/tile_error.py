#!/usr/bin/env python3
"""Tiles vs whole frames (issue 13): the largest |tiled - untiled| of realesr-animevideov3 (x4,
fp32, CPU) on three 97x64 crops of scikit-image's astronaut photo, at three tilings.

    python benchmarks/tile_error.py
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


def main() -> None:
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
