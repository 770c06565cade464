"""Worker stage: runs batches of frames through the model on one device.

One worker per device (`worker-cpu0`, `worker-gpu1`, ...), each in its own thread with its
own model copy and, on a GPU, its own CUDA stream. `process(batch)` takes a batch of
`Frame`s (a free worker takes the next batch from the work queue, so a slower device
takes fewer), converts them to RGB on the device, runs the model, checks its output, and
converts the result to the writer's format: yuv420p planes in host memory, or NV12 on the
device (each frame with the CUDA event the NVENC writer waits on). It returns one
`ResultItem` per frame, in order.

The model runs the batch in chunks of `batch_size`. On a GPU, for a spatial model writing
yuv420p(10) planes to host memory or nothing (--output-mode none), the chunks overlap (issue
12: on an H100 the work around the model took as long as the model, one after the other):
while the model runs chunk i on the worker's stream, chunk i+1 is copied in and converted to
RGB on a copy-in stream and chunk i-1 converted to YUV and copied to pinned host memory on a
copy-out stream. Events order each chunk's three steps; the host waits once a batch, for its
last chunk (and, to bound memory, for chunk i-2 before chunk i starts). The operations are
those of the plain path, so the bytes are the same. To have chunks to overlap, such a worker
takes `TAKE_BATCHES` batches at once from the work queue (`take_size`). A run overlaps where
the model runs compiled (`overlap="compiled"`: from its first compiled batch on; measured faster
there, slower with an eager model; FRAMEPIPE_OVERLAP=1/0 forces it on/off). Everything else (the CPU, interpolation and
restoration models, NV12/P010 for NVENC, RGB pictures, an eager model, or `overlap=False`)
takes one batch and runs its chunks one after the other, each waited for.

Nothing is lost:
- out of memory: clear the cache, halve the batch, retry the same frames; after a run of
  good batches, grow back toward the probed size. Out of memory at batch 1: the same frames
  again in tiles (`models/tiling.py`), halving the tile size down to a floor, said in one
  warning; with `--tile-size` every model call is tiled from the start;
- a device fault (CUDA error, lost device): `Retry` — the batch goes back to the work
  queue for any worker, this one backs off (doubling) — and after `max_failures`, or a
  fault while starting, `Retire`: the device leaves the run, its frames stay in the queue;
- anything else is a bug or bad data: it propagates, and the run stops.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from core.frame import Frame, Window
from hw.color import ColorInfo
from hw.frames import (HostYuv420, alpha_to_host, batch_alpha, batch_to_rgb, queue_host_yuv420, rgb_to_host_rgb,
                       rgb_to_host_yuv420, rgb_to_nv12_frames)
from hw.memory import (DeviceFault, ProbeMemo, choose_batch_size, cuda_measure, entry_number, free_cached_memory,
                       is_device_fault, is_oom)
from hw.scheduling import fit_torch_threads
from models.base import LoadedModel, all_finite, check_model_output, not_finite_error
from models.compiled import CompiledModel
from models.tiling import Tiling, default_overlap, next_tiling, run_tiled
from pipeline.messages import OutputFormat, ResultItem
from pipeline.stage import Retire, Retry
from pipeline.temporal import (alpha_in_output_order, distinct_frames, in_output_order, pairs, repeat_on_cut,
                               timesteps, window_results)
from pipeline.stats import WorkerStats

__all__ = ["Worker", "Temporal", "to_output", "TAKE_BATCHES"]

# Batches a worker takes from the work queue at once where it overlaps their chunks: with k
# chunks the pipeline's fill and drain (one conversion in, one out) is paid once per k.
TAKE_BATCHES = 3
COMPILE_PAYS_MARGIN = 1.5  # eager model this many times the encoders' share: compiling would not pay
# A model kept eager for the encoders is compiled after all where, over a window of this many
# seconds (after as many again for the queues to fill), the worker waited on the encoders less
# than NEVER_BLOCKED_SHARE of the time: the estimate was wrong, the model bounds the run.
RECHECK_SECONDS = 5.0
NEVER_BLOCKED_SHARE = 0.05
_OVERLAP_OUTPUTS = ("yuv420p", "yuv420p10", "none")  # host planes, or nothing: the host waits for them
_CHUNKS_IN_FLIGHT = 2  # chunk i starts once chunk i-2 is in host memory: at most 2 chunks' outputs held


@dataclass(frozen=True)
class Temporal:
    """Frame interpolation after the model (--interpolate): `model` makes `factor - 1` frames
    between each two; a pair less alike than `scene_threshold` is a cut (its first frame is
    repeated); `spatial`: the model before it does something (else it is skipped)."""

    model: LoadedModel
    factor: int
    scene_threshold: float
    spatial: bool = True


class Worker:
    """Stage: `process(batch of Frames) -> ResultItems`, on `device`."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        build_model: Callable[[torch.device, torch.dtype], torch.nn.Module],
        *,
        release_model: Callable[[torch.device, torch.dtype], None] | None = None,
        stats: WorkerStats,
        warn: Callable[[str], None],
        color: ColorInfo,
        dtype: torch.dtype,
        model_name: str,
        scale: int,
        output_format: OutputFormat = "yuv420p",
        batch_size: int = 1,
        max_batch_size: int = 256,
        frame_size: tuple[int, int] | None = None,
        tile_size: int | None = None,
        tile_overlap: int | None = None,
        compile: tuple[bool, str] = (False, ""),
        compile_helper: Callable | None = None,
        probe_memo: ProbeMemo | None = None,
        temporal: Temporal | None = None,
        restore_radius: int = 0,
        max_failures: int = 3,
        backoff_seconds: float = 2.0,
        overlap: bool | str | None = None,
        encoders_fps: float | None = None,
    ) -> None:
        self.name = name
        self.device = device
        self.build_model = build_model
        self.release_model = release_model  # gives a lent module back (the service's model manager)
        self.ws = stats
        self.warn = warn
        self.color = color
        self.dtype = dtype
        self.model_name = model_name
        self.scale = scale
        self.output_format = output_format
        self.requested_batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.frame_size = frame_size
        self.max_failures = max_failures
        self.backoff_seconds = backoff_seconds
        self.log = logging.getLogger(name)
        self.module: torch.nn.Module | None = None  # eager
        self.compile = compile
        self.compile_helper = compile_helper  # fills the compile cache out of process (models/compile_helper.py)
        self.probe_memo = probe_memo  # batch sizes probed by earlier runs (None: always probe)
        # Source frames per second the CPU encoders take at most (an upper estimate; None: unknown,
        # or not to be weighed: --compile on). Where the model alone outruns it eagerly by
        # COMPILE_PAYS_MARGIN the encoders bound the run: compiling would not pay, and its minutes
        # of CPU would slow the encoders (`_weigh_compile`).
        self.encoders_fps = encoders_fps
        self.temporal = temporal  # --interpolate: batches are `Window`s (each frame and the next)
        self.interpolator: torch.nn.Module | None = None
        self.restore_radius = restore_radius  # a restoration model: batches are `Window`s of 2r+1 frames
        self.model: CompiledModel | None = None  # what batches run through: eager, compiled when ready
        self.target_batch_size = max(1, batch_size)
        self.batch_size = self.target_batch_size
        self._good_batches_since_shrink = 0
        self._grow_after = 16
        self._stream = None  # the worker's stream: the model (and everything, without overlap)
        # Overlapping chunks (see the module's docstring). None: where it applies, on a GPU; "compiled":
        # there, where the model compiles (the default of a run); True: also on the CPU, where the same
        # scheduling runs without streams (tests); False: never.
        self._overlap_once_compiled = overlap == "compiled"  # eager batches (before or without it) do not
        if overlap == "compiled":
            overlap = None if compile[0] else False
        self.overlap = _overlap_applies(overlap, device=device, output_format=output_format, temporal=temporal,
                                        restore_radius=restore_radius)
        self._copy_in = None  # the overlap's streams: conversion in, conversion out (a GPU)
        self._copy_out = None
        self.tile_overlap = tile_overlap if tile_overlap is not None else default_overlap(tile_size or None)
        self.tiling = Tiling(tile_size, self.tile_overlap) if tile_size else None
        self._input_size: tuple[int, int] = (0, 0)  # (height, width) of the last model input
        self._tiles_to_announce: str | None = None  # what the first switch to tiles replaced, until said
        self._tiles_announced = False
        self._probe_pending = False
        self._eager_fps: float | None = None  # the probe's frames/s at the chosen batch size (eager, whole path)
        self._recheck: tuple[float, float] | None = None  # kept eager: (window start, blocked seconds then)

    # -- set-up (in the worker's own thread) -------------------------------------------
    def start(self) -> None:
        """Build the model on the device and settle the batch size (probe when 0). A device
        fault here leaves this worker out of the run (`Retire`)."""
        try:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
                self._stream = torch.cuda.Stream(self.device)
                if self.overlap:
                    self._copy_in, self._copy_out = torch.cuda.Stream(self.device), torch.cuda.Stream(self.device)
                self.ws.marks["CUDA context"] = time.perf_counter()
            else:
                fit_torch_threads()  # a container's CPU quota, which torch does not count
            self.module = self.build_model(self.device, self.dtype)
            if self.temporal is not None:
                self.interpolator = self.temporal.model.build(self.device, self.dtype)
            self.ws.marks["model on the device"] = time.perf_counter()
            enabled, why = self.compile
            self.model = CompiledModel(self.module, name=self.model_name, enabled=enabled, warn=self.warn, reason=why,
                                       prepare=self.compile_helper if enabled else None,
                                       artefact=getattr(self.compile_helper, "artefact", None) if enabled else None)
            self.ws.compile = self.model.state
            if self.requested_batch_size == 0:
                if self.device.type == "cuda" and self.frame_size is not None:
                    self._probe_pending = True  # on the first batch: real frames, the worker's whole path
                else:
                    self.ws.probe_note = "CPU: batch 1 (torch already uses every core per frame)"
        except BaseException as exc:
            if not is_device_fault(exc):
                raise
            self.ws.num_failures += 1
            self.ws.health = "failed"
            self.log.error("%s could not start on %s (%s): left out of the run", self.name, self.device, exc)
            self.warn(f"{self.name} ({self.device}) failed to start and was left out of the run: {exc}")
            raise Retire(str(exc)) from exc
        self.batch_size = min(self.target_batch_size, self.max_batch_size)
        self.ws.batch_size = self.batch_size
        self.model.batch_size = self.batch_size
        self.ws.tile_size = self.tiling.size if self.tiling is not None else None
        self.ws.overlap = self.overlap
        self.ws.health = "ok"

    @property
    def take_size(self) -> int:
        """Frames this worker takes from the work queue at once (the stage runner's `want`):
        `TAKE_BATCHES` batches where it overlaps their chunks, else one."""
        return self.batch_size * TAKE_BATCHES if self.overlapping else self.batch_size

    @property
    def overlapping(self) -> bool:
        """Whether the next take overlaps its chunks: where the overlap is on; with
        `overlap="compiled"` only once the model runs compiled (while it compiles, and where the
        compilation failed or did not match, the batches run eagerly, which were measured slower
        overlapped)."""
        if not self.overlap:
            return False
        return not self._overlap_once_compiled or (self.model is not None and self.model.state.status == "compiled")

    def _weigh_compile(self, eager_fps: float | None) -> None:
        """Before the first batch through the model: keep it eager where it already outruns the
        encoders' share by COMPILE_PAYS_MARGIN (`eager_fps`: the probe's rate at the chosen batch
        size, this worker's whole path). The encoders bound such a run whichever way the model
        runs, and compiling takes the CPU they need: on an H100 host (16 cores) a first
        compilation of realesr-animevideov3 for a new batch size ran 18 s beside six x264 medium
        encoders, which then made 52 fps instead of the 65 they make alone. Only where the worker
        probes its batch size (or finds it remembered with its rate): with --batch-size N no eager
        rate is known and the model compiles as before. Not for interpolation or restoration
        windows, whose probe rate counts windows of repeated frames."""
        if self.model is None or not self.model.enabled or not self.encoders_fps or not eager_fps:
            return
        if self.temporal is not None or self.restore_radius:  # the probe's rate counts windows, not the model's frames
            return
        if eager_fps >= COMPILE_PAYS_MARGIN * self.encoders_fps:
            why = (f"eager: the encoders bound this run (they take ~{self.encoders_fps:.0f} fps at most; this worker "
                   f"makes {eager_fps:.0f} fps eagerly), so compiling would not pay and would take their CPU; "
                   "--compile on compiles anyway")
            self.model.keep_eager(why)
            self.log.info("%s", why)
            self._recheck = (time.perf_counter() + RECHECK_SECONDS, 0.0)  # the first window after the queues filled

    def _recheck_compile(self, now: float) -> None:
        """While the model is kept eager for the encoders: over each window of RECHECK_SECONDS, the
        share of the time the worker waited to hand its results on (`StageClock.blocked_seconds`).
        Under NEVER_BLOCKED_SHARE the encoders did not bound the run (the estimate was wrong: a
        content factor learnt on harder clips, another job on the CPU gone), so the model
        compiles after all; the worker's settled rate is then measured afresh."""
        start, blocked_then = self._recheck
        blocked = self.ws.clock.blocked_seconds
        if now < start:
            self._recheck = (start, blocked)
            return
        if now - start < RECHECK_SECONDS:
            return
        share = (blocked - blocked_then) / (now - start)
        if share >= NEVER_BLOCKED_SHARE:
            self._recheck = (now, blocked)  # the encoders bound it: look again over the next window
            return
        self._recheck = None
        why = (f"compiling after all: kept eager for the encoders, but the worker waited on them {share:.0%} of the "
               f"last {now - start:.0f} s")
        if self.model.compile_after_all(why):
            self.ws.steady_frames, self.ws.steady_seconds = 0, 0.0  # the rate it settles at, from now
            self.log.info("%s", why)

    def _probe_batch_size(self, frames: Sequence[Frame]) -> int:
        """The batch size with the best frames/s for what this worker does per batch: the
        first batch's real frames (repeated to size) from their decoded form, through the
        conversion in, the model (eager) and the conversion out, to host memory or NV12. Timing
        the model alone misses ~20% of the work (measured on an H100, issue 12)."""
        key = self._probe_key(frames[0])
        known = self.probe_memo.get(key) if self.probe_memo is not None else None
        if known and 1 <= int(known.get("batch_size", 0)) <= self.max_batch_size:
            self.ws.probe_note = f"{known['batch_size']}, as probed on {known.get('date', 'an earlier run')} " \
                                 f"({known.get('note', '')})"
            self._eager_fps = entry_number(known, "fps")
            return int(known["batch_size"])
        self.ws.health = "probing"

        alike = [f for f in frames if _shape(f) == _shape(frames[0])]  # pictures of several sizes: the first's

        def run(b: int) -> None:
            self.infer([alike[i % len(alike)] for i in range(b)], eager=True)

        with torch.cuda.stream(self._stream):
            # Cheap on purpose: one timed batch per size after a warm-up, stop at the first
            # doubling that gains under 5%, and never spend more than ~4 s (measured on
            # H200: RRDBNet's probe took 5-26 s with 2 repeats and patience 2).
            result = choose_batch_size(
                cuda_measure(run, self.device, repeats=1), max_batch_size=self.max_batch_size,
                patience=1, time_budget_seconds=4.0,
            )
        free_cached_memory(self.device)
        self.ws.probe_seconds = result.seconds
        fps = ", ".join(f"{b}:{f:.1f}" for b, f in sorted(result.fps_by_batch.items()))
        self.ws.probe_note = f"chose {result.batch_size} ({result.note}; fps by batch {fps})"
        self.log.info("batch size %d, probed in %.1f s (%s)", result.batch_size, result.seconds, self.ws.probe_note)
        self._eager_fps = result.fps_by_batch.get(result.batch_size)
        if self.probe_memo is not None and result.fps_by_batch:
            self.probe_memo.put(key, {"batch_size": result.batch_size, "note": f"fps by batch {fps}",
                                      "fps": round(self._eager_fps, 1) if self._eager_fps else None,
                                      "date": time.strftime("%Y-%m-%d")})
        return result.batch_size

    def _probe_key(self, frame: Frame) -> str:
        """What the probe's answer depends on: GPU, torch, model, frame size and format, precision,
        output, tiles."""
        gpu = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        tiles = self.tiling.size if self.tiling is not None else 0
        params = sum(p.numel() for p in self.module.parameters())
        return (f"{gpu}|torch {torch.__version__}|{self.model_name} {type(self.module).__name__} {params}|x{self.scale}|{frame.fmt} {frame.bit_depth}-bit|"
                f"{self.frame_size[1]}x{self.frame_size[0]}|{str(self.dtype).removeprefix('torch.')}|"
                f"{self.output_format}|tiles {tiles}|max {self.max_batch_size}")

    # -- the stage contract ---------------------------------------------------------------
    def process(self, batch: Sequence[Frame]) -> list[ResultItem]:
        """A batch of frames in, their results out (same order); never drops a frame."""
        try:
            if self._probe_pending:
                self._probe_pending = False
                self.ws.marks["first batch in"] = time.perf_counter()
                self.target_batch_size = self._probe_batch_size(batch)
                self.ws.marks["batch size (probe or memo)"] = time.perf_counter()
                self.batch_size = min(self.target_batch_size, self.max_batch_size)
                self.ws.batch_size, self.ws.health = self.batch_size, "ok"
                self.model.batch_size = self.batch_size
                self._weigh_compile(self._eager_fps)
            elif self._recheck is not None:
                self._recheck_compile(time.perf_counter())
            mode, t0 = self._settled_mode(), time.perf_counter()
            if self._stream is not None:
                with torch.cuda.stream(self._stream):
                    results = self._process_all(batch)
            else:
                results = self._process_all(batch)
            if mode is not None and mode == self._settled_mode():
                self.ws.steady_frames += len(batch)
                self.ws.steady_seconds += time.perf_counter() - t0
                if self.ws.settled_at is None:
                    self.ws.settled_at = t0
        except BaseException as exc:
            if not is_device_fault(exc):
                raise
            self._device_failed(len(batch), exc)  # raises Retry or Retire
        if self.ws.health == "backoff":
            self.ws.health = "ok"
        return results

    def finish(self) -> list[ResultItem]:
        return []

    def _settled_mode(self) -> str | None:
        """How the model runs now, where that is how it will go on running (the compile status:
        compiled, eager, failed, mismatch); None while a compilation may still switch it."""
        status = self.model.state.status if self.model is not None else "eager"
        return None if status in ("waiting", "compiling") else status

    def close(self, *, complete: bool) -> None:
        self.interpolator = None
        if self.model is not None:  # a run that completed lets a compile helper finish filling the cache
            self.model.close(finish_cache=complete)
        if self.module is not None and self.release_model is not None:
            self.module, self.model = None, None
            self.release_model(self.device, self.dtype)
        if self.ws.health != "failed":
            self.ws.health = "done"

    # -- one batch ------------------------------------------------------------------------
    def _to_output(self, rgb: torch.Tensor, alpha: torch.Tensor | None = None) -> list:
        return to_output(rgb, alpha, fmt=self.output_format, color=self.color, scale=self.scale)

    def infer(self, frames: Sequence[Frame] | Sequence[Window], *, eager: bool = False) -> list[ResultItem]:
        """One model call on `frames`: RGB in, checked output, writer format out. Raises on OOM."""
        if self.temporal is not None:
            return self._infer_windows(frames, eager=eager)
        if self.restore_radius:
            return self._infer_restore(frames)
        with torch.inference_mode():
            rgb = batch_to_rgb(frames, self.color, device=self.device, dtype=self.dtype)
            out = check_model_output(self.model_name, rgb, self._model(rgb, eager=eager), scale=self.scale)
            planes = self._to_output(out, self._alpha(frames))
        return [
            ResultItem(index=f.index, pts=f.pts, fmt=self.output_format, planes=p, worker=self.name)
            for f, p in zip(frames, planes)
        ]

    def _infer_restore(self, windows: Sequence[Window]) -> list[ResultItem]:
        """A restoration model: each window's 2r+1 frames (the batch's distinct frames converted
        once) in as (B, 2r+1, 3, H, W), the middle frame restored out (with its own alpha, for RGBA
        pictures). Whole frames, no tiles."""
        frames, pos = distinct_frames(windows)
        with torch.inference_mode():
            rgb = batch_to_rgb(frames, self.color, device=self.device, dtype=self.dtype)
            idx = torch.tensor([[pos[f.index] for f in w.frames] for w in windows], device=rgb.device)
            model = self.model if self.model is not None else self.module
            out = check_model_output(self.model_name, rgb[idx[:, self.restore_radius]], model(rgb[idx]), scale=self.scale)
            planes = self._to_output(out, self._alpha([w.frame for w in windows]))
        return [ResultItem(index=w.index, pts=w.pts, fmt=self.output_format, planes=p, worker=self.name)
                for w, p in zip(windows, planes)]

    def _infer_windows(self, windows: Sequence[Window], *, eager: bool) -> list[ResultItem]:
        """Frame interpolation (pipeline/temporal.py): each distinct frame of the batch through the
        model once, then `factor - 1` frames made between each frame and the next."""
        t = self.temporal
        frames, pos = distinct_frames(windows)
        with torch.inference_mode():
            rgb = batch_to_rgb(frames, self.color, device=self.device, dtype=self.dtype)
            if t.spatial:
                out = check_model_output(self.model_name, rgb, self._model(rgb, eager=eager), scale=self.scale)
                out = out.clamp_(0, 1)
            else:
                out = rgb
            made = cut = None
            both = pairs(windows, out, pos)
            if both is not None:
                first, second = both
                made = self.interpolator(first, second, timesteps(t.factor))  # (P, N-1, 3, H, W)
                if t.scene_threshold > 0:
                    from models.rife import scene_cut

                    cut = scene_cut(first, second, threshold=t.scene_threshold)
                    cuts = repeat_on_cut(made, first, cut)
                    if not eager:  # (the batch-size probe's runs are not the video's)
                        self.ws.num_scene_cuts += cuts
            alpha = self._alpha(frames)
            if alpha is not None:
                alpha = alpha_in_output_order(windows, alpha, pos, t.factor, cut)
            planes = self._to_output(in_output_order(windows, out, pos, made), alpha)
        return window_results(windows, planes, t.factor, self.output_format, self.name)

    def _alpha(self, frames: Sequence[Frame]) -> torch.Tensor | None:
        """The frames' alpha planes where the output keeps them (pictures), else None."""
        return batch_alpha(frames, device=self.device) if self.output_format in ("rgb24", "rgb48") else None

    def _model(self, rgb: torch.Tensor, *, eager: bool = False) -> torch.Tensor:
        """The model on a batch: whole frames, or tiles when a tile size is set. Compiled once
        the background compilation is ready (models/compiled.py); `eager`: never compiled
        (the batch-size probe, which must not start a compilation for its own shapes)."""
        self._input_size = (rgb.shape[-2], rgb.shape[-1])
        if self.model is None:
            model = self.module
        else:
            model = self.model.eager if eager else self.model
        if self.tiling is None:
            return model(rgb)
        return run_tiled(model, rgb, self.tiling, scale=self.scale, name=self.model_name)

    def _process_all(self, frames: Sequence[Frame]) -> list[ResultItem]:
        """`infer` in chunks of the current batch size, halving it on OOM; at batch 1, tiles."""
        if self.overlapping:
            return self._process_overlapped(frames)
        done: list[ResultItem] = []
        chunk_sizes: list[int] = []
        pos = 0
        while pos < len(frames):
            chunk = self._chunk(frames, pos)
            try:
                done.extend(self.infer(chunk))
            except BaseException as exc:
                if not is_oom(exc):
                    raise
                self._out_of_memory(exc, len(chunk))
                continue
            self._chunk_done(chunk)
            pos += len(chunk)
            chunk_sizes.append(len(chunk))
        for size in chunk_sizes:  # counted only once the whole batch is done (a fault hands it all back)
            self.ws.record_batch(size)
        return done

    def _process_overlapped(self, frames: Sequence[Frame]) -> list[ResultItem]:
        """`_process_all` with its chunks overlapped (the module's docstring): the same chunks, OOM
        halving and tiles; each chunk's conversion in is queued (`_stage`) while the model runs
        the one before; the host waits for the last chunk's copies, then reads every chunk's."""
        launched: list[_Launched] = []
        staged: _Staged | None = None
        pos = 0
        while pos < len(frames):
            chunk = self._chunk(frames, pos)
            try:
                if staged is None or staged.num_frames != len(chunk):
                    staged = self._stage(chunk)
                if len(launched) >= _CHUNKS_IN_FLIGHT:
                    launched[-_CHUNKS_IN_FLIGHT].wait()
                launched.append(self.launch(chunk, staged))
            except BaseException as exc:
                if not is_oom(exc):
                    raise
                staged = None
                self._out_of_memory(exc, len(chunk))
                continue
            staged = None
            self._chunk_done(chunk)
            pos += len(chunk)
            if pos < len(frames):  # the next chunk in, while the model runs this one
                after = self._chunk(frames, pos)
                try:
                    staged = self._stage(after)
                except BaseException as exc:
                    if not is_oom(exc):
                        raise
                    self._out_of_memory(exc, len(after))
        if launched:
            launched[-1].wait()  # the copy-out stream runs in order: every chunk is in host memory
        done = [r for chunk in launched for r in chunk.results()]
        for chunk in launched:  # counted only once the whole batch is done (a fault hands it all back)
            self.ws.record_batch(chunk.num_frames)
        return done

    def _stage(self, frames: Sequence[Frame]) -> _Staged:
        """A chunk's conversion in (host->device copy, YUV->RGB), queued on the copy-in stream."""
        with torch.inference_mode(), _on(self._copy_in):
            rgb = batch_to_rgb(frames, self.color, device=self.device, dtype=self.dtype)
            return _Staged(len(frames), rgb, _event(self._copy_in))

    def launch(self, frames: Sequence[Frame], staged: _Staged) -> _Launched:
        """One model call on a chunk `_stage` converted in (the overlapped path's `infer`): the
        model on the worker's stream once the chunk is in, then the conversion out and the copy to
        pinned host memory on the copy-out stream once the model is done. Queued, not waited
        for: `.wait()`, then `.results()`. Raises on OOM. Without streams (the CPU) all at once."""
        out_stream = self._copy_out
        with torch.inference_mode():
            rgb = staged.rgb
            if out_stream is None:
                out = check_model_output(self.model_name, rgb, self._model(rgb), scale=self.scale)
                return _Launched(frames, self._queue_output(out), None, None, self.output_format, self.name,
                                 self.model_name, out.dtype)
            compute = torch.cuda.current_stream(self.device)
            _hand_over(staged.ready, compute, rgb)
            out = check_model_output(self.model_name, rgb, self._model(rgb), scale=self.scale, check_values=False)
            finite = all_finite(out)  # read with the planes: reading it now would wait for the model
            model_done = _event(compute)
            with torch.cuda.stream(out_stream):
                _hand_over(model_done, out_stream, out, finite)
                host = self._queue_output(out)
                finite_on_host = torch.empty((), dtype=torch.bool, pin_memory=True)
                finite_on_host.copy_(finite, non_blocking=True)
                done = _event(out_stream)
        return _Launched(frames, host, finite_on_host, done, self.output_format, self.name, self.model_name, out.dtype)

    def _queue_output(self, out: torch.Tensor) -> HostYuv420 | None:
        """The conversion out of the overlapped path, queued on the current stream (host planes)."""
        if self.output_format == "none":
            return None
        return queue_host_yuv420(out, self.color, bit_depth=10 if self.output_format == "yuv420p10" else 8)

    def _chunk(self, frames: Sequence, pos: int) -> Sequence:
        """The next model call's frames from `pos`: up to the batch size, all of one size (a
        folder of pictures of several sizes comes at each picture's own, hw.pictures)."""
        chunk = frames[pos : pos + self.batch_size]
        first = _shape(chunk[0])
        return next((chunk[:k] for k in range(1, len(chunk)) if _shape(chunk[k]) != first), chunk)

    def _chunk_done(self, chunk: Sequence[Frame]) -> None:
        if self._tiles_to_announce is not None:
            self._announce_tiles(chunk[0].index)
        self._maybe_grow()

    def _out_of_memory(self, exc: BaseException, num_frames: int) -> None:
        """A chunk of `num_frames` ran out of memory: free the cache, then halve the batch, or at
        batch 1 use (smaller) tiles; the caller retries the same frames."""
        self.ws.num_oom += 1
        free_cached_memory(self.device, exc)
        if self.batch_size == 1:
            self._use_smaller_tiles(exc)  # raises DeviceFault below the smallest tile
            return
        self.batch_size = max(1, num_frames // 2)
        self.ws.batch_size = self.batch_size
        self._good_batches_since_shrink = 0
        self._grow_after = min(self._grow_after * 2, 1024)
        self.log.warning("out of memory at batch %d: retrying the same frames at batch %d", num_frames, self.batch_size)

    def _use_smaller_tiles(self, exc: BaseException) -> None:
        """Batch 1 ran out of memory: the next tiles to try, or `DeviceFault` at the floor."""
        height, width = self._input_size
        tiling = next_tiling(self.tiling, height=height, width=width, overlap=self.tile_overlap)
        if tiling is None:
            tiles = f" in tiles of {self.tiling.size}x{self.tiling.size}" if self.tiling is not None else ""
            # Tiles bound the model's memory, not the output frame's, which is whole on the device.
            out_bytes = height * width * self.scale**2 * 3 * torch.finfo(self.dtype).bits // 8
            where = "device " if self.device.type == "cuda" else ""
            big = (f"; the x{self.scale} output frame alone takes {out_bytes / 2**30:.1f} GiB of {where}memory: "
                   "use a smaller --scale") if out_bytes >= 2**30 else ""
            raise DeviceFault(f"{self.name}: out of memory even at batch 1{tiles}{big} ({exc})") from exc
        self.log.info("out of memory at batch 1 (%dx%d): retrying the same frames in tiles of %d", width, height,
                      tiling.size)
        if not self._tiles_announced and self._tiles_to_announce is None:
            self._tiles_to_announce = (f"a {width}x{height} frame" if self.tiling is None
                                       else f"tiles of {self.tiling.size}x{self.tiling.size}")
        self.tiling = tiling
        self.ws.tile_size = tiling.size

    def _announce_tiles(self, index: int) -> None:
        """The one warning, once the first frames went through the tiles chosen here."""
        size, what = self.tiling.size, self._tiles_to_announce
        self.warn(f"{self.name} ({self.device}): {what} did not fit in memory even at batch 1, so frames run in tiles "
                  f"of {size}x{size} pixels (overlap {self.tiling.overlap}) from frame {index} on. --tile-size sets "
                  "the size.")
        self._tiles_to_announce, self._tiles_announced = None, True

    def _maybe_grow(self) -> None:
        if self.batch_size >= self.target_batch_size:
            return
        self._good_batches_since_shrink += 1
        if self._good_batches_since_shrink >= self._grow_after:
            self.batch_size = min(self.batch_size * 2, self.target_batch_size)
            self.ws.batch_size = self.batch_size
            self._good_batches_since_shrink = 0
            self.log.info("growing batch back to %d", self.batch_size)

    def _device_failed(self, num_frames: int, exc: BaseException) -> None:
        self.ws.num_failures += 1
        self.ws.num_frames_given_back += num_frames
        _free_cached_memory_safely(self.device)
        if self.ws.num_failures >= self.max_failures:
            self.ws.health = "failed"
            self.log.error("%s failed %d times (%s): marked unhealthy, its frames handed back", self.name,
                           self.ws.num_failures, exc)
            self.warn(f"{self.name} ({self.device}) failed and was taken out of the run: {exc}")
            raise Retire(str(exc)) from exc
        wait = self.backoff_seconds * (2 ** (self.ws.num_failures - 1))
        self.ws.health = "backoff"
        self.log.warning("%s: device fault (%s); %d frame(s) handed back, retrying in %.1f s", self.name, exc,
                         num_frames, wait)
        raise Retry(str(exc), after_seconds=wait) from exc


def to_output(rgb: torch.Tensor, alpha: torch.Tensor | None, *, fmt: OutputFormat, color: ColorInfo, scale: int) -> list:
    """A batch of model output (N, 3, H, W) in the writer's format, one tuple of planes per frame."""
    if fmt == "none":  # --output-mode none: the batch is done when the device is
        if rgb.is_cuda:
            torch.cuda.current_stream(rgb.device).synchronize()
        return [() for _ in range(rgb.shape[0])]
    if fmt in ("nv12", "p010"):  # each frame carries the event the NVENC writer waits on (issue 9); p010: 10-bit
        return [(f,) for f in rgb_to_nv12_frames(rgb, color, bit_depth=10 if fmt == "p010" else 8)]
    if fmt in ("rgb24", "rgb48"):  # pictures out: RGB (and alpha), no YUV, no padding
        depth = 8 if fmt == "rgb24" else 16
        pictures = rgb_to_host_rgb(rgb, bit_depth=depth)
        if alpha is None:
            return [(p,) for p in pictures]
        return list(zip(pictures, alpha_to_host(alpha, scale=scale, bit_depth=depth)))
    return rgb_to_host_yuv420(rgb, color, bit_depth=10 if fmt == "yuv420p10" else 8)


def _free_cached_memory_safely(device: torch.device) -> None:
    try:
        free_cached_memory(device)
    except Exception:  # a broken device may refuse even this
        pass


# -- the overlapped path's pieces ---------------------------------------------------------------


def _overlap_applies(requested: bool | None, *, device: torch.device, output_format: str, temporal: Temporal | None,
                     restore_radius: int) -> bool:
    """Whether a worker overlaps its chunks: asked (None: on a GPU), for a spatial model writing
    host planes or nothing. True on the CPU runs the same scheduling without streams."""
    if requested is False or temporal is not None or restore_radius or output_format not in _OVERLAP_OUTPUTS:
        return False
    return requested is True or device.type == "cuda"


def _on(stream):
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def _event(stream):
    """An event after the work queued so far on `stream` (None: no stream, nothing to wait for)."""
    if stream is None:
        return None
    event = torch.cuda.Event()
    event.record(stream)
    return event


def _hand_over(event, stream, *tensors: torch.Tensor) -> None:
    """`stream` waits for `event` (work on another stream) before what is queued on it next, and
    `tensors`, made on that other stream, are kept from reuse until `stream` is done with them
    (the caching allocator otherwise hands their memory back to their own stream at once)."""
    stream.wait_event(event)
    for t in tensors:
        t.record_stream(stream)


def _shape(item) -> tuple | None:
    """A frame's picture size (its first plane's shape); None for a temporal model's window,
    whose frames are all of the video's one size."""
    planes = getattr(item, "planes", None)
    return tuple(planes[0].shape) if planes else None


@dataclass(frozen=True, eq=False)
class _Staged:
    """A chunk converted in (or being): its RGB on the device, ready after `ready` (None: now)."""

    num_frames: int
    rgb: torch.Tensor
    ready: object  # torch.cuda.Event | None

    def __repr__(self) -> str:
        return f"_Staged({tuple(self.rgb.shape)})"


@dataclass(frozen=True, eq=False)
class _Launched:
    """A chunk whose model call and conversion out are queued: `wait()` for its copies to host
    memory (the copy-out stream's `done`), then `results()`."""

    frames: Sequence[Frame]
    host: HostYuv420 | None  # None: --output-mode none
    finite: torch.Tensor | None  # pinned bool: the model's output was finite (None: checked already)
    done: object  # torch.cuda.Event | None
    fmt: OutputFormat
    worker: str
    model_name: str
    dtype: torch.dtype  # the model's output: what the NaN hint names

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    def wait(self) -> None:
        if self.done is not None:
            self.done.synchronize()

    def results(self) -> list[ResultItem]:
        if self.finite is not None and not bool(self.finite):
            raise not_finite_error(self.model_name, self.dtype)
        planes = self.host.frames() if self.host is not None else [() for _ in self.frames]
        return [ResultItem(index=f.index, pts=f.pts, fmt=self.fmt, planes=p, worker=self.worker)
                for f, p in zip(self.frames, planes)]

    def __repr__(self) -> str:
        return f"_Launched({len(self.frames)} frame(s) from #{self.frames[0].index})"
