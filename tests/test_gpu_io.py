"""The NVENC end of a run, exercised on the CPU: NvencFileWriter
muxing (timestamps, parameter sets, keyframes, seeking, colour, audio), with stand-ins for
the hardware.

The NVENC stand-in (`tests/nvenc_standin.py`) is libx264/libx265 shaped like NVENC's
bitstream: parameter sets only where NVENC puts them (the first IDR, unless the production
options ask for more), a profile libx264 would not choose, no B-frames, output one call
late. What it cannot check is PyNvVideoCodec's encoder itself (see the needs_cuda tests in
tests/test_nvenc_cuda.py for the CUDA side).
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
from pathlib import Path
import pytest
import torch

from hw.av_source import probe_source
from hw.color import ColorInfo
from hw.nvenc_writer import NvencFileWriter, nvenc_metadata_filter
from pipeline.messages import ResultItem
from tests import probe
from tests.nvenc_standin import GOP, NvencLikeEncoder, keyframe_entry_problems


def _nv12_frames(src):
    with av.open(str(src)) as c:
        return [(torch.from_numpy(f.reformat(format="nv12").to_ndarray()), f.pts) for f in c.decode(video=0)]


def _write(src, out, *, codec="h264", num_frames=None, encoder_factory=NvencLikeEncoder, audio=True):
    info = probe_source(src)
    warnings = []
    writer = NvencFileWriter(
        out, gpu=0, codec=codec, width=info.width, height=info.height, time_base=info.time_base,
        frame_rate=info.average_rate, color=info.color, source_path=src if audio else None,
        warn=warnings.append, encoder_factory=encoder_factory,
    )
    for i, (nv12, pts) in enumerate(_nv12_frames(src)[:num_frames]):
        writer.write((nv12,), pts)
    return writer, warnings


def test_nvenc_writer_muxes_timestamps_audio_and_tags(clips, tmp_path):
    src = clips("nvenc-src.mp4", num_frames=30, vfr=True, audio=True, color=(1, 1, 1, 1), width=128, height=96)
    out = tmp_path / "out.mp4"
    writer, warnings = _write(src, out)
    writer.close(complete=True)
    writer.close(complete=True)  # idempotent
    assert writer._encoder.closed
    assert probe.indices(out) == list(range(30))
    np.testing.assert_allclose(probe.pts_seconds(out), probe.pts_seconds(src), atol=1e-3)
    assert probe.packets(out, "audio") == probe.packets(src, "audio")
    assert probe.color_tags(out) == (1, 1, 1, 1)
    with av.open(str(out)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert keys == [i % GOP == 0 for i in range(30)]
    assert warnings == []


def test_nvenc_writer_gives_matroska_frames_their_shown_durations(clips, tmp_path):
    """Matroska stores how long each frame shows: NVENC's access units come without a duration,
    so a variable frame rate's long frame was stored as the nominal 1/fps (or none); each now
    lasts until the next frame's timestamp, and the last one 1/fps."""
    src = clips("nvenc-vfr.mkv", num_frames=30, vfr=True, width=128, height=96)
    out = tmp_path / "out.mkv"
    writer, _ = _write(src, out, audio=False)
    writer.close(complete=True)
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        packets = sorted((p.pts, p.duration) for p in c.demux(stream) if p.size)
        tb, rate = stream.time_base, stream.average_rate
    shown = [b - a for (a, _), (b, _) in zip(packets, packets[1:])]
    assert len(set(shown)) > 1  # the clip's frame rate varies (1 and 2 frame times)
    assert all(abs(d - want) <= 1 for (_, d), want in zip(packets, shown)), (packets, shown)  # 41.67 ms reads as 41
    assert abs(packets[-1][1] * tb - 1 / rate) <= tb
    np.testing.assert_allclose(probe.pts_seconds(out), probe.pts_seconds(src), atol=1e-3)


