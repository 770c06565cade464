"""How fast one CPU encoder is here: a short measurement on synthetic frames, remembered.

`measure_encoder_speed(codec, ...)` opens the CPU encoder (libx264/libx265/libsvtav1) with the
writer's options (`hw.av_encode.encoder_options`) at the output's size and bit depth, feeds it
panned synthetic pictures until it has put out packets for about a second (after its look-ahead
filled: a second or two in all), and returns an `EncoderSpeed`: frames per second, and the CPU
cores the process kept busy meanwhile (process CPU time over wall time).
`remembered_encoder_speed(memo, ...)` answers from framepipe's cache (`hw.memory.ProbeMemo`,
keyed by encoder, preset, quality, size, bit depth, cores and libavcodec version) and measures
only what it has not seen. The count of parallel encoders is chosen from it
(`pipeline.encoder_choice`).

The pictures pan a smooth pattern with a little grain, so the encoder does motion search as on
real video; flat or repeated pictures encode many times faster than anything a model makes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from core.choices import CPU_ENCODERS, OUTPUT_PIX_FMT
from hw.scheduling import usable_cores

__all__ = ["EncoderSpeed", "known_encoder_speed", "measure_encoder_speed", "remembered_encoder_speed", "speed_key",
           "ENCODER_SPEEDS_FILE"]

log = logging.getLogger(__name__)

ENCODER_SPEEDS_FILE = "encoder-speeds.json"  # in framepipe's cache dir
_PAN = 64  # pixels the pattern moves over; the canvas is this much larger than a frame


@dataclass(frozen=True)
class EncoderSpeed:
    """One encoder alone on this machine: frames it encodes per second, cores it keeps busy."""

    fps: float
    cores_busy: float

    def __post_init__(self) -> None:
        if not (self.fps > 0 and self.cores_busy > 0):
            raise ValueError(f"an EncoderSpeed needs fps > 0 and cores_busy > 0, got {self.fps}, {self.cores_busy}")


def speed_key(codec: str, *, preset: str, crf: int | None, width: int, height: int, bit_depth: int = 8,
              num_cores: int | None = None) -> str:
    """What a measurement depends on: the encoder and its settings, the size, the machine."""
    import av

    cores = num_cores if num_cores is not None else usable_cores()
    libavcodec = ".".join(str(v) for v in av.library_versions.get("libavcodec", ()))
    return (f"{CPU_ENCODERS[codec]}|preset {preset}|crf {crf}|{width}x{height}|{bit_depth}-bit|{cores} cores|"
            f"libavcodec {libavcodec}")


def _canvas(width: int, height: int, bit_depth: int) -> tuple[np.ndarray, np.ndarray]:
    """A luma and a chroma picture larger than a frame by _PAN: smooth bands, edges, grain."""
    rng = np.random.default_rng(0)
    w, h = width + _PAN, height + _PAN
    x, y = np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32)
    luma = (110 + 50 * np.sin(x / 37.0))[None, :] + (40 * np.cos(y / 53.0))[:, None]
    luma += 24 * ((x[None, :] // 48 + y[:, None] // 48) % 2)  # block edges
    luma += rng.integers(-3, 4, luma.shape)  # grain
    chroma = (128 + 30 * np.sin(x[::2] / 23.0))[None, :] + (10 * np.cos(y[::2] / 29.0))[:, None]
    scale, dtype = (4, np.uint16) if bit_depth > 8 else (1, np.uint8)
    top = 255 * scale + (scale - 1)
    return ((luma * scale).clip(0, top).astype(dtype), (chroma * scale).clip(0, top).astype(dtype))


def _frame(luma: np.ndarray, chroma: np.ndarray, index: int, width: int, height: int, pix_fmt: str):
    import av

    dx, dy = (4 * index) % _PAN, (2 * index) % _PAN  # an even pan keeps the chroma aligned
    frame = av.VideoFrame(width, height, pix_fmt)
    pictures = (luma[dy:dy + height, dx:dx + width],
                chroma[dy // 2:dy // 2 + height // 2, dx // 2:dx // 2 + width // 2])
    for plane, data in zip(frame.planes, (pictures[0], pictures[1], pictures[1])):
        rows = np.frombuffer(plane, data.dtype).reshape(plane.height, plane.line_size // data.itemsize)
        rows[:, : data.shape[1]] = data
    frame.pts = index
    return frame


def measure_encoder_speed(codec: str, *, preset: str, crf: int | None, width: int, height: int, bit_depth: int = 8,
                          seconds: float = 1.0, max_frames: int = 400,
                          clock: Callable[[], float] = time.perf_counter,
                          cpu_clock: Callable[[], float] = time.process_time) -> EncoderSpeed:
    """Feed the encoder synthetic frames until it has put out packets for `seconds` (or took
    `max_frames`), and return its steady rate: packets after the first over the time since the
    first, and the cores the process kept busy meanwhile. The time before the first packet is
    left out: it is the look-ahead filling (x264 medium holds ~40 frames), not the rate."""
    import av

    from hw.av_encode import encoder_options
    from hw.scheduling import restore_scheduling

    pix_fmt = OUTPUT_PIX_FMT[10 if bit_depth > 8 else 8]
    luma, chroma = _canvas(width, height, bit_depth)
    ctx = av.CodecContext.create(CPU_ENCODERS[codec], "w")
    ctx.width, ctx.height, ctx.pix_fmt = width, height, pix_fmt
    ctx.time_base, ctx.framerate = Fraction(1, 25), Fraction(25)
    ctx.options = encoder_options(CPU_ENCODERS[codec], crf=crf, preset=preset)
    try:
        ctx.open()
    finally:
        restore_scheduling()  # SVT-AV1 as root: real-time threads (hw/scheduling.py)
    num_fed = num_packets = 0
    first_at = cpu_at = last_at = None
    while num_fed < max_frames and (first_at is None or last_at - first_at < seconds):
        packets = ctx.encode(_frame(luma, chroma, num_fed, width, height, pix_fmt))
        num_fed += 1
        if packets:
            last_at = clock()
            if first_at is None:
                first_at, cpu_at = last_at, cpu_clock()
                num_packets -= 1  # the first packet starts the clock
            num_packets += len(packets)
    if first_at is None or num_packets < 1:  # every frame still inside the encoder: let it finish them
        if first_at is None:
            first_at, cpu_at = clock(), cpu_clock()
        num_packets += len(ctx.encode(None))
        last_at = clock()
    wall, cpu = max(last_at - first_at, 1e-6), max(cpu_clock() - cpu_at, 1e-6)
    speed = EncoderSpeed(fps=max(num_packets, 1) / wall, cores_busy=min(cpu / wall, float(usable_cores())))
    log.debug("%s %s %dx%d: %d frames fed, %d packets in %.2f s (%.1f fps, %.1f cores busy)", codec, preset, width,
              height, num_fed, num_packets, wall, speed.fps, speed.cores_busy)
    return speed


def known_encoder_speed(memo, key: str) -> EncoderSpeed | None:
    """The speed `memo` holds for `key` (a `speed_key`); None where it holds none, or an entry of
    another format (measured again)."""
    known = memo.get(key) if memo is not None else None
    try:
        return EncoderSpeed(fps=float(known["fps"]), cores_busy=float(known["cores_busy"])) if known else None
    except (KeyError, TypeError, ValueError):
        return None


def remembered_encoder_speed(memo, codec: str, *, preset: str, crf: int | None, width: int, height: int,
                             bit_depth: int = 8, measure: Callable[..., EncoderSpeed] = measure_encoder_speed
                             ) -> tuple[EncoderSpeed, bool]:
    """(speed, measured now?): from `memo` (a `hw.memory.ProbeMemo`, or None) when this encoder,
    preset, size and machine were measured before, else measured now and remembered."""
    key = speed_key(codec, preset=preset, crf=crf, width=width, height=height, bit_depth=bit_depth)
    known = known_encoder_speed(memo, key)
    if known is not None:
        return known, False
    speed = measure(codec, preset=preset, crf=crf, width=width, height=height, bit_depth=bit_depth)
    if memo is not None:
        memo.put(key, {"fps": round(speed.fps, 2), "cores_busy": round(speed.cores_busy, 2),
                       "date": time.strftime("%Y-%m-%d")})
    return speed, True
