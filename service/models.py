"""Model manager: one module per (model, scale, device, precision), kept between jobs.

    unloaded --acquire--> gpu (in use by n jobs) --last job done--> cpu --acquire--> gpu
                                                        \\--idle > timeout--> unloaded (released)

- A model is built on first use (weights from disk straight onto the device).
- When its last job on a GPU finishes, it moves to host memory: the GPU memory is free for
  other jobs, and the next job gets it back on the GPU in the time of one host->device copy.
- A monitor thread releases a model nobody used for `idle_timeout` seconds (default 60).
- `offload()` / `release()` force either at once (models in use are left alone and said so).
- Load, offload and restore times are measured and reported per model.

On the CPU device there is no offload: a model stays built until it is released.

Jobs share a module: inference runs under `torch.inference_mode` with read-only weights, so
two jobs on one GPU use one copy of the weights. The manager implements the pipeline's
`ModelSource` (`pipeline.run(models=...)`).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["ModelManager", "Entry"]

log = logging.getLogger("models")


def _move(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module = module.to(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the copy is done when the time is taken
    return module


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda" and torch.cuda.is_available():
        with torch.cuda.device(device):
            torch.cuda.empty_cache()


@dataclass
class Entry:
    key: str  # the model as asked for (name or file)
    scale: int
    device: torch.device
    dtype: torch.dtype
    module: torch.nn.Module | None = None
    location: str = "unloaded"  # "gpu" (on its device), "cpu" (offloaded), "unloaded"
    users: int = 0
    last_used: float = 0.0
    num_bytes: int = 0
    load_seconds: float | None = None
    offload_seconds: float | None = None
    restore_seconds: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"


class ModelManager:
    def __init__(self, *, idle_timeout: float = 60.0, clock: Callable[[], float] = time.monotonic,
                 move: Callable[[torch.nn.Module, torch.device], torch.nn.Module] = _move,
                 free: Callable[[torch.device], None] = _free_device_memory) -> None:
        self.idle_timeout = idle_timeout
        self.clock = clock
        self._move = move
        self._free = free
        self._lock = threading.Lock()
        self._entries: dict[tuple, Entry] = {}
        self._monitor: threading.Thread | None = None
        self._stop = threading.Event()

    # -- the pipeline's ModelSource ---------------------------------------------------------
    def acquire(self, model, key: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        device = torch.device(device)
        while True:
            entry = self._entry(key, model.scale, device, dtype)
            with entry.lock:
                with self._lock:
                    current = self._entries.get(self._key_of(entry)) is entry
                if current:  # else released between the look-up and the lock: look up again
                    return self._take(entry, model, key, device, dtype)

    def _take(self, entry: Entry, model, key: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
        if entry.location == "unloaded":
            started = time.perf_counter()
            entry.module = model.build(device, dtype)
            entry.load_seconds = time.perf_counter() - started
            entry.num_bytes = sum(p.numel() * p.element_size() for p in entry.module.parameters())
            log.info("loaded %s x%d on %s in %.2f s", key, model.scale, device, entry.load_seconds)
        elif entry.location == "cpu":
            started = time.perf_counter()
            entry.module = self._move(entry.module, device)
            entry.restore_seconds = time.perf_counter() - started
            log.info("restored %s x%d to %s in %.2f s", key, model.scale, device, entry.restore_seconds)
        entry.location = "gpu"
        entry.users += 1
        entry.last_used = self.clock()
        return entry.module

    def release(self, model, key: str, device: torch.device, dtype: torch.dtype) -> None:
        entry = self._entry(key, model.scale, torch.device(device), dtype)
        with entry.lock:
            entry.users = max(0, entry.users - 1)
            entry.last_used = self.clock()
            if entry.users == 0 and entry.on_gpu:
                self._offload(entry)

    # -- forced and timed transitions ---------------------------------------------------------
    def offload(self, device: str | None = None) -> list[str]:
        """Move every idle model (of `device`, or all) to host memory now. Returns what moved."""
        moved = []
        for entry in self._select(device):
            with entry.lock:
                if entry.users == 0 and entry.location == "gpu" and entry.on_gpu:
                    self._offload(entry)
                    moved.append(self._name(entry))
        return moved

    def release_idle(self, device: str | None = None, *, older_than: float | None = None) -> list[str]:
        """Drop idle models (of `device`, or all; with `older_than`, only those idle that long)."""
        released = []
        now = self.clock()
        for entry in self._select(device):
            with entry.lock:
                if entry.users or entry.location == "unloaded":
                    continue
                if older_than is not None and now - entry.last_used < older_than:
                    continue
                where = entry.device
                entry.module, entry.location = None, "unloaded"
                released.append(self._name(entry))
                with self._lock:
                    self._entries.pop(self._key_of(entry), None)
            self._free(where)
            log.info("released %s", self._name(entry))
        return released

    def set_idle_timeout(self, seconds: float) -> None:
        if not seconds > 0:
            raise ValueError("the idle timeout must be a positive number of seconds")
        self.idle_timeout = float(seconds)

    def check_idle(self) -> list[str]:
        """One pass of the monitor: release what has been idle longer than the timeout."""
        return self.release_idle(older_than=self.idle_timeout)

    def start_monitor(self, every_seconds: float = 1.0) -> None:
        def loop() -> None:
            while not self._stop.wait(every_seconds):
                try:
                    self.check_idle()
                except Exception as exc:  # noqa: BLE001 - the monitor must outlive one bad pass
                    log.warning("model monitor: %s", exc)

        self._monitor = threading.Thread(target=loop, name="model-monitor", daemon=True)
        self._monitor.start()

    def close(self) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout=5)

    # -- status ---------------------------------------------------------------------------------
    def status(self) -> list[dict]:
        now = self.clock()
        with self._lock:
            entries = list(self._entries.values())
        return [{
            "model": e.key, "scale": e.scale, "device": str(e.device), "precision": str(e.dtype).replace("torch.", ""),
            "location": e.location if e.on_gpu or e.location == "unloaded" else "cpu",
            "in_use_by": e.users, "idle_seconds": round(now - e.last_used, 1) if e.users == 0 else 0.0,
            "megabytes": round(e.num_bytes / 2**20, 1),
            "load_seconds": _round(e.load_seconds), "offload_seconds": _round(e.offload_seconds),
            "restore_seconds": _round(e.restore_seconds),
        } for e in entries]

    # -- internals ----------------------------------------------------------------------------
    def _offload(self, entry: Entry) -> None:
        started = time.perf_counter()
        entry.module = self._move(entry.module, torch.device("cpu"))
        entry.location = "cpu"
        self._free(entry.device)
        entry.offload_seconds = time.perf_counter() - started
        log.info("offloaded %s to host memory in %.2f s", self._name(entry), entry.offload_seconds)

    def _entry(self, key: str, scale: int, device: torch.device, dtype: torch.dtype) -> Entry:
        with self._lock:
            k = (key, scale, str(device), dtype)
            if k not in self._entries:
                self._entries[k] = Entry(key, scale, device, dtype, last_used=self.clock())
            return self._entries[k]

    def _select(self, device: str | None) -> list[Entry]:
        with self._lock:
            return [e for e in self._entries.values() if device is None or str(e.device) == device]

    @staticmethod
    def _key_of(entry: Entry) -> tuple:
        return (entry.key, entry.scale, str(entry.device), entry.dtype)

    @staticmethod
    def _name(entry: Entry) -> str:
        return f"{entry.key} x{entry.scale} on {entry.device}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
