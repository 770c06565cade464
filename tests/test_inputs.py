"""Valid video that used to fail or come out wrong (issue 8, part 2): audio without a channel
layout (camera PCM, ADPCM, mu-law, WMA), timestamps out of order or repeated, rotation and
pixel aspect ratio, resolution changes mid-stream, models that return the wrong thing,
truncated and interlaced sources, HEVC's MP4 tag, lossless H.264.

Every source is generated here with PyAV; every run is the real pipeline."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch

import main as cli
from pipeline import RunConfig, run
from tests import probe


def _frames(num: int, width: int = 64, height: int = 48, *, start: int = 0) -> list[np.ndarray]:
    """Frames whose index (from `start`) is drawn in, as make_clip draws it."""
    from hw.clips import _index_blocks

    rng = np.random.default_rng(1)
    out = []
    for i in range(num):
        f = rng.integers(40, 200, (height, width, 3), dtype=np.uint8)
        _index_blocks(f, start + i)
        out.append(f)
    return out


def _write(path: Path, frames, *, vcodec="libx264", pix_fmt="yuv420p", rate=24, audio=None, options=None,
           packet_pts=None, stream_setup=None) -> Path:
    """A clip with the given frames; `audio` = (codec, sample_rate, channels, layout or None).
    `packet_pts(k, packet)` may rewrite each video packet's pts before muxing."""
    with av.open(str(path), "w") as out:
        vs = out.add_stream(vcodec, rate=rate)
        vs.width, vs.height, vs.pix_fmt = frames[0].shape[1], frames[0].shape[0], pix_fmt
        vs.time_base = Fraction(1, rate)
        if options:
            vs.options = options
        if stream_setup:
            stream_setup(vs)
        aus = None
        if audio:
            acodec, arate, channels, layout = audio
            aus = out.add_stream(acodec, rate=arate)
            aus.codec_context.layout = layout or {1: "mono", 2: "stereo"}[channels]
            if acodec.startswith("wma"):
                aus.codec_context.bit_rate = 128000
        k = 0
        packets = []
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format=pix_fmt)
            frame.pts = i
            frame.time_base = Fraction(1, rate)
            packets += list(vs.encode(frame))
        packets += list(vs.encode(None))
        for packet in packets:
            if packet_pts is not None:
                packet.pts = packet_pts(k, packet)
            out.mux(packet)
            k += 1
        if aus is not None:
            cc = aus.codec_context
            seconds = len(frames) / rate
            fmt = cc.codec.audio_formats[0].name if cc.codec.audio_formats else "s16"
            resampler = av.AudioResampler(format=fmt, layout=cc.layout.name, rate=cc.sample_rate)
            n = int(seconds * cc.sample_rate)
            tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(n) / cc.sample_rate)).astype(np.float32)
            step = cc.frame_size or 1024
            for s in range(0, n, step):
                chunk = np.tile(tone[s:s + step], (len(cc.layout.channels), 1))
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout=cc.layout.name)
                af.sample_rate = cc.sample_rate
                af.pts = s
                af.time_base = Fraction(1, cc.sample_rate)
                for rf in resampler.resample(af):
                    for p in aus.encode(rf):
                        out.mux(p)
            for p in aus.encode(None):
                out.mux(p)
    return path


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=8)
    base.update(kw)
    return RunConfig(**base)


def _audio_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        return sum(f.samples for f in c.decode(stream)) / stream.codec_context.sample_rate


# -- audio without a channel layout, and codecs MP4 cannot hold -----------------------------


