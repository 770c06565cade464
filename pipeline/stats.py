"""Run statistics: what each stage did and how long it was busy or waiting.

Each counter has one writer (the stage that owns it); the console and `--stats-json`
only read. `RunStats.to_dict()` is the one source for the end-of-run summary and the
JSON file, so the two always agree.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

__all__ = ["StageClock", "WorkerStats", "RunStats"]


@dataclass
class StageClock:
    """Seconds a stage spent working vs blocked on a queue: `wait_seconds` all of it, waiting for
    work or to hand results on; `blocked_seconds` the second part only (the next stage full)."""

    busy_seconds: float = 0.0
    wait_seconds: float = 0.0
    blocked_seconds: float = 0.0

    @contextmanager
    def busy(self) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.busy_seconds += time.perf_counter() - t0

    @contextmanager
    def waiting(self, *, blocked: bool = False) -> Iterator[None]:
        """Time waiting on a queue; `blocked`: to hand a result on (counted in both)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - t0
            self.wait_seconds += seconds
            if blocked:
                self.blocked_seconds += seconds


@dataclass
class WorkerStats:
    """One worker thread (one device)."""

    name: str
    device: str
    num_frames: int = 0
    num_batches: int = 0
    batch_size: int = 0  # the size in use now
    batch_sizes: Counter = field(default_factory=Counter)  # size -> batches run at that size
    tile_size: int | None = None  # input pixels a side of the tiles the model runs on; None: whole frames
    overlap: bool = False  # a batch's chunks overlap on CUDA streams (pipeline/worker.py)
    num_oom: int = 0
    num_scene_cuts: int = 0  # --interpolate: pairs taken for a scene cut (the frame repeated)
    num_failures: int = 0
    num_frames_given_back: int = 0
    health: str = "starting"  # starting, probing, ok, backoff, failed, done
    probe_seconds: float = 0.0
    probe_note: str = ""
    compile: Any = None  # models.compiled.CompileState once the model is built
    # Source frames and seconds of work of the batches run in the mode the worker settled in (compiled
    # once its compilation is ready; eager where it never compiles): what the next run's model delivers.
    steady_frames: int = 0
    steady_seconds: float = 0.0
    first_batch_at: float | None = None  # perf_counter when its first batch came out of the model
    settled_at: float | None = None  # perf_counter when its first batch in the settled mode began
    # Start-up steps, in order: name -> perf_counter when it was done (time to first frame).
    marks: dict[str, float] = field(default_factory=dict)
    clock: StageClock = field(default_factory=StageClock)
    # Sampled about once a second from NVML by the runner (GPUs only; None = unknown).
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    utilization_percent: int | None = None
    peak_memory_used_bytes: int | None = None
    _utilization_samples: list = field(default_factory=list, repr=False)
    _recent: deque = field(default_factory=lambda: deque(maxlen=64), repr=False)

    def record_device_sample(self, memory: tuple[int, int] | None, utilization: int | None) -> None:
        if memory is not None:
            self.memory_used_bytes, self.memory_total_bytes = memory
            self.peak_memory_used_bytes = max(self.peak_memory_used_bytes or 0, memory[0])
        if utilization is not None:
            self.utilization_percent = utilization
            self._utilization_samples.append(utilization)

    def record_batch(self, num_frames: int) -> None:
        self.num_frames += num_frames
        self.num_batches += 1
        self.batch_sizes[num_frames] += 1
        now = time.perf_counter()
        if self.first_batch_at is None:
            self.first_batch_at = now
        self._recent.append((now, num_frames))

    def recent_fps(self, window_seconds: float = 3.0) -> float:
        now = time.perf_counter()
        recent = [(t, n) for t, n in list(self._recent) if now - t <= window_seconds]
        if not recent:
            return 0.0
        span = max(now - recent[0][0], 1e-3)
        return sum(n for _, n in recent) / span

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "device": self.device,
            "frames": self.num_frames,
            "batches": self.num_batches,
            "batch_size_now": self.batch_size,
            "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "oom_retries": self.num_oom,
            "scene_cuts": self.num_scene_cuts,
            "failures": self.num_failures,
            "frames_given_back": self.num_frames_given_back,
            "health": self.health,
            "probe_seconds": round(self.probe_seconds, 3),
            "probe_note": self.probe_note,
            "compile": _compile_dict(self.compile),
            "steady_fps": round(self.steady_frames / self.steady_seconds, 2) if self.steady_seconds > 0 else None,
            "busy_seconds": round(self.clock.busy_seconds, 3),
            "wait_seconds": round(self.clock.wait_seconds, 3),
            "blocked_seconds": round(self.clock.blocked_seconds, 3),  # of the wait: handing results on
            "memory_used_bytes": self.memory_used_bytes,
            "memory_total_bytes": self.memory_total_bytes,
            "peak_memory_used_bytes": self.peak_memory_used_bytes,
            "utilization_percent": self.utilization_percent,
            "mean_utilization_percent": (
                round(sum(self._utilization_samples) / len(self._utilization_samples), 1)
                if self._utilization_samples else None
            ),
        }


