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
  frame, plus 25%. The model's part is the rate of the batches run compiled once the compilation
  was ready (`source_frames_per_second`): a first run that stayed eager while the compiler worked
  would otherwise plan the next, compiled run's encoders for half its speed (seen on an H200,
  x4plus-anime at 480x270 -> 1080p: after a first run whose compilation did not finish, the
  pool was planned at 1 encoder; compiled, the model made 145 fps alone and the run 65).
  A run that ended before its compilation did (a cold cache: its compile helper works on after
  it) remembers none; its helper then times the compiled model alone and that rate stands in
  until a run measures its own (`remember_helper_rate`): without it, the next run was planned
  by the limits (6 encoders on an H100 for a model that 1 keeps up with).
- What k encoders do together, from one encoder measured alone (`hw.encode_speed`: fps and
  the cores it keeps busy): k x fps while k of them fit the cores, no more than the cores
  give (fps x cores / cores busy) after (`pool_fps`). That measurement encodes synthetic
  frames, which go ~3x faster than an upscaled video (seen on an H200 at 1920x1080 veryfast:
  207 fps measured, 63-77 fps on a run's frames); so a run whose encoders bounded it remembers
  how fast its real frames went against it, from the encoders' busy time (`learn_content_factor`,
  ENCODER_FACTORS_FILE), and the next choice with these settings and size counts with that factor
  (the line says so). A run whose pool kept up with frames to spare teaches nothing.
  The smallest k that meets the need; where even the limits do not, every encoder they allow
  (encoding bounds that run).

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
from core.paths import default_cache_dir
from hw.encode_speed import EncoderSpeed, known_encoder_speed
from hw.memory import ProbeMemo, entry_number

__all__ = ["EncoderChoice", "choose_encoders", "content_factor", "encoder_busy_share", "encoder_capacity_fps", "encoder_threads",
           "compiled_as_run", "learn_content_factor", "model_rate_key", "model_rate_timed_alone", "model_rates_memo",
           "pool_fps", "remember_content_factor", "remember_helper_rate", "remember_model_rate",
           "remembered_content_factor", "remembered_model_rate", "ENCODER_FACTORS_FILE", "MIN_FRAMES_FOR_RATE", "MODEL_RATES_FILE"]

log = logging.getLogger(__name__)

HEADROOM = 1.25  # encoders planned for 25% more than the model delivered: the rate is an average
MIN_FRAMES_FOR_RATE = 100  # a run shorter than this says little about the model's steady rate
MIN_ENCODER_SECONDS = 1.0  # the pool's encoders worked less than this together: too little to tell their speed
ENCODER_BUSY_SHARE = 0.6  # busy this share of the run after its first frame, or more: the encoders bounded it
ENCODER_FACTORS_FILE = "encoder-content.json"  # real frames vs the synthetic measurement, per encoder setting and size
MIN_STEADY_FRAMES = 32  # a worker's batches in its settled mode, fewer: its whole run's rate is taken
UNSETTLED = ("waiting", "compiling", "cancelled")  # compile statuses of a worker that never ran compiled
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
    speed_key: str = ""  # the CPU encoder's settings and size (hw.encode_speed.speed_key): what the run teaches
    capacity_fps: float | None = None  # frames the pool can encode per second (`pool_fps`); None: not measured


