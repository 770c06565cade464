"""Building: the stages of one run, made from its `RunPlan`.

`build(plan, stats, output_path)` opens the source (PyAV or NVDEC) and the encoder (PyAV
or NVENC) and makes the stages (reader, one worker per device, collector, writer). The
runner decides how they run (threads or one loop). `wrap(name, stage)` lets a caller
(tests) replace or wrap any stage by name; production passes nothing.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from core.cut import Cut, CutSource, TimeShift
from hw.encoding import Encoder
from pipeline.encoder_choice import model_rates_memo, remember_helper_rate
from pipeline.messages import ErrorChannel
from pipeline.plan import RunPlan
from pipeline.reader import FrameSource, Reader
from pipeline.segment_writer import EncoderPool, SegmentWriter
from pipeline.segments import PartsFolder, pictures_done
from pipeline.stats import RunStats
from hw.memory import ProbeMemo
from hw.pictures import icc_profile, is_gray, orientation
from models import LoadedModel
from models.compile_helper import CacheWarmer, artefacts_folder
from models.registry import default_cache_dir
from pipeline.worker import Temporal, Worker
from pipeline.writer import PICTURE_THREADS, DiscardWriter, PictureWriter, Writer

__all__ = ["Stages", "build", "open_source", "open_encoder", "worker_names", "Wrap", "ModelSource"]

log = logging.getLogger(__name__)

Wrap = Callable[[str, Any], Any]


class ModelSource(Protocol):
    """Where a run's workers get their modules (`run(models=...)`): the service's model manager
    lends one kept from an earlier job; without one, each worker builds its own."""

    def acquire(self, model: LoadedModel, key: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module: ...

    def release(self, model: LoadedModel, key: str, device: torch.device, dtype: torch.dtype) -> None: ...


@dataclass
class Stages:
    """The stages of one run (possibly wrapped), ready to run."""

    reader: Any
    workers: list[Any]
    writer: Any
    source: FrameSource
    encoder: Encoder | None  # None: segmented output (an encoder per segment)
    skip: Callable[[int], bool] | None = None  # frames of finished segments (--resume)
    back: Any = None  # --split-gpu: the second half (workers holds the first), pipelined after it
    audio_shift: TimeShift | None = None  # what --start/--end did to the timestamps (core.cut)


def temporal_window(plan: RunPlan) -> tuple[int, int] | None:
    """(frames before, frames after) each frame a temporal model needs; None for a spatial one."""
    if plan.interpolator is not None:  # interpolation: each frame and the next
        return 0, 1
    if plan.model.kind == "restore":  # restoration: r frames each side, the ends repeated
        return plan.model.radius, plan.model.radius
    return None


def open_source(plan: RunPlan, warn: Callable[[str], None], shift: TimeShift | None = None) -> FrameSource:
    """The decoder (NVDEC, PyAV, or a picture sequence's), or several on consecutive parts of the
    video (pipeline/decoders.py); with --start/--end, only the frames inside the cut, and a
    temporal model's neighbours around them (core/cut.py)."""
    if plan.pictures is not None:
        from hw.pictures import PictureSource, probe_pictures

        # Pictures out keep each picture's size; a video, a temporal model or a split model takes one size
        own_sizes = (plan.picture_target is not None and temporal_window(plan) is None and plan.interpolator is None
                     and plan.split is None)
        source = PictureSource(plan.pictures, probe_pictures(plan.pictures), warn=warn, keep_sizes=own_sizes)
    elif plan.decoding is not None:
        from pipeline.decoders import SplitSource

        decoding = plan.decoding
        opener = _SpanOpener(plan, warn)
        source = SplitSource(decoding.spans, opener, num_decoders=decoding.num_decoders,
                             max_frames_ahead=decoding.max_frames_ahead, warn=warn, first_shape=decoding.first_shape,
                             on_close=opener.close)
    elif plan.use_nvdec:
        from hw.nvdec import NvDecoder

        source = NvDecoder(plan.config.source, gpu=plan.first_gpu)
    else:
        from hw.av_decode import PyAVDecoder

        source = PyAVDecoder(plan.config.source, warn=warn)
    if plan.cut is None and plan.pictures is not None:
        return source
    if plan.source.interlaced:  # said once, whichever decoders read it (NVDEC said nothing)
        warn("source: the video is interlaced; frames are processed as progressive pictures (fields stay woven). "
             "For best results deinterlace first, e.g. ffmpeg -i in -vf bwdif out")
    # A video without --start/--end goes through an empty cut too: frames before 0 move to 0 (core/cut.py)
    # A late start moves to 0: the file's, where its own streams go beside the video; the video's,
    # beside another file's soundtrack (--audio), which starts with the first frame
    own = plan.audio_source is None or plan.audio_source == plan.config.source
    return CutSource(source, plan.cut or Cut(), shift if shift is not None else TimeShift(),
                     time_base=plan.source.time_base, context=temporal_window(plan) or (0, 0),
                     others_start=plan.source.other_streams_start if own else None, rebase=plan.pictures is None)


class _SpanOpener:
    """The decoder of one part of the video (`SplitSource`'s `open_span`); NVDEC parts share a
    pool of sessions (hw/nvdec.py `NvSessions`), dropped by `close()` (the source's `on_close`)."""

    def __init__(self, plan: RunPlan, warn: Callable[[str], None]) -> None:
        self.plan, self.warn = plan, warn
        self.sessions = None
        if plan.use_nvdec:
            from hw.nvdec import NvSessions

            self.sessions = NvSessions()

    def __call__(self, span):
        plan = self.plan
        if plan.use_nvdec:
            from hw.nvdec import NvDecoder

            return NvDecoder(plan.config.source, gpu=plan.first_gpu, span=span, sessions=self.sessions)
        from hw.av_decode import PyAVDecoder

        decoding = plan.decoding
        return PyAVDecoder(plan.config.source, warn=self.warn, span=span, threads=decoding.threads_per_decoder,
                           first_shape=decoding.first_shape if span.index > 0 else None)

    def close(self) -> None:
        if self.sessions is not None:
            self.sessions.close()


def open_encoder(plan: RunPlan, path: Path, warn: Callable[[str], None], *, with_audio: bool = True,
                 audio_shift: TimeShift | None = None) -> Encoder:
    """The encoder writing `path` (the output's temporary file, or a segment's: segments carry
    no audio, the join copies it)."""
    cfg, src = plan.config, plan.source
    common = dict(width=plan.output_width, height=plan.output_height, time_base=plan.output_time_base,
                  frame_rate=plan.output_frame_rate, color=src.color, warn=warn,
                  sample_aspect_ratio=src.sample_aspect_ratio, display_matrix=src.display_matrix,
                  source_path=plan.audio_source if with_audio else None, audio_shift=audio_shift,
                  extras_path=plan.extras_source if with_audio else None)
    if plan.use_nvenc:
        from hw.nvenc_writer import NvencFileWriter

        return NvencFileWriter(path, gpu=plan.first_gpu, codec=cfg.codec, qp=cfg.crf, preset=plan.preset,
                               bit_depth=plan.output_bit_depth, hdr=src.hdr, **common)
    from hw.av_encode import PyAVWriter

    return PyAVWriter(path, codec=cfg.codec, crf=cfg.crf_or_default, preset=plan.preset, bit_depth=plan.output_bit_depth,
                      hdr=src.hdr, threads=plan.encoder_threads, **common)


def _output_format(plan: RunPlan) -> str:
    if plan.output is None:
        return "none"
    if plan.picture_target is not None:
        return "rgb48" if plan.output_bit_depth == 16 else "rgb24"
    if plan.use_nvenc:
        return "p010" if plan.output_bit_depth > 8 else "nv12"
    return "yuv420p10" if plan.output_bit_depth > 8 else "yuv420p"


def _split_stages(plan: RunPlan, stats: RunStats):
    """--split-gpu: the two halves (pipeline/split.py), their modules made on the CPU and moved
    each to its device by its own stage."""
    from models.split import split_model
    from pipeline.split import InTransit, SplitBack, SplitFront, SplitPlan

    choice, cfg = plan.split, plan.config
    temporal = _temporal(plan)
    first, second = choice.devices
    if choice.part == "spatial":
        stage_a, stage_b = split_model(plan.model.make_module())
        before, after = None, plan.interpolator.make_module() if plan.interpolator is not None else None
    else:
        # RIFE: with one made frame a pair, cut after block 2 (38% : 62% of the work); with more,
        # the later blocks run once per made frame and a cut after block 3 balances better (models/rife.py)
        where = {"num_blocks_a": 4} if plan.interpolate > 2 and plan.interpolator.arch == "IFNet" else {}
        stage_a, stage_b = split_model(plan.interpolator.make_module(), **where)
        before, after = (None if plan.spatial_identity else plan.model.make_module()), None
    split = SplitPlan(part=choice.part, stage_a=stage_a, stage_b=stage_b, devices=(first, second), dtype=choice.dtype,
                      transport=cfg.split_transport, before=before, after=after)
    names = [f"split-a-{n.removeprefix('worker-')}" for n in worker_names((first, second))]
    in_transit = InTransit()
    front = SplitFront(names[0], split, stats=stats.add_worker(names[0], str(first)), color=plan.source.color,
                       batch_size=cfg.batch_size or 1, temporal=temporal, in_transit=in_transit)
    back_name = names[1].replace("split-a-", "split-b-")
    back = SplitBack(back_name, split, stats=stats.add_worker(back_name, str(second)), color=plan.source.color,
                     output_format=_output_format(plan), model_name=plan.model.name, scale=plan.model.scale,
                     temporal=temporal, in_transit=in_transit)
    return front, back


def _encoders_share(plan: RunPlan) -> float | None:
    """Source frames per second the CPU encoders take at most (their estimated rate over the frames
    made per source frame), for a worker to weigh compiling (--compile auto only: --compile on
    compiles whatever the encoders). Not divided among the workers: they share one queue, so a
    fast GPU may take most of the frames; a worker keeps its model eager only where it alone
    outruns all the encoders."""
    if plan.config.compile != "auto" or not plan.encoders_fps:
        return None
    return plan.encoders_fps / max(1, plan.interpolate)


def _helper_rate(plan: RunPlan) -> Callable[[str, tuple, float], None] | None:
    """What a compile helper does with the compiled model's rate it timed (`CacheWarmer.on_rate`):
    kept for the next run's choice of encoders where this run measures none of its own (it ended
    before its compilation did: `pipeline.encoder_choice.remember_helper_rate`). Only for whole
    frames through the model alone (no tiles, no interpolation after it), in a parallel run, which
    is where model rates are remembered (`pipeline.runner`); and only while no run of this process
    goes on, on the GPU the helper timed the model on (this run, where its compilation was ready
    before its end and it measures its own rate; or the service's next job)."""
    if not (plan.model_rate_key and plan.config.parallel and plan.interpolate == 1):
        return None
    key, frame, devices = plan.model_rate_key, (plan.source.height, plan.source.width), [str(d) for d in plan.devices]
    memo = model_rates_memo()

    def on_rate(device: str, shape: tuple, fps: float) -> None:
        from pipeline.runner import runs_in_progress  # (the runner imports this module)

        if tuple(shape[-2:]) == frame and not runs_in_progress():  # a tile's rate is not the frames'
            remember_helper_rate(memo, key, devices=devices, device=device, fps=fps)

    return on_rate


def _overlap_from_env() -> bool | str | None:
    """How workers overlap a take's chunks on CUDA streams (pipeline/worker.py): by default once
    the model runs compiled ("compiled"); FRAMEPIPE_OVERLAP=1 (on) wherever the path allows it,
    =0 (off) never.
    Measured on the H100 (benchmarks/RESULTS.md, 2026-12-06): with the compiled x4plus-anime
    (480x270 -> 1080p, into x264 by 6 encoders) the run went at 103.5 fps once compiled with it and
    95.7 without, its compiled batches at 118-120 fps with it and 108 without; with the eager
    model, whole runs into x264 lost 7-29% with it (52-53 vs 57-74 fps, 2026-12-05)."""
    setting = os.environ.get("FRAMEPIPE_OVERLAP", "").strip().lower()
    if setting in ("1", "on", "yes", "true"):
        return None
    if setting in ("0", "off", "no", "false"):
        return False
    if setting:
        log.warning("FRAMEPIPE_OVERLAP=%s: not 1 or 0; the default (overlap where the model compiles) applies", setting)
    return "compiled"


def _temporal(plan: RunPlan) -> Temporal | None:
    if plan.interpolator is None:
        return None
    return Temporal(model=plan.interpolator, factor=plan.interpolate,
                    scene_threshold=plan.config.scene_threshold_or_default, spatial=not plan.spatial_identity)


def _lent(call, model: LoadedModel, key: str, device: torch.device, dtype: torch.dtype):
    return call(model, key, device, dtype)


def worker_names(devices: tuple[torch.device, ...]) -> list[str]:
    names, num_cpu = [], 0
    for dev in devices:
        if dev.type == "cuda":
            names.append(f"worker-gpu{dev.index}")
        else:
            names.append(f"worker-cpu{num_cpu}")
            num_cpu += 1
    return names


def build(plan: RunPlan, stats: RunStats, output_path: Path, *, errors: ErrorChannel, parts: PartsFolder | None = None,
          wrap: Wrap | None = None, models: ModelSource | None = None) -> Stages:
    """Open both ends and make every stage. The caller closes the source and the encoder(s)
    through the stages (`Reader.close`, `Writer.close` / `SegmentWriter.close`)."""
    wrap = wrap or (lambda name, stage: stage)
    cfg = plan.config
    shift = TimeShift() if plan.cut is not None or plan.pictures is None else None  # a video's: see open_source
    if shift is not None:
        shift.cuts_start = plan.cut is not None and plan.cut.start is not None
    if plan.pictures is not None and plan.audio_source is not None:  # a soundtrack ends with the pictures
        shift = shift or TimeShift()
        shift.end = float(len(plan.pictures.paths) * plan.source.time_base)
    source = open_source(plan, stats.warn, shift)
    try:
        if plan.picture_target is not None or plan.output is None:
            encoder = None
        elif parts is None:
            encoder = open_encoder(plan, output_path, stats.warn, audio_shift=shift)
        else:  # settings the encoder or container refuse: found now, before any frame
            probe = parts.path / ".probe.mp4"
            open_encoder(plan, probe, stats.warn, with_audio=False).close(complete=False)
            probe.unlink(missing_ok=True)
            encoder = None
    except BaseException:
        source.close()
        raise
    workers, back = [], None
    if plan.split is not None:
        front, back = _split_stages(plan, stats)
        workers.append(wrap(front.name, front))
        back = wrap(back.name, back)
    on_rate = _helper_rate(plan)
    for name, dev in zip(worker_names(plan.devices) if plan.split is None else [], plan.devices):
        batch = cfg.batch_size if not (cfg.batch_size == 0 and dev.type == "cpu") else 1
        build_model, release_model = plan.model.build, None
        if models is not None:  # modules lent by a model manager (the service), given back at close
            build_model = partial(_lent, models.acquire, plan.model, cfg.model)
            release_model = partial(_lent, models.release, plan.model, cfg.model)
        worker = Worker(
            name, dev, build_model, release_model=release_model, stats=stats.add_worker(name, str(dev)), warn=stats.warn,
            color=plan.source.color, dtype=plan.dtypes[str(dev)][0], model_name=plan.model.name,
            scale=plan.model.scale, output_format=_output_format(plan), batch_size=batch,
            max_batch_size=cfg.max_batch_size, frame_size=(plan.source.height, plan.source.width),
            tile_size=cfg.tile_size or None, tile_overlap=cfg.tile_overlap,
            compile=(plan.compiled[str(dev)] if not plan.spatial_identity and plan.model.kind == "spatial" else
                     (False, "interpolation only: no model before it" if plan.spatial_identity else
                      "a temporal model: eager")),
            compile_helper=(CacheWarmer(cfg.model, plan.model.scale, memo=ProbeMemo(default_cache_dir() / "compiled.json"),
                                        artefacts=artefacts_folder(), on_rate=on_rate) if dev.type == "cuda" else None),
            probe_memo=ProbeMemo(default_cache_dir() / "batch-sizes.json") if cfg.batch_size == 0 else None,
            temporal=_temporal(plan), restore_radius=plan.model.radius, overlap=_overlap_from_env(),
            encoders_fps=_encoders_share(plan),
        )
        workers.append(wrap(name, worker))
    skip = None
    if plan.picture_target is not None:  # --resume: pictures already on disk are kept, not made again
        target = plan.picture_target
        # (one named picture file: no manifest, nothing to resume; it is written whole or not at all)
        done = pictures_done(target.folder) if cfg.resume and target.file_name is None else set()

        per = plan.interpolate  # pictures per source frame

        def picture_name(index: int) -> str:
            """A picture keeps its source frame's number (RunPlan.picture_name): --start
            renumbers the frames from 0, and the frames it dropped come back here."""
            skipped = source.num_frames_before_start if isinstance(source, CutSource) else 0
            return plan.picture_name(index + skipped * per)

        def picture_exists(index: int) -> bool:  # the source frame's pictures are all there
            return all(picture_name(index * per + k) in done for k in range(per))

        @functools.lru_cache(maxsize=2 * PICTURE_THREADS)  # read once for a source picture's N (--interpolate N)
        def source_profile(frame: int) -> bytes | None:
            paths = plan.pictures.paths if plan.pictures is not None else ()
            return icc_profile(paths[frame]) if frame < len(paths) else None

        def picture_profile(index: int) -> bytes | None:  # the source picture's ICC profile (a video: none)
            skipped = source.num_frames_before_start if isinstance(source, CutSource) else 0
            return source_profile(index // per + skipped)

        skip = picture_exists if done else None
        # --resume writes only pictures not done: one there by that name is older than the manifest's
        # run, which --overwrite let replace it (pipeline.segments.pictures_done)
        writer = wrap("writer", PictureWriter(target.folder, picture_name, target.suffix,
                                              overwrite=plan.overwrite_output or (cfg.resume and target.file_name is None),
                                              stats=stats, frames_per_item=per,
                                              kept=done, orientation=orientation(plan.source.display_matrix),
                                              gray=is_gray(plan.source.pix_fmt or ""), profile=picture_profile))
    elif plan.output is None:
        writer = wrap("writer", DiscardWriter(stats=stats))
    elif parts is not None:
        layout = plan.segments
        # Only whole segments are taken over: one that ended short (the video's end then) is made
        # again, so that frames found after it (never expected) cannot fall into a finished segment.
        finished = {k for k, entry in parts.finished().items() if entry["stop"] == layout.stop_of(k)}

        def in_finished_segment(index: int) -> bool:
            return layout.segment_of(index) in finished

        skip = in_finished_segment if finished else None
        pool = EncoderPool(plan.num_encoders, queue_frames=layout.segment_frames, parts=parts, layout=layout,
                           open_encoder=lambda path: open_encoder(plan, path, stats.warn, with_audio=False),
                           errors=errors, stats=stats, threaded=cfg.parallel)
        writer = wrap("writer", SegmentWriter(layout, pool, stats=stats, is_finished=lambda k: k in finished))
    else:
        writer = wrap("writer", Writer(encoder, stats=stats))
    reader = wrap("reader", Reader(source, stats=stats, max_frames=cfg.max_frames, skip=skip, window=temporal_window(plan),
                                   pad_ends=plan.interpolator is None, time_base=plan.source.time_base))
    return Stages(reader=reader, workers=workers, writer=writer, source=source, encoder=encoder, skip=skip,
                  audio_shift=shift, back=back)
