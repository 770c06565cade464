"""NVDEC / NVENC through PyNvVideoCodec (imported lazily).

Role: the hardware video codecs. `NvDecoder` turns a file into CUDA NV12/P016 frames with
their source PTS; `NvEncoder` turns CUDA NV12 frames into H.264/HEVC/AV1 access units;
`probe_nvdec` / `probe_nvenc` say whether a GPU can do either, and why not. This module
owns no threads and no queues: the reader and writer stages call it.

PyNvVideoCodec is imported on first use only. On a machine without the NVIDIA driver
`import PyNvVideoCodec` raises RuntimeError (its __init__ asks the driver for the NVENC
version), so every failure to import is reported as `HardwareUnavailable`.

How `NvDecoder` gets its PTS, and why
-------------------------------------
The file is demuxed by PyAV, not by PyNvVideoCodec's own demuxer, and each packet is fed to
the NVDEC decoder (`CreateDecoder` + `Decode(PacketData)`):

* The frame count and PTS must match the CPU path (PyAV) exactly, so that `--nvdec` and the
  CPU reader produce the same frame indices and timestamps. Demuxing with the same library
  (same libavformat, same edit-list handling, same `time_base`) makes that true by
  construction instead of by hoping two demuxers agree.
* Packets that FFmpeg marks `is_discard` (e.g. the pre-roll that an MP4 edit list cuts) are
  decoded (they are references) but their frames are dropped, as libavcodec does.
* H.264/HEVC packets from MP4/MOV/MKV are length-prefixed (avcC/hvcC); NVDEC's parser wants
  Annex-B, so they go through `h264_mp4toannexb` / `hevc_mp4toannexb`
  (`av.bitstream.BitStreamFilterContext`); that filter passes Annex-B input through.
  For AV1 from MP4/MKV the av1C configuration OBUs are put in front of the first packet.
* NVDEC returns frames in display order. `DecodedFrame.getPTS()` cannot be trusted for
  the PTS: measured with PyNvVideoCodec 2.2.4 on an H100 (driver 580), a B-frame clip came
  back with the timestamps in *decode* order (0, 2048, 1024, 512, ... for display order
  0, 512, 1024, 1536, ...), i.e. the k-th frame out got the k-th packet's timestamp. Since
  display order is ascending PTS, each frame instead takes the smallest PTS among packets
  that have not produced a frame yet (`_PtsBook`). A missing PTS (raw Annex-B files, where
  PyAV also reports None) stays None, and the discard flag travels with its PTS.
  Measured on that H100: 300-frame 1080p H.264 (B-frames) and 50-frame MKV clips, and a
  10-bit HEVC clip: same frame count, same PTS list and bit-identical pixels as PyAV.

Frames are COPIED out of the decoder's surface (DLPack view -> `copy_` into a fresh tensor,
on a private CUDA stream that first waits for the stream the decoder names) and that stream
is synchronized before the frame is handed on: the decoder reuses its output memory for
the next frame, and the consumer is another thread on another stream.

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
the first AU if it lacks them). `hw.gpu_io.NvencFileWriter` does all of this, plus the
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

import heapq
import importlib
import importlib.metadata
import itertools
import logging
import os
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from types import ModuleType
from typing import Any, Literal

from pipeline.errors import HardwareUnavailable, InvalidOption

__all__ = [
    "nvcodec_import",
    "nvcodec_version",
    "probe_nvdec",
    "probe_nvenc",
    "NvDecoder",
    "NvEncoder",
    "EncodedUnit",
    "PICTURE_TYPE_IDR",
    "nvenc_options",
    "nvenc_fps_option",
    "nvenc_size_problem",
    "split_annexb",
    "annexb_parameter_sets",
    "annexb_is_keyframe",
    "NVDEC_CODECS",
    "NVENC_CODECS",
]

logger = logging.getLogger(__name__)

# PyAV codec name -> member of PyNvVideoCodec.cudaVideoCodec.
NVDEC_CODECS: dict[str, str] = {
    "h264": "H264",
    "hevc": "HEVC",
    "av1": "AV1",
    "vp9": "VP9",
    "vp8": "VP8",
    "mpeg1video": "MPEG1",
    "mpeg2video": "MPEG2",
    "mpeg4": "MPEG4",
    "vc1": "VC1",
    "mjpeg": "JPEG",
}
NVENC_CODECS: tuple[str, ...] = ("h264", "hevc", "av1")
_CHROMA_TEXT = {"420": "4:2:0", "422": "4:2:2", "444": "4:4:4", "400": "4:0:0"}
_CHROMA_MEMBER = {"420": ("420", "YUV420"), "422": ("422", "YUV422"),
                  "444": ("444", "YUV444"), "400": ("Monochrome", "MONOCHROME", "400")}
_PRESETS = tuple(f"p{i}" for i in range(1, 8))
_TUNINGS = ("high_quality", "low_latency", "ultra_low_latency", "lossless")
_NO_NVENC_HINT = "this GPU may have no NVENC engine (A100, H100 and H200 have none)"

_module: ModuleType | None = None
_import_error: str | None = None
_nvenc_cache: dict[tuple[int, str, int, int], tuple[bool, str]] = {}


# ----------------------------------------------------------------------------- import

def nvcodec_import() -> ModuleType:
    """PyNvVideoCodec, imported once; `HardwareUnavailable` when it cannot be used."""
    global _module, _import_error
    if _module is not None:
        return _module
    if _import_error is None:
        try:
            _module = importlib.import_module("PyNvVideoCodec")
            return _module
        except Exception as exc:  # ImportError, or RuntimeError without the driver
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            _import_error = f"{type(exc).__name__}: {first_line}"
            logger.debug("import PyNvVideoCodec failed", exc_info=True)
    raise HardwareUnavailable(
        f"PyNvVideoCodec is not usable: {_import_error}. Install it with "
        "'pip install PyNvVideoCodec' on a machine with an NVIDIA driver, or run "
        "without --nvdec/--nvenc."
    )


def nvcodec_version() -> str | None:
    """The installed PyNvVideoCodec version (from package metadata, no import), or None."""
    from hw.gpus import dist_version

    return dist_version("PyNvVideoCodec", "pynvvideocodec")


# ----------------------------------------------------------------------------- probes

def _gpu_label(gpu: int) -> str:
    try:
        import torch

        if torch.cuda.is_available() and 0 <= gpu < torch.cuda.device_count():
            return f"GPU {gpu} ({torch.cuda.get_device_name(gpu)})"
    except Exception:  # a label must never fail
        pass
    return f"GPU {gpu}"


def _enum_member(enum: Any, names: tuple[str, ...]) -> Any:
    members = getattr(enum, "__members__", {}) or {}
    for name in names:
        if name in members:
            return members[name]
        if hasattr(enum, name):
            return getattr(enum, name)
    raise KeyError(f"{enum!r} has none of {names}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


_libcuda: Any = None


def _driver() -> Any:
    """libcuda through ctypes (no extra package), or None where there is no NVIDIA driver."""
    global _libcuda
    if _libcuda is None:
        try:
            import ctypes

            _libcuda = ctypes.CDLL("libcuda.so.1")
        except OSError:
            _libcuda = False
    return _libcuda or None


def _current_context() -> int:
    import ctypes

    lib = _driver()
    ctx = ctypes.c_void_p()
    if lib is None or lib.cuCtxGetCurrent(ctypes.byref(ctx)) != 0:
        return 0
    return int(ctx.value or 0)


def torch_context(gpu: int) -> int:
    """The CUDA context torch works in on `gpu` (the device's primary context), 0 if unknown.

    PyNvVideoCodec given `cudacontext=0` creates a context of its own (`cuCtxCreate`, in the
    strings of PyNvVideoCodec_130.so) and leaves it current on the calling thread; torch's
    streams do not exist in that context, so the next torch call on that thread fails with
    "invalid resource handle" (seen on an H100: a test after the NVDEC tests, and earlier the
    --nvdec --nvenc run). Given torch's context, the decoder and encoder work in it, as
    NVIDIA's decode_with_cuda_control.py sample does with the primary context."""
    try:
        import torch

        with torch.cuda.device(gpu):
            torch.empty(1, device=f"cuda:{gpu}")  # the primary context exists and is current here
            return _current_context()
    except Exception:  # no CUDA: the fakes in tests, or a broken driver
        return 0


class keep_current_context:
    """Restore this thread's current CUDA context after a PyNvVideoCodec call that may change it."""

    def __enter__(self) -> "keep_current_context":
        self._before = _current_context() if _driver() is not None else 0
        return self

    def __exit__(self, *exc_info: object) -> None:
        lib = _driver()
        if lib is not None and _current_context() != self._before:
            import ctypes

            lib.cuCtxSetCurrent(ctypes.c_void_p(self._before or None))


def _context_args(gpu: int) -> dict[str, int]:
    ctx = torch_context(gpu)
    return {"cudacontext": ctx} if ctx else {}


def probe_nvdec(
    *, codec: str, bit_depth: int, chroma_format: str, width: int, height: int, gpu: int
) -> tuple[bool, str]:
    """Can NVDEC on `gpu` decode this stream? Asks the decoder caps (cuvidGetDecoderCaps).

    `codec` is PyAV's name ("h264", "hevc", "av1", "vp9", "mpeg2video", ...),
    `chroma_format` one of "420", "422", "444", "400". Returns (ok, reason).
    """
    if chroma_format not in _CHROMA_TEXT:
        raise InvalidOption(
            f"Invalid chroma_format ({chroma_format!r}): allowed are "
            f"{', '.join(repr(c) for c in _CHROMA_TEXT)}. Pass e.g. '420' for yuv420p."
        )
    if bit_depth not in (8, 10, 12):
        raise InvalidOption(
            f"Invalid bit_depth ({bit_depth!r}): allowed are 8, 10, 12."
        )
    what = f"{codec} {bit_depth}-bit {_CHROMA_TEXT[chroma_format]}"
    try:
        nvc = nvcodec_import()
    except HardwareUnavailable as exc:
        return False, str(exc)
    label = _gpu_label(gpu)
    if codec not in NVDEC_CODECS:
        return False, (f"NVDEC cannot decode {codec} (it decodes "
                       f"{', '.join(NVDEC_CODECS)})")
    try:
        nv_codec = _enum_member(nvc.cudaVideoCodec, (NVDEC_CODECS[codec],))
        nv_chroma = _enum_member(nvc.cudaVideoChromaFormat, _CHROMA_MEMBER[chroma_format])
        with keep_current_context():
            caps = dict(nvc.GetDecoderCaps(gpuid=gpu, codec=nv_codec,
                                           chromaformat=nv_chroma, bitdepth=bit_depth))
    except Exception as exc:
        logger.debug("GetDecoderCaps failed", exc_info=True)
        return False, f"NVDEC on {label}: capability query for {what} failed: {_first_line(exc)}"
    logger.debug("NVDEC caps on GPU %d for %s: %s", gpu, what, caps)
    if "supported" in caps:
        supported = bool(caps["supported"])
    else:  # older bindings: an unsupported codec reports no (or zero) limits
        supported = int(caps.get("width_max", 0) or 0) > 0
    if not supported:
        return False, f"NVDEC on {label} cannot decode {what}"
    min_w, min_h = int(caps.get("width_min", 0) or 0), int(caps.get("height_min", 0) or 0)
    max_w, max_h = int(caps.get("width_max", 0) or 0), int(caps.get("height_max", 0) or 0)
    if width < min_w or height < min_h:
        return False, (f"NVDEC on {label} cannot decode {what} at {width}x{height}: "
                       f"smallest is {min_w}x{min_h}")
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    mb_max = int(caps.get("mb_num_max", 0) or 0)
    if (max_w and width > max_w) or (max_h and height > max_h) or (mb_max and macroblocks > mb_max):
        return False, (f"NVDEC on {label} cannot decode {what} at {width}x{height}: "
                       f"largest is {max_w}x{max_h}")
    engines = caps.get("num_decoder_engines")
    extra = f", {engines} engine(s)" if engines else ""
    return True, f"NVDEC on {label} decodes {what} up to {max_w}x{max_h}{extra}"


# NVENC limits by codec when the caps query is unavailable (NVENC Video Encoder API
# Programming Guide, "Encoder capabilities" / NVIDIA's Video Encode and Decode GPU Support
# Matrix): H.264 4096x4096 on every generation with NVENC; HEVC 8192x8192 from Pascal on
# (4096x4096 on Maxwell gen 2); AV1 8192x8192 (Ada Lovelace and later only).
_NVENC_SIZE_FALLBACK: dict[str, tuple[int, int]] = {"h264": (4096, 4096), "hevc": (8192, 8192),
                                                    "av1": (8192, 8192)}
_PROBE_SIZE = (256, 256)  # the existence probe (no output size known yet)


def nvenc_size_problem(caps: dict[str, Any] | None, *, codec: str, width: int,
                       height: int) -> str | None:
    """Why NVENC's `caps` (GetEncoderCaps) rule out `width`x`height`, or None when they don't.

    Checks `width_max`/`height_max`, `width_min`/`height_min` and `mb_num_max` (the frame's
    16x16 macroblock budget). Without caps, the documented per-codec maxima are used.
    """
    caps = dict(caps or {})
    max_w = int(caps.get("width_max", 0) or 0)
    max_h = int(caps.get("height_max", 0) or 0)
    if not (max_w and max_h):
        max_w, max_h = _NVENC_SIZE_FALLBACK.get(codec, (4096, 4096))
    min_w = int(caps.get("width_min", 0) or 0)
    min_h = int(caps.get("height_min", 0) or 0)
    if width > max_w or height > max_h:
        return f"largest is {max_w}x{max_h}"
    if width < min_w or height < min_h:
        return f"smallest is {min_w}x{min_h}"
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    mb_max = int(caps.get("mb_num_max", 0) or 0)
    if mb_max and macroblocks > mb_max:
        return f"{macroblocks} macroblocks, more than its {mb_max}"
    return None


def _encoder_caps(nvc: Any, *, codec: str, gpu: int) -> dict[str, Any] | None:
    """GetEncoderCaps(gpuid=, codec=) as a dict, or None where the query is missing or fails.

    The function and its keys (`width_max`, `height_max`, `mb_num_max`, `width_min`,
    `height_min`, `num_encoder_engines`, ...: NV_ENC_CAPS names in lower case) are in the
    strings of PyNvVideoCodec_130.so (2.2.4) and in PyNvEncoder.cpp's `getCapName`. Caution,
    from that source: the 2.x binding answers for GPU 0 whatever `gpuid` says, so on a mixed
    machine the real-size CreateEncoder below has the last word.
    """
    query = getattr(nvc, "GetEncoderCaps", None)
    if query is None:
        return None
    try:
        with keep_current_context():
            return dict(query(gpuid=gpu, codec=codec))
    except Exception:
        logger.debug("GetEncoderCaps(%d, %s) failed", gpu, codec, exc_info=True)
        return None


def _try_create(nvc: Any, *, codec: str, gpu: int, width: int, height: int) -> str | None:
    """Create (and drop) an encoder; the first line of the error, or None when it worked."""
    options = {"codec": codec, "gpu_id": str(gpu), "preset": "P1"}
    if codec == "av1":
        options["use_ivf_container"] = "0"
    try:
        with keep_current_context():
            encoder = nvc.CreateEncoder(width, height, "NV12", False, **_context_args(gpu), **options)
            del encoder
        return None
    except Exception as exc:
        logger.debug("CreateEncoder(%s %dx%d on GPU %d) failed", codec, width, height, gpu,
                      exc_info=True)
        return _first_line(exc)


def _failure_hint(nvc: Any, *, codec: str, gpu: int) -> str:
    """Why CreateEncoder failed: no NVENC at all, or no encoder for this codec."""
    if codec != "h264" and _try_create(nvc, codec="h264", gpu=gpu, width=_PROBE_SIZE[0],
                                       height=_PROBE_SIZE[1]) is None:
        if codec == "av1":
            return ("this GPU's NVENC encodes h264 but has no AV1 encoder: NVENC encodes AV1 "
                    "from Ada Lovelace on (RTX 40, L4, L40; compute capability 8.9+). Use "
                    "--codec hevc or --codec h264")
        return f"this GPU's NVENC encodes h264 but not {codec}. Use --codec h264"
    return _NO_NVENC_HINT


def _pyav_can_mux_encoded() -> str | None:
    """None when PyAV can mux NVENC's access units (a stream with no encoder), else why not."""
    try:
        import av
    except Exception as exc:  # PyAV is a hard requirement elsewhere; say so anyway
        return f"PyAV is not usable ({_first_line(exc)})"
    version = getattr(av, "__version__", "0")
    major = int(re.match(r"\d*", version).group() or 0)
    # PyAV 18 has both halves: OutputContainer.add_mux_stream (a stream with no encoder)
    # and the header's parameter sets taken from the first packet (extract_extradata).
    if major < 18 or not hasattr(av.container.OutputContainer, "add_mux_stream"):
        return (f"PyAV {version} cannot mux encoded video without an encoder of its own "
                "(needs PyAV 18 or newer: OutputContainer.add_mux_stream). Run "
                "'pip install -U av'")
    return None


def probe_nvenc(*, codec: str, gpu: int, width: int | None = None,
                height: int | None = None) -> tuple[bool, str]:
    """Can NVENC on `gpu` encode `codec` at `width`x`height`? Returns (ok, reason).

    Without a size it asks whether the GPU has the encoder at all (a 256x256 encoder). With
    the run's real output size it first checks the encoder caps (`GetEncoderCaps`: largest
    size, macroblock budget), then really creates an encoder of that size: H.264 NVENC tops
    out at 4096x4096, so a 1080p source upscaled x4 (7680x4320) passes a small probe and then
    fails. When h264 is too large but hevc would fit, the reason says so. A failure says
    whether the GPU has no NVENC engine (A100, H100, H200) or lacks this codec (AV1 before
    Ada Lovelace). Answers are cached per (gpu, codec, size).
    """
    if (width is None) != (height is None):
        raise ValueError(f"probe_nvenc: give both width and height or neither, got "
                         f"width={width!r}, height={height!r}")
    w, h = (width, height) if width is not None and height is not None else _PROBE_SIZE
    key = (gpu, codec, w, h)
    if key in _nvenc_cache:
        return _nvenc_cache[key]
    if codec not in NVENC_CODECS:
        return False, f"NVENC cannot encode {codec} (it encodes {', '.join(NVENC_CODECS)})"
    try:
        nvc = nvcodec_import()
    except HardwareUnavailable as exc:
        return False, str(exc)  # not cached: the reason is already cached by the import
    label = _gpu_label(gpu)
    at = f" at {w}x{h}" if width is not None else ""
    problem = nvenc_size_problem(_encoder_caps(nvc, codec=codec, gpu=gpu), codec=codec,
                                 width=w, height=h)
    if problem is not None:
        result = (False, f"NVENC on {label} cannot encode {codec}{at}: {problem}"
                         f"{_other_codec_hint(codec=codec, gpu=gpu, width=w, height=h)}")
    else:
        error = _try_create(nvc, codec=codec, gpu=gpu, width=w, height=h)
        if error is None:
            pyav_problem = _pyav_can_mux_encoded()
            result = ((True, f"NVENC on {label} encodes {codec}{at}") if pyav_problem is None
                      else (False, f"NVENC on {label} encodes {codec}, but {pyav_problem}"))
        else:
            result = (False, f"NVENC on {label} cannot encode {codec}{at}: {error} "
                             f"({_failure_hint(nvc, codec=codec, gpu=gpu)})")
    _nvenc_cache[key] = result
    return result


def _other_codec_hint(*, codec: str, gpu: int, width: int, height: int) -> str:
    """For an h264 output too large for NVENC: whether NVENC's hevc encoder takes it."""
    if codec != "h264":
        return ""
    ok, _ = probe_nvenc(codec="hevc", gpu=gpu, width=width, height=height)
    return ("; NVENC's hevc encoder takes this size: add --codec hevc to keep encoding on "
            "the GPU" if ok else "")


# ----------------------------------------------------------------------------- decoder

def _stream_format(stream: Any) -> tuple[int, str]:
    """(bit_depth, chroma "420"/"422"/"444"/"400") of a PyAV video stream."""
    import av

    pix_fmt = stream.codec_context.pix_fmt or "yuv420p"
    fmt = av.VideoFormat(pix_fmt)
    bit_depth = int(fmt.components[0].bits)
    if len(fmt.components) < 3:
        return bit_depth, "400"
    w, h = 64, 64
    cw, ch = fmt.chroma_width(w), fmt.chroma_height(h)
    if cw == w and ch == h:
        return bit_depth, "444"
    if cw * 2 == w and ch == h:
        return bit_depth, "422"
    return bit_depth, "420"


class _CudaArray:
    """A bare `__cuda_array_interface__` holder, for `torch.as_tensor` views."""

    def __init__(self, ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {
            "shape": shape, "strides": strides, "typestr": typestr,
            "data": (int(ptr), False), "version": 3,
        }


class _PtsBook:
    """Gives decoded frames their PTS: the smallest PTS among packets not yet matched.

    NVDEC outputs frames in display order, and display order is ascending PTS, so the k-th
    frame out carries the smallest PTS still pending (with its packet's discard flag).
    Packets without a PTS sort by arrival. Invariant: one pending entry per fed packet that
    has not produced its frame yet; a packet that never yields a frame (a lost or corrupt
    picture; a field-per-packet interlaced stream) would shift later PTS by one, which is
    why `NvDecoder` logs the number left over at the end.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int | None, bool]] = []
        self._seq = itertools.count()

    def add(self, pts: int | None, discard: bool) -> int:
        """Record a fed packet; returns its sequence number (the NVDEC timestamp we pass)."""
        seq = next(self._seq)
        heapq.heappush(self._heap, (pts if pts is not None else seq, seq, pts, discard))
        return seq

    def take(self) -> tuple[int | None, bool]:
        """(pts, discard) for the next frame in display order."""
        if not self._heap:
            logger.warning("NVDEC returned more frames than packets were fed; PTS unknown")
            return None, False
        _, _, pts, discard = heapq.heappop(self._heap)
        return pts, discard

    def __len__(self) -> int:
        return len(self._heap)


class NvDecoder:
    """Decodes the video stream of a file with NVDEC on GPU `gpu`.

    Iterating yields `(frame, pts)` in presentation order: `frame` a CUDA uint8 tensor
    `(H*3//2, W)` NV12 (uint16 P016 for 10/12-bit, samples in the high bits), a copy the
    caller owns; `pts` in `time_base` units, the same values PyAV decodes (None where the
    container has none). Raises `HardwareUnavailable` when NVDEC cannot decode the stream.
    """

    def __init__(self, source: str | os.PathLike[str], *, gpu: int = 0,
                 stream_index: int | None = None) -> None:
        import av
        import torch

        self.gpu = gpu
        self._container = None
        self._decoder = None
        self._closed = False
        path = os.fspath(source)
        if not torch.cuda.is_available() or not 0 <= gpu < torch.cuda.device_count():
            raise HardwareUnavailable(
                f"NVDEC needs CUDA GPU {gpu}, but "
                + ("no CUDA GPU is visible" if not torch.cuda.is_available()
                   else f"only {torch.cuda.device_count()} GPU(s) are visible")
                + ". Run without --nvdec to decode on the CPU."
            )
        nvc = nvcodec_import()
        self._nvc = nvc
        container = av.open(path)
        self._container = container
        try:
            videos = list(container.streams.video)
            if not videos:
                raise HardwareUnavailable(f"NVDEC: {path!r} has no video stream to decode.")
            if stream_index is None:
                stream = videos[0]
            else:
                matches = [s for s in videos if s.index == stream_index]
                if not matches:
                    raise InvalidOption(
                        f"Invalid stream_index ({stream_index}): video streams of {path!r} "
                        f"are {[s.index for s in videos]}.")
                stream = matches[0]
            self._stream = stream
            cc = stream.codec_context
            self.codec: str = cc.name
            self.width: int = int(cc.width)
            self.height: int = int(cc.height)
            self.bit_depth, self.chroma_format = _stream_format(stream)
            self.time_base: Fraction | None = (
                Fraction(stream.time_base) if stream.time_base is not None else None)
            self.average_rate: Fraction | None = (
                Fraction(stream.average_rate) if stream.average_rate else None)
            self.num_frames_from_header: int = int(stream.frames or 0)
            ok, reason = probe_nvdec(codec=self.codec, bit_depth=self.bit_depth,
                                     chroma_format=self.chroma_format, width=self.width,
                                     height=self.height, gpu=gpu)
            if not ok:
                raise HardwareUnavailable(f"{reason}. Run without --nvdec to decode on the CPU.")
            if self.chroma_format != "420":
                raise HardwareUnavailable(
                    f"NvDecoder outputs 4:2:0 (NV12/P016) only; {path!r} is "
                    f"{_CHROMA_TEXT[self.chroma_format]}. Run without --nvdec.")
            self._bsf = None
            if self.codec in ("h264", "hevc"):
                self._bsf = av.bitstream.BitStreamFilterContext(
                    f"{self.codec}_mp4toannexb", in_stream=stream)
            self._prefix = b""
            extradata = cc.extradata or b""
            if self.codec == "av1" and len(extradata) > 4 and extradata[0] == 0x81:
                self._prefix = bytes(extradata[4:])  # av1C header, then config OBUs
            with torch.cuda.device(gpu):
                self._copy_stream = torch.cuda.Stream(device=gpu)
            self._decoder = self._create_decoder(nvc, torch)
        except BaseException:
            self.close()
            raise
        self._book = _PtsBook()
        self.num_frames_decoded = 0
        logger.info("NVDEC on GPU %d: %s %dx%d %d-bit, time_base %s", gpu, self.codec,
                    self.width, self.height, self.bit_depth, self.time_base)

    def _create_decoder(self, nvc: Any, torch: Any) -> Any:
        codec = _enum_member(nvc.cudaVideoCodec, (NVDEC_CODECS[self.codec],))
        context = torch_context(self.gpu)
        try:
            # Decoding on our copy stream orders the decoder's writes before our copies; in
            # torch's own context (see `torch_context`), restoring the thread's context after.
            with keep_current_context():
                return nvc.CreateDecoder(gpuid=self.gpu, codec=codec, cudacontext=context,
                                         cudastream=int(self._copy_stream.cuda_stream),
                                         usedevicememory=True)
        except Exception as exc:
            logger.debug("CreateDecoder with our CUDA stream failed (%s); using its own",
                         _first_line(exc))
        try:
            with keep_current_context():
                return nvc.CreateDecoder(gpuid=self.gpu, codec=codec, usedevicememory=True)
        except Exception as exc:
            raise HardwareUnavailable(
                f"NVDEC on {_gpu_label(self.gpu)}: CreateDecoder for {self.codec} failed: "
                f"{_first_line(exc)}. Run without --nvdec to decode on the CPU.") from exc

    # -- feeding -------------------------------------------------------------------

    def _packet_data(self, data: Any, seq: int) -> tuple[Any, Any]:
        """A PacketData pointing at `data` (kept alive by the returned holder)."""
        import numpy as np

        nvc = self._nvc
        buf = np.frombuffer(data, dtype=np.uint8)
        packet = nvc.PacketData()
        packet.bsl_data = int(buf.ctypes.data)
        packet.bsl = int(buf.size)
        packet.pts = seq
        flag = getattr(getattr(nvc, "VideoPacketFlag", None), "TIMESTAMP", None)
        if flag is not None:
            try:
                packet.decode_flag = flag
            except Exception:  # the binding may take plain ints only
                pass
        return packet, buf

    def _end_of_stream_packet(self) -> Any:
        nvc = self._nvc
        packet = nvc.PacketData()
        flag = getattr(getattr(nvc, "VideoPacketFlag", None), "ENDOFSTREAM", None)
        if flag is not None:
            try:
                packet.decode_flag = flag
            except Exception:
                pass
        return packet

    def _annexb_packets(self) -> Iterator[tuple[Any, int | None, bool]]:
        """(payload, pts, is_discard) for every video packet, in decode order."""
        first = True
        for packet in self._container.demux(self._stream):
            if packet.size == 0 and packet.dts is None:
                continue  # PyAV's end-of-stream marker
            # Read these before filtering: the filter takes the packet's contents.
            pts, discard = packet.pts, bool(packet.is_discard)
            outs = self._bsf.filter(packet) if self._bsf is not None else [packet]
            for out in outs:
                if out.size == 0:
                    continue
                payload: Any = out
                if first and self._prefix:
                    payload = self._prefix + bytes(out)
                first = False
                yield payload, pts, discard
        if self._bsf is not None:
            for out in self._bsf.filter(None):
                if out.size:
                    yield out, out.pts, False

    def __iter__(self) -> Iterator[tuple[Any, int | None]]:
        if self._closed:
            raise HardwareUnavailable("NvDecoder is closed; open a new one to decode again.")
        for payload, pts, discard in self._annexb_packets():
            seq = self._book.add(pts, discard)
            packet, keep_alive = self._packet_data(payload, seq)
            frames = self._decoder.Decode(packet)
            del keep_alive
            yield from self._emit(frames)
        yield from self._emit(self._decoder.Decode(self._end_of_stream_packet()))
        if len(self._book):
            logger.warning("NVDEC: %d packet(s) produced no frame; PTS after the first such "
                           "packet may be off by one frame", len(self._book))

    def _emit(self, frames: Any) -> Iterator[tuple[Any, int | None]]:
        for frame in frames:
            pts, discard = self._book.take()
            if discard:
                continue
            tensor = self._copy_frame(frame)
            self.num_frames_decoded += 1
            yield tensor, pts

    # -- copying -------------------------------------------------------------------

    def _copy_frame(self, frame: Any) -> Any:
        """A contiguous CUDA copy `(H*3//2, W)` of a decoded frame."""
        import torch

        dtype = torch.uint8 if self.bit_depth == 8 else torch.uint16
        shape = (self.height * 3 // 2, self.width)
        with torch.cuda.device(self.gpu), torch.cuda.stream(self._copy_stream):
            self._wait_for_producer(frame, torch)
            src = self._source_view(frame, torch, dtype, shape)
            out = torch.empty(shape, dtype=dtype, device=f"cuda:{self.gpu}")
            out.copy_(src)
        self._copy_stream.synchronize()  # the decoder reuses `src`; consumers use other streams
        return out

    def _wait_for_producer(self, frame: Any, torch: Any) -> None:
        """Make our copy stream wait for the stream the frame says it was written on."""
        try:
            handle = frame.cuda()[0].__cuda_array_interface__.get("stream")
        except Exception:
            return
        if not handle or int(handle) == int(self._copy_stream.cuda_stream):
            return
        try:
            producer = torch.cuda.ExternalStream(int(handle), device=self.gpu)
            self._copy_stream.wait_stream(producer)
        except Exception:
            logger.debug("cannot wait on decoder stream %r; synchronizing the device", handle)
            torch.cuda.synchronize(self.gpu)

    def _source_view(self, frame: Any, torch: Any, dtype: Any, shape: tuple[int, int]) -> Any:
        if dtype == torch.uint8:
            src = torch.from_dlpack(frame)
        else:
            # PyNvVideoCodec 2.2 reports 16-bit plane strides in samples rather than bytes:
            # read the luma plane's pointer and pitch, and view luma + chroma at that pitch.
            cai = frame.cuda()[0].__cuda_array_interface__
            pitch = int(cai["strides"][0])
            if pitch < int(cai["shape"][1]) * 2:
                pitch *= 2
            src = torch.as_tensor(
                _CudaArray(int(cai["data"][0]), shape, (pitch, 2), "<u2"),
                device=f"cuda:{self.gpu}")
        if src.dim() == 3 and src.shape[-1] == 1:
            src = src[..., 0]
        if tuple(src.shape) != shape:
            if src.numel() == shape[0] * shape[1] and src.is_contiguous():
                src = src.reshape(shape)
            else:
                raise HardwareUnavailable(
                    f"NVDEC returned a frame of shape {tuple(src.shape)}, expected {shape} "
                    f"for {self.width}x{self.height} 4:2:0. Run without --nvdec.")
        return src.view(dtype) if src.dtype != dtype and src.element_size() == 2 else src

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Release the decoder and the file; safe to call twice."""
        self._closed = True
        self._decoder = None
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def __enter__(self) -> NvDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"NvDecoder(gpu={self.gpu}, codec={getattr(self, 'codec', '?')}, "
                f"{getattr(self, 'width', '?')}x{getattr(self, 'height', '?')}, "
                f"bit_depth={getattr(self, 'bit_depth', '?')})")


# ----------------------------------------------------------------------------- encoder

class _Nv12Planes:
    """What PyNvVideoCodec's Encode takes for device NV12: `.cuda()` -> [Y, UV] interfaces
    (shapes (H, W, 1) and (H/2, W/2, 2), as its samples' AppFrame builds them)."""

    def __init__(self, nv12: Any, width: int, height: int) -> None:
        self._keep = nv12
        ptr = int(nv12.data_ptr())
        self._planes = [
            _CudaArray(ptr, (height, width, 1), (width, 1, 1), "|u1"),
            _CudaArray(ptr + width * height, (height // 2, width // 2, 2), (width, 2, 1), "|u1"),
        ]

    def cuda(self) -> list[_CudaArray]:
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
        nvc = nvcodec_import()
        import torch

        with torch.cuda.device(gpu):
            self.stream: Any = torch.cuda.Stream(device=gpu)
        context = _context_args(gpu)  # torch's context on this GPU (see `torch_context`)
        try:
            with keep_current_context():
                self._encoder = nvc.CreateEncoder(width, height, "NV12", False,
                                                  cudastream=int(self.stream.cuda_stream),
                                                  **context, **self.options)
        except Exception as exc:
            logger.debug("CreateEncoder with our CUDA stream failed (%s); trying its own",
                         _first_line(exc))
            self.stream = None  # encode() then waits on the host for each frame instead
            try:
                with keep_current_context():
                    self._encoder = nvc.CreateEncoder(width, height, "NV12", False, **context,
                                                      **self.options)
            except Exception as exc2:
                raise HardwareUnavailable(
                    f"NVENC on {_gpu_label(gpu)} cannot encode {codec} {width}x{height}: "
                    f"{_first_line(exc2)} ({_NO_NVENC_HINT}). Run without --nvenc to "
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
    instead (`hw.gpu_io`).
    """
    if codec not in NVENC_CODECS:
        raise InvalidOption(f"Invalid NVENC codec ({codec!r}): allowed are "
                            f"{', '.join(NVENC_CODECS)}. Use e.g. --codec hevc.")
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise InvalidOption(f"Invalid NVENC frame size ({width}x{height}): width and height "
                            "must be positive and even for NV12. Pad or crop by one pixel.")
    if preset.lower() not in _PRESETS:
        raise InvalidOption(f"Invalid NVENC preset ({preset!r}): allowed are p1 (fastest) "
                            "to p7 (best). Use e.g. p4.")
    if tuning not in _TUNINGS:
        raise InvalidOption(f"Invalid NVENC tuning ({tuning!r}): allowed are "
                            f"{', '.join(_TUNINGS)}.")
    given = [name for name, value in (("qp", qp), ("cq", cq), ("bitrate", bitrate))
             if value is not None]
    if len(given) > 1:
        raise InvalidOption(f"NVENC quality: give one of qp, cq, bitrate, not "
                            f"{' and '.join(given)}.")
    qp_max = 255 if codec == "av1" else 51
    for name, value in (("qp", qp), ("cq", cq)):
        if value is not None and not 0 <= value <= qp_max:
            raise InvalidOption(f"Invalid NVENC {name} ({value}) for {codec}: allowed are "
                                f"0-{qp_max} (lower is better quality). Use e.g. 23.")
    if bitrate is not None and bitrate <= 0:
        raise InvalidOption(f"Invalid NVENC bitrate ({bitrate}): must be > 0 bits/s, "
                            "e.g. 8000000.")
    rate = Fraction(frame_rate)
    if rate <= 0:
        raise InvalidOption(f"Invalid frame rate ({frame_rate}): must be > 0.")
    if gop is not None and gop <= 0:
        raise InvalidOption(f"Invalid NVENC gop ({gop}): must be > 0 frames.")
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


# ----------------------------------------------------------------------------- Annex-B

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
        raise InvalidOption(f"Invalid codec for Annex-B parameter sets ({codec!r}): "
                            "allowed are h264, hevc. AV1 uses the sequence header OBU.")
    wanted = {32, 33, 34} if codec == "hevc" else {7, 8}
    return b"".join(b"\x00\x00\x00\x01" + nal for nal in split_annexb(data)
                    if _nal_type(nal, codec) in wanted)


def annexb_is_keyframe(data: bytes, *, codec: Literal["h264", "hevc"]) -> bool:
    """True when the access unit holds an IDR (H.264) / IRAP (HEVC) picture."""
    if codec not in ("h264", "hevc"):
        raise InvalidOption(f"Invalid codec for Annex-B keyframe test ({codec!r}): "
                            "allowed are h264, hevc.")
    for nal in split_annexb(data):
        kind = _nal_type(nal, codec)
        if (codec == "h264" and kind == 5) or (codec == "hevc" and 16 <= kind <= 23):
            return True
    return False


def _reset_caches_for_tests() -> None:
    """Forget the import result and the NVENC answers (tests only)."""
    global _module, _import_error
    _module, _import_error = None, None
    _nvenc_cache.clear()

