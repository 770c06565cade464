"""Reading outputs back in tests: frames, indices, timestamps, streams, colour tags."""

from __future__ import annotations

from fractions import Fraction
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


def pts_exact(path: Path) -> list[Fraction]:
    """Each decoded video frame's timestamp in seconds, exactly (no float rounding)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [f.pts * Fraction(s.time_base) for f in c.decode(s)]


def planes_yuv420(path: Path) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The decoded (Y, U, V) planes of each frame of a yuv420p video, as stored (no conversion)."""
    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            assert f.format.name in ("yuv420p", "yuvj420p"), f.format.name
            width, height = f.width, f.height
            shapes = [(height, width), ((height + 1) // 2, (width + 1) // 2), ((height + 1) // 2, (width + 1) // 2)]
            planes = []
            for plane, (h, w) in zip(f.planes, shapes):
                rows = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)
                planes.append(rows[:h, :w].copy())
            out.append(tuple(planes))
    return out


def packet_times(path: Path, kind: str) -> list[tuple[Fraction | None, Fraction | None, Fraction, bytes]]:
    """Each packet of the `kind` streams: (pts, dts, duration) in seconds, exactly, and its bytes."""
    def seconds(ts, tb):
        return None if ts is None else ts * Fraction(tb)

    with av.open(str(path)) as c:
        chosen = [s for s in c.streams if s.type == kind]
        return [(seconds(p.pts, p.time_base), seconds(p.dts, p.time_base), seconds(p.duration or 0, p.time_base), bytes(p))
                for p in c.demux(*chosen) if p.size]


def video_start(path: Path) -> Fraction:
    """The first video timestamp in seconds (a muxer may shift every stream by one constant)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return min(p.pts for p in c.demux(s) if p.size and p.pts is not None) * Fraction(s.time_base)


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


def assert_same_video(a: Path, b: Path) -> None:
    """The same frames (YUV, bit for bit) at the same exact timestamps."""
    fa, fb = frames_yuv(a), frames_yuv(b)
    assert len(fa) == len(fb)
    for k, (x, y) in enumerate(zip(fa, fb)):
        assert np.array_equal(x, y), f"frame {k} differs"
    assert pts_exact(a) == pts_exact(b)


def skip_only_where_the_gpu_refuses(exc: Exception, path: Path, gpu: int = 0) -> None:
    """A GPU test's NvDecoder raised HardwareUnavailable: skip where the GPU's own caps (or a
    missing PyNvVideoCodec) refuse the stream, as the plan would fall back; fail where they
    accept it. Skipping on any refusal let a bug that made NVDEC wrongly "unavailable" pass as
    a skip on a GPU host."""
    import pytest

    from hw.av_source import probe_source
    from hw.nv_probe import probe_nvdec

    info = probe_source(path)
    ok, why = probe_nvdec(codec=info.codec, bit_depth=info.bit_depth, chroma_format=info.chroma_format or "420",
                          width=info.width, height=info.height, gpu=gpu)
    if not ok:
        pytest.skip(why)
    pytest.fail(f"NVDEC's caps accept {path.name}, but NvDecoder refused it: {exc}")
