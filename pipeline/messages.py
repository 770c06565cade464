"""Messages that travel between stages: small frozen dataclasses that check themselves.

Queues carry `FrameItem` (reader -> workers), `ResultItem` (workers -> collector ->
writer) and the one end-of-stream sentinel `END`. Failures never travel on data
queues: a stage posts `StageFailed` on the runner's error channel instead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = ["FrameItem", "ResultItem", "EndOfStream", "END", "StageFailed", "ErrorChannel", "InputFormat", "OutputFormat"]

InputFormat = Literal["yuv", "rgb24", "nv12"]
OutputFormat = Literal["yuv420p", "nv12"]


def _shapes(planes: tuple[Any, ...]) -> str:
    parts = []
    for p in planes:
        shape = tuple(getattr(p, "shape", ()))
        device = getattr(p, "device", None)
        parts.append(f"{shape}" + (f"@{device}" if device is not None and str(device) != "cpu" else ""))
    return ", ".join(parts)


@dataclass(frozen=True)
class FrameItem:
    """One decoded source frame.

    `index` counts decoded frames from 0 in presentation order; `pts` is the source
    timestamp in the video stream's time base. `planes` is (Y, U, V) integer arrays
    for "yuv" (subsampling read from the shapes; codes in the low bits), one
    (H, W, 3) uint8 array for "rgb24", or one (H*3/2, W) device tensor for "nv12"
    (uint16 P010 when `bit_depth` > 8).
    """

    index: int
    pts: int
    fmt: InputFormat
    planes: tuple[Any, ...]
    bit_depth: int = 8

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"FrameItem.index must be >= 0, got {self.index}")
        expected = {"yuv": 3, "rgb24": 1, "nv12": 1}.get(self.fmt)
        if expected is None:
            raise ValueError(f"FrameItem.fmt must be yuv, rgb24 or nv12, got {self.fmt!r}")
        if len(self.planes) != expected:
            raise ValueError(f"FrameItem {self.fmt} needs {expected} plane(s), got {len(self.planes)}")
        if self.bit_depth not in (8, 10, 12, 16):
            raise ValueError(f"FrameItem.bit_depth must be 8, 10, 12 or 16, got {self.bit_depth}")

    def __repr__(self) -> str:
        return f"FrameItem(#{self.index}, pts={self.pts}, {self.fmt}{self.bit_depth} [{_shapes(self.planes)}])"


@dataclass(frozen=True)
class ResultItem:
    """One processed frame, ready to encode: yuv420p host planes, or one NV12 device frame
    (`hw.frames.CudaFrame`: the tensor and the CUDA event after which it is complete; the
    consumer waits on that event before reading it on another stream)."""

    index: int
    pts: int
    fmt: OutputFormat
    planes: tuple[Any, ...]
    worker: str = ""

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"ResultItem.index must be >= 0, got {self.index}")
        expected = {"yuv420p": 3, "nv12": 1}.get(self.fmt)
        if expected is None:
            raise ValueError(f"ResultItem.fmt must be yuv420p or nv12, got {self.fmt!r}")
        if len(self.planes) != expected:
            raise ValueError(f"ResultItem {self.fmt} needs {expected} plane(s), got {len(self.planes)}")

    def __repr__(self) -> str:
        return f"ResultItem(#{self.index}, pts={self.pts}, {self.fmt} [{_shapes(self.planes)}], by {self.worker or '?'})"


class EndOfStream:
    """The type of `END`, the one end-of-stream sentinel. Compare with `is END`."""

    _instance: "EndOfStream | None" = None

    def __new__(cls) -> "EndOfStream":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "END"


END: Final = EndOfStream()


@dataclass(frozen=True)
class StageFailed:
    """Posted on the error channel by a stage whose body raised."""

    stage: str
    exc: BaseException

    def __repr__(self) -> str:
        return f"StageFailed({self.stage!r}, {type(self.exc).__name__}: {self.exc})"


class ErrorChannel:
    """The run's one error channel. Posting a failure sets the stop event at once, so
    every stage (the writer deciding whether the run was complete included) sees a failed
    run as stopped before any end-of-stream that follows the failure reaches it."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self._lock = threading.Lock()
        self._failures: list[StageFailed] = []

    def post(self, stage: str, exc: BaseException) -> None:
        with self._lock:
            self._failures.append(StageFailed(stage, exc))
        self.stop.set()

    def first(self) -> StageFailed | None:
        with self._lock:
            return self._failures[0] if self._failures else None
