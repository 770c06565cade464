"""The end of a run: its description, where its output goes, and its one error.

`describe` writes what the run is (source, model, devices, codecs, fallbacks) into the
run's notes (the summary and `--stats-json` read them). After the stages have stopped,
`settle_output` moves the output's temporary file where it belongs (`core.files.OutputFile`)
and says where that is in one sentence; `raise_for` raises the run's one error, if any.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from core.errors import DiskFull, FramepipeError, InvalidOption, RunInterrupted, StageError, one_line
from core.files import OutputFile, ffmpeg_path
from core.stopping import interruptible
from pipeline.messages import StageFailed
from pipeline.plan import RunPlan
from pipeline.stats import RunStats

__all__ = ["Outcome", "describe", "settle_output", "settle_pictures", "settle_segments", "raise_for", "pixel_settings"]


@dataclass
class Outcome:
    """How the stages ended: stopped by a signal, failed (first failure), or complete."""

    interrupted: KeyboardInterrupt | None = None
    failure: StageFailed | None = None
    writer_closed_cleanly: bool = False
    num_dropped_at_stop: int = 0
    late_stop: KeyboardInterrupt | None = None  # a stop that came when every frame was in: the job completed

    @property
    def complete(self) -> bool:
        return self.interrupted is None and self.failure is None


def settle_output(output: OutputFile, temp: Path, stats: RunStats, outcome: Outcome) -> str:
    """Put the temporary file where it belongs; returns one sentence saying where that is. The
    counts are the output's frames: with --interpolate, the made ones too (as segmented and
    picture outputs count them)."""
    written = stats.num_frames_written + stats.num_frames_made
    if written == 0:
        output.discard()
        return "No frame was written, and no output file was left behind."
    if not outcome.writer_closed_cleanly:
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
    dropped = outcome.num_dropped_at_stop
    dropped_text = f" ({dropped} queued frame(s) dropped to stop quickly)" if dropped else ""
    kept = f" The existing {output.path} was left unchanged." if final != output.path else ""
    return f"{written} frame(s) written to {final} (finalized, playable){dropped_text}.{kept}"


def settle_pictures(output, plan: RunPlan, stats: RunStats, outcome: Outcome) -> str:
    """Picture output: every picture on disk is whole (each was renamed into place); one
    sentence says how many this run wrote (made ones included) and how to finish a stopped run."""
    written = stats.num_frames_written + stats.num_frames_made
    if written == 0 and not outcome.complete:
        output.discard()
        return "No picture was written."
    final = output.commit(complete=outcome.complete)
    stats.notes["output"] = str(final)
    if outcome.complete:
        return ""
    return (f"{written} picture(s) written to {final}, each complete; the same command with --resume writes the "
            "rest.")


def _count_decodable_frames(path: Path) -> int:
    """How many video frames of `path` decode (0 when the file does not open)."""
    import av

    try:
        with av.open(ffmpeg_path(path)) as container:
            return sum(1 for _ in container.decode(video=0))
    except (av.error.FFmpegError, OSError, ValueError, IndexError):
        return 0


def raise_for(outcome: Outcome, where: str, stats: RunStats) -> None:
    """Raise the run's one error (with where its output is), if it did not complete."""
    if outcome.interrupted is not None:
        exc = outcome.interrupted
        raise RunInterrupted(where, signal_name=getattr(exc, "signal_name", ""),
                             signal_number=getattr(exc, "signal_number", 2)) from exc
    if outcome.failure is None:
        return
    exc = outcome.failure.exc
    if isinstance(exc, InvalidOption) and stats.num_frames_written == 0:  # bad input found late (the encoder)
        raise exc
    if isinstance(exc, FramepipeError):
        raise type(exc)(f"{one_line(exc).rstrip('.')}. {where}") from exc
    line = one_line(exc)
    hint = " (a model that cannot run in this precision: try --precision fp32)" if _DTYPE_CLASH.search(line) else ""
    raise StageError(outcome.failure.stage, f"{type(exc).__name__}: {line}{hint}. {where}") from exc


# torch's words where a model's layers meet a tensor of another dtype (a model run in bf16/fp16 that
# keeps fp32 parts of its own, e.g. SwinIR's attention masks): "expected m1 and m2 to have the same
# dtype", "Input type (c10::BFloat16) and bias type (float) should be the same"
_DTYPE_CLASH = re.compile(r"same dtype|type \(\S+\) and \w+ type \(\S+\) should be the same|"
                          r"expected scalar type \w+ but found \w+", re.IGNORECASE)


