"""Moving frames between host and device, and into/out of the model's RGB form.

- `batch_to_rgb(items, ...)`: a list of decoded frames (host YUV planes, host rgb24,
  or device NV12/P010 tensors) -> one `(N, 3, H, W)` float tensor on the worker's
  device. Host planes are stacked straight into pinned memory and copied with one
  non-blocking copy per plane; device tensors from another GPU are copied peer to peer
  (non-blocking).
- `rgb_to_host_yuv420(rgb, ...)`: model output -> yuv420p uint8 planes in host memory,
  converted on the device (never rgb24 to a CPU encoder) and copied through pinned
  memory. Odd sizes are padded to even by repeating the last row/column, because
  4:2:0 encoders need even sizes (the output is then at most one pixel larger).
  `queue_host_yuv420(rgb, ...)` is its first half: the conversion and the copies queued on
  the current stream, nothing waited for (the worker's overlapped path, issue 12); its
  `HostYuv420.frames()` once that stream's work is done.
- `rgb_to_device_nv12(rgb, ...)`: the same for NVENC: NV12 stays on the device;
  `rgb_to_device_p010(rgb, ...)` for NVENC's 10-bit input (P010, uint16).
- `rgb_to_nv12_frames(rgb, ..., bit_depth=)`: those NV12 (8) or P010 (10) tensors as
  `CudaFrame`s, each with the CUDA event recorded after the conversion, so a consumer on
  another stream (the NVENC writer) can wait for exactly that work instead of reading a
  half-written frame.

Pinned host memory comes from torch's caching host allocator, so blocks are reused from
batch to batch, and safely: a block returns to the allocator only when its last tensor (and
every numpy view of it) is gone, and is handed out again only after the copies queued into
or out of it have run (the allocator records an event on the copying stream). The host
planes given to the writer are such views: the next batch never writes into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hw.color import ColorInfo, nv12_to_rgb, rgb_to_nv12, rgb_to_p010, rgb_to_yuv420, yuv_to_rgb

__all__ = ["batch_to_rgb", "batch_alpha", "rgb_to_host_rgb", "alpha_to_host", "rgb_to_host_yuv420", "queue_host_yuv420",
           "HostYuv420", "rgb_to_device_nv12", "rgb_to_device_p010",
           "rgb_to_nv12_frames", "CudaFrame",
           "pad_to_even", "to_8bit_rgb"]


def _host_to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(array)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


def _stack_to_device(arrays: Sequence[np.ndarray], device: torch.device, *, dtype=None) -> torch.Tensor:
    """`np.stack(arrays)`, as `dtype`, on `device`. On a GPU the arrays are stacked straight into
    pinned memory (one host copy, not two) and copied without blocking."""
    dtype = np.dtype(dtype or arrays[0].dtype)
    if device.type != "cuda":
        return torch.from_numpy(np.stack(arrays).astype(dtype, copy=False))
    torch_dtype = torch.from_numpy(np.empty((0,), dtype)).dtype
    host = torch.empty((len(arrays), *arrays[0].shape), dtype=torch_dtype, pin_memory=True)
    np.stack(arrays, out=host.numpy())  # uint16 -> int32 where asked: a safe cast
    return host.to(device, non_blocking=True)


def batch_to_rgb(items: Sequence, color: ColorInfo, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Decoded frames (each with .fmt, .planes, .bit_depth) -> RGB `(N, 3, H, W)` on `device`."""
    fmt = items[0].fmt
    if any(it.fmt != fmt for it in items):
        raise ValueError("a batch mixes frame formats")
    bit_depth = items[0].bit_depth
    if fmt == "yuv":
        planes = []
        for i in range(3):
            arrays = [it.planes[i] for it in items]
            # torch has no uint16 arithmetic on every device: 16-bit codes go as int32
            planes.append(_stack_to_device(arrays, device, dtype=np.int32 if arrays[0].dtype == np.uint16 else None))
        return yuv_to_rgb(planes[0], planes[1], planes[2], color, bit_depth=bit_depth, dtype=dtype)
    if fmt in ("rgb24", "rgb48"):  # pictures: 8- or 16-bit RGB (an alpha plane is `batch_alpha`'s)
        arrays = [it.planes[0] for it in items]
        top = 255.0 if fmt == "rgb24" else 65535.0
        stacked = _stack_to_device(arrays, device, dtype=np.int32 if arrays[0].dtype == np.uint16 else None)
        return (stacked.permute(0, 3, 1, 2).float() / top).to(dtype)
    if fmt == "nv12":
        frames = [_device_frame(it.planes[0], device) for it in items]
        height = frames[0].shape[0] * 2 // 3
        width = frames[0].shape[1]
        out = [nv12_to_rgb(f, color, height=height, width=width, bit_depth=bit_depth, dtype=dtype) for f in frames]
        return torch.cat(out, dim=0)
    raise ValueError(f"unknown frame format {fmt!r}")


