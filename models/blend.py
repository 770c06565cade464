"""Built-in `blend`: frame interpolation by cross-fading, no weights.

What FFmpeg's `framerate` filter does: a made frame at time t between two frames is
`(1 - t) * first + t * second`. The cheap baseline beside RIFE, and the temporal model the
pipeline tests use (exact arithmetic, no weights to install).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["Blend"]


class Blend(nn.Module):
    """`forward(img0, img1, timesteps)`: (B, 3, H, W) twice -> (B, T, 3, H, W)."""

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timesteps: Sequence[float]) -> torch.Tensor:
        return torch.stack([img0 * (1 - t) + img1 * t for t in timesteps], dim=1)
