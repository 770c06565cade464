"""The service's devices: what each GPU is doing (NVML), its health, and the weighted choice.

Each job (and each retry of one) goes to the healthy device with the lowest score

    queue_length x 10 + memory_used_% x 0.5 + utilisation_% x 0.3

(`queue_length`: jobs running on or assigned to the device). A device whose memory is above
`MEMORY_FULL_PERCENT` takes no new job: the job waits, or goes to another device, rather than
running out of memory. A device that faults is marked unhealthy, its jobs are requeued on
the others, and it is tried again after `RETRY_SECONDS`. Without GPUs the service runs its
jobs on one device, the CPU (its figures are zeros: only the queue counts).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Device", "Devices", "score", "RETRY_SECONDS", "MEMORY_FULL_PERCENT"]

RETRY_SECONDS = 30.0
MEMORY_FULL_PERCENT = 92.0


def score(queue_length: int, memory_used_percent: float, utilization_percent: float) -> float:
    """The weighted figure of a device: lower is better."""
    return queue_length * 10 + memory_used_percent * 0.5 + utilization_percent * 0.3


@dataclass
class Device:
    name: str  # "cuda:0" or "cpu"
    label: str  # "NVIDIA H100 80GB HBM3"
    index: int | None  # GPU index, None for the CPU
    memory_used: int = 0
    memory_total: int = 0
    utilization: int = 0
    queue: set[str] = field(default_factory=set)  # job ids running on or assigned to it
    unhealthy_until: float = 0.0
    last_fault: str | None = None

    @property
    def memory_used_percent(self) -> float:
        return 100.0 * self.memory_used / self.memory_total if self.memory_total else 0.0

    def healthy(self, now: float) -> bool:
        return now >= self.unhealthy_until

    def score(self) -> float:
        return score(len(self.queue), self.memory_used_percent, self.utilization)


class Devices:
    """The devices jobs may use (`--gpus`), their figures and health. Thread-safe."""

    def __init__(self, gpus: list[int] | None, *, clock: Callable[[], float] = time.monotonic,
                 sample: Callable[[int], tuple[tuple[int, int] | None, int | None]] | None = None,
                 names: dict[int, str] | None = None) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._sample = sample
        if gpus:
            names = names or {}
            self.devices = [Device(f"cuda:{i}", names.get(i, f"GPU {i}"), i) for i in gpus]
        else:
            self.devices = [Device("cpu", "CPU", None)]
        self._last_sample = 0.0

    @classmethod
    def detect(cls, gpu_list: str | None) -> "Devices":
        """The visible GPUs (or those `--gpus` names), sampled through NVML; the CPU without GPUs."""
        import torch

        from hw.gpus import Nvml, parse_gpu_list

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return cls(None)
        gpus = parse_gpu_list(gpu_list, count) if gpu_list else list(range(count))
        nvml = Nvml()
        names = {i: torch.cuda.get_device_name(i) for i in gpus}
        return cls(gpus, sample=lambda i: (nvml.memory(i), nvml.utilization(i)), names=names)

    def refresh(self, *, every_seconds: float = 0.5) -> None:
        now = self.clock()
        if self._sample is None or now - self._last_sample < every_seconds:
            return
        self._last_sample = now
        for d in self.devices:
            memory, util = self._sample(d.index)
            with self._lock:
                if memory is not None:
                    d.memory_used, d.memory_total = memory
                d.utilization = util or 0

    def get(self, name: str) -> Device:
        for d in self.devices:
            if d.name == name:
                return d
        raise KeyError(name)

    def choose(self, job_id: str, *, spread: bool = False, exclude: frozenset[str] = frozenset()) -> list[Device]:
        """The device for a job (lowest score among healthy devices with memory to spare), plus
        with `spread` every other healthy device with an empty queue; [] when none can take it
        now (the job waits). The chosen devices count the job in their queue."""
        self.refresh()
        now = self.clock()
        with self._lock:
            ok = [d for d in self.devices if d.healthy(now) and d.name not in exclude
                  and d.memory_used_percent < MEMORY_FULL_PERCENT]
            if not ok:
                return []
            best = min(ok, key=lambda d: (d.score(), self.devices.index(d)))
            chosen = [best]
            if spread:
                chosen += [d for d in ok if d is not best and not d.queue]
            for d in chosen:
                d.queue.add(job_id)
            return chosen

    def leave(self, job_id: str) -> None:
        with self._lock:
            for d in self.devices:
                d.queue.discard(job_id)

    def fault(self, name: str, why: str) -> None:
        with self._lock:
            d = self.get(name)
            d.unhealthy_until = self.clock() + RETRY_SECONDS
            d.last_fault = why

    def status(self) -> list[dict]:
        self.refresh()
        now = self.clock()
        with self._lock:
            return [{
                "device": d.name, "name": d.label,
                "memory_used": d.memory_used, "memory_total": d.memory_total,
                "memory_used_percent": round(d.memory_used_percent, 1), "utilization_percent": d.utilization,
                "queue": sorted(d.queue), "queue_length": len(d.queue), "score": round(d.score(), 1),
                "health": "ok" if d.healthy(now) else "unhealthy",
                "retry_in_seconds": None if d.healthy(now) else round(d.unhealthy_until - now, 1),
                "last_fault": d.last_fault,
                **_own_memory(d.index),
            } for d in self.devices]


def _own_memory(index: int | None) -> dict:
    """What this process holds on the GPU through torch (models, buffers, its cache)."""
    import sys

    torch = sys.modules.get("torch")
    try:
        if index is not None and torch is not None and torch.cuda.is_initialized() and index < torch.cuda.device_count():
            return {"service_allocated": torch.cuda.memory_allocated(index),
                    "service_reserved": torch.cuda.memory_reserved(index)}
    except RuntimeError:  # a device that faulted: its figures are unknown
        pass
    return {"service_allocated": None, "service_reserved": None}
