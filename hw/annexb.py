"""Annex-B H.264/HEVC byte streams: NAL units, parameter sets, keyframes (the NVENC writer's reading),
and the parameter sets of an MP4/MKV configuration record (avcC/hvcC) as Annex-B (NVDEC starting
at a cut: hw/nvdec.py).

Broken internal contracts (a codec this module does not parse) raise `ValueError`.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["split_annexb", "nal_type", "PARAMETER_SET_TYPES", "annexb_parameter_sets", "annexb_is_keyframe",
           "config_parameter_sets"]


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


# VPS/SPS/PPS (HEVC), SPS/PPS (H.264): the NAL unit types a decoder needs before a picture
PARAMETER_SET_TYPES = {"hevc": frozenset({32, 33, 34}), "h264": frozenset({7, 8})}


def nal_type(nal: bytes, codec: str) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def annexb_parameter_sets(data: bytes, *, codec: Literal["h264", "hevc"]) -> bytes:
    """The VPS/SPS/PPS NAL units of an access unit, as Annex-B (muxer extradata)."""
    if codec not in ("h264", "hevc"):
        raise ValueError(f"Invalid codec for Annex-B parameter sets ({codec!r}): "
                            "allowed are h264, hevc. AV1 uses the sequence header OBU.")
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in split_annexb(data)
                    if nal_type(nal, codec) in PARAMETER_SET_TYPES[codec])


def annexb_is_keyframe(data: bytes, *, codec: Literal["h264", "hevc"]) -> bool:
    """True when the access unit holds an IDR (H.264) / IRAP (HEVC) picture."""
    if codec not in ("h264", "hevc"):
        raise ValueError(f"Invalid codec for Annex-B keyframe test ({codec!r}): "
                            "allowed are h264, hevc.")
    for nal in split_annexb(data):
        kind = nal_type(nal, codec)
        if (codec == "h264" and kind == 5) or (codec == "hevc" and 16 <= kind <= 23):
            return True
    return False




def config_parameter_sets(extradata: bytes, *, codec: Literal["h264", "hevc"]) -> bytes:
    """The VPS/SPS/PPS of a stream's extradata as Annex-B: an avcC/hvcC record is unpacked, Annex-B
    extradata is filtered as it is; b"" when there are none (or the record is cut short)."""
    data = bytes(extradata or b"")
    if data.startswith((b"\x00\x00\x01", b"\x00\x00\x00\x01")):
        return annexb_parameter_sets(data, codec=codec)
    if codec not in ("h264", "hevc"):
        raise ValueError(f"Invalid codec for configuration records ({codec!r}): allowed are h264, hevc.")
    nals: list[bytes] = []
    try:
        if codec == "h264":  # avcC: 5 bytes, SPS count (low 5 bits) and SPSs, PPS count and PPSs
            if len(data) < 7 or data[0] != 1:
                return b""
            pos = 5
            for count_mask in (0x1F, 0xFF):
                count = data[pos] & count_mask
                pos += 1
                for _ in range(count):
                    size = int.from_bytes(data[pos:pos + 2], "big")
                    nals.append(data[pos + 2:pos + 2 + size])
                    pos += 2 + size
        else:  # hvcC: 22 bytes, then arrays of (type, count, (length, NAL unit)...)
            if len(data) < 23 or data[0] != 1:
                return b""
            pos = 23
            for _ in range(data[22]):
                count = int.from_bytes(data[pos + 1:pos + 3], "big")
                pos += 3
                for _ in range(count):
                    size = int.from_bytes(data[pos:pos + 2], "big")
                    nals.append(data[pos + 2:pos + 2 + size])
                    pos += 2 + size
    except IndexError:
        return b""
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in nals if nal and nal_type(nal, codec) in PARAMETER_SET_TYPES[codec])
