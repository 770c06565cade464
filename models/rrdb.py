"""RRDBNet (ESRGAN), the architecture of realesrgan-x4plus and realesrgan-x4plus-anime.

The network of ESRGAN / Real-ESRGAN (Xintao Wang et al., BSD-3-Clause), laid out as spandrel's
"old architecture" copy (`model.0`, `model.1.sub.N.RDBk.convj.0`, `model.3` ...), so the
converted weights load into either. framepipe builds its built-in RRDBNet models from this file
rather than from spandrel, whose import loads every architecture it knows (torchvision,
torch._dynamo, sympy: 5-7 s before the first frame on the H100 host, benchmarks/RESULTS.md).
Only the variant the built-ins use: 3 channels in and out, nearest-upsample + conv ("upconv")
for x2/x4 (no pixel-unshuffle), leaky ReLU 0.2. tests/test_models.py checks it against
spandrel's output for the same weights.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RRDBNet"]


def _conv(in_ch: int, out_ch: int, *, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, 3, 1, 1)]
    if act:
        layers.append(nn.LeakyReLU(0.2, inplace=True))
    return nn.Sequential(*layers)


class _DenseBlock(nn.Module):
    """ResidualDenseBlock_5C: five convolutions, each seeing every earlier output."""

    def __init__(self, nf: int, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv(nf, gc, act=True)
        self.conv2 = _conv(nf + gc, gc, act=True)
        self.conv3 = _conv(nf + 2 * gc, gc, act=True)
        self.conv4 = _conv(nf + 3 * gc, gc, act=True)
        self.conv5 = _conv(nf + 4 * gc, nf, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(torch.cat((x, x1), 1))
        x3 = self.conv3(torch.cat((x, x1, x2), 1))
        x4 = self.conv4(torch.cat((x, x1, x2, x3), 1))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class _RRDB(nn.Module):
    def __init__(self, nf: int) -> None:
        super().__init__()
        self.RDB1, self.RDB2, self.RDB3 = _DenseBlock(nf), _DenseBlock(nf), _DenseBlock(nf)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class _Shortcut(nn.Module):
    def __init__(self, sub: nn.Module) -> None:
        super().__init__()
        self.sub = sub

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.sub(x)


class RRDBNet(nn.Module):
    def __init__(self, *, in_nc: int = 3, out_nc: int = 3, num_filters: int = 64, num_blocks: int = 23,
                 scale: int = 4) -> None:
        super().__init__()
        if scale not in (1, 2, 4, 8):
            raise ValueError(f"RRDBNet here upsamples by 1, 2, 4 or 8, not {scale}")
        nf = num_filters
        body = nn.Sequential(*(_RRDB(nf) for _ in range(num_blocks)), nn.Conv2d(nf, nf, 3, 1, 1))
        upsample: list[nn.Module] = []
        for _ in range(scale.bit_length() - 1):  # x2 per step: nearest, conv, leaky ReLU
            upsample += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(nf, nf, 3, 1, 1),
                         nn.LeakyReLU(0.2, inplace=True)]
        self.scale = scale
        self.model = nn.Sequential(nn.Conv2d(in_nc, nf, 3, 1, 1), _Shortcut(body), *upsample,
                                   nn.Conv2d(nf, nf, 3, 1, 1), nn.LeakyReLU(0.2, inplace=True),
                                   nn.Conv2d(nf, out_nc, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
