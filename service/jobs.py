"""Jobs: what a client may ask for, and the scheduler that runs them over the devices.

A job is one `pipeline.run` (the same engine as the command line) in a thread of its own,
with the device the weighted choice gave it (`service.devices`), modules lent by the model
manager (`service.models`), and a stop event for cancelling. Its output is always segmented
with a manifest (`resume` on): a cancelled job leaves a finalized partial output and its
finished segments, and a job that was running when the server died is taken up again at
the next start and finishes from its segments, frame-exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from core.choices import COMPILE_CHOICES, DEFAULT_MODEL, MODEL_FILE_SUFFIXES, PICTURE_FORMATS, Codec, Precision
from core.errors import FramepipeError, HardwareUnavailable, InvalidOption, OutputExists, RunInterrupted, one_line
from service.devices import Devices
from service.models import ModelManager
from service.paths import Roots
from service.store import FINISHED_STATES, Job, JobStore

__all__ = ["JobSettings", "JobRequest", "Scheduler", "VIDEO_SUFFIXES", "MAX_ATTEMPTS"]

log = logging.getLogger("service")

VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                            ".mpg", ".mpeg", ".3gp", ".ogv"})
MAX_ATTEMPTS = 3  # a job whose devices keep faulting is given up after this many tries


class JobSettings(BaseModel):
    """The command line's settings that make sense for a job (the same names, without `--`)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = DEFAULT_MODEL
    scale: int | None = Field(None, ge=1)
    precision: Precision = "auto"
    codec: Codec = "h264"
    bit_depth: int | None = None
    quality: int | None = Field(None, ge=0)
    preset: str | None = None
    start: str | None = None
    end: str | None = None
    max_frames: int | None = Field(None, ge=1)
    no_audio: bool = False
    tile_size: int = Field(0, ge=0)
    tile_overlap: int | None = Field(None, ge=0)
    compile: Literal[COMPILE_CHOICES] = "auto"  # type: ignore[valid-type]
    batch_size: int = Field(0, ge=0)
    encoders: int = Field(0, ge=0)
    segment_frames: int | None = Field(None, ge=1)
    segment_seconds: float | None = Field(None, gt=0)
    picture_format: Literal[tuple(PICTURE_FORMATS)] | None = None  # type: ignore[valid-type]
    fps: str | None = None
    nvdec: bool = False
    nvenc: bool = False
    overwrite: bool = False
    keep_parts: bool = False


class JobRequest(JobSettings):
    """`POST /jobs`: a source inside the roots (a video, a picture sequence, or a folder of
    videos: one job each) and where the output goes (a file; a folder for a folder of videos;
    left out: beside the source, named after the model and scale)."""

    source: str
    output: str | None = None