def batch_alpha(items: Sequence, *, device: torch.device) -> torch.Tensor | None:
    """The alpha planes of RGBA pictures as `(N, 1, H, W)` float in [0, 1], or None."""
    if items[0].fmt not in ("rgb24", "rgb48") or len(items[0].planes) < 2:
        return None
    stacked = np.stack([it.planes[1] for it in items])
    top = 255.0 if stacked.dtype == np.uint8 else 65535.0
    return _host_to_device(stacked.astype(np.float32) / top, device)[:, None]


def rgb_to_host_rgb(rgb: torch.Tensor, *, bit_depth: int) -> list[np.ndarray]:
    """Model output `(N, 3, H, W)` -> per frame `(H, W, 3)` uint8 (8 bits) or uint16 (16 bits)
    host arrays, rounded to nearest (pictures: no YUV, no padding)."""
    top = 255.0 if bit_depth == 8 else 65535.0
    codes = rgb.float().clamp(0.0, 1.0).mul(top).round_().permute(0, 2, 3, 1)
    codes = codes.to(torch.uint8) if bit_depth == 8 else codes.to(torch.int32)
    host = codes.cpu().numpy()
    if bit_depth != 8:
        host = host.astype(np.uint16)
    return list(host)


def alpha_to_host(alpha: torch.Tensor, *, scale: int, bit_depth: int) -> list[np.ndarray]:
    """Alpha `(N, 1, H, W)` upscaled by `scale` with bicubic (not the model: a matte is not a
    picture) -> per frame `(H*s, W*s)` uint8/uint16 host arrays."""
    if scale != 1:
        alpha = F.interpolate(alpha.float(), scale_factor=scale, mode="bicubic", align_corners=False)
    top = 255.0 if bit_depth == 8 else 65535.0
    codes = alpha.clamp(0.0, 1.0).mul(top).round_()[:, 0]
    host = (codes.to(torch.uint8) if bit_depth == 8 else codes.to(torch.int32)).cpu().numpy()
    if bit_depth != 8:
        host = host.astype(np.uint16)
    return list(host)


