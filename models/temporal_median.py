"""Built-in `temporal-median`: a restoration model over a window of frames, no weights.

Each pixel becomes the median of itself and the same pixel in the `radius` frames before and
after: grain, sparkle and one-frame dropouts that change from frame to frame go, what stays
put stays sharp (moving edges smear: a denoiser for static shots, scans and screen captures).
The simplest member of the restoration kind (`models.base`: 2r+1 frames in, 1 out), and the
one the window tests use.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TemporalMedian"]


class TemporalMedian(nn.Module):
    """`forward(x)`: (B, 2r+1, C, H, W) -> (B, C, H, W), the median over the window."""

    def __init__(self, radius: int = 1) -> None:
        super().__init__()
        self.radius = radius

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != 2 * self.radius + 1:
            raise ValueError(f"temporal-median takes (B, {2 * self.radius + 1}, C, H, W), got {tuple(x.shape)}")
        return x.median(dim=1).values

    def extra_repr(self) -> str:
        return f"radius={self.radius}"
