"""A model split across two devices (`--split-gpu`): two stages, pipelined.

    work queue -> SplitFront (device A: frames to RGB, stage a) -> [handoff queue, 2 deep]
               -> SplitBack (device B: stage b, interpolation, conversion out) -> collector

Each half runs in its own thread under its own `StageRunner`, so while device B finishes
batch k, device A already works on batch k+1. What is split (`SplitPlan.part`):
- "spatial": the upscaler (RRDBNet ...); with --interpolate the interpolation runs whole on B;
- "interpolation": RIFE (flow estimation on A, the rest on B); an upscaler before it runs
  whole on A.
The boundary is crossed by `hw.transport` (`p2p` device to device, or `bytes`). The
collector's "was this frame lost?" check counts frames between the halves as in flight
(`InTransit`). No batch-size probe (the batch size is --batch-size, default 1 per call) and
no retry on a device fault: a split run is one model over two devices, so a fault on
either ends the run with its error.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from core.frame import Frame, Window
from hw.color import ColorInfo
from hw.frames import batch_to_rgb
from hw.transport import receive, send
from pipeline.messages import OutputFormat, ResultItem
from pipeline.stats import WorkerStats
from pipeline.temporal import distinct_frames, in_output_order, pairs, repeat_on_cut, timesteps, window_results
from pipeline.worker import Temporal, to_output

__all__ = ["SplitPlan", "SplitFront", "SplitBack", "Handoff", "InTransit", "AfterPut", "SequentialSplit", "split_advice"]


@dataclass(frozen=True)
class SplitPlan:
    """What runs where: `stage_a`/`stage_b` (CPU fp32, parameters disjoint) are the split part's
    halves; `before` (on A, whole) is the upscaler ahead of a split interpolation, `after` (on
    B, whole) the interpolation behind a split upscaler."""

    part: str  # "spatial" or "interpolation"
    stage_a: nn.Module
    stage_b: nn.Module
    devices: tuple[torch.device, torch.device]
    dtype: torch.dtype
    transport: str
    before: nn.Module | None = None
    after: nn.Module | None = None


@dataclass(frozen=True)
class Handoff:
    """One batch between the halves: its items (frames or windows, for their indices and
    timestamps), the tensors (moved, or packed as bytes) and the input frame size."""

    index: int
    items: tuple[Any, ...]
    message: Any

    def __repr__(self) -> str:
        kind = "bytes" if isinstance(self.message, (bytes, bytearray)) else "tensors"
        return f"Handoff(#{self.index}, {len(self.items)} item(s), {kind})"


class InTransit:
    """Indices between the halves: handed on by the front, not yet put out by the back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._indices: set[int] = set()

    def add(self, items: Sequence[Any]) -> None:
        with self._lock:
            self._indices.update(it.index for it in items)

    def remove(self, items: Sequence[Any]) -> None:
        with self._lock:
            self._indices.difference_update(it.index for it in items)

    def __contains__(self, index: int) -> bool:
        with self._lock:
            return index in self._indices


def _move(module: nn.Module | None, device: torch.device, dtype: torch.dtype) -> nn.Module | None:
    if module is None:
        return None
    module = module.to(device=device, dtype=dtype).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    return module


class _Half:
    """What both halves share: a device of the plan, its stream, its modules moved there in the
    stage's own thread (`start`), the work done on that stream (`_on_stream`)."""

    side = 0  # which of the plan's devices; which modules: (stage_a, before) or (stage_b, after)

    def __init__(self, name: str, plan: SplitPlan, *, stats: WorkerStats, color: ColorInfo,
                 temporal: Temporal | None, in_transit: InTransit) -> None:
        self.name, self.plan, self.ws, self.color = name, plan, stats, color
        self.device = plan.devices[self.side]
        self.temporal = temporal
        self.in_transit = in_transit
        self._stream = None

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            self._stream = torch.cuda.Stream(self.device)
        stage, extra = (self.plan.stage_a, self.plan.before) if self.side == 0 else (self.plan.stage_b, self.plan.after)
        self.stage = _move(stage, self.device, self.plan.dtype)
        self.extra = _move(extra, self.device, self.plan.dtype)
        self.ws.health = "ok"

    def _on_stream(self, fn, arg):
        if self._stream is None:
            return fn(arg)
        with torch.cuda.stream(self._stream):
            return fn(arg)

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        self.stage = self.extra = None
        if self.ws.health != "failed":
            self.ws.health = "done"


class SplitFront(_Half):
    """Stage on device A: a batch of frames (or windows) in, one `Handoff` out. `extra` is the
    upscaler ahead of a split interpolation (or None)."""

    side = 0

    def __init__(self, name: str, plan: SplitPlan, *, stats: WorkerStats, color: ColorInfo, batch_size: int,
                 temporal: Temporal | None, in_transit: InTransit) -> None:
        super().__init__(name, plan, stats=stats, color=color, temporal=temporal, in_transit=in_transit)
        self.batch_size = max(1, batch_size)

    def start(self) -> None:
        super().start()
        self.ws.batch_size = self.batch_size
        self.ws.probe_note = f"split: no probe, batch {self.batch_size} (--batch-size)"

    def process(self, items: Sequence[Frame | Window]) -> list[Handoff]:
        handoff = self._on_stream(self._front, items)
        self.in_transit.add(items)  # before the runner hands the batch on and reports it done
        self.ws.record_batch(len(items))
        return [handoff]

    def _front(self, items: Sequence[Frame | Window]) -> Handoff:
        plan, dtype = self.plan, self.plan.dtype
        with torch.inference_mode():
            if self.temporal is None:
                frames = list(items)
            else:
                frames, pos = distinct_frames(items)
            rgb = batch_to_rgb(frames, self.color, device=self.device, dtype=dtype)
            if plan.part == "spatial":
                tensors = tuple(self.stage(rgb))
            else:  # interpolation: the upscaler whole here, then the first half of the interpolation
                out = self.extra(rgb).clamp_(0, 1) if self.extra is not None else rgb
                cut = torch.zeros(0, dtype=torch.bool, device=self.device)
                inter: tuple = ()
                both = pairs(items, out, pos)
                if both is not None:
                    first, second = both
                    inter = tuple(self.stage(first, second, timesteps(self.temporal.factor)))
                    if self.temporal.scene_threshold > 0:
                        from models.rife import scene_cut

                        cut = scene_cut(first, second, threshold=self.temporal.scene_threshold)
                tensors = (out, cut, *inter)
            message = send(tensors, plan.devices[1], plan.transport)
        return Handoff(index=items[0].index, items=tuple(items), message=message)