def test_nvenc_writer_partial_close_is_playable(clips, tmp_path):
    src = clips("nvenc-src2.mp4", num_frames=30, audio=True, width=128, height=96)
    out = tmp_path / "out.mkv"
    writer, _ = _write(src, out, num_frames=12)
    writer.close(complete=False)
    assert probe.indices(out) == list(range(12))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_nvenc_output_can_be_entered_at_every_keyframe(clips, tmp_path, codec, suffix):
    """Regression, issue 9: the header carried libx264's/libx265's parameter sets (PyAV
    opened a software encoder for the stream), and NVENC sent its own only with the first
    IDR, so a player seeking to any later keyframe could not decode it."""
    src = clips("nvenc-seek.mp4", num_frames=30, width=128, height=96)
    out = tmp_path / f"seek-{codec}{suffix}"
    writer, _ = _write(src, out, codec=codec, audio=False)
    writer.close(complete=True)
    keys, problems = keyframe_entry_problems(out)
    assert keys == list(range(0, 30, GOP))
    assert problems == []
    assert writer._encoder.repeat_parameter_sets  # the production options ask NVENC to repeat them


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_nvenc_header_is_nvencs_even_without_repeated_parameter_sets(clips, tmp_path, codec):
    """Issue 9, first half alone: with parameter sets only at the first IDR (NVENC's
    default), the container header must still be NVENC's own, so every keyframe decodes."""

    class FirstIdrOnly(NvencLikeEncoder):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.repeat_parameter_sets = False

    src = clips("nvenc-seek.mp4", num_frames=30, width=128, height=96)
    out = tmp_path / f"first-only-{codec}.mp4"
    writer, _ = _write(src, out, codec=codec, audio=False, encoder_factory=FirstIdrOnly)
    writer.close(complete=True)
    assert keyframe_entry_problems(out)[1] == []
    with av.open(str(out)) as c:
        if codec == "h264":  # avcC: version, profile_idc: Constrained Baseline (66), NVENC-like, not x264's High
            assert c.streams.video[0].codec_context.extradata[1] == 66


def test_nvenc_writer_puts_the_colour_description_in_the_bitstream(clips, tmp_path):
    """Issue 9: NVENC leaves the VUI colour description unset; the writer fills it in from
    the source's tags (limited range), so a decoder reading only the bitstream sees it."""
    src = clips("nvenc-bt601.mp4", num_frames=12, color=(6, 6, 6, 1), width=128, height=96)
    out = tmp_path / "colour.h264.mkv"
    writer, _ = _write(src, out, audio=False)
    writer.close(complete=True)
    with av.open(str(out)) as c:
        packets = [bytes(p) for p in c.demux(video=0) if p.size]
        extradata = c.streams.video[0].codec_context.extradata
    decoder = av.CodecContext.create("h264", "r")  # no container tags: the bitstream only
    decoder.extradata = extradata
    frame = next(f for p in packets for f in decoder.decode(av.Packet(p)))
    assert (frame.colorspace, frame.color_range) == (6, 1)
    assert (decoder.color_primaries, decoder.color_trc) == (6, 6)


def test_metadata_filter_strings():
    bt709 = ColorInfo(matrix="bt709", primaries_tag=1, transfer_tag=1, matrix_tag=1, range_tag=1)
    assert nvenc_metadata_filter("h264", bt709) == (
        "h264_metadata=video_full_range_flag=0:colour_primaries=1:transfer_characteristics=1:matrix_coefficients=1")
    untagged = ColorInfo(matrix="bt601", matrix_guessed=True)  # primaries/transfer unspecified (2)
    assert nvenc_metadata_filter("hevc", untagged) == (
        "hevc_metadata=video_full_range_flag=0:colour_primaries=2:transfer_characteristics=2:matrix_coefficients=6")
    full = ColorInfo(full_range=True, primaries_tag=9, transfer_tag=16, matrix_tag=9, matrix="bt2020")
    assert nvenc_metadata_filter("av1", full) == (
        "av1_metadata=color_range=pc:color_primaries=9:transfer_characteristics=16:matrix_coefficients=9")
    with pytest.raises(ValueError, match=r"no metadata bitstream filter for codec 'vp9'"):
        nvenc_metadata_filter("vp9", bt709)
    for codec in ("h264", "hevc", "av1"):  # FFmpeg accepts each
        av.bitstream.BitStreamFilterContext(nvenc_metadata_filter(codec, full), in_stream=codec)


