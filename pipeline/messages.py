"""Messages between stages, and the one error channel.

Between the workers, the collector and the writer travel `ResultItem`s and the one
end-of-stream sentinel `END` (the reader hands the workers `core.frame.Frame`s). Small
frozen dataclasses that check themselves, with a `__repr__` that shows shapes, not pixels.
Failures never travel on data queues: a stage's failure is posted on the run's
`ErrorChannel` (by its `StageRunner`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Final, Literal

from core.frame import describe_planes

__all__ = ["ResultItem", "EndOfStream", "END", "StageFailed", "ErrorChannel", "OutputFormat"]

# nv12 / p010: one device frame for NVENC, 8-bit NV12 or 10-bit P010 (uint16, codes in the high bits).
OutputFormat = Literal["yuv420p", "yuv420p10", "nv12", "p010", "rgb24", "rgb48", "none"]  # none: --output-mode none
# How many planes a result of each format holds (rgb: an alpha plane may follow; none: the
# model's output was dropped, --output-mode none).
_PLANES: dict[str, tuple[int, ...]] = {"yuv420p": (3,), "yuv420p10": (3,), "nv12": (1,), "p010": (1,), "rgb24": (1, 2),
                                       "rgb48": (1, 2), "none": (0,)}


@dataclass(frozen=True)
class ResultItem:
    """One processed frame, ready to encode: yuv420p host planes (uint8, or uint16 codes for
    yuv420p10), an NV12 or P010 device frame, or for picture output an (H, W, 3) RGB host array
    (uint8 rgb24, uint16 rgb48) and optionally its (H, W) alpha."""

    index: int
    pts: int
    fmt: OutputFormat
    planes: tuple[Any, ...]
    worker: str = ""
    # Frames made between this one and the next (frame interpolation): (pts, planes) each, in
    # order, the same format; they are written right after this frame.
    extra: tuple[tuple[int, tuple[Any, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"ResultItem.index must be >= 0, got {self.index}")
        expected = _PLANES.get(self.fmt)
        if expected is None:
            names = list(_PLANES)
            raise ValueError(f"ResultItem.fmt must be {', '.join(names[:-1])} or {names[-1]}, got {self.fmt!r}")
        if len(self.planes) not in expected:
            raise ValueError(f"ResultItem {self.fmt} needs {' or '.join(map(str, expected))} plane(s), got {len(self.planes)}")

        for pts, planes in self.extra:
            if len(planes) not in expected or pts <= self.pts:
                raise ValueError(f"ResultItem #{self.index}: a frame made after it needs {expected[0]} plane(s) and a "
                                 f"later pts than {self.pts}, got {len(planes)} plane(s) at pts {pts}")

    def frames(self) -> list[tuple[int, tuple[Any, ...]]]:
        """(pts, planes) of every frame this item writes: its own, then those made after it."""
        return [(self.pts, self.planes), *self.extra]

    def __repr__(self) -> str:
        more = f" +{len(self.extra)} made" if self.extra else ""
        return (f"ResultItem(#{self.index}, pts={self.pts}, {self.fmt} [{describe_planes(self.planes)}]{more}, "
                f"by {self.worker or '?'})")


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
    """A stage's failure, as posted on the error channel."""

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
