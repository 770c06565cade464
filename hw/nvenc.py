"""NVENC: CUDA NV12 / P010 frames into H.264/HEVC/AV1 access units, through PyNvVideoCodec.

Muxing NVENC output with PyAV
-----------------------------
`NvEncoder` is configured without B-frames (`bf=0`), so access units come out in input
order: the writer gives AU *k* the PTS of input frame *k* and dts = pts. It also asks for
SPS/PPS (VPS) before every IDR (`repeatspspps=1`), so each keyframe can start decoding on
its own. The output stream must be one PyAV opens NO encoder for
(`container.add_mux_stream(codec, ...)`): a stream made with `add_stream("h264")` gets
libx264 (or libx265) opened when the header is written, and its SPS/PPS replace NVENC's in
the avcC/hvcC header; NVENC's own P-frames then decode from the start (where its in-band
parameter sets come first) but not from a later keyframe, i.e. seeking fails. With a
codec-less stream PyAV takes the header's parameter sets from the first access unit
(FFmpeg's extract_extradata), which are NVENC's own (`GetSequenceParams`, put in front of
the first AU if it lacks them). `hw.nvenc_writer.NvencFileWriter` does all of this, plus the
colour description (see `nvenc_options`) and the CUDA ordering (see `NvEncoder`).

PyNvVideoCodec API used (version 2.2.4; checked against the wheel's Python files, the
strings and disassembly of PyNvVideoCodec_130.so, the samples it ships, and the binding's
C++ sources (PyNvEncoder.cpp, NvEncoderClInterface.cpp); NVIDIA's "PyNvVideoCodec API
Programming Guide"): `GetDecoderCaps(gpuid=, codec=, chromaformat=, bitdepth=)` -> dict with
`supported`, `width_min/max`, `height_min/max`, `mb_num_max`, `num_decoder_engines`;
`CreateDecoder(gpuid=, codec=, cudacontext=, cudastream=, usedevicememory=)`;
`PacketData()` with `bsl_data` (pointer), `bsl` (size), `pts`, `decode_flag`;
`decoder.Decode(packet) -> list[DecodedFrame]` (an empty packet flushes);
`DecodedFrame.getPTS()`, `__dlpack__`, `cuda()` (per-plane `__cuda_array_interface__`);
`CreateEncoder(width, height, fmt, usecpuinputbuffer, cudacontext=, cudastream=, **options)`
(`cudacontext`/`cudastream` are taken out by `PyNvVideoCodec/__init__.py` and passed to
`PyNvEncoder`; with no stream it makes a non-blocking one of its own) with string options
listed at `nvenc_fps_option`; `encoder.Encode(frame)` (frame.cuda() -> planes; the input
is copied on the encoder's stream) / `EndEncode()` -> list of dicts
`{'data': bytes, 'timestamp': int, 'picture_type': int}` (before 2.2 it returned bytes,
joining the units it had ready: refused, `nv_runtime.nvenc_binding_too_old`); `encoder.GetSequenceParams() -> bytes`; `GetEncoderCaps(gpuid=, codec=)` -> dict
of NV_ENC_CAPS values (`width_max`, `height_max`, `mb_num_max`, `support_10bit_encode`, ...).

10-bit and HDR (issue 13)
-------------------------
10-bit output is CreateEncoder's format "P010" (NV_ENC_BUFFER_FORMAT_YUV420_10BIT): there is
no bit-depth option; the binding inserts the format as option "fmt", and its
NvEncoderClInterface (SetupHEVCConfig / SetupAV1Config / SetupH264Config) sets
inputBitDepth = outputBitDepth = NV_ENC_BIT_DEPTH_10 from it, the profile stays
auto-selected (HEVC: Main10). PyNvEncoder's constructor refuses "P010" with
PyNvVCExceptionUnsupported ("Format P010 is not supported by current encoder.") unless the
codec's `support_10bit_encode` cap is set: H.264 10-bit exists only from NVENC API 13 on
Blackwell, so h264 + P010 fails elsewhere. The device frame is described per plane exactly
as PyCAIMemoryView.cpp's coerceToCudaArrayView checks it (shapes, strides and typestr must
be equal, so the pitch is the tight one): Y `(H, W, 1)`, strides `(2W, 2, 1)`, "|u2"; UV
`(H/2, W/2, 2)`, strides `(2W, 2, 1)`, "|u2", starting right after Y (the wheel's
samples/utils/Utils.py AppFrame builds P010 the same way). "YUV444_16BIT" (which the binding
maps to NV_ENC_BUFFER_FORMAT_YUV444_10BIT) is for 4:4:4 output, which framepipe does not write.
HDR10 static metadata goes in through `Encode(frame, pic_flags, sei)`, PyNvVideoCodec's SEI
insertion (samples/advanced/encode_sei_msg.py: `nvenc.Encode(frame, 0, [({"sei_type": 5},
[bytes as ints]), ...])`; the payload is a list of ints: pybind11 does not take `bytes` for a
std::vector<uint8_t>). For H.264/HEVC each entry is an SEI payloadType and its payload, for
AV1 a metadata OBU's metadata_type and payload (NV_ENC_PIC_PARAMS_AV1.obuPayloadArray); the
payloads are `hw.hdr.sei_payloads`. They go with every picture (about 40 bytes each), so
every IDR carries them whatever the encoder's GOP decisions.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

from core.choices import CODECS, NVENC_PRESETS
from core.errors import HardwareUnavailable
from hw import nv_runtime as rt
from hw.hdr import HdrMetadata, sei_payloads
from hw.nv_runtime import NO_NVENC_HINT

__all__ = ["NvEncoder", "EncodedUnit", "PICTURE_TYPE_IDR", "nvenc_options", "nvenc_fps_option", "NVENC_DEFAULT_CONSTQP",
           "NVENC_INPUT_FORMATS", "nvenc_input_planes", "nvenc_sei_messages"]

logger = logging.getLogger(__name__)

_TUNINGS = ("high_quality", "low_latency", "ultra_low_latency", "lossless")

# CreateEncoder's input format by output bit depth: 4:2:0 8-bit NV12, 10-bit P010.
NVENC_INPUT_FORMATS: dict[int, str] = {8: "NV12", 10: "P010"}


def nvenc_input_planes(ptr: int, fmt: str, *, width: int, height: int) -> list[rt.CudaArray]:
    """The per-plane CUDA array interfaces PyNvVideoCodec's Encode takes for a tight
    `(H*3/2, W)` NV12 or P010 frame at device address `ptr` (see the module docstring)."""
    if fmt == "NV12":
        return [rt.CudaArray(ptr, (height, width, 1), (width, 1, 1), "|u1"),
                rt.CudaArray(ptr + width * height, (height // 2, width // 2, 2), (width, 2, 1), "|u1")]
    if fmt == "P010":
        return [rt.CudaArray(ptr, (height, width, 1), (width * 2, 2, 1), "|u2"),
                rt.CudaArray(ptr + width * height * 2, (height // 2, width // 2, 2), (width * 2, 2, 1), "|u2")]
    raise ValueError(f"no plane layout for NVENC input format {fmt!r} (framepipe feeds NV12 or P010)")


def nvenc_sei_messages(codec: str, hdr: HdrMetadata | None) -> list[tuple[dict[str, int], list[int]]]:
    """`hdr` as the `sei` argument of PyNvVideoCodec's `Encode(frame, pic_flags, sei)`
    ([] when there is nothing to write)."""
    return [({"sei_type": kind}, list(payload)) for kind, payload in sei_payloads(codec, hdr)]


class _DevicePlanes:
    """What PyNvVideoCodec's Encode takes for a device frame: `.cuda()` -> [Y, UV] interfaces."""

    def __init__(self, frame: Any, fmt: str, width: int, height: int) -> None:
        self._keep = frame
        self._planes = nvenc_input_planes(int(frame.data_ptr()), fmt, width=width, height=height)

    def cuda(self) -> list[rt.CudaArray]:
        return self._planes