class Scheduler:
    """Queues jobs, starts each on the device with the lowest score, keeps the store current."""

    def __init__(self, store: JobStore, devices: Devices, models: ModelManager, roots: Roots, *,
                 jobs_per_device: int = 2, spread: bool = True, run: Callable | None = None,
                 progress_seconds: float = 0.5) -> None:
        self.store = store
        self.devices = devices
        self.models = models
        self.roots = roots
        self.jobs_per_device = jobs_per_device
        self.spread = spread  # a lone job takes every idle GPU (pull-based workers balance them)
        self.progress_seconds = progress_seconds
        if run is None:
            from pipeline import run
        self._run = run
        self._lock = threading.Condition()
        self._queue: list[str] = []
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._excluded: dict[str, set[str]] = {}  # devices a job faulted on
        self._closing = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> list[Job]:
        """Take up the jobs a previous server left queued or running, then start dispatching."""
        taken = self.store.unfinished()
        for job in taken:
            if job.started is not None:  # it had begun (killed mid-run, or stopped with the server)
                self.store.update(job.id, state="queued", resumed=job.resumed + 1)
                log.info("job %s had begun when the server stopped: it resumes from its segments", job.id)
            self._queue.append(job.id)
        self._dispatcher.start()
        return taken

    def close(self, timeout: float = 60.0) -> None:
        """Stop: running jobs are stopped (output finalized, segments kept) and left queued, so
        the next server start finishes them."""
        with self._lock:
            self._closing = True
            stops = list(self._stops.values())
            self._lock.notify_all()
        for stop in stops:
            stop.set()
        deadline = time.monotonic() + timeout
        for thread in list(self._threads.values()):
            thread.join(max(0.1, deadline - time.monotonic()))
        self._dispatcher.join(timeout=5)

    # -- requests ------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> list[Job]:
        """Check a request and queue its job(s). Raises InvalidOption (bad settings),
        PathRefused (outside the roots), OutputExists."""
        source = self.roots.resolve(request.source, what="source", must_exist=True)
        settings = request.model_dump(exclude={"source", "output"})
        self._check_model(settings["model"])
        if source.is_dir() and _videos_in(source):
            out_dir = self.roots.resolve(request.output, what="output", must_exist=False) if request.output else source
            if out_dir.exists() and not out_dir.is_dir():
                raise InvalidOption(f"output {request.output!r}: for a folder of videos the output is a folder.")
            pairs = [(video, None, out_dir) for video in _videos_in(source)]
        else:
            output = self.roots.resolve(request.output, what="output", must_exist=False) if request.output else None
            pairs = [(source, output, None)]
        jobs_configs = []
        if pairs[0][2] is not None:
            settings["output_dir"] = str(pairs[0][2])  # where a folder's outputs go, kept for a restart
        for src, out, out_dir in pairs:
            config = self._config(src, out, settings, output_dir=out_dir)
            config.validate()
            jobs_configs.append((src, config))
        jobs = []
        for src, config in jobs_configs:
            output = config.output if config.output is not None else _default_output(config)
            if output is not None and output.exists() and not settings["overwrite"] and not _own_partial(output):
                raise OutputExists(f"output {str(output)!r} exists. Pass \"overwrite\": true to replace it.")
            jobs.append(self.store.add(source=str(src), output=str(output) if output else "", settings=settings))
        with self._lock:
            self._queue.extend(j.id for j in jobs)
            self._lock.notify_all()
        return jobs

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job: a running one stops the way Ctrl-C stops the command
        line (its partial output finalized, its finished segments kept for a resume)."""
        job = self.store.get(job_id)
        if job is None or job.state in FINISHED_STATES:
            return job
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self.store.update(job_id, state="cancelled", finished=time.time(), error="cancelled before it started")
                return self.store.get(job_id)
            stop = self._stops.get(job_id)
        if stop is not None:
            stop.set()
            thread = self._threads.get(job_id)
            if thread is not None:
                thread.join(timeout=60)
        return self.store.get(job_id)

    def queue_position(self, job_id: str) -> int | None:
        with self._lock:
            return self._queue.index(job_id) if job_id in self._queue else None

    # -- running -------------------------------------------------------------------------------
    def _dispatch(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                started = self._start_next()
                if not started:
                    self._lock.wait(timeout=0.5)

    def _start_next(self) -> bool:
        """Start the oldest queued job that a device can take now (called under the lock)."""
        for job_id in list(self._queue):
            full = frozenset(d.name for d in self.devices.devices if len(d.queue) >= self.jobs_per_device)
            # A job spreads over the other idle GPUs only when nothing else waits: with jobs
            # queued behind it, each GPU is better given to a job of its own.
            spread = self.spread and len(self._queue) == 1
            chosen = self.devices.choose(job_id, spread=spread,
                                         exclude=full | frozenset(self._excluded.get(job_id, ())))
            if not chosen:
                if not self._excluded.get(job_id):
                    return False  # every device busy: the oldest job waits its turn
                continue
            self._queue.remove(job_id)
            stop = threading.Event()
            self._stops[job_id] = stop
            thread = threading.Thread(target=self._run_job, args=(job_id, [d.name for d in chosen], stop),
                                      name=f"job-{job_id}", daemon=True)
            self._threads[job_id] = thread
            thread.start()
            return True
        return False

    def _run_job(self, job_id: str, devices: list[str], stop: threading.Event) -> None:
        job = self.store.get(job_id)
        attempts = job.attempts + 1
        self.store.update(job_id, state="running", started=job.started or time.time(), devices=devices,
                          attempts=attempts, error=None)
        last = [0.0]

        def progress(stats) -> None:
            now = time.monotonic()
            if now - last[0] >= self.progress_seconds:
                last[0] = now
                self._record(job_id, stats)

        state, error, warnings = "done", None, []
        try:
            out_dir = job.settings.get("output_dir")
            config = self._config(Path(job.source), Path(job.output) if job.output else None, job.settings,
                                  output_dir=Path(out_dir) if out_dir else None, devices=devices)
            config.resume = True  # a restarted or requeued job finishes from its segments
            stats = self._run(config, on_progress=progress, stop=stop, models=self.models)
            self._record(job_id, stats)
            warnings = list(stats.warnings)
        except RunInterrupted as exc:
            state, error = "cancelled", one_line(exc)
        except HardwareUnavailable as exc:  # the device faulted: requeued on the others
            error = one_line(exc)
            for name in devices:
                self.devices.fault(name, error)
            state = "queued" if attempts < MAX_ATTEMPTS else "failed"
        except FramepipeError as exc:
            state, error = "failed", one_line(exc)
        except Exception as exc:  # noqa: BLE001 - a job's bug never takes the server down
            log.exception("job %s failed", job_id)
            state, error = "failed", f"{type(exc).__name__}: {one_line(exc)}"
        finally:
            self.devices.leave(job_id)
        with self._lock:
            self._stops.pop(job_id, None)
            self._threads.pop(job_id, None)
            if state == "cancelled" and self._closing:
                state, error = "queued", "the server stopped; the job resumes from its segments at the next start"
            if state == "queued" and not self._closing:
                self._excluded.setdefault(job_id, set()).update(devices)
                if len(self._excluded[job_id]) >= len(self.devices.devices):
                    self._excluded[job_id] = set()  # every device faulted once: they are retried after their pause
                self._queue.insert(0, job_id)
            fields = dict(state=state, error=error)
            if state in FINISHED_STATES:
                fields["finished"] = time.time()
            if warnings:
                fields["warnings"] = warnings
            self.store.update(job_id, **fields)
            self._lock.notify_all()

    def _record(self, job_id: str, stats) -> None:
        total = max(stats.num_frames_expected, stats.num_frames_decoded)
        self.store.update(job_id, frames_done=stats.num_frames_written, frames_total=total, fps=round(stats.fps, 2),
                          warnings=list(stats.warnings))

    # -- settings -> RunConfig -----------------------------------------------------------------
    def _check_model(self, model: str) -> None:
        """A model file must be inside the roots too (a name is a built-in model)."""
        from models import BUILTIN_NAMES, load_model

        if Path(model).suffix.lower() in MODEL_FILE_SUFFIXES or "/" in model:
            self.roots.resolve(model, what="model", must_exist=True)
        elif model not in BUILTIN_NAMES:
            load_model(model)  # raises the command line's one line: the built-in names, a close one

    def _config(self, source: Path, output: Path | None, settings: dict, *, output_dir: Path | None = None,
                devices: list[str] | None = None):
        from pipeline import RunConfig

        s = dict(settings)
        model = s["model"]
        if Path(model).suffix.lower() in MODEL_FILE_SUFFIXES or "/" in model:
            model = str(self.roots.resolve(model, what="model", must_exist=True))
        gpus = [d for d in devices or [] if d.startswith("cuda")]
        return RunConfig(
            source=source, output=output, output_dir=output_dir, model=model, scale=s["scale"],
            precision=s["precision"], codec=s["codec"], bit_depth=s["bit_depth"], crf=s["quality"], preset=s["preset"],
            start=s["start"], end=s["end"], max_frames=s["max_frames"], copy_audio=not s["no_audio"],
            tile_size=s["tile_size"], tile_overlap=s["tile_overlap"], compile=s["compile"], batch_size=s["batch_size"],
            encoders=s["encoders"], segment_frames=s["segment_frames"], segment_seconds=s["segment_seconds"],
            picture_format=s["picture_format"], fps=s["fps"], nvdec=s["nvdec"], nvenc=s["nvenc"],
            overwrite=s["overwrite"], keep_parts=s["keep_parts"], parallel=True,
            device="cpu" if devices == ["cpu"] else gpus[0] if len(gpus) == 1 else "auto",
            gpus=",".join(d.split(":")[1] for d in gpus) if len(gpus) > 1 else None,
        )


def _own_partial(output: Path) -> bool:
    """`output` is the finalized partial output of a stopped job whose segments are kept: a
    job with the same settings finishes it (the pipeline checks the settings match)."""
    from pipeline.segments import PartsFolder

    return PartsFolder.holds_partial_output_of(output)


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
                  and not p.name.startswith("."))


def _default_output(config) -> Path | None:
    """Where a job without an output writes (beside its source, or in its output folder)."""
    from pipeline import default_output_path

    if config.source.is_dir():
        return None  # a picture sequence: the pipeline names the folder
    name = default_output_path(config.source, model_name=Path(config.model).stem,
                               scale=config.scale or 0).name if config.scale else None
    if name is None:
        return None  # the model's own scale is known once it is loaded: the pipeline names it
    folder = config.output_dir or config.source.parent
    return folder / name

