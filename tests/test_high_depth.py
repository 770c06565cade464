"""10-bit output and HDR10 metadata (issue 13): a deeper source keeps its depth and its look.

Sources are written here: a 10-bit ramp (more levels than 8 bits hold) and an HDR10 clip
(BT.2020, PQ, mastering display and content light level in the bitstream)."""

from __future__ import annotations

import io
import re
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import main as cli
from hw.hdr import HdrMetadata, encoder_hdr_options, hdr_metadata
from pipeline import RunConfig, run
from tests import probe

MASTER = "G(13250,34500)B(7500,3000)R(34000,16000)WP(15635,16450)L(10000000,50)"


def _write_10bit(path: Path, frames: list[np.ndarray], *, codec="libx265", params="", color=(9, 9, 16, 1)) -> Path:
    """Y planes (uint16 10-bit codes) with neutral chroma, lossless where the codec allows."""
    height, width = frames[0].shape
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p10le"
        cc = s.codec_context
        cc.colorspace, cc.color_primaries, cc.color_trc, cc.color_range = color
        if codec == "libx265":
            # No B-frames: once in CI (2 cores) the MKV muxer refused a packet of this 2-frame
            # source (EINVAL); without reordering every packet's dts equals its pts.
            s.options = {"x265-params": ":".join(p for p in ("log-level=error:lossless=1:bframes=0", params) if p)}
        pictures = []
        for y in frames:
            f = av.VideoFrame(width, height, "yuv420p10le")
            for k, plane in enumerate(f.planes):
                rows = np.frombuffer(plane, np.uint16).reshape(plane.height, plane.line_size // 2)
                rows[:, : plane.width] = y if k == 0 else 512
            pictures.append(f)
        _encode_all(out, s, pictures)
    return path


def _encode_all(out, stream, frames) -> None:
    """Encode `frames` numbered 0, 1, ... into `stream` of `out`, then flush the encoder."""
    for i, frame in enumerate(frames):
        frame.pts = i
        for p in stream.encode(frame):
            out.mux(p)
    for p in stream.encode(None):
        out.mux(p)


def _ramp(width=512, height=32, frames=3) -> list[np.ndarray]:
    """Limited-range 10-bit luma from 64 to 940 across the width: 877 levels, 3.4 per 8-bit step."""
    row = np.round(np.linspace(64, 940, width)).astype(np.uint16)
    return [np.repeat(row[None, :], height, axis=0) for _ in range(frames)]


def _luma(path: Path) -> tuple[str, list[np.ndarray]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    fmt = frames[0].format.name
    dtype = np.uint16 if "10" in fmt else np.uint8
    out = []
    for f in frames:
        plane = f.planes[0]
        out.append(np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // np.dtype(dtype).itemsize)[:, : plane.width])
    return fmt, out


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=8)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("codec, suffix", [("hevc", ".mkv"), ("hevc", ".mp4"), ("av1", ".mkv")])
def test_a_10bit_ramp_keeps_more_than_256_levels(tmp_path, codec, suffix):
    src = _write_10bit(tmp_path / "ramp.mkv", _ramp())
    out = tmp_path / f"out{suffix}"
    stats = run(_cfg(src, out, codec=codec, crf=1 if codec == "hevc" else 4))
    fmt, luma = _luma(out)
    assert fmt == "yuv420p10le" and len(luma) == 3
    levels = len(np.unique(luma[0][8]))
    assert levels > 600, levels  # 877 in the source; 8 bits would leave at most 220
    assert "10-bit" in stats.notes["output_video"]


def test_8bit_output_of_the_same_ramp_bands(tmp_path):
    """The control: asked for 8 bits, the same ramp comes out with at most 220 luma levels."""
    src = _write_10bit(tmp_path / "ramp.mkv", _ramp())
    out = tmp_path / "out8.mkv"
    stats = run(_cfg(src, out, codec="hevc", crf=1, bit_depth=8))
    fmt, luma = _luma(out)
    assert fmt == "yuv420p" and len(np.unique(luma[0][8])) <= 220
    assert any("--bit-depth 8 writes 8-bit output" in n for n in stats.notes["fallbacks"])


def test_10bit_codes_survive_an_identity_model_within_one_code(tmp_path):
    """Float all the way: 10-bit in, bicubic x1 (identity), 10-bit out: every luma code within 1
    of the source's (lossless x265 out), so nothing went through 8 bits."""
    rng = np.random.default_rng(1)
    frames = [rng.integers(64, 941, (48, 64)).astype(np.uint16) for _ in range(2)]
    src = _write_10bit(tmp_path / "noise.mkv", frames)
    out = tmp_path / "same.mkv"
    run(RunConfig(source=src, output=out, model="bicubic", scale=1, codec="hevc", crf=0, preset="ultrafast"))
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.format.name == "yuv420p10le"
    _, luma = _luma(out)
    for got, want in zip(luma, frames):
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_h264_stays_8bit_by_default_and_says_so_and_writes_high10_when_asked(tmp_path):
    src = _write_10bit(tmp_path / "ramp.mkv", _ramp(frames=2))
    stats = run(_cfg(src, tmp_path / "h264.mp4"))
    assert _luma(tmp_path / "h264.mp4")[0] == "yuv420p"
    assert any("--codec hevc or --codec av1 to keep 10 bits" in n for n in stats.notes["fallbacks"])
    stats = run(_cfg(src, tmp_path / "high10.mp4", bit_depth=10, crf=1))
    fmt, luma = _luma(tmp_path / "high10.mp4")
    assert fmt == "yuv420p10le" and len(np.unique(luma[0][8])) > 600
    assert any("High 10" in n for n in stats.notes["fallbacks"])


def test_10bit_odd_size_and_segments(tmp_path):
    """An odd output size is padded as at 8 bits; a segmented 10-bit run joins to one 10-bit stream."""
    rng = np.random.default_rng(2)
    src = _write_10bit(tmp_path / "odd.mkv", [rng.integers(64, 941, (24, 30)).astype(np.uint16) for _ in range(9)])
    out = tmp_path / "odd.mkv.out.mkv"
    run(_cfg(src, out, scale=3, codec="hevc", segment_frames=4, crf=10))  # 90x72 even; scale 3 of 30x24
    fmt, luma = _luma(out)
    assert fmt == "yuv420p10le" and len(luma) == 9 and luma[0].shape == (72, 90)
    rng = np.random.default_rng(3)
    src2 = _write_10bit(tmp_path / "odd2.mkv", [rng.integers(64, 941, (22, 30)).astype(np.uint16) for _ in range(3)])
    run(RunConfig(source=src2, output=tmp_path / "o2.mkv", model="bicubic", scale=1, codec="hevc", crf=10))
    assert _luma(tmp_path / "o2.mkv")[1][0].shape == (22, 30)


def _hdr10_source(tmp_path: Path) -> Path:
    return _write_10bit(tmp_path / "hdr10.mkv", _ramp(128, 32, 4), params=f"hdr10=1:master-display={MASTER}:max-cll=1000,400")


@pytest.mark.parametrize("codec, suffix, segments", [("hevc", ".mkv", None), ("hevc", ".mp4", 2), ("av1", ".mkv", None)])
def test_hdr10_tags_and_metadata_come_through(tmp_path, codec, suffix, segments):
    src = _hdr10_source(tmp_path)
    with av.open(str(src)) as c:
        want = hdr_metadata(next(c.decode(video=0)))
    assert want is not None and want.has_display and want.max_cll == 1000 and want.max_fall == 400
    out = tmp_path / f"out{suffix}"
    stats = run(_cfg(src, out, codec=codec, crf=10, segment_frames=segments))
    assert probe.color_tags(out) == probe.color_tags(src) == (9, 9, 16, 1)  # BT.2020, PQ, limited range
    with av.open(str(out)) as c:
        frames = list(c.decode(video=0))
    assert frames[0].format.name == "yuv420p10le"
    got = hdr_metadata(frames[-1])  # on every frame (segment starts included), not only the first
    assert got is not None and (got.max_cll, got.max_fall) == (1000, 400)
    if codec == "hevc":  # HEVC SEI holds the source's units exactly
        assert got == want
    else:  # AV1's metadata OBU: chromaticities in 1/65536, luminance in 1/16384 (min) and 1/256 (max)
        for a, b in zip((got.red, got.green, got.blue, got.white), (want.red, want.green, want.blue, want.white)):
            assert abs(a[0] - b[0]) <= Fraction(1, 65536) and abs(a[1] - b[1]) <= Fraction(1, 65536)
        assert abs(got.min_luminance - want.min_luminance) <= Fraction(1, 16384)
        assert abs(got.max_luminance - want.max_luminance) <= Fraction(1, 256)
    assert stats.warnings == []


def test_encoder_hdr_options_strings():
    md = HdrMetadata(red=(Fraction(17, 25), Fraction(8, 25)), green=(Fraction(53, 200), Fraction(69, 100)),
                     blue=(Fraction(3, 20), Fraction(3, 50)), white=(Fraction(3127, 10000), Fraction(329, 1000)),
                     min_luminance=Fraction(1, 200), max_luminance=Fraction(1000), max_cll=1000, max_fall=400)
    assert encoder_hdr_options("libx265", md) == {"hdr10": "1", "hdr10-opt": "0", "master-display": MASTER,
                                                  "max-cll": "1000,400"}
    assert encoder_hdr_options("libx264", md) == {"mastering-display": MASTER, "cll": "1000,400"}
    assert encoder_hdr_options("libsvtav1", md)["content-light"] == "1000,400"
    assert encoder_hdr_options("libx265", None) == {} and encoder_hdr_options("libx265", HdrMetadata(dynamic=("HDR10+",))) == {}


def test_bad_bit_depth_is_one_line(capsys, tmp_path):
    src = _write_10bit(tmp_path / "ramp.mkv", _ramp(frames=1))
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--source", str(src), "--bit-depth", "12"])
    assert exit_info.value.code == 2
    assert re.search(r"invalid choice: '?12'?", capsys.readouterr().err)  # Python 3.12+ quotes the value


def _write_rgb_ramp(path: Path, codec: str, pix_fmt: str, options: dict | None = None) -> Path:
    """A 16-bit grey ramp across 512 pixels (a level each at 10 bits) in `pix_fmt`, 2 frames."""
    ramp = np.repeat(np.round(np.linspace(0, 65535, 512)).astype(np.uint16)[None, :, None], 32, 0).repeat(3, 2)
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 512, 32, pix_fmt
        s.options = options or {}
        _encode_all(out, s, [av.VideoFrame.from_ndarray(ramp, format="rgb48le").reformat(format=pix_fmt)
                             for _ in range(2)])
    return path


@pytest.mark.parametrize("codec, pix_fmt, options", [
    ("prores_ks", "yuva444p10le", None),  # ProRes 4444 with alpha: FFmpeg decodes it to yuva444p12le
    ("libx265", "gbrp10le", {"x265-params": "log-level=error:lossless=1"}),
    ("libx265", "gray10le", {"x265-params": "log-level=error:lossless=1"}),
])
def test_deep_sources_other_than_plain_yuv_keep_their_depth(tmp_path, codec, pix_fmt, options):
    """Were rounded to 8 bits (rgb24) on the way in, so a 10-bit output held 8-bit steps."""
    src = _write_rgb_ramp(tmp_path / f"ramp{'.mov' if codec == 'prores_ks' else '.mkv'}", codec, pix_fmt, options)
    out = tmp_path / "out.mkv"
    stats = run(_cfg(src, out, scale=1, codec="hevc", crf=0, preset="ultrafast"))
    fmt, luma = _luma(out)
    assert fmt == "yuv420p10le" and len(luma) == 2
    said = [n for n in stats.notes["fallbacks"] if "has an alpha channel" in n]  # ProRes 4444's alpha: not kept, said
    assert len(said) == (codec == "prores_ks"), stats.notes["fallbacks"]
    assert len(np.unique(luma[0][8])) > 400  # of 512 pixels; 8 bits would leave at most 256


def test_frames_with_side_data_pyav_cannot_name_are_read(tmp_path):
    """PyAV 18 names FFmpeg 7's side data types; its FFmpeg 8 attaches EXIF (type 31) to a JPEG
    with EXIF, and reading any side data of such a frame raised ValueError: a camera's MJPEG
    video stopped with a traceback while its first frame was probed."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 1  # upright
    frames = []
    for i in range(2):
        buffer = io.BytesIO()
        Image.fromarray(np.full((16, 32, 3), 60 * i, np.uint8)).save(buffer, format="JPEG", exif=exif.tobytes())
        frames.append(buffer.getvalue())
    src = tmp_path / "camera.avi"
    with av.open(str(src), "w") as out:
        s = out.add_stream("mjpeg", rate=24)
        s.width, s.height, s.pix_fmt = 32, 16, "yuvj420p"
        for i, data in enumerate(frames):
            packet = av.Packet(data)
            packet.stream, packet.pts, packet.dts, packet.time_base = s, i, i, Fraction(1, 24)
            out.mux(packet)
    with av.open(str(src)) as c:
        assert hdr_metadata(next(c.decode(video=0))) is None
    stats = run(_cfg(src, tmp_path / "out.mp4"))
    assert stats.num_frames_written == 2