def test_nvenc_writer_holds_frames_and_passes_ready_events(clips, tmp_path):
    """The writer hands the encoder the frame's ready event and the frame itself to hold."""
    from hw.frames import CudaFrame

    src = clips("nvenc-src2.mp4", num_frames=30, audio=True, width=128, height=96)
    info = probe_source(src)
    writer = NvencFileWriter(tmp_path / "e.mp4", gpu=0, codec="h264", width=info.width, height=info.height,
                             time_base=info.time_base, frame_rate=info.average_rate, color=info.color,
                             source_path=None, warn=print, encoder_factory=NvencLikeEncoder)
    marker = object()
    frames = _nv12_frames(src)[:3]
    for i, (nv12, pts) in enumerate(frames):
        writer.write((CudaFrame(nv12, marker),), pts)
    writer.close(complete=True)
    held = writer._encoder.held
    assert [ready for _, ready, _ in held] == [marker] * 3
    assert all(isinstance(hold[0], CudaFrame) and hold[0].tensor is nv12 for (nv12, _, hold) in held)


class SvtAv1AsNvenc:
    """AV1 access units (SVT-AV1), with NVENC's picture types: IDR = 3."""

    extradata = b""

    def __init__(self, *, gpu, codec, width, height, frame_rate, preset, qp, bit_depth=8, hdr=None):
        self.ctx = av.CodecContext.create("libsvtav1", "w")
        self.ctx.width, self.ctx.height, self.ctx.pix_fmt = width, height, "yuv420p"
        self.ctx.time_base = Fraction(1, 25)
        self.ctx.options = {"preset": "12", "g": str(GOP)}
        self.n = 0

    def _units(self, packets):
        from hw.nvenc import EncodedUnit

        return [EncodedUnit(bytes(p), 3 if p.is_keyframe else 0) for p in packets]

    def encode(self, nv12, *, ready=None, hold=()):
        frame = av.VideoFrame.from_ndarray(nv12.numpy(), format="nv12").reformat(format="yuv420p")
        frame.pts = self.n
        self.n += 1
        return self._units(self.ctx.encode(frame))

    def flush(self):
        return self._units(self.ctx.encode(None))

    def close(self):
        pass


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_nvenc_writer_av1_keyframes_from_picture_types_and_colour(clips, tmp_path, monkeypatch, suffix):
    monkeypatch.setenv("SVT_LOG", "1")
    src = clips("nvenc-bt601.mp4", num_frames=12, color=(6, 6, 6, 1), width=128, height=96)
    out = tmp_path / f"av1{suffix}"
    writer, _ = _write(src, out, codec="av1", audio=False, encoder_factory=SvtAv1AsNvenc)
    writer.close(complete=True)
    assert probe.indices(out) == list(range(12))
    with av.open(str(out)) as c:
        assert [p.is_keyframe for p in c.demux(video=0) if p.size] == [i % GOP == 0 for i in range(12)]
    assert probe.color_tags(out) == (6, 6, 6, 1)


def test_nv12_frames_carry_their_ready_event():
    """The worker's NVENC output (issue 9): NV12 frames that carry the event recorded after
    their conversion (None on the CPU, where there is no stream to wait for)."""
    from hw.color import rgb_to_nv12
    from hw.frames import CudaFrame, rgb_to_nv12_frames, to_8bit_rgb

    rgb = torch.rand(2, 3, 8, 6)
    frames = rgb_to_nv12_frames(rgb, ColorInfo())
    assert [type(f) for f in frames] == [CudaFrame, CudaFrame] and frames[0].ready is None
    assert torch.equal(torch.stack([f.tensor for f in frames]), rgb_to_nv12(to_8bit_rgb(rgb), ColorInfo()))
    assert frames[0].shape == (12, 6) and "no ready event" in repr(frames[0])
    assert repr(ResultItem(index=0, pts=0, fmt="nv12", planes=(frames[0],))).startswith("ResultItem(#0, pts=0, nv12 [(12, 6)]")
    with pytest.raises(TypeError, match=r"CudaFrame.tensor must be a torch.Tensor, got ndarray"):
        CudaFrame(np.zeros((12, 6), np.uint8))


# -- 10-bit (P010) and HDR10 through NVENC (issue 13) -------------------------------------------------


