"""Moving a split model's intermediate tensors from one device to another (`--split-gpu`).

Two ways, `--split-transport`:
- `p2p`: `tensor.to(other_device)`; between GPUs with peer access a device-to-device copy
  (NVLink/PCIe), else CUDA stages it through host memory. The copy is enqueued on the
  sender's stream and waited for before the tensors are handed over, so the receiver's
  stream never reads a half-copied tensor.
- `bytes`: every tensor packed into one `bytes` object (a small header per tensor: dtype,
  shape, byte count; then the raw little-endian data) and unpacked on the other side: the
  form a network hop between machines would carry, exact for every dtype (bf16 included).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

import torch

__all__ = ["pack", "unpack", "send", "receive", "TRANSPORTS"]

TRANSPORTS = ("p2p", "bytes")

_MAGIC = b"FPT1"
# dtypes as raw bytes: each by name, and the same-sized integer type its bits travel as
_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "uint8": torch.uint8, "bool": torch.bool,
}
_AS_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
            torch.float64: torch.int64}


def pack(tensors: Sequence[torch.Tensor]) -> bytes:
    """The tensors (on any device) as one bytes object; `unpack` gives them back exactly."""
    header, blobs = [], []
    for t in tensors:
        name = str(t.dtype).removeprefix("torch.")
        if name not in _DTYPES:
            raise TypeError(f"cannot pack a {t.dtype} tensor")
        host = t.detach().contiguous().cpu()
        raw = host.view(_AS_BITS[t.dtype]) if t.dtype in _AS_BITS else host
        blob = raw.numpy().tobytes()
        header.append({"dtype": name, "shape": list(t.shape), "bytes": len(blob)})
        blobs.append(blob)
    head = json.dumps(header).encode()
    return b"".join([_MAGIC, struct.pack("<I", len(head)), head, *blobs])


def unpack(data: bytes, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
    """The tensors `pack` packed, on `device`."""
    if data[:4] != _MAGIC:
        raise ValueError("not a packed tensor message")
    (size,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8 : 8 + size])
    at, out = 8 + size, []
    buffer = bytearray(data)  # writable: torch.frombuffer would warn on bytes
    for entry in header:
        dtype = _DTYPES[entry["dtype"]]
        n = entry["bytes"]
        bits = _AS_BITS.get(dtype, dtype)
        t = torch.frombuffer(buffer, dtype=bits, count=n // bits.itemsize, offset=at) if n else torch.empty(0, dtype=bits)
        t = t.view(dtype) if bits is not dtype else t
        out.append(t.reshape(entry["shape"]).to(device))
        at += n
    return tuple(out)


def send(tensors: Sequence[torch.Tensor], device: torch.device, transport: str) -> tuple[torch.Tensor, ...] | bytes:
    """Hand `tensors` toward `device`: p2p copies them there now (and waits for the copy);
    bytes packs them (the receiver calls `receive`)."""
    if transport == "bytes":
        return pack(tensors)
    if transport != "p2p":
        raise ValueError(f"unknown transport {transport!r}: use {' or '.join(TRANSPORTS)}")
    moved = tuple(t.to(device, non_blocking=True) for t in tensors)
    for t in tensors:
        if t.is_cuda:
            torch.cuda.current_stream(t.device).synchronize()
            break
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()
    return moved


def receive(message: tuple[torch.Tensor, ...] | bytes, device: torch.device) -> tuple[torch.Tensor, ...]:
    if isinstance(message, (bytes, bytearray)):
        return unpack(message, device)
    return message