def _device_frame(frame: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A decoded device frame, made safe to read on this thread's current stream.

    NVDEC frames are allocated on the decoder's copy stream; the caching allocator hands a
    freed block back to the stream it was allocated on at once, so without `record_stream`
    the decoder could copy its next frame into memory our kernels are still reading (seen on
    an H100: about 1% of the pixels of a --nvdec run differed from the CPU-decode run).
    `record_stream` makes the allocator wait for our stream's work first. A frame on another
    GPU is copied here (that copy reads on its device's current stream, recorded too)."""
    if frame.is_cuda:
        frame.record_stream(torch.cuda.current_stream(frame.device))
    return frame.to(device, non_blocking=True)


def pad_to_even(rgb: torch.Tensor) -> torch.Tensor:
    """Repeat the last row/column so height and width are even (4:2:0 needs it)."""
    height, width = rgb.shape[-2:]
    pad_h, pad_w = height % 2, width % 2
    if not (pad_h or pad_w):
        return rgb
    return F.pad(rgb, (0, pad_w, 0, pad_h), mode="replicate")


def to_8bit_rgb(rgb: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to the nearest of 256 levels (not truncate), back in [0, 1]."""
    return rgb.float().clamp(0.0, 1.0).mul(255.0).round_().div_(255.0)


def rgb_to_host_yuv420(rgb: torch.Tensor, color: ColorInfo, *, bit_depth: int = 8
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Model output `(N, 3, H, W)` -> per frame (Y, U, V) numpy planes (sizes made even): uint8
    codes for 8 bits, uint16 codes (low bits, yuv420p10le's layout) for 10. At 8 bits the RGB is
    rounded to 8 bits first (as before, matching what an 8-bit RGB file would hold); at 10 bits
    the float output goes straight to 10-bit codes, never through 8 bits."""
    queued = queue_host_yuv420(rgb, color, bit_depth=bit_depth)
    if rgb.is_cuda:
        torch.cuda.current_stream(rgb.device).synchronize()
    return queued.frames()


@dataclass(frozen=True, eq=False)
class HostYuv420:
    """A batch's Y, U, V codes `(N, h, w)` in host memory (pinned for a GPU batch), perhaps still
    being copied there: call `frames()` only once the stream that queued the copies is done."""

    y: torch.Tensor
    u: torch.Tensor
    v: torch.Tensor
    bit_depth: int

    def frames(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per frame (Y, U, V) numpy planes: at 8 bits views of the pinned buffers (they live as
        long as a view does), at 10 bits uint16 copies."""
        yn, un, vn = self.y.numpy(), self.u.numpy(), self.v.numpy()
        if self.bit_depth != 8:
            yn, un, vn = (p.astype(np.uint16) for p in (yn, un, vn))
        return [(yn[i], un[i], vn[i]) for i in range(yn.shape[0])]

    def __repr__(self) -> str:
        return f"HostYuv420({tuple(self.y.shape)}, {self.bit_depth}-bit)"


def queue_host_yuv420(rgb: torch.Tensor, color: ColorInfo, *, bit_depth: int = 8) -> HostYuv420:
    """`rgb_to_host_yuv420` without the wait: the conversion and the copies into fresh pinned
    buffers are queued on the current stream; nothing is read."""
    if bit_depth == 8:
        y, u, v = rgb_to_yuv420(pad_to_even(to_8bit_rgb(rgb)), color)
    else:
        y, u, v = rgb_to_yuv420(pad_to_even(rgb), color, bit_depth=bit_depth)  # int16 codes
    if y.device.type == "cuda":
        host = []
        for plane in (y, u, v):
            buf = torch.empty(plane.shape, dtype=plane.dtype, pin_memory=True)
            buf.copy_(plane, non_blocking=True)
            host.append(buf)
        y, u, v = host
    return HostYuv420(y, u, v, bit_depth)


def rgb_to_device_nv12(rgb: torch.Tensor, color: ColorInfo) -> list[torch.Tensor]:
    """Model output `(N, 3, H, W)` -> per frame NV12 `(H*3/2, W)` uint8 device tensors."""
    nv12 = rgb_to_nv12(pad_to_even(to_8bit_rgb(rgb)), color)
    return list(nv12.unbind(0))


def rgb_to_device_p010(rgb: torch.Tensor, color: ColorInfo) -> list[torch.Tensor]:
    """Model output `(N, 3, H, W)` -> per frame P010 `(H*3/2, W)` uint16 device tensors (10-bit
    codes in the high bits), sizes made even. The float output goes straight to 10-bit codes."""
    p010 = rgb_to_p010(pad_to_even(rgb), color)
    return list(p010.unbind(0))


@dataclass(frozen=True, eq=False)
class CudaFrame:
    """A device tensor and the CUDA event after which its contents are complete.

    The producer records `ready` on the stream that wrote `tensor`; a consumer on any other
    stream waits on it (`stream.wait_event(ready)`) before reading. `ready` is None for a
    CPU tensor, or when the producer has already synchronized. The consumer also keeps the
    frame alive until its own reads are done (the caching allocator may otherwise give the
    memory to the producer's next batch).
    """

    tensor: torch.Tensor
    ready: Any = None  # torch.cuda.Event | None

    def __post_init__(self) -> None:
        if not isinstance(self.tensor, torch.Tensor):
            raise TypeError(f"CudaFrame.tensor must be a torch.Tensor, got {type(self.tensor).__name__}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)

    @property
    def device(self) -> torch.device:
        return self.tensor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.tensor.dtype

    def __repr__(self) -> str:
        return f"CudaFrame({tuple(self.tensor.shape)} {self.tensor.dtype} on {self.tensor.device}, " \
               f"{'with' if self.ready is not None else 'no'} ready event)"


def rgb_to_nv12_frames(rgb: torch.Tensor, color: ColorInfo, *, bit_depth: int = 8) -> list[CudaFrame]:
    """`rgb_to_device_nv12` (bit_depth 8) or `rgb_to_device_p010` (10), each frame with the event
    recorded after its conversion.

    The event is recorded on the current stream of `rgb`'s device (the worker's stream), right
    after the conversion was queued there; one event serves the whole batch.
    """
    if bit_depth not in (8, 10):
        raise ValueError(f"NVENC takes 8-bit NV12 or 10-bit P010 frames, not {bit_depth}-bit")
    frames = rgb_to_device_nv12(rgb, color) if bit_depth == 8 else rgb_to_device_p010(rgb, color)
    ready = None
    if rgb.is_cuda:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(rgb.device))
    return [CudaFrame(f, ready) for f in frames]
