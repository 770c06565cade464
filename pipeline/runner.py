"""Runner: wires the stages of one run together and owns their lifetime.

`run(config)` checks everything a user can get wrong before any thread starts
(source, output, model, scale, devices), then either

- `--parallel`: reader -> WorkQueue -> workers (one per device) -> results queue ->
  collector -> writer queue -> writer, each stage in its own named thread; or
- the sequential baseline: the same stage code called in one plain loop.

Failures: each stage posts `StageFailed` on the one error channel and the runner
re-raises the first as `StageError` (its cause attached). Ctrl-C sets the stop event.
Either way every thread is joined, the writer finalizes a playable file holding every
frame finished so far, and the figures stay in `RunStats`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from core.errors import one_line
from core.files import OutputFile, check_output_paths
from hw.avio import PyAVDecoder, PyAVWriter, SourceInfo, probe_source
from pipeline.collector import Collector, FramesLost
from pipeline.config import DEFAULT_PRESET, NVENC_PRESETS, RunConfig, default_output_path
from pipeline.errors import (
    FramepipeError,
    HardwareUnavailable,
    InvalidOption,
    NoVideoStream,
    RunInterrupted,
    StageError,
)
from pipeline.messages import ErrorChannel, ResultItem, StageFailed
from pipeline.reader import Reader
from pipeline.scheduling import WorkQueue
from pipeline.stats import RunStats
from pipeline.worker import Worker
from pipeline.writer import Writer

__all__ = ["run", "plan_devices", "DevicePlan", "RunPlan", "prepare"]

log = logging.getLogger("runner")

ProgressFn = Callable[[RunStats], None]


@dataclass(frozen=True)
class DevicePlan:
    devices: tuple[torch.device, ...]
    note: str = ""  # one line for the user when the request was adjusted (fallbacks)


def plan_devices(config: RunConfig) -> DevicePlan:
    """Turn --device / --multi-gpu / --gpus / --cpu-workers into worker devices."""
    from hw.gpus import list_gpus, parse_gpu_list

    gpus = list_gpus()
    num_gpus = len(gpus)
    device = (config.device or "auto").lower()
    if device not in ("auto", "cpu", "cuda") and not (device.startswith("cuda:") and device[5:].isdigit()):
        raise InvalidOption(f"Invalid --device ({config.device!r}): allowed are auto, cpu, cuda, cuda:N.")
    if config.gpus is not None:
        if device == "cpu":
            raise InvalidOption("--gpus was given with --device cpu. Drop one of them.")
        indices = parse_gpu_list(config.gpus, num_gpus)
        return DevicePlan(tuple(torch.device("cuda", i) for i in indices))
    if device == "cpu" or (device == "auto" and num_gpus == 0):
        note = ""
        if config.multi_gpu:
            note = "--multi-gpu: no CUDA GPU is visible; running on the CPU."
        return DevicePlan(tuple(torch.device("cpu") for _ in range(config.cpu_workers)), note)
    if num_gpus == 0:
        raise InvalidOption(
            f"--device {config.device}: no CUDA GPU is visible to torch {torch.__version__}"
            f" ({'CUDA build' if torch.version.cuda else 'CPU-only build'}). Use --device cpu, or install a CUDA build of torch."
        )
    if device.startswith("cuda:"):
        index = int(device[5:])
        if index >= num_gpus:
            raise InvalidOption(
                f"Invalid --device ({config.device}): this machine has GPUs 0-{num_gpus - 1}. Use e.g. --device cuda:0."
            )
        if not config.multi_gpu:
            return DevicePlan((torch.device("cuda", index),))
    if config.multi_gpu:
        if num_gpus == 1:
            return DevicePlan((torch.device("cuda", 0),), "--multi-gpu: only 1 GPU is visible; running single-GPU.")
        return DevicePlan(tuple(torch.device("cuda", i) for i in range(num_gpus)))
    return DevicePlan((torch.device("cuda", 0),))


@dataclass
class RunPlan:
    """Everything decided before the first frame: what runs where, and what it makes."""

    config: RunConfig
    source: SourceInfo
    model: object  # models.LoadedModel
    devices: DevicePlan
    dtypes: dict[str, tuple[torch.dtype, str]]
    output_width: int
    output_height: int
    use_nvdec: bool
    use_nvenc: bool
    notes: list[str]


def prepare(config: RunConfig) -> RunPlan:
    """Check every input and decide the run; raises a FramepipeError (one line) on bad input."""
    from models import choose_precision, load_model

    config.validate()
    source = probe_source(config.source)
    if config.output is not None:  # cheap checks first: before a model is loaded or converted
        _check_paths(config)
    model = load_model(config.model, scale=config.scale)
    if config.output is None:  # named after the model's real scale, beside the source or in output_dir
        name = default_output_path(config.source, model_name=Path(config.model).stem, scale=model.scale)
        config.output = (config.output_dir / name.name) if config.output_dir is not None else name
        config.validate()
        _check_paths(config)
    devices = plan_devices(config)
    notes = [devices.note] if devices.note else []
    if config.codec == "h264" and config.crf == 0:
        notes.append("--quality 0 is lossless: x264 then writes the High 4:4:4 Predictive profile, which many "
                     "players (browsers, phones, QuickTime) cannot play. Use --quality 1 or more for a widely playable file.")
    if not config.parallel and len(devices.devices) > 1:
        notes.append(f"{len(devices.devices)} workers need --parallel; the sequential loop runs one, on {devices.devices[0]}.")
        devices = DevicePlan(devices.devices[:1], devices.note)
    dtypes: dict[str, tuple[torch.dtype, str]] = {}
    for dev in devices.devices:
        if str(dev) not in dtypes:
            dtype, why = choose_precision(config.precision, dev)
            if not model.supports_dtype(dtype):
                dtype, why = torch.float32, f"fp32: model {model.name} supports only fp32"
            dtypes[str(dev)] = (dtype, why)
    out_w, out_h = source.width * model.scale, source.height * model.scale
    out_w, out_h = out_w + out_w % 2, out_h + out_h % 2
    use_nvdec, use_nvenc = _plan_codecs(config, source, devices, notes, output_size=(out_w, out_h))
    return RunPlan(config, source, model, devices, dtypes, out_w, out_h, use_nvdec, use_nvenc, notes)


def _check_paths(config: RunConfig) -> None:
    """Every file the run writes against every file it reads (core.files has the rules)."""
    outputs = [("--output", config.output)]
    if config.stats_json is not None:
        outputs.append(("--stats-json", config.stats_json))
    inputs = [("--source", config.source)]
    if Path(config.model).suffix and Path(config.model).exists():
        inputs.append(("--model", Path(config.model)))
    check_output_paths(outputs, inputs=inputs, overwrite=config.overwrite or config.replace_default_output)


def _plan_codecs(config: RunConfig, source: SourceInfo, devices: DevicePlan, notes: list[str], *,
                 output_size: tuple[int, int] | None = None) -> tuple[bool, bool]:
    """Decide NVDEC/NVENC; where requested but absent, one line says what is used instead."""
    first = devices.devices[0]
    use_nvdec = use_nvenc = False
    if config.nvdec:
        if first.type != "cuda":
            notes.append("--nvdec: no NVIDIA GPU in use; decoding on the CPU with PyAV instead.")
        else:
            ok, why = _probe("probe_nvdec", codec=source.codec, bit_depth=source.bit_depth,
                             chroma_format=source.chroma_format or "420", width=source.width,
                             height=source.height, gpu=first.index or 0)
            use_nvdec = ok
            if not ok:
                notes.append(f"--nvdec: {why}; decoding on the CPU with PyAV instead.")
    if config.nvenc:
        if first.type != "cuda":
            notes.append("--nvenc: no NVIDIA GPU in use; encoding on the CPU (libx264/x265/SVT-AV1) instead.")
        else:
            size = dict(zip(("width", "height"), output_size)) if output_size else {}  # NVENC checks the real size
            ok, why = _probe("probe_nvenc", codec=config.codec, gpu=first.index or 0, **size)
            use_nvenc = ok
            if not ok:
                notes.append(f"--nvenc: {why}; encoding on the CPU from GPU-converted yuv420p instead.")
    if config.preset in NVENC_PRESETS and not use_nvenc:
        notes.append(f"--preset {config.preset} is an NVENC preset; the CPU encoder uses its default "
                     f"({DEFAULT_PRESET[config.codec]}).")
        config.preset = None
    return use_nvdec, use_nvenc


def _probe(name: str, **kwargs) -> tuple[bool, str]:
    """Run a PyNvVideoCodec probe in a thread of its own.

    A failed `CreateEncoder` can leave a CUDA context of its own current on the calling
    thread; the NVDEC decoder created next on that thread then ran in it, and the worker's
    convolutions failed with CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH (seen on an H100 with
    --nvdec --nvenc). A short-lived thread takes whatever it leaves behind with it.
    """
    result: list[tuple[bool, str]] = []

    def body() -> None:
        try:
            from hw import nvcodec

            result.append(getattr(nvcodec, name)(**kwargs))
        except HardwareUnavailable as exc:
            result.append((False, str(exc)))
        except Exception as exc:  # noqa: BLE001 - a probe that breaks means "not available"
            result.append((False, f"{name} failed: {exc}"))

    thread = threading.Thread(target=body, name=f"probe-{name}", daemon=True)
    thread.start()
    thread.join()
    return result[0] if result else (False, f"{name} did not finish")


class _PyAVEncoder:
    """Adapts `PyAVWriter` to the writer's `Encoder` protocol (yuv420p host planes)."""

    def __init__(self, writer: PyAVWriter) -> None:
        self.writer = writer

    def write_result(self, item: ResultItem) -> None:
        y, u, v = item.planes
        self.writer.write(y, u, v, pts=item.pts)

    def close(self, *, complete: bool) -> None:
        self.writer.close(complete=complete)