class SplitBack(_Half):
    """Stage on device B: a `Handoff` in, its `ResultItem`s out (in the writer's format). `extra`
    is the interpolation behind a split upscaler (or None)."""

    side = 1

    def __init__(self, name: str, plan: SplitPlan, *, stats: WorkerStats, color: ColorInfo, output_format: OutputFormat,
                 model_name: str, scale: int, temporal: Temporal | None, in_transit: InTransit) -> None:
        super().__init__(name, plan, stats=stats, color=color, temporal=temporal, in_transit=in_transit)
        self.output_format, self.model_name, self.scale = output_format, model_name, scale

    def process(self, handoff: Handoff) -> list[ResultItem]:
        results = self._on_stream(self._back, handoff)
        self.ws.record_batch(len(handoff.items))
        return results

    def _back(self, handoff: Handoff) -> list[ResultItem]:
        items, t = handoff.items, self.temporal
        with torch.inference_mode():
            tensors = receive(handoff.message, self.device)
            if self.plan.part == "spatial":
                out = self.stage(*tensors)
                _check(self.model_name, out)
                if t is None:
                    planes = to_output(out, None, fmt=self.output_format, color=self.color, scale=self.scale)
                    return [ResultItem(index=f.index, pts=f.pts, fmt=self.output_format, planes=p, worker=self.name)
                            for f, p in zip(items, planes)]
                out = out.clamp_(0, 1)
                _, pos = distinct_frames(items)
                made, both = None, pairs(items, out, pos)
                if both is not None:
                    first, second = both
                    made = self.extra(first, second, timesteps(t.factor))
                    if t.scene_threshold > 0:
                        from models.rife import scene_cut

                        self.ws.num_scene_cuts += repeat_on_cut(made, first,
                                                                scene_cut(first, second, threshold=t.scene_threshold))
            else:
                out, cut, *inter = tensors
                _, pos = distinct_frames(items)
                made = None
                if inter:
                    made = self.stage(*inter)
                    if cut.numel():
                        first = out[[pos[w.frames[0].index] for w in items if len(w.frames) > 1]]
                        self.ws.num_scene_cuts += repeat_on_cut(made, first, cut)
            planes = to_output(in_output_order(items, out, pos, made), None, fmt=self.output_format, color=self.color,
                               scale=self.scale)
        return window_results(items, planes, t.factor, self.output_format, self.name)


def _check(name: str, out: torch.Tensor) -> None:
    low, high = torch.aminmax(out)
    if not (torch.isfinite(low) and torch.isfinite(high)):
        raise RuntimeError(f"model {name} (split) produced non-finite values")


class AfterPut:
    """An outbox that tells `on_put` once a batch's results are out (the back's `InTransit`)."""

    def __init__(self, outbox: Any, in_transit: InTransit) -> None:
        self.outbox, self.in_transit = outbox, in_transit

    def put(self, item: Any, *, stop: threading.Event) -> bool:
        ok = self.outbox.put(item, stop=stop)
        self.in_transit.remove([item])
        return ok

    def end(self, *, stop: threading.Event) -> None:
        self.outbox.end(stop=stop)



class SequentialSplit:
    """Both halves one after the other in one thread (the sequential baseline with --split-gpu)."""

    def __init__(self, front: SplitFront, back: SplitBack) -> None:
        self.front, self.back = front, back
        self.name = front.name

    @property
    def batch_size(self) -> int:
        return self.front.batch_size

    def start(self) -> None:
        self.front.start()
        self.back.start()

    def process(self, items: Sequence[Any]) -> list[ResultItem]:
        results = []
        for handoff in self.front.process(items):
            results += self.back.process(handoff)
            self.front.in_transit.remove(handoff.items)
        return results

    def finish(self) -> list:
        return []

    def close(self, *, complete: bool) -> None:
        self.front.close(complete=complete)
        self.back.close(complete=complete)


def split_advice(num_frames: int, wall_seconds: float, busy_a: float, busy_b: float) -> str | None:
    """After a split run: one line when two whole copies (data-parallel) would have been faster.
    Each copy would do both halves' work per frame, so two of them make about
    2 x frames / (busy_a + busy_b) frames/s (transfer time left out: none between copies)."""
    if num_frames < 1 or wall_seconds <= 0 or busy_a + busy_b <= 0:
        return None
    split_fps = num_frames / wall_seconds
    parallel_fps = 2 * num_frames / (busy_a + busy_b)
    if split_fps >= 0.9 * parallel_fps:
        return None
    return (f"--split-gpu made {split_fps:.1f} fps; two whole copies of the model (--multi-gpu without --split-gpu) "
            f"would make about {parallel_fps:.1f} fps (from each half's busy time). Split a model only when it does "
            "not fit on one GPU.")
