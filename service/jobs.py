"""Jobs: what a client may ask for, and the scheduler that runs them over the devices.

A job is one `pipeline.run` (the same engine as the command line) in a thread of its own,
with the device the weighted choice gave it (`service.devices`), modules lent by the model
manager (`service.models`), and a stop event for cancelling. Its output is always segmented
with a manifest (`resume` on): a cancelled job leaves a finalized partial output and its
finished segments, and a job that was running when the server died is taken up again at
the next start and finishes from its segments, frame-exact.

Every path a job uses is checked against the roots twice: when it is submitted (each video
of a folder and each picture of a sequence included, links followed to where they lead), and
again when it starts, against the roots the server has then (a restart may have narrowed
them). A request is checked whole before any of its jobs is stored: a refused request leaves
nothing queued.

Jobs side by side share the CPU: a job that starts while others run or wait plans its decoders,
encoders and x264 threads for its share of the cores (`RunConfig.cores`: the cores the process
may use over the jobs that run at once), not for all of them each; a job alone gets them all.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from core.choices import (COMPILE_CHOICES, DEFAULT_MODEL, DEFAULT_SCENE_THRESHOLD, INTERPOLATE_ONLY_MODEL,
                          MAX_ENCODERS, MAX_INTERPOLATE, MAX_SEGMENT_SECONDS, MODEL_FILE_SUFFIXES, PICTURE_FORMATS, Codec, Precision)
from core.errors import (CodeModelRefused, FramepipeError, HardwareUnavailable, InvalidOption, JobEnded, ModelError,
                         OutputExists, OutputNotWritable, RunInterrupted, one_line)
from core.files import file_identity, partial_names, temporary_names, work_folder
from core.paths import VIDEO_SUFFIXES, is_own_output_name, refuse_shared_outputs
from hw.scheduling import usable_cores
from service.devices import Devices
from service.models import ModelManager
from service.paths import Roots
from service.store import FINISHED_STATES, Job, JobStore

__all__ = ["JobSettings", "JobRequest", "Scheduler", "VIDEO_SUFFIXES", "MAX_ATTEMPTS", "job_request",
           "is_upload_name", "for_service", "validation_line"]

log = logging.getLogger("service")

MAX_ATTEMPTS = 3  # a job whose devices keep faulting is given up after this many tries
# An upload's name in the uploads folder: a uuid4's hex (32 digits), a dash, the client's video name.
# Not 8 digits (older servers'): a user's `20261208-trip.mp4` is that too, and was deleted as one.
_UPLOAD_NAME = re.compile(r"^[0-9a-f]{32}-")


class JobSettings(BaseModel):
    """The command line's settings that make sense for a job (the same names, without `--`)."""

    # strict: `"scale": true` was scale 1, `"nvdec": 1` on, `"quality": "20"` a number (JSON says what it means)
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), allow_inf_nan=False, strict=True)

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
    encoders: int = Field(0, ge=0, le=MAX_ENCODERS)
    segment_frames: int | None = Field(None, ge=1)
    segment_seconds: float | None = Field(None, gt=0, le=MAX_SEGMENT_SECONDS)
    picture_format: Literal[tuple(PICTURE_FORMATS)] | None = None  # type: ignore[valid-type]
    fps: str | None = None
    nvdec: bool = False
    nvenc: bool = False
    overwrite: bool = False
    keep_parts: bool = False
    interpolate: int = Field(1, ge=1, le=MAX_INTERPOLATE)
    interpolation_model: Literal["rife", "blend"] = "rife"
    scene_threshold: float = Field(DEFAULT_SCENE_THRESHOLD, ge=0, lt=1)

    @model_validator(mode="after")
    def _interpolate_alone(self) -> "JobSettings":
        """As on the command line: `interpolate` without a `model` only interpolates."""
        if self.interpolate > 1 and "model" not in self.model_fields_set:
            self.model, self.scale = INTERPOLATE_ONLY_MODEL, 1
        return self


class JobRequest(JobSettings):
    """`POST /jobs`: a source inside the roots (a video, a picture sequence, or a folder of
    videos: one job each) and where the output goes (a file; a folder for a folder of videos;
    left out: beside the source, named after the model and scale)."""

    source: str
    output: str | None = None