def test_camera_avi_with_default_output_name(capsys, tmp_path):
    """MJPEG + PCM (no channel layout in AVI): the default output is .mp4, where that PCM fails at
    the trailer. It is re-encoded up front, with one warning, and lasts as long as the video."""
    src = _write(tmp_path / "CAMERA01.AVI", _frames(24, 64, 48), vcodec="mjpeg", pix_fmt="yuvj420p",
                 audio=("pcm_s16le", 48000, 2, None))
    with av.open(str(src)) as c:
        assert c.streams.audio[0].codec_context.layout.name == "2 channels"  # unspecified, as cameras write it
    code = cli.main(["--source", str(src), "--model", "bicubic", "--scale", "2"])
    err = capsys.readouterr().err
    assert code == 0, err
    out = tmp_path / "CAMERA01.bicubic-x2.mp4"
    assert probe.indices(out) == list(range(24))
    assert ("audio", "aac") in probe.streams(out)
    assert _audio_seconds(out) == pytest.approx(1.0, abs=0.06)
    assert sum("re-encoded to aac" in ln for ln in err.splitlines()) == 1


@pytest.mark.parametrize("container, audio", [
    ("avi", ("adpcm_ima_wav", 22050, 1, None)),
    ("avi", ("pcm_mulaw", 8000, 1, None)),
    ("asf", ("wmav2", 44100, 2, "stereo")),
    ("avi", ("pcm_u8", 11025, 2, None)),
], ids=["adpcm", "mulaw", "wma", "pcm_u8"])
def test_audio_that_mp4_cannot_hold_is_reencoded(tmp_path, container, audio):
    src = _write(tmp_path / f"src.{container}", _frames(24), audio=audio)
    stats = run(_cfg(src, tmp_path / "out.mp4"))
    assert probe.indices(tmp_path / "out.mp4") == list(range(24))
    assert ("audio", "aac") in probe.streams(tmp_path / "out.mp4")
    # AAC adds its encoder delay (1024 samples) and pads the last frame: up to 2048 samples more
    assert _audio_seconds(tmp_path / "out.mp4") == pytest.approx(1.0 + 1024 / audio[1], abs=1024 / audio[1] + 0.03)
    assert [w for w in stats.warnings if "re-encoded to aac" in w]


def test_pcm_into_mkv_is_copied(tmp_path):
    src = _write(tmp_path / "src.avi", _frames(24), audio=("pcm_s16le", 48000, 2, None))
    stats = run(_cfg(src, tmp_path / "out.mkv"))
    assert ("audio", "pcm_s16le") in probe.streams(tmp_path / "out.mkv")
    assert probe.packets(tmp_path / "out.mkv", "audio") == probe.packets(src, "audio")
    assert not [w for w in stats.warnings if "audio" in w]


# -- timestamps --------------------------------------------------------------------------


def test_decode_order_timestamps_are_put_back_in_order(tmp_path):
    """H.264 with B-frames whose packets carry decode-order timestamps as PTS (as AVI muxers write
    them): frames stay in presentation order, timestamps come out ascending and evenly spaced."""
    src = _write(tmp_path / "bframes.mkv", _frames(30), options={"bf": "3", "b_strategy": "0"},
                 packet_pts=lambda k, p: p.dts)
    with av.open(str(src)) as c:
        raw = [f.pts for f in c.decode(video=0)]
    assert raw != sorted(raw)  # the source really is out of order
    stats = run(_cfg(src, tmp_path / "out.mkv"))
    assert probe.indices(tmp_path / "out.mkv") == list(range(30))
    pts = probe.pts_seconds(tmp_path / "out.mkv")
    assert pts == sorted(pts) and len(set(pts)) == 30
    np.testing.assert_allclose(np.diff(pts), 1 / 24, atol=2e-3)
    assert sum("out of order or repeated" in w for w in stats.warnings) == 1


