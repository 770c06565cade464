"""Reading outputs back in tests: frames, indices, timestamps, streams, colour tags."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np

from hw.clips import read_index


def frames_rgb(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def frames_yuv(path: Path) -> list[np.ndarray]:
    """Decoded yuv420p planes, flattened: compares outputs exactly (no RGB conversion)."""
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


def indices(path: Path) -> list[int]:
    return [read_index(f) for f in frames_rgb(path)]


def pts_seconds(path: Path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [float(f.pts * s.time_base) for f in c.decode(s)]


def streams(path: Path) -> list[tuple[str, str]]:
    with av.open(str(path)) as c:
        return [(s.type, s.codec_context.name) for s in c.streams]


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        chosen = [s for s in c.streams if s.type == kind]
        return [bytes(p) for p in c.demux(*chosen) if p.size]


def color_tags(path: Path) -> tuple[int, int, int, int]:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return (cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range)


def video_size(path: Path) -> tuple[int, int]:
    with av.open(str(path)) as c:
        cc = c.streams.video[0].codec_context
        return cc.width, cc.height