def describe(plan: RunPlan, stats: RunStats) -> None:
    cfg, src = plan.config, plan.source
    stats.notes.update(
        source=str(cfg.source),
        output=str(plan.output) if plan.output is not None else "none (--output-mode none)",
        source_video=f"{src.width}x{src.height} {src.codec} {src.pix_fmt} {float(src.average_rate or 0):.3f} fps",
        output_video=(f"{plan.output_width}x{plan.output_height}, discarded" if plan.output is None else
                      f"{plan.output_width}x{plan.output_height} {cfg.codec} {plan.output_bit_depth}-bit"
                      if plan.picture_target is None else
                      f"{plan.output_width}x{plan.output_height} {plan.picture_target.suffix[1:]} pictures, "
                      f"{plan.output_bit_depth}-bit"),
        model=plan.model.name,
        arch=plan.model.arch,
        scale=plan.model.scale,
        precision={dev: why for dev, (_, why) in plan.dtypes.items()},
        devices=[str(d) for d in plan.devices],
        decoder="NVDEC" if plan.use_nvdec else ("pictures (PyAV, CPU)" if plan.pictures is not None else "PyAV (CPU)"),
        encoder=_describe_encoder(plan),
        mode="parallel" if cfg.parallel else "sequential",
    )
    if plan.decoding is not None:
        stats.notes["decoders"] = plan.decoding.line
    if plan.interpolator is not None:
        stats.notes["interpolate"] = f"{plan.interpolator.name} x{plan.interpolate} frames"
    stats.notes["fallbacks"] = list(plan.notes)
    if src.color.matrix_guessed:
        stats.notes["color_matrix"] = f"{src.color.matrix} (source untagged; chosen by height, and tagged in the output)"
    expected = src.num_frames_from_header
    if plan.cut is not None:
        expected = plan.cut.frame_estimate(float(src.average_rate or 25), expected)
        stats.notes["cut"] = str(plan.cut)
    if cfg.max_frames is not None:
        expected = min(expected, cfg.max_frames) if expected else cfg.max_frames
    stats.num_frames_expected = expected
    stats.num_frames_estimate = plan.num_frames_estimate


def _describe_encoder(plan: RunPlan) -> str:
    if plan.output is None:
        return "none (output discarded)"
    if plan.picture_target is not None and plan.picture_target.file_name is not None:
        return f"{plan.picture_target.suffix[1:].upper()} picture (CPU) {plan.output}"
    if plan.picture_target is not None:
        return f"{plan.picture_target.suffix[1:].upper()} pictures (CPU) in {plan.output}"
    if plan.use_nvenc:
        return f"NVENC (fed {'P010' if plan.output_bit_depth > 8 else 'NV12'})"
    return f"PyAV {plan.config.codec} (CPU, fed {'yuv420p10le' if plan.output_bit_depth > 8 else 'yuv420p'})"


def pixel_settings(plan: RunPlan) -> dict[str, object]:
    """The settings that change the output's pixels or its segments: a resume must match them."""
    cfg, src = plan.config, plan.source
    return {
        "model": plan.model.name,
        "model_source": plan.model.source,
        "scale": plan.model.scale,
        "precision": sorted({str(dtype).removeprefix("torch.") for dtype, _ in plan.dtypes.values()}),
        "output_size": f"{plan.output_width}x{plan.output_height}",
        "codec": cfg.codec,
        "encoder": "nvenc" if plan.use_nvenc else "cpu",
        "quality": cfg.crf if plan.use_nvenc else cfg.crf_or_default,
        "preset": plan.preset,
        "colour": [src.color.matrix, src.color.full_range, src.color.primaries_tag, src.color.transfer_tag],
        "segment_frames": plan.segments.segment_frames if plan.segments else None,
        **({"segment_taper": plan.segments.taper_end} if plan.segments and plan.segments.taper_end else {}),
        "max_frames": cfg.max_frames if plan.picture_target is None else None,  # each picture stands alone
        **(plan.cut.settings() if plan.cut is not None else {"start": None, "end": None}),
        "container": plan.output.suffix.lower(),
        "bit_depth": plan.output_bit_depth,
        "pictures": plan.picture_target.suffix if plan.picture_target is not None else None,
        "fps": str(src.average_rate) if plan.pictures is not None else None,
        "tile_size": cfg.tile_size or None,  # tiles change pixels near their seams (within fp noise at the default overlap)
        "tile_overlap": cfg.tile_overlap if cfg.tile_size else None,
        "interpolate": plan.interpolate,
        "interpolation_model": plan.interpolator.source if plan.interpolator is not None else None,
        "scene_threshold": cfg.scene_threshold_or_default if plan.interpolator is not None else None,
    }


def excuse_late_stop(outcome: Outcome, plan: RunPlan, parts, stats: RunStats) -> None:
    """A stop the run's loop saw after the encoders had finished the last segment of the whole
    source (before the loop saw that the stages had ended): nothing is left to stop, the job
    completes (the segments are joined as for an uninterrupted run; a line says the signal came
    late). A stop that found any frame unwritten stays a stop."""
    if (outcome.interrupted is None or outcome.failure is not None or parts is None or not outcome.writer_closed_cleanly
            or not stats.source_exhausted or not stats.num_frames_decoded or outcome.num_dropped_at_stop):
        return
    if _every_segment_finished(plan, parts, stats):
        outcome.late_stop, outcome.interrupted = outcome.interrupted, None


