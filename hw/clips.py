"""Small clips made in code with PyAV: the built-in sample, and test/benchmark clips.

- `sample_clip()` renders (once, cached) a short clip of real photographs shipped
  with scikit-image, panned and zoomed, with a stereo tone: the input of the default
  run (`python main.py` with no --source).
- `make_clip(path, ...)` writes a clip whose frames carry their own index as a row of
  black/white blocks that survive lossy coding and resizing (`read_index` reads it
  back), with options for size, frame count, pixel format, variable frame rate,
  audio, subtitles and colour tags. Tests and benchmarks use it.
"""

from __future__ import annotations

import logging
import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from hw.scheduling import restore_scheduling

__all__ = ["sample_clip", "make_clip", "read_index", "INDEX_BITS", "render_photo_frames"]

log = logging.getLogger(__name__)

INDEX_BITS = 12  # up to 4095 frames
_SAMPLE_VERSION = 2


def render_photo_frames(width: int, height: int, num_frames: int) -> list[np.ndarray]:
    """Pan and zoom across scikit-image's sample photographs: (H, W, 3) uint8 frames."""
    import torch
    import torch.nn.functional as F
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    frames = []
    per_photo = max(1, num_frames // len(photos))
    for i in range(num_frames):
        photo = photos[min(i // per_photo, len(photos) - 1)]
        t = (i % per_photo) / max(per_photo - 1, 1)
        ph, pw = photo.shape[:2]
        zoom = 1.0 - 0.25 * t  # crop shrinks: a slow zoom in
        ch = int(min(ph, pw * height / width) * zoom)
        cw = int(ch * width / height)
        y0 = int((ph - ch) * (0.3 + 0.4 * t))
        x0 = int((pw - cw) * (0.2 + 0.6 * t))
        crop = torch.from_numpy(np.ascontiguousarray(photo[y0 : y0 + ch, x0 : x0 + cw])).permute(2, 0, 1)[None].float()
        small = F.interpolate(crop, size=(height, width), mode="area")
        frames.append(small[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())
    return frames


def _tone(num_seconds: float, rate: int = 48000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(num_seconds * rate)) / rate
    mono = (0.2 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return np.stack([mono, mono])  # (channels, samples) planar


def sample_clip(*, width: int = 192, height: int = 108, num_frames: int = 48, fps: int = 24) -> Path:
    """The built-in sample clip (rendered once into the cache directory).

    Where the cache folder cannot be used ($FRAMEPIPE_CACHE names a file, a read-only
    folder ...) the clip is rendered into a fresh temporary folder instead, with one log
    line: the default command must work on any machine."""
    import tempfile

    from core.files import create_exclusive
    from models import default_cache_dir  # the one cache folder, shared with the model weights

    name = f"sample-v{_SAMPLE_VERSION}-{width}x{height}-{num_frames}.mp4"
    folder = default_cache_dir()
    path = folder / name
    if path.is_file():
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = create_exclusive(folder, prefix=name, suffix=".part.mp4")
    except OSError as exc:
        log.warning("cache folder %s is not usable (%s); rendering the sample clip in a temporary folder. "
                    "Set FRAMEPIPE_CACHE to a writable folder.", folder, exc.strerror or exc)
        folder = Path(tempfile.mkdtemp(prefix="framepipe-sample-"))
        path = folder / name
        tmp = create_exclusive(folder, prefix=name, suffix=".part.mp4")
    try:
        frames = render_photo_frames(width, height, num_frames)
        _write(tmp, frames, rate=Fraction(fps), pts=None, time_base=Fraction(1, fps * 512),
               audio_seconds=num_frames / fps, color=(1, 1, 1, 1), pix_fmt="yuv420p", codec="libx264", subtitles=None)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("rendered the sample clip %s", path)
    return path


def _index_blocks(frame: np.ndarray, index: int) -> None:
    """Draw `index` as INDEX_BITS blocks along the top band (white = 1) of an RGB frame."""
    height, width = frame.shape[:2]
    band = max(2, height // 4)
    frame[:band] = 128
    for bit in range(INDEX_BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame[:band, bit * width // INDEX_BITS : (bit + 1) * width // INDEX_BITS] = value


def read_index(rgb: np.ndarray) -> int:
    """Read back the index drawn by `make_clip` from a decoded (H, W, 3) frame, any scale."""
    height, width = rgb.shape[:2]
    band = max(2, height // 4)
    block_w = width / INDEX_BITS
    gray = rgb[: band, :, :].astype(np.float32).mean(axis=2)
    index = 0
    for bit in range(INDEX_BITS):
        x0, x1 = int(bit * block_w + block_w * 0.25), int((bit + 1) * block_w - block_w * 0.25)
        y0, y1 = int(band * 0.25), max(int(band * 0.75), int(band * 0.25) + 1)
        if gray[y0:y1, x0:x1].mean() > 128:
            index |= 1 << bit
    return index


def make_clip(
    path: str | os.PathLike,
    *,
    width: int = 64,
    height: int = 48,
    num_frames: int = 24,
    fps: int = 24,
    pix_fmt: str = "yuv420p",
    codec: str = "libx264",
    vfr: bool = False,
    audio: bool = False,
    audio_codec: str = "aac",
    subtitles: Sequence[str] | None = None,
    color: tuple[int, int, int, int] | None = (1, 1, 1, 1),
    photo: bool = False,
    codec_options: dict[str, str] | None = None,
) -> Path:
    """Write a clip whose frame k shows k as blocks; returns the path.

    `vfr=True` alternates frame durations of 1 and 2 ticks of 1/fps (a variable frame
    rate). `color` = (matrix, primaries, transfer, range) as FFmpeg codes. `codec_options`
    go to the encoder after framepipe's own (e.g. {"g": "12", "bf": "3"}: a keyframe every 12
    frames, up to 3 B-frames).
    """
    path = Path(path)
    if photo:
        frames = render_photo_frames(width, height, num_frames)
    else:
        rng = np.random.default_rng(0)
        base = np.zeros((height, width, 3), np.uint8)
        base[..., 0] = np.linspace(30, 220, width, dtype=np.uint8)[None, :]
        base[..., 1] = np.linspace(60, 200, height, dtype=np.uint8)[:, None]
        base[..., 2] = 110
        frames = []
        for _ in range(num_frames):
            f = base.copy()
            f[height // 2 :] = np.clip(f[height // 2 :].astype(int) + rng.integers(-6, 7, f[height // 2 :].shape), 0, 255)
            frames.append(f.astype(np.uint8))
    for i, f in enumerate(frames):
        _index_blocks(f, i)
    time_base = Fraction(1, fps * 100)
    pts = None
    if vfr:
        pts, t = [], 0
        for i in range(num_frames):
            pts.append(t)
            t += 100 * (1 if i % 2 == 0 else 2)
    duration = (pts[-1] + 200) * time_base if pts else Fraction(num_frames, fps)
    _write(path, frames, rate=Fraction(fps), pts=pts, time_base=time_base,
           audio_seconds=float(duration) if audio else 0.0, audio_codec=audio_codec, color=color, pix_fmt=pix_fmt,
           codec=codec, subtitles=subtitles, codec_options=codec_options)
    return path


def _write(path, frames, *, rate, pts, time_base, audio_seconds, color, pix_fmt, codec, subtitles, audio_codec="aac",
           codec_options=None):
    import av

    out = av.open(str(path), "w")
    vs = out.add_stream(codec, rate=rate)
    height, width = frames[0].shape[:2]
    vs.width, vs.height, vs.pix_fmt = width, height, pix_fmt
    vs.time_base = time_base
    vs.codec_context.time_base = time_base
    if codec == "libx264":
        vs.options = {"crf": "12", "preset": "veryfast"}
    if codec_options:
        vs.options = {**(vs.options or {}), **codec_options}
    if color is not None:
        cc = vs.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = color
    astream = None
    if audio_seconds:
        astream = out.add_stream(audio_codec, rate=48000)
        astream.codec_context.layout = "stereo"
    subs_in = sstream = None
    if subtitles:
        subs_in = av.open(_srt_file(path, subtitles))
        sstream = out.add_stream_from_template(subs_in.streams.subtitles[0])
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        if color is not None:
            frame.colorspace, frame.color_range = color[0], color[3]
        frame = frame.reformat(format=pix_fmt)
        frame.pts = pts[i] if pts is not None else int(round(i / (rate * time_base)))
        frame.time_base = time_base
        for packet in vs.encode(frame):
            out.mux(packet)
        if i == 0:  # the encoder opened with its first frame
            restore_scheduling()
    for packet in vs.encode(None):
        out.mux(packet)
    if astream is not None:
        samples = _tone(audio_seconds)
        fmt = astream.codec_context.codec.audio_formats[0].name
        resampler = av.AudioResampler(format=fmt, layout="stereo", rate=48000)
        frame_size = astream.codec_context.frame_size or 1024
        for start in range(0, samples.shape[1], frame_size):
            chunk = np.ascontiguousarray(samples[:, start : start + frame_size])
            af = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            af.sample_rate = 48000
            af.pts = start
            af.time_base = Fraction(1, 48000)
            for rf in resampler.resample(af):
                for packet in astream.encode(rf):
                    out.mux(packet)
        for packet in astream.encode(None):
            out.mux(packet)
    if subs_in is not None:
        for packet in subs_in.demux(subs_in.streams.subtitles[0]):
            if packet.size:
                packet.stream = sstream
                out.mux(packet)
        subs_in.close()
    out.close()


def _srt_file(path: Path, lines: Sequence[str]) -> str:
    """One SubRip cue per second, in a file beside `path` (muxed as SubRip into Matroska)."""
    srt = Path(str(path) + ".srt")
    cues = [f"{i + 1}\n00:00:0{i},000 --> 00:00:0{i},900\n{text}\n" for i, text in enumerate(lines[:9])]
    srt.write_text("\n".join(cues), encoding="utf-8")
    return str(srt)
