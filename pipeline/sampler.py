"""Device sampler: each GPU worker's memory and utilisation from NVML, about once a second.

Called by the runner from its wait loop (no thread of its own); the figures go to the
worker's `WorkerStats` (the live panel and `--stats-json` read them there).
"""

from __future__ import annotations

import time

from pipeline.stats import RunStats

__all__ = ["DeviceSampler"]


class DeviceSampler:
    def __init__(self, stats: RunStats, *, every_seconds: float = 1.0) -> None:
        self.stats = stats
        self.every_seconds = every_seconds
        self._last = 0.0
        self._nvml = None
        if any(w.device.startswith("cuda") for w in stats.workers.values()):
            from hw.gpus import Nvml

            self._nvml = Nvml()

    def maybe_sample(self) -> None:
        now = time.perf_counter()
        if self._nvml is None or now - self._last < self.every_seconds:
            return
        self._last = now
        for w in list(self.stats.workers.values()):
            if w.device.startswith("cuda"):
                index = int(w.device.split(":")[1]) if ":" in w.device else 0
                w.record_device_sample(self._nvml.memory(index), self._nvml.utilization(index))
