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

__all__ = ["RRDBNet", "split_point"]


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

    def split_stages(self, *, num_blocks_a: int | None = None) -> tuple[nn.Module, nn.Module]:
        """(stage_a, stage_b) over this module's own parameters (disjoint, not copies):
        `stage_a(x) -> (feat0, h)`, the first convolution's output and what the first
        `num_blocks_a` RRDB blocks make of it; `stage_b(feat0, h)` runs the other blocks, the body's
        last convolution, the shortcut and the upsampling: `forward(x)` bit for bit in fp32.
        Default: the cut that balances compute (`split_point`)."""
        body = self.model[1].sub
        num_blocks = len(body) - 1
        nf = self.model[0].out_channels
        k = split_point(num_blocks, scale=self.scale, nf=nf) if num_blocks_a is None else num_blocks_a
        if not 0 <= k <= num_blocks:
            raise ValueError(f"num_blocks_a must be 0-{num_blocks}, got {num_blocks_a}")
        return _Front(self.model[0], body[:k]), _Back(body[k:], self.model[2:])


# Multiply-adds per input pixel with 64 filters: an RRDB block is 15 convolutions (3 dense
# blocks of 64+32k -> 32 channels, k = 0..3, and 192 -> 64) = 718,848; after the blocks come
# the body's last convolution (36,864), the upsampling convolutions at 4x and 16x the pixels
# and the last two, at 16x (1,354,752 together at x4): the tail weighs about 1.9 blocks. So the
# balanced cut is past the middle: realesrgan-x4plus (23 blocks) 12 : 11 + tail (48% : 52%),
# realesrgan-x4plus-anime (6 blocks) 4 : 2 + tail (50% : 50%; half the blocks, 3, would give
# 38% : 62%).
def _macs_per_pixel(scale: int, nf: int = 64, gc: int = 32) -> tuple[int, int, int]:
    """(first conv, one RRDB block, everything after the blocks), per input pixel."""
    dense = 9 * (sum((nf + i * gc) * gc for i in range(4)) + (nf + 4 * gc) * nf)
    tail, pixels = 9 * nf * nf, 1  # the body's last convolution
    for _ in range(scale.bit_length() - 1):
        pixels *= 4
        tail += 9 * nf * nf * pixels
    tail += 9 * nf * nf * pixels + 9 * nf * 3 * pixels  # conv_hr, conv_last
    return 9 * 3 * nf, 3 * dense, tail


def split_point(num_blocks: int, *, scale: int = 4, nf: int = 64) -> int:
    """How many RRDB blocks stage a runs so that the slower stage is as fast as it can be."""
    first, block, tail = _macs_per_pixel(scale, nf)
    return min(range(num_blocks + 1), key=lambda k: max(first + k * block, (num_blocks - k) * block + tail))


class _Front(nn.Module):
    def __init__(self, conv_first: nn.Module, blocks: nn.Sequential) -> None:
        super().__init__()
        self.conv_first, self.blocks = conv_first, blocks

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat0 = self.conv_first(x)
        return feat0, self.blocks(feat0)


class _Back(nn.Module):
    def __init__(self, rest_of_body: nn.Sequential, upsampling: nn.Sequential) -> None:
        super().__init__()
        self.rest_of_body, self.upsampling = rest_of_body, upsampling

    def forward(self, feat0: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.upsampling(feat0 + self.rest_of_body(h))  # _Shortcut: x + sub(x)