@pytest.mark.parametrize("parallel", [False, True])
def test_avi_with_b_frames_starts_at_its_first_frame_not_one_later(clips, tmp_path, parallel):
    """AVI stores decode times only; FFmpeg makes each PTS up as the DTS plus one frame, so an AVI
    with B-frames came out starting one frame late (0.04 s at 25 fps: after the audio and after
    ffmpeg's first frame at 0). The frames, in presentation order, take the decode times in order:
    the first at the first packet's time, each 1/fps after the one before, none moved."""
    src = clips("bframes-start.avi", num_frames=30, fps=25, audio=True, codec_options={"bf": "2"})
    with av.open(str(src)) as c:
        stream = c.streams.video[0]
        decode_times = sorted(p.dts * stream.time_base for p in c.demux(stream) if p.size)
    with av.open(str(src)) as c:
        assert next(c.decode(video=0)).pts * c.streams.video[0].time_base > decode_times[0]  # FFmpeg's made-up PTS
    out = tmp_path / "out.mp4"
    stats = run(_cfg(src, out, parallel=parallel))
    assert probe.indices(out) == list(range(30))
    assert decode_times[0] == 0 and probe.pts_exact(out) == decode_times
    assert not [w for w in stats.warnings if "timestamp" in w]  # nothing was wrong with the source


