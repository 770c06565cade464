#!/usr/bin/env python3
"""framepipe command line: run a PyTorch model over every frame of a video.

    python main.py --source v.mp4 --parallel --multi-gpu --nvdec --nvenc

Owns the console alone: flags, the rich progress bar and live GPU panel, the
end-of-run summary, `--stats-json`, signal handling, and exit codes: 0 done, 1 the run
failed, 2 bad input, 128 + the signal number when stopped by a signal (130 SIGINT/Ctrl-C,
143 SIGTERM, 129 SIGHUP). Pipeline logic lives in `pipeline/`.
"""

from __future__ import annotations

import signal
import time

_PROCESS_STARTED = time.perf_counter()  # time to first frame is measured from here (imports included)
_EARLY_STOPS: list[int] = []  # stop signals that came before main() installed its handler
_HANDLERS_BEFORE: dict[int, object] = {}  # what the early handler replaced (the service gets them back)


def _early_stop(number: int, frame) -> None:
    _EARLY_STOPS.append(number)


if __name__ == "__main__":  # from the first line: a stop during the imports below is one line too, not a traceback
    for _name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, _name):
            _HANDLERS_BEFORE[getattr(signal, _name)] = signal.signal(getattr(signal, _name), _early_stop)

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path

from rich.markup import escape

from core.choices import (DEFAULT_SCENE_THRESHOLD, INTERPOLATE_ONLY_MODEL, SPLIT_TRANSPORTS, BIT_DEPTHS, CODECS, COMPILE_CHOICES, DEFAULT_MODEL, DEFAULT_TILE_OVERLAP, OUTPUT_MODES,
                          PICTURE_FORMATS, PRECISIONS)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
# Signals that stop a run the way Ctrl-C does: `timeout`/`kill`/`docker stop`/systemd send
# SIGTERM, a dropped ssh session SIGHUP. Each finalizes the output; exit status 128 + number.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _frames_done(d: dict) -> str:
    """'300 frame(s)', or with --interpolate '300 source frame(s) -> 598 frame(s) out'; after
    --resume, with how many of them an earlier run finished (the rate that follows is this run's)."""
    done = d.get("frames_done", d["frames_written"])
    kept = f", {d['frames_kept']} of them finished by an earlier run," if d.get("frames_kept") else ""
    if not d.get("frames_made"):
        return f"{done} frame(s){kept}"
    return f"{done} source frame(s){kept} -> {d['frames_out']} frame(s) out"


def _source_argument(text: str) -> Path:
    """--source as a path; a URL is refused by name (as a Path, 'https://host/v.mp4' became
    'https:/host/v.mp4', "not found")."""
    import re

    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", text):
        raise argparse.ArgumentTypeError(f"{text!r} is a URL; framepipe reads local files: download it first")
    return Path(text)


