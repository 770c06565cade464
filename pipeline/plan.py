"""Planning: everything a run decides before the first frame, as a frozen `RunPlan`.

`plan_run(config)` checks every input a user can get wrong (the source, every path the run
writes, the model, the scale, the devices, the codecs) and resolves what the config leaves
open (the output path, the preset, the precision per device, NVDEC/NVENC after probing),
without changing the config. Each adjustment a user should know of (a fallback, a
precision, a lossless profile) is one line in `notes`. Raises a `FramepipeError` with one
line on bad input. No threads, no stages.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

import torch

from core.choices import DEEP_COLOR_CODECS, DEFAULT_CPU_PRESET, DEFAULT_NVENC_PRESET, DEFAULT_SEGMENT_SECONDS, MAX_AUTO_ENCODERS, NVENC_PRESETS
from core.cut import Cut
from core.errors import HardwareUnavailable, InvalidOption, InvalidSource, OutputExists, OutputNotWritable, UnsafeOutput
from core.files import check_output_paths, file_key
from hw.av_source import SourceInfo, probe_audio, probe_source
from hw.color import ColorInfo
from hw.encode_speed import ENCODER_SPEEDS_FILE, EncoderSpeed, known_encoder_speed, remembered_encoder_speed, speed_key
from hw.memory import ProbeMemo
from hw.pictures import (PictureSequence, PictureTarget, describe_unusable, find_pictures, orientation, parse_fps,
                         picture_target, probe_pictures, unusable_pictures)
from hw.scheduling import quota_note, usable_cores
from models import LoadedModel
from models.compiled import compile_choice
from models.registry import default_cache_dir
from pipeline.config import RunConfig, default_output_path
from pipeline.decoders import DecodePlan, choose_decoders, plan_decoders
from pipeline.encoder_choice import (ENCODER_FACTORS_FILE, EncoderChoice, choose_encoders, compiled_as_run,
                                     encoder_threads, model_rate_key, model_rate_timed_alone, model_rates_memo, pool_fps,
                                     remembered_content_factor, remembered_model_rate)
from pipeline.segments import PICTURE_MANIFEST, PartsFolder, SegmentLayout, recorded_taper

__all__ = ["RunPlan", "plan_run", "plan_devices", "DevicePlan", "cores_for", "model_rate_key_as_run"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DevicePlan:
    devices: tuple[torch.device, ...]
    note: str = ""  # one line for the user when the request was adjusted (fallbacks)


@dataclass(frozen=True)
class SplitChoice:
    """--split-gpu: `part` ("spatial": the upscaler; "interpolation": RIFE) runs in two stages, the
    first on devices[0], the second on devices[1], in `dtype` on both."""

    part: str
    devices: tuple[torch.device, torch.device]
    dtype: torch.dtype


@dataclass(frozen=True)
class RunPlan:
    """What runs where and what it makes; nothing changes it once made."""

    config: RunConfig
    source: SourceInfo
    model: LoadedModel
    output: Path | None  # resolved: --output, or named after the source, model and scale; None: --output-mode none
    overwrite_output: bool  # --overwrite, or the built-in sample's own default output
    devices: tuple[torch.device, ...]
    dtypes: Mapping[str, tuple[torch.dtype, str]]  # per device: (dtype, why)
    compiled: Mapping[str, tuple[bool, str]]  # per device: (torch.compile in the background?, why)
    output_width: int
    output_height: int
    use_nvdec: bool
    use_nvenc: bool
    preset: str  # for the encoder in use (CPU or NVENC)
    notes: tuple[str, ...]
    segments: SegmentLayout | None = None  # None: one output file written directly
    num_encoders: int = 1  # encoders working at once on consecutive segments
    encoder_threads: int = 0  # threads each CPU encoder of the pool runs (0: the encoder's choice)
    encoder_line: str = ""  # "encoders: 3 (why)": said when the run starts (pipeline.encoder_choice)
    # Frames the CPU encoders can take per second, all together, an upper estimate: from one
    # encoder's measured speed (synthetic frames, or what real frames did here before where that is
    # more); None: not known (no speed measured before, NVENC, no output, a video of one segment
    # with no --encoders). Workers weigh compiling against it (--compile auto, where they probe).
    encoders_fps: float | None = None
    model_rate_key: str = ""  # where the run remembers the rate its decoder and model delivered
    encoder_speed_key: str = ""  # where the run remembers how its real frames encoded (CPU encoders)
    output_bit_depth: int = 8  # 8 (yuv420p) or 10 (yuv420p10le); pictures: 8 or 16
    pictures: PictureSequence | None = None  # the source is a picture sequence (hw.pictures)
    picture_target: PictureTarget | None = None  # the output is pictures (`output` is their folder, or the one file)
    cut: Cut | None = None  # --start/--end (None: the whole video)
    interpolator: LoadedModel | None = None  # --interpolate: the temporal model after `model` (RIFE)
    split: "SplitChoice | None" = None  # --split-gpu: which model is split, over which two devices
    earlier_partial_output: Path | None = None  # --resume: the partial output the stopped run left
    decoding: DecodePlan | None = None  # several decoders on consecutive parts of the video (None: one)

    @property
    def interpolate(self) -> int:
        """Output frames per source frame (1: no interpolation)."""
        return self.config.interpolate if self.interpolator is not None else 1

    @property
    def output_time_base(self) -> Fraction:
        """The source's time base, divided by N with --interpolate N: a made frame's timestamp,
        a fraction k/N of the way between its neighbours', is then a whole number."""
        return self.source.time_base / self.interpolate

    @property
    def output_frame_rate(self) -> Fraction | None:
        rate = self.source.average_rate
        return rate * self.interpolate if rate else rate

    @property
    def spatial_identity(self) -> bool:
        """The model before the interpolation does nothing (--interpolate alone)."""
        return self.interpolator is not None and self.model.arch == "bicubic" and self.model.scale == 1

    @property
    def audio_source(self) -> Path | None:
        """Where the output's audio (and subtitles) come from: --audio, else a video source."""
        if not self.config.copy_audio:
            return None
        if self.config.audio is not None:
            return self.config.audio
        return self.extras_source

    @property
    def extras_source(self) -> Path | None:
        """The video source whose tags, chapters and attachments the output takes (hw.av_streams);
        None for pictures."""
        return self.config.source if self.pictures is None else None

    def picture_name(self, index: int) -> str:
        """The file name of output picture `index` (picture output only; `_picture_name`)."""
        return _picture_name(self.picture_target, self.pictures, self.config.source, self.interpolate, index)

    @property
    def first_gpu(self) -> int:
        first = self.devices[0]
        return first.index or 0 if first.type == "cuda" else 0

    @property
    def num_frames_estimate(self) -> int:
        """Frames this run will process, estimated before decoding (0: unknown)."""
        return _frames_estimate(self.config, self.source)