def test_repeated_timestamps_are_made_ascending(tmp_path):
    src = _write(tmp_path / "dups.mkv", _frames(20), packet_pts=lambda k, p: (k // 2) * 2)
    stats = run(_cfg(src, tmp_path / "out.mkv", parallel=False))
    assert probe.indices(tmp_path / "out.mkv") == list(range(20))
    pts = probe.pts_seconds(tmp_path / "out.mkv")
    assert all(b > a for a, b in zip(pts, pts[1:]))
    assert any("out of order or repeated" in w for w in stats.warnings)


def test_good_timestamps_are_untouched(clips, tmp_path):
    src = clips("vfr-inputs.mp4", num_frames=21, vfr=True)
    stats = run(_cfg(src, tmp_path / "out.mp4"))
    np.testing.assert_allclose(probe.pts_seconds(tmp_path / "out.mp4"), probe.pts_seconds(src), atol=1e-3)
    assert not [w for w in stats.warnings if "timestamp" in w]


# -- rotation and pixel aspect ratio -------------------------------------------------------


@pytest.mark.parametrize("rotation", [90, 180, -90])
def test_rotation_is_carried(tmp_path, rotation):
    src = _write(tmp_path / "phone.mp4", _frames(12), stream_setup=lambda s: s.set_display_rotation(rotation))
    run(_cfg(src, tmp_path / "out.mp4"))
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mp4")) as b:
        want, got = next(a.decode(video=0)).rotation, next(b.decode(video=0)).rotation
    assert want == got and got != 0


@pytest.mark.parametrize("sar", [Fraction(4, 3), Fraction(32, 27)])
def test_sample_aspect_ratio_is_carried(tmp_path, sar):
    def setup(stream):
        stream.codec_context.sample_aspect_ratio = sar

    src = _write(tmp_path / "anamorphic.mkv", _frames(12, 72, 48), stream_setup=setup)
    run(_cfg(src, tmp_path / "out.mkv"))
    with av.open(str(src)) as a, av.open(str(tmp_path / "out.mkv")) as b:
        assert Fraction(b.streams.video[0].sample_aspect_ratio) == sar
        assert b.streams.video[0].display_aspect_ratio == a.streams.video[0].display_aspect_ratio


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_a_pixel_aspect_ratio_only_the_container_holds_is_carried(tmp_path, suffix):
    """A remux with `ffmpeg -aspect`, an MP4 `pasp` box, ProRes or FFV1 in MOV: the container holds
    the pixel aspect ratio, the bitstream none; the output had none (a 16:9 DVD played 5:4)."""
    plain = _write(tmp_path / "square.mp4", _frames(12, 72, 48))
    src = tmp_path / f"anamorphic{suffix}"
    with av.open(str(plain)) as i, av.open(str(src), "w") as o:
        stream = o.add_stream_from_template(i.streams.video[0])
        stream.codec_context.sample_aspect_ratio = Fraction(64, 45)  # stored as the container's
        for packet in i.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                o.mux(packet)
    with av.open(str(src)) as c:
        assert not c.streams.video[0].codec_context.sample_aspect_ratio
        assert Fraction(c.streams.video[0].sample_aspect_ratio) == Fraction(64, 45)
    out = tmp_path / "out.mkv"
    run(_cfg(src, out))
    with av.open(str(out)) as c:
        assert Fraction(c.streams.video[0].sample_aspect_ratio) == Fraction(64, 45)


def test_a_wrong_container_frame_rate_does_not_make_a_whole_file_truncated(clips, tmp_path):
    """A Matroska remux whose default duration is one tick of the old time base: FFmpeg reports
    2400 fps for a 24 fps video. The end-of-file check measured one frame by that rate and
    reported the whole file truncated; it takes the frames' own spacing now. (The rate itself is
    believed, as `ffmpeg -c copy` carries it: a high-rate variable-frame-rate video may start slow.)"""
    plain = clips("rate.mp4", num_frames=48, audio=True)
    src = tmp_path / "remux.mkv"
    with av.open(str(plain)) as i, av.open(str(src), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for packet in i.demux():
            if packet.size:
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    with av.open(str(src)) as c:
        assert c.streams.video[0].average_rate > 200
    out = tmp_path / "out.mkv"
    stats = run(_cfg(src, out))
    assert not [w for w in stats.warnings if "truncated" in w], stats.warnings
    assert probe.indices(out) == list(range(48))


# -- size changes mid-stream ------------------------------------------------------------------


def _size_changing_h264(path: Path) -> Path:
    """An Annex-B H.264 stream whose second half is coded at another size (a new SPS)."""
    data = b""
    for frames in (_frames(10, 64, 48), _frames(10, 96, 64, start=10)):
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height, ctx.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        ctx.time_base = Fraction(1, 24)
        ctx.options = {"bf": "0"}
        for i, rgb in enumerate(frames):
            f = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p")
            f.pts = i
            data += b"".join(bytes(p) for p in ctx.encode(f))
        data += b"".join(bytes(p) for p in ctx.encode(None))
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("parallel, batch", [(False, 1), (True, 3)])
def test_resolution_change_is_converted_and_said(tmp_path, parallel, batch):
    src = _size_changing_h264(tmp_path / "switch.h264")
    stats = run(_cfg(src, tmp_path / "out.mp4", parallel=parallel, batch_size=batch))
    assert probe.video_size(tmp_path / "out.mp4") == (128, 96)  # the first frame's size, x2
    assert probe.indices(tmp_path / "out.mp4") == list(range(20))
    assert sum("changes mid-stream; 10 frame(s) were converted" in w for w in stats.warnings) == 1


# -- models that return the wrong thing ------------------------------------------------------


def _script(tmp_path: Path, name: str, body: str) -> Path:
    """A TorchScript model whose forward is `body` (scripted from a module file: TorchScript reads source)."""
    import importlib.util

    source = tmp_path / f"model_{name}.py"
    source.write_text(f"""
import torch
import torch.nn.functional as F
class M(torch.nn.Module):
    def forward(self, x):
        {body}
""")
    spec = importlib.util.spec_from_file_location(f"model_{name}", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = tmp_path / f"{name}.ts"
    torch.jit.script(module.M()).save(str(path))
    return path


@pytest.mark.parametrize("name, body, message", [
    ("nan", "return x * float('nan')", "NaN or infinite values: it ran in float32, so not for want of precision"),
    ("integer", "return (x * 255).to(torch.uint8)", "returned uint8 values"),
    ("fewer", "return x[:1]", r"returned 1 frame\(s\) for a batch of 4"),
    ("squashed", "return F.interpolate(x, size=(x.shape[2] * 2, x.shape[2] * 2))", r"returned shape \(4, 3, 96, 96\)"),
])
def test_bad_model_output_fails_with_one_line(capsys, clips, tmp_path, name, body, message):
    src = clips("plain.mp4", num_frames=12)
    model = _script(tmp_path, name, body)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", str(model), "--trust-model",
                     "--batch-size", "4", "--parallel"])
    err = capsys.readouterr().err
    assert code == 1
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    import re

    assert re.search(message, errors[0]), errors[0]
    assert "No frame was written" in errors[0]
    assert not (tmp_path / "o.mp4").exists()


def test_model_error_message_is_one_line(capsys, clips, tmp_path):
    """A TorchScript failure inside a run: one line, the real error (not the interpreter's trace)."""
    src = clips("plain.mp4", num_frames=6)
    model = _script(tmp_path, "raises", "if x.shape[2] > 40:\n            raise RuntimeError('tile too big')\n        return x")
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", str(model), "--trust-model"])
    err = capsys.readouterr().err
    assert code == 1
    assert [ln for ln in err.splitlines() if ln.strip()][-1].startswith("error:")
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "tile too big" in line and "Traceback" not in err


# -- damaged and interlaced sources -----------------------------------------------------------


def _faststart_mp4(src: Path, dst: Path) -> Path:
    """`src`'s video remuxed into an MP4 whose index comes first: a copy cut short still opens."""
    with av.open(str(src)) as inp, av.open(str(dst), "w", options={"movflags": "faststart"}) as out:
        ost = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.size:
                packet.stream = ost
                out.mux(packet)
    return dst


def test_truncated_mp4_says_so_in_stats_json(capsys, tmp_path):
    """Regression (issue 8): a truncated MP4 gave 60 of 120 frames with `status ok, warnings []`."""
    full = _faststart_mp4(_write(tmp_path / "a.mkv", _frames(120)), tmp_path / "full.mp4")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.5)])
    stats_path = tmp_path / "run.json"
    code = cli.main(["--source", str(cut), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "--scale", "1",
                     "--stats-json", str(stats_path)])
    err = capsys.readouterr().err
    assert code == 0, err
    data = json.loads(stats_path.read_text())
    assert data["status"] == "ok" and data["frames_written"] < 120
    assert any("truncated" in w for w in data["warnings"]), data["warnings"]
    assert any("truncated" in ln for ln in err.splitlines() if ln.startswith("warning:"))


