"""Run configuration: every option of one run, checked once, before any thread starts.

`RunConfig` is what the CLI builds from its flags and what `run()` takes. Values a
user can get wrong are checked in `validate()`, which raises `InvalidOption` with a
line that says what was given, what is allowed, and the likely fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from core.errors import InvalidOption

__all__ = ["RunConfig", "Precision", "Codec", "CRF_RANGE", "PRESETS", "default_output_path"]

Precision = Literal["auto", "fp32", "fp16", "bf16"]
Codec = Literal["h264", "hevc", "av1"]

# Quality (constant rate factor) range and presets each CPU encoder accepts.
CRF_RANGE: dict[str, tuple[int, int]] = {"h264": (0, 51), "hevc": (0, 51), "av1": (0, 63)}
_X26X_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
PRESETS: dict[str, tuple[str, ...]] = {
    "h264": _X26X_PRESETS,
    "hevc": _X26X_PRESETS,
    "av1": tuple(str(i) for i in range(14)),  # SVT-AV1 presets 0 (slowest) .. 13 (fastest)
}
NVENC_PRESETS = tuple(f"p{i}" for i in range(1, 8))  # with --nvenc: p1 (fastest) .. p7 (best)
DEFAULT_PRESET = {"h264": "medium", "hevc": "medium", "av1": "8"}


def default_output_path(source: Path, *, model_name: str, scale: int) -> Path:
    """`clip.mp4` -> `clip.<model>-x<scale>.mp4` beside the source (mkv sources keep .mkv)."""
    suffix = source.suffix.lower() if source.suffix.lower() in (".mp4", ".mkv", ".mov") else ".mp4"
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    return source.with_name(f"{source.stem}.{safe}-x{scale}{suffix}")


@dataclass
class RunConfig:
    """Every option of one run. Paths are `Path`s; `None` means "choose for me"."""

    source: Path
    output: Path | None = None  # None: <source>.<model>-x<scale>.mp4, beside the source or in output_dir
    model: str = "realesr-animevideov3"
    scale: int | None = None
    parallel: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    multi_gpu: bool = False
    gpus: str | None = None  # "0,2"
    cpu_workers: int = 1
    nvdec: bool = False
    nvenc: bool = False
    batch_size: int = 0  # 0 = probe
    max_batch_size: int = 256
    queue_size: int = 50
    precision: Precision = "auto"
    codec: Codec = "h264"
    crf: int | None = None
    preset: str | None = None
    max_frames: int | None = None
    overwrite: bool = False
    stats_json: Path | None = None
    copy_audio: bool = True
    output_dir: Path | None = None
    # The built-in sample's default output (./out/...) is framepipe's own file: re-runs replace it.
    replace_default_output: bool = False
    # Fault injection for tests: {"stage": "worker", "at_frame": k} etc. Never set by the CLI.
    faults: dict = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        if self.batch_size < 0:
            raise InvalidOption(
                f"Invalid --batch-size ({self.batch_size}): use 0 to probe the best size, or a positive number."
            )
        if self.max_batch_size < 1:
            raise InvalidOption(f"Invalid --max-batch-size ({self.max_batch_size}): it must be at least 1 (default 256).")
        if self.batch_size > self.max_batch_size:
            raise InvalidOption(
                f"Invalid --batch-size ({self.batch_size}): it is above --max-batch-size ({self.max_batch_size})."
                " Raise --max-batch-size or lower --batch-size."
            )
        if self.queue_size < 1:
            raise InvalidOption(f"Invalid --queue-size ({self.queue_size}): it must be at least 1 (default 50).")
        if self.cpu_workers < 1:
            raise InvalidOption(f"Invalid --cpu-workers ({self.cpu_workers}): it must be at least 1.")
        if self.max_frames is not None and self.max_frames < 1:
            raise InvalidOption(f"Invalid --max-frames ({self.max_frames}): it must be at least 1, or left out for all frames.")
        if self.scale is not None and self.scale < 1:
            raise InvalidOption(f"Invalid --scale ({self.scale}): it must be a positive whole number, e.g. --scale 2.")
        if self.codec not in CRF_RANGE:
            raise InvalidOption(f"Invalid --codec ({self.codec!r}): allowed are {', '.join(CRF_RANGE)}.")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise InvalidOption(f"Invalid --precision ({self.precision!r}): allowed are auto, fp32, fp16, bf16.")
        lo, hi = CRF_RANGE[self.codec]
        if self.crf is not None and not lo <= self.crf <= hi:
            raise InvalidOption(f"Invalid --quality ({self.crf}) for {self.codec}: allowed is {lo}-{hi} (lower is better).")
        allowed = PRESETS[self.codec] + (NVENC_PRESETS if self.nvenc else ())
        if self.preset is not None and self.preset not in allowed:
            raise InvalidOption(
                f"Invalid --preset ({self.preset!r}) for {self.codec}: allowed are {', '.join(allowed)}."
            )
        if self.output is not None:
            if self.output.suffix.lower() not in (".mp4", ".mkv", ".mov"):
                raise InvalidOption(
                    f"Invalid --output ({str(self.output)!r}): the file must end in .mp4, .mkv or .mov."
                )
            if self.codec == "av1" and self.output.suffix.lower() == ".mov":
                raise InvalidOption("--codec av1 cannot be stored in a .mov file. Use .mp4 or .mkv.")
        if self.stats_json is not None:
            folder = self.stats_json.parent if str(self.stats_json.parent) else Path(".")
            if self.stats_json.is_dir() or not folder.is_dir():
                raise InvalidOption(
                    f"Invalid --stats-json ({str(self.stats_json)!r}): "
                    + ("it is a directory." if self.stats_json.is_dir() else f"folder {str(folder)!r} does not exist.")
                    + " Give a file path, e.g. --stats-json run.json."
                )
        return self

    @property
    def crf_or_default(self) -> int:
        return self.crf if self.crf is not None else {"h264": 18, "hevc": 20, "av1": 28}[self.codec]

    @property
    def preset_or_default(self) -> str:
        return self.preset if self.preset is not None else DEFAULT_PRESET[self.codec]
