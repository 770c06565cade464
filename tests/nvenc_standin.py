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
- no B-frames, IDR every 6 frames, access units returned one call late (NVENC's output
  lags its input), Annex-B.

It does no CUDA: frames are host NV12 tensors, as in the rest of the CPU suite.
"""

from __future__ import annotations

from fractions import Fraction

import av

from hw.annexb import annexb_is_keyframe, annexb_parameter_sets, split_annexb
from hw.nvenc import nvenc_options

GOP = 6
_PARAMETER_SET_TYPES = {"h264": {7, 8}, "hevc": {32, 33, 34}}


def _nal_type(nal: bytes, codec: str) -> int:
    return (nal[0] >> 1) & 0x3F if codec == "hevc" else nal[0] & 0x1F


def strip_parameter_sets(au: bytes, codec: str) -> bytes:
    """The access unit without its SPS/PPS/VPS NAL units."""
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in split_annexb(au)
                    if _nal_type(nal, codec) not in _PARAMETER_SET_TYPES[codec])


class NvencLikeEncoder:
    """NvEncoder's interface; NVENC's bitstream habits (see the module docstring)."""

    def __init__(self, *, gpu, codec, width, height, frame_rate, preset="p4", qp=None):
        if codec not in _PARAMETER_SET_TYPES:
            raise ValueError(f"the stand-in encodes h264 and hevc, not {codec!r}")
        self.options = nvenc_options(codec=codec, gpu=gpu, width=width, height=height,
                                     frame_rate=frame_rate, preset=preset, qp=qp)
        self.codec, self.width, self.height = codec, width, height
        self.repeat_parameter_sets = self.options.get("repeatspspps") == "1"
        self.ctx = av.CodecContext.create("libx264" if codec == "h264" else "libx265", "w")
        self.ctx.width, self.ctx.height, self.ctx.pix_fmt = width, height, "yuv420p"
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
            out.append(au)
        return out

    def encode(self, nv12, *, ready=None, hold=()):
        frame = av.VideoFrame.from_ndarray(nv12.numpy(), format="nv12").reformat(format="yuv420p")
        frame.pts = self.num_frames_in
        self.num_frames_in += 1
        self.held.append((nv12, ready, hold))
        self._lagging += self._shape(self.ctx.encode(frame))
        out, self._lagging = self._lagging[:-1], self._lagging[-1:]  # one call late
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
