"""HDR10 static metadata: read from a source's frames, written through the encoder's own options.

An HDR10 video is 10-bit BT.2020 with the PQ (SMPTE 2084) or HLG transfer — those are
colour *tags*, carried like any other (hw.color) — plus two pieces of static metadata that
players use for tone mapping: the **mastering display** (its primaries, white point and
luminance range) and the **content light level** (MaxCLL, MaxFALL). FFmpeg's decoders attach
both to every decoded frame as side data (from HEVC/AV1 SEI/OBUs, or from the container's
mdcv/clli boxes or Matroska colour elements); `hdr_metadata(frame)` reads them.

Writing: PyAV does not expose the encoder's or the muxer's side-data fields, so the values
go in as the encoder's own parameters, which put them in the bitstream (HEVC SEI, AV1
metadata OBUs), where every HDR player reads them: x265 `master-display`/`max-cll`,
SVT-AV1 `mastering-display`/`content-light`, x264 `mastering-display`/`cll`. NVENC through
PyNvVideoCodec has no such option (its CreateEncoder keys have none, and its NV_ENC_PIC_PARAMS
binding exposes no pMasteringDisplay/pMaxCll), but its `Encode(frame, pic_flags, sei)` inserts
SEI messages (H.264/HEVC) or metadata OBUs (AV1) given as payload bytes: `sei_payloads` builds
them, with the same syntax x265 and SVT-AV1 write. Dynamic
metadata (HDR10+, Dolby Vision RPUs) is per frame and tied to the source's pictures: it is
not carried (`dynamic` names it, for one warning).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["HdrMetadata", "hdr_metadata", "encoder_hdr_options", "sei_payloads"]

_MASTERING = "MASTERING_DISPLAY_METADATA"
_LIGHT = "CONTENT_LIGHT_LEVEL"
_DYNAMIC = {"DYNAMIC_HDR_PLUS": "HDR10+", "DOVI_RPU_BUFFER": "Dolby Vision", "DOVI_METADATA": "Dolby Vision",
            "DYNAMIC_HDR_VIVID": "HDR Vivid"}


@dataclass(frozen=True)
class HdrMetadata:
    """Static HDR metadata. Chromaticities are CIE 1931 (x, y); luminances in cd/m²."""

    red: tuple[Fraction, Fraction] | None = None
    green: tuple[Fraction, Fraction] | None = None
    blue: tuple[Fraction, Fraction] | None = None
    white: tuple[Fraction, Fraction] | None = None
    min_luminance: Fraction | None = None
    max_luminance: Fraction | None = None
    max_cll: int | None = None  # maximum content light level
    max_fall: int | None = None  # maximum frame-average light level
    dynamic: tuple[str, ...] = ()  # dynamic metadata the source has and the output will not

    @property
    def has_display(self) -> bool:
        return None not in (self.red, self.green, self.blue, self.white, self.min_luminance, self.max_luminance)

    @property
    def has_light_level(self) -> bool:
        return self.max_cll is not None

    def __bool__(self) -> bool:
        return self.has_display or self.has_light_level or bool(self.dynamic)

    def describe(self) -> str:
        parts = []
        if self.has_display:
            parts.append(f"mastering display {float(self.min_luminance):g}-{float(self.max_luminance):g} cd/m²")
        if self.has_light_level:
            parts.append(f"MaxCLL {self.max_cll}, MaxFALL {self.max_fall}")
        return ", ".join(parts) or "none"


def _rationals(data: bytes, count: int) -> list[Fraction | None]:
    values = struct.unpack_from(f"<{2 * count}i", data)
    return [Fraction(n, d) if d else None for n, d in zip(values[0::2], values[1::2])]


def _name_unknown_side_data_types() -> None:
    """Let PyAV's side data `Type` stand for a type it has no name for (as UNKNOWN_<n>).

    PyAV 18 names the types of FFmpeg 7, but its FFmpeg 8 attaches newer ones (EXIF to every
    JPEG or PNG with EXIF, view ids to MV-HEVC): reading any side data of such a frame raised
    ValueError ("31 is not a valid Type"), so a source's HDR metadata or rotation could not
    be read at all."""
    try:
        from av.sidedata.sidedata import Type
    except ImportError:  # a PyAV that keeps it elsewhere
        return

    def unknown(cls, value):
        if not isinstance(value, int):
            return None
        member = object.__new__(cls)
        member._name_, member._value_ = f"UNKNOWN_{value}", value
        return cls._value2member_map_.setdefault(value, member)

    if "_missing_" not in Type.__dict__:
        Type._missing_ = classmethod(unknown)


def side_data(frame):
    """(type name, SideData) for each side data entry of a decoded PyAV frame.

    PyAV 18 iterates a frame's side data as `SideData` objects; PyAV 19 made the container a
    mapping that iterates its `Type` keys (seen on the GPU host: 'Type' object has no
    attribute 'type'). Both are read here."""
    _name_unknown_side_data_types()
    entries = getattr(frame, "side_data", None) or ()
    for entry in entries:
        data = entry if hasattr(entry, "buffer_size") else entries[entry]
        kind = getattr(data, "type", entry)
        yield getattr(kind, "name", str(kind)), data


def hdr_metadata(frame) -> HdrMetadata | None:
    """The static HDR metadata a decoded PyAV frame carries as side data (None: none).

    AVMasteringDisplayMetadata: display_primaries[3][2] (R, G, B) and white_point[2] as
    AVRationals, then min_luminance, max_luminance, then has_primaries, has_luminance (ints).
    AVContentLightMetadata: MaxCLL, MaxFALL (unsigned)."""
    found: dict[str, object] = {}
    dynamic = []
    for name, side in side_data(frame):
        if name == _MASTERING and side.buffer_size >= 88:
            data = bytes(side)
            values = _rationals(data, 10)
            has_primaries, has_luminance = struct.unpack_from("<ii", data, 80)
            if has_primaries and None not in values[:8]:
                r, g, b, w = (tuple(values[i : i + 2]) for i in range(0, 8, 2))
                found.update(red=r, green=g, blue=b, white=w)
            if has_luminance and None not in values[8:]:
                found.update(min_luminance=values[8], max_luminance=values[9])
        elif name == _LIGHT and side.buffer_size >= 8:
            max_cll, max_fall = struct.unpack_from("<II", bytes(side))
            found.update(max_cll=int(max_cll), max_fall=int(max_fall))
        elif name in _DYNAMIC and _DYNAMIC[name] not in dynamic:
            dynamic.append(_DYNAMIC[name])
    if not found and not dynamic:
        return None
    return HdrMetadata(**found, dynamic=tuple(dynamic))  # type: ignore[arg-type]


def _display(md: HdrMetadata, xy, luminance) -> str:
    """The mastering display as encoders spell it: G(x,y)B(x,y)R(x,y)WP(x,y)L(max,min), with
    each number written by `xy` (chromaticities) or `luminance`."""
    points = "".join(f"{name}({xy(p[0])},{xy(p[1])})"
                     for name, p in (("G", md.green), ("B", md.blue), ("R", md.red), ("WP", md.white)))
    return f"{points}L({luminance(md.max_luminance)},{luminance(md.min_luminance)})"


def encoder_hdr_options(encoder: str, md: HdrMetadata | None) -> dict[str, str]:
    """The encoder's own parameters that write `md` into the bitstream: extra `key=value`
    strings to join into x265-params / svtav1-params / x264-params (empty: nothing to write)."""
    if md is None or not (md.has_display or md.has_light_level):
        return {}
    if encoder == "libx265":  # chromaticities in 0.00002, luminance in 0.0001 cd/m² (x265 --master-display)
        params = {"hdr10": "1", "hdr10-opt": "0"}
        if md.has_display:
            params["master-display"] = _display(md, lambda v: round(v * 50000), lambda v: round(v * 10000))
        if md.has_light_level:
            params["max-cll"] = f"{md.max_cll},{md.max_fall or 0}"
        return params
    if encoder == "libx264":  # the same string format as x265
        params = encoder_hdr_options("libx265", md)
        out = {}
        if "master-display" in params:
            out["mastering-display"] = params["master-display"]
        if "max-cll" in params:
            out["cll"] = params["max-cll"]
        return out
    if encoder == "libsvtav1":  # decimal chromaticities and cd/m² (SVT-AV1 --mastering-display)
        params = {}
        if md.has_display:
            params["mastering-display"] = _display(md, lambda v: f"{float(v):.5f}", lambda v: f"{float(v):.4f}")
        if md.has_light_level:
            params["content-light"] = f"{md.max_cll},{md.max_fall or 0}"
        return params
    return {}


# SEI payloadType (H.264 Annex D / H.265 Annex D) and AV1 metadata_type (AV1 spec 6.7.1).
SEI_MASTERING_DISPLAY = 137  # mastering_display_colour_volume
SEI_CONTENT_LIGHT_LEVEL = 144  # content_light_level_info
AV1_METADATA_HDR_CLL = 1
AV1_METADATA_HDR_MDCV = 2
# Per codec: the order of the display primaries, the units of a chromaticity, of the maximum and
# of the minimum luminance (H.264/HEVC: 0.00002 and 0.0001 cd/m2, like x265's master-display;
# AV1: 0.16 and 24.8 / 18.14 fixed point), and the two payload type codes.
_SEI = (("green", "blue", "red", "white"), 50000, 10000, 10000, SEI_MASTERING_DISPLAY, SEI_CONTENT_LIGHT_LEVEL)
_PAYLOAD_UNITS = {"h264": _SEI, "hevc": _SEI,
                  "av1": (("red", "green", "blue", "white"), 65536, 256, 16384, AV1_METADATA_HDR_MDCV, AV1_METADATA_HDR_CLL)}


def sei_payloads(codec: str, md: HdrMetadata | None) -> list[tuple[int, bytes]]:
    """`md` as (payload type, payload bytes) messages an encoder inserts into the bitstream
    itself (NVENC's per-picture SEI / OBU payloads); [] when there is nothing to write.

    H.264/HEVC: mastering_display_colour_volume (type 137: display_primaries_x/y u(16) each, in
    increments of 0.00002, green, blue, red as x265 writes them; white point; max then min
    luminance u(32) in 0.0001 cd/m²) and content_light_level_info (144: MaxCLL, MaxFALL u(16)).
    AV1: metadata_hdr_mdcv (metadata_type 2: R, G, B and white point as 0.16 fixed point,
    luminance_max 24.8 and luminance_min 18.14 fixed point, u(32)) and metadata_hdr_cll (1).
    All fields big-endian; the encoder adds the message header (or metadata_type), emulation
    prevention and trailing bits."""
    if md is None or not (md.has_display or md.has_light_level):
        return []
    units = _PAYLOAD_UNITS.get(codec)
    if units is None:
        raise ValueError(f"no HDR metadata payloads for codec {codec!r} (h264, hevc, av1 carry them)")
    order, chroma_unit, max_unit, min_unit, display_type, light_type = units
    out: list[tuple[int, bytes]] = []
    if md.has_display:
        chroma = [round(v * chroma_unit) for name in order for v in getattr(md, name)]
        out.append((display_type, struct.pack(">8H2I", *(_clip(v, 0xFFFF) for v in chroma),
                                               _clip(round(md.max_luminance * max_unit), 0xFFFFFFFF),
                                               _clip(round(md.min_luminance * min_unit), 0xFFFFFFFF))))
    if md.has_light_level:
        out.append((light_type, struct.pack(">2H", _clip(md.max_cll, 0xFFFF), _clip(md.max_fall or 0, 0xFFFF))))
    return out


def _clip(value: int, top: int) -> int:
    return min(max(int(value), 0), top)