def _open_source(plan: RunPlan, warn: Callable[[str], None]):
    if plan.use_nvdec:
        from hw.gpu_io import NvdecSource

        return NvdecSource(plan.config.source, gpu=plan.devices.devices[0].index or 0)
    return PyAVDecoder(plan.config.source, warn=warn)


def _open_encoder(plan: RunPlan, path: Path, warn: Callable[[str], None]):
    """The encoder writing `path` (the output's temporary file; renamed into place at the end)."""
    cfg = plan.config
    src = plan.source
    if plan.use_nvenc:
        from hw.gpu_io import NvencFileWriter

        return NvencFileWriter(
            path, gpu=plan.devices.devices[0].index or 0, codec=cfg.codec, width=plan.output_width,
            height=plan.output_height, time_base=src.time_base, frame_rate=src.average_rate, color=src.color,
            source_path=cfg.source if cfg.copy_audio else None, warn=warn, qp=cfg.crf,
            preset=cfg.preset if cfg.preset in NVENC_PRESETS else "p4",
        )
    writer = PyAVWriter(
        path,
        width=plan.output_width,
        height=plan.output_height,
        time_base=src.time_base,
        frame_rate=src.average_rate,
        color=src.color,
        codec=cfg.codec,
        crf=cfg.crf_or_default,
        preset=cfg.preset_or_default,
        source_path=cfg.source,
        copy_audio=cfg.copy_audio,
        warn=warn,
        sample_aspect_ratio=src.sample_aspect_ratio,
        display_matrix=src.display_matrix,
    )
    return _PyAVEncoder(writer)


