"""Runner: one run end to end — plan, build, run the stages, put the output in place.

`run(config)` is a library call and re-entrant: two runs in one process share nothing but
the devices (no process-wide switch is flipped here or in a stage; signals are main.py's).

- `--parallel`: reader -> work queue -> one worker per device -> collector -> writer, each
  stage in a named thread under a `StageRunner`;
- the sequential baseline: the same stages called in one plain loop.

Failures: every stage posts on the run's one `ErrorChannel` (which sets the stop event at
once); the first failure is re-raised as one line. A KeyboardInterrupt (Ctrl-C, or a
signal main.py turned into `RunInterrupted`) stops the run the same way. Either way every
thread is joined, the writer finalizes a playable file with every frame finished so far,
and `pipeline.report.settle_output` puts it where it belongs (`core.files.OutputFile`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, contextmanager

from core.errors import HardwareUnavailable, NoVideoStream, RunInterrupted
from core.files import NoOutput, OnePicture, OutputFile, OutputFolder
from core.stopping import finishing, interruptible, requested, settling, signals_deferred
from hw.encode_speed import ENCODER_SPEEDS_FILE
from hw.memory import ProbeMemo
from models import compile_helper as compile_helpers
from models.registry import default_cache_dir
from pipeline.build import ModelSource, Stages, Wrap, build
from pipeline.collector import Collector
from pipeline.config import RunConfig
from pipeline.encoder_choice import ENCODER_FACTORS_FILE, learn_content_factor, model_rates_memo, remember_model_rate
from pipeline.messages import ErrorChannel, StageFailed
from pipeline.plan import RunPlan, cores_for, model_rate_key_as_run, plan_run
from pipeline.queues import FifoInbox, FifoOutbox, WorkQueue
from pipeline.report import (Outcome, describe, excuse_late_stop, pixel_settings, raise_for, settle_output,
                             settle_pictures, settle_segments)
from pipeline.segments import PICTURE_MANIFEST, PartsFolder, check_picture_manifest, source_fingerprint
from pipeline.sampler import DeviceSampler
from pipeline.stage import Retire, Retry, StageRunner, take_size
from pipeline.stats import RunStats

__all__ = ["run"]

log = logging.getLogger("runner")

ProgressFn = Callable[[RunStats], None]


def run(
    config: RunConfig,
    *,
    on_progress: ProgressFn | None = None,
    on_start: Callable[[RunPlan, RunStats], None] | None = None,
    progress_seconds: float = 0.1,
    wrap: Wrap | None = None,
    stop: threading.Event | None = None,
    models: ModelSource | None = None,
) -> RunStats:
    """Run one job end to end. Raises FramepipeError (bad input, stage failure, a stop).

    The output is written to a hidden temporary file beside it (the output name locked
    against a second run) and renamed into place at the end: a complete run replaces an
    existing output only with --overwrite; a stopped run's finalized partial file takes
    the output name only where there was no file, else `<stem>.partial<suffix>`; a run
    that wrote no frame leaves nothing behind. `wrap(name, stage)` may replace or wrap a
    stage (tests inject faults this way).

    `stop`: setting it stops the run the way Ctrl-C does (the output finalized, `RunInterrupted`
    raised); the service cancels jobs with it. `models`: where workers get their modules (the
    service's model manager keeps them between jobs); by default each worker builds its own.
    """
    with _in_progress():
        return _run(config, on_progress=on_progress, on_start=on_start, progress_seconds=progress_seconds, wrap=wrap,
                    stop=stop, models=models)


_RUNS_IN_PROGRESS = 0  # runs of this process between their start and end (the service runs several)
_RUNS_LOCK = threading.Lock()


def runs_in_progress() -> int:
    """How many runs of this process are going on now: a compile helper's timing of the model
    counts as the model alone on its GPU only where none is (`pipeline.build._helper_rate`)."""
    with _RUNS_LOCK:
        return _RUNS_IN_PROGRESS


@contextmanager
def _in_progress():
    global _RUNS_IN_PROGRESS
    with _RUNS_LOCK:
        _RUNS_IN_PROGRESS += 1
    try:
        yield
    finally:
        with _RUNS_LOCK:
            _RUNS_IN_PROGRESS -= 1


def _run(config: RunConfig, *, on_progress: ProgressFn | None, on_start: Callable[[RunPlan, RunStats], None] | None,
         progress_seconds: float, wrap: Wrap | None, stop: threading.Event | None, models: ModelSource | None) -> RunStats:
    called_at = time.perf_counter()
    deferral = ExitStack()  # core.stopping's span: from the stages' build until the output is in place
    plan = plan_run(config)
    stats = RunStats(called_at=called_at)
    helpers_started, helper_was_running = compile_helpers.num_started(), bool(compile_helpers.pending())
    stats.mark("plan (probe the source, load the model's weights)")
    describe(plan, stats)
    if plan.output is None:  # --output-mode none
        output = NoOutput()
    elif plan.picture_target is not None and plan.picture_target.file_name is not None:
        output = OnePicture(plan.output)  # its writer writes it atomically, under its own lock
    elif plan.picture_target is not None:
        output = OutputFolder(plan.output, keep=(PICTURE_MANIFEST,))
    else:
        output = OutputFile(plan.output, overwrite=plan.overwrite_output, earlier_partial=plan.earlier_partial_output)
    temp = output.begin()
    parts = None
    try:
        if on_start is not None:
            on_start(plan, stats)
        if plan.picture_target is not None and plan.picture_target.file_name is None:  # under the folder's lock
            check_picture_manifest(plan.output, resume=config.resume, overwrite=config.overwrite,
                                   source=_fingerprint(plan), settings=pixel_settings(plan))
        if plan.segments is not None:  # under the output's lock: one run per work folder too
            parts = PartsFolder(plan.output)
            parts.open(resume=config.resume, overwrite=plan.overwrite_output,
                       source=_fingerprint(plan), settings=pixel_settings(plan), temp_output=temp)
            stats.notes["segments"] = _describe_segments(plan, parts)
            stats.notes["encoders"] = plan.encoder_line
        errors = ErrorChannel(threading.Event())
        # From here stage threads exist (the encoder pool starts in build) until the output is in
        # place: a stop signal is raised by the run's loop, not at an arbitrary point
        # (core/stopping.py).
        deferral.enter_context(signals_deferred())
        stages = build(plan, stats, temp, errors=errors, parts=parts, wrap=wrap, models=models)
        stats.mark("build (open the decoder and the encoder)")
        execute = _run_parallel if config.parallel else _run_sequential
        outcome = execute(plan, stages, stats, errors, on_progress, progress_seconds, stop or threading.Event())
    except BaseException as exc:  # nothing was started (bad settings found by the encoder, a stop)
        deferral.close()
        output.discard()
        if parts is not None:
            parts.remove_if_empty()
        if isinstance(exc, KeyboardInterrupt):
            kept = (f"before the first frame; the earlier run's work folder {parts.path} is kept: the same command with "
                    "--resume finishes the job." if parts is not None and parts.resumable else
                    "before the first frame; no output file was left behind.")
            raise RunInterrupted(kept,
                                 signal_name=getattr(exc, "signal_name", ""),
                                 signal_number=getattr(exc, "signal_number", 2)) from exc
        raise
    finally:
        stats.finished_at = time.perf_counter()
    with deferral:
        # Every frame was written unless the outcome says otherwise: a stop from here completes the
        # job (said in one line); only a segment join, which can take long, stops at once, its
        # segments kept for --resume (pipeline/report.py). While a stopped run finalizes its
        # partial output, further signals are only recorded.
        if outcome.complete and stats.source_failure is not None:  # every frame before it written: now the error
            outcome.failure = StageFailed("reader", stats.source_failure)
        excuse_late_stop(outcome, plan, parts, stats)
        _note_late_stop(stats, outcome)
        settling(stopping=outcome.interrupted is not None)
        if plan.output is None:
            where = f"{stats.num_frames_written} frame(s) went through the model; nothing was written (--output-mode none)."
        elif plan.picture_target is not None:
            where = settle_pictures(output, plan, stats, outcome)
        elif parts is not None:
            where = settle_segments(output, temp, plan, parts, stats, outcome, audio_shift=stages.audio_shift)
        else:
            where = settle_output(output, temp, stats, outcome)
        if plan.split is not None:
            _advise_on_split(stats)
        raise_for(outcome, where, stats)
        if stats.num_frames_decoded == 0:
            raise NoVideoStream(f"Source {str(config.source)!r} has no decodable video frames. Is the file damaged?")
        if stats.num_corrupt_packets:
            stats.warn(f"source: {stats.num_corrupt_packets} corrupt packet(s) skipped; every decodable frame was processed")
        if plan.model_rate_key and config.parallel:  # for the next run's choice of encoders (pipeline.encoder_choice)
            key = model_rate_key_as_run(plan, stats)  # a model kept eager: under "compiled no"
            remember_model_rate(model_rates_memo(), key, stats)
        stats.compile_helper_ran = (helper_was_running or bool(compile_helpers.pending())
                                    or compile_helpers.num_started() != helpers_started)  # this run's, or another's
        # The encoders' real speed where they bounded the run (`learn_content_factor`), unless a
        # compile helper took the CPUs meanwhile (on an H100 a first run whose helper compiled all
        # along taught 0.34 x the synthetic speed: 3 encoders planned where 1 had kept up).
        if plan.encoder_speed_key and plan.segments is not None and config.parallel and not stats.compile_helper_ran:
            learn_content_factor(stats, key=plan.encoder_speed_key, num_encoders=plan.num_encoders,
                                 num_cores=cores_for(config), speeds_memo=ProbeMemo(default_cache_dir() / ENCODER_SPEEDS_FILE),
                                 factors_memo=ProbeMemo(default_cache_dir() / ENCODER_FACTORS_FILE))
        _note_late_stop(stats, outcome)
    return stats


def _note_late_stop(stats: RunStats, outcome: Outcome) -> None:
    """A stop signal (or `run(stop=...)`) that came after the last frame was written: the job
    completes; say so (once)."""
    late, outcome.late_stop = outcome.late_stop or requested(), None
    if late is not None and outcome.interrupted is None:
        name = getattr(late, "signal_name", "") or ("SIGINT" if not isinstance(late, _Stopped) else "The stop request")
        stats.warn(f"{name} came after the last frame was written; the output was completed")


def _advise_on_split(stats: RunStats) -> None:
    """--split-gpu measured worse than two whole copies would be: say so (pipeline/split.py)."""
    from pipeline.split import split_advice

    halves = [w for name, w in stats.workers.items() if name.startswith(("split-a-", "split-b-"))]
    if len(halves) == 2:
        advice = split_advice(stats.num_frames_written, stats.wall_seconds, halves[0].clock.busy_seconds,
                              halves[1].clock.busy_seconds)
        if advice:
            stats.warn(advice)


def _fingerprint(plan: RunPlan) -> dict[str, object]:
    """What the source is, for --resume: a picture sequence's, or a video file's. Pictures written
    under their own source picture's name or number are matched by it, so the sequence may have
    lost or gained pictures since: a damaged picture moved away, as the run's error line asks
    (that refused the --resume the same line offered), or new ones put in. Where output names
    count positions (a pattern over unnumbered pictures) or frames do (a video), it must be the
    same sequence, and so where an output picture is made from its neighbours too (--interpolate's
    in-between pictures, a restoration model's window): one kept was made with the neighbours of
    then (and with --interpolate a folder output numbers unnumbered pictures by position too)."""
    if plan.pictures is None:
        return source_fingerprint(plan.config.source)
    target = plan.picture_target
    alone = plan.interpolate <= 1 and not plan.model.radius  # each picture made from its own source picture
    by_name = alone and target is not None and (target.pattern is None or None not in plan.pictures.numbers)
    return plan.pictures.fingerprint(by_name=by_name)


# -- the two ways to run the stages ---------------------------------------------------


def _describe_segments(plan: RunPlan, parts: PartsFolder) -> str:
    done = sum(entry["stop"] == plan.segments.stop_of(k) for k, entry in parts.finished().items())  # as build takes them
    resumed = f"; {done} finished segment(s) taken over from an earlier run" if done else ""
    tail = plan.segments.sizes_at_end()
    tapered = f" (the last {len(tail)} shorter, down to {tail[-1]}, to end together)" if tail else ""
    return (f"{plan.segments.segment_frames} frames a segment{tapered}, {plan.num_encoders} encoder(s) at once, "
            f"work folder {parts.path}{resumed}")


def _run_parallel(plan: RunPlan, stages: Stages, stats: RunStats, errors: ErrorChannel, on_progress: ProgressFn | None,
                  progress_seconds: float, stop: threading.Event) -> Outcome:
    cfg = plan.config
    num_workers = len(stages.workers)
    # The reorder window: frames handed to workers stay within `window` of the writer's
    # position, which bounds the collector's buffer even when one device stalls.
    window = cfg.queue_size + num_workers * max(cfg.max_batch_size if cfg.batch_size == 0 else cfg.batch_size, 1) * 2
    work_queue = WorkQueue(cfg.queue_size, window=window)
    results: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    to_writer: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    writer_done = threading.Event()
    delivered = work_queue.delivered
    if stages.back is not None:  # --split-gpu: frames between the halves are still in flight
        in_transit = stages.back.in_transit

        def delivered(index: int) -> bool:
            return work_queue.delivered(index) and index not in in_transit

    collector = Collector(on_release=work_queue.release_upto, is_delivered=delivered,
                          num_frames_in=lambda: stats.num_frames_decoded,
                          is_skipped=stages.skip or (lambda index: False))
    stats.queue_depths.update(work=work_queue.qsize, results=results.qsize, writer=to_writer.qsize)
    retired = _RetiredWorkers([w.name for w in stages.workers], stats, errors)
    runners = [StageRunner("reader", stages.reader, inbox=None, outbox=work_queue, errors=errors,
                           clock=stats.clock("reader"))]
    if stages.back is None:
        runners += [StageRunner(w.name, w, inbox=work_queue, outbox=FifoOutbox(results), errors=errors,
                                clock=stats.workers[w.name].clock, on_retire=retired.add) for w in stages.workers]
    else:  # --split-gpu: front -> a 2-deep queue -> back, each half in its own thread (pipelined)
        from pipeline.split import AfterPut

        front, back = stages.workers[0], stages.back
        handoffs: queue.Queue = queue.Queue(maxsize=2)
        runners += [StageRunner(front.name, front, inbox=work_queue, outbox=FifoOutbox(handoffs), errors=errors,
                                clock=stats.workers[front.name].clock),
                    StageRunner(back.name, back, inbox=FifoInbox(handoffs), outbox=AfterPut(FifoOutbox(results),
                                back.in_transit), errors=errors, clock=stats.workers[back.name].clock)]
    runners.append(StageRunner("collector", collector, inbox=FifoInbox(results, num_producers=num_workers),
                               outbox=FifoOutbox(to_writer, consumer_gone=writer_done), errors=errors,
                               clock=stats.clock("collector"), on_stop="drain"))
    writer = StageRunner("writer", stages.writer, inbox=FifoInbox(to_writer), outbox=None, errors=errors,
                         clock=stats.clock("writer"), on_stop="until_end", stop_budget_seconds=1.0)

    def writer_body() -> None:
        try:
            writer.run()
        finally:
            writer_done.set()

    threads = [threading.Thread(target=r.run, name=r.name, daemon=True) for r in runners]
    writer_thread = threading.Thread(target=writer_body, name="writer", daemon=False)  # always joined
    outcome = Outcome()
    sampler = DeviceSampler(stats)
    for t in [*threads, writer_thread]:
        t.start()
    try:
        # Waiting on an Event, not Thread.join: a Ctrl-C that interrupts join() can leave
        # CPython believing the thread has ended (is_alive() False) while it still runs.
        # A stop signal is raised here only (run() holds core.stopping's deferral).
        while not writer_done.wait(progress_seconds):
            sampler.maybe_sample()
            stats.note_settled()
            if errors.first() is not None:
                work_queue.abort()
            if on_progress is not None:
                _report_progress(on_progress, stats)
            _raise_if_stopped(stop)
        # The writer ended with every frame written: a stop that came with the last tick is late
        # (the job completes, one line says so).
    except KeyboardInterrupt as exc:
        outcome.interrupted = exc
    finally:
        stats.note_settled()  # a run shorter than a tick: settled by its end
        finishing()
        errors.stop.set()
        work_queue.abort()
        _wait_quietly(writer_done)
        for t in [writer_thread, *threads]:
            _join_quietly(t, timeout=None if t is writer_thread else 5.0)
        still = [t.name for t in threads if t.is_alive()]
        if still:
            log.warning("threads still finishing their current batch at exit: %s", ", ".join(still))
        if on_progress is not None:
            _report_progress(on_progress, stats)
    outcome.failure = errors.first()
    outcome.writer_closed_cleanly = writer.closed_cleanly and getattr(stages.writer, "closed_cleanly", True)
    outcome.num_dropped_at_stop = writer.num_dropped_at_stop + getattr(stages.writer, "num_dropped_at_stop", 0)
    return outcome


class _RetiredWorkers:
    """Counts workers whose device left the run; when none is left, that is the run's failure."""

    def __init__(self, names: list[str], stats: RunStats, errors: ErrorChannel) -> None:
        self.names = names
        self.stats = stats
        self.errors = errors
        self._retired: set[str] = set()
        self._lock = threading.Lock()

    def add(self, name: str, exc: BaseException) -> None:
        with self._lock:
            self._retired.add(name)
            if len(self._retired) == len(self.names):
                self.errors.post("workers", _every_device_failed(self.names, self.stats))


def _every_device_failed(names: list[str], stats: RunStats) -> HardwareUnavailable:
    detail = "; ".join(f"{name}: {stats.workers[name].num_failures} fault(s)" for name in names)
    return HardwareUnavailable(f"every device failed: {detail}")


class _Stopped(KeyboardInterrupt):
    """`run(stop=...)` was set: the run stops as on Ctrl-C."""

    signal_name = ""
    signal_number = 2


def _raise_if_stopped(stop: threading.Event) -> None:
    """Between batches or progress ticks, where no lock is held: a stop request or a stop signal."""
    if stop.is_set():
        raise _Stopped()
    signalled = requested()
    if signalled is not None:
        raise signalled


def _run_sequential(plan: RunPlan, stages: Stages, stats: RunStats, errors: ErrorChannel,
                    on_progress: ProgressFn | None, progress_seconds: float, stop: threading.Event) -> Outcome:
    """The in-tree baseline: the same stages, one batch at a time, in this thread."""
    reader, worker, writer = stages.reader, stages.workers[0], stages.writer
    if stages.back is not None:  # --split-gpu: both halves, one after the other
        from pipeline.split import SequentialSplit

        worker = SequentialSplit(worker, stages.back)
    wclock, rclock, oclock = stats.workers[worker.name].clock, stats.clock("reader"), stats.clock("writer")
    outcome = Outcome()
    reached_end = False

    def flush(batch: list) -> None:
        while True:
            try:
                with wclock.busy(), interruptible():  # a stop never waits for a batch (seconds on a CPU)
                    results = list(worker.process(batch))
                break
            except Retry as exc:
                time.sleep(exc.after_seconds)
            except Retire as exc:
                raise _every_device_failed([worker.name], stats) from exc
        with oclock.busy():
            for r in results:
                writer.process(r)
        batch.clear()
        stats.note_settled()
        if on_progress is not None:
            _report_progress(on_progress, stats)
        _raise_if_stopped(stop)

    # The encoder pool, the segment writer and the decoders have threads of their own: a stop
    # signal is raised between frames, or inside the model's work (core/stopping.py).
    try:
        _raise_if_stopped(stop)  # one that came while the stages were built
        with wclock.busy(), interruptible():
            worker.start()
        _raise_if_stopped(stop)
        batch: list = []
        frames = iter(reader.finish())
        while True:
            with rclock.busy():
                frame = next(frames, None)
            if frame is None:
                break
            batch.append(frame)
            if len(batch) >= take_size(worker):
                flush(batch)
            else:
                _raise_if_stopped(stop)
        if batch:
            flush(batch)
        writer.finish()  # every frame written: a stop from here is late (the job completes)
        reached_end = True
    except KeyboardInterrupt as exc:
        outcome.interrupted = exc
    except Retire:
        outcome.failure = StageFailed("workers", _every_device_failed([worker.name], stats))
    except BaseException as exc:  # noqa: BLE001 - reported by run() with where the output is
        outcome.failure = StageFailed("sequential", exc)
    finishing()
    for name, stage, complete in (("reader", reader, reached_end), (worker.name, worker, reached_end),
                                  ("writer", writer, reached_end and outcome.complete)):
        error = _close_quietly(stage, complete=complete)
        if error is None and name == "writer":
            outcome.writer_closed_cleanly = getattr(stage, "closed_cleanly", True)
        elif error is not None and name == "writer" and outcome.complete:
            # Every frame went in, and the file could not be finalized (a muxer refusing its
            # trailer): the run's error, as in a parallel run. Before, the run counted as
            # complete, its unplayable file was removed, and it exited 0 naming an output that
            # did not exist.
            outcome.failure = StageFailed("writer", error)
        elif error is not None:  # a second error: logged, never raised over the first
            log.warning("while stopping: %s", error)
    return outcome


def _close_quietly(stage, *, complete: bool) -> Exception | None:
    """Close a stage; the error it raised (for the caller to report or log), None when closed."""
    while True:
        try:
            stage.close(complete=complete)
            return None
        except KeyboardInterrupt:
            log.warning("still finalizing the output file; please wait")
        except Exception as exc:  # noqa: BLE001
            return exc


def _report_progress(on_progress: ProgressFn, stats: RunStats) -> None:
    """The display must never take the run down (e.g. a terminal gone after SIGHUP)."""
    try:
        on_progress(stats)
    except (OSError, ValueError) as exc:
        log.debug("progress display failed: %s", exc)


def _join_quietly(thread: threading.Thread, *, timeout: float | None) -> None:
    """Join, even through further Ctrl-C presses (the process must not leave threads behind)."""
    deadline = None if timeout is None else time.perf_counter() + timeout
    while thread.is_alive() and (deadline is None or time.perf_counter() < deadline):
        try:
            thread.join(0.1)
        except KeyboardInterrupt:
            log.warning("still stopping; please wait")


def _wait_quietly(done: threading.Event) -> None:
    """Wait for the writer even if Ctrl-C is pressed again: it is finalizing the file."""
    while not done.is_set():
        try:
            done.wait(0.1)
        except KeyboardInterrupt:
            log.warning("still finalizing the output file; please wait")