def _frames_estimate(config: RunConfig, source: SourceInfo) -> int:
    total = source.num_frames_estimate
    cut = config.cut
    if cut is not None:
        total = cut.frame_estimate(float(source.average_rate or 25), total)
    if config.max_frames is not None:
        total = min(total, config.max_frames) if total else config.max_frames
    return total


def plan_run(config: RunConfig) -> RunPlan:
    """Check every input and decide the run; one-line `FramepipeError` on bad input."""
    from models import load_model

    config.validate()
    notes: list[str] = [note] if (note := quota_note()) else []
    pictures = find_pictures(config.source)
    source = probe_source(config.source) if pictures is None else _picture_source(config, pictures, notes)
    if pictures is None and config.fps is not None:  # (its value checked by validate)
        notes.append(f"--fps {config.fps} sets the rate of a picture sequence; a video keeps its own timestamps: "
                     "ignored.")
    if source.other_video_streams:
        notes.append(source.other_video_streams)
    overwrite = config.overwrite or config.replace_default_output
    # A stopped run's partial output (at the output name, or beside an earlier output): this run's
    # replaces it, or removes it once the job is done (core.files.OutputFile); at the output name,
    # finishing the job replaces it without --overwrite.
    earlier_partial = PartsFolder.partial_output_of(config.output) if config.resume and config.output is not None else None
    own_partial = earlier_partial is not None and earlier_partial == config.output
    # One picture file (not a folder or a pattern, which may hold more later) may go to one named picture file
    one_picture = pictures is not None and len(pictures.paths) == 1 and os.path.isfile(config.source)
    if config.output is not None and picture_target(config.output, picture_format=config.picture_format,
                                                     bit_depth=8, one_picture=one_picture) is None:
        try:
            _check_paths(config, config.output, pictures, overwrite=overwrite, own_partial=own_partial)  # cheap checks first
        except OutputExists:
            if config.resume or not PartsFolder.holds_partial_output_of(config.output):
                raise
            # the stopped run's own line named --resume; the next run's only --overwrite (redo it all)
            raise OutputExists(f"--output {str(config.output)!r} is the partial output a stopped run left: the same "
                               "command with --resume takes it up (from its finished segments, if any); --overwrite "
                               "starts again.") from None
    if config.output_mode == "none" and config.stats_json is not None:  # the one file such a run writes
        check_output_paths([("--stats-json", config.stats_json)], inputs=_read_paths(config, pictures),
                           overwrite=overwrite)
    model = load_model(config.model, scale=config.scale, kind="spatial", trust_code=config.trust_model)
    interpolator = _plan_interpolation(config, source, model, notes)
    split = _plan_split(config, model, interpolator, notes)
    output = config.output
    if config.output_mode == "none":
        return replace(_plan_discarding(config, source, model, pictures, notes), interpolator=interpolator, split=split)
    if output is None:  # named after the model's real scale, beside the source or in output_dir
        if pictures is not None:  # pictures in: a folder of pictures out, beside the source's
            name = Path(f"{_sequence_name(pictures)}_{Path(config.model).stem}-x{model.scale}")  # no dot: a folder
            beside = Path(pictures.spec).resolve().parent if Path(pictures.spec).is_dir() else pictures.paths[0].parent
            output = (config.output_dir / name.name) if config.output_dir is not None else beside / name
        else:
            name = default_output_path(config.source, model_name=Path(config.model).stem, scale=model.scale,
                                       interpolate=config.interpolate if interpolator is not None else 1,
                                       identity=interpolator is not None and model.arch == "bicubic" and model.scale == 1)
            output = (config.output_dir / name.name) if config.output_dir is not None else name
    target = picture_target(output, picture_format=config.picture_format, bit_depth=_picture_depth(config, source),
                            one_picture=one_picture)
    if config.resume and config.output is None:  # the output's name is known only now
        earlier_partial = PartsFolder.partial_output_of(Path(output))
        own_partial = earlier_partial == Path(output)
    if target is None:
        _check_paths(config, output, pictures, overwrite=overwrite, own_partial=own_partial)
        _check_frame_spacing(Path(output), source, config.interpolate if interpolator is not None else 1,
                             video=Path(config.source) if pictures is None else None)
    else:  # a folder of pictures; or one picture file (RunPlan.output: that file)
        output = target.folder / target.file_name if target.file_name is not None else target.folder
    devices, dtypes, compiled = _plan_workers(config, model, source, notes)
    if pictures is None and source.has_alpha:
        notes.append(f"the video has an alpha channel ({source.pix_fmt}); framepipe reads video without it, so "
                     "the output has none.")
    if config.codec == "h264" and config.crf == 0:
        notes.append("--quality 0 is lossless: x264 then writes the High 4:4:4 Predictive profile, which many "
                     "players (browsers, phones, QuickTime) cannot play. Use --quality 1 or more for a widely playable file.")
    out_w, out_h = source.width * model.scale, source.height * model.scale
    out_w, out_h = out_w + out_w % 2, out_h + out_h % 2
    if target is not None:  # pictures out: RGB at the model's size (no 4:2:0 padding), no encoder
        out_w, out_h = source.width * model.scale, source.height * model.scale
        if orientation(source.display_matrix)[0]:  # a rotated video's pictures are written upright
            out_w, out_h = out_h, out_w
        _check_picture_output(config, target, pictures, source, out_count=_frames_estimate(config, source),
                              overwrite=overwrite, per=config.interpolate if interpolator is not None else 1)
        if config.nvenc:
            notes.append("--nvenc: the output is pictures, written on the CPU (PNG/TIFF).")
        use_nvdec = False
        if pictures is None:  # a video to pictures: NVDEC may still decode it
            use_nvdec, _ = _plan_codecs(config, source, devices, notes, output_size=(out_w, out_h), encode=False)
        decoding = _plan_decoding(config, source, devices, notes, use_nvdec=use_nvdec, pictures=pictures)
        return RunPlan(
            config=config, source=source, model=model, output=Path(output), overwrite_output=overwrite or own_partial,
            devices=tuple(devices), dtypes=dtypes, compiled=compiled, output_width=out_w, output_height=out_h,
            use_nvdec=use_nvdec, use_nvenc=False, preset="", notes=tuple(notes), cut=config.cut, output_bit_depth=target.bit_depth,
            pictures=pictures, picture_target=target, interpolator=interpolator, split=split, decoding=decoding,
        )
    if pictures is not None and config.fps is None:  # pictures into a video: their timing is chosen here
        notes.append(f"{len(pictures.paths)} picture(s), timed at 24 fps (--fps sets the rate).")
    if pictures is not None and config.nvdec:
        notes.append("--nvdec: pictures are decoded on the CPU.")
    if pictures is not None and source.has_alpha:
        notes.append("the pictures have an alpha channel; video has none, so it is dropped (write pictures to keep it).")
    if config.audio is not None and config.copy_audio:
        probe_audio(config.audio)
    bit_depth = _plan_bit_depth(config, source, notes)
    use_nvdec, use_nvenc = _plan_codecs(config, source, devices, notes, output_size=(out_w, out_h), bit_depth=bit_depth)
    decoding = _plan_decoding(config, source, devices, notes, use_nvdec=use_nvdec, pictures=pictures)
    if use_nvenc:
        preset = config.preset if config.preset in NVENC_PRESETS else DEFAULT_NVENC_PRESET
        notes += _nvenc_limits(config, source, output)
    if source.hdr is not None:
        notes += _hdr_notes(source)
    if not use_nvenc and config.preset in NVENC_PRESETS:
        preset = DEFAULT_CPU_PRESET[config.codec]
        notes.append(f"--preset {config.preset} is an NVENC preset; the CPU encoder uses its default ({preset}).")
    elif not use_nvenc:
        preset = config.preset_or_default
    rate_key = _model_rate_key(config, model, source, devices, dtypes, compiled)
    segments, encoders = _plan_segments(config, source, out_w, out_h, use_nvenc=use_nvenc, notes=notes,
                                        bytes_per_sample=2 if bit_depth > 8 else 1, preset=preset, model_rate_key=rate_key)
    if segments is not None:
        inputs = [("--source", Path(config.source)), ("--audio", config.audio),
                  ("--model", Path(config.model) if os.path.isfile(config.model) else None),
                  ("--stats-json", config.stats_json)]
        parts = PartsFolder(Path(output))
        parts.check(resume=config.resume, overwrite=overwrite, inputs=[(flag, path) for flag, path in inputs if path is not None])
        segments = _tapered(segments, config, source, 1 if use_nvenc else encoders.num_encoders, parts)
    threads = 0 if use_nvenc else encoder_threads(encoders.num_encoders, cores_for(config))
    encoder_line = f"{encoders.line}; {threads} thread(s) each" if threads and encoders.line else encoders.line
    return RunPlan(
        config=config, source=source, model=model, output=Path(output), overwrite_output=overwrite or own_partial,
        devices=tuple(devices), dtypes=dtypes, compiled=compiled, output_width=out_w, output_height=out_h,
        use_nvdec=use_nvdec, use_nvenc=use_nvenc, preset=preset, notes=tuple(notes),
        segments=segments, num_encoders=encoders.num_encoders, encoder_line=encoder_line, model_rate_key=rate_key,
        earlier_partial_output=earlier_partial if segments is not None else None,
        encoder_speed_key=encoders.speed_key, encoders_fps=encoders.capacity_fps,
        encoder_threads=threads, cut=config.cut, output_bit_depth=bit_depth,
        pictures=pictures, interpolator=interpolator, split=split, decoding=decoding,
    )