def job_request(source: str, output: str | None, settings: object) -> JobRequest:
    """A JobRequest from a source, an output and a separate settings object (an upload's form,
    an MCP call). InvalidOption when the settings are not an object or hold the paths themselves;
    pydantic's ValidationError (a ValueError) for a bad setting."""
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise InvalidOption(f"settings must be a JSON object such as {{\"scale\": 2}}, not {type(settings).__name__}.")
    given = sorted({"source", "output"} & settings.keys())
    if given:
        raise InvalidOption(f"settings hold {' and '.join(repr(k) for k in given)}: give the "
                            f"{' and '.join(given)} beside the settings, not inside them.")
    return JobRequest.model_validate({**settings, "source": source, "output": output})


def is_upload_name(name: str) -> bool:
    """`name` is one the upload endpoint gives a file in the uploads folder (a video's: a job's
    pictures written there, `deadbeef-0001.png`, are not)."""
    return bool(_UPLOAD_NAME.match(name)) and Path(name).suffix.lower() in VIDEO_SUFFIXES


def validation_line(errors, *, nothing: str = "invalid request", whole: str = "body") -> str:
    """A pydantic ValidationError's `errors()` as one line: the first problem's field and what is
    wrong, and how many more (`nothing`: the line for none; `whole`: the field named when the
    problem is the request itself). The HTTP API's 422s and the MCP tools' errors alike."""
    if not errors:
        return nothing
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("body", "query")) or whole
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if e.get("type") == "extra_forbidden":
        return f"unknown setting {where!r}{more}"
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    return f"{where}: {e.get('msg')}{more}"


