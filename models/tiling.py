"""Tiled inference: an image-to-image model run over overlapping tiles of a frame, blended.

    out = run_tiled(module, x, Tiling(size=512, overlap=48), scale=4)   # (N,3,H,W) -> (N,3,4H,4W)

For frames too large for the device at batch 1 (8K into an x4 model), or to cap memory. The
worker (`pipeline/worker.py`) calls this in place of `module(x)` when `--tile-size` is set,
and switches to it by itself (`next_tiling`) when a whole frame runs out of memory.

Choices, and why:
- **Layout.** Tiles are `size` x `size` input pixels; neighbours share at least `overlap`
  pixels. The last tile of a row or column is shifted inward to end at the frame's edge
  rather than running short, so every tile has the same shape and all of them go through
  the model in batches. A frame no larger than a tile in one dimension is not cut in that
  dimension; a frame that fits in one tile runs whole (`module(x)`, the untiled call).
- **Why overlap.** A convolutional network's output near a cut edge is wrong: it sees zero
  padding where the neighbour's pixels should be. For realesr-animevideov3 (18 3x3 convs)
  the error is exactly 0 from 18 input pixels from a cut on, its receptive-field radius.
  Without overlap that error is a seam: overlap 0 left the model 0.16 off (0..1 units) at
  the cuts (benchmarks/RESULTS.md, CPU, fp32).
- **Blending.** Within an overlap, the outer 3/8 on each side is context only (weight 0:
  the pixels a cut spoils); across the middle quarter the weights ramp linearly, one tile
  fading out as the other fades in (feathering). Where 3/8 of the overlap reaches the
  model's receptive-field radius, every output pixel comes only from tile pixels the cut did
  not touch, so the tiled output equals the untiled one up to floating-point rounding:
  realesr-animevideov3 from overlap 48 (the default; 3.6e-7 max on three photo crops),
  bicubic from overlap 6. With less overlap, how deep the context is decides the residual
  (overlap 32: 3.2e-4, a twelfth of an 8-bit level), not the ramp: for a purely local
  model a hard cut in the middle of the overlap does as well or better.
  The ramp is for what differs between whole tiles, a model with a global statistic
  (normalisation, pooling, attention over the tile): faded in over the ramp, not a step
  along a line. Weights are divided by their sum, so the shifted last tile (a larger
  overlap) blends right. Overlap 0 gives hard tile edges: for point-wise models only.
- **Accumulation** in fp32 on the model's device, whatever the model's dtype, so blending
  adds no rounding of its own to an fp16/bf16 output. The result is fp32 (the writer's colour
  conversion works in fp32 anyway; a frame that fits in one tile returns the model's own
  output); that (N, 3, H*s, W*s) fp32 buffer is the memory tiling cannot save.
- **Batching.** The tiles of every frame of `x` go through the model `batch_size` at a time
  (`TILE_BATCH_SIZE`, 4: realesr-animevideov3's throughput plateaus from batch 4 on the
  H100, DESIGN.md; not measured for tiles). Each batch's output is checked against the model
  contract (`check_model_output`: shape, dtype) before blending, so a model returning the
  wrong size fails with one line naming the tiles, not inside the blend. The caller checks
  the finished frames (values included) as it checks untiled output.
- **Out of memory at batch 1** (`next_tiling`): halving, as the batch size does. The first
  try is the largest power of two whose tile batch holds fewer pixels than the frame (less
  than what did not fit), then half of that; the floor is `MIN_TILE_SIZE` and twice the
  overlap (a smaller tile would be mostly overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from core.choices import DEFAULT_TILE_OVERLAP, MIN_TILE_SIZE
from core.errors import ModelOutputError
from models.base import check_model_output

__all__ = ["Tiling", "run_tiled", "tile_starts", "next_tiling", "default_overlap", "TILE_BATCH_SIZE"]

TILE_BATCH_SIZE = 4


@dataclass(frozen=True)
class Tiling:
    """Tiles of `size` x `size` input pixels sharing `overlap` pixels, `batch_size` per model call."""

    size: int
    overlap: int = DEFAULT_TILE_OVERLAP
    batch_size: int = TILE_BATCH_SIZE

    def __post_init__(self) -> None:
        if self.size < 1 or not 0 <= self.overlap < self.size or self.batch_size < 1:
            raise ValueError(f"Tiling needs size >= 1, 0 <= overlap < size and batch_size >= 1, got {self}")

    @property
    def context(self) -> int:
        """Input pixels at each cut edge that get no weight (3/8 of the overlap)."""
        return 3 * self.overlap // 8


def default_overlap(size: int | None) -> int:
    """The overlap when none is asked for: `DEFAULT_TILE_OVERLAP`, at most a quarter of a small tile."""
    return DEFAULT_TILE_OVERLAP if size is None else min(DEFAULT_TILE_OVERLAP, size // 4)


def next_tiling(current: Tiling | None, *, height: int, width: int, overlap: int) -> Tiling | None:
    """What to try after a (height x width) frame ran out of memory at batch 1 with `current`
    tiles (None: whole). Found like the batch size, by halving: first the largest power of two
    whose tile batch holds fewer pixels than the frame (so less than what did not fit), then
    half the last size. None below the floor: `MIN_TILE_SIZE`, and twice the overlap (a tile
    that is mostly overlap does little work)."""
    batch_size = current.batch_size if current is not None else TILE_BATCH_SIZE
    size = 1
    while batch_size * (2 * size) ** 2 < height * width:
        size *= 2
    if current is not None:
        size = min(size, current.size // 2)
    if size < max(MIN_TILE_SIZE, 2 * overlap):
        return None
    return Tiling(size, overlap, batch_size)


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start of each tile along one dimension: every `size - overlap`, the last one shifted
    inward to end at `length`. One tile at 0 where `length <= size`."""
    if length <= size:
        return [0]
    step = size - overlap
    count = math.ceil((length - size) / step) + 1
    return [min(i * step, length - size) for i in range(count)]


