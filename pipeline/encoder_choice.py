"""Planning: how many encoders work at once on consecutive segments when `--encoders 0` (auto).

Enough that encoding does not bound the run, no more: each encoder holds up to a segment of
frames plus x264's look-ahead in memory, and its threads take CPU from decoding (and from a
model on the CPU).

`choose_encoders(...)` is the rule, pure (every measurement is passed in, so tests give their
own); `EncoderChoice.line` says in one line what was chosen and why.

- The limits: half the CPU cores (each x264 instance runs threads of its own), the number of
  segments, MAX_AUTO_ENCODERS (measured on 16 cores: 6 instances gave 60 fps where 4 gave
  55; DESIGN.md), and what fits in the memory given (`memory_fits`, from the plan).
- The need: the frames per second the encoders must keep up with, i.e. what the decoder and
  the model delivered in an earlier run of the same model, size, devices and precision
  (MODEL_RATES_FILE in framepipe's cache, written by `remember_model_rate` at the end of each
  run; unknown on the first run, when the limits decide), times the output frames per source
  frame, plus 25%.
- What k encoders do together, from one encoder measured alone (`hw.encode_speed`: fps and
  the cores it keeps busy): k x fps while k of them fit the cores, no more than the cores
  give (fps x cores / cores busy) after. The smallest k that meets the need; where even the
  limits do not, every encoder they allow (encoding bounds that run).

Measured on the H100 host's 16 cores at 2560x1920 x264 medium: one encoder 36 fps; 2, 3, 4
and 6 encoders 49, 51, 55 and 60 fps together (the issue's figures). The model's ~190 fps
there is more than any count encodes, so the limits decide: 6; a model at 40 fps needs
40 x 1.25 = 50 fps: 2 encoders.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from core.choices import MAX_AUTO_ENCODERS
from hw.encode_speed import EncoderSpeed

__all__ = ["EncoderChoice", "choose_encoders", "encoder_threads", "model_rate_key", "remember_model_rate", "remembered_model_rate",
           "MIN_FRAMES_FOR_RATE", "MODEL_RATES_FILE"]

log = logging.getLogger(__name__)

HEADROOM = 1.25  # encoders planned for 25% more than the model delivered: the rate is an average
MIN_FRAMES_FOR_RATE = 100  # a run shorter than this says little about the model's steady rate
MODEL_RATES_FILE = "model-rates.json"  # in framepipe's cache dir (models.registry.default_cache_dir)


def encoder_threads(num_encoders: int, num_cores: int) -> int:
    """Threads each CPU encoder of a pool of `num_encoders` may run (0: the encoder's own choice,
    for one encoder). x264 left to itself starts about 1.5 threads per core in every instance:
    six instances on 16 cores are ~150 busy threads, and the pipeline's own threads (the GPU
    worker launching the model, the reader, the collector) then wait their turn behind them.
    Together the pool's threads match the cores (rounded up: 6 encoders on 16 cores run 3 each)."""
    if num_encoders <= 1:
        return 0
    return max(1, -(-num_cores // num_encoders))


@dataclass(frozen=True)
class EncoderChoice:
    num_encoders: int
    line: str  # "encoders: 3 (...)", printed when the run starts


def choose_encoders(*, speed: EncoderSpeed | None, model_fps: float | None, num_cores: int, memory_fits: int,
                    num_segments: int, what: str, frames_per_source_frame: int = 1) -> EncoderChoice:
    """The automatic number of encoders (see the module's docstring). `speed`: one encoder alone
    (None: not measured, when the limits allow only one); `model_fps`: source frames per second
    the decoder and model delivered before (None: unknown); `what`: the size and settings encoded,
    for the line ("2560x1920 h264 medium")."""
    by_cores = max(1, num_cores // 2)
    allowed = max(1, min(by_cores, MAX_AUTO_ENCODERS, memory_fits, num_segments))
    limits = (f"{num_cores} cores allow {by_cores}; memory allows {memory_fits}; {num_segments} segment(s); "
              f"at most {MAX_AUTO_ENCODERS}")
    if speed is None or allowed == 1:
        return EncoderChoice(allowed, f"encoders: {allowed} ({limits})")
    one = (f"one encodes {speed.fps:.0f} fps at {what}, keeping {speed.cores_busy:.1f} of {num_cores} cores busy")
    if model_fps is None:
        return EncoderChoice(allowed, f"encoders: {allowed} ({one}; the model's rate here is not known yet, so the "
                                      f"limits decide: {limits})")
    need = model_fps * frames_per_source_frame * HEADROOM
    ceiling = speed.fps * num_cores / max(speed.cores_busy, 1e-6)  # what the cores give, all encoding
    per_frame = f" x {frames_per_source_frame} frames out" if frames_per_source_frame > 1 else ""
    rate = f"the model delivered {model_fps:.0f} fps{per_frame} here before"
    for k in range(1, allowed + 1):
        if min(k * speed.fps, ceiling) >= need:
            return EncoderChoice(k, f"encoders: {k} ({one}; {rate}, +25% is {need:.0f} fps; the limits "
                                    f"would allow {allowed}: {limits})")
    return EncoderChoice(allowed, f"encoders: {allowed} ({one}; {rate}, more than {allowed} encode, so encoding "
                                  f"bounds this run: {limits})")


def model_rate_key(*, model: str, scale: int, width: int, height: int, devices: list[str], dtypes: list[str],
                   compiled: list[bool], tile_size: int = 0, interpolate: int = 1) -> str:
    """What the decoder-and-model rate depends on: the model, the input size, the devices and how
    they run it."""
    return (f"{model} x{scale}|{width}x{height}|{','.join(devices)}|{','.join(dtypes)}|"
            f"compiled {','.join('yes' if c else 'no' for c in compiled)}|tiles {tile_size}|interpolate {interpolate}")


def source_frames_per_second(stats) -> float | None:
    """Source frames per second the decoder and the workers delivered in a run, each from the
    time it spent working (time blocked on a full queue left out: that is the encoders' speed,
    not theirs); the batch probe's seconds are left out too. None: too few frames to say."""
    if stats.num_frames_written < MIN_FRAMES_FOR_RATE:
        return None
    rates = []
    reader = stats.stages.get("reader")
    if reader is not None and reader.busy_seconds > 0:
        rates.append(stats.num_frames_decoded / reader.busy_seconds)
    workers = [w for w in stats.workers.values() if w.num_frames]
    busy = [max(w.clock.busy_seconds - w.probe_seconds, 1e-3) for w in workers]
    if workers:
        rates.append(sum(w.num_frames / b for w, b in zip(workers, busy)))
    return min(rates) if rates else None


def remember_model_rate(memo, key: str, stats) -> None:
    """At the end of a run: what the decoder and model delivered, for the next run's choice."""
    fps = source_frames_per_second(stats)
    if memo is None or fps is None:
        return
    memo.put(key, {"fps": round(fps, 2), "frames": stats.num_frames_written, "date": time.strftime("%Y-%m-%d")})
    log.debug("model rate %.1f fps remembered for %s", fps, key)


def remembered_model_rate(memo, key: str) -> float | None:
    known = memo.get(key) if memo is not None else None
    try:
        return float(known["fps"]) if known else None
    except (KeyError, TypeError, ValueError):
        return None