class Scheduler:
    """Queues jobs, starts each on the device with the lowest score, keeps the store current."""

    def __init__(self, store: JobStore, devices: Devices, models: ModelManager, roots: Roots, *,
                 jobs_per_device: int = 2, spread: bool = True, run: Callable | None = None,
                 progress_seconds: float = 0.5, uploads: Path | None = None) -> None:
        self.store = store
        self.devices = devices
        self.models = models
        self.roots = roots
        self.jobs_per_device = jobs_per_device
        self.spread = spread  # a lone job takes every idle GPU (pull-based workers balance them)
        self.progress_seconds = progress_seconds
        self.uploads = uploads  # an upload is deleted when the last job on it ends
        if run is None:
            from pipeline import run
        self._run = run
        self._lock = threading.Condition()
        self._queue: list[str] = []
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._excluded: dict[str, set[str]] = {}  # devices a job faulted on
        # Running jobs whose stop was set by a cancel (not by the server stopping): they end
        # cancelled whatever the run raised on the way out (a device fault included).
        self._cancelled: set[str] = set()
        self._closing = False
        self._dispatcher = threading.Thread(target=self._dispatch, name="dispatcher", daemon=True)

    # -- life ----------------------------------------------------------------------------------
    def start(self) -> list[Job]:
        """Take up the jobs a previous server left queued or running, then start dispatching."""
        taken = self.store.unfinished()
        with self._lock:
            for job in taken:
                if job.started is not None:  # it had begun (killed mid-run, or stopped with the server)
                    self.store.update(job.id, state="queued", resumed=job.resumed + 1)
                    log.info("job %s had begun when the server stopped: it resumes from its segments", job.id)
                if job.id not in self._queue:  # one submitted before the start is queued already
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
        if self._dispatcher.ident is not None:  # started
            self._dispatcher.join(timeout=5)

    # -- requests ------------------------------------------------------------------------------
    def submit(self, request: JobRequest) -> list[Job]:
        """Check a request and queue its job(s). Every check of every job comes before the
        first job is stored, so a refused request leaves nothing behind. Raises InvalidOption /
        ModelError (bad settings), PathRefused (outside the roots), OutputExists (an existing
        output, or one another job of the request or a queued or running job writes),
        OutputNotWritable / UnsafeOutput (the command line's output checks)."""
        settings = request.model_dump(exclude={"source", "output"})
        _refuse_unused_interpolation(request)
        source = self.roots.resolve(request.source, what="source", must_exist=True)
        output = self.roots.resolve(request.output, what="output", must_exist=False) if request.output else None
        model = self._model(settings["model"])
        scale = self._check_scale(model, settings["scale"])
        busy = self._busy()
        videos = self._videos_in(source, output=output, busy=busy) if source.is_dir() else []
        if videos:
            out_dir = output or source
            if out_dir.exists() and not out_dir.is_dir():
                raise InvalidOption(f"output {request.output!r}: for a folder of videos the output is a folder.")
            pairs = [(video, _default_output(video, out_dir, model, scale, settings)) for video in videos]
        else:
            if source.is_dir():
                self._check_pictures(source)
            pairs = [(source, output if output is not None else
                      None if source.is_dir() else _default_output(source, source.parent, model, scale, settings))]
        for src, out in pairs:
            self._check_job(src, out, settings, model=model)
        refuse_shared_outputs(pairs, apart="submit them one at a time with an output each")
        with self._lock:  # the look at the running jobs and the store, as one step
            _refuse_busy(pairs, self._busy())
            jobs = self.store.add_many([(str(src), str(out) if out else "", settings) for src, out in pairs])
            self._queue.extend(j.id for j in jobs)
            self._lock.notify_all()
        return jobs

    def retry(self, job_id: str) -> Job | None:
        """A failed or cancelled job queued again, under its id, with its settings: checked as a new
        job is (the roots as they are now, its output, the jobs queued and running), and run as
        every job is, from the segments its last run finished (its partial output is its own).
        JobEnded for a job that has not failed nor been cancelled, or whose source is gone."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.state not in ("failed", "cancelled"):
            raise JobEnded(f"job {job_id} is {job.state}: only a failed or cancelled job can be retried.")
        source = self.roots.resolve(job.source, what="source", must_exist=False)
        if not source.exists():
            upload = " (an upload is deleted when its job ends: upload it again)" if self._is_upload(source) else ""
            raise JobEnded(f"job {job_id} cannot be retried: its source {self.roots.relative(source)!r} is gone{upload}.")
        source, output, _, model = self._paths_now(job)
        self._check_scale(model, job.settings["scale"])
        settings = {**JobSettings().model_dump(), **job.settings}  # a job stored by an earlier server: today's defaults
        self._check_job(source, output, settings, model=model)
        with self._lock:
            _refuse_busy([(source, output)], self._busy())
            self.store.update(job_id, state="queued", error=None, started=None, finished=None, attempts=0,
                              frames_done=0, fps=0.0, output_identity=None)
            self._queue.append(job_id)
            self._lock.notify_all()
        return self.store.get(job_id)

    def forget(self, job_id: str) -> Job | None:
        """An ended job left out of the lists (`JobStore.forget`); no file is touched: its output,
        partial output and work folder stay where they are. JobEnded for a queued or running job."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.state not in FINISHED_STATES:
            raise JobEnded(f"job {job_id} is {job.state}: cancel it first (DELETE /jobs/{job_id}), then forget it.")
        self.store.forget(job_id)
        return job

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job: a running one stops the way Ctrl-C stops the command
        line (its partial output finalized, its finished segments kept for a resume)."""
        job = self.store.get(job_id)
        if job is None or job.state in FINISHED_STATES:
            return job
        with self._lock:
            if job_id in self._queue:
                self._queue.remove(job_id)
                self._excluded.pop(job_id, None)
                self.store.update(job_id, state="cancelled", finished=time.time(), error="cancelled before it started")
                self._drop_upload(job)
                return self.store.get(job_id)
            stop = self._stops.get(job_id)
            if stop is not None:
                self._cancelled.add(job_id)
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
            cores = self._cores_share(len(self._threads) + len(self._queue))
            self._queue.remove(job_id)
            stop = threading.Event()
            self._stops[job_id] = stop
            thread = threading.Thread(target=self._run_job, args=(job_id, [d.name for d in chosen], stop, cores),
                                      name=f"job-{job_id}", daemon=True)
            self._threads[job_id] = thread
            thread.start()
            return True
        return False

    def _cores_share(self, jobs: int) -> int | None:
        """The CPU cores a job starting now plans for (its decoders, encoders, x264 threads): with
        `jobs` running or waiting (this one included), as many as run at once share the cores the
        process may use; None (all of them) for a job alone. A job that started alone keeps its
        plan when others come."""
        at_once = min(jobs, len(self.devices.devices) * self.jobs_per_device)
        return None if at_once <= 1 else max(1, usable_cores() // at_once)

    def _run_job(self, job_id: str, devices: list[str], stop: threading.Event, cores: int | None = None) -> None:
        job = self.store.get(job_id)
        attempts = job.attempts + 1
        self.store.update(job_id, state="running", started=job.started or time.time(), devices=devices,
                          attempts=attempts, error=None)
        last = [0.0]
        final: list = [None]  # the run's stats as last reported (the runner reports once more at its end)

        def progress(stats) -> None:
            final[0] = stats
            now = time.monotonic()
            if now - last[0] >= self.progress_seconds:
                last[0] = now
                self._record(job_id, stats)

        state, error, warnings = "done", None, []
        try:
            # Checked again now: the roots may have changed since the job was stored (a restart).
            source, output, out_dir, model = self._paths_now(job)
            config = self._config(source, output, job.settings, model=model, output_dir=out_dir, devices=devices)
            config.cores = cores
            config.resume = True  # a restarted or requeued job finishes from its segments
            stats = self._run(config, on_progress=progress, stop=stop, models=self.models)
            self._record(job_id, stats)
            warnings = list(stats.warnings)
        except RunInterrupted as exc:
            state, error = "cancelled", one_line(exc)
        except HardwareUnavailable as exc:
            error = one_line(exc)
            faulted = _faulted_devices(exc, final[0], devices)
            if faulted:  # the device faulted: requeued on the others
                for name in faulted:
                    self.devices.fault(name, error)
                state = "queued" if attempts < MAX_ATTEMPTS else "failed"
            else:  # the input or a setting the hardware lacks (NVDEC refusing a stream): no device is to blame
                state = "failed"
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
            if job_id in self._cancelled:
                self._cancelled.discard(job_id)
                if state != "done":  # a cancel is never lost to a requeue, even with the server stopping
                    state, error = "cancelled", error or "cancelled"
            elif state == "cancelled" and self._closing:
                state, error = "queued", "the server stopped; the job resumes from its segments at the next start"
            if state == "queued" and not self._closing:
                self._excluded.setdefault(job_id, set()).update(devices)
                if len(self._excluded[job_id]) >= len(self.devices.devices):
                    self._excluded[job_id] = set()  # every device faulted once: they are retried after their pause
                self._queue.insert(0, job_id)
            fields = dict(state=state, error=for_service(error))
            if state in FINISHED_STATES:
                fields["finished"] = time.time()
                self._excluded.pop(job_id, None)
            if state == "done" and job.output:  # the file its result is (Service.output)
                fields["output_identity"] = file_identity(job.output)
            if warnings:
                fields["warnings"] = warnings
            self.store.update(job_id, **fields)
            if state in FINISHED_STATES:
                self._drop_upload(job)
            self._lock.notify_all()

    def _record(self, job_id: str, stats) -> None:
        total = stats.num_frames_total  # the header's count or the duration's estimate until the source ends
        self.store.update(job_id, frames_done=stats.num_frames_done, frames_total=total, fps=round(stats.fps, 2),
                          warnings=list(stats.warnings))

    def _is_upload(self, path: Path) -> bool:
        return self.uploads is not None and path.parent == self.uploads and is_upload_name(path.name)

    def _drop_upload(self, job: Job) -> None:
        """An uploaded source is deleted when the last unfinished job on it ends (called under the lock)."""
        for source in self.unused_uploads([Path(job.source)]):
            try:
                source.unlink(missing_ok=True)
            except OSError as exc:
                log.warning("could not delete the upload %s: %s", source, exc)

    def unused_uploads(self, paths) -> list[Path]:
        """Those of `paths` that are uploads (files the upload endpoint saved, by their names, in
        the uploads folder) no unfinished job uses, and no job's output: an upload's default
        output `<upload>.<model>-x<scale>.mp4`, or its partial output, bears the upload's name, and
        was deleted as one when a second job that read it ended. The store is asked once."""
        candidates = [p for p in paths if self.uploads is not None and p.parent == self.uploads
                      and is_upload_name(p.name) and p.is_file() and not p.is_symlink()]
        if not candidates:
            return []
        used = {j.source for j in self.store.unfinished()}
        outputs = {Path(p) for p in self.store.outputs()}
        partials = [partial_names(out) for out in outputs if out.parent == self.uploads]
        return [p for p in candidates if str(p) not in used and p not in outputs
                and not any(names.fullmatch(p.name) for names in partials)]

    # -- checks ----------------------------------------------------------------------------------
    def _model(self, model: str) -> str:
        """A built-in model's name, or a model file's real path inside the roots. Any other
        name is refused from its text alone: the disk is never looked at outside the roots."""
        from models import BUILTIN_NAMES

        if model in BUILTIN_NAMES:
            return model
        if Path(model).suffix.lower() in MODEL_FILE_SUFFIXES or "/" in model or os.sep in model:
            return str(self.roots.resolve(model, what="model", must_exist=True))
        raise ModelError(f"Unknown model {model!r}: the built-in models are {', '.join(BUILTIN_NAMES)}; or give the "
                         f"path of a model file ({', '.join(MODEL_FILE_SUFFIXES)}) inside the server's roots.")

    @staticmethod
    def _check_scale(model: str, scale: int | None) -> int:
        """The command line's model check (the name or file, the scale it can produce); the scale."""
        from models import load_model

        try:
            return load_model(model, scale=scale).scale
        except CodeModelRefused:  # the command line's way round it is no client's to take here
            raise CodeModelRefused(f"model {Path(model).name!r} is TorchScript: a program, which would run with the "
                                   "server's rights; the service runs weights files only (.safetensors, .pth).") from None

    def _videos_in(self, folder: Path, *, output: Path | None, busy: dict[Path, tuple[str, Job]]) -> list[Path]:
        """The videos of a folder source, each the real path of an entry: a link leading out of
        the roots refuses the request; framepipe's own outputs (by their names, anything in the
        output folder, what a queued or running job writes) are left out, and so are hidden
        names, folders and dangling links."""
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        found = []
        for entry in entries:
            name = Path(entry.name)
            if entry.name.startswith(".") or name.suffix.lower() not in VIDEO_SUFFIXES or is_own_output_name(name):
                continue
            real = self.roots.confined(Path(entry.path), what="video of the source folder")
            if not real.is_file():
                continue
            if output is not None and output != folder and output in real.parents:
                continue
            if busy.get(real, ("",))[0] == "output":  # being written now
                continue
            found.append(real)
        return found

    def _check_pictures(self, folder: Path) -> None:
        """Every picture of a folder source (links followed) inside the roots; InvalidSource
        when it holds none (hw.pictures, the command line's listing)."""
        from hw.pictures import find_pictures

        sequence = find_pictures(str(folder))
        for picture in sequence.paths if sequence is not None else ():
            self.roots.confined(picture, what="picture of the source folder")

    def _check_job(self, source: Path, output: Path | None, settings: dict, *, model: str) -> None:
        """The checks of one job before it is queued (a new one, or one retried): its settings as
        the command line checks them, and its output; a start past the video's end (it would fail
        when run), and a bit depth for pictures given a video (likewise)."""
        from hw.pictures import picture_target

        config = self._config(source, output, settings, model=model).validate()
        if output is not None:
            self._check_output(source, output, model, settings)
        if settings["bit_depth"] == 16 and output is not None and not output.is_dir() and \
                picture_target(output, picture_format=settings["picture_format"], bit_depth=16) is None:
            raise InvalidOption('"bit_depth" 16 is for pictures (PNG/TIFF output); video is written with 8 or 10 bits.')
        if config.cut is not None and config.cut.start is not None and source.is_file():
            _refuse_start_past_the_end(source, config.cut.start)

    def _check_output(self, source: Path, output: Path, model: str, settings: dict) -> None:
        """The command line's output checks (core.files): an existing file without overwrite, the
        source under another name, a missing or read-only folder."""
        from core.files import check_output_paths
        from hw.pictures import picture_target

        target = picture_target(output, picture_format=settings["picture_format"], bit_depth=8)
        if target is not None:  # pictures out: the pipeline checks each name; here, the folder
            parent = target.folder if target.folder.is_dir() else target.folder.parent
            if not parent.is_dir():
                raise OutputNotWritable(f"Cannot write pictures to {str(target.folder)!r}: folder {str(parent)!r} "
                                        "does not exist.")
            return
        own = _own_partial(output)
        if output.exists() and not settings["overwrite"] and not own:
            raise OutputExists(f"output {str(output)!r} exists. Pass \"overwrite\": true to replace it.")
        inputs = [("source", source)] + ([("model", Path(model))] if Path(model).is_absolute() else [])
        check_output_paths([("output", output)], inputs=inputs, overwrite=settings["overwrite"],
                           owned=[output] if own else [])

    def _busy(self) -> dict[Path, tuple[str, Job]]:
        """The paths queued and running jobs read and write: path -> ("source" | "output", the job)."""
        busy: dict[Path, tuple[str, Job]] = {}
        for job in self.store.unfinished():
            busy.setdefault(Path(job.source), ("source", job))
            if job.output:
                busy[Path(job.output)] = ("output", job)
        return busy

    def _paths_now(self, job: Job) -> tuple[Path, Path | None, Path | None, str]:
        """The job's source, output, output folder and model checked against the roots as they
        are now; PathRefused (the job fails, no file touched) for one that is outside them."""
        source = self.roots.resolve(job.source, what="source", must_exist=True)
        if source.is_dir():
            self._check_pictures(source)
        output = self.roots.resolve(job.output, what="output", must_exist=False) if job.output else None
        out_dir = job.settings.get("output_dir")  # jobs stored by earlier servers
        out_dir = self.roots.resolve(out_dir, what="output folder", must_exist=False) if out_dir else None
        return source, output, out_dir, self._model(job.settings["model"])

    # -- settings -> RunConfig -----------------------------------------------------------------
    def _config(self, source: Path, output: Path | None, settings: dict, *, model: str,
                output_dir: Path | None = None, devices: list[str] | None = None):
        from pipeline import RunConfig

        s = dict(settings)
        interpolate = s.get("interpolate", 1)
        gpus = [d for d in devices or [] if d.startswith("cuda")]
        return RunConfig(
            source=source, output=output, output_dir=output_dir, model=model, scale=s["scale"],
            precision=s["precision"], codec=s["codec"], bit_depth=s["bit_depth"], crf=s["quality"], preset=s["preset"],
            start=s["start"], end=s["end"], max_frames=s["max_frames"], copy_audio=not s["no_audio"],
            tile_size=s["tile_size"], tile_overlap=s["tile_overlap"], compile=s["compile"], batch_size=s["batch_size"],
            # a job has no "max_batch_size" (the probe's ceiling): a fixed batch above its default is meant
            max_batch_size=max(RunConfig.max_batch_size, s["batch_size"]),
            encoders=s["encoders"], segment_frames=s["segment_frames"], segment_seconds=s["segment_seconds"],
            picture_format=s["picture_format"], fps=s["fps"], nvdec=s["nvdec"], nvenc=s["nvenc"],
            overwrite=s["overwrite"], keep_parts=s["keep_parts"], parallel=True,
            # stored with their defaults: given to the run only where they do something
            interpolate=interpolate, interpolation_model=s.get("interpolation_model") if interpolate > 1 else None,
            scene_threshold=s.get("scene_threshold") if interpolate > 1 else None,
            device="cpu" if devices == ["cpu"] else gpus[0] if len(gpus) == 1 else "auto",
            gpus=",".join(d.split(":")[1] for d in gpus) if len(gpus) > 1 else None,
        )


