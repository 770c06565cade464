"""SRVGGNetCompact, the architecture of realesr-animevideov3 (the default model).

The network of Real-ESRGAN (Xintao Wang et al., BSD-3-Clause), with the module and parameter
names of spandrel's copy (`body.N`), so the converted weights load into either. framepipe
builds the default model from this file rather than from spandrel: importing spandrel loads
every architecture it knows (torchvision, torch._dynamo, sympy): 5-7 s of the time to the
first frame on the H100 host (benchmarks/RESULTS.md). User models still go through spandrel;
tests/test_models.py checks this class gives spandrel's output for the same weights.
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SRVGGNetCompact"]


def _activation(act_type: str, num_feat: int) -> nn.Module:
    if act_type == "relu":
        return nn.ReLU(inplace=True)
    if act_type == "prelu":
        return nn.PReLU(num_parameters=num_feat)
    if act_type == "leakyrelu":
        return nn.LeakyReLU(negative_slope=0.1, inplace=True)
    raise ValueError(f"unknown act_type {act_type!r} (relu, prelu, leakyrelu)")


class SRVGGNetCompact(nn.Module):
    """Conv + activation, `num_conv` times more, a last conv to `num_out_ch * upscale**2`
    channels, pixel shuffle; plus the input upscaled by nearest neighbour (the net learns the
    residual)."""

    def __init__(self, *, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4, act_type: str = "prelu") -> None:
        super().__init__()
        self.upscale = upscale
        self.body = nn.ModuleList([nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), _activation(act_type, num_feat)])
        for _ in range(num_conv):
            self.body.append(nn.Conv2d(num_feat, num_feat, 3, 1, 1))
            self.body.append(_activation(act_type, num_feat))
        self.body.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.upsampler = nn.PixelShuffle(upscale)

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        out = self.upsampler(out)
        return out + F.interpolate(x, scale_factor=self.upscale, mode="nearest")
