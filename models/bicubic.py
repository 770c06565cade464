"""Built-in `bicubic` model: plain bicubic upscaling, no weights.

The CPU baseline and the fast model the pipeline tests use. Also provides `ResizeOutput`,
which brings an x4 model's output to a smaller `--scale` with the same bicubic resize
(align_corners=False, A=-0.75, no antialias) as the reference ncnn x2/x3 graphs' final
`Interp` layer (resize_type 3 = bicubic, align_corner 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Bicubic", "ResizeOutput", "BICUBIC_SCALES"]

BICUBIC_SCALES: tuple[int, ...] = tuple(range(1, 9))


class Bicubic(nn.Module):
    """`forward(x)`: (N, C, H, W) → (N, C, H*scale, W*scale), bicubic, not clamped."""

    def __init__(self, *, scale: int) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return x.clone()
        height, width = x.shape[-2:]
        return F.interpolate(
            x, size=(height * self.scale, width * self.scale), mode="bicubic", align_corners=False
        )

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


class ResizeOutput(nn.Module):
    """Runs `inner` (native scale `inner_scale`), then bicubic-resizes its output to
    `scale` times the input size."""

    def __init__(self, inner: nn.Module, *, scale: int) -> None:
        super().__init__()
        self.inner = inner
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        y = self.inner(x)
        return F.interpolate(
            y, size=(height * self.scale, width * self.scale), mode="bicubic", align_corners=False
        )

    def extra_repr(self) -> str:
        return f"scale={self.scale}"
