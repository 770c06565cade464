"""The encoder protocol: what the writer stage drives, whoever encodes.

Implemented by `hw.av_encode.PyAVWriter` (CPU: yuv420p host planes) and
`hw.nvenc_writer.NvencFileWriter` (NVENC: one NV12 device frame).
"""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Protocol

__all__ = ["Encoder"]


class Encoder(Protocol):
    """Encodes frames in order into one output file."""

    def write(self, planes: tuple[Any, ...], pts: int) -> None:
        """Encode one frame (its planes, in the writer's format) at source timestamp `pts`."""

    def close(self, *, complete: bool, last_frame_seconds: Fraction | None = None) -> None:
        """Flush and finalize the file (playable); `complete`: the whole source went through,
        so the audio is copied to its end, else cut at the last video frame; `last_frame_seconds`:
        how long the last frame shows (None: one frame at the stream's frame rate). Idempotent."""