def _seconds_argument(text: str) -> float:
    """--progress-every: seconds, 0 or more (a negative or NaN value silently meant "none")."""
    import math

    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (0 <= seconds < math.inf):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give seconds, 0 or more (0 = no progress lines)")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="framepipe",
        description="Run a PyTorch image model (default: Real-ESRGAN realesr-animevideov3, x4) over every frame "
        "of a video: NVDEC decode, per-GPU FP16 workers, ordered output, NVENC or CPU encode, audio kept.",
        epilog="Without --source, a short built-in sample clip is processed. Examples:\n"
        "  python main.py --source in.mp4 --parallel\n"
        "  python main.py --source in.mp4 --parallel --multi-gpu --nvdec --nvenc\n"
        "  python main.py --source in.mp4 --model realesrgan-x4plus --gpus 0,2 --parallel\n"
        "  python main.py serve --root /data/videos      (the shared service: HTTP API, MCP tools, live page)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    io = p.add_argument_group("input / output")
    io.add_argument("--source", type=_source_argument,
                    help="input video file; pictures: a folder, a glob ('shots/*.png') or a pattern (scan_%%06d.png); "
                         "or many videos, one after another: a folder of videos or a glob ('clips/*.mp4') "
                         "(default: the built-in sample clip)")
    io.add_argument("--output", type=Path,
                    help="output file .mp4/.mkv/.mov, or pictures: a folder or a pattern (up_%%06d.png); for many "
                         "videos, the folder for their outputs (default: <source>.<model>-x<scale>.mp4 beside the "
                         "source, .mkv/.mov for such a source; a folder for pictures)")
    io.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    io.add_argument("--max-frames", type=int, metavar="N", help="process only the first N frames (after --start)")
    io.add_argument("--start", metavar="T",
                    help="begin at T: seconds (12.5), h:mm:ss.ms (1:02:03.5) or a frame number (300f); audio is cut to match")
    io.add_argument("--end", metavar="T", help="stop before T (same forms as --start); the frame at T is not included")
    io.add_argument("--no-audio", action="store_true", help="do not copy audio/subtitle streams")
    io.add_argument("--audio", type=Path, metavar="FILE",
                    help="take the audio from FILE instead of the source (a soundtrack for a picture sequence)")
    io.add_argument("--fps", metavar="RATE", help="frame rate of a picture sequence (default 24; e.g. 23.976, 24000/1001)")
    io.add_argument("--picture-format", choices=tuple(PICTURE_FORMATS), default=None,
                    help="format of output pictures when --output is a folder (default png)")
    io.add_argument("--resume", action="store_true",
                    help="finish an earlier run of this output from its finished segments (<output>.parts/)")
    io.add_argument("--keep-parts", action="store_true", help="keep the work folder <output>.parts/ after a successful run")
    io.add_argument("--output-mode", choices=OUTPUT_MODES, default="file",
                    help="file: write the output (default); none: run the model on every frame and discard the result "
                    "(benchmarks, analysis models)")

    model = p.add_argument_group("model")
    model.add_argument("--model", default=None,
                       help="built-in model name (see --list-models) or a .pth/.safetensors (spandrel) or .pt/.ts "
                       f"(TorchScript) file; default {DEFAULT_MODEL}")
    model.add_argument("--trust-model", action="store_true",
                       help="run a TorchScript model file (.ts/.pt): it is a program that runs with your rights; pass "
                       "this only for a file whose author you trust (weights files need no trust)")
    model.add_argument("--scale", type=int, help="output scale (default: the model's own; realesr-animevideov3: 2, 3 or 4)")
    model.add_argument("--precision", choices=PRECISIONS, default="auto",
                       help="auto = fp16 on compute capability 7.0+, fp32 on Pascal (sm_61) and the CPU")
    model.add_argument("--list-models", action="store_true", help="list the built-in models and exit")
    model.add_argument("--compile", choices=COMPILE_CHOICES, default="auto",
                       help="torch.compile the model in the background, eager until it is ready and checked against "
                       "eager (auto = on CUDA GPUs of compute capability 7.0+, unless the run is short or the model "
                       "already runs 1.5x faster eagerly than the CPU encoders can take; never on the CPU unless on)")
    model.add_argument("--tile-size", type=int, default=0, metavar="N",
                       help="run the model on overlapping tiles of N x N input pixels, blended (0 = whole frames, the "
                       "default; a frame that does not fit at batch 1 switches to tiles by itself)")
    model.add_argument("--interpolate", type=int, default=1, metavar="N",
                       help="frame interpolation with RIFE 4.x: N-1 new frames between each two (2 doubles the frame "
                       "rate); after --model when one is given (one pass, frames stay on the device), else alone")
    # None: not given (given without --interpolate, they do nothing and the plan says so)
    model.add_argument("--interpolation-model", default=None, metavar="NAME",
                       help="the model --interpolate uses: rife (RIFE 4.x, default) or blend (cross-fade, no weights)")
    model.add_argument("--scene-threshold", type=float, default=None, metavar="S",
                       help="two frames less alike than S (SSIM of 32x32 thumbnails, 0-1) are a scene cut: the frame "
                       f"is repeated instead of blended (default {DEFAULT_SCENE_THRESHOLD}; 0: never)")
    model.add_argument("--split-gpu", action="store_true",
                       help="run the model in two stages on two GPUs, pipelined (for models too big for one GPU; "
                       "says so when two whole copies would be faster)")
    model.add_argument("--split-transport", choices=SPLIT_TRANSPORTS, default="p2p",
                       help="how the stage boundary crosses GPUs: p2p (device to device) or bytes (packed, as a "
                       "network hop would carry it)")
    model.add_argument("--tile-overlap", type=int, metavar="N",
                       help=f"pixels neighbouring tiles share (default {DEFAULT_TILE_OVERLAP}; a quarter of the tile "
                       f"for tiles under {4 * DEFAULT_TILE_OVERLAP})")

    run = p.add_argument_group("execution")
    run.add_argument("--parallel", action="store_true",
                     help="threaded pipeline (reader, workers, collector, writer); without it a plain sequential loop")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    run.add_argument("--multi-gpu", action="store_true", help="one worker per visible GPU")
    run.add_argument("--gpus", metavar="LIST", help='GPUs to use, e.g. "0,2" (implies multi-GPU)')
    run.add_argument("--cpu-workers", type=int, default=1, metavar="N", help="worker threads on the CPU (default 1)")
    run.add_argument("--batch-size", type=int, default=0, metavar="N", help="frames per batch; 0 = probe per GPU (default)")
    run.add_argument("--max-batch-size", type=int, default=256, metavar="N", help="cap for the probe (default 256)")
    run.add_argument("--queue-size", type=int, default=50, metavar="N", help="frames per queue between stages (default 50)")

    codec = p.add_argument_group("codecs")
    codec.add_argument("--nvdec", action="store_true", help="decode on the GPU with NVDEC (falls back to the CPU with a warning)")
    codec.add_argument("--decoders", type=int, default=0, metavar="N",
                       help="decoders working at once on consecutive parts of the video (cut at keyframes; NVDEC sessions "
                       "with --nvdec); 0 = auto (default): one per NVDEC engine, or on the CPU one per 8 cores (at most 4)")
    codec.add_argument("--nvenc", action="store_true", help="encode on the GPU with NVENC (falls back to the CPU with a warning)")
    codec.add_argument("--codec", choices=CODECS, default=CODECS[0], help=f"output codec (default {CODECS[0]})")
    codec.add_argument("--bit-depth", type=int, choices=BIT_DEPTHS, default=None,
                       help="output bit depth: video 8 or 10 (default: 10 for a deeper source with --codec hevc/av1, "
                            "else 8), pictures 8 or 16 (default: 16 for a deeper source)")
    codec.add_argument("--quality", type=int, metavar="CRF",
                       help="constant quality, lower is better (x264/x265 0-51, default 18/20; SVT-AV1 0-63, default 28; NVENC: constant QP)")
    codec.add_argument("--encoders", type=int, default=0, metavar="N",
                       help="encoders working at once on consecutive segments; 0 = auto (default): enough for the model's rate "
                       "from one encoder's measured speed, within the cores and memory")
    codec.add_argument("--cores", type=int, metavar="N",
                       help="CPU cores the decoders, encoders and their threads are planned for (default: every core the "
                       "process may use: its affinity, within a container's CPU quota); for a machine shared with other jobs")
    codec.add_argument("--segment-frames", type=int, metavar="N", help="frames per segment (default: about 6 seconds)")
    codec.add_argument("--segment-seconds", type=float, metavar="S", help="seconds per segment, a whole number of frames (default 6)")
    codec.add_argument("--preset", help="encoder preset (x264/x265: ultrafast..veryslow, default medium; SVT-AV1: 0-13, default 8; NVENC: p1-p7, default p4)")

    out = p.add_argument_group("reporting")
    out.add_argument("--stats-json", type=Path, metavar="PATH", help="write the run's figures as JSON")
    out.add_argument("--progress-every", type=_seconds_argument, default=30.0, metavar="S",
                     help="when the output is not a terminal (nohup, a log file, a service): a progress line every "
                     "S seconds (default 30; 0 = none)")
    out.add_argument("-q", "--quiet", action="store_true", help="errors only")
    out.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv for debug)")
    return p