def _worker_names(devices: tuple[torch.device, ...]) -> list[str]:
    names, counts = [], {}
    for dev in devices:
        if dev.type == "cuda":
            names.append(f"worker-gpu{dev.index}")
        else:
            n = counts.get("cpu", 0)
            counts["cpu"] = n + 1
            names.append(f"worker-cpu{n}")
    return names


def _make_workers(plan: RunPlan, work_queue, results, stats, errors, stop, *, num_workers: int | None = None) -> list[Worker]:
    cfg = plan.config
    faults_by_worker = cfg.faults.get("workers", {})
    devices = plan.devices.devices[:num_workers]
    workers = []
    for name, dev in zip(_worker_names(devices), devices):
        dtype = plan.dtypes[str(dev)][0]
        batch = cfg.batch_size
        if batch == 0 and dev.type == "cpu":
            batch = 1
        workers.append(
            Worker(
                name,
                dev,
                plan.model.build,
                work_queue,
                results,
                stats=stats,
                errors=errors,
                stop=stop,
                color=plan.source.color,
                dtype=dtype,
                output_format="nv12" if plan.use_nvenc else "yuv420p",
                batch_size=batch,
                max_batch_size=cfg.max_batch_size,
                frame_size=(plan.source.height, plan.source.width),
                backoff_seconds=float(cfg.faults.get("backoff_seconds", 2.0)),
                faults=faults_by_worker.get(name),
                model_name=plan.model.name,
                scale=plan.model.scale,
            )
        )
    return workers