@pytest.mark.parametrize("threads", [0, 2])
def test_a_file_cut_short_keeps_every_frame_a_decoder_of_one_thread_gets(tmp_path, threads):
    """A frame-threaded decoder meeting the damaged last packet of a file cut short dropped the
    frames it still held (the reviewer's 480-frame clip cut at 250 kB: 222 frames, ffmpeg 224),
    raising at the flush or, with more threads, without a word. Every frame a one-thread decoder
    gets comes out, pixel for pixel."""
    from hw.av_decode import PyAVDecoder

    full = _faststart_mp4(_write(tmp_path / "a.mkv", _frames(120, 160, 96), options={"bf": "2", "g": "48"}),
                          tmp_path / "full.mp4")
    cut = tmp_path / "cut.mp4"
    data = full.read_bytes()
    with av.open(str(full)) as c:  # cut inside a packet near the end: its last bytes missing
        last = [p for p in c.demux(video=0) if p.size][-20]
    cut.write_bytes(data[: last.pos + last.size // 2])
    with av.open(str(cut)) as c:
        c.streams.video[0].thread_type = "SLICE"
        want = []
        for packet in c.demux(video=0):
            try:
                want += [f.to_ndarray(format="yuv420p") for f in packet.decode()]
            except av.error.FFmpegError:
                continue
    got = list(PyAVDecoder(cut, threads=threads))
    assert 90 < len(want) < 120 and len(got) == len(want)
    assert all(np.array_equal(np.concatenate([plane.ravel() for plane in g.planes]), w.ravel())
               for g, w in zip(got, want))


def test_an_avis_damaged_end_decoded_again_keeps_every_frame_and_the_decode_times(tmp_path):
    """An AVI's frames decoded again after its damaged last packet (`_tail_again`) were chosen by
    FFmpeg's made-up timestamps, which do not ascend in presentation order with B-frames (..., 119,
    120, 118): the frame at 118 was left out, 119 of the 120 frames a one-thread decoder gets. Every
    frame comes out, each at the decode times in order, as the rest of the AVI's frames. (The clip is
    ffmpeg's own: the same settings through PyAV end without the B-frame pyramid that shows it.)"""
    import shutil
    import subprocess

    from hw.av_decode import PyAVDecoder

    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("needs the ffmpeg command")
    full = tmp_path / "full.avi"
    subprocess.run([ffmpeg, "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x96:rate=25", "-frames:v", "120",
                    "-c:v", "libx264", "-bf", "3", "-b_strategy", "0", "-g", "48", "-preset", "veryfast", str(full)],
                   check=True)
    data = bytearray(full.read_bytes())
    with av.open(str(full)) as c:
        pos, size = [(p.pos, p.size) for p in c.demux(video=0) if p.size][-1]
    data[pos + 8 + size // 2: pos + 8 + size] = bytes(size - size // 2)  # the last packet's second half lost
    damaged = tmp_path / "damaged.avi"
    damaged.write_bytes(bytes(data))
    with av.open(str(damaged)) as c:
        c.streams.video[0].thread_type = "SLICE"
        decode_times, made_up = [], []
        for packet in c.demux(video=0):
            try:
                frames = packet.decode()
            except av.error.FFmpegError:
                continue
            decode_times += [packet.dts] if packet.size and packet.dts is not None else []
            made_up += [f.pts for f in frames]
    assert made_up != sorted(made_up) and len(made_up) == 120  # the made-up times do not ascend
    got = list(PyAVDecoder(damaged, threads=4))
    assert [f.pts for f in got] == sorted(decode_times)[:120] == list(range(120))


@pytest.mark.parametrize("decoders", [1, 2])
def test_interlaced_source_is_warned_about(tmp_path, decoders):
    """Once, whichever decoders read it (it was the CPU decoder's line: NVDEC said nothing)."""
    def setup(stream):
        stream.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me

    src = _write(tmp_path / "tv.mkv", _frames(12, 64, 48), options={"x264-params": "tff=1"}, stream_setup=setup)
    with av.open(str(src)) as c:
        assert next(c.decode(video=0)).interlaced_frame
    stats = run(_cfg(src, tmp_path / "out.mkv", decoders=decoders))
    assert sum("interlaced" in w for w in stats.warnings) == 1
    assert probe.indices(tmp_path / "out.mkv") == list(range(12))


def test_progressive_source_is_not_warned_about(clips, tmp_path):
    stats = run(_cfg(clips("plain.mp4", num_frames=6), tmp_path / "out.mp4"))
    assert stats.warnings == []


# -- output codec details -----------------------------------------------------------------------


def test_hevc_in_mp4_is_tagged_hvc1(clips, tmp_path):
    src = clips("plain-hevc.mp4", num_frames=6, width=128, height=96)
    run(_cfg(src, tmp_path / "out.mp4", codec="hevc"))
    with av.open(str(tmp_path / "out.mp4")) as c:
        assert c.streams.video[0].codec_context.codec_tag == "hvc1"
    assert probe.indices(tmp_path / "out.mp4") == list(range(6))


def test_lossless_h264_is_said(capsys, clips, tmp_path):
    src = clips("plain.mp4", num_frames=4)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "--quality", "0"])
    err = capsys.readouterr().err
    assert code == 0
    assert sum("High 4:4:4" in ln for ln in err.splitlines() if ln.startswith("warning:")) == 1
    with av.open(str(tmp_path / "o.mp4")) as c:
        assert "4:4:4" in (c.streams.video[0].codec_context.profile or "")


def test_encoder_refusing_the_size_names_the_encoder(capsys, clips, tmp_path):
    """Regression (issue 8): every failure to open the output was 'Try --output with .mkv'."""
    src = clips("tiny.mp4", num_frames=3, width=8, height=8)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "o.mp4"), "--model", "bicubic", "--scale", "1",
                     "--codec", "hevc"])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "libx265 encoder refused to start for 8x8" in line and ".mkv" not in line
    assert not (tmp_path / "o.mp4").exists()


