"""One `Service`: the operations the HTTP API, the MCP tools and the page all call.

Each operation is implemented here once; `service.api` and `service.mcp_tools` only translate
requests and answers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from core.errors import JobEnded
from core.files import partial_names
from service.devices import Devices
from service.jobs import JobRequest, Scheduler, is_upload_name
from service.models import ModelManager
from service.paths import Roots
from service.store import JobStore

__all__ = ["Service"]

log = logging.getLogger("service")


class Service:
    def __init__(self, *, roots: Roots, store: JobStore, devices: Devices, models: ModelManager,
                 token: str | None = None, max_upload_bytes: int = 2 << 30, jobs_per_device: int = 2,
                 spread: bool = True, event_seconds: float = 1.0, run=None) -> None:
        self.roots = roots
        self.store = store
        self.devices = devices
        self.models = models
        self.token = token
        self.max_upload_bytes = max_upload_bytes
        self.event_seconds = event_seconds
        self.uploads = roots.folders[0] / "uploads"
        self.scheduler = Scheduler(store, devices, models, roots, jobs_per_device=jobs_per_device, spread=spread,
                                   run=run, uploads=self.uploads)

    def start(self) -> list[str]:
        """Start the scheduler and the model monitor; returns the ids of jobs taken up again."""
        self.uploads.mkdir(exist_ok=True)
        self._sweep_uploads()
        self.models.start_monitor()
        return [j.id for j in self.scheduler.start()]

    def _sweep_uploads(self) -> None:
        """Uploads no unfinished job uses (left by a server that died between an upload and its
        job, or before uploads were deleted with their jobs): deleted. An upload lives as long as
        a queued or running job uses it; the scheduler deletes it when the last one ends. A job's
        output is never an upload, though it bears the upload's name beside it (an upload's
        default output `<upload>.<model>-x<scale>.mp4`, or its partial output): it stays."""
        used = {j.source for j in self.store.unfinished()}
        outputs = {Path(p) for p in self.store.outputs()}
        partials = [partial_names(out) for out in outputs if out.parent == self.uploads]
        for path in self.uploads.iterdir():
            if path in outputs or any(names.fullmatch(path.name) for names in partials):
                continue
            if is_upload_name(path.name) and path.is_file() and not path.is_symlink() and str(path) not in used:
                log.info("deleting the upload %s: no job uses it", path.name)
                path.unlink(missing_ok=True)

    def close(self) -> None:
        self.scheduler.close()
        self.models.close()
        self.store.close()

    # -- jobs ------------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> list:
        return self.scheduler.submit(request)

    def jobs(self) -> list[dict]:
        return [self._describe(j) for j in self.store.list()]

    def job(self, job_id: str) -> dict | None:
        job = self.store.get(job_id)
        return self._describe(job) if job is not None else None

    def cancel(self, job_id: str) -> dict | None:
        """A queued or running job cancelled; one cancelled already: the same answer again.
        JobEnded for a job that is done or failed."""
        job = self.scheduler.cancel(job_id)
        if job is not None and job.state in ("done", "failed"):
            raise JobEnded(f"job {job_id} has ended ({job.state}): there is nothing to cancel.")
        return self._describe(job) if job is not None else None

    def _describe(self, job) -> dict:
        d = job.to_dict()
        d["queue_position"] = self.scheduler.queue_position(job.id)
        d["parts"] = str(Path(job.output).with_name(Path(job.output).name + ".parts")) if job.output else None
        return d

    # -- devices and models ----------------------------------------------------------------------
    def gpu_status(self) -> dict:
        models = self.models.status()
        devices = self.devices.status()
        for d in devices:
            d["models"] = [m for m in models if m["device"] == d["device"]]
        return {"devices": devices, "idle_timeout_seconds": self.models.idle_timeout,
                "jobs_per_device": self.scheduler.jobs_per_device}

    def offload(self, device: str | None) -> dict:
        self._check_device(device)
        return {"offloaded": self.models.offload(device), "status": self.gpu_status()}

    def release(self, device: str | None) -> dict:
        self._check_device(device)
        return {"released": self.models.release_idle(device), "status": self.gpu_status()}

    def set_idle_timeout(self, seconds: float) -> dict:
        from core.errors import InvalidOption

        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise InvalidOption(f"Invalid idle timeout ({seconds!r}): give a number of seconds above 0, e.g. 120.")
        self.models.set_idle_timeout(seconds)
        return {"idle_timeout_seconds": self.models.idle_timeout}

    def _check_device(self, device: str | None) -> None:
        from core.errors import InvalidOption

        if device is not None and device not in {d.name for d in self.devices.devices}:
            raise InvalidOption(f"no device {device!r}: this server has {', '.join(d.name for d in self.devices.devices)}.")