def _refuse_start_past_the_end(source: Path, start) -> None:
    """A `start` past the video's last frame would fail when the job ran ("Nothing to process"):
    refused now, from the container's frame count and its last packet's time (`hw.av_source.
    video_extent`; what it cannot tell is left to the run, which says it then)."""
    from hw.av_source import video_extent

    extent = video_extent(source)
    frames, last = extent.num_frames_from_header, extent.last_frame_seconds
    if start.frames is not None and frames and start.frames >= frames:
        raise InvalidOption(f'"start" {start} is past the end of the video: it has {frames} frames (0f to {frames - 1}f).')
    if start.seconds is not None and last is not None and start.seconds > last:
        raise InvalidOption(f'"start" {start} is past the end of the video: its last frame is at {float(last):.3f} s.')


def _refuse_unused_interpolation(request: JobRequest) -> None:
    """`interpolation_model` or `scene_threshold` without `interpolate` would do nothing: refused
    (the command line warns; a request is checked whole, like every other setting)."""
    unused = [k for k in ("interpolation_model", "scene_threshold") if k in request.model_fields_set]
    if request.interpolate == 1 and unused:
        one = len(unused) == 1
        raise InvalidOption(f"{' and '.join(unused)} {'does' if one else 'do'} nothing without interpolate (2 or "
                            f"more): set interpolate, or leave {'it' if one else 'them'} out.")