def _two_video_streams(path: Path, *, still_first: bool) -> Path:
    """A Matroska file with a one-frame 32x32 MJPEG still and a 24-frame 64x48 H.264 video (the
    still first or second), as files with a thumbnail or a second camera angle are."""
    with av.open(str(path), "w") as out:
        def still():
            s = out.add_stream("mjpeg", rate=24)
            s.width, s.height, s.pix_fmt = 32, 32, "yuvj420p"
            return s

        first = still() if still_first else None
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        second = None if still_first else still()
        picture = first or second
        frame = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24").reformat(format="yuvj420p")
        frame.pts = 0
        out.mux(picture.encode(frame))
        out.mux(picture.encode(None))
        for i in range(24):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
    return path


@pytest.mark.parametrize("still_first", [True, False])
@pytest.mark.parametrize("parallel", [True, False])
def test_of_several_video_streams_the_video_is_processed_and_the_others_are_named(capsys, tmp_path, still_first, parallel):
    """A file with a one-frame still and a video, in either order: the video's 24 frames are
    processed (before, a still first gave a 1-frame output, without a word), and one line names
    the stream left out."""
    src = _two_video_streams(tmp_path / "two.mkv", still_first=still_first)
    out = tmp_path / "out.mkv"
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2",
                     *(["--parallel"] if parallel else [])])
    err = capsys.readouterr().err
    assert code == 0, err
    with av.open(str(out)) as c:
        assert [s.codec_context.width for s in c.streams.video] == [128]
        assert sum(1 for _ in c.decode(video=0)) == 24
    words = " ".join(err.split())
    assert "the source has 2 video streams: framepipe processes" in words and "mjpeg 32x32" in words, err