def _describe(plan: RunPlan, stats: RunStats) -> None:
    cfg, src = plan.config, plan.source
    stats.notes.update(
        source=str(cfg.source),
        output=str(cfg.output),
        source_video=f"{src.width}x{src.height} {src.codec} {src.pix_fmt} {float(src.average_rate or 0):.3f} fps",
        output_video=f"{plan.output_width}x{plan.output_height} {cfg.codec}",
        model=plan.model.name,
        arch=plan.model.arch,
        scale=plan.model.scale,
        precision={dev: why for dev, (_, why) in plan.dtypes.items()},
        devices=[str(d) for d in plan.devices.devices],
        decoder="NVDEC" if plan.use_nvdec else "PyAV (CPU)",
        encoder="NVENC" if plan.use_nvenc else f"PyAV {cfg.codec} (CPU, fed yuv420p)",
        mode="parallel" if cfg.parallel else "sequential",
    )
    stats.notes["fallbacks"] = list(plan.notes)
    if src.color.matrix_guessed:
        stats.notes["color_matrix"] = f"{src.color.matrix} (source untagged; chosen by height, and tagged in the output)"
    expected = src.num_frames_from_header
    if cfg.max_frames is not None:
        expected = min(expected, cfg.max_frames) if expected else cfg.max_frames
    stats.num_frames_expected = expected


@dataclass
class _Outcome:
    """How the stages ended: stopped by a signal, failed (first failure), or complete."""

    interrupted: KeyboardInterrupt | None = None
    failure: StageFailed | None = None
    writer: Writer | None = None

    @property
    def complete(self) -> bool:
        return self.interrupted is None and self.failure is None


def run(
    config: RunConfig,
    *,
    on_progress: ProgressFn | None = None,
    on_start: Callable[[RunPlan, RunStats], None] | None = None,
    progress_seconds: float = 0.1,
) -> RunStats:
    """Run one job end to end. Raises FramepipeError (bad input, stage failure, a signal).

    The output is written to a hidden temporary file beside it (the output name locked
    against a second run) and renamed into place at the end: a complete run replaces an
    existing output only with --overwrite; a stopped run's finalized partial file takes
    the output name only where there was no file, else `<stem>.partial<suffix>`; a run
    that wrote no frame leaves nothing behind.
    """
    plan = prepare(config)
    stats = RunStats()
    _describe(plan, stats)
    output = OutputFile(config.output, overwrite=config.overwrite or config.replace_default_output)
    temp = output.begin()
    try:
        if on_start is not None:
            on_start(plan, stats)
        if config.parallel:
            outcome = _run_parallel(plan, stats, temp, on_progress, progress_seconds)
        else:
            outcome = _run_sequential(plan, stats, temp, on_progress)
    except BaseException as exc:  # nothing was started (bad settings found by the encoder, a signal)
        output.discard()
        if isinstance(exc, KeyboardInterrupt):
            raise RunInterrupted("before the first frame; no output file was left behind.",
                                 signal_name=getattr(exc, "signal_name", ""),
                                 signal_number=getattr(exc, "signal_number", 2)) from exc
        raise
    finally:
        stats.finished_at = time.perf_counter()
    where = _settle_output(output, temp, stats, outcome)
    _raise_for(outcome, where, stats)
    if stats.num_frames_decoded == 0:
        raise NoVideoStream(f"Source {str(config.source)!r} has no decodable video frames. Is the file damaged?")
    if stats.num_corrupt_packets:
        stats.warn(f"source: {stats.num_corrupt_packets} corrupt packet(s) skipped; every decodable frame was processed")
    return stats