def _plan_interpolation(config: RunConfig, source: SourceInfo, model: LoadedModel, notes: list[str]) -> LoadedModel | None:
    """--interpolate N: the temporal model, and one line saying what it does to the frame rate."""
    if model.kind == "restore" and config.tile_size:
        notes.append(f"--tile-size: {model.name} takes whole frames (a temporal model); the tiles are not used.")
    if config.interpolate <= 1:
        unused = [flag for flag, value in (("--interpolation-model", config.interpolation_model),
                                           ("--scene-threshold", config.scene_threshold)) if value is not None]
        if unused:
            notes.append(f"{' and '.join(unused)} {'does' if len(unused) == 1 else 'do'} nothing without "
                         "--interpolate N: ignored.")
        return None
    if model.kind == "restore":
        raise InvalidOption(f"--model {model.name} (a window of frames in) and --interpolate do not chain in one pass "
                            "yet: run two passes, --model first, then --interpolate on its output.")
    from models import load_model

    interpolator = load_model(config.interpolation_model_or_default, kind="interpolate")
    rate = source.average_rate
    fps = f"{float(rate):.3f} -> {float(rate * config.interpolate):.3f} fps" if rate else "the frame rate"
    chain = "" if model.arch == "bicubic" and model.scale == 1 else f" after {model.name} x{model.scale}, in one pass"
    threshold = config.scene_threshold_or_default
    cut = (f"a pair less alike than SSIM {threshold} (a scene cut) repeats its first frame"
           if threshold > 0 else "no scene-cut detection (--scene-threshold 0)")
    notes.append(f"--interpolate {config.interpolate}: {interpolator.name} makes {config.interpolate - 1} frame(s) "
                 f"between each two{chain}: {fps}, timestamps between their neighbours'; {cut}.")
    return interpolator


def _check_frame_spacing(output: Path, source: SourceInfo, factor: int, *, video: Path | None) -> None:
    """Matroska stores timestamps in whole milliseconds: frames less than 1 ms apart would share
    one (a broken file), so such a run is refused before it starts. A video's own frame intervals
    tell (its first packets': a variable frame rate's average says nothing of its shortest gap, and
    a remuxed file's average rate can be far off); pictures are timed at their rate. Gaps that come
    later in a video are kept apart by the writer (hw.av_encode.PresentationDurations)."""
    if output.suffix.lower() != ".mkv":
        return
    interval = _smallest_frame_interval(video) if video is not None else None
    if interval is None:
        rate = source.average_rate
        if not rate or rate * factor <= 1000:
            return
        interval = 1 / rate
    elif interval / factor >= Fraction(1, 1000):
        return
    rate = 1 / interval
    fastest = " at its fastest" if source.average_rate and abs(rate - source.average_rate) > rate / 100 else ""
    what = (f"--interpolate {factor} of {float(rate):.3f} fps{fastest} makes {float(rate * factor):.0f} fps" if factor > 1
            else f"the source's {float(rate):.3f} fps{fastest}")
    smaller = f", or use --interpolate {1000 // rate} or less" if factor > 1 and 1000 // rate >= 2 else ""
    raise InvalidOption(f"{what}: frames under 1 ms apart, which .mkv (timestamps in whole milliseconds) cannot tell "
                        f"apart. Write .mp4 or .mov (--output {output.with_suffix('.mp4').name}), whose timestamps "
                        f"are finer{smaller}.")


def _smallest_frame_interval(video: Path, packets: int = 240) -> Fraction | None:
    """The smallest gap (seconds) between the timestamps of the first `packets` video packets, in
    presentation order; None where they do not tell (no two timestamps)."""
    from hw.av_source import main_video_stream, open_input

    with open_input(video) as container:
        stream = main_video_stream(container)
        time_base = Fraction(stream.time_base)  # read while open: PyAV 19 refuses a closed container's streams
        pts = sorted({p.pts for p, _ in zip(container.demux(stream), range(packets)) if p.pts is not None})
    gaps = [b - a for a, b in zip(pts, pts[1:])]
    return min(gaps) * time_base if gaps else None


