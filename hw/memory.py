"""Device memory helpers: OOM detection, device-fault detection, batch-size probing.

`choose_batch_size(measure, ...)` is the probe's logic, free of CUDA so CI tests it:
it grows the batch 1, 2, 4, ... while it fits (no OOM, peak memory under the
headroom) and throughput still improves, then picks the smallest batch within
`plateau` (5%) of the best measured frames/s: past the plateau bigger batches only
cost memory and latency. `cuda_measure(...)` builds the `measure` for one device.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process's threads are kept apart, not processes
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "ProbeResult",
    "choose_batch_size",
    "cuda_measure",
    "is_oom",
    "is_device_fault",
    "DeviceFault",
    "free_cached_memory",
    "ProbeMemo",
    "entry_number",
]

log = logging.getLogger(__name__)


class DeviceFault(RuntimeError):
    """A device stopped working (CUDA error, lost device). Raised by fault injection too."""


# torch's CPU allocator, when the host refuses an allocation: "[enforce fail at alloc_cpu.cpp:127]
# ... DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes. Error code 12".
_CPU_OOM_MARKERS = ("defaultcpuallocator: can't allocate memory", "cannot allocate memory")


def is_oom(exc: BaseException) -> bool:
    """Out of memory: on a GPU (torch's OutOfMemoryError, or CUDA's message in a RuntimeError) or
    on the CPU (torch's CPU allocator refused, or Python's MemoryError from a numpy buffer), so a
    CPU worker halves its batch and then takes tiles as a GPU worker does."""
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    if not isinstance(exc, RuntimeError):
        return False
    text = str(exc).lower()
    return ("out of memory" in text and "cuda" in text) or any(m in text for m in _CPU_OOM_MARKERS)


_FAULT_MARKERS = ("cuda error", "device-side assert", "illegal memory access", "ecc error", "device lost", "launch failure", "cudaerror", "nvml")


def is_device_fault(exc: BaseException) -> bool:
    """True for errors that mean "this device is broken", not "the program is wrong"."""
    if isinstance(exc, DeviceFault):
        return True
    accel = getattr(torch, "AcceleratorError", None)
    if accel is not None and isinstance(exc, accel):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _FAULT_MARKERS)


def free_cached_memory(device: torch.device, exc: BaseException | None = None) -> None:
    """Give the allocator's cached blocks back. With `exc` (an out-of-memory error being handled),
    its traceback is dropped first: the frames it holds keep the failed attempt's tensors (at 8K,
    gigabytes of activations and output) alive, and nothing could be freed while they are."""
    while exc is not None:
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
    gc.collect()  # the CPU too: the failed attempt's tensors go back to the host's allocator
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


@dataclass
class ProbeResult:
    batch_size: int
    seconds: float
    fps_by_batch: dict[int, float] = field(default_factory=dict)
    largest_fitting: int = 0
    note: str = ""


def choose_batch_size(
    measure: Callable[[int], float | None],
    *,
    max_batch_size: int,
    plateau: float = 0.05,
    patience: int = 2,
    time_budget_seconds: float = 30.0,
    clock: Callable[[], float] = time.perf_counter,
) -> ProbeResult:
    """Probe batch sizes 1, 2, 4, ... up to `max_batch_size`.

    `measure(b)` runs a batch of `b` and returns seconds per batch, or None when `b`
    does not fit (OOM or over the memory headroom). The probe stops at the first size
    that does not fit, after `patience` doublings without a gain above `plateau`, or
    when it has used `time_budget_seconds` after the first size: the first measurement pays
    the run's one-time costs (cuDNN's algorithm search, lazy initialisation; 4 s for RIFE at
    1080p on an H200), which the video's first batch would pay anyway, and counting them left
    the probe at batch 1 (issue 15).
    """
    t0 = clock()
    budget_from: float | None = None
    fps: dict[int, float] = {}
    best = 0.0
    stale = 0
    b = gained_at = 1
    note = ""
    while b <= max_batch_size:
        seconds = measure(b)
        if seconds is None:
            note = f"batch {b} does not fit"
            break
        fps[b] = b / max(seconds, 1e-9)
        if fps[b] > best * (1.0 + plateau):
            stale = 0
            gained_at = b
        else:
            stale += 1
        best = max(best, fps[b])
        if stale >= patience:
            note = f"throughput flat past batch {gained_at}"
            break
        if budget_from is None:
            budget_from = clock()
        elif clock() - budget_from > time_budget_seconds:
            note = "probe time budget used"
            break
        if b == max_batch_size:
            note = f"reached --max-batch-size {max_batch_size}"
            break
        b = min(b * 2, max_batch_size)
    if not fps:
        return ProbeResult(batch_size=1, seconds=clock() - t0, note=note or "nothing fitted; using 1")
    best = max(fps.values())
    chosen = min(size for size, f in fps.items() if f >= best * (1.0 - plateau))
    return ProbeResult(
        batch_size=chosen, seconds=clock() - t0, fps_by_batch=fps, largest_fitting=max(fps), note=note
    )


def cuda_measure(
    run: Callable[[int], None], device: torch.device, *, headroom_fraction: float = 0.15, repeats: int = 2
) -> Callable[[int], float | None]:
    """Wrap `run(b)` (one batch of b frames, end to end on `device`) as a probe measurement."""

    total = torch.cuda.get_device_properties(device).total_memory

    def measure(b: int) -> float | None:
        try:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            run(b)  # warm-up: allocator growth, cuDNN algorithm choice
            torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                run(b)
            torch.cuda.synchronize(device)
            seconds = (time.perf_counter() - t0) / repeats
        except BaseException as exc:
            if is_oom(exc):
                free_cached_memory(device, exc)
                return None
            raise
        peak = torch.cuda.max_memory_reserved(device)
        if peak > total * (1.0 - headroom_fraction):
            log.debug("batch %d peaks at %.1f GiB of %.1f: over the headroom", b, peak / 2**30, total / 2**30)
            free_cached_memory(device)
            return None
        return seconds

    return measure


def entry_number(entry: dict | None, field: str) -> float | None:
    """`field` of a `ProbeMemo` entry as a number; None where there is no entry, no such field, or
    a value of another format (an older file's)."""
    try:
        return float(entry[field]) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


class ProbeMemo:
    """Batch sizes probed before, in a JSON file of framepipe's cache (the same kind of file holds
    the compile memo, encoder speeds and model rates: pipeline.encoder_choice): a run whose GPU, model,
    frame size, precision and output match an earlier probe starts at its batch size at once
    (the probe takes 1-4 s of the time to the first frame). Written atomically; a file that
    cannot be read or written is only a slower start (logged), never an error.

    A change is read and written under one hold of a thread lock and of an exclusive `flock` on
    `.<name>.lock` beside the file: neither another thread of this process (two GPUs' workers, the
    service's jobs) nor another framepipe process (two runs, a compile helper) writes between, so
    neither loses the other's entry."""

    _lock = threading.Lock()  # workers of one process share the file

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._read().get(key)

    def put(self, key: str, entry: dict) -> None:
        self.update(key, lambda _old: entry)

    def update(self, key: str, change: Callable[[dict | None], dict | None]) -> None:
        """`key`'s entry replaced by `change(entry)` (None: left as it is), read and written
        under one hold of the locks: no other thread or framepipe process writes between."""
        with self._lock, self._across_processes():
            table = self._read()
            entry = change(table.get(key))
            if entry is None:
                return
            table[key] = entry
            try:
                temp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
                temp.write_text(json.dumps(table, indent=1, sort_keys=True))
                os.replace(temp, self.path)
            except OSError as exc:
                log.debug("not remembered in %s: %s", self.path, exc)

    @contextmanager
    def _across_processes(self):
        """An exclusive flock on `.<name>.lock` while held (waits for another process's change,
        a few milliseconds); where the lock file cannot be made, the change goes on unlocked
        (at worst one process's entry is lost: a re-measure, never an error)."""
        lock = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if fcntl is not None:
                lock = open(self.path.with_name(f".{self.path.name}.lock"), "a")
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        except OSError as exc:
            log.debug("%s changed without the lock: %s", self.path, exc)
        try:
            yield
        finally:
            if lock is not None:
                lock.close()  # closing the file releases the flock

    def _read(self) -> dict:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        return table if isinstance(table, dict) else {}