def test_a_cover_picture_is_never_the_video_even_where_it_is_larger_and_first():
    """The choice itself (`main_video_stream`): a cover picture (attached_pic) is passed over even
    when it is the first and the largest; otherwise the largest, a default-flagged stream first,
    the first of equals."""
    from types import SimpleNamespace

    from hw.av_source import main_video_stream

    def stream(index, w, h, disposition=0):
        return SimpleNamespace(index=index, disposition=disposition, codec_context=SimpleNamespace(width=w, height=h))

    def pick(*streams):
        return main_video_stream(SimpleNamespace(streams=SimpleNamespace(video=list(streams)))).index

    cover, default = int(av.stream.Disposition.attached_pic), int(av.stream.Disposition.default)
    assert pick(stream(0, 1200, 1200, cover), stream(1, 640, 360)) == 1
    assert pick(stream(0, 1200, 1200, cover)) == 0  # only a picture: that is the video
    assert pick(stream(0, 640, 360), stream(1, 1920, 1080)) == 1
    assert pick(stream(0, 1920, 1080), stream(1, 1920, 1080, default)) == 1
    assert pick(stream(0, 640, 360), stream(1, 640, 360)) == 0


def test_frame_gaps_are_found_only_in_a_constant_frame_rate():
    from pipeline.reader import FrameGaps

    def gaps(pts):
        found = FrameGaps()
        for t in pts:
            found.add(t)
        return found.gaps()

    cfr = list(range(0, 100))
    assert gaps(cfr) == []
    assert gaps(cfr[:40] + cfr[60:]) == [(39, 60, 20)]
    mkv = [round(k * 1000 / 24) for k in range(100)]  # 24 fps in milliseconds: 41 and 42 ms steps
    assert gaps(mkv) == [] and gaps(mkv[:50] + mkv[53:]) == [(mkv[49], mkv[53], 3)]
    vfr = [sum((1, 2)[k % 2] for k in range(n)) for n in range(100)]  # 1 and 2 ticks alternating: its own rhythm
    assert gaps(vfr) == [] and gaps(vfr[:40] + vfr[60:]) == []
    assert gaps(cfr[:10] + cfr[15:20]) == []  # too few frames to tell a rate