def _compile_dict(state) -> dict | None:
    """A worker's `CompileState` for the stats JSON (None: no model built)."""
    if state is None:
        return None
    return {"status": state.status, "note": state.note, "seconds": round(state.seconds, 2),
            "psnr_db_vs_eager": None if state.psnr_db is None else round(min(state.psnr_db, 999.0), 2),
            "compiled_batches": state.num_compiled_batches, "eager_batches": state.num_eager_batches,
            "precompiled": state.loaded}


MIN_RATE_FRAMES = 32  # a rate over fewer frames (or under a second) says too little


def _rate(frames: int, seconds: float) -> float | None:
    return frames / seconds if seconds >= 1.0 and frames >= MIN_RATE_FRAMES else None


@dataclass
class RunStats:
    """Figures of one run, filled in by the stages as they go."""

    num_frames_expected: int = 0  # from the header (or --max-frames); 0 = unknown
    num_frames_estimate: int = 0  # before decoding: the header's count, else duration x frame rate; 0 = unknown
    num_frames_decoded: int = 0
    num_frames_written: int = 0  # source frames whose output was written
    num_frames_made: int = 0  # frames a temporal model made besides them (--interpolate)
    # --resume: source frames an earlier run finished (pictures on disk, finished segments): decoded
    # and passed over, neither processed nor written again, nor counted in num_frames_written
    num_frames_kept: int = 0
    # num_frames_written is the joined output's count (pipeline/report.py), the kept frames among them
    written_is_output: bool = False
    num_frames_encoded: int = 0  # segmented output: frames the encoders have encoded (written: handed to them)
    num_corrupt_packets: int = 0
    source_exhausted: bool = False  # the reader reached the end of the source (not a stop or --max-frames)
    source_failure: BaseException | None = None  # why the source ended early, after the frames before it went through
    # How long the source's last frame lasts (its decoder's word, as ffmpeg takes it; None: unknown), the
    # output's last frame's duration when every frame went through (Writer.close)
    last_frame_seconds: Any = None
    # A compile helper process (models/compile_helper.py) ran during the run, its own or another's in
    # this process (the service): torch.compile's workers on every core, so the encoders' times say
    # nothing of the machine's (not learnt from; pipeline/runner.py).
    compile_helper_ran: bool = False
    stages: dict[str, StageClock] = field(default_factory=dict)
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # model, precision, devices, paths ...
    queue_depths: dict[str, Callable[[], int]] = field(default_factory=dict, repr=False)
    started_at: float = field(default_factory=time.perf_counter)
    called_at: float | None = None  # when run() was called, before planning (model loading) began
    finished_at: float | None = None
    marks: dict[str, float] = field(default_factory=dict)  # the run's start-up steps: name -> perf_counter
    # (perf_counter, frames written) when every worker's model had settled (`note_settled`): the
    # run's rate from then on leaves out the eager batches before a background compilation was ready.
    settled: tuple[float, int] | None = None
    # (perf_counter, frames written) when `note_settled` last saw the count grow: the last frame
    # handed on, at the runner's tick (what came after is the encoders' tail and the join).
    last_written: tuple[float, int] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def clock(self, stage: str) -> StageClock:
        with self._lock:
            return self.stages.setdefault(stage, StageClock())

    def add_worker(self, name: str, device: str) -> WorkerStats:
        with self._lock:
            ws = self.workers[name] = WorkerStats(name=name, device=device)
            return ws

    def warn(self, message: str) -> None:
        with self._lock:
            self.warnings.append(message)

    @property
    def wall_seconds(self) -> float:
        return self._end - self.started_at

    @property
    def _end(self) -> float:
        """The end of the stages (now, while they run)."""
        return self.finished_at if self.finished_at is not None else time.perf_counter()

    @property
    def _first_frame_at(self) -> float | None:
        """perf_counter when the first frame came out of a model (any worker); None before."""
        firsts = [w.first_batch_at for w in self.workers.values() if w.first_batch_at is not None]
        return min(firsts) if firsts else None

    def mark(self, step: str) -> None:
        self.marks.setdefault(step, time.perf_counter())

    def startup(self) -> dict[str, float]:
        """Where the time to the first frame went: each start-up step's seconds (run steps, then
        the first worker's), from the call of run()."""
        if self.called_at is None:
            return {}
        steps = sorted(self.marks.items(), key=lambda kv: kv[1])
        firsts = [w for w in self.workers.values() if w.first_batch_at is not None]
        if firsts:
            w = min(firsts, key=lambda w: w.first_batch_at)
            steps = sorted([*steps, *((f"{w.name}: {k}", t) for k, t in w.marks.items()),
                            (f"{w.name}: first batch out", w.first_batch_at)], key=lambda kv: kv[1])
        out, last = {}, self.called_at
        for name, t in steps:
            out[name] = round(t - last, 3)
            last = max(last, t)
        return out

    def note_settled(self) -> None:
        """Called as the run goes (the runners, after each tick or batch): once every worker still in
        the run has run a batch in the mode it settled in, remember when, and the frames written by
        then. A worker without a compile state (the halves of --split-gpu) is settled at its first batch.
        Also keeps when the count of frames written last grew (`last_written`)."""
        now, written = time.perf_counter(), self.num_frames_written
        if self.last_written is None or written > self.last_written[1]:
            self.last_written = (now, written)
        if self.settled is not None:
            return
        live = [w for w in self.workers.values() if w.health != "failed"]
        if live and all(w.settled_at is not None or (w.compile is None and w.first_batch_at is not None)
                        for w in live):
            self.settled = (now, written)

    @property
    def settled_fps(self) -> float | None:
        """Frames written per second from `settled` to the end of the stages (the encoders' last
        segments included; the join of a segmented output after them is not); None without one, or
        where less than a second or fewer than MIN_RATE_FRAMES frames came after it."""
        if self.settled is None:
            return None
        return _rate(self.num_frames_processed - self.settled[1], self._end - self.settled[0])

    @property
    def flow_fps(self) -> float | None:
        """Frames written per second from `settled` to the last frame written: the rate a longer
        video flows at once started, its fixed costs at both ends (the compilation before, the
        encoders' last segments after) left out. None as `settled_fps`."""
        if self.settled is None or self.last_written is None:
            return None
        return _rate(self.last_written[1] - self.settled[1], self.last_written[0] - self.settled[0])

    @property
    def after_first_frame_fps(self) -> float | None:
        """Frames written per second after the first frame out of the model, to the end of the
        stages: both ends on one clock (`first_frame_seconds` counts from the call of run(),
        `wall_seconds` from the stages' start)."""
        seconds = self.after_first_frame_seconds
        if seconds is None:
            return None
        processed = self.num_frames_processed
        return (processed - 1) / seconds if seconds > 0 and processed > 1 else None

    @property
    def after_first_frame_seconds(self) -> float | None:
        """From the first frame out of the model to the end of the stages (one clock); None before it."""
        first = self._first_frame_at
        return self._end - first if first is not None else None

    @property
    def first_frame_seconds(self) -> float | None:
        """From the start of the run (planning, model loading, probing included) to the first
        frame out of the model; None before it."""
        first = self._first_frame_at
        return first - self._origin if first is not None else None

    @property
    def _origin(self) -> float:
        """Where the run's "seconds after" count from: the call of run() (planning included)."""
        return self.called_at if self.called_at is not None else self.started_at

    @property
    def fps(self) -> float:
        return self.num_frames_processed / self.wall_seconds if self.wall_seconds > 0 else 0.0

    def depths(self) -> dict[str, int]:
        out = {}
        for name, fn in list(self.queue_depths.items()):
            try:
                out[name] = int(fn())
            except Exception:  # a queue torn down at the end of a run
                out[name] = 0
        return out

    @property
    def num_frames_done(self) -> int:
        """Source frames of the job that are done: written by this run, or kept from an earlier
        one (--resume). Progress counts these against the whole job's frames: counting only this
        run's against the whole job read 28/40 while a resumed run had 35 of 40 done."""
        return self.num_frames_written + (0 if self.written_is_output else self.num_frames_kept)

    @property
    def num_frames_processed(self) -> int:
        """Source frames this run wrote, the rates' count: the joined output's count less the frames
        an earlier run finished (--resume), which gave a resumed run of 24 frames 72 frames' rate."""
        return self.num_frames_written - (self.num_frames_kept if self.written_is_output else 0)

    @property
    def num_frames_total(self) -> int:
        """The job's source frames, for progress (0: unknown): every frame decoded once the source
        has ended, before that the header's count or else the estimate from the duration, never
        fewer than decoded so far. The decoded count alone ran a queue ahead of the frames done
        (a Matroska source, which has no count, read 2/54, 4/56, ... 72/72)."""
        if self.source_exhausted:
            return self.num_frames_decoded
        return max(self.num_frames_expected or self.num_frames_estimate, self.num_frames_decoded)

    def to_dict(self) -> dict:
        return {
            "frames_expected": self.num_frames_expected,
            "frames_decoded": self.num_frames_decoded,
            "frames_written": self.num_frames_written,
            "frames_made": self.num_frames_made,
            "frames_kept": self.num_frames_kept,
            "frames_done": self.num_frames_done,
            "frames_out": self.num_frames_written + self.num_frames_made,
            "corrupt_packets": self.num_corrupt_packets,
            "compile_helper_ran": self.compile_helper_ran,
            "wall_seconds": round(self.wall_seconds, 3),
            "fps": round(self.fps, 3),
            "first_frame_seconds": None if self.first_frame_seconds is None else round(self.first_frame_seconds, 3),
            "settled_after_seconds": None if self.settled is None else round(self.settled[0] - self._origin, 3),
            "settled_fps": None if self.settled_fps is None else round(self.settled_fps, 3),
            "flow_fps": None if self.flow_fps is None else round(self.flow_fps, 3),
            "after_first_frame_fps": None if self.after_first_frame_fps is None else round(self.after_first_frame_fps, 3),
            "startup_seconds": self.startup(),
            "stages": {
                name: {"busy_seconds": round(c.busy_seconds, 3), "wait_seconds": round(c.wait_seconds, 3),
                       "blocked_seconds": round(c.blocked_seconds, 3)}
                for name, c in self.stages.items()
            },
            "workers": [w.to_dict() for w in self.workers.values()],
            "warnings": list(self.warnings),
            **{k: v for k, v in self.notes.items()},
        }