def _plan_split(config: RunConfig, model: LoadedModel, interpolator: LoadedModel | None,
                notes: list[str]) -> SplitChoice | None:
    """--split-gpu: the model to split (the upscaler, or RIFE when the frames are only
    interpolated or the upscaler has no split point) and the two devices; None, said in one
    line, when there is one device or nothing to split."""
    if not config.split_gpu:
        return None
    from models import choose_precision
    from models.split import parameters_disjoint, split_model

    devices = plan_devices(config).devices
    if len(devices) < 2 and devices[0].type == "cuda" and config.gpus is None and torch.cuda.device_count() >= 2:
        devices = (torch.device("cuda", 0), torch.device("cuda", 1))  # --split-gpu alone: the first two GPUs
    if len(devices) < 2:
        notes.append(f"--split-gpu: one device ({devices[0]}), so the model runs unsplit on it.")
        return None
    identity = interpolator is not None and model.arch == "bicubic" and model.scale == 1
    candidates = [] if identity else [("spatial", model)]
    if interpolator is not None:
        candidates.append(("interpolation", interpolator))
    for part, which in candidates:
        stages = split_model(which.make_module())
        if stages is not None and parameters_disjoint(*stages):
            break
    else:
        names = " or ".join(m.name for _, m in candidates)
        notes.append(f"--split-gpu: {names} has no split point framepipe knows, so it runs unsplit "
                     "(--multi-gpu runs a whole copy per GPU).")
        return None
    first, second = devices[0], devices[1]
    dtypes = {choose_precision(config.precision, d)[0] for d in (first, second)}
    dtype = dtypes.pop() if len(dtypes) == 1 else torch.float32
    if not which.supports_dtype(dtype) or (part == "interpolation" and not identity and not model.supports_dtype(dtype)):
        dtype = torch.float32
    notes.append(f"--split-gpu: {which.name} in two stages, the first on {first}, the second on {second}, pipelined "
                 f"({str(dtype).removeprefix('torch.')}, --split-transport {config.split_transport}).")
    return SplitChoice(part=part, devices=(first, second), dtype=dtype)


# --compile auto leaves runs shorter than this eager: the first compilation of a model takes
# 5-65 s (issue 12's measurements), and a cached one still about a second.
MIN_FRAMES_TO_COMPILE = 200


def _plan_workers(config: RunConfig, model: LoadedModel, source: SourceInfo, notes: list[str]):
    """The devices that run the model, each one's precision and whether it compiles."""
    from models import choose_precision

    device_plan = plan_devices(config)
    devices = device_plan.devices
    if device_plan.note:
        notes.append(device_plan.note)
    if not config.parallel and len(devices) > 1:
        notes.append(f"{len(devices)} workers need --parallel; the sequential loop runs one, on {devices[0]}.")
        devices = devices[:1]
    dtypes: dict[str, tuple[torch.dtype, str]] = {}
    for dev in devices:
        if str(dev) not in dtypes:
            dtype, why = choose_precision(config.precision, dev)
            if not model.supports_dtype(dtype):
                dtype, why = torch.float32, f"fp32: model {model.name} supports only fp32"
            dtypes[str(dev)] = (dtype, why)
    compiled = {str(dev): compile_choice(config.compile, dev) for dev in devices}
    frames = _frames_estimate(config, source)
    if config.compile == "auto" and 0 < frames < MIN_FRAMES_TO_COMPILE:
        compiled = {dev: (False, f"eager (a short run of {frames} frames: compiling would not pay; --compile on "
                                 "forces it)") if on else (on, why) for dev, (on, why) in compiled.items()}
    return tuple(devices), MappingProxyType(dtypes), MappingProxyType(compiled)


def _plan_discarding(config: RunConfig, source: SourceInfo, model: LoadedModel, pictures: PictureSequence | None,
                     notes: list[str]) -> RunPlan:
    """--output-mode none: the frames are decoded and run through the model, and the model's
    output is dropped; nothing is written, so there is no output path, encoder or audio."""
    devices, dtypes, compiled = _plan_workers(config, model, source, notes)
    out_w, out_h = source.width * model.scale, source.height * model.scale
    use_nvdec = False
    if pictures is None:
        use_nvdec, _ = _plan_codecs(config, source, devices, notes, output_size=(out_w, out_h), encode=False)
    decoding = _plan_decoding(config, source, devices, notes, use_nvdec=use_nvdec, pictures=pictures)
    return RunPlan(
        config=config, source=source, model=model, output=None, overwrite_output=False, devices=devices,
        dtypes=dtypes, compiled=compiled, output_width=out_w, output_height=out_h, use_nvdec=use_nvdec,
        use_nvenc=False, preset="", notes=tuple(notes), cut=config.cut, pictures=pictures, decoding=decoding,
    )