def _edge_weights(start: int, size: int, length: int, tiling: Tiling, scale: int, device: torch.device) -> torch.Tensor:
    """Blend weights along one dimension for the output pixels of one tile (fp32): 1 inside,
    0 over the context at a cut edge, a linear ramp between; frame edges are not cut."""
    weights = torch.ones(size * scale, dtype=torch.float32, device=device)
    if tiling.overlap == 0:
        return weights
    centres = torch.arange(size * scale, dtype=torch.float32, device=device) + 0.5  # from the tile's first edge
    context = tiling.context * scale
    ramp = (tiling.overlap - 2 * tiling.context) * scale
    if start > 0:
        weights = torch.minimum(weights, ((centres - context) / ramp).clamp(0.0, 1.0))
    if start + size < length:
        weights = torch.minimum(weights, ((size * scale - centres - context) / ramp).clamp(0.0, 1.0))
    return weights


def run_tiled(module: nn.Module, x: torch.Tensor, tiling: Tiling, *, scale: int, name: str = "model") -> torch.Tensor:
    """`module` over overlapping tiles of `x` (N, 3, H, W), blended: (N, 3, H*scale, W*scale) on
    `x`'s device, fp16 for fp16 input (the output frame is the largest buffer: at 8K x4 it is
    3 GiB in fp16, 6 GiB in fp32; each tile is added already divided by the total weight, so
    fp16 rounds once per overlapping tile, under a quarter of an 8-bit level), fp32 otherwise.
    A frame that fits in one tile runs whole: `module(x)` as it is."""
    n, channels, height, width = x.shape
    tile_h, tile_w = min(tiling.size, height), min(tiling.size, width)
    ys, xs = tile_starts(height, tile_h, tiling.overlap), tile_starts(width, tile_w, tiling.overlap)
    if len(ys) == len(xs) == 1:
        return module(x)
    weights_y = {y: _edge_weights(y, tile_h, height, tiling, scale, x.device) for y in ys}
    weights_x = {x0: _edge_weights(x0, tile_w, width, tiling, scale, x.device) for x0 in xs}
    total_y = torch.zeros(height * scale, dtype=torch.float32, device=x.device)
    total_x = torch.zeros(width * scale, dtype=torch.float32, device=x.device)
    for y, w in weights_y.items():
        total_y[y * scale : (y + tile_h) * scale] += w
    for x0, w in weights_x.items():
        total_x[x0 * scale : (x0 + tile_w) * scale] += w
    acc = torch.float16 if x.dtype == torch.float16 else torch.float32
    out = torch.zeros(n, channels, height * scale, width * scale, dtype=acc, device=x.device)
    jobs = [(i, y, x0) for y in ys for x0 in xs for i in range(n)]
    for first in range(0, len(jobs), tiling.batch_size):
        chunk = jobs[first : first + tiling.batch_size]
        tiles = torch.stack([x[i, :, y : y + tile_h, x0 : x0 + tile_w] for i, y, x0 in chunk])
        try:
            result = check_model_output(name, tiles, module(tiles), scale=scale, check_values=False)
        except ModelOutputError as exc:
            raise ModelOutputError(f"{exc} (tiled: tiles of {tile_w}x{tile_h} pixels)") from None
        for k, (i, y, x0) in enumerate(chunk):
            # Every output pixel has a positive total weight: each lies more than `context` input
            # pixels inside some tile's cut edges (tests/test_tiling.py checks every length up to
            # 80 pixels for tile sizes 16, 17, 20 and 31 with every overlap they allow).
            weight = ((weights_y[y] / total_y[y * scale : (y + tile_h) * scale])[:, None]
                      * (weights_x[x0] / total_x[x0 * scale : (x0 + tile_w) * scale])[None, :])
            out[i, :, y * scale : (y + tile_h) * scale, x0 * scale : (x0 + tile_w) * scale] += \
                (result[k].float() * weight).to(acc)
    return out
