"""Annex-B H.264/HEVC byte streams: NAL units, parameter sets, keyframes (the NVENC writer's reading).

Broken internal contracts (a codec this module does not parse) raise `ValueError`.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["split_annexb", "annexb_parameter_sets", "annexb_is_keyframe"]


_START_CODE = re.compile(b"\x00\x00\x01")


def split_annexb(data: bytes) -> list[bytes]:
    """NAL units of an Annex-B byte stream, without their start codes."""
    data = bytes(data)
    starts = [m.end() for m in _START_CODE.finditer(data)]
    nals = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[start:end]
        if i + 1 < len(starts):
            nal = nal.rstrip(b"\x00")  # the zero byte of a 4-byte start code / trailing zeros
        if nal:
            nals.append(nal)
    return nals


def _nal_type(nal: bytes, codec: str) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def annexb_parameter_sets(data: bytes, *, codec: Literal["h264", "hevc"]) -> bytes:
    """The VPS/SPS/PPS NAL units of an access unit, as Annex-B (muxer extradata)."""
    if codec not in ("h264", "hevc"):
        raise ValueError(f"Invalid codec for Annex-B parameter sets ({codec!r}): "
                            "allowed are h264, hevc. AV1 uses the sequence header OBU.")
    wanted = {32, 33, 34} if codec == "hevc" else {7, 8}
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in split_annexb(data)
                    if _nal_type(nal, codec) in wanted)


def annexb_is_keyframe(data: bytes, *, codec: Literal["h264", "hevc"]) -> bool:
    """True when the access unit holds an IDR (H.264) / IRAP (HEVC) picture."""
    if codec not in ("h264", "hevc"):
        raise ValueError(f"Invalid codec for Annex-B keyframe test ({codec!r}): "
                            "allowed are h264, hevc.")
    for nal in split_annexb(data):
        kind = _nal_type(nal, codec)
        if (codec == "h264" and kind == 5) or (codec == "hevc" and 16 <= kind <= 23):
            return True
    return False


