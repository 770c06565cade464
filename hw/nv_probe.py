"""Can this GPU decode / encode this stream? NVDEC and NVENC probes, through PyNvVideoCodec.

`probe_nvdec` asks the decoder caps; `probe_nvenc` asks the encoder caps and really creates
an encoder at the run's output size. Each returns (ok, reason); the reason is one line for
the user. No threads, no queues.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from core.choices import CODECS
from core.errors import HardwareUnavailable
from hw import nv_runtime as rt
from hw.nv_runtime import NO_NVENC_HINT

__all__ = ["probe_nvdec", "probe_nvenc", "nvenc_size_problem", "nvdec_engines", "NVDEC_CODECS", "NVENC_CODECS",
           "CHROMA_TEXT"]

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
NVENC_CODECS: tuple[str, ...] = CODECS
CHROMA_TEXT = {"420": "4:2:0", "422": "4:2:2", "444": "4:4:4", "400": "4:0:0"}
_CHROMA_MEMBER = {"420": ("420", "YUV420"), "422": ("422", "YUV422"),
                  "444": ("444", "YUV444"), "400": ("Monochrome", "MONOCHROME", "400")}

# NVDEC engines of a GPU, by a word of its name (a regular expression). From
# NVIDIA's data sheets: H100/H200 (GH100) 7, A100 5, A30 4, L40/L40S 3, L4 4; Tesla P40 1.
NVDEC_ENGINES: tuple[tuple[str, int], ...] = (
    ("H100", 7), ("H200", 7), ("H800", 7), ("A100", 5), ("A800", 5), ("A30", 4), ("L40S?", 3), ("L4", 4), ("P40", 1),
)


def nvdec_engines(gpu_name: str) -> int | None:
    """The NVDEC engines of the GPU named `gpu_name` (torch's name), None when not known here."""
    for part, engines in NVDEC_ENGINES:
        if re.search(rf"\b{part}\b", gpu_name):
            return engines
    return None


_nvenc_cache: dict[tuple[int, str, int, int], tuple[bool, str]] = {}
rt._on_reset.append(_nvenc_cache.clear)
# probe_nvdec's answers, by stream kind and GPU: a caps query takes tens of ms, and every part of
# a video decoded by several NVDEC sessions (pipeline/decoders.py) opens a decoder of its own.
# Kept with the module that answered (a test's stand-in answers only for itself).
_nvdec_cache: dict[tuple, tuple[Any, tuple[bool, str]]] = {}
rt._on_reset.append(_nvdec_cache.clear)


def probe_nvdec(
    *, codec: str, bit_depth: int, chroma_format: str, width: int, height: int, gpu: int
) -> tuple[bool, str]:
    """Can NVDEC on `gpu` decode this stream? Asks the decoder caps (cuvidGetDecoderCaps).

    `codec` is PyAV's name ("h264", "hevc", "av1", "vp9", "mpeg2video", ...),
    `chroma_format` one of "420", "422", "444", "400". Returns (ok, reason).
    """
    if chroma_format not in CHROMA_TEXT:
        raise ValueError(
            f"Invalid chroma_format ({chroma_format!r}): allowed are "
            f"{', '.join(repr(c) for c in CHROMA_TEXT)}. Pass e.g. '420' for yuv420p."
        )
    if bit_depth not in (8, 10, 12):
        raise ValueError(
            f"Invalid bit_depth ({bit_depth!r}): allowed are 8, 10, 12."
        )
    try:
        nvc = rt.nvcodec_import()
    except HardwareUnavailable as exc:
        return False, str(exc)
    key = (gpu, codec, bit_depth, chroma_format, width, height)
    cached = _nvdec_cache.get(key)
    if cached is not None and cached[0] is nvc:
        return cached[1]
    result, answered = _probe_nvdec(nvc, codec=codec, bit_depth=bit_depth, chroma_format=chroma_format, width=width,
                                    height=height, gpu=gpu)
    if answered:  # the GPU's answer; a failed query may succeed next time
        _nvdec_cache[key] = (nvc, result)
    return result


def _probe_nvdec(nvc: Any, *, codec: str, bit_depth: int, chroma_format: str, width: int, height: int,
                 gpu: int) -> tuple[tuple[bool, str], bool]:
    """((ok, reason), whether that is an answer to keep: not a failed query)."""
    what = f"{codec} {bit_depth}-bit {CHROMA_TEXT[chroma_format]}"
    label = rt.gpu_label(gpu)
    if codec not in NVDEC_CODECS:
        return (False, (f"NVDEC cannot decode {codec} (it decodes "
                        f"{', '.join(NVDEC_CODECS)})")), True
    try:
        nv_codec = rt.enum_member(nvc.cudaVideoCodec, (NVDEC_CODECS[codec],))
        nv_chroma = rt.enum_member(nvc.cudaVideoChromaFormat, _CHROMA_MEMBER[chroma_format])
        with rt.keep_current_context():
            caps = dict(nvc.GetDecoderCaps(gpuid=gpu, codec=nv_codec,
                                           chromaformat=nv_chroma, bitdepth=bit_depth))
    except Exception as exc:
        logger.debug("GetDecoderCaps failed", exc_info=True)
        return (False, f"NVDEC on {label}: capability query for {what} failed: {rt.first_line(exc)}"), False
    logger.debug("NVDEC caps on GPU %d for %s: %s", gpu, what, caps)
    if "supported" in caps:
        supported = bool(caps["supported"])
    else:  # older bindings: an unsupported codec reports no (or zero) limits
        supported = int(caps.get("width_max", 0) or 0) > 0
    if not supported:
        return (False, f"NVDEC on {label} cannot decode {what}"), True
    min_w, min_h = int(caps.get("width_min", 0) or 0), int(caps.get("height_min", 0) or 0)
    max_w, max_h = int(caps.get("width_max", 0) or 0), int(caps.get("height_max", 0) or 0)
    if width < min_w or height < min_h:
        return (False, (f"NVDEC on {label} cannot decode {what} at {width}x{height}: "
                        f"smallest is {min_w}x{min_h}")), True
    macroblocks = ((width + 15) // 16) * ((height + 15) // 16)
    mb_max = int(caps.get("mb_num_max", 0) or 0)
    if (max_w and width > max_w) or (max_h and height > max_h) or (mb_max and macroblocks > mb_max):
        return (False, (f"NVDEC on {label} cannot decode {what} at {width}x{height}: "
                        f"largest is {max_w}x{max_h}")), True
    engines = caps.get("num_decoder_engines")
    extra = f", {engines} engine(s)" if engines else ""
    return (True, f"NVDEC on {label} decodes {what} up to {max_w}x{max_h}{extra}"), True


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
        with rt.keep_current_context():
            return dict(query(gpuid=gpu, codec=codec))
    except Exception:
        logger.debug("GetEncoderCaps(%d, %s) failed", gpu, codec, exc_info=True)
        return None


def _try_create(nvc: Any, *, codec: str, gpu: int, width: int, height: int, fmt: str = "NV12") -> str | None:
    """Create (and drop) an encoder; the first line of the error, or None when it worked."""
    options = {"codec": codec, "gpu_id": str(gpu), "preset": "P1"}
    if codec == "av1":
        options["use_ivf_container"] = "0"
    try:
        with rt.keep_current_context():
            encoder = nvc.CreateEncoder(width, height, fmt, False, **rt.context_args(gpu), **options)
            del encoder
        return None
    except Exception as exc:
        logger.debug("CreateEncoder(%s %dx%d on GPU %d) failed", codec, width, height, gpu,
                      exc_info=True)
        return rt.first_line(exc)


def _failure_hint(nvc: Any, *, codec: str, gpu: int) -> str:
    """Why CreateEncoder failed: no NVENC at all, or no encoder for this codec."""
    if codec != "h264" and _try_create(nvc, codec="h264", gpu=gpu, width=_PROBE_SIZE[0],
                                       height=_PROBE_SIZE[1]) is None:
        if codec == "av1":
            return ("this GPU's NVENC encodes h264 but has no AV1 encoder: NVENC encodes AV1 "
                    "from Ada Lovelace on (RTX 40, L4, L40; compute capability 8.9+). Use "
                    "--codec hevc or --codec h264")
        return f"this GPU's NVENC encodes h264 but not {codec}. Use --codec h264"
    return NO_NVENC_HINT


def _pyav_can_mux_encoded() -> str | None:
    """None when PyAV can mux NVENC's access units (a stream with no encoder), else why not."""
    try:
        import av
    except Exception as exc:  # PyAV is a hard requirement elsewhere; say so anyway
        return f"PyAV is not usable ({rt.first_line(exc)})"
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
                height: int | None = None, bit_depth: int = 8) -> tuple[bool, str]:
    """Can NVENC on `gpu` encode `codec` at `width`x`height` and `bit_depth` (8: NV12 in, 10:
    P010 in)? Returns (ok, reason).

    Without a size it asks whether the GPU has the encoder at all (a 256x256 encoder). With
    the run's real output size it first checks the encoder caps (`GetEncoderCaps`: largest
    size, macroblock budget), then really creates an encoder of that size: H.264 NVENC tops
    out at 4096x4096, so a 1080p source upscaled x4 (7680x4320) passes a small probe and then
    fails. When h264 is too large but hevc would fit, the reason says so. A failure says
    whether the GPU has no NVENC engine (A100, H100, H200) or lacks this codec (AV1 before
    Ada Lovelace). 10-bit: the codec's `support_10bit_encode` cap, then a real "P010" encoder
    (PyNvVideoCodec refuses P010 where the cap is 0: H.264 before Blackwell). Answers are
    cached per (gpu, codec, size, bit depth).
    """
    from hw.nvenc import NVENC_INPUT_FORMATS

    if (width is None) != (height is None):
        raise ValueError(f"probe_nvenc: give both width and height or neither, got "
                         f"width={width!r}, height={height!r}")
    if bit_depth not in NVENC_INPUT_FORMATS:
        raise ValueError(f"probe_nvenc: bit_depth {bit_depth!r}; framepipe feeds NVENC 8 or 10 bits")
    w, h = (width, height) if width is not None and height is not None else _PROBE_SIZE
    key = (gpu, codec, w, h, bit_depth)
    if key in _nvenc_cache:
        return _nvenc_cache[key]
    if codec not in NVENC_CODECS:
        return False, f"NVENC cannot encode {codec} (it encodes {', '.join(NVENC_CODECS)})"
    too_old = rt.nvenc_binding_too_old()
    if too_old:
        return False, too_old
    try:
        nvc = rt.nvcodec_import()
    except HardwareUnavailable as exc:
        return False, str(exc)  # not cached: the reason is already cached by the import
    label = rt.gpu_label(gpu)
    at = f" at {w}x{h}" if width is not None else ""
    what = codec if bit_depth == 8 else f"{bit_depth}-bit {codec}"
    caps = _encoder_caps(nvc, codec=codec, gpu=gpu)
    problem = nvenc_size_problem(caps, codec=codec, width=w, height=h)
    if problem is None and bit_depth > 8 and caps is not None and not int(caps.get("support_10bit_encode", 1) or 0):
        problem = "its encoder caps say no 10-bit encoding (support_10bit_encode = 0)"
    if problem is not None:
        hint = (_other_codec_hint(codec=codec, gpu=gpu, width=w, height=h) if bit_depth == 8
                else _deep_hint(codec))
        result = (False, f"NVENC on {label} cannot encode {what}{at}: {problem}{hint}")
    else:
        error = _try_create(nvc, codec=codec, gpu=gpu, width=w, height=h, fmt=NVENC_INPUT_FORMATS[bit_depth])
        if error is None:
            pyav_problem = _pyav_can_mux_encoded()
            result = ((True, f"NVENC on {label} encodes {what}{at}") if pyav_problem is None
                      else (False, f"NVENC on {label} encodes {what}, but {pyav_problem}"))
        elif bit_depth > 8 and _try_create(nvc, codec=codec, gpu=gpu, width=w, height=h) is None:
            result = (False, f"NVENC on {label} cannot encode {what}{at}: {error}{_deep_hint(codec)}")
        else:
            result = (False, f"NVENC on {label} cannot encode {what}{at}: {error} "
                             f"({_failure_hint(nvc, codec=codec, gpu=gpu)})")
    _nvenc_cache[key] = result
    return result


def _deep_hint(codec: str) -> str:
    """For a 10-bit encoder NVENC lacks: what does encode 10 bits."""
    if codec == "h264":
        return ("; NVENC encodes 10-bit H.264 only from Blackwell (RTX 50) on: --codec hevc keeps 10 bits on "
                "NVENC (HEVC Main10)")
    return ""


def _other_codec_hint(*, codec: str, gpu: int, width: int, height: int) -> str:
    """For an h264 output too large for NVENC: whether NVENC's hevc encoder takes it."""
    if codec != "h264":
        return ""
    ok, _ = probe_nvenc(codec="hevc", gpu=gpu, width=width, height=height)
    return ("; NVENC's hevc encoder takes this size: add --codec hevc to keep encoding on "
            "the GPU" if ok else "")




def nvenc_sessions(*, codec: str, gpu: int, width: int, height: int, wanted: int) -> tuple[bool, int]:
    """How many NVENC encoders of this size can be open at once on `gpu`, up to `wanted`.

    Consumer GeForce drivers cap concurrent NVENC sessions (the cap has changed between driver
    releases), data-centre GPUs do not: so the segmented writer asks the GPU by opening them
    and keeping them open, instead of assuming a number. (True, n); (False, 0) without NVENC."""
    try:
        nvc = rt.nvcodec_import()
    except HardwareUnavailable:
        return False, 0
    options = {"codec": codec, "gpu_id": str(gpu), "preset": "P1"}
    if codec == "av1":
        options["use_ivf_container"] = "0"
    opened = []
    try:
        with rt.keep_current_context():
            for _ in range(wanted):
                try:
                    opened.append(nvc.CreateEncoder(width, height, "NV12", False, **rt.context_args(gpu), **options))
                except Exception as exc:  # the cap (or memory) is reached
                    logger.debug("NVENC session %d on GPU %d refused: %s", len(opened) + 1, gpu, rt.first_line(exc))
                    break
        count = len(opened)
    finally:
        opened.clear()  # every session is released before the run opens its own
    return count > 0, count