def test_the_worker_output_for_a_10bit_nvenc_writer_is_p010():
    """`to_output(fmt="p010")`: P010 CudaFrames (uint16, codes in the high bits) from the float
    output, never through 8 bits; an odd size is padded to even as for NV12."""
    from hw.color import rgb_to_p010
    from hw.frames import CudaFrame, pad_to_even
    from pipeline.worker import to_output

    rgb = torch.rand(2, 3, 9, 6)
    out = to_output(rgb, None, fmt="p010", color=ColorInfo(matrix="bt2020"), scale=1)
    assert [type(planes[0]) for planes in out] == [CudaFrame, CudaFrame]
    frame = out[1][0]
    assert frame.dtype == torch.uint16 and frame.shape == (15, 6) and frame.ready is None
    assert torch.equal(frame.tensor.to(torch.int32), rgb_to_p010(pad_to_even(rgb), ColorInfo(matrix="bt2020"))[1].to(torch.int32))
    item = ResultItem(index=0, pts=0, fmt="p010", planes=out[0])
    assert repr(item).startswith("ResultItem(#0, pts=0, p010 [(15, 6)")
    with pytest.raises(ValueError, match=r"NVENC takes 8-bit NV12 or 10-bit P010 frames, not 12-bit"):
        from hw.frames import rgb_to_nv12_frames
        rgb_to_nv12_frames(rgb, ColorInfo(), bit_depth=12)


def _hdr10_ramp_source(path, *, width=1024, height=32, frames=7):
    """An HDR10 clip: a 10-bit luma ramp (877 levels, 64..940) with neutral chroma, BT.2020 / PQ /
    limited range, mastering display and content light level in the bitstream (x265's own SEI)."""
    from tests.test_high_depth import MASTER, _write_10bit

    row = np.round(np.linspace(64, 940, width)).astype(np.uint16)
    luma = np.broadcast_to(row[None, :], (height, width))
    return _write_10bit(Path(path), [luma] * frames,
                        params=f"hdr10=1:hdr10-opt=0:max-cll=1000,400:master-display={MASTER}")


def _through_the_nvenc_writer(src, out, *, codec="hevc", bit_depth=10, hdr=True):
    """The GPU path's writer end on the CPU: decode -> RGB float (the model's form; identity
    model) -> `rgb_to_nv12_frames(bit_depth=)` (P010 for 10) -> ResultItems -> Writer stage ->
    NvencFileWriter with the stand-in encoder."""
    from hw.av_decode import PyAVDecoder
    from hw.frames import batch_to_rgb, rgb_to_nv12_frames
    from pipeline.stats import RunStats
    from pipeline.writer import Writer

    info = probe_source(src)
    writer = NvencFileWriter(out, gpu=0, codec=codec, width=info.width, height=info.height, time_base=info.time_base,
                             frame_rate=info.average_rate, color=info.color, source_path=None, warn=pytest.fail,
                             bit_depth=bit_depth, hdr=info.hdr if hdr else None, encoder_factory=NvencLikeEncoder)
    stage = Writer(writer, stats=RunStats())
    fmt = "p010" if bit_depth == 10 else "nv12"
    decoder = PyAVDecoder(src)
    try:
        for frame in decoder:
            rgb = batch_to_rgb([frame], info.color, device=torch.device("cpu"), dtype=torch.float32)
            (planes,) = rgb_to_nv12_frames(rgb, info.color, bit_depth=bit_depth)
            stage.process(ResultItem(index=frame.index, pts=frame.pts, fmt=fmt, planes=(planes,)))
    finally:
        decoder.close()
        stage.close(complete=True)
    return info, writer


def _decoded(path):
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return stream.codec_context.profile, frames


