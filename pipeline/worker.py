"""Worker stage: one thread per device runs batches through the model.

Thread name `worker-cpu0`, `worker-gpu1`, ... Each worker owns its model copy (and,
on a GPU, its CUDA stream). It pulls batches from the shared `WorkQueue` (a free
worker takes the next batch, so a slower device takes fewer), converts frames to RGB
on its device, runs the model, converts the result to the writer's format
(yuv420p planes in host memory, or NV12 on the device for NVENC), and puts one
`ResultItem` per frame on the results queue, then one `END` when it stops.

Nothing is lost:
- out of memory: clear the cache, halve the batch, retry the same frames; after a
  run of good batches, grow back toward the probed size.
- a device fault (CUDA error, lost device): the batch goes back to the queue for the
  other workers, this worker backs off and retries, and gives up after
  `max_failures`; the run fails only when no worker is left.
- any other exception is a bug or bad data: posted on the error channel, the run stops.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from hw.color import ColorInfo
from hw.frames import batch_to_rgb, rgb_to_host_yuv420, rgb_to_nv12_frames
from hw.memory import DeviceFault, choose_batch_size, cuda_measure, free_cached_memory, is_device_fault, is_oom
from models.base import check_model_output
from pipeline.messages import END, ErrorChannel, FrameItem, OutputFormat, ResultItem
from pipeline.reader import InjectedFault
from pipeline.scheduling import WorkQueue
from pipeline.stats import RunStats, WorkerStats

__all__ = ["Worker", "WorkerFaults"]


@dataclass
class WorkerFaults:
    """Fault injection for tests (never set from the CLI)."""

    fail_at_frame: int | None = None  # raise InjectedFault (a bug) when this frame is in a batch
    oom_when_batch_over: int | None = None  # raise OOM for any batch larger than this
    oom_at_batch: int | None = None  # raise OOM once, on the n-th model call (1-based)
    device_fault_at_batch: int | None = None  # raise DeviceFault on the n-th model call
    device_fault_permanent: bool = False  # every call from then on fails
    seconds_per_batch: float = 0.0  # sleep to make this worker slow


class Worker:
    """Process batches from `work_queue` on `device`, results to `results`."""

    def __init__(
        self,
        name: str,
        device: torch.device,
        build_model: Callable[[torch.device, torch.dtype], torch.nn.Module],
        work_queue: WorkQueue,
        results: "queue.Queue",
        *,
        stats: RunStats,
        errors: ErrorChannel,
        stop: threading.Event,
        color: ColorInfo,
        dtype: torch.dtype,
        output_format: OutputFormat = "yuv420p",
        batch_size: int = 1,
        max_batch_size: int = 256,
        frame_size: tuple[int, int] | None = None,
        max_failures: int = 3,
        backoff_seconds: float = 2.0,
        fill_seconds: float = 0.05,
        faults: WorkerFaults | None = None,
        model_name: str = "model",
        scale: int = 1,
    ) -> None:
        self.name = name
        self.model_name = model_name
        self.scale = scale
        self.device = device
        self.build_model = build_model
        self.work_queue = work_queue
        self.results = results
        self.stats = stats
        self.errors = errors
        self.stop = stop
        self.color = color
        self.dtype = dtype
        self.output_format = output_format
        self.requested_batch_size = batch_size
        self.max_batch_size = max_batch_size
        self.frame_size = frame_size
        self.max_failures = max_failures
        self.backoff_seconds = backoff_seconds
        self.fill_seconds = fill_seconds
        self.faults = faults or WorkerFaults()
        self.log = logging.getLogger(name)
        self.ws: WorkerStats = stats.add_worker(name, str(device))
        self.module: torch.nn.Module | None = None
        self.target_batch_size = max(1, batch_size)
        self.batch_size = self.target_batch_size
        self._good_batches_since_shrink = 0
        self._grow_after = 16
        self._num_model_calls = 0
        self._stream = None

    # -- set-up ------------------------------------------------------------------
    def setup(self) -> None:
        """Build the model on the device and settle the batch size (probe when 0)."""
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            # Frame sizes are fixed for a run: let cuDNN pick its fastest kernels once.
            torch.backends.cudnn.benchmark = True
            self._stream = torch.cuda.Stream(self.device)
        self.module = self.build_model(self.device, self.dtype)
        if self.requested_batch_size == 0:
            self.target_batch_size = self._probe_batch_size()
        self.batch_size = min(self.target_batch_size, self.max_batch_size)
        self.ws.batch_size = self.batch_size
        self.ws.health = "ok"

    def _probe_batch_size(self) -> int:
        if self.device.type != "cuda" or self.frame_size is None:
            self.ws.probe_note = "CPU: batch 1 (torch already uses every core per frame)"
            return 1
        self.ws.health = "probing"
        height, width = self.frame_size
        sample = torch.rand(1, 3, height, width, device=self.device, dtype=self.dtype)

        def run(b: int) -> None:
            with torch.inference_mode():
                out = self.module(sample.expand(b, -1, -1, -1).contiguous())
                self._to_output(out)

        with torch.cuda.stream(self._stream):
            # Cheap on purpose: one timed batch per size after a warm-up, stop at the first
            # doubling that gains under 5%, and never spend more than ~4 s (measured on
            # H200: RRDBNet's probe took 5-26 s with 2 repeats and patience 2).
            result = choose_batch_size(
                cuda_measure(run, self.device, repeats=1), max_batch_size=self.max_batch_size,
                patience=1, time_budget_seconds=4.0,
            )
        sample = None  # the closure's cell: frees the probe input before emptying the cache
        free_cached_memory(self.device)
        self.ws.probe_seconds = result.seconds
        fps = ", ".join(f"{b}:{f:.1f}" for b, f in sorted(result.fps_by_batch.items()))
        self.ws.probe_note = f"chose {result.batch_size} ({result.note}; fps by batch {fps})"
        self.log.info("batch size %d, probed in %.1f s (%s)", result.batch_size, result.seconds, self.ws.probe_note)
        return result.batch_size

    # -- one batch ---------------------------------------------------------------
    def _inject(self, items: Sequence[FrameItem]) -> None:
        f = self.faults
        self._num_model_calls += 1
        if f.seconds_per_batch:
            time.sleep(f.seconds_per_batch)
        if f.fail_at_frame is not None and any(it.index == f.fail_at_frame for it in items):
            raise InjectedFault(f"injected worker failure at frame {f.fail_at_frame}")
        if f.oom_when_batch_over is not None and len(items) > f.oom_when_batch_over:
            raise torch.OutOfMemoryError(f"injected OOM: batch {len(items)} > {f.oom_when_batch_over}")
        if f.oom_at_batch is not None and self._num_model_calls == f.oom_at_batch and len(items) > 1:
            raise torch.OutOfMemoryError(f"injected OOM at model call {self._num_model_calls}")
        if f.device_fault_at_batch is not None and (
            self._num_model_calls == f.device_fault_at_batch
            or (f.device_fault_permanent and self._num_model_calls > f.device_fault_at_batch)
        ):
            raise DeviceFault(f"injected device fault on {self.name} at model call {self._num_model_calls}")

    def _to_output(self, rgb: torch.Tensor) -> list:
        if self.output_format == "nv12":  # each frame carries the event the NVENC writer waits on (issue 9)
            return [(f,) for f in rgb_to_nv12_frames(rgb, self.color)]
        return rgb_to_host_yuv420(rgb, self.color)

    def process(self, items: Sequence[FrameItem]) -> list[ResultItem]:
        """Frames in, results out (same order). Raises on OOM and faults; no retry here."""
        self._inject(items)
        with torch.inference_mode():
            rgb = batch_to_rgb(items, self.color, device=self.device, dtype=self.dtype)
            out = check_model_output(self.model_name, rgb, self.module(rgb), scale=self.scale)
            planes = self._to_output(out)
        return [
            ResultItem(index=it.index, pts=it.pts, fmt=self.output_format, planes=p, worker=self.name)
            for it, p in zip(items, planes)
        ]

    def process_all(self, items: Sequence[FrameItem]) -> list[ResultItem]:
        """`process` in chunks of the current batch size, halving it on OOM. Never drops a frame."""
        done: list[ResultItem] = []
        chunk_sizes: list[int] = []
        pos = 0
        while pos < len(items):
            chunk = items[pos : pos + self.batch_size]
            try:
                done.extend(self.process(chunk))
            except BaseException as exc:
                if not is_oom(exc):
                    raise
                self.ws.num_oom += 1
                free_cached_memory(self.device)
                if self.batch_size == 1:
                    raise DeviceFault(f"{self.name}: out of memory even at batch 1 ({exc})") from exc
                self.batch_size = max(1, len(chunk) // 2)
                self.ws.batch_size = self.batch_size
                self._good_batches_since_shrink = 0
                self._grow_after = min(self._grow_after * 2, 1024)
                self.log.warning("out of memory at batch %d: retrying the same frames at batch %d", len(chunk), self.batch_size)
                continue
            pos += len(chunk)
            chunk_sizes.append(len(chunk))
            self._maybe_grow()
        for size in chunk_sizes:  # counted only once the whole batch is done (a fault hands it all back)
            self.ws.record_batch(size)
        return done

    def _maybe_grow(self) -> None:
        if self.batch_size >= self.target_batch_size:
            return
        self._good_batches_since_shrink += 1
        if self._good_batches_since_shrink >= self._grow_after:
            self.batch_size = min(self.batch_size * 2, self.target_batch_size)
            self.ws.batch_size = self.batch_size
            self._good_batches_since_shrink = 0
            self.log.info("growing batch back to %d", self.batch_size)

    # -- the thread --------------------------------------------------------------
    def _take_batch(self) -> list[FrameItem] | None:
        items = self.work_queue.take(self.batch_size, stop=self.stop)
        if items is None:
            return None
        deadline = time.perf_counter() + self.fill_seconds
        while len(items) < self.batch_size and not self.work_queue.reader_done and time.perf_counter() < deadline:
            self.work_queue.wait_for_items(max(0.0, deadline - time.perf_counter()))
            items.extend(self.work_queue.take_more(self.batch_size - len(items)))
        return items

    def _put_results(self, results: list[ResultItem]) -> bool:
        """Hand results downstream; after a stop only while there is room (the collector
        drains what is there, so finished frames are not lost, but nobody waits)."""
        for r in results:
            while True:
                try:
                    if self.stop.is_set():
                        self.results.put_nowait(r)
                    else:
                        self.results.put(r, timeout=0.1)
                    break
                except queue.Full:
                    if self.stop.is_set():
                        return False
        return True

    def run(self) -> None:
        try:
            try:
                with self.ws.clock.busy():
                    self.setup()
            except BaseException as exc:
                if not is_device_fault(exc):
                    raise
                self.ws.num_failures += 1
                self.ws.health = "failed"
                self.log.error("%s could not start on %s (%s): left out of the run", self.name, self.device, exc)
                self.stats.warn(f"{self.name} ({self.device}) failed to start and was left out of the run: {exc}")
                return
            ctx = torch.cuda.stream(self._stream) if self._stream is not None else contextlib.nullcontext()
            with ctx:
                self._loop()
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the error channel
            self.ws.health = "failed"
            self.errors.post(self.name, exc)
        finally:
            if self.ws.health not in ("failed",):
                self.ws.health = "done"
            self._put_end()

    def _loop(self) -> None:
        while True:
            with self.ws.clock.waiting():
                items = self._take_batch()
            if items is None:
                return
            try:
                with self.ws.clock.busy():
                    results = self.process_all(items)
            except BaseException as exc:
                if not is_device_fault(exc):
                    self.work_queue.done(items)
                    raise
                self._device_failed(items, exc)
                if self.ws.health == "failed":
                    return
                continue
            delivered = self._put_results(results)
            self.work_queue.done(items)
            if not delivered:
                return

    def _device_failed(self, items: list[FrameItem], exc: BaseException) -> None:
        self.ws.num_failures += 1
        self.ws.num_frames_given_back += len(items)
        self.work_queue.give_back(items)
        if self.ws.num_failures >= self.max_failures:
            self.ws.health = "failed"
            self.log.error("%s failed %d times (%s): marked unhealthy, its frames handed back", self.name, self.ws.num_failures, exc)
            self.stats.warn(f"{self.name} ({self.device}) failed and was taken out of the run: {exc}")
            return
        wait = self.backoff_seconds * (2 ** (self.ws.num_failures - 1))
        self.ws.health = "backoff"
        self.log.warning("%s: device fault (%s); %d frame(s) handed back, retrying in %.1f s", self.name, exc, len(items), wait)
        free_cached_memory_safely(self.device)
        self.stop.wait(wait)
        self.ws.health = "ok"

    def _put_end(self) -> None:
        while True:
            try:
                self.results.put(END, timeout=0.1)
                return
            except queue.Full:
                if self.stop.is_set():
                    # The collector drains on stop; keep trying briefly, then give up.
                    try:
                        self.results.put(END, timeout=1.0)
                    except queue.Full:
                        pass
                    return


def free_cached_memory_safely(device: torch.device) -> None:
    try:
        free_cached_memory(device)
    except Exception:  # a broken device may refuse even this
        pass