def _setup_logging(console, *, quiet: bool, verbose: int) -> None:
    from rich.logging import RichHandler

    level = logging.ERROR if quiet else logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
    handler = RichHandler(console=console, show_time=False, show_path=False, markup=False, rich_tracebacks=False)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def _list_models(console) -> int:
    from rich.table import Table

    from models import list_models

    table = Table(title="Built-in models")
    for col in ("name", "architecture", "scale", "parameters", "source", "cached", "use"):
        table.add_column(col)
    for m in list_models():
        params = f"{m.num_params:,}" if m.num_params else "-"
        table.add_row(m.name, m.arch, str(m.scale), params, m.source, "yes" if m.cached else "no", m.description)
    console.print(table)
    console.print("User models: --model file.pth|.safetensors (any spandrel architecture) or file.pt|.ts (TorchScript).")
    return EXIT_OK


def _sample_output_dir() -> Path:
    """./out/, where the built-in sample's result goes; one clear error when it cannot be made."""
    from core.errors import OutputNotWritable

    folder = Path("out")
    if folder.exists() and not folder.is_dir():
        raise OutputNotWritable(
            f"Cannot write the sample's result to {str(folder.resolve())!r}: a file of that name is in the way. "
            "Move it, or pass --output."
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritable(f"Cannot create the folder {str(folder.resolve())!r}: {exc.strerror or exc}. Pass --output.") from None
    return folder


def _config_from_args(args, *, sample: bool):
    from pipeline import RunConfig

    from core.errors import InvalidOption

    if args.model is not None and not args.model.strip():  # an unset $MODEL: never the default in its place
        raise InvalidOption("--model is empty: give a built-in model name (see --list-models) or a model file.")
    # --interpolate alone: frames are only interpolated (the identity model, scale 1, no upscaling)
    model = args.model or (INTERPOLATE_ONLY_MODEL if args.interpolate > 1 and args.scale in (None, 1) else DEFAULT_MODEL)
    source = args.source
    output_dir = None
    if source is None:
        from hw.clips import sample_clip

        output_dir = _sample_output_dir() if args.output is None else None
        source = sample_clip()  # the sample's result goes to ./out/, named after the model and scale
    return RunConfig(
        source=Path(source),
        output=args.output,
        output_dir=output_dir,
        model=model,
        scale=1 if model == INTERPOLATE_ONLY_MODEL and args.model is None else args.scale,
        parallel=args.parallel,
        device=args.device,
        multi_gpu=args.multi_gpu,
        gpus=args.gpus,
        cpu_workers=args.cpu_workers,
        nvdec=args.nvdec,
        decoders=args.decoders,
        nvenc=args.nvenc,
        batch_size=args.batch_size,
        max_batch_size=args.max_batch_size,
        queue_size=args.queue_size,
        precision=args.precision,
        tile_size=args.tile_size,
        tile_overlap=args.tile_overlap,
        compile=args.compile,
        output_mode=args.output_mode,
        codec=args.codec,
        bit_depth=args.bit_depth,
        crf=args.quality,
        preset=args.preset,
        max_frames=args.max_frames,
        start=args.start,
        end=args.end,
        overwrite=args.overwrite,
        replace_default_output=sample and args.output is None,
        encoders=args.encoders,
        cores=args.cores,
        segment_frames=args.segment_frames,
        segment_seconds=args.segment_seconds,
        resume=args.resume,
        keep_parts=args.keep_parts,
        trust_model=args.trust_model,
        stats_json=args.stats_json,
        copy_audio=not args.no_audio,
        audio=args.audio,
        fps=args.fps,
        picture_format=args.picture_format,
        interpolate=args.interpolate,
        interpolation_model=args.interpolation_model,
        scene_threshold=args.scene_threshold,
        split_gpu=args.split_gpu,
        split_transport=args.split_transport,
    )


class RunDisplay:
    """Live progress bar and per-device panel while a run goes, on a terminal; elsewhere (nohup,
    a log file) a plain progress line every `every` seconds (0: none).

    `start` prints the plan's notes (fallbacks, precision) as plain lines first, so they
    stay in the scroll-back and in logs whether or not the live display is on.
    """

    def __init__(self, console, *, enabled: bool, quiet: bool = False, every: float = 0.0) -> None:
        self.console = console
        self.enabled = enabled
        self.quiet = quiet
        self.every = every if not enabled and not quiet else 0.0
        self.stats = None
        self._live = None
        self._progress = None
        self._task = None
        self._last_panel = 0.0
        self._started = self._last_line = None

    @classmethod
    def for_args(cls, console, args) -> "RunDisplay":
        live = console.is_terminal and not args.quiet
        return cls(console, enabled=live, quiet=args.quiet, every=args.progress_every)

    def start(self, plan, stats) -> None:
        import time

        self.stats = stats
        if not self.quiet:
            for note in plan.notes:
                self.console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False, soft_wrap=True)
            for dev, (_, why) in plan.dtypes.items():
                self.console.print(f"precision on {dev}: {escape(why)}", highlight=False, soft_wrap=True)
            if getattr(plan, "encoder_line", ""):  # segmented output: how many encoders, and why
                self.console.print(escape(plan.encoder_line), highlight=False, soft_wrap=True)
            if getattr(plan, "decoding", None) is not None:  # several decoders: how many, and why
                self.console.print(escape(plan.decoding.line), highlight=False, soft_wrap=True)
        self._started = self._last_line = time.perf_counter()
        if not self.enabled:
            return
        from rich.live import Live
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._progress = Progress(
            TextColumn("[bold]framepipe"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
            TextColumn("{task.fields[fps]:>7.1f} fps"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=self.console, auto_refresh=False,
        )
        self._task = self._progress.add_task("run", total=stats.num_frames_total or None, fps=0.0)
        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
        self._live.start()
        self._last_panel = time.perf_counter()

    def update(self, stats) -> None:
        import time

        self.stats = stats
        if self.every > 0 and self._last_line is not None and time.perf_counter() - self._last_line >= self.every:
            self._last_line = time.perf_counter()
            self.console.print(progress_line(stats, self._last_line - self._started), highlight=False, soft_wrap=True)
        if self._live is None:
            return
        total = stats.num_frames_total or None
        self._progress.update(self._task, completed=stats.num_frames_done, total=total, fps=stats.fps)
        now = time.perf_counter()
        if now - self._last_panel >= 1.0:
            self._last_panel = now
            self._live.update(self._render())

    def _render(self):
        from rich.console import Group

        parts = [self._progress] if self._progress is not None else []
        if self.stats is not None and self.stats.workers:
            parts.append(device_table(self.stats))
        return Group(*parts)

    def stop(self) -> None:
        if self._live is not None:
            try:
                self._live.update(self._render())
            finally:
                self._live.stop()
                self._live = None


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def progress_line(stats, elapsed: float) -> str:
    """'progress: 1200/14400 frames (8.3%), 41.2 fps, 0:00:30 elapsed, ETA 0:05:20' (a log's line)."""
    done, total, fps = stats.num_frames_done, stats.num_frames_total, stats.fps
    if not total:
        return f"progress: {done} frames, {fps:.1f} fps, {_clock(elapsed)} elapsed"
    eta = f", ETA {_clock((total - done) / fps)}" if fps > 0 and done < total else ""
    return f"progress: {done}/{total} frames ({100 * done / total:.1f}%), {fps:.1f} fps, {_clock(elapsed)} elapsed{eta}"


def _bar(fraction: float, width: int = 12) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "█" * filled + "░" * (width - filled)


def device_table(stats):
    """One row per worker: memory bar, utilisation, batch, fps, frames, health; queue depths on top."""
    from rich.table import Table

    depths = stats.depths()
    title = "devices  (queues: " + ", ".join(f"{k} {v}" for k, v in depths.items()) + ")" if depths else "devices"
    table = Table(title=title, title_justify="left", expand=False)
    for col in ("worker", "memory", "util", "batch", "fps", "frames", "health"):
        table.add_column(col)
    for w in stats.workers.values():
        mem = "-"
        if w.memory_used_bytes is not None and w.memory_total_bytes:
            used, total = w.memory_used_bytes, w.memory_total_bytes
            mem = f"{_bar(used / total)} {used / 2**30:.1f}/{total / 2**30:.0f} GiB"
        util = f"{w.utilization_percent}%" if w.utilization_percent is not None else "-"
        colour = {"ok": "green", "done": "green", "backoff": "yellow", "probing": "cyan", "failed": "red"}.get(w.health, "white")
        table.add_row(w.name, mem, util, str(w.batch_size), f"{w.recent_fps():.1f}", str(w.num_frames),
                      f"[{colour}]{w.health}[/]")
    return table


def render_summary(console, stats) -> None:
    """End-of-run summary: totals, each stage busy vs waiting, each device's share."""
    from rich import box
    from rich.table import Table

    d = stats.to_dict()
    console.print(
        f"[bold green]done[/]: {_frames_done(d)} in {d['wall_seconds']:.2f} s = {d['fps']:.2f} fps"
        f"  ({d.get('mode', '')}, {escape(str(d.get('decoder', '')))} -> {escape(str(d.get('model', '')))} "
        f"x{d.get('scale', '')} -> {escape(str(d.get('encoder', '')))})",
        highlight=False,
    )
    if d.get("first_frame_seconds_from_command") is not None:
        steps = ", ".join(f"{name} {seconds:.2f}" for name, seconds in d.get("startup_seconds", {}).items())
        console.print(f"first frame out of the model {d['first_frame_seconds_from_command']:.2f} s after the command: "
                      f"imports {d.get('imports_seconds', 0):.2f} s, then {steps} s",
                      highlight=False, soft_wrap=True)
    table = Table(title="stages", title_justify="left")
    for col in ("stage", "busy s", "waiting s"):
        table.add_column(col)
    for name, c in d["stages"].items():
        table.add_row(name, f"{c['busy_seconds']:.2f}", f"{c['wait_seconds']:.2f}")
    for w in d["workers"]:
        table.add_row(w["name"], f"{w['busy_seconds']:.2f}", f"{w['wait_seconds']:.2f}")
    console.print(table)
    # Under 140 columns (an 80-column terminal) the probe's and the model's notes, the long ones,
    # go on a line of their own below the table, which loses its column rules: names stay whole
    narrow = console.width < 140
    table = (Table(title="devices", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
             if narrow else Table(title="devices", title_justify="left"))
    for col in ("worker", "device", "frames", "batches", "sizes" if narrow else "batch sizes", "tiles",
                "OOM" if narrow else "OOM retries", "faults", "health", *(() if narrow else ("probe", "model"))):
        table.add_column(col, no_wrap=narrow)
    notes = []
    for w in d["workers"]:
        sizes = ", ".join(f"{k}x{v}" for k, v in w["batch_sizes"].items()) or "-"
        probe = f"{w['probe_seconds']:.1f} s: {w['probe_note']}" if w["probe_seconds"] else w["probe_note"] or "-"
        tiles = f"{w['tile_size']}x{w['tile_size']}" if w["tile_size"] else "-"
        compiled = w["compile"] or {}
        model = compiled.get("note") or compiled.get("status") or "-"
        row = [w["name"], w["device"], str(w["frames"]), str(w["batches"]), sizes, tiles, str(w["oom_retries"]),
               str(w["failures"]), w["health"]]
        table.add_row(*row, *(() if narrow else (probe, escape(model))))
        notes.append(f"{w['name']}: probe {probe}; model {model}")
    console.print(table)
    for note in notes if narrow else ():
        console.print(escape(note), highlight=False, soft_wrap=True)
    for warning in d["warnings"]:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)


def _stop_signal_numbers() -> list[int]:
    """STOP_SIGNALS this platform has."""
    return [getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)]


def _quiet_stop(unraisable) -> None:
    """A stop raised while Python ran a callback (a weakref's, an import lock's) is not printed as
    "Exception ignored" with a traceback: core.stopping kept it, and the run acts on it before its
    first stage starts. Anything else goes to the hook there was before."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        _quiet_stop.previous(unraisable)


_quiet_stop.previous = sys.__unraisablehook__


class _StopSignal:
    """Turns SIGTERM/SIGHUP (and SIGINT) into `RunInterrupted` raised in the main thread, the
    same path Ctrl-C takes: every thread joined, the output finalized, one line, exit 128+N."""

    def __init__(self) -> None:
        self.received: list[str] = []
        self._done = False

    def finished(self) -> None:
        """The run has ended: later signals are only recorded (nothing is left to stop)."""
        self._done = True

    def rearm(self) -> None:
        """The next run of a batch starts: a signal stops it again."""
        self._done = False

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for number in _stop_signal_numbers():
            # Installed even where the parent started us with the signal ignored (nohup, some CI
            # shells): a stop must reach the runner, which finalizes the output.
            signal.signal(number, self._handle)
        if sys.unraisablehook is not _quiet_stop:  # once per process (main() may run many times in one)
            _quiet_stop.previous = sys.unraisablehook
            sys.unraisablehook = _quiet_stop

    def _handle(self, number: int, frame) -> None:
        from core.errors import RunInterrupted
        from core.stopping import defer, deferring, raised

        name = signal.Signals(number).name
        self.received.append(name)
        if self._done:
            return
        stop = RunInterrupted("", signal_name=name, signal_number=number)
        if deferring():  # stage threads run: the runner's loop raises it where no lock is held
            if defer(stop):
                return
            raise stop  # an earlier stop was never picked up: the loop is stuck; stop here
        if len(self.received) > 1:
            return  # already stopping: the runner is finalizing the output; let it finish
        raised(stop)  # kept until main() catches it: library code may swallow the exception
        raise stop


class _SafeConsole:
    """Console output that never fails the run: after SIGHUP the terminal may be gone (EIO)."""

    def __init__(self, console) -> None:
        self.console = console

    def print(self, *args, **kwargs) -> None:
        try:
            self.console.print(*args, **kwargs)
        except (OSError, ValueError):
            pass


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["serve"]:  # the shared service (service/server.py): its server handles signals its own way
        for number, handler in _HANDLERS_BEFORE.items():
            signal.signal(number, handler)
        if _EARLY_STOPS:
            return 128 + _EARLY_STOPS[0]  # stopped before the service started: nothing to say or undo
        from service.server import serve_main

        return serve_main(argv[1:], process_settings=_process_settings)
    args = build_parser().parse_args(argv)
    console = Console(stderr=True)
    if not console.is_terminal:
        console = Console(stderr=True, width=160)  # logs and CI: no summary truncated to 80 columns
    _setup_logging(console, quiet=args.quiet, verbose=args.verbose)
    say = _SafeConsole(console)
    stopper = _StopSignal()
    stopper.install()
    from core.errors import RunInterrupted
    from core.stopping import acted, held, raise_kept

    try:
        for number in _EARLY_STOPS[:1]:  # came before the handler was installed: nothing was started
            raise RunInterrupted(signal_name=signal.Signals(number).name, signal_number=number)
        # Inside the try: the model list, the process settings and the pipeline's imports load
        # torch (seconds), and a stop may come then (a signal raises RunInterrupted, a
        # KeyboardInterrupt).
        with held():  # torch's import: a stop raised inside it aborts the process (core/stopping.py)
            if args.list_models:
                out = Console()
                return _list_models(out if out.is_terminal else Console(width=200))  # piped: no truncated names
            _process_settings()
            from core.errors import FramepipeError
            from pipeline import run
        raise_kept()  # a stop the imports swallowed (torch's own import catches every Exception)
        imports_done = time.perf_counter()
    except KeyboardInterrupt as exc:
        acted()
        name = getattr(exc, "signal_name", "")
        say.print(f"[yellow]{f'stopped by {name}' if name and name != 'SIGINT' else 'interrupted'}[/] before the "
                  f"{'list was complete' if args.list_models else 'run started'}")
        return 128 + getattr(exc, "signal_number", 2)
    sample = args.source is None
    if not sample:
        try:
            batch = _batch(args)
        except FramepipeError as exc:
            say.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            return exc.exit_code
        if batch is not None:
            return _run_batch(args, *batch, console=console, say=say, stopper=stopper, run=run)
    display = RunDisplay.for_args(console, args)
    stats = None
    try:
        config = _config_from_args(args, sample=sample)
        if sample and not args.quiet:
            say.print(f"No --source given: processing the built-in sample clip {escape(str(config.source))}",
                      highlight=False, soft_wrap=True)
        stats = run(config, on_progress=display.update, on_start=display.start)
        stopper.finished()  # the output is in place: a signal from here on changes nothing
        first = [w.first_batch_at for w in stats.workers.values() if w.first_batch_at is not None]
        if first:
            stats.notes["first_frame_seconds_from_command"] = round(min(first) - _PROCESS_STARTED, 3)
            stats.notes["imports_seconds"] = round(imports_done - _PROCESS_STARTED, 3)
    except RunInterrupted as exc:
        acted()
        stopper.finished()
        _stop_display(display)
        what = f"stopped by {exc.signal_name}" if exc.signal_name and exc.signal_name != "SIGINT" else "interrupted"
        detail = str(exc) or "before the run started."
        say.print(f"[yellow]{what}:[/] {escape(detail)}", highlight=False, soft_wrap=True)
        _write_stats(args, display.stats, status="interrupted", error=f"{what}: {detail}", say=say)
        return exc.exit_code
    except FramepipeError as exc:
        stopper.finished()
        _stop_display(display)
        say.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        if exc.exit_code != EXIT_BAD_INPUT:
            _write_stats(args, display.stats, status="failed", error=str(exc), say=say)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        acted()
        _stop_display(display)
        say.print("[yellow]interrupted[/] before the run started")
        return 128 + getattr(exc, "signal_number", 2)
    except OSError as exc:  # a path the file system refuses where no check named it: one line, never a traceback
        stopper.finished()
        _stop_display(display)
        where = f" ({str(exc.filename)[:80]!r})" if exc.filename else ""
        say.print(f"[red]error:[/] {escape(exc.strerror or str(exc))}{escape(where)}.", highlight=False, soft_wrap=True)
        _write_stats(args, display.stats, status="failed", error=str(exc), say=say)
        return EXIT_FAILED if display.stats is not None and display.stats.num_frames_written else EXIT_BAD_INPUT
    _stop_display(display)
    if not args.quiet:
        try:
            render_summary(console, stats)
        except (OSError, ValueError):
            pass
    _write_stats(args, stats, status="ok", say=say)
    if not args.quiet:
        say.print(f"Output: [bold]{escape(str(stats.notes.get('output', config.output)))}[/]", highlight=False,
                  soft_wrap=True)
    _finish_compile_helpers(say, stopper, quiet=args.quiet)
    return EXIT_OK


def _batch(args) -> tuple[list[Path], Path | None, list[Path]] | None:
    """--source naming a folder of videos (and no pictures) or a glob of videos ('clips/*.mp4'):
    the videos in natural name order, the folder their outputs go to (--output, made if missing;
    None: beside each video), and the files left out as framepipe's own outputs (by their names,
    said in one line). None for one video or pictures. Flags that name one file for one run are
    refused here."""
    import glob as globbing
    import os

    from core.errors import InvalidOption, InvalidSource, OutputNotWritable
    from core.paths import VIDEO_SUFFIXES, is_own_output_name, refuse_shared_outputs
    from hw.pictures import PICTURE_SUFFIXES, natural_key

    text = os.fspath(args.source)
    if os.path.isdir(text):
        with os.scandir(text) as listing:
            names = [Path(e.path) for e in listing if not e.name.startswith(".")]
        if any(p.suffix.lower() in PICTURE_SUFFIXES for p in names):
            return None  # pictures: a sequence (hw.pictures)
        found = [p for p in names if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()]
        if not found:
            return None  # the sequence's own message says what the folder lacks
    elif globbing.has_magic(text) and not os.path.exists(text) and Path(text).suffix.lower() not in PICTURE_SUFFIXES:
        found = [Path(p) for p in globbing.glob(text) if Path(p).suffix.lower() in VIDEO_SUFFIXES and os.path.isfile(p)]
        if not found:
            return None  # a missing file whose name has brackets in it, or a glob of nothing: "not found"
    else:
        return None
    videos = sorted((p for p in found if not is_own_output_name(p)), key=lambda p: natural_key(p.name))
    left_out = sorted((p for p in found if is_own_output_name(p)), key=lambda p: natural_key(p.name))
    if not videos:
        raise InvalidSource(f"Source {text!r} holds only framepipe's own outputs (<name>.<model>-x<scale>.mp4): "
                            "nothing to do.")
    for flag, value in (("--stats-json", args.stats_json), ("--audio", args.audio)):
        if value is not None:
            raise InvalidOption(f"{flag} names one file for one run; --source {text!r} is {len(videos)} videos. "
                                f"Run them one by one to use {flag}.")
    # Two videos never write one file (a.avi and a.mp4): refused before any runs, as the service refuses them
    from pipeline.config import default_output_path

    # (the model and its scale, the same for every video, are known only once a run plans)
    named = [(v, (Path(args.output) if args.output is not None else v.parent).absolute()
              / f"{v.stem}.<model>-x<scale>{default_output_path(v, model_name='m', scale=1).suffix}") for v in videos]
    refuse_shared_outputs(named, apart="run them one at a time with an --output each")
    folder = None
    if args.output is not None:
        folder = Path(args.output)
        if not folder.is_dir():
            if folder.suffix:
                raise InvalidOption(f"--output {str(args.output)!r}: a folder of videos gets one output each; give a folder "
                                    "for them (it is made if missing).")
            try:
                folder.mkdir()
            except OSError as exc:
                raise OutputNotWritable(f"Cannot make the --output folder {str(args.output)!r}: {exc.strerror or exc}.") from None
    return videos, folder, left_out


class _BatchLedger:
    """The videos a batch with --overwrite finished before a stop, so that the same command
    skips them (without --overwrite their outputs exist and are skipped anyway): before, it
    replaced them all again. A `ProbeMemo` file of framepipe's cache named after the command's
    settings (written atomically under its lock; one it cannot read or write is only work done
    again); an entry counts while its output is the file the batch wrote (size and time
    unchanged); removed when the batch gets through every video."""

    _IGNORED = ("quiet", "verbose", "progress_every")

    def __init__(self, args) -> None:
        import hashlib

        from core.paths import default_cache_dir
        from hw.memory import ProbeMemo

        settings = {k: str(v) for k, v in sorted(vars(args).items()) if k not in self._IGNORED}
        settings["cwd"] = os.getcwd()  # relative paths mean another batch elsewhere
        key = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        self.memo = ProbeMemo(default_cache_dir() / "batches" / f"{key}.json")

    def finished_before(self, video: Path) -> str | None:
        """The output this batch wrote for `video` before a stop, if it is still that file."""
        entry = self.memo.get(str(video.absolute()))
        try:
            st = os.stat(entry["output"])
            return entry["output"] if (st.st_size, st.st_mtime_ns) == (entry["size"], entry["mtime_ns"]) else None
        except (OSError, KeyError, TypeError):
            return None

    def record(self, video: Path, output: str) -> None:
        try:
            st = os.stat(output)
        except OSError:
            return
        self.memo.put(str(video.absolute()), {"output": output, "size": st.st_size, "mtime_ns": st.st_mtime_ns})

    def clear(self) -> None:
        self.memo.path.unlink(missing_ok=True)


def _run_batch(args, videos: list[Path], folder: Path | None, left_out: list[Path], *, console, say, stopper,
               run) -> int:
    """One run per video, one after the other, each as a run of its own (its notes, progress,
    summary and output line). A video whose output exists is skipped (say so; --overwrite
    replaces it); one that fails is named and the next one goes on; a stop ends the batch after
    finalizing the video it stopped (the same command resumes it and skips the done ones: every
    video of a batch is written in segments, as --resume asks). Exit 0 when none failed, 1 when any did, 128+N when stopped."""
    import argparse

    from core.errors import FramepipeError, OutputExists, RunInterrupted

    done: list[Path] = []
    skipped: list[Path] = []
    failed: list[Path] = []

    if left_out and not args.quiet:  # a camera's `clip.sony-x3.mp4` is named like one: said, never silent
        names = ", ".join(p.name for p in left_out[:3]) + (", ..." if len(left_out) > 3 else "")
        say.print(f"left out {len(left_out)} file(s) named as framepipe names its outputs "
                  f"(<name>.<model>-x<scale>.mp4): {escape(names)}. Rename one to process it.",
                  highlight=False, soft_wrap=True)

    def summary() -> str:
        parts = [f"{len(done)} of {len(videos)} video(s) done"]
        if skipped:
            parts.append(f"{len(skipped)} skipped (output exists)" if ledger is None else
                         f"{len(skipped)} skipped (done before the stop)")
        if failed:
            parts.append(f"{len(failed)} failed ({', '.join(p.name for p in failed[:3])}{', ...' if len(failed) > 3 else ''})")
        return "; ".join(parts)

    ledger = _BatchLedger(args) if args.overwrite else None
    for k, video in enumerate(videos, 1):
        if not args.quiet:
            say.print(f"[bold]{k}/{len(videos)}[/] {escape(str(video))}", highlight=False, soft_wrap=True)
        earlier = ledger.finished_before(video) if ledger is not None else None
        if earlier is not None:  # --overwrite: replaced once, by this batch before it stopped
            skipped.append(video)
            say.print(f"[yellow]skipped:[/] {escape(earlier)} was written by this batch before it stopped.",
                      highlight=False, soft_wrap=True)
            continue
        one = argparse.Namespace(**vars(args))
        one.source, one.output = str(video), None
        display = RunDisplay.for_args(console, args)
        stopper.rearm()
        signals = len(stopper.received)
        try:
            config = _config_from_args(one, sample=False)
            config.output_dir = folder
            # Always in segments, as --resume asks: a stopped video's work folder records its partial
            # output, so the next batch resumes it; written directly, the partial took the output's
            # name unrecorded, and the next batch skipped it as done
            config.resume = True
            stats = run(config, on_progress=display.update, on_start=display.start)
            stopper.finished()
        except RunInterrupted as exc:
            stopper.finished()
            _stop_display(display)
            what = f"stopped by {exc.signal_name}" if exc.signal_name and exc.signal_name != "SIGINT" else "interrupted"
            say.print(f"[yellow]{what}:[/] {escape(video.name)}: {escape(str(exc) or 'before the run started.')} "
                      f"{escape(summary())}; the same command finishes the batch (done videos are skipped, this one resumed).",
                      highlight=False, soft_wrap=True)
            return exc.exit_code
        except OutputExists as exc:
            stopper.finished()
            _stop_display(display)
            skipped.append(video)
            say.print(f"[yellow]skipped:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            continue
        except (FramepipeError, OSError) as exc:
            stopper.finished()
            _stop_display(display)
            failed.append(video)
            text = str(exc) if isinstance(exc, FramepipeError) else f"{exc.strerror or exc}"
            say.print(f"[red]error:[/] {escape(video.name)}: {escape(text)}", highlight=False, soft_wrap=True)
            continue
        except KeyboardInterrupt as exc:
            _stop_display(display)
            say.print(f"[yellow]interrupted[/] before {escape(video.name)} started. {escape(summary())}.")
            return 128 + getattr(exc, "signal_number", 2)
        _stop_display(display)
        done.append(video)
        if ledger is not None:
            ledger.record(video, str(stats.notes.get("output", config.output)))
        if not args.quiet:
            try:
                render_summary(console, stats)
            except (OSError, ValueError):
                pass
            say.print(f"Output: [bold]{escape(str(stats.notes.get('output', config.output)))}[/]", highlight=False,
                      soft_wrap=True)
        if len(stopper.received) > signals:  # came as the output was put in place: this video is done
            name = stopper.received[-1]
            say.print(f"[yellow]stopped by {name}:[/] after {escape(video.name)}. {escape(summary())}; the same "
                      "command finishes the batch (done videos are skipped).", highlight=False, soft_wrap=True)
            return 128 + int(getattr(signal.Signals, name, signal.SIGINT))
    if ledger is not None:
        ledger.clear()  # through every video: the next batch replaces them all again, as asked
    say.print(f"{'[red]' if failed else ''}{escape(summary())}.{'[/]' if failed else ''}", highlight=False, soft_wrap=True)
    _finish_compile_helpers(say, stopper, quiet=args.quiet)
    return EXIT_FAILED if failed else EXIT_OK


def _finish_compile_helpers(say, stopper, *, quiet: bool, poll_seconds: float = 0.2) -> None:
    """The run completed before torch.compile's first compilation of its model did: the helper
    process that fills the cache (models/compile_helper.py) is let finish, so that the next run
    compiles from the cache in seconds; else a first run shorter than the compilation leaves the
    cache cold, and so does every run after it. The output is complete and in place; Ctrl-C (or
    any stop signal) skips the wait and ends the helper, and the exit code stays 0."""
    helper_module = sys.modules.get("models.compile_helper")  # not imported: no run got that far
    helpers = helper_module.pending() if helper_module is not None else []
    if not helpers:
        return
    if not quiet:
        say.print("The output is complete. Finishing the model's first compilation in a helper process, so that "
                  "the next run starts compiled (Ctrl-C skips it)...", highlight=False, soft_wrap=True)
    signals, started = len(stopper.received), time.perf_counter()
    while helper_module.pending():
        if len(stopper.received) > signals:
            helper_module.cancel_pending()
            if not quiet:
                say.print("[yellow]skipped:[/] the compilation for later runs (the next run compiles again)",
                          highlight=False, soft_wrap=True)
            return
        time.sleep(poll_seconds)
    failed = [h.outcome for h in helpers if h.outcome != "compiled"]
    if failed:  # the run's own line about it came before the summary, or not at all: say it here
        say.print(f"[yellow]warning:[/] compiling for later runs failed ({escape(failed[0])}); the next run "
                  "tries again", highlight=False, soft_wrap=True)
    elif not quiet:
        say.print(f"Compiled for later runs in {time.perf_counter() - started:.0f} s more.", highlight=False,
                  soft_wrap=True)


def bytecode_cache_folder(cache: Path, package: str = "torch") -> Path | None:
    """Where to keep Python's bytecode for this process, when Python would keep none for torch.

    torch is ~1,100 modules. Where no bytecode of it is cached (PYTHONDONTWRITEBYTECODE, which
    many container images set, with an install made without .pyc files, or a read-only one),
    every start compiles them all again: `import torch` took 2.9-3.6 s on the H100 host, whose
    torch folder held no .pyc (benchmarks/RESULTS.md), most of the time to the first frame. Then
    the bytecode goes to framepipe's cache folder (`sys.pycache_prefix`; the installed files are
    never written) and the next start reads it. None where torch's own bytecode is there, a prefix
    is already set, FRAMEPIPE_BYTECODE_CACHE=0, or the folder cannot be made."""
    import importlib.util
    import os

    if os.environ.get("FRAMEPIPE_BYTECODE_CACHE", "1") == "0" or sys.pycache_prefix:
        return None
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    if Path(importlib.util.cache_from_source(spec.origin)).is_file():
        return None  # Python's own cache beside the sources works
    folder = cache / "bytecode"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return folder if os.access(folder, os.W_OK) else None


def _process_settings() -> None:
    """Switches that belong to the whole process, set by the program (a run never flips them)."""
    import os

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints ~20 info lines to stderr otherwise
    # torch.compile's kernels (--compile) in framepipe's cache folder, beside the converted
    # weights: a second run of the same model and frame size compiles from there in seconds.
    # Only where that folder can be made: torch creates it on import (spandrel imports it), and an
    # unusable $FRAMEPIPE_CACHE (a file, /proc/...) must not crash the run; torch then uses its own.
    from core.paths import default_cache_dir  # not models.registry: that imports torch

    cache = default_cache_dir()
    folder = bytecode_cache_folder(cache)
    if folder is not None:
        sys.pycache_prefix = str(folder)
        sys.dont_write_bytecode = False  # into framepipe's cache folder only, never beside the installed files
        # Child processes (the compile helper) read and write it too: a PYTHONDONTWRITEBYTECODE of the
        # environment (the H100 host sets it) kept the helper from writing what it imported for torch.compile,
        # so the next run's precompiled load compiled that bytecode again (8.2 s against 3.9 s on an H100).
        os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # into framepipe's folder only, as in this process
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        from core.compile_cache import COMPILE_CACHE_NAME, share_compile_cache

        folder = cache / COMPILE_CACHE_NAME
        if share_compile_cache(folder):  # kept under FRAMEPIPE_COMPILE_CACHE_MB
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    try:
        import torch

        # Frame sizes are fixed within a run: let cuDNN pick its fastest kernels once per shape.
        torch.backends.cudnn.benchmark = True
    except ImportError:
        pass


def _stop_display(display) -> None:
    try:
        display.stop()
    except (OSError, ValueError):
        pass


def _write_stats(args, stats, *, status: str, say, error: str | None = None) -> None:
    """--stats-json, written like every output: checked up front, temporary file, rename."""
    from core.errors import FramepipeError
    from core.files import write_file_atomically

    if args.stats_json is None or stats is None:
        return
    data = {"status": status, **stats.to_dict()}
    if error:
        data["error"] = error
    try:
        write_file_atomically(args.stats_json, json.dumps(data, indent=2, default=str).encode(),
                              overwrite=args.overwrite, flag="--stats-json")
    except (OSError, FramepipeError) as exc:  # the run's output is safe; only the report is lost
        say.print(f"[yellow]warning:[/] could not write --stats-json {escape(str(args.stats_json))}: {escape(str(exc))}",
                  highlight=False,
                  soft_wrap=True)


def _exit(code: int) -> None:
    """Exit with `code`. A background torch.compile still running (the run was short or
    stopped) must not be torn down by interpreter shutdown: seen on an H100, that crashed
    with SIGSEGV after the output was already finalized. Everything is written by now, so
    such a process leaves at once."""
    import os

    # The job is over: a stop signal while the interpreter shuts down changes nothing (Python
    # puts back the default handlers then, which would end the process with the signal's status).
    for number in _stop_signal_numbers():
        signal.signal(number, signal.SIG_IGN)
    helper_module = sys.modules.get("models.compile_helper")
    if helper_module is not None:  # nothing is left running behind the command
        helper_module.cancel_pending()
    if any(t.name.startswith("compile-") and t.is_alive() for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _exit(main())