def _own_partial(output: Path) -> bool:
    """`output` is the finalized partial output of a stopped job whose segments are kept: a
    job with the same settings finishes it (the pipeline checks the settings match)."""
    from pipeline.segments import PartsFolder

    return PartsFolder.holds_partial_output_of(output)


def _default_output(source: Path, folder: Path, model: str, scale: int, settings: dict) -> Path:
    """Where a video job without an output writes: the pipeline's name (`clip.<model>-x<scale>.mp4`,
    `clip.fps2x.mp4` ...) in `folder`."""
    from pipeline import default_output_path

    n = settings.get("interpolate", 1)
    identity = n > 1 and Path(model).stem == INTERPOLATE_ONLY_MODEL and scale == 1
    return folder / default_output_path(source, model_name=Path(model).stem, scale=scale, interpolate=n,
                                        identity=identity).name


def _writes_at(output: Path, path: Path) -> bool:
    """A run writing `output` also writes (or removes) `path`: the output itself, anything in its
    work folder `<output>.parts/`, its hidden temporary file, its partial output (its lock's name
    is no output's)."""
    parts = work_folder(output)
    if path == output or path == parts or parts in path.parents:
        return True
    if path.parent != output.parent:
        return False
    return bool(temporary_names(output).fullmatch(path.name) or partial_names(output).fullmatch(path.name))


