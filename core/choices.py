"""Every list of names framepipe accepts, defined once and imported everywhere else.

The CLI's `choices=`, `RunConfig.validate`, the encoders, the NVENC layer, the model
loader and the self-test all read these; a new codec or preset is added here only.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "DEFAULT_MODEL",
    "Precision",
    "PRECISIONS",
    "Codec",
    "CODECS",
    "CPU_ENCODERS",
    "CRF_RANGE",
    "DEFAULT_CRF",
    "X26X_PRESETS",
    "CPU_PRESETS",
    "DEFAULT_CPU_PRESET",
    "NVENC_PRESETS",
    "DEFAULT_NVENC_PRESET",
    "CONTAINER_SUFFIXES",
    "MODEL_FILE_SUFFIXES",
    "MIN_TILE_SIZE",
    "DEFAULT_TILE_OVERLAP",
    "DEFAULT_SEGMENT_SECONDS",
    "MAX_AUTO_ENCODERS",
    "MAX_CPU_WORKERS",
    "MAX_ENCODERS",
    "MAX_DECODERS",
    "MAX_SEGMENT_SECONDS",
    "BIT_DEPTHS",
    "DEEP_COLOR_CODECS",
    "OUTPUT_PIX_FMT",
    "PICTURE_FORMATS",
    "COMPILE_CHOICES",
    "OUTPUT_MODES",
]

DEFAULT_MODEL = "realesr-animevideov3"

Precision = Literal["auto", "fp32", "fp16", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)

# Output codecs: the CPU encoders (PyAV/FFmpeg) and NVENC take the same three.
Codec = Literal["h264", "hevc", "av1"]
CODECS: tuple[str, ...] = get_args(Codec)
CPU_ENCODERS: dict[str, str] = {"h264": "libx264", "hevc": "libx265", "av1": "libsvtav1"}

# --quality: the CPU encoders' constant rate factor (range, default); with --nvenc a constant QP.
CRF_RANGE: dict[str, tuple[int, int]] = {"h264": (0, 51), "hevc": (0, 51), "av1": (0, 63)}
DEFAULT_CRF: dict[str, int] = {"h264": 18, "hevc": 20, "av1": 28}

X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
CPU_PRESETS: dict[str, tuple[str, ...]] = {
    "h264": X26X_PRESETS,
    "hevc": X26X_PRESETS,
    "av1": tuple(str(i) for i in range(14)),  # SVT-AV1 presets 0 (slowest) .. 13 (fastest)
}
DEFAULT_CPU_PRESET: dict[str, str] = {"h264": "medium", "hevc": "medium", "av1": "8"}
NVENC_PRESETS: tuple[str, ...] = tuple(f"p{i}" for i in range(1, 8))  # p1 (fastest) .. p7 (best)
DEFAULT_NVENC_PRESET = "p4"

# Output bit depth (--bit-depth): 8 (yuv420p) or 10 (yuv420p10le). Kept automatically from a
# deeper source for the codecs whose 10-bit profiles players support (HEVC Main10, AV1);
# 10-bit H.264 (High 10) only when asked for: most hardware decoders refuse it.
BIT_DEPTHS: tuple[int, ...] = (8, 10, 16)  # 16: pictures only (PNG/TIFF); 10: video only
DEEP_COLOR_CODECS: tuple[str, ...] = ("hevc", "av1")
OUTPUT_PIX_FMT: dict[int, str] = {8: "yuv420p", 10: "yuv420p10le"}

# Picture output (--picture-format): the format and the suffix it is written with.
PICTURE_FORMATS: dict[str, str] = {"png": ".png", "tiff": ".tif"}

CONTAINER_SUFFIXES: tuple[str, ...] = (".mp4", ".mkv", ".mov")  # the first is the default
MODEL_FILE_SUFFIXES: tuple[str, ...] = (".pth", ".ckpt", ".safetensors", ".pt", ".ts")

# Segmented output: a segment is this long (a whole number of frames), and the automatic
# number of parallel encoders stops here (measured on 16 cores: 6 x264 instances gave 60 fps
# where 4 gave 55, DESIGN.md).
DEFAULT_SEGMENT_SECONDS = 6.0
MAX_AUTO_ENCODERS = 6

# --cpu-workers: each is a thread with its own copy of the model; beyond this a number is a typo
# (1e20 workers exhausted memory building their list before anything was said).
MAX_CPU_WORKERS = 256
# --encoders / --decoders given: each is an FFmpeg instance with threads of its own; beyond these a
# number is a typo, or a request meant to exhaust a shared service (1e9 encoders grew its memory by
# 100 MB/s, and neither a cancel nor SIGTERM stopped it).
MAX_ENCODERS = 64
MAX_DECODERS = 64
MAX_SEGMENT_SECONDS = 86400.0  # a day: a segment longer than any video (1e308 overflowed)

# Tiles (--tile-size, --tile-overlap; models/tiling.py says why): smaller tiles are mostly
# overlap and padding; 48 pixels of overlap leave 18 of context at each cut, the receptive-field
# radius of realesr-animevideov3, so its tiled output equals the untiled one.
MIN_TILE_SIZE = 16
DEFAULT_TILE_OVERLAP = 48

# --compile: torch.compile in the background (models/compiled.py). auto: on CUDA GPUs that
# Triton supports (compute capability 7.0+), never on the CPU; on: everywhere; off: eager.
COMPILE_CHOICES: tuple[str, ...] = ("auto", "on", "off")

# --output-mode: file (the output video or pictures) or none (frames discarded after the
# model: benchmarks, and analysis models whose product is not a video).
OUTPUT_MODES: tuple[str, ...] = ("file", "none")

# Temporal models and split models (issue 15)
MAX_INTERPOLATE = 16
INTERPOLATE_ONLY_MODEL = "bicubic"  # at scale 1: the identity, so --interpolate alone upscales nothing  # --interpolate N: N-1 new frames between each two
DEFAULT_INTERPOLATION_MODEL = "rife"
DEFAULT_SCENE_THRESHOLD = 0.2  # SSIM of 32x32 thumbnails below which two frames are a scene cut (RIFE's own rule)
SPLIT_TRANSPORTS = ("p2p", "bytes")
