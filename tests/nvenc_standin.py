"""A stand-in for NVENC that behaves like it where muxing can go wrong (issue 9).

`NvencLikeEncoder` has `hw.nvenc.NvEncoder`'s interface (`extradata`, `options`,
`encode(nv12, ready=, hold=)`, `flush()`, `close()`) and encodes with libx264/libx265
through PyAV, but the bitstream is shaped the way NVENC shapes it, not the way libx264
does when a muxer opens it:

- parameter sets (SPS/PPS, and VPS for HEVC) come only with the FIRST IDR, unless the
  options it is built with (the production `nvenc_options`) ask for `repeatspspps=1`;
  libx264/libx265 used as plain encoders repeat them at every IDR, which hides a wrong
  container header;
- a profile/configuration libx264/libx265 would not choose for a muxer's stream
  (H.264 Constrained Baseline with CAVLC; HEVC with 32x32 CTUs), so parameter sets from
  the software encoder (High/CABAC, 64x64 CTUs) do not decode these slices;
- no B-frames, IDR every 6 frames, Annex-B; access units come out 3 frames late (NVENC's
  output delay with B-frames off and no look-ahead: NvEncoder_130.cpp, m_nOutputDelay =
  m_nEncoderBuffer - 1 with frameIntervalP 1, lookahead 0 and 3 extra), and `flush()`
  (EndEncode) gives the last 3 at once.

10-bit and HDR (issue 13), as PyNvVideoCodec 2.2.4 and NVENC do them:
- the input format is the production one (`hw.nvenc.NVENC_INPUT_FORMATS`: NV12 or P010);
  "P010" is refused for a codec whose `support_10bit_encode` cap is 0 — H.264 on every
  NVENC before Blackwell — with PyNvEncoder's own message, as the real NvEncoder reports it
  (HardwareUnavailable);
- a frame is taken only in the documented layout: uint16 `(H*3/2, W)` with the tight pitch,
  described by the production `hw.nvenc.nvenc_input_planes` and checked with the rules of
  the binding's coerceToCudaArrayView (shape, strides and typestr equal, UV after Y at the
  same pitch); the hardware reads the high 10 bits of each word, so codes left in the low
  bits come out near black, as they would from NVENC;
- the production SEI messages (`hw.nvenc.nvenc_sei_messages`) go into every access unit as
  one prefix SEI NAL unit after the parameter sets, as NVENC inserts the `sei` of
  `Encode(frame, pic_flags, sei)`: a wrong payload shows up when FFmpeg parses the output.

It does no CUDA: frames are host NV12/P010 tensors, as in the rest of the CPU suite.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import torch

from core.errors import HardwareUnavailable
from hw.annexb import annexb_is_keyframe, annexb_parameter_sets, split_annexb
from hw.nvenc import NVENC_INPUT_FORMATS, nvenc_input_planes, nvenc_options, nvenc_sei_messages

GOP = 6
OUTPUT_DELAY = 3  # access units NVENC holds before the first comes out (module docstring)
_PARAMETER_SET_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}
# Codecs whose NVENC caps have support_10bit_encode = 1 on the GPUs framepipe's users have
# (Pascal to Ada): HEVC. H.264 10-bit needs Blackwell and NVENC API 13.
SUPPORT_10BIT = ("hevc",)


def _nal_type(nal: bytes, codec: str) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def strip_parameter_sets(au: bytes, codec: str) -> bytes:
    """The access unit without its SPS/PPS/VPS NAL units."""
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in split_annexb(au)
                    if _nal_type(nal, codec) not in _PARAMETER_SET_TYPES[codec])


def _nal_header(codec: str, nal_type: int) -> bytes:
    return bytes([(nal_type << 1) & 0x7E, 1]) if codec == "hevc" else bytes([nal_type])


def _sei_number(value: int) -> bytes:
    """payloadType / payloadSize: 0xFF per 255, then the rest (H.264/H.265 7.3.5)."""
    return b"\xff" * (value // 255) + bytes([value % 255])


def _emulation_prevention(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


def sei_nal(codec: str, messages) -> bytes:
    """One prefix SEI NAL unit (Annex-B) holding `messages` [({"sei_type": t}, [ints])]."""
    rbsp = b"".join(_sei_number(kind["sei_type"]) + _sei_number(len(payload)) + bytes(payload)
                    for kind, payload in messages) + b"\x80"
    return b"\x00\x00\x00\x01" + _nal_header(codec, 39 if codec == "hevc" else 6) + _emulation_prevention(rbsp)


def check_planes(planes, fmt: str, *, width: int, height: int) -> None:
    """PyNvVideoCodec's coerceToCudaArrayView (PyCAIMemoryView.cpp) and GetEncoderInput
    (PyNvEncoder.cpp) rules for a 2-plane device frame, raised as the binding raises them."""
    typestr = "|u1" if fmt == "NV12" else "|u2"
    size = 1 if fmt == "NV12" else 2
    expected = [((height, width, 1), (width * size, size, 1)),
                ((height // 2, width // 2, 2), ((width // 2 * 2, 2, 1) if fmt == "NV12" else (width * 2, 2, 1)))]
    for plane, (shape, strides) in zip(planes, expected):
        cai = plane.__cuda_array_interface__
        if cai["typestr"] != typestr:
            raise RuntimeError(f"Could not encode CUDA array! Invalid typestr: {cai['typestr']}")
        if tuple(cai["shape"]) != shape:
            raise RuntimeError(f"Invalid shape: {list(cai['shape'])}, expected: {list(shape)}")
        if tuple(cai["strides"]) != strides:
            raise RuntimeError(f"Invalid strides: {list(cai['strides'])}, expected: {list(strides)}")
    y, uv = (plane.__cuda_array_interface__ for plane in planes)
    if y["strides"][0] != uv["strides"][0]:
        raise RuntimeError("unsupported argument : strides of y and uv plane  are different")
    if uv["data"][0] <= y["data"][0]:
        raise RuntimeError("Unsupported surface allocation. u plane must follow yplane.")


class NvencLikeEncoder:
    """NvEncoder's interface; NVENC's bitstream habits (see the module docstring)."""

    def __init__(self, *, gpu, codec, width, height, frame_rate, preset="p4", qp=None, bit_depth=8, hdr=None):
        if codec not in _PARAMETER_SET_TYPES:
            raise ValueError(f"the stand-in encodes h264 and hevc, not {codec!r}")
        self.options = nvenc_options(codec=codec, gpu=gpu, width=width, height=height,
                                     frame_rate=frame_rate, preset=preset, qp=qp)
        self.input_format = NVENC_INPUT_FORMATS[bit_depth]
        if bit_depth > 8 and codec not in SUPPORT_10BIT:  # PyNvEncoder's constructor, then NvEncoder's wrapping
            raise HardwareUnavailable(
                f"NVENC on GPU {gpu} cannot encode {codec} {bit_depth}-bit {width}x{height}: Format "
                f"{self.input_format} is not supported by current encoder. Run without --nvenc to encode on the CPU.")
        self.codec, self.width, self.height, self.bit_depth = codec, width, height, bit_depth
        self.sei = nvenc_sei_messages(codec, hdr)
        self.repeat_parameter_sets = self.options.get("repeatspspps") == "1"
        self.ctx = av.CodecContext.create("libx264" if codec == "h264" else "libx265", "w")
        self.ctx.width, self.ctx.height = width, height
        self.ctx.pix_fmt = "yuv420p" if bit_depth == 8 else "yuv420p10le"
        self.ctx.time_base = Fraction(1, 25)
        if codec == "h264":
            self.ctx.options = {"profile": "baseline", "preset": "ultrafast", "qp": "4", "bf": "0",
                                "g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}
        else:
            self.ctx.options = {"preset": "ultrafast", "qp": "4", "x265-params": (
                f"keyint={GOP}:min-keyint={GOP}:scenecut=0:bframes=0:ctu=32:log-level=error")}
        self.extradata = b""  # GetSequenceParams: known after the first picture here
        self.num_frames_in = 0
        self.num_idr = 0
        self.held = []
        self.closed = False
        self._lagging: list[bytes] = []

    def _shape(self, packets) -> list[bytes]:
        out = []
        for packet in packets:
            au = bytes(packet)
            if annexb_is_keyframe(au, codec=self.codec):
                if not self.extradata:
                    self.extradata = annexb_parameter_sets(au, codec=self.codec)
                elif not self.repeat_parameter_sets:
                    au = strip_parameter_sets(au, self.codec)
                self.num_idr += 1
            if self.sei:
                au = self._with_sei(au)
            out.append(au)
        return out

    def _with_sei(self, au: bytes) -> bytes:
        """The SEI NAL unit after the parameter sets, before the first slice."""
        nals = split_annexb(au)
        first_other = next((i for i, nal in enumerate(nals)
                            if _nal_type(nal, self.codec) not in _PARAMETER_SET_TYPES[self.codec]), len(nals))
        start = b"\x00\x00\x00\x01"
        return (b"".join(start + nal for nal in nals[:first_other]) + sei_nal(self.codec, self.sei)
                + b"".join(start + nal for nal in nals[first_other:]))

    def _picture(self, frame) -> av.VideoFrame:
        """The frame as NVENC reads it, after the binding's checks (module docstring)."""
        dtype = torch.uint8 if self.bit_depth == 8 else torch.uint16
        shape = (self.height * 3 // 2, self.width)
        if frame.dtype != dtype or tuple(frame.shape) != shape or frame.stride() != (self.width, 1):
            raise TypeError(f"NvEncoder.encode got {frame.dtype} {tuple(frame.shape)} strides {frame.stride()}; "
                            f"this {self.bit_depth}-bit encoder takes a tight {dtype} {self.input_format} {shape}")
        check_planes(nvenc_input_planes(frame.data_ptr(), self.input_format, width=self.width, height=self.height),
                     self.input_format, width=self.width, height=self.height)
        if self.bit_depth == 8:
            return av.VideoFrame.from_ndarray(frame.numpy(), format="nv12").reformat(format="yuv420p")
        words = frame.view(torch.int16).numpy().view(np.uint16)
        codes = words >> 6  # the high 10 bits: NV_ENC_BUFFER_FORMAT_YUV420_10BIT
        h = self.height
        y, uv = codes[:h], codes[h:]
        planar = np.concatenate([y.ravel(), uv[:, 0::2].ravel(), uv[:, 1::2].ravel()]).reshape(shape)
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(planar), format="yuv420p10le")

    def encode(self, nv12, *, ready=None, hold=()):
        frame = self._picture(nv12)
        frame.pts = self.num_frames_in
        self.num_frames_in += 1
        self.held.append((nv12, ready, hold))
        self._lagging += self._shape(self.ctx.encode(frame))
        out, self._lagging = self._lagging[:-OUTPUT_DELAY], self._lagging[-OUTPUT_DELAY:]
        return out

    def flush(self):
        out = self._lagging + self._shape(self.ctx.encode(None))
        self._lagging = []
        return out

    def close(self):
        self.closed = True


def keyframe_entry_problems(path) -> tuple[list[int], list[tuple[int, object]]]:
    """Enter the file at every keyframe with a fresh decoder (header extradata only).

    Returns (keyframe packet indices, problems): a problem is (index, error text) when the
    decoder refuses the GOP, or (index, frame indices read from the pictures) when they are
    not exactly that GOP's frames. A file that seeks well has no problems.
    """
    from hw.clips import read_index

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.size]
        extradata = stream.codec_context.extradata
        name = stream.codec_context.name
    keys = [i for i, p in enumerate(packets) if p.is_keyframe]
    problems: list[tuple[int, object]] = []
    for n, start in enumerate(keys):
        end = keys[n + 1] if n + 1 < len(keys) else len(packets)
        decoder = av.CodecContext.create(name, "r")
        decoder.extradata = extradata
        seen = []
        try:
            for packet in packets[start:end]:
                seen += [read_index(f.to_ndarray(format="rgb24")) for f in decoder.decode(packet)]
            seen += [read_index(f.to_ndarray(format="rgb24")) for f in decoder.decode(None)]
        except av.error.FFmpegError as exc:
            problems.append((start, str(exc)))
            continue
        if seen != list(range(start, end)):
            problems.append((start, seen))
    return keys, problems