# NV_ENC_PIC_TYPE_IDR (nvEncodeAPI.h: P=0, B=1, I=2, IDR=3), the `picture_type` of an access
# unit in Encode's result; PyNvVideoCodec's FFmpegMuxer maps the same value to a keyframe.
PICTURE_TYPE_IDR = 3


@dataclass(frozen=True)
class EncodedUnit:
    """One access unit out of NVENC: Annex-B H.264/HEVC or AV1 OBUs, and its picture type
    (`PICTURE_TYPE_IDR` for an IDR; None where the binding does not say)."""

    data: bytes
    picture_type: int | None = None

    @property
    def is_idr(self) -> bool:
        return self.picture_type == PICTURE_TYPE_IDR

    def __repr__(self) -> str:
        return f"EncodedUnit({len(self.data)} bytes, picture_type={self.picture_type})"


def _encoded_units(result: Any) -> list[EncodedUnit]:
    """Encode/EndEncode output as units: a list of dicts (2.2 and newer). Bytes (older bindings)
    may join several units, which no packet can carry: refused (`nvenc_binding_too_old`, which
    the plan's probe asks first)."""
    if result is None:
        return []
    if isinstance(result, (bytes, bytearray, memoryview)):
        if not bytes(result):
            return []
        raise HardwareUnavailable(rt.nvenc_binding_too_old(seen_joining=True))
    out = []
    for item in result:
        if isinstance(item, dict):
            data, kind = bytes(item["data"]), item.get("picture_type")
        else:
            data, kind = bytes(item), None
        if data:
            out.append(EncodedUnit(data, None if kind is None else int(kind)))
    return out