def _every_segment_finished(plan: RunPlan, parts, stats: RunStats) -> bool:
    """Every segment up to the one holding the last decoded frame is finished."""
    finished = parts.finished()
    last = plan.segments.segment_of(stats.num_frames_decoded - 1) if stats.num_frames_decoded else -1
    return all(k in finished for k in range(last + 1))


def settle_segments(output: OutputFile, temp: Path, plan: RunPlan, parts, stats: RunStats, outcome: Outcome, *,
                    audio_shift=None) -> str:
    """Segmented output: join the finished segments into the output; one sentence says where it is.

    Complete (every segment of the source finished): all of them, audio copied whole, the work
    folder removed (unless --keep-parts). Stopped or failed: the segments from the first on
    while they are contiguous (the last one may be the stopped encoder's partial file) make a
    playable partial output; every finished segment stays in the work folder for --resume.
    """
    from hw.av_join import join_segments

    finished = parts.finished()
    complete = outcome.complete and outcome.writer_closed_cleanly and _every_segment_finished(plan, parts, stats)
    time_base = plan.output_time_base  # the segments' timestamps: the source's, or finer with --interpolate
    chain: list[tuple[Path, Fraction]] = []  # (segment file, seconds to add to its timestamps)
    k = 0
    while k in finished:
        chain.append((parts.path / str(finished[k]["file"]), int(finished[k]["pts_offset"]) * time_base))
        k += 1
    partial = parts.partial_path(k)
    if not complete and partial.is_file() and k in parts.manifest.partials:
        chain.append((partial, parts.manifest.partials[k] * time_base))
    resume_hint = (f" The finished segments are kept in {parts.path}: the same command with --resume finishes the job."
                   if finished else " No segment was finished: the same command with --resume starts again and replaces "
                   "it.")
    if not chain:
        output.discard()
        parts.remove_if_empty()
        stats.num_frames_written = 0
        if parts.resumable and not finished:  # a --resume that stopped before its first segment
            return (f"No frame was written; the earlier run's work folder {parts.path} is kept: the same command with "
                    "--resume finishes the job.")
        return "No frame was written, and no output file was left behind." + (resume_hint if finished else "")
    source = plan.audio_source
    try:
        with interruptible():  # a long join stops at once; the segments stay for --resume
            whole = complete and stats.source_exhausted
            written = join_segments(chain, temp, source_path=source, complete=whole,
                                    last_frame_seconds=stats.last_frame_seconds if whole else None,
                                    warn=stats.warn, audio_shift=audio_shift, extras_path=plan.extras_source,
                                    tag_hvc1=not plan.use_nvenc)  # NVENC repeats its parameter sets in-band: hev1
    except KeyboardInterrupt as exc:  # a stop while joining (main thread only: nothing else runs)
        output.discard()
        raise RunInterrupted(f"while joining the finished segments into {output.path}; no output file was written."
                             f"{resume_hint}", signal_name=getattr(exc, "signal_name", ""),
                             signal_number=getattr(exc, "signal_number", 2)) from exc
    except Exception as exc:  # noqa: BLE001 - the segments stay; say what failed
        output.discard()
        if complete and isinstance(exc, DiskFull):  # every segment is finished: --resume only joins them
            raise DiskFull(f"{one_line(exc).rstrip('.')}.{resume_hint}") from exc
        if complete and isinstance(exc, FramepipeError):
            raise
        if complete:  # one line, never a traceback (an FFmpeg error the muxer gave)
            raise StageError("join", f"{type(exc).__name__}: {one_line(exc).rstrip('.')}.{resume_hint}") from exc
        return f"Joining the finished segments failed ({one_line(exc)}).{resume_hint}"
    # `written` counts output frames: with --interpolate N, N per source frame (the last one, 1)
    stats.num_frames_written = -(-written // plan.interpolate)
    stats.written_is_output = True  # the joined output's count: the frames an earlier run finished too
    stats.num_frames_made = written - stats.num_frames_written
    parts.record_partial_output(temp)  # before the rename: the --resume that finishes the job may replace it
    final = output.commit(complete=complete)
    stats.notes["output"] = str(final)
    if complete:
        if plan.config.keep_parts:
            parts.record_partial_output(None)
        else:
            parts.remove()
        return ""
    kept = f" The existing {output.path} was left unchanged." if final != output.path else ""
    dropped = outcome.num_dropped_at_stop
    dropped_text = f" ({dropped} queued frame(s) dropped to stop quickly)" if dropped else ""
    return f"{written} frame(s) written to {final} (finalized, playable){dropped_text}.{kept}{resume_hint}"
