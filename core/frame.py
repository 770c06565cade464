"""`Frame`: one decoded source frame, the one type from the decoders to the workers.

Both decoders (PyAV on the CPU, NVDEC on a GPU) yield `Frame`s; the reader passes them
on, the workers batch them. A small frozen dataclass that checks itself, with a
`__repr__` that shows shapes, not pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Frame", "FrameFormat", "Window"]

FrameFormat = Literal["yuv", "rgb24", "rgb48", "nv12"]
_NUM_PLANES = {"yuv": (3,), "rgb24": (1, 2), "rgb48": (1, 2), "nv12": (1,)}


def describe_planes(planes: tuple[Any, ...]) -> str:
    """'(48, 64)@cuda:0, (24, 32)': shapes (and a device other than the CPU), never values."""
    parts = []
    for p in planes:
        p = getattr(p, "tensor", p)  # a CudaFrame shows its tensor
        shape = tuple(getattr(p, "shape", ()))
        device = getattr(p, "device", None)
        parts.append(f"{shape}" + (f"@{device}" if device is not None and str(device) != "cpu" else ""))
    return ", ".join(parts)


@dataclass(frozen=True)
class Frame:
    """One decoded source frame.

    `index` counts decoded frames from 0 in presentation order; `pts` is the source
    timestamp in the video stream's time base. `planes` is (Y, U, V) integer arrays for
    "yuv" (subsampling read from the shapes; codes in the low bits), one (H, W, 3) uint8
    array for "rgb24" (uint16 for "rgb48", a 16-bit picture), optionally followed by an
    (H, W) alpha plane of the same type, or one (H*3/2, W) device tensor for "nv12" (uint16 P016 with the
    codes in the high bits when `bit_depth` > 8).

    `neighbour`: a frame outside the part of the video the run processes (before --start, at or
    past --end or --max-frames), decoded only to stand beside a kept frame in a temporal model's
    `Window`, never processed or written itself. Its index continues the kept frames'
    numbering (negative before the first), so a batch's frames stay apart by index.
    """

    index: int
    pts: int
    fmt: FrameFormat
    planes: tuple[Any, ...]
    bit_depth: int = 8
    neighbour: bool = False

    def __post_init__(self) -> None:
        if self.index < 0 and not self.neighbour:
            raise ValueError(f"Frame.index must be >= 0, got {self.index}")
        expected = _NUM_PLANES.get(self.fmt)
        if expected is None:
            raise ValueError(f"Frame.fmt must be yuv, rgb24, rgb48 or nv12, got {self.fmt!r}")
        if len(self.planes) not in expected:
            raise ValueError(f"Frame {self.fmt} needs {' or '.join(map(str, expected))} plane(s), got {len(self.planes)}")
        if self.bit_depth not in (8, 10, 12, 16):
            raise ValueError(f"Frame.bit_depth must be 8, 10, 12 or 16, got {self.bit_depth}")

    def __repr__(self) -> str:
        kind = "Neighbour" if self.neighbour else "Frame"
        return f"{kind}(#{self.index}, pts={self.pts}, {self.fmt}{self.bit_depth} [{describe_planes(self.planes)}])"


@dataclass(frozen=True)
class Window:
    """The frames a temporal model needs for one source frame (`LoadedModel.kind`/`.temporal`).

    `index`/`pts` are the frame's own (the work queue, the collector and the segments count
    source frames); `frames` are its neighbours in order, `frames[center]` being the frame
    itself. At the ends of the video a restoration window repeats the first/last frame; an
    interpolation window (the frame and the next) holds the frame alone for the last one.
    """

    index: int
    pts: int
    frames: tuple[Frame, ...]
    center: int = 0

    def __post_init__(self) -> None:
        if not self.frames or not 0 <= self.center < len(self.frames):
            raise ValueError(f"Window #{self.index}: center {self.center} outside its {len(self.frames)} frame(s)")
        me = self.frames[self.center]
        if me.index != self.index or me.pts != self.pts:
            raise ValueError(f"Window #{self.index}: its center frame is #{me.index}")

    @property
    def frame(self) -> Frame:
        return self.frames[self.center]

    @property
    def fmt(self) -> FrameFormat:
        return self.frame.fmt

    @property
    def bit_depth(self) -> int:
        return self.frame.bit_depth

    def __repr__(self) -> str:
        return f"Window(#{self.index}, frames {[f.index for f in self.frames]})"
