"""NVENC: CUDA NV12 frames into H.264/HEVC/AV1 access units, through PyNvVideoCodec.

Muxing NVENC output with PyAV
-----------------------------
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
`{'data': bytes, 'timestamp': int, 'picture_type': int}` (1.x returned bytes; both are
accepted); `encoder.GetSequenceParams() -> bytes`; `GetEncoderCaps(gpuid=, codec=)` -> dict
of NV_ENC_CAPS values (`width_max`, `height_max`, `mb_num_max`, ...).
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
from hw.nv_runtime import NO_NVENC_HINT

__all__ = ["NvEncoder", "EncodedUnit", "PICTURE_TYPE_IDR", "nvenc_options", "nvenc_fps_option", "NVENC_DEFAULT_CONSTQP"]

logger = logging.getLogger(__name__)

_TUNINGS = ("high_quality", "low_latency", "ultra_low_latency", "lossless")


class _Nv12Planes:
    """What PyNvVideoCodec's Encode takes for device NV12: `.cuda()` -> [Y, UV] interfaces
    (shapes (H, W, 1) and (H/2, W/2, 2), as its samples' AppFrame builds them)."""

    def __init__(self, nv12: Any, width: int, height: int) -> None:
        self._keep = nv12
        ptr = int(nv12.data_ptr())
        self._planes = [
            rt.CudaArray(ptr, (height, width, 1), (width, 1, 1), "|u1"),
            rt.CudaArray(ptr + width * height, (height // 2, width // 2, 2), (width, 2, 1), "|u1"),
        ]

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
    """Normalize Encode/EndEncode output (list of dicts in 2.x, bytes-like in 1.x)."""
    if result is None:
        return []
    if isinstance(result, (bytes, bytearray, memoryview)):
        data = bytes(result)
        return [EncodedUnit(data)] if data else []
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
    """NVENC encoder of device NV12 frames into H.264 / HEVC / AV1 access units.

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
                 bitrate: int | None = None, gop: int | None = None) -> None:
        self.options = nvenc_options(codec=codec, gpu=gpu, width=width, height=height,
                                     frame_rate=frame_rate, preset=preset, tuning=tuning,
                                     qp=qp, cq=cq, bitrate=bitrate, gop=gop)
        self.gpu, self.codec, self.width, self.height = gpu, codec, width, height
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
                self._encoder = nvc.CreateEncoder(width, height, "NV12", False,
                                                  cudastream=int(self.stream.cuda_stream),
                                                  **context, **self.options)
        except Exception as exc:
            logger.debug("CreateEncoder with our CUDA stream failed (%s); trying its own",
                         rt.first_line(exc))
            self.stream = None  # encode() then waits on the host for each frame instead
            try:
                with rt.keep_current_context():
                    self._encoder = nvc.CreateEncoder(width, height, "NV12", False, **context,
                                                      **self.options)
            except Exception as exc2:
                raise HardwareUnavailable(
                    f"NVENC on {rt.gpu_label(gpu)} cannot encode {codec} {width}x{height}: "
                    f"{rt.first_line(exc2)} ({NO_NVENC_HINT}). Run without --nvenc to "
                    "encode on the CPU.") from exc2
        self.extradata: bytes = b""
        getter = getattr(self._encoder, "GetSequenceParams", None)
        if getter is not None:
            try:
                self.extradata = bytes(getter())
            except Exception:
                logger.debug("GetSequenceParams failed", exc_info=True)
        logger.info("NVENC on GPU %d: %s %dx%d, options %s", gpu, codec, width, height,
                    self.options)

    def encode(self, nv12: Any, *, ready: Any = None, hold: tuple[Any, ...] = ()
               ) -> list[EncodedUnit]:
        """Encode one frame: device NV12 `(H*3//2, W)` uint8 on this encoder's GPU.

        `ready`: the CUDA event recorded after the frame was written (None: the frame is
        complete on the caller's current stream). `hold`: objects to keep alive with the
        frame until its access unit is out (e.g. the source of a cross-GPU copy).
        """
        self._check_open()
        import torch

        expected = (self.height * 3 // 2, self.width)
        if (not isinstance(nv12, torch.Tensor) or nv12.dtype != torch.uint8
                or tuple(nv12.shape) != expected or nv12.device.type != "cuda"
                or nv12.device.index != self.gpu):
            described = (f"{type(nv12).__name__}" if not isinstance(nv12, torch.Tensor) else
                         f"{nv12.dtype} {tuple(nv12.shape)} on {nv12.device}")
            raise TypeError(  # the writer's contract, not the user's input
                f"NvEncoder.encode got {described}; it takes a uint8 NV12 tensor of shape "
                f"{expected} on cuda:{self.gpu}. Convert with hw.color first.")
        self._wait_ready(nv12, ready, torch)
        if self.stream is not None and not nv12.is_contiguous():
            with torch.cuda.stream(self.stream):  # a packing copy must also come after `ready`
                frame = nv12.contiguous()
        else:
            frame = nv12.contiguous()
        self._hold((frame, nv12, ready, *hold))
        units = _encoded_units(self._encoder.Encode(_Nv12Planes(frame, self.width, self.height)))
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
    qp_max = 255 if codec == "av1" else 51
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
        options.update(rc="constqp", constqp=str(qp))
    elif cq is not None:
        options.update(rc="vbr", cq=str(cq), bitrate="0")
    elif bitrate is not None:
        options.update(rc="vbr", bitrate=str(bitrate), maxbitrate=str(bitrate * 2))
    else:
        # The binding's default, explicit: constant QP P 28, B 31, I 25 ("qp_P,qp_B,qp_I").
        options.update(rc="constqp", constqp=NVENC_DEFAULT_CONSTQP)
    if codec == "av1":
        options["use_ivf_container"] = "0"  # raw OBUs (the default wraps them in IVF)
    return options


NVENC_DEFAULT_CONSTQP = "28,31,25"


