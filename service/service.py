"""One `Service`: the operations the HTTP API, the MCP tools and the page all call.

Each operation is implemented here once; `service.api` and `service.mcp_tools` only translate
requests and answers.
"""

from __future__ import annotations

import logging
import math
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from core.errors import FramepipeError, InvalidOption, JobEnded, NoJobOutput
from core.files import file_identity, work_folder
from service.devices import Devices
from service.jobs import JobRequest, Scheduler
from service.models import ModelManager
from service.paths import Roots
from service.store import FINISHED_STATES, STATES, JobStore

__all__ = ["Service", "JobOutput", "DEFAULT_PAGE", "MAX_PAGE"]

log = logging.getLogger("service")

DEFAULT_PAGE = 100  # jobs a page of GET /jobs holds unless asked
MAX_PAGE = 500
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer: a larger OFFSET is an OverflowError, not an empty page


@dataclass(frozen=True)
class JobOutput:
    """A job's output file opened for a download (`Service.open_output`): `fd` is the caller's to
    close. `whole`: the finished output; else the playable partial output a stop left, offered as
    `filename` (`<stem>.partial<suffix>`)."""

    fd: int
    path: Path
    stat: os.stat_result
    whole: bool
    filename: str


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

    def jobs(self, *, limit: int = DEFAULT_PAGE, offset: int = 0, states: list[str] | None = None) -> dict:
        """A page of the jobs, newest first: `limit` from `offset`, in `states` (None: any), with
        the count over every page (`total`) and where the next page starts (None: this is the last)."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidOption(f"Invalid limit ({limit}): give 1 to {MAX_PAGE} jobs a page.")
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidOption(f"Invalid offset ({offset}): give 0 to {MAX_OFFSET}.")
        unknown = sorted(set(states or ()) - set(STATES))
        if unknown:
            raise InvalidOption(f"Invalid state {unknown[0]!r}: allowed are {', '.join(STATES)}.")
        total = self.store.count(states=states)
        jobs = [self._describe(j) for j in self.store.list(limit=limit, offset=offset, states=states)]
        more = offset + len(jobs) < total
        return {"jobs": jobs, "total": total, "limit": limit, "offset": offset,
                "next_offset": offset + len(jobs) if more and jobs else None}

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

    def retry(self, job_id: str) -> dict | None:
        """A failed or cancelled job queued again (`Scheduler.retry`); None: no such job."""
        job = self.scheduler.retry(job_id)
        return self._describe(job) if job is not None else None

    def forget(self, job_id: str) -> dict | None:
        """An ended job left out of the lists, its files untouched (`Scheduler.forget`); None: no such job."""
        job = self.scheduler.forget(job_id)
        if job is None:
            return None
        kept = [p for p in self._files_of(job) if os.path.lexists(p)]
        return {"forgotten": job_id, "files_kept": kept}

    def open_output(self, job_id: str) -> "JobOutput | None":
        """A job's output, opened for reading (see `JobOutput`); None: no such job. JobEnded (409)
        while the job is queued or running, or when its output is a folder of pictures; NoJobOutput
        (404) when it has none: it wrote none, or the file is gone or was replaced since."""
        job = self.store.get(job_id)
        if job is None:
            return None
        path, identity = self._output_of(job)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:  # gone, or a link put at its name since the check
            raise NoJobOutput(f"job {job_id}: its output {self.roots.relative(path)!r} cannot be read "
                              f"({exc.strerror or exc}).") from None
        try:
            st = os.fstat(fd)
            # What was opened is the file checked: a regular file at that very path (no folder of the
            # path swapped for a link since), the same file (size, time, inode) as when checked
            opened = _opened_path(fd)
            if (not stat.S_ISREG(st.st_mode) or (opened is not None and opened != path)
                    or {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino} != identity):
                raise NoJobOutput(f"job {job_id}: its output {self.roots.relative(path)!r} changed while it was opened: "
                                  "try again.")
        except BaseException:
            os.close(fd)
            raise
        return JobOutput(fd=fd, path=path, stat=st, whole=job.state == "done",
                         filename=path.name if job.state == "done" else _partial_name(Path(job.output), path))

    def _output_of(self, job) -> tuple[Path, dict]:
        """The file a job's result is, checked (see `open_output`), and its identity."""
        if job.state not in FINISHED_STATES:
            raise JobEnded(f"job {job.id} is {job.state}: its output can be downloaded once it has ended.")
        if not job.output:
            raise NoJobOutput(f"job {job.id} has no output file (a picture sequence's pictures, named by the run).")
        output = Path(job.output)
        if job.state == "done":
            if output.is_dir():
                raise JobEnded(f"job {job.id} wrote pictures into the folder {self.roots.relative(output)!r}: there "
                               "is no one file to download.")
            path, identity = output, file_identity(output)
            if identity is None:
                raise NoJobOutput(f"job {job.id}: its output {self.roots.relative(output)!r} is gone.")
            if job.output_identity is not None and identity != job.output_identity:
                raise NoJobOutput(f"job {job.id}: its output {self.roots.relative(output)!r} was changed or replaced "
                                  "since the job ended.")
        else:
            from pipeline.segments import PartsFolder

            path = PartsFolder.partial_output_of(output)  # the playable partial output its stop finalized
            identity = file_identity(path) if path is not None else None
            if identity is None:
                why = f" ({job.error})" if job.error else ""
                raise NoJobOutput(f"job {job.id} ({job.state}) left no playable output{why}.")
        real = self.roots.confined(path, what="output")  # PathRefused (403) outside the roots
        if real != path or path.is_symlink():
            raise NoJobOutput(f"job {job.id}: its output {str(path)!r} is now a link: not served.")
        return path, identity

    def _files_of(self, job) -> list[str]:
        if not job.output:
            return []
        output = Path(job.output)
        return [str(p) for p in (output, work_folder(output))]

    def _describe(self, job) -> dict:
        d = job.to_dict()
        d["queue_position"] = self.scheduler.queue_position(job.id)
        d["parts"] = str(work_folder(Path(job.output))) if job.output else None
        try:
            self._output_of(job)
            d["output_url"] = f"/jobs/{job.id}/output"
        except (FramepipeError, OSError):
            d["output_url"] = None
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


def _opened_path(fd: int) -> Path | None:
    """The path an open file is at, as the kernel says (Linux's /proc); None where it cannot tell."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        return None


def _partial_name(output: Path, path: Path) -> str:
    """The name a partial output is downloaded as: its own where it is `<stem>.partial<suffix>`,
    else (it is at the output's name) that name with `.partial` in it."""
    return path.name if path != output else f"{output.stem}.partial{output.suffix}"
