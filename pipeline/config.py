"""Run configuration: every option of one run, checked once, before any thread starts.

`RunConfig` is what the CLI builds from its flags and what `run()` takes. Values a
user can get wrong are checked in `validate()`, which raises `InvalidOption` with a
line that says what was given, what is allowed, and the likely fix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from core.choices import (DEFAULT_INTERPOLATION_MODEL, DEFAULT_SCENE_THRESHOLD, MAX_CPU_WORKERS, MAX_DECODERS, MAX_ENCODERS,
                          MAX_INTERPOLATE, MAX_SEGMENT_SECONDS, SPLIT_TRANSPORTS, BIT_DEPTHS, CODECS, COMPILE_CHOICES, OUTPUT_MODES, CONTAINER_SUFFIXES, CPU_PRESETS, CRF_RANGE, DEFAULT_CPU_PRESET, DEFAULT_CRF,
                          DEFAULT_MODEL, DEFAULT_TILE_OVERLAP, MIN_TILE_SIZE, NVENC_PRESETS, PICTURE_FORMATS, PRECISIONS,
                          Codec, Precision)
from core.cut import Cut
from core.errors import InvalidOption
from core.files import describe_file_kind

__all__ = ["RunConfig", "default_output_path"]


def default_output_path(source: Path, *, model_name: str, scale: int, interpolate: int = 1,
                        identity: bool = False) -> Path:
    """`clip.mp4` -> `clip.<model>-x<scale>.mp4` beside the source (mkv sources keep .mkv);
    with --interpolate N `clip.<model>-x<scale>.fpsNx.mp4`, or `clip.fpsNx.mp4` when
    the frames are only interpolated (`identity`)."""
    suffix = source.suffix.lower() if source.suffix.lower() in CONTAINER_SUFFIXES else CONTAINER_SUFFIXES[0]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model_name)
    parts = [] if identity else [f"{safe}-x{scale}"]
    if interpolate > 1:
        parts.append(f"fps{interpolate}x")
    return source.with_name(f"{source.stem}.{'.'.join(parts)}{suffix}")


@dataclass
class RunConfig:
    """Every option of one run. Paths are `Path`s; `None` means "choose for me"."""

    source: Path
    output: Path | None = None  # None: <source>.<model>-x<scale>.mp4, beside the source or in output_dir
    model: str = DEFAULT_MODEL
    scale: int | None = None
    parallel: bool = True
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    multi_gpu: bool = False
    gpus: str | None = None  # "0,2"
    cpu_workers: int = 1
    nvdec: bool = False
    nvenc: bool = False
    decoders: int = 0  # decoders at once on consecutive parts of the video; 0 = auto (pipeline/decoders.py)
    batch_size: int = 0  # 0 = probe
    max_batch_size: int = 256
    queue_size: int = 50
    precision: Precision = "auto"
    tile_size: int | None = None  # --tile-size: input pixels a side of the tiles; None/0: whole frames
    tile_overlap: int | None = None  # --tile-overlap; None: models.tiling's default
    compile: str = "auto"  # --compile auto|on|off (models/compiled.py)
    output_mode: str = "file"  # --output-mode file|none (none: frames discarded after the model)
    codec: Codec = "h264"
    bit_depth: int | None = None  # None: the source's, where the codec's 10-bit profile is widely played
    crf: int | None = None
    preset: str | None = None
    max_frames: int | None = None
    start: str | None = None  # --start: seconds, h:mm:ss.ms or a frame number "300f" (core.cut)
    end: str | None = None  # --end, the same forms; the frame at the end is not included
    overwrite: bool = False
    stats_json: Path | None = None
    copy_audio: bool = True
    audio: Path | None = None  # --audio FILE: its audio instead of the source's (a soundtrack for pictures)
    fps: str | None = None  # --fps for a picture sequence (default 24)
    picture_format: str | None = None  # --picture-format png/tiff for picture output (default png)
    output_dir: Path | None = None
    # The built-in sample's default output (./out/...) is framepipe's own file: re-runs replace it.
    replace_default_output: bool = False
    # Segmented output (pipeline/segments.py): parallel encoders, segment length, resume.
    encoders: int = 0  # 0 = auto (cores, frame size, memory)
    # The CPU cores the plan counts on (decoders, encoders, x264 threads); None: all the process may
    # use. The service gives each job its devices' share, so jobs side by side do not each plan for all.
    cores: int | None = None
    segment_frames: int | None = None
    segment_seconds: float | None = None
    resume: bool = False
    keep_parts: bool = False
    trust_model: bool = False  # --trust-model: a TorchScript model file (a program) may run
    # Temporal models (models/rife.py): --interpolate N makes N-1 frames between each two (a
    # chain after --model when one is given); a pair less alike than --scene-threshold (SSIM of
    # 32x32 thumbnails) is a scene cut: the frame is repeated instead of blending two shots.
    interpolate: int = 1  # 1: off
    interpolation_model: str | None = None  # None: not given (rife)
    scene_threshold: float | None = None  # None: not given (DEFAULT_SCENE_THRESHOLD)
    # A model split in two stages on two GPUs (--split-gpu), the stage boundary crossed
    # device to device (p2p) or as bytes (the form a network hop would carry).
    split_gpu: bool = False
    split_transport: str = "p2p"

    def validate(self) -> "RunConfig":
        if self.fps is not None:  # a bad value is bad input whatever the source (--fps 0 ran, silently)
            from hw.pictures import parse_fps

            parse_fps(self.fps)
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
        if not 1 <= self.cpu_workers <= MAX_CPU_WORKERS:
            raise InvalidOption(f"Invalid --cpu-workers ({self.cpu_workers}): use 1 to {MAX_CPU_WORKERS} (default 1).")
        if self.max_frames is not None and self.max_frames < 1:
            raise InvalidOption(f"Invalid --max-frames ({self.max_frames}): it must be at least 1, or left out for all frames.")
        self.cut  # parses --start/--end: InvalidOption on a bad one
        if self.picture_format is not None and self.picture_format not in PICTURE_FORMATS:
            raise InvalidOption(f"Invalid --picture-format ({self.picture_format!r}): allowed are "
                                f"{', '.join(PICTURE_FORMATS)}.")
        if self.audio is not None and not os.path.isfile(self.audio):
            what = describe_file_kind(self.audio.stat().st_mode) if os.path.exists(self.audio) else "no such file"
            raise InvalidOption(f"Invalid --audio ({str(self.audio)!r}): {what}. Give a video or audio file.")
        if not 0 <= self.decoders <= MAX_DECODERS:
            raise InvalidOption(f"Invalid --decoders ({self.decoders}): use 0 to choose by the decoder and the cores, "
                                f"or 1 to {MAX_DECODERS}, e.g. --decoders 4.")
        if not 0 <= self.encoders <= MAX_ENCODERS:
            raise InvalidOption(f"Invalid --encoders ({self.encoders}): use 0 to choose by cores and memory, or 1 to "
                                f"{MAX_ENCODERS}.")
        if self.cores is not None and self.cores < 1:
            raise InvalidOption(f"Invalid --cores ({self.cores}): give at least 1, or leave it out for every core the "
                                "process may use.")
        if self.segment_frames is not None and self.segment_seconds is not None:
            raise InvalidOption("--segment-frames and --segment-seconds were both given. Drop one of them.")
        if self.segment_frames is not None and self.segment_frames < 1:
            raise InvalidOption(f"Invalid --segment-frames ({self.segment_frames}): it must be at least 1.")
        if self.segment_seconds is not None and not 0 < self.segment_seconds <= MAX_SEGMENT_SECONDS:
            raise InvalidOption(f"Invalid --segment-seconds ({self.segment_seconds}): give a number of seconds above 0 "
                                f"and at most {MAX_SEGMENT_SECONDS:.0f}, e.g. 6.")
        if self.scale is not None and self.scale < 1:
            raise InvalidOption(f"Invalid --scale ({self.scale}): it must be a positive whole number, e.g. --scale 2.")
        if self.codec not in CODECS:
            raise InvalidOption(f"Invalid --codec ({self.codec!r}): allowed are {', '.join(CODECS)}.")
        if self.bit_depth is not None and self.bit_depth not in BIT_DEPTHS:
            raise InvalidOption(f"Invalid --bit-depth ({self.bit_depth}): allowed are {', '.join(map(str, BIT_DEPTHS))}.")
        if self.tile_size and self.tile_size < MIN_TILE_SIZE:
            raise InvalidOption(f"Invalid --tile-size ({self.tile_size}): use 0 for whole frames, or at least "
                                f"{MIN_TILE_SIZE} pixels, e.g. --tile-size 512.")
        if self.tile_overlap is not None and self.tile_overlap < 0:
            raise InvalidOption(f"Invalid --tile-overlap ({self.tile_overlap}): it must be 0 or more "
                                f"(default {DEFAULT_TILE_OVERLAP}).")
        if self.tile_overlap is not None and self.tile_size and self.tile_overlap >= self.tile_size:
            raise InvalidOption(f"Invalid --tile-overlap ({self.tile_overlap}): it must be smaller than --tile-size "
                                f"({self.tile_size}), e.g. --tile-overlap {self.tile_size // 4}.")
        if self.compile not in COMPILE_CHOICES:
            raise InvalidOption(f"Invalid --compile ({self.compile!r}): allowed are {', '.join(COMPILE_CHOICES)}.")
        if self.output_mode not in OUTPUT_MODES:
            raise InvalidOption(f"Invalid --output-mode ({self.output_mode!r}): allowed are {', '.join(OUTPUT_MODES)}.")
        if self.output_mode == "none":
            for flag, given in (("--output", self.output is not None), ("--resume", self.resume),
                                ("--nvenc", self.nvenc), ("--audio", self.audio is not None),
                                ("--segment-frames", self.segment_frames is not None),
                                ("--segment-seconds", self.segment_seconds is not None)):
                if given:
                    raise InvalidOption(f"--output-mode none writes nothing, so {flag} has nothing to do. Drop {flag}, "
                                        "or use --output-mode file.")
        if self.interpolate < 1 or self.interpolate > MAX_INTERPOLATE:
            raise InvalidOption(f"Invalid --interpolate ({self.interpolate}): use 2 to double the frame rate, up to "
                                f"{MAX_INTERPOLATE} (1: off).")
        if self.scene_threshold is not None and not 0 <= self.scene_threshold < 1:
            raise InvalidOption(f"Invalid --scene-threshold ({self.scene_threshold}): use a value from 0 (never a "
                                f"cut) to below 1, default {DEFAULT_SCENE_THRESHOLD}.")
        if self.split_transport not in SPLIT_TRANSPORTS:
            raise InvalidOption(f"Invalid --split-transport ({self.split_transport!r}): allowed are "
                                f"{', '.join(SPLIT_TRANSPORTS)}.")
        if self.precision not in PRECISIONS:
            raise InvalidOption(f"Invalid --precision ({self.precision!r}): allowed are {', '.join(PRECISIONS)}.")
        lo, hi = CRF_RANGE[self.codec]
        if self.crf is not None and not lo <= self.crf <= hi:
            raise InvalidOption(f"Invalid --quality ({self.crf}) for {self.codec}: allowed is {lo}-{hi} (lower is better).")
        allowed = CPU_PRESETS[self.codec] + (NVENC_PRESETS if self.nvenc else ())
        if self.preset is not None and self.preset not in allowed:
            raise InvalidOption(
                f"Invalid --preset ({self.preset!r}) for {self.codec}: allowed are {', '.join(allowed)}."
            )
        if self.output is not None:
            self.check_output_name(self.output)
        if self.stats_json is not None:
            folder = self.stats_json.parent if str(self.stats_json.parent) else Path(".")
            if os.path.isdir(self.stats_json) or not os.path.isdir(folder):
                raise InvalidOption(
                    f"Invalid --stats-json ({str(self.stats_json)!r}): "
                    + ("it is a directory." if os.path.isdir(self.stats_json) else f"folder {str(folder)!r} does not exist.")
                    + " Give a file path, e.g. --stats-json run.json."
                )
        return self

    def check_output_name(self, output: Path) -> None:
        """The output's container: one framepipe writes, and one that holds the codec (or a
        picture folder or pattern: hw.pictures)."""
        from hw.pictures import PICTURE_SUFFIXES, picture_target

        # one picture file in (a still one, which the plan checks): one named picture file may come out
        one = os.path.isfile(self.source) and Path(self.source).suffix.lower() in PICTURE_SUFFIXES
        if picture_target(output, picture_format=self.picture_format, bit_depth=8, one_picture=one) is not None:
            return
        if output.suffix.lower() not in CONTAINER_SUFFIXES:
            raise InvalidOption(
                f"Invalid --output ({str(output)!r}): the file must end in {', '.join(CONTAINER_SUFFIXES[:-1])} "
                f"or {CONTAINER_SUFFIXES[-1]}."
            )
        if self.codec == "av1" and output.suffix.lower() == ".mov":
            raise InvalidOption("--codec av1 cannot be stored in a .mov file. Use .mp4 or .mkv.")

    @property
    def cut(self) -> Cut | None:
        """The part of the video --start/--end ask for (None: all of it)."""
        return Cut.from_flags(self.start, self.end)

    @property
    def interpolation_model_or_default(self) -> str:
        return self.interpolation_model if self.interpolation_model is not None else DEFAULT_INTERPOLATION_MODEL

    @property
    def scene_threshold_or_default(self) -> float:
        return self.scene_threshold if self.scene_threshold is not None else DEFAULT_SCENE_THRESHOLD

    @property
    def crf_or_default(self) -> int:
        return self.crf if self.crf is not None else DEFAULT_CRF[self.codec]

    @property
    def preset_or_default(self) -> str:
        return self.preset if self.preset is not None else DEFAULT_CPU_PRESET[self.codec]