def _cfr_clip_with_a_hole(path: Path, *, damage: bool) -> Path:
    """60 frames at 24 fps (ticks of 1/2400) and 2.5 s of AAC: frames 25-44 never written (a
    recorder's drop), or all written and 400 bytes in the middle of the file overwritten (a damaged
    part: FFmpeg's Matroska demuxer skips it without an error a decoder sees)."""
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=24)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.time_base = video.codec_context.time_base = Fraction(1, 2400)
        audio = out.add_stream("aac", rate=48000)
        audio.codec_context.layout = "stereo"
        for i in range(60):
            if not damage and 25 <= i < 45:
                continue
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 4, np.uint8), format="rgb24")
            frame = frame.reformat(format="yuv420p")
            frame.pts, frame.time_base = i * 100, Fraction(1, 2400)
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        tone = (0.2 * np.sin(2 * np.pi * 440 * np.arange(120000) / 48000)).astype(np.float32)
        for start in range(0, len(tone), 1024):
            chunk = np.ascontiguousarray(np.stack([tone[start:start + 1024]] * 2))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    if damage:
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 400] = b"\xaa" * 400
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("damage", [False, True])
def test_frames_missing_from_a_constant_frame_rate_video_are_said(capsys, tmp_path, damage):
    """A constant-frame-rate video whose timestamps skip frames (a damaged part of a Matroska
    file, skipped by FFmpeg's demuxer without an error; frames a recorder dropped): one warning
    line says how many and where (before, a damaged file lost 20 of 60 frames without a word);
    every frame the file has is written with its timestamp."""
    src = _cfr_clip_with_a_hole(tmp_path / "hole.mkv", damage=damage)
    out = tmp_path / "out.mkv"
    code = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 0, err
    with av.open(str(src)) as c:
        source_pts = [f.pts * f.time_base for f in c.decode(video=0)]
    with av.open(str(out)) as c:
        assert [f.pts * f.time_base for f in c.decode(video=0)] == source_pts
    assert len(source_pts) < 60
    assert err.count("warning:") == 1, err
    if damage:  # where the damage lands decides what the demuxer makes of it: never a silent loss
        assert "its timestamps skip" in err or "source damaged" in err, err
    else:
        assert "skip 20 frame(s) in 1 place(s) (first from 1.000 s to 1.875 s)" in err, err


def _avi_in_600ths(path: Path, num_frames: int = 24) -> Path:
    """An AVI of 24 fps in a 1/600 time base (an index tick per packet: every packet "lasts" 1/600 s)."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=24)
        s.width, s.height, s.pix_fmt, s.options = 64, 48, "yuv420p", {"bf": "2"}
        s.time_base = s.codec_context.time_base = Fraction(1, 600)
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9, np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * 25, Fraction(1, 600)
            for packet in s.encode(frame):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


def test_an_avis_last_frame_lasts_a_frame_not_an_index_tick(tmp_path):
    """An AVI's packets each last one tick of its index: 1/600 s for a 1/24 s frame here, taken for
    the last frame's duration, so a 1 s AVI came out 0.960 s long (ffmpeg's: 1.000 s)."""
    from hw.av_decode import PyAVDecoder

    src = _avi_in_600ths(tmp_path / "a.avi")
    with PyAVDecoder(src) as dec:
        assert [f.pts for f in dec][-1] == 23 * 25
        assert dec.last_frame_seconds == Fraction(1, 24)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, scale=1))
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert video.frames == 24 and video.duration * video.time_base == 1