def _settle_output(output: OutputFile, temp: Path, stats: RunStats, outcome: _Outcome) -> str:
    """Put the temporary file where it belongs; returns one sentence saying where that is."""
    written = stats.num_frames_written
    if written == 0:
        output.discard()
        return "No frame was written, and no output file was left behind."
    writer = outcome.writer
    if writer is not None and not writer.finished_cleanly:
        playable = _count_decodable_frames(temp)
        if playable == 0:
            output.discard()
            return (f"{written} frame(s) were given to the encoder, but the file could not be finalized and nothing in "
                    "it plays: it was removed.")
        final = output.commit(complete=False)
        stats.notes["output"] = str(final)
        return f"Finalizing failed; {playable} of {written} frame(s) decode from {final}."
    final = output.commit(complete=outcome.complete)
    stats.notes["output"] = str(final)
    if outcome.complete:
        return ""
    dropped = writer.num_frames_dropped_at_stop if writer is not None else 0
    dropped_text = f" ({dropped} queued frame(s) dropped to stop quickly)" if dropped else ""
    kept = f" The existing {output.path} was left unchanged." if final != output.path else ""
    return f"{written} frame(s) written to {final} (finalized, playable){dropped_text}.{kept}"


def _count_decodable_frames(path: Path) -> int:
    """How many video frames of `path` decode (0 when the file does not open)."""
    import av

    from core.files import ffmpeg_path

    try:
        with av.open(ffmpeg_path(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, OSError, ValueError, IndexError):
        return 0


def _raise_for(outcome: _Outcome, where: str, stats: RunStats) -> None:
    """Raise the run's one error (with where its output is), if it did not complete."""
    if outcome.interrupted is not None:
        exc = outcome.interrupted
        name = getattr(exc, "signal_name", "")
        raise RunInterrupted(where, signal_name=name, signal_number=getattr(exc, "signal_number", 2)) from exc
    if outcome.failure is None:
        return
    exc = outcome.failure.exc
    if isinstance(exc, InvalidOption) and stats.num_frames_written == 0:  # bad input found late (the encoder)
        raise exc
    if isinstance(exc, FramepipeError):
        raise type(exc)(f"{one_line(exc).rstrip('.')}. {where}") from exc
    raise StageError(outcome.failure.stage, f"{type(exc).__name__}: {one_line(exc)}. {where}") from exc


def _fault(config: RunConfig, stage: str) -> int | None:
    return config.faults.get(stage, {}).get("fail_at_frame")


def _run_sequential(plan: RunPlan, stats: RunStats, path: Path, on_progress: ProgressFn | None) -> _Outcome:
    """The in-tree baseline: decode, infer, encode one batch at a time in one thread."""
    cfg = plan.config
    stop = threading.Event()
    errors = ErrorChannel(stop)
    source = _open_source(plan, stats.warn)
    try:
        encoder = _open_encoder(plan, path, stats.warn)
    except BaseException:
        source.close()
        raise
    dummy_queue = WorkQueue(1)
    reader = Reader(source, dummy_queue, stats=stats, errors=errors, stop=stop, max_frames=cfg.max_frames,
                    fail_at_frame=_fault(cfg, "reader"))
    worker = _make_workers(plan, dummy_queue, None, stats, errors, stop, num_workers=1)[0]
    writer = Writer(encoder, queue.Queue(), stats=stats, errors=errors, stop=stop, fail_at_frame=_fault(cfg, "writer"),
                    max_frames=cfg.max_frames)
    outcome = _Outcome(writer=writer)
    try:
        worker.setup()
        batch: list = []

        def flush() -> None:
            with worker.ws.clock.busy():
                results = worker.process_all(batch)
            for r in results:
                writer.write(r)
            batch.clear()
            if on_progress is not None:
                on_progress(stats)

        for item in reader.frames():
            batch.append(item)
            if len(batch) >= worker.batch_size:
                flush()
        if batch:
            flush()
        writer.complete = True
    except KeyboardInterrupt as exc:
        stop.set()
        outcome.interrupted = exc
    except BaseException as exc:  # noqa: BLE001 - reported by run() with where the output is
        stop.set()
        outcome.failure = StageFailed("sequential", exc)
    _finish_quietly(source, writer)
    return outcome


def _finish_quietly(source, writer: Writer) -> None:
    """Close both ends; a second error here is logged, never raised over the first."""
    for close in (source.close, writer.finish):
        while True:
            try:
                close()
                break
            except KeyboardInterrupt:
                log.warning("still finalizing the output file; please wait")
            except Exception as exc:  # noqa: BLE001
                log.warning("while stopping: %s", exc)
                break


def _run_parallel(plan: RunPlan, stats: RunStats, path: Path, on_progress: ProgressFn | None,
                  progress_seconds: float) -> _Outcome:
    cfg = plan.config
    stop = threading.Event()
    errors = ErrorChannel(stop)
    num_workers = len(plan.devices.devices)
    window = cfg.queue_size + num_workers * max(cfg.max_batch_size if cfg.batch_size == 0 else cfg.batch_size, 1) * 2
    work_queue = WorkQueue(cfg.queue_size, window=window)
    results: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    to_writer: queue.Queue = queue.Queue(maxsize=cfg.queue_size)
    source = _open_source(plan, stats.warn)
    try:
        encoder = _open_encoder(plan, path, stats.warn)
    except BaseException:
        source.close()
        raise
    reader = Reader(source, work_queue, stats=stats, errors=errors, stop=stop, max_frames=cfg.max_frames,
                    fail_at_frame=_fault(cfg, "reader"))
    workers = _make_workers(plan, work_queue, results, stats, errors, stop)
    # Waiting uses an Event, not Thread.join: a Ctrl-C that interrupts join() can leave
    # CPython believing the thread has ended (is_alive() False) while it still runs.
    writer_done = threading.Event()
    collector = Collector(results, to_writer, work_queue, num_workers=num_workers, stats=stats, errors=errors, stop=stop,
                          writer_done=writer_done)
    writer = Writer(encoder, to_writer, stats=stats, errors=errors, stop=stop, fail_at_frame=_fault(cfg, "writer"),
                    max_frames=cfg.max_frames)
    stats.queue_depths.update(work=work_queue.qsize, results=results.qsize, writer=to_writer.qsize)
    outcome = _Outcome(writer=writer)

    threads = [threading.Thread(target=reader.run, name="reader", daemon=True)]
    threads += [threading.Thread(target=w.run, name=w.name, daemon=True) for w in workers]
    threads.append(threading.Thread(target=collector.run, name="collector", daemon=True))

    def writer_body() -> None:
        try:
            writer.run()
        finally:
            writer_done.set()

    writer_thread = threading.Thread(target=writer_body, name="writer", daemon=False)
    for t in threads:
        t.start()
    writer_thread.start()

    sampler = _DeviceSampler(stats)
    try:
        while not writer_done.wait(progress_seconds):
            sampler.maybe_sample()
            if outcome.failure is None:
                outcome.failure = errors.first()
                if outcome.failure is None and _all_workers_failed(workers):
                    errors.post("workers", _every_device_failed(workers))
                    outcome.failure = errors.first()
                if outcome.failure is not None:
                    work_queue.abort()
            if on_progress is not None:
                _report_progress(on_progress, stats)
    except KeyboardInterrupt as exc:
        outcome.interrupted = exc
    finally:
        stop.set()
        work_queue.abort()
        _wait_quietly(writer_done)
        for t in [writer_thread, *threads]:
            _join_quietly(t, timeout=None if t is writer_thread else 5.0)
        still = [t.name for t in threads if t.is_alive()]
        if still:
            log.warning("threads still finishing their current batch at exit: %s", ", ".join(still))
        if on_progress is not None:
            _report_progress(on_progress, stats)
    if outcome.failure is None:
        outcome.failure = errors.first()
    if outcome.failure is None and _all_workers_failed(workers):
        outcome.failure = StageFailed("workers", _every_device_failed(workers))
    if outcome.failure is None and outcome.interrupted is None and stats.num_frames_written != stats.num_frames_decoded:
        outcome.failure = StageFailed("collector", FramesLost(
            f"{stats.num_frames_decoded} frame(s) decoded but {stats.num_frames_written} written"))
    return outcome


def _report_progress(on_progress: ProgressFn, stats: RunStats) -> None:
    """The display must never take the run down (e.g. a terminal gone after SIGHUP)."""
    try:
        on_progress(stats)
    except (OSError, ValueError) as exc:
        log.debug("progress display failed: %s", exc)


class _DeviceSampler:
    """Reads each GPU worker's memory and utilisation from NVML about once a second."""

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


def _every_device_failed(workers: list[Worker]) -> HardwareUnavailable:
    detail = "; ".join(f"{w.name}: {w.ws.num_failures} fault(s)" for w in workers)
    return HardwareUnavailable(f"every device failed: {detail}")


def _all_workers_failed(workers: list[Worker]) -> bool:
    return bool(workers) and all(w.ws.health == "failed" for w in workers)


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
