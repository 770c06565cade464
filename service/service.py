"""One `Service`: the operations the HTTP API, the MCP tools and the page all call.

Each operation is implemented here once; `service.api` and `service.mcp_tools` only translate
requests and answers.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from core.errors import JobEnded
from service.devices import Devices
from service.jobs import JobRequest, Scheduler
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
        self._uploads_lock = None  # held from start() to close()
        self.scheduler = Scheduler(store, devices, models, roots, jobs_per_device=jobs_per_device, spread=spread,
                                   run=run, uploads=self.uploads)

    def start(self) -> list[str]:
        """Start the scheduler and the model monitor; returns the ids of jobs taken up again.
        The uploads folder is this server's alone (locked): a second server on the root with a
        database of its own deleted the first one's uploads and results as "no job uses it"."""
        from service.store import lock_exclusively

        self.uploads.mkdir(exist_ok=True)
        own = self.uploads.parent / ".framepipe"  # the service's own folder in the root (service.server)
        own.mkdir(exist_ok=True)
        self._uploads_lock = lock_exclusively(own / "uploads.lock", what=f"the uploads folder {str(self.uploads)!r}",
                                              instead="another first --root")
        self._sweep_uploads()
        self.models.start_monitor()
        return [j.id for j in self.scheduler.start()]

    def _sweep_uploads(self) -> None:
        """Uploads no unfinished job uses (left by a server that died between an upload and its
        job, or before uploads were deleted with their jobs): deleted (`Scheduler.unused_uploads`)."""
        for path in self.scheduler.unused_uploads(self.uploads.iterdir()):
            log.info("deleting the upload %s: no job uses it", path.name)
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.scheduler.close()
        self.models.close()
        self.store.close()
        if self._uploads_lock is not None:
            self._uploads_lock.close()
            self._uploads_lock = None

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