def _luma_row(frame, row=8):
    plane = frame.planes[0]
    dtype = np.uint16 if "10" in frame.format.name else np.uint8
    rows = np.frombuffer(plane, dtype).reshape(plane.height, plane.line_size // np.dtype(dtype).itemsize)
    return rows[row, : plane.width]


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_nvenc_10bit_gradient_keeps_more_than_256_levels_and_hdr10(tmp_path, suffix):
    """Issue 13: a 10-bit HDR10 source through the NVENC writer comes out HEVC Main 10 with the
    ramp's levels (877 in, > 600 out; 8 bits would leave at most 220), its colour tags and its
    mastering display / content light level, on every frame (each picture carries the SEI)."""
    from hw.hdr import hdr_metadata

    src = _hdr10_ramp_source(tmp_path / "hdr10.mkv")
    out = tmp_path / f"nvenc10{suffix}"
    info, writer = _through_the_nvenc_writer(src, out)
    assert writer._encoder.input_format == "P010" and writer._encoder.sei  # P010 in, SEI given to Encode
    profile, frames = _decoded(out)
    assert profile == "Main 10" and frames[0].format.name == "yuv420p10le" and len(frames) == 7
    levels = len(np.unique(_luma_row(frames[3])))
    assert levels > 600, levels
    assert probe.color_tags(out) == probe.color_tags(src) == (9, 9, 16, 1)  # BT.2020, PQ, limited
    assert info.hdr is not None and info.hdr.has_display and info.hdr.max_cll == 1000
    for frame in frames:
        assert hdr_metadata(frame) == info.hdr  # HEVC SEI units hold the source's values exactly


def test_nvenc_8bit_output_of_the_same_source_bands_and_still_carries_hdr10(tmp_path):
    """The control: NV12 (8 bits) through the same writer leaves at most 220 luma levels; the
    HDR10 side data goes in all the same (it does not depend on the depth)."""
    from hw.hdr import hdr_metadata

    src = _hdr10_ramp_source(tmp_path / "hdr10.mkv", frames=2)
    out = tmp_path / "nvenc8.mkv"
    info, _ = _through_the_nvenc_writer(src, out, bit_depth=8)
    profile, frames = _decoded(out)
    assert profile == "Main" and frames[0].format.name == "yuv420p"
    assert len(np.unique(_luma_row(frames[0]))) <= 220
    assert hdr_metadata(frames[-1]) == info.hdr


def test_nvenc_without_hdr_metadata_writes_no_sei(tmp_path):
    from hw.hdr import hdr_metadata

    src = _hdr10_ramp_source(tmp_path / "hdr10.mkv", frames=2)
    out = tmp_path / "plain.mkv"
    _, writer = _through_the_nvenc_writer(src, out, hdr=False)
    assert writer._encoder.sei == []
    assert hdr_metadata(_decoded(out)[1][0]) is None


def test_nvenc_h264_refuses_p010_like_the_hardware(tmp_path):
    """PyNvVideoCodec refuses "P010" for a codec whose support_10bit_encode cap is 0 (H.264 before
    Blackwell); the stand-in does the same, so a plan that sent 10-bit H.264 to NVENC fails here."""
    from core.errors import HardwareUnavailable

    with pytest.raises(HardwareUnavailable, match=r"cannot encode h264 10-bit 64x48: Format P010 is not supported"):
        NvencLikeEncoder(gpu=0, codec="h264", width=64, height=48, frame_rate=Fraction(25), bit_depth=10)


def test_nvenc_stand_in_takes_only_the_documented_p010_layout():
    """The encoder reads the high 10 bits of tight uint16 words: low-bit codes (yuv420p10le's
    layout), another dtype, or a padded pitch are refused or come out wrong, as on NVENC."""
    from hw.color import rgb_to_p010

    enc = NvencLikeEncoder(gpu=0, codec="hevc", width=64, height=48, frame_rate=Fraction(25), bit_depth=10)
    p010 = rgb_to_p010(torch.full((1, 3, 48, 64), 0.5), ColorInfo())[0]
    assert int((p010.to(torch.int32) & 0x3F).max()) == 0 and int(p010[0, 0].to(torch.int32)) == 502 << 6
    picture = enc._picture(p010)
    assert picture.format.name == "yuv420p10le" and int(_luma_row(picture, 0)[0]) == 502
    low_bits = (p010.to(torch.int32) >> 6).to(torch.int16).view(torch.uint16)  # codes in the low bits
    assert int(_luma_row(enc._picture(low_bits), 0)[0]) == 7  # 502 >> 6: near black, as NVENC would show it
    with pytest.raises(TypeError, match=r"takes a tight torch.uint16 P010 \(72, 64\)"):
        enc.encode(p010.to(torch.int32))
    padded = torch.zeros(72, 80, dtype=torch.int16).view(torch.uint16)[:, :64]  # pitch 80 words, not 64
    with pytest.raises(TypeError, match=r"strides \(80, 1\)"):
        enc.encode(padded)