class NvEncoder:
    """NVENC encoder of device NV12 (8-bit) or P010 (10-bit) frames into H.264 / HEVC / AV1
    access units; `hdr`: HDR10 static metadata inserted with every picture (module docstring).

    Quality: give at most one of `qp` (constant QP), `cq` (VBR with a target quality, no
    bitrate cap) or `bitrate` (VBR, bits/s). None of them: constant QP 25 for I, 28 for P
    frames — PyNvVideoCodec's own default (NvEncoderClInterface.cpp, SetupRateControl:
    constQP = {28, 31, 25} for P, B, I), written out here so it does not depend on the
    binding. No B-frames, so access units come out in input order (see the module
    docstring for muxing), and SPS/PPS (VPS) repeat at every IDR, so a player can start at
    any keyframe.

    CUDA ordering (the encoder reads frames written on other streams, by other threads):
    the encoder runs on `self.stream`, a stream of ours handed to CreateEncoder as
    `cudastream`: PyNvVideoCodec copies each input frame on that stream and ignores the
    `stream` key of the CUDA array interface. `encode(frame, ready=event)` makes that stream
    wait on the producer's event before the copy is queued, and every frame (plus anything
    in `hold`) is kept alive until its access unit has come out, so the caching allocator
    cannot hand its memory to someone else while the copy may still be pending.
    """

    def __init__(self, *, gpu: int, codec: Literal["h264", "hevc", "av1"], width: int,
                 height: int, frame_rate: Fraction, preset: str = "p4",
                 tuning: str = "high_quality", qp: int | None = None, cq: int | None = None,
                 bitrate: int | None = None, gop: int | None = None, bit_depth: int = 8,
                 hdr: HdrMetadata | None = None) -> None:
        if bit_depth not in NVENC_INPUT_FORMATS:
            raise ValueError(f"NvEncoder: bit_depth {bit_depth!r}; framepipe feeds NVENC 8-bit NV12 or 10-bit P010")
        self.options = nvenc_options(codec=codec, gpu=gpu, width=width, height=height,
                                     frame_rate=frame_rate, preset=preset, tuning=tuning,
                                     qp=qp, cq=cq, bitrate=bitrate, gop=gop)
        self.gpu, self.codec, self.width, self.height = gpu, codec, width, height
        self.bit_depth, self.input_format = bit_depth, NVENC_INPUT_FORMATS[bit_depth]
        self.sei = nvenc_sei_messages(codec, hdr)
        self.frame_rate = Fraction(frame_rate)
        self._closed = False
        self.num_frames_in = 0
        self._in_flight: deque[tuple[Any, ...]] = deque()  # frames whose AU is not out yet
        nvc = rt.nvcodec_import()
        import torch

        with torch.cuda.device(gpu):
            self.stream: Any = torch.cuda.Stream(device=gpu)
        context = rt.context_args(gpu)  # torch's context on this GPU (see `torch_context`)
        try:
            with rt.keep_current_context():
                self._encoder = nvc.CreateEncoder(width, height, self.input_format, False,
                                                  cudastream=int(self.stream.cuda_stream),
                                                  **context, **self.options)
        except Exception as exc:
            logger.debug("CreateEncoder with our CUDA stream failed (%s); trying its own",
                         rt.first_line(exc))
            self.stream = None  # encode() then waits on the host for each frame instead
            try:
                with rt.keep_current_context():
                    self._encoder = nvc.CreateEncoder(width, height, self.input_format, False, **context,
                                                      **self.options)
            except Exception as exc2:
                raise HardwareUnavailable(
                    f"NVENC on {rt.gpu_label(gpu)} cannot encode {codec}{'' if bit_depth == 8 else f' {bit_depth}-bit'} "
                    f"{width}x{height}: "
                    f"{rt.first_line(exc2)} ({NO_NVENC_HINT}). Run without --nvenc to "
                    "encode on the CPU.") from exc2
        self.extradata: bytes = b""
        getter = getattr(self._encoder, "GetSequenceParams", None)
        if getter is not None:
            try:
                self.extradata = bytes(getter())
            except Exception:
                logger.debug("GetSequenceParams failed", exc_info=True)
        logger.info("NVENC on GPU %d: %s %dx%d %s, options %s%s", gpu, codec, width, height,
                    self.input_format, self.options, ", HDR10 metadata SEI" if self.sei else "")

    def encode(self, nv12: Any, *, ready: Any = None, hold: tuple[Any, ...] = ()
               ) -> list[EncodedUnit]:
        """Encode one frame: device NV12 `(H*3//2, W)` uint8 (8-bit encoder) or P010 uint16
        (10-bit) on this encoder's GPU.

        `ready`: the CUDA event recorded after the frame was written (None: the frame is
        complete on the caller's current stream). `hold`: objects to keep alive with the
        frame until its access unit is out (e.g. the source of a cross-GPU copy).
        """
        self._check_open()
        import torch

        expected = (self.height * 3 // 2, self.width)
        dtype = torch.uint8 if self.bit_depth == 8 else torch.uint16
        if (not isinstance(nv12, torch.Tensor) or nv12.dtype != dtype
                or tuple(nv12.shape) != expected or nv12.device.type != "cuda"
                or nv12.device.index != self.gpu):
            described = (f"{type(nv12).__name__}" if not isinstance(nv12, torch.Tensor) else
                         f"{nv12.dtype} {tuple(nv12.shape)} on {nv12.device}")
            raise TypeError(  # the writer's contract, not the user's input
                f"NvEncoder.encode got {described}; it takes a {str(dtype).removeprefix('torch.')} "
                f"{self.input_format} tensor of shape {expected} on cuda:{self.gpu}. Convert with hw.color first.")
        self._wait_ready(nv12, ready, torch)
        if self.stream is not None and not nv12.is_contiguous():
            with torch.cuda.stream(self.stream):  # a packing copy must also come after `ready`
                frame = nv12.contiguous()
        else:
            frame = nv12.contiguous()
        self._hold((frame, nv12, ready, *hold))
        planes = _DevicePlanes(frame, self.input_format, self.width, self.height)
        units = _encoded_units(self._encoder.Encode(planes, 0, self.sei) if self.sei else
                               self._encoder.Encode(planes))
        self.num_frames_in += 1
        self._release(len(units))
        return units

    def _wait_ready(self, frame: Any, ready: Any, torch: Any) -> None:
        """Order the encoder's copy of `frame` after the work that wrote it."""
        if self.stream is not None:
            if ready is not None:
                self.stream.wait_event(ready)
            else:
                self.stream.wait_stream(torch.cuda.current_stream(frame.device))
        elif ready is not None:
            ready.synchronize()  # no stream of ours inside the encoder: wait on the host
        else:
            torch.cuda.current_stream(frame.device).synchronize()

    def _hold(self, entry: tuple[Any, ...]) -> None:
        """Keep a frame (and what came with it) alive until its access unit is out."""
        self._in_flight.append(entry)

    def _release(self, num_units: int) -> None:
        """Access units come out in input order: the oldest `num_units` frames are done."""
        for _ in range(min(num_units, len(self._in_flight))):
            self._in_flight.popleft()

    def flush(self) -> list[EncodedUnit]:
        """Drain the encoder: the remaining access units, in order."""
        self._check_open()
        units = _encoded_units(self._encoder.EndEncode())
        self._in_flight.clear()  # EndEncode returns after the last picture is encoded
        return units

    def close(self) -> None:
        """Release the encoder; safe to call twice. Call `flush()` first to keep the tail."""
        if self._closed:
            return
        self._closed = True
        if self._in_flight and self.stream is not None:
            try:  # copies still queued read these frames and write the encoder's buffers
                self.stream.synchronize()
            except Exception:
                logger.debug("synchronizing the NVENC stream at close failed", exc_info=True)
        self._encoder = None
        self._in_flight.clear()

    def _check_open(self) -> None:
        if self._closed:
            raise HardwareUnavailable("NvEncoder is closed; create a new one to encode again.")

    def __enter__(self) -> NvEncoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def nvenc_fps_option(frame_rate: Fraction) -> str:
    """The frame rate as PyNvVideoCodec's `fps` option: a decimal with at most 2 places.

    The binding parses `fps` itself (NvEncoderClInterface.cpp, FpsToNumDen): "29.97" ->
    frameRateNum/Den 2997/100; it keeps 2 decimals and truncates the rest, so round here.
    There is no option for an exact numerator/denominator (2.2.4's option keys, from the
    strings of PyNvVideoCodec_130.so: codec, preset, tuning_info, rc, constqp, cq, bitrate,
    maxbitrate, vbvbufsize, vbvinit, initqp, qmin, qmax, aq, temporalaq, lookahead,
    multipass, ldkfs, fps, gop, bf, idrperiod, numrefl0/1, level, tier, repeatspspps,
    num_unit_in_ticks, timescale, colorspace, max_res, global_header, use_ivf_container,
    source_av_format_context). 30000/1001 -> "29.97" (was "30": 0.1 % off for rate control).
    """
    text = f"{float(Fraction(frame_rate)):.2f}".rstrip("0").rstrip(".")
    return text if text not in ("", "0") else "0.01"


def nvenc_options(*, codec: str, gpu: int, width: int, height: int, frame_rate: Fraction,
                  preset: str = "p4", tuning: str = "high_quality", qp: int | None = None,
                  cq: int | None = None, bitrate: int | None = None,
                  gop: int | None = None) -> dict[str, str]:
    """Validate encoder settings and build PyNvVideoCodec's CreateEncoder options.

    Every key is one the 2.2.4 binding reads (see `nvenc_fps_option` for where the list
    comes from). Not used on purpose: `colorspace`, which also forces the full-range flag
    (SetupVuiConfig sets videoFullRangeFlag = true); the writer puts the colour description
    into the bitstream with FFmpeg's h264_metadata/hevc_metadata/av1_metadata filters
    instead (`hw.nvenc_writer`).
    """
    if codec not in CODECS:
        raise ValueError(f"Invalid NVENC codec ({codec!r}): allowed are "
                            f"{', '.join(CODECS)}. Use e.g. --codec hevc.")
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"Invalid NVENC frame size ({width}x{height}): width and height "
                            "must be positive and even for NV12. Pad or crop by one pixel.")
    if preset.lower() not in NVENC_PRESETS:
        raise ValueError(f"Invalid NVENC preset ({preset!r}): allowed are p1 (fastest) "
                            "to p7 (best). Use e.g. p4.")
    if tuning not in _TUNINGS:
        raise ValueError(f"Invalid NVENC tuning ({tuning!r}): allowed are "
                            f"{', '.join(_TUNINGS)}.")
    given = [name for name, value in (("qp", qp), ("cq", cq), ("bitrate", bitrate))
             if value is not None]
    if len(given) > 1:
        raise ValueError(f"NVENC quality: give one of qp, cq, bitrate, not "
                            f"{' and '.join(given)}.")
    qp_max = 63 if codec == "av1" else 51  # AV1: the 0-63 scale of --quality (SVT-AV1's), see av1_qindex
    for name, value in (("qp", qp), ("cq", cq)):
        if value is not None and not 0 <= value <= qp_max:
            raise ValueError(f"Invalid NVENC {name} ({value}) for {codec}: allowed are "
                                f"0-{qp_max} (lower is better quality). Use e.g. 23.")
    if bitrate is not None and bitrate <= 0:
        raise ValueError(f"Invalid NVENC bitrate ({bitrate}): must be > 0 bits/s, "
                            "e.g. 8000000.")
    rate = Fraction(frame_rate)
    if rate <= 0:
        raise ValueError(f"Invalid frame rate ({frame_rate}): must be > 0.")
    if gop is not None and gop <= 0:
        raise ValueError(f"Invalid NVENC gop ({gop}): must be > 0 frames.")
    options = {
        "codec": codec,
        "gpu_id": str(gpu),
        "preset": preset.upper(),
        "tuning_info": tuning,
        "fps": nvenc_fps_option(rate),
        "bf": "0",
        # The IDR period follows gop (SetupH264Config/SetupHEVCConfig: idrPeriod = gopLength).
        "gop": str(gop if gop is not None else max(1, round(rate * 10))),
    }
    if codec in ("h264", "hevc"):
        # SPS/PPS (and VPS) before every IDR, not only the first (NvEncoderClInterface.cpp,
        # SetupH264Config/SetupHEVCConfig: "repeatspspps" -> config.repeatSPSPPS).
        options["repeatspspps"] = "1"
    if qp is not None:
        options.update(rc="constqp", constqp=str(av1_qindex(qp) if codec == "av1" else qp))
    elif cq is not None:
        options.update(rc="vbr", cq=str(cq), bitrate="0")
    elif bitrate is not None:
        options.update(rc="vbr", bitrate=str(bitrate), maxbitrate=str(bitrate * 2))
    else:
        # The binding's default, explicit: constant QP P 28, B 31, I 25 ("qp_P,qp_B,qp_I").
        options.update(rc="constqp", constqp=NVENC_DEFAULT_CONSTQP if codec != "av1" else
                       ",".join(str(av1_qindex(int(q))) for q in NVENC_DEFAULT_CONSTQP.split(",")))
    if codec == "av1":
        options["use_ivf_container"] = "0"  # raw OBUs (the default wraps them in IVF)
    return options


NVENC_DEFAULT_CONSTQP = "28,31,25"


def av1_qindex(quality: int) -> int:
    """NVENC's AV1 constant QP is a quantizer index 0-255 (NV_ENC_QP; FFmpeg's av1_nvenc -qp
    takes up to 255), where --quality for AV1 is 0-63 (SVT-AV1's CRF scale): 63 is 255, 28 is
    113, as OBS maps it. Passed through, --quality 28 was index 28: near lossless, a huge file."""
    return min(255, round(quality * 255 / 63))


