"""Fault injection from outside the product (tests and benchmarks only).

`run(config, wrap=inject(...))` wraps stages by name as the runner builds them: production
constructors carry no test hooks. What can be injected:
- a reader, writer or worker raising `InjectedFault` (a bug) at frame k;
- a worker's model call (`Worker.infer`, or `Worker.launch` where it overlaps its chunks: one
  call per chunk either way) running slowly, running out of
  memory above a batch size or once at its n-th call, or failing as a device at its n-th call
  (once, or for good), with a short back-off so the tests stay quick;
- the model itself (the module a worker builds) running out of memory on inputs of more
  pixels than a limit (whole frames or tiles: issue 13's switch to tiles).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hw.memory import DeviceFault

__all__ = ["InjectedFault", "WorkerFaults", "inject"]


class InjectedFault(RuntimeError):
    """Raised on purpose by fault injection."""


@dataclass
class WorkerFaults:
    fail_at_frame: int | None = None  # InjectedFault (a bug) when this frame is in a batch
    oom_when_batch_over: int | None = None  # OOM for any model call on more frames than this
    oom_at_batch: int | None = None  # OOM once, on the n-th model call (1-based), if it has 2+ frames
    device_fault_at_batch: int | None = None  # DeviceFault on the n-th model call
    device_fault_permanent: bool = False  # ... and on every call after it
    seconds_per_batch: float = 0.0  # sleep before each model call (a slow device)
    oom_when_model_pixels_over: int | None = None  # the module: OOM on inputs of more N*H*W than this
    host_oom: bool = False  # the module's OOM as torch's CPU allocator raises it (a RuntimeError), not CUDA's


class _FailingReader:
    """The reader, raising at frame `at` instead of yielding it."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner, self.at = inner, at

    def process(self, item: Any) -> Any:
        return self.inner.process(item)

    def finish(self):
        for frame in self.inner.finish():
            if frame.index == self.at:
                raise InjectedFault(f"injected reader failure at frame {self.at}")
            yield frame

    def close(self, *, complete: bool) -> None:
        self.inner.close(complete=complete)


class _FailingWriter:
    """The writer, raising when frame `at` reaches it."""

    def __init__(self, inner: Any, at: int) -> None:
        self.inner, self.at = inner, at

    def process(self, item: Any) -> Any:
        if item.index == self.at:
            raise InjectedFault(f"injected writer failure at frame {self.at}")
        return self.inner.process(item)

    def finish(self) -> Any:
        return self.inner.finish()

    def close(self, *, complete: bool) -> None:
        self.inner.close(complete=complete)


class _OomAbove(nn.Module):
    """A model that runs out of memory on inputs of more than `max_pixels` (N*H*W)."""

    def __init__(self, inner: nn.Module, max_pixels: int, host: bool) -> None:
        super().__init__()
        self.inner, self.max_pixels, self.host = inner, max_pixels, host

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if n * height * width > self.max_pixels:
            if self.host:  # torch 2.x's own words, word for word
                raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                                   f"memory: you tried to allocate {n * height * width * 4096} bytes. Error code 12 "
                                   "(Cannot allocate memory)")
            raise torch.OutOfMemoryError(f"injected OOM: {n}x{width}x{height} > {self.max_pixels} pixels")
        return self.inner(x)


def _faulty_worker(worker: Any, faults: WorkerFaults) -> Any:
    """The same worker, its model calls (`infer`, `launch`) replaced by ones that misbehave as
    told, and its model built inside `_OomAbove` where asked."""
    if faults.oom_when_model_pixels_over is not None:
        build, limit = worker.build_model, faults.oom_when_model_pixels_over
        worker.build_model = lambda device, dtype: _OomAbove(build(device, dtype), limit, faults.host_oom)
    calls = [0]

    def misbehave(frames):
        calls[0] += 1
        n = calls[0]
        if faults.seconds_per_batch:
            time.sleep(faults.seconds_per_batch)
        if faults.fail_at_frame is not None and any(f.index == faults.fail_at_frame for f in frames):
            raise InjectedFault(f"injected worker failure at frame {faults.fail_at_frame}")
        if faults.oom_when_batch_over is not None and len(frames) > faults.oom_when_batch_over:
            raise torch.OutOfMemoryError(f"injected OOM: batch {len(frames)} > {faults.oom_when_batch_over}")
        if faults.oom_at_batch is not None and n == faults.oom_at_batch and len(frames) > 1:
            raise torch.OutOfMemoryError(f"injected OOM at model call {n}")
        if faults.device_fault_at_batch is not None and (
            n == faults.device_fault_at_batch or (faults.device_fault_permanent and n > faults.device_fault_at_batch)
        ):
            raise DeviceFault(f"injected device fault on {worker.name} at model call {n}")

    def faulty(call):
        def call_with_faults(frames, *args, **kwargs):
            misbehave(frames)
            return call(frames, *args, **kwargs)

        return call_with_faults

    worker.infer = faulty(worker.infer)
    if hasattr(worker, "launch"):
        worker.launch = faulty(worker.launch)
    return worker


def inject(*, reader_fails_at: int | None = None, writer_fails_at: int | None = None,
           workers: dict[str, WorkerFaults] | None = None, backoff_seconds: float | None = 0.05):
    """A `wrap` for `pipeline.run`: faults by stage name. Workers back off `backoff_seconds`
    after a device fault (production: 2 s) so that fault tests stay quick."""
    workers = workers or {}

    def wrap(name: str, stage: Any) -> Any:
        if name == "reader" and reader_fails_at is not None:
            return _FailingReader(stage, reader_fails_at)
        if name == "writer" and writer_fails_at is not None:
            return _FailingWriter(stage, writer_fails_at)
        if name.startswith("worker-"):
            if backoff_seconds is not None:
                stage.backoff_seconds = backoff_seconds
            if name in workers:
                return _faulty_worker(stage, workers[name])
        return stage

    return wrap


def file_writing_torchscript(path, victim) -> None:
    """Save at `path` a TorchScript model whose forward overwrites the first 8 bytes of `victim`
    with "A"s (`torch.from_file(shared=True)`): what an untrusted model file can do when run."""
    import importlib.util
    from pathlib import Path

    source = Path(path).with_suffix(".py")
    source.write_text(f"""
import torch
class M(torch.nn.Module):
    def forward(self, x):
        t = torch.from_file({str(victim)!r}, shared=True, size=8, dtype=torch.uint8)
        t.fill_(65)
        return x + t[0].float() * 0.0
""")
    spec = importlib.util.spec_from_file_location(f"writes_{source.stem}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.jit.script(module.M()).save(str(path))