def _refuse_busy(pairs: list[tuple[Path, Path | None]], busy: dict[Path, tuple[str, Job]]) -> None:
    """No job writes what a queued or running job reads or writes, nor reads what one writes: a
    run's work folder and the files beside its output count as what it writes (a second job's
    output inside a running job's `.parts/` made that job fail)."""
    for src, out in pairs:
        for path, (role, job) in busy.items():
            if out is not None and (_writes_at(out, path) or (role == "output" and _writes_at(path, out))):
                what = f"the {role}" if out == path else f"in the way of the {role} ({str(path)!r})"
                raise OutputExists(f"output {str(out)!r} is {what} of job {job.id} ({job.state}): wait for that job "
                                   "to end, or cancel it.")
            if role == "output" and _writes_at(path, src):
                raise OutputExists(f"source {str(src)!r} is {'the output' if src == path else 'among the files'} job "
                                   f"{job.id} ({job.state}) is writing: wait for that job to end.")


def _faulted_devices(exc: BaseException, stats, devices: list[str]) -> list[str]:
    """The job's devices to mark unhealthy after a HardwareUnavailable: those whose workers
    the run took out after device faults (its stats say which), or all of them when a device
    fault (a CUDA error) is among the error's causes. None for an error about the input or a
    setting the hardware lacks, e.g. NVDEC refusing a stream's layout (hw/nvdec.py)."""
    from hw.memory import is_device_fault

    failed = {getattr(w, "device", None) for w in getattr(stats, "workers", {}).values()
              if getattr(w, "health", None) == "failed"}
    named = [d for d in devices if d in failed]
    if named:
        return named
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if is_device_fault(exc):
            return list(devices)
        exc = exc.__cause__ or exc.__context__
    return []


_FLAG = re.compile(r"--([a-z][a-z0-9-]*)")


def for_service(error: str | None) -> str | None:
    """A run's line as the service's: its hints name the command line, and a service job has no
    command: the same job submitted again resumes from its segments (README, Service), and a
    flag that is a job setting is named as the setting (`--scale` -> "scale", `Pass --overwrite`
    -> `Pass "overwrite": true`); other flags stay as they are."""
    if not error:
        return error
    error = error.replace("the same command with --resume", "the same job submitted again")
    error = re.sub(r"[Pp]ass --overwrite", 'pass "overwrite": true', error)

    def setting(match: re.Match) -> str:
        name = match.group(1).replace("-", "_")
        return f'"{name}"' if name in JobSettings.model_fields else match.group(0)

    return _FLAG.sub(setting, error)