def choose_encoders(*, speed: EncoderSpeed | None, model_fps: float | None, num_cores: int, memory_fits: int,
                    num_segments: int, what: str, frames_per_source_frame: int = 1,
                    model_alone: bool = False) -> EncoderChoice:
    """The automatic number of encoders (see the module's docstring). `speed`: one encoder alone
    (None: not measured, when the limits allow only one); `model_fps`: source frames per second
    the decoder and model delivered before (None: unknown), or with `model_alone` the compiled
    model alone as its compile helper timed it; `what`: the size and settings encoded, for the
    line ("2560x1920 h264 medium")."""
    by_cores = max(1, num_cores // 2)
    allowed = max(1, min(by_cores, MAX_AUTO_ENCODERS, memory_fits, num_segments))
    limits = (f"{num_cores} core{'s' if num_cores != 1 else ''} allow{'s' if num_cores == 1 else ''} {by_cores}; "
              f"memory allows {memory_fits}; {num_segments} segment(s); "
              f"at most {MAX_AUTO_ENCODERS}")
    if speed is None or allowed == 1:
        return EncoderChoice(allowed, f"encoders: {allowed} ({limits})")
    one = (f"one encodes {speed.fps:.0f} fps at {what}, keeping {speed.cores_busy:.1f} of {num_cores} cores busy")
    if model_fps is None:
        return EncoderChoice(allowed, f"encoders: {allowed} ({one}; the model's rate here is not known yet, so the "
                                      f"limits decide: {limits})")
    need = model_fps * frames_per_source_frame * HEADROOM
    per_frame = f" x {frames_per_source_frame} frames out" if frames_per_source_frame > 1 else ""
    rate = (f"the compiled model alone ran {model_fps:.0f} fps{per_frame} here (its compile helper timed it)"
            if model_alone else f"the model delivered {model_fps:.0f} fps{per_frame} here before")
    for k in range(1, allowed + 1):
        if pool_fps(speed, k, num_cores) >= need:
            return EncoderChoice(k, f"encoders: {k} ({one}; {rate}, +25% is {need:.0f} fps; the limits "
                                    f"would allow {allowed}: {limits})")
    return EncoderChoice(allowed, f"encoders: {allowed} ({one}; {rate}, more than {allowed} encode, so encoding "
                                  f"bounds this run: {limits})")


def pool_fps(speed: EncoderSpeed, num_encoders: int, num_cores: int) -> float:
    """What `num_encoders` encoders of `speed` give together: each its rate while they fit the
    cores, no more than the cores give after."""
    return min(num_encoders * speed.fps, speed.fps * num_cores / max(speed.cores_busy, 1e-6))


def _encoders_busy_seconds(stats) -> float:
    return sum(clock.busy_seconds for name, clock in stats.stages.items() if name.startswith("encoder"))


def encoder_busy_share(stats, num_encoders: int) -> float:
    """The share of the run the pool's encoders were busy, all together (1.0: each all along),
    counted from the first frame out of the model (before it they had nothing to encode: a long
    start, the model loading or probing, would make encoders that bounded the run look idle)."""
    span = (stats.after_first_frame_seconds or 0.0) * max(num_encoders, 1)
    return _encoders_busy_seconds(stats) / span if span > 0 else 0.0


def encoder_capacity_fps(stats, num_encoders: int) -> float | None:
    """Frames per second the run's pool of `num_encoders` could put out, from the encoders' own
    work: the frames they encoded per second of an encoder's busy time (opening, encoding and
    closing its segments), times the encoders. Where they were busy all along (they bounded the
    run) that is its rate. Where they waited for frames it is an upper bound: an encoder busy
    beside fewer others had more of the cores (on an H100 host, 194 fps from a model-bound run's
    6 encoders, busy 35% of it, against 147 for the same 6 alone). None where fewer than
    MIN_FRAMES_FOR_RATE frames or less than MIN_ENCODER_SECONDS of work say too little."""
    busy = _encoders_busy_seconds(stats)
    encoded = stats.num_frames_encoded
    if encoded < MIN_FRAMES_FOR_RATE or busy < MIN_ENCODER_SECONDS or num_encoders < 1:
        return None
    return num_encoders * encoded / busy


def content_factor(observed_fps: float, speed: EncoderSpeed, num_encoders: int, num_cores: int) -> float:
    """How much faster (> 1) or slower (< 1) the pool encoded a run's real frames than the
    synthetic measurement (`hw.encode_speed`) predicts for it, within [1/20, 4]."""
    predicted = pool_fps(speed, num_encoders, num_cores)
    return min(4.0, max(0.05, observed_fps / max(predicted, 1e-6)))


def remember_content_factor(memo, key: str, factor: float, *, observed_fps: float, num_encoders: int,
                            busy_share: float) -> None:
    memo.put(key, {"factor": round(factor, 3), "observed_fps": round(observed_fps, 2), "encoders": num_encoders,
                   "busy_share": round(busy_share, 3), "date": time.strftime("%Y-%m-%d")})
    log.debug("encoders at %s: %.1f fps with %d, %.2f x the synthetic measurement", key, observed_fps,
              num_encoders, factor)


def learn_content_factor(stats, *, key: str, num_encoders: int, num_cores: int, speeds_memo, factors_memo) -> float | None:
    """At the end of a run into the encoder pool: how its real frames encoded (`encoder_capacity_fps`)
    against the synthetic measurement of one encoder with these settings (in `speeds_memo`, never
    measured here), remembered in `factors_memo` for the next choice, where the encoders bounded
    the run (busy ENCODER_BUSY_SHARE of it or more): a pool planned too small for a model-bound job
    shows in the next plan (seen on an H100: the synthetic 207 fps of one x264 veryfast at 1080p
    planned 1 and then 2 encoders for a 130 fps model; real frames went at ~55 fps an encoder).
    A pool that kept up with frames to spare teaches nothing: its encoders' rate per busy second
    is no measure of what they do when they bound a run. It came out higher (an H100, 6 encoders
    busy 35% of a run: 194 fps, against 147 for the same 6 alone) and lower: on an H100, a
    480-frame run's 4 encoders, busy 20% of it, gave 200 fps, 0.39 of what `pool_fps` predicts for
    them, and once remembered the next run planned 3 encoders (the factor could only go down:
    a 10-minute video's 3, busy 35% of it, gave 0.67). None: nothing learnt."""
    observed = encoder_capacity_fps(stats, num_encoders)
    speed = known_encoder_speed(speeds_memo, key) if observed is not None and key else None
    if speed is None:  # too little encoded, or not measured for these settings
        return None
    share = encoder_busy_share(stats, num_encoders)
    if share < ENCODER_BUSY_SHARE:  # the pool kept up: no measure of its speed
        return None
    factor = content_factor(observed, speed, num_encoders, num_cores)
    remember_content_factor(factors_memo, key, factor, observed_fps=observed, num_encoders=num_encoders,
                            busy_share=share)
    return factor


def _remembered(memo, key: str, field: str) -> float | None:
    """`field` of the memo's entry for `key` as a number; None where there is none (or another format)."""
    return entry_number(memo.get(key) if memo is not None else None, field)


def remembered_content_factor(memo, key: str) -> float | None:
    """The factor a run the encoders bounded taught (entries without `busy_share` were written by
    an earlier framepipe, which also learnt from runs whose pool kept up: not used)."""
    if _remembered(memo, key, "busy_share") is None:
        return None
    return _remembered(memo, key, "factor")


def model_rate_key(*, model: str, scale: int, width: int, height: int, devices: list[str], dtypes: list[str],
                   compiled: list[bool], tile_size: int = 0, interpolate: int = 1) -> str:
    """What the decoder-and-model rate depends on: the model, the input size, the devices and how
    they run it."""
    return (f"{model} x{scale}|{width}x{height}|{','.join(devices)}|{','.join(dtypes)}|"
            f"compiled {','.join('yes' if c else 'no' for c in compiled)}|tiles {tile_size}|interpolate {interpolate}")


def compiled_as_run(devices: list[str], stats) -> list[bool]:
    """Per device (`str(dev)`, in the plan's order): whether one of its workers ran the model
    compiled. A model kept eager (the encoders bound the run: pipeline/worker.py
    `Worker._weigh_compile`), or whose compilation failed or differed, ran eagerly, and its rate
    must not be remembered as the compiled model's (the next run would plan too few encoders for
    a compiled model): the key it goes under (`model_rate_key`) says how the workers ran."""
    return [any(w.device == dev and getattr(getattr(w, "compile", None), "status", "eager") == "compiled"
                for w in stats.workers.values()) for dev in devices]


def source_frames_per_second(stats) -> float | None:
    """Source frames per second the decoder and the workers delivered in a run, each from the
    time it spent working (time blocked on a full queue left out: that is the encoders' speed,
    not theirs). A worker's rate is that of its batches in the mode it settled in
    (`WorkerStats.steady_frames`: compiled once its compilation was ready), so the eager batches
    before the switch, the model's start and the batch probe do not count. None: too few frames
    to say, or a worker that never settled: a run that ended before its compilation did, or
    soon after (fewer than MIN_STEADY_FRAMES compiled frames). The next run, compiled from the
    cache, is ~2-3x faster than this one's eager batches: on an H100 a first run that compiled
    for 40 s of its 44 had remembered 59 fps for a model that runs 130 compiled, and the
    next run planned 1 encoder (123 fps) where it needed 2."""
    if stats.num_frames_written < MIN_FRAMES_FOR_RATE:
        return None
    rates = []
    reader = stats.stages.get("reader")
    if reader is not None and reader.busy_seconds > 0:
        rates.append(stats.num_frames_decoded / reader.busy_seconds)
    total = 0.0
    for w in stats.workers.values():
        if not w.num_frames:
            continue
        steady, seconds = getattr(w, "steady_frames", 0), getattr(w, "steady_seconds", 0.0)
        if steady >= MIN_STEADY_FRAMES and seconds > 0:
            total += steady / seconds
        elif getattr(getattr(w, "compile", None), "status", "eager") in UNSETTLED + ("compiled",):
            return None  # compiled at the very end (or never): its rate so far is the eager model's
        else:  # eager for good (kept eager, failed, differed), too few settled batches: the whole run's
            total += w.num_frames / max(w.clock.busy_seconds - w.probe_seconds, 1e-3)
    if total:
        rates.append(total)
    return min(rates) if rates else None


def model_rates_memo() -> ProbeMemo:
    """The model rates runs delivered (and compile helpers timed), in framepipe's cache."""
    return ProbeMemo(default_cache_dir() / MODEL_RATES_FILE)


def remember_model_rate(memo, key: str, stats) -> None:
    """At the end of a run: what the decoder and model delivered, for the next run's choice."""
    fps = source_frames_per_second(stats)
    if memo is None or fps is None:
        return
    memo.put(key, {"fps": round(fps, 2), "frames": stats.num_frames_written, "date": time.strftime("%Y-%m-%d")})
    log.debug("model rate %.1f fps remembered for %s", fps, key)


def remember_helper_rate(memo, key: str, *, devices: list[str], device: str, fps: float) -> None:
    """A compile helper timed the compiled model alone on `device`, one of the run's `devices`, at
    `fps` (models/compile_helper.py `--rate`): kept under `key` in that device's place among them
    (the key names the GPUs in that order; a later run on other GPUs of the same kind, or whose
    other helpers did not run, their caches warm, fills or keeps the same places), unless a run
    measured the rate there (its "fps", what the decoder and model delivered: the better measure)."""
    if memo is None or device not in devices:
        return
    place = str(devices.index(device))

    def change(entry):
        if entry_number(entry, "fps") is not None:
            return None
        timed = entry.get("helper_fps") if isinstance(entry, dict) and entry.get("devices") == len(devices) else None
        timed = timed if isinstance(timed, dict) else {}
        return {"helper_fps": {**timed, place: round(fps, 2)}, "devices": len(devices), "date": time.strftime("%Y-%m-%d")}

    memo.update(key, change)
    log.debug("model rate %.1f fps on %s timed by its compile helper, for %s", fps, device, key)


def model_rate_timed_alone(memo, key: str) -> bool:
    """Whether `remembered_model_rate` gives the compile helpers' timing (no run measured one)."""
    entry = memo.get(key) if memo is not None else None
    return entry_number(entry, "fps") is None and _helpers_together(entry) is not None


def remembered_model_rate(memo, key: str) -> float | None:
    """What a run delivered with `key`; else, where every device's compile helper timed the
    compiled model alone, their rates together (an upper bound: the run delivers ~0.94 of it on
    an H100, so the encoders are planned with a little more headroom)."""
    entry = memo.get(key) if memo is not None else None
    fps = entry_number(entry, "fps")
    return fps if fps is not None else _helpers_together(entry)


def _helpers_together(entry) -> float | None:
    """The sum of a rates entry's helper timings (`remember_helper_rate`), where every place has one."""
    timed = entry.get("helper_fps") if isinstance(entry, dict) else None
    count = entry_number(entry, "devices") if isinstance(timed, dict) else None
    if not count or count != int(count):
        return None
    rates = [entry_number(timed, str(place)) for place in range(int(count))]
    return sum(rates) if all(r is not None and r > 0 for r in rates) else None