def _plan_decoding(config: RunConfig, source: SourceInfo, devices: tuple[torch.device, ...], notes: list[str], *,
                   use_nvdec: bool, pictures: PictureSequence | None) -> DecodePlan | None:
    """--decoders: several decoders on consecutive parts of the video (pipeline/decoders.py; its
    `line`, said when the run starts, says how many and why); where --decoders N > 1 cannot be
    had, one line in the notes says why."""
    asked = config.decoders
    if pictures is not None or not config.parallel:
        if asked > 1:
            notes.append(f"--decoders {asked}: " + ("pictures are read by one reader." if pictures is not None else
                                                    "the sequential loop decodes with one decoder (use --parallel)."))
        return None
    engines = None
    if use_nvdec:
        from hw.nv_probe import nvdec_engines

        engines = nvdec_engines(torch.cuda.get_device_name(devices[0]))
    num_cores = cores_for(config)
    wanted, why = choose_decoders(asked=asked, use_nvdec=use_nvdec, num_cores=num_cores,
                                  num_frames=_frames_estimate(config, source), nvdec_engines=engines)
    samples = 1.5 if use_nvdec or source.chroma_format == "420" else 3
    frame_bytes = int(source.width * source.height * samples * (2 if source.bit_depth > 8 else 1))
    memory = _available_memory_bytes()
    if use_nvdec and wanted > 1:  # NVDEC parts hold their frames on the GPU, beside the model's batches
        memory = min(memory, _gpu_free_bytes(devices[0]) // 2)
    try:
        decoding, line = plan_decoders(lambda: _scan_packets(config.source), wanted=wanted, why=why, use_nvdec=use_nvdec,
                                       frame_bytes=frame_bytes, memory_bytes=memory, num_cores=num_cores)
    except Exception as exc:  # noqa: BLE001 - the source was probed already: one decoder reads it as before
        log.warning("the source's keyframes could not be read (%s); one decoder", exc)
        decoding, line = None, f"its keyframes could not be read ({exc})"
    if decoding is None and asked > 1:
        notes.append(f"--decoders {asked}: one decoder, because {line}.")
    return decoding


def _num_cores() -> int:
    """The cores the process may keep busy: its affinity, within a container's CPU quota
    (hw.scheduling.usable_cores)."""
    return usable_cores()


def cores_for(config: RunConfig) -> int:
    """The cores a run plans for: the process's, or the share `config.cores` gives it (the service)."""
    return min(config.cores, _num_cores()) if config.cores else _num_cores()


def _scan_packets(path: Path):
    """The demux-only pass over the source's packets (hw.keyframes); tests replace it."""
    import time

    from hw.keyframes import scan_packets

    started = time.perf_counter()
    scan = scan_packets(path)
    log.info("read %d packets' timestamps in %.2f s (keyframes to cut at)", scan.num_packets, time.perf_counter() - started)
    return scan


def _sequence_name(seq: PictureSequence) -> str:
    """A name for a sequence: its folder's (a folder source), else its template's ('scan_#.png' ->
    'scan'); pictures without numbers: the one picture's stem, else their folder's."""
    if Path(seq.spec).is_dir():
        return Path(seq.spec).resolve().name
    if seq.numbers[0] is None:
        return seq.paths[0].stem if len(seq.paths) == 1 else seq.paths[0].resolve().parent.name
    stem = Path(seq.template).stem.replace("#", "").strip("_-. ")
    return stem or "pictures"


def _picture_source(config: RunConfig, seq: PictureSequence, notes: list[str]) -> SourceInfo:
    """A picture sequence described as a source: picture k at k/fps, sRGB. Pictures found unusable
    from their headers (empty, cut short, animated) are refused together, before anything runs."""
    unusable = unusable_pictures(seq)
    if unusable:
        raise InvalidSource(describe_unusable(seq.spec, unusable, len(seq.paths)))
    info = probe_pictures(seq)
    fps = parse_fps(config.fps) or Fraction(24)  # (said where it matters: pictures into a video)
    if seq.template == "(by name)" and any(re.search(r"\d", p.name) for p in seq.paths) and len(seq.paths) > 1:
        notes.append(f"source: the picture names follow no one numbering ({seq.paths[0].name} ... "
                     f"{seq.paths[-1].name}): taken in name order, numbers by value.")
    if seq.left_out:
        notes.append(f"source: {seq.describe_left_out()}.")
    if seq.gaps:
        notes.append(f"source: the picture numbers have gaps ({seq.describe_gaps()}); the pictures are shown one after "
                     "another, the gaps closed.")
    srgb = ColorInfo(matrix="bt709", primaries_tag=1, transfer_tag=13, matrix_tag=1, range_tag=1)
    return SourceInfo(
        path=Path(seq.spec), width=info.width, height=info.height, codec=info.codec, pix_fmt=info.pix_fmt,
        bit_depth=info.bit_depth, chroma_format="", time_base=Fraction(fps.denominator, fps.numerator), average_rate=fps,
        num_frames_from_header=len(seq.paths), num_frames_estimate=len(seq.paths), color=srgb,
        has_alpha=info.has_alpha,
    )


def _picture_depth(config: RunConfig, source: SourceInfo) -> int:
    """Bit depth of output pictures: --bit-depth 8/16, else 16 for a source deeper than 8 bits."""
    if config.bit_depth is None:
        return 16 if source.bit_depth > 8 else 8
    return config.bit_depth


def _picture_name(target: PictureTarget, pictures: PictureSequence | None, source: Path, per: int, index: int) -> str:
    """The file name of output picture `index`, counted from the source's first frame. With
    --interpolate N (`per`), source picture (or frame) m and the frames made after it are numbered
    m*N .. m*N+N-1, m the picture's own number where it has one: a sequence from 1001 comes out
    from 1001*N, not renumbered from 0."""
    stem = _sequence_name(pictures) if pictures is not None else source.stem
    if per <= 1:
        return target.name(index, pictures, stem)
    frame, k = divmod(index, per)
    known = pictures is not None and frame < len(pictures.paths) and pictures.numbers[frame] is not None
    return target.name((pictures.numbers[frame] if known else frame) * per + k, None, stem)


def _check_picture_output(config: RunConfig, target: PictureTarget, pictures: PictureSequence | None,
                          source: SourceInfo, *, out_count: int, overwrite: bool, per: int) -> None:
    """Picture output: the folder, the depth, and every picture name against the source's
    pictures (never written through any alias) and against existing files."""
    if target.bit_depth not in (8, 16):
        raise InvalidOption(f"--bit-depth {target.bit_depth} is for video; pictures are written with 8 or 16 bits.")
    folder = target.folder
    if os.path.lexists(folder) and not folder.is_dir():
        raise OutputNotWritable(f"--output {str(folder)!r} is not a folder: pictures need a folder (or a pattern).")
    if target.file_name is not None and not folder.is_dir():  # one named picture file: its folder is not made
        raise OutputNotWritable(f"Cannot write --output {str(folder / target.file_name)!r}: folder {str(folder)!r} "
                                "does not exist.")
    parent = folder if folder.is_dir() else folder.parent
    if not parent.is_dir():
        raise OutputNotWritable(f"Cannot write pictures to {str(folder)!r}: folder {str(parent)!r} does not exist.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputNotWritable(f"Cannot write pictures to {str(folder)!r}: folder {str(parent)!r} is not writable.")
    cut = config.cut
    first = cut.start.frame_estimate(float(source.average_rate or 25)) if cut is not None and cut.start else 0
    made = (out_count - 1) * per + 1 if out_count else 0  # with --interpolate N: N-1 made after each but the last
    names = [_picture_name(target, pictures, config.source, per, first * per + k) for k in range(made)]
    inputs = _read_paths(config, pictures)
    if folder.is_dir():
        existing = {p.name for p in folder.iterdir()}
        # Compared as files, not names: a source picture reached through a symlink or a hard link
        # (a folder of links into this one) is the same picture.
        read = {file_key(path): path for _flag, path in inputs}
        for name in names:
            if name in existing and (hit := read.get(file_key(folder / name))) is not None:
                raise UnsafeOutput(f"--output {str(folder / name)!r} is the source picture {str(hit)!r}"
                                   f"{'' if Path(hit).parent.resolve() == folder.resolve() else ' (through a link)'}: "
                                   "framepipe never writes its input. "
                                   + ("Choose another name." if target.file_name is not None else
                                      "Choose another folder, pattern or --picture-format."))
        taken = [n for n in names if n in existing]
        if taken and target.file_name is not None and not overwrite:  # one picture: written whole or not at all
            raise OutputExists(f"--output {str(folder / taken[0])!r} already exists. Pass --overwrite to replace it, or "
                               "choose another name.")
        if taken and not (overwrite or config.resume):
            raise OutputExists(f"--output folder {str(folder)!r} already holds {len(taken)} of the pictures this run writes "
                               f"(e.g. {taken[0]}). Pass --resume to keep them and write the rest, or --overwrite to "
                               "replace them.")
    if config.stats_json is not None:
        written = {file_key(folder / name) for name in [*names, PICTURE_MANIFEST]}
        if file_key(config.stats_json) in written:
            raise UnsafeOutput(f"--stats-json {str(config.stats_json)!r} is one of the files this run writes in "
                               f"--output {str(folder)!r}. Choose another name.")
        check_output_paths([("--stats-json", config.stats_json)], inputs=inputs, overwrite=overwrite)


def _hdr_notes(source: SourceInfo) -> list[str]:
    """What of the source's HDR metadata the output will not have, said before the run."""
    hdr, notes = source.hdr, []
    if hdr.dynamic:
        notes.append(f"the source's {' and '.join(hdr.dynamic)} dynamic metadata is not carried (only static HDR10 "
                     "metadata is): the output plays as plain HDR10.")
    return notes  # static HDR10 metadata: every writer carries it, NVENC's as SEI / metadata OBUs (issue 13)


def _plan_bit_depth(config: RunConfig, source: SourceInfo, notes: list[str]) -> int:
    """--bit-depth, or automatically: a deeper-than-8-bit source keeps 10 bits where the codec's
    10-bit profile is widely played (HEVC Main10, AV1); H.264 stays 8-bit unless asked (High 10
    is refused by most hardware decoders). Said in one line whenever depth is lost."""
    deep = source.bit_depth > 8
    if config.bit_depth == 16:
        raise InvalidOption("--bit-depth 16 is for pictures (PNG/TIFF output); video is written with 8 or 10 bits.")
    if config.bit_depth is not None:
        if config.bit_depth == 10 and config.codec not in DEEP_COLOR_CODECS:
            notes.append(f"--bit-depth 10 --codec {config.codec}: 10-bit H.264 (High 10) plays in FFmpeg-based players "
                         "but not on most hardware decoders (phones, TVs, browsers); --codec hevc or av1 is safer.")
        if config.bit_depth == 8 and deep:
            notes.append(f"the source is {source.bit_depth}-bit; --bit-depth 8 writes 8-bit output.")
        return config.bit_depth
    if deep and config.codec in DEEP_COLOR_CODECS:
        if source.bit_depth > 10:
            notes.append(f"the source is {source.bit_depth}-bit; the output is 10-bit (the most {config.codec} "
                         "encoders here write).")
        return 10
    if deep:
        notes.append(f"the source is {source.bit_depth}-bit but --codec {config.codec} output is 8-bit by default: "
                     "use --codec hevc or --codec av1 to keep 10 bits (or --bit-depth 10 for 10-bit H.264).")
    return 8


def _gpu_free_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device (plan_decoders keeps a quarter of what it is given, so NVDEC
    parts hold at most an eighth of the GPU's free memory); 8 GiB where it cannot be read."""
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except Exception:  # noqa: BLE001 - a stand-in device, a driver that does not say
        return 8 << 30


def _available_memory_bytes() -> int:
    """MemAvailable from /proc/meminfo; 8 GiB where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def _encoder_speed(codec: str, *, preset: str, crf: int | None, width: int, height: int, bit_depth: int) -> EncoderSpeed:
    """One CPU encoder alone at this size and these settings (hw.encode_speed), measured once per
    machine and remembered in framepipe's cache. Tests replace it."""
    memo = ProbeMemo(default_cache_dir() / ENCODER_SPEEDS_FILE)
    speed, measured = remembered_encoder_speed(memo, codec, preset=preset, crf=crf, width=width, height=height,
                                               bit_depth=bit_depth)
    if measured:
        log.info("one %s %s encoder at %dx%d: %.1f fps (measured now; remembered in %s)", codec, preset, width,
                 height, speed.fps, memo.path)
    return speed


def _known_speed(key: str) -> EncoderSpeed | None:
    """One CPU encoder's speed as measured on this machine before (`_encoder_speed`), None where it
    never was; nothing is measured now. Tests replace it."""
    return known_encoder_speed(ProbeMemo(default_cache_dir() / ENCODER_SPEEDS_FILE), key)


def _real_speed(speed: EncoderSpeed | None, key: str) -> tuple[EncoderSpeed | None, float | None]:
    """(speed, factor): the synthetic measurement times what real frames here gave against it (the
    factor, None where no run into the pool with these settings and size taught one)."""
    factor = _content_factor(key) if speed is not None and key else None
    if factor is None:
        return speed, None
    return EncoderSpeed(fps=speed.fps * factor, cores_busy=speed.cores_busy), factor


def _speed_key(codec: str, **kw) -> str:
    """hw.encode_speed.speed_key; "" where the encoder's settings cannot be keyed."""
    try:
        return speed_key(codec, **kw)
    except Exception as exc:  # noqa: BLE001 - the build reports settings it refuses, in one line
        log.debug("no encoder speed key: %s", exc)
        return ""


def _content_factor(key: str) -> float | None:
    """Real frames against the synthetic measurement, as the last run into the pool with these
    settings and size that its encoders bounded saw it (`pipeline.encoder_choice.learn_content_factor`).
    Tests replace it."""
    return remembered_content_factor(ProbeMemo(default_cache_dir() / ENCODER_FACTORS_FILE), key)


def _model_rate(key: str) -> float | None:
    """Source frames per second an earlier run with this model, size and devices delivered
    (`pipeline.encoder_choice.remember_model_rate`), else the compiled model alone as the compile
    helpers of a run over before its compilation timed it (`remember_helper_rate`); None if
    neither. Tests replace it."""
    return remembered_model_rate(model_rates_memo(), key)


def _model_rate_timed_alone(key: str) -> bool:
    """Whether that rate is the compiled model alone, as its compile helper timed it (no run
    with this key measured its own: `pipeline.encoder_choice.remember_helper_rate`)."""
    return model_rate_timed_alone(model_rates_memo(), key)


def _model_rate_key(config: RunConfig, model: LoadedModel, source: SourceInfo, devices, dtypes, compiled) -> str:
    names = [torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu" for d in devices]
    return model_rate_key(model=model.name, scale=model.scale, width=source.width, height=source.height,
                          devices=names, dtypes=[str(dtypes[str(d)][0]).removeprefix("torch.") for d in devices],
                          compiled=[bool(compiled[str(d)][0]) for d in devices], tile_size=config.tile_size or 0,
                          interpolate=max(1, getattr(config, "interpolate", 1)))


def model_rate_key_as_run(plan: RunPlan, stats) -> str:
    """`plan.model_rate_key` with each device compiled only where one of its workers ran compiled
    (`pipeline.encoder_choice.compiled_as_run`): where the run remembers the rate it delivered."""
    ran = compiled_as_run([str(d) for d in plan.devices], stats)
    return _model_rate_key(plan.config, plan.model, plan.source, plan.devices, plan.dtypes,
                           {str(d): (on, "") for d, on in zip(plan.devices, ran)})


def _plan_segments(config: RunConfig, source: SourceInfo, width: int, height: int, *, use_nvenc: bool,
                   notes: list[str], bytes_per_sample: int = 1, preset: str | None = None,
                   model_rate_key: str = "") -> tuple[SegmentLayout | None, EncoderChoice]:
    """Segment length and the number of encoders, or (None, one encoder) for one file written directly.

    Segments are used when asked for (--encoders, --segment-*, --resume, --keep-parts) and
    whenever the video is longer than one segment. `--encoders N` is obeyed (a note where
    memory may not hold N). `--encoders 0` is `pipeline.encoder_choice.choose_encoders`: enough
    encoders to keep up with the rate the model delivered here before (or that its compile helper
    timed: `_model_rate`), from one encoder's
    measured speed (`_encoder_speed`), within the limits of cores, segments, MAX_AUTO_ENCODERS
    and memory (40% of the available memory, counting for each encoder one segment of queued
    frames plus ~60 frames inside x264, its look-ahead). NVENC: the sessions the GPU opens.
    """
    rate = float(source.average_rate or 25)
    if config.segment_frames is not None:
        segment_frames = config.segment_frames
    else:
        segment_frames = max(1, round((config.segment_seconds or DEFAULT_SEGMENT_SECONDS) * rate))
    total = _frames_estimate(config, source)
    asked = (config.encoders > 0 or config.segment_frames is not None or config.segment_seconds is not None
             or config.resume or config.keep_parts)
    if not asked and 0 < total <= segment_frames:
        return None, EncoderChoice(1, "")
    num_segments = max(1, -(-total // segment_frames)) if total else MAX_AUTO_ENCODERS
    frame_bytes = width * height * 3 // 2 * bytes_per_sample
    per_encoder = frame_bytes * (segment_frames + 60)
    fits = max(1, int(_available_memory_bytes() * 0.4 // per_encoder))
    settings = dict(preset=preset or config.preset_or_default, crf=config.crf_or_default, width=width, height=height,
                    bit_depth=10 if bytes_per_sample > 1 else 8)  # what one CPU encoder's speed depends on
    speed_key = "" if use_nvenc else _speed_key(config.codec, **settings)
    num_cores, speed, synthetic = cores_for(config), None, None  # the cores this run may use (affinity, quota, share)
    if not config.parallel:  # the sequential baseline encodes in its one thread
        choice = EncoderChoice(1, "encoders: 1 (the sequential loop encodes in its one thread)")
    elif config.encoders:
        choice = EncoderChoice(config.encoders, f"encoders: {config.encoders} (--encoders)")
        if speed_key and not use_nvenc:  # for the workers' weighing of compilation: only a speed measured before
            synthetic = _known_speed(speed_key)
            speed = _real_speed(synthetic, speed_key)[0]
        if config.encoders > fits:
            notes.append(f"--encoders {config.encoders}: each holds up to {segment_frames} frames of "
                         f"{width}x{height} ({per_encoder / 2**30:.1f} GiB); more than {fits} may exhaust memory.")
    else:
        allowed = min(num_cores // 2, num_segments, MAX_AUTO_ENCODERS, fits)
        model_fps, alone = None, False
        what = f"{width}x{height} {config.codec} {settings['preset']}"
        if allowed > 1 and not use_nvenc:  # something to choose: measured (or remembered) speeds
            try:
                synthetic = _encoder_speed(config.codec, **settings)
            except Exception as exc:  # noqa: BLE001 - settings the encoder refuses are reported by the build, in one line
                log.debug("encoder speed not measured: %s", exc)
            speed, factor = _real_speed(synthetic, speed_key)
            if factor is not None:
                what += f" ({factor:.2f} x the synthetic measurement, as a run here encoded)"
            model_fps = _model_rate(model_rate_key) if model_rate_key else None
            alone = model_fps is not None and _model_rate_timed_alone(model_rate_key)
        choice = choose_encoders(speed=speed, model_fps=model_fps, num_cores=num_cores, memory_fits=fits,
                                 num_segments=num_segments, what=what, model_alone=alone,
                                 frames_per_source_frame=max(1, getattr(config, "interpolate", 1)))
    # For the workers' weighing, an upper estimate: the larger of the synthetic measurement and the
    # corrected one (the content factor was learnt on other clips, maybe harder ones).
    upper = max((s for s in (speed, synthetic) if s is not None), key=lambda s: s.fps, default=None)
    capacity = pool_fps(upper, choice.num_encoders, num_cores) if upper is not None and not use_nvenc else None
    choice = replace(choice, speed_key=speed_key, capacity_fps=capacity)
    if use_nvenc and choice.num_encoders > 1:
        sessions = _nvenc_sessions(config, width, height, choice.num_encoders, notes)
        choice = EncoderChoice(sessions, f"encoders: {sessions} NVENC session(s) (probed; asked for {choice.num_encoders})")
    end = config.max_frames
    return SegmentLayout(segment_frames=segment_frames, end=end), choice


def _tapered(layout: SegmentLayout, config: RunConfig, source: SourceInfo, num_encoders: int,
             parts: PartsFolder) -> SegmentLayout:
    """The layout with its last segments shorter (`SegmentLayout.taper_end`: the frames expected),
    so that the encoders end together: where several CPU encoders work at once (NVENC sessions: not
    measured, so not tapered; `num_encoders` 1 for them), the frame count is known and
    --segment-frames does not fix every segment's length (--segment-seconds is a duration, and the
    taper only shortens). A resumed run takes the layout its manifest records, whatever the
    estimate says now."""
    if config.resume:
        recorded = parts.recorded_settings()
        if recorded is not None:
            return replace(layout, taper_end=recorded_taper(recorded))
    total = _frames_estimate(config, source)
    if num_encoders < 2 or total < 1 or config.segment_frames is not None or max(1, getattr(config, "interpolate", 1)) > 1:
        return layout
    return replace(layout, taper_end=total)


def _nvenc_sessions(config: RunConfig, width: int, height: int, wanted: int, notes: list[str]) -> int:
    """How many NVENC encoders can run at once on this GPU (consumer GPUs limit sessions):
    probed by opening them, not assumed."""
    ok, count = _probe("nvenc_sessions", codec=config.codec, gpu=0 if config.gpus is None else int(config.gpus.split(",")[0]),
                       width=width, height=height, wanted=wanted)
    sessions = count if ok and isinstance(count, int) and count > 0 else 1
    if sessions < wanted:
        notes.append(f"NVENC runs {sessions} encoder(s) at once on this GPU (asked for {wanted}).")
    return sessions


def _nvenc_limits(config: RunConfig, source: SourceInfo, output: Path) -> list[str]:
    """What the NVENC writer cannot carry (PyAV gives a stream it opens no encoder for no codec
    context: no display matrix, no codec tag), said before the run rather than discovered after."""
    notes = []
    if source.display_matrix is not None:
        notes.append(f"--nvenc: the source's rotation ({source.rotation} degrees) is not carried by the NVENC writer; "
                     "the output plays unrotated. Run without --nvenc to keep it.")
    if config.codec == "hevc" and output.suffix.lower() in (".mp4", ".mov"):
        notes.append("--nvenc: HEVC from NVENC in MP4/MOV is tagged hev1, which Apple players refuse; use .mkv, or run "
                     "without --nvenc (the CPU encoder writes hvc1), for Apple devices.")
    return notes


def _check_paths(config: RunConfig, output: Path, pictures: PictureSequence | None, *, overwrite: bool,
                 own_partial: bool = False) -> None:
    """Every file the run writes against every file it reads (core.files has the rules).
    `own_partial`: the output is the partial output of the run being resumed (replaced)."""
    config.check_output_name(output)
    outputs = [("--output", output)]
    if config.stats_json is not None:
        outputs.append(("--stats-json", config.stats_json))
    check_output_paths(outputs, inputs=_read_paths(config, pictures), overwrite=overwrite,
                       owned=[output] if own_partial else [])


def _read_paths(config: RunConfig, pictures: PictureSequence | None) -> list[tuple[str, Path]]:
    """(flag, path) of every file the run reads: none of them is ever written, under any name.
    A picture sequence's every picture, not only its folder or pattern."""
    inputs = [("--source", p) for p in pictures.paths] if pictures is not None else []
    inputs.append(("--source", config.source))
    if config.audio is not None:
        inputs.append(("--audio", config.audio))
    if Path(config.model).suffix and os.path.exists(config.model):
        inputs.append(("--model", Path(config.model)))
    return inputs


def plan_devices(config: RunConfig) -> DevicePlan:
    """Turn --device / --multi-gpu / --gpus / --cpu-workers into worker devices."""
    from hw.gpus import list_gpus, parse_gpu_list, why_no_gpu

    gpus = list_gpus()
    num_gpus = len(gpus)
    device = (config.device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise InvalidOption(f"Invalid --device ({config.device!r}): allowed are auto, cpu, cuda, cuda:N.")
    if config.gpus is not None:
        if device == "cpu":
            raise InvalidOption("--gpus was given with --device cpu. Drop one of them.")
        if num_gpus == 0:
            raise InvalidOption(f"Invalid --gpus ({config.gpus!r}): no CUDA GPU is visible: {why_no_gpu()}. "
                                "Drop --gpus to run on the CPU.")
        indices = parse_gpu_list(config.gpus, num_gpus)
        return DevicePlan(tuple(torch.device("cuda", i) for i in indices))
    if device == "cpu" or (device == "auto" and num_gpus == 0):
        note = ""
        if config.multi_gpu:
            note = "--multi-gpu: no CUDA GPU is visible; running on the CPU."
        return DevicePlan(tuple(torch.device("cpu") for _ in range(config.cpu_workers)), note)
    if num_gpus == 0:
        raise InvalidOption(f"--device {config.device}: no CUDA GPU is visible: {why_no_gpu()}. Use --device cpu to "
                            "run on the CPU.")
    if device.startswith("cuda:"):
        index = int(device[5:])
        if index >= num_gpus:
            have = "1 GPU, cuda:0" if num_gpus == 1 else f"{num_gpus} GPUs, cuda:0 to cuda:{num_gpus - 1}"
            raise InvalidOption(f"Invalid --device ({config.device}): this machine has {have} (counted from 0, as torch "
                                f"sees them). Use e.g. --device cuda:{num_gpus - 1}.")
        if not config.multi_gpu:
            return DevicePlan((torch.device("cuda", index),))
    if config.multi_gpu:
        if num_gpus == 1:
            return DevicePlan((torch.device("cuda", 0),), "--multi-gpu: only 1 GPU is visible; running single-GPU.")
        return DevicePlan(tuple(torch.device("cuda", i) for i in range(num_gpus)))
    return DevicePlan((torch.device("cuda", 0),))


def _plan_codecs(config: RunConfig, source: SourceInfo, devices: tuple[torch.device, ...], notes: list[str], *,
                 output_size: tuple[int, int], bit_depth: int = 8, encode: bool = True) -> tuple[bool, bool]:
    """Decide NVDEC/NVENC; where requested but absent, one line says what is used instead."""
    first = devices[0]
    use_nvdec = use_nvenc = False
    if config.nvdec:
        if first.type != "cuda":
            notes.append("--nvdec: no NVIDIA GPU in use; decoding on the CPU with PyAV instead.")
        elif (source.chroma_format or "420") != "420":  # NVDEC may decode it; framepipe's copy takes NV12/P016
            from hw.nv_probe import CHROMA_TEXT

            notes.append(f"--nvdec: framepipe's NVDEC path takes 4:2:0 video, and this one is "
                         f"{CHROMA_TEXT.get(source.chroma_format, source.chroma_format)}; decoding on the CPU with PyAV "
                         "instead.")
        elif source.width % 2 or source.height % 2:  # NVDEC pads a 4:2:0 frame to even sizes
            notes.append(f"--nvdec: the frame size {source.width}x{source.height} is odd, which NVDEC pads to an even "
                         "one; decoding on the CPU with PyAV instead.")
        else:
            ok, why = _probe("probe_nvdec", codec=source.codec, bit_depth=source.bit_depth,
                             chroma_format=source.chroma_format or "420", width=source.width,
                             height=source.height, gpu=first.index or 0)
            use_nvdec = ok
            if not ok:
                notes.append(f"--nvdec: {why}; decoding on the CPU with PyAV instead.")
    if not encode:
        pass
    elif config.nvenc:
        if first.type != "cuda":
            notes.append("--nvenc: no NVIDIA GPU in use; encoding on the CPU (libx264/x265/SVT-AV1) instead.")
        else:
            # NVENC is checked at the real output size (issue 9) and depth: 10 bits is P010 in,
            # HEVC Main10 / AV1 10-bit out (issue 13); H.264 10-bit only on Blackwell.
            width, height = output_size
            ok, why = _probe("probe_nvenc", codec=config.codec, gpu=first.index or 0, width=width, height=height,
                             bit_depth=bit_depth)
            use_nvenc = ok
            if not ok:
                fed = "yuv420p10le" if bit_depth > 8 else "yuv420p"
                notes.append(f"--nvenc: {why}; encoding on the CPU from GPU-converted {fed} instead.")
    return use_nvdec, use_nvenc


def _probe(name: str, **kwargs) -> tuple[bool, str]:
    """Run a PyNvVideoCodec probe in a thread of its own.

    A failed `CreateEncoder` can leave a CUDA context of its own current on the calling
    thread; the NVDEC decoder created next on that thread then ran in it, and the worker's
    convolutions failed with CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH (seen on an H100 with
    --nvdec --nvenc). A short-lived thread takes whatever it leaves behind with it.
    """
    result: list[tuple[bool, str]] = []

    def body() -> None:
        try:
            from hw import nv_probe

            result.append(getattr(nv_probe, name)(**kwargs))
        except HardwareUnavailable as exc:
            result.append((False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a probe that breaks means "not available"
            result.append((False, f"{name} failed: {exc}"))

    thread = threading.Thread(target=body, name=f"probe-{name}", daemon=True)
    thread.start()
    thread.join()
    return result[0] if result else (False, f"{name} did not finish")
