"""The GPU ends of a run, exercised on the CPU: NvdecSource numbering and NvencFileWriter
muxing (timestamps, extradata, keyframes, audio), with stand-ins for the hardware.

The NVENC stand-in is real: libx264 through PyAV, configured like NVENC here (no
B-frames, Annex-B access units, no extradata of its own), so the muxing code is checked
against a real H.264 stream. What it cannot check is PyNvVideoCodec's encoder itself.
"""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import torch

from hw.avio import probe_source
from hw.gpu_io import NvdecSource, NvencFileWriter
from pipeline.messages import ResultItem
from tests import probe


class X264AsNvenc:
    """Takes NV12 (H*3/2, W) uint8 tensors like NvEncoder and returns Annex-B access units."""

    extradata = b""

    def __init__(self, *, gpu, codec, width, height, frame_rate, preset, qp):
        assert codec == "h264"
        self.ctx = av.CodecContext.create("libx264", "w")
        self.ctx.width, self.ctx.height, self.ctx.pix_fmt = width, height, "yuv420p"
        self.ctx.time_base = Fraction(1, 25)
        self.ctx.options = {"bf": "0", "preset": "ultrafast", "crf": "10"}
        self.n = 0
        self.closed = False

    def _units(self, packets):
        return [bytes(p) for p in packets]

    def encode(self, nv12):
        frame = av.VideoFrame.from_ndarray(nv12.numpy(), format="nv12").reformat(format="yuv420p")
        frame.pts = self.n
        self.n += 1
        return self._units(self.ctx.encode(frame))

    def flush(self):
        return self._units(self.ctx.encode(None))

    def close(self):
        self.closed = True


def _nv12_frames(src):
    with av.open(str(src)) as c:
        return [(torch.from_numpy(f.reformat(format="nv12").to_ndarray()), f.pts) for f in c.decode(video=0)]


def test_nvenc_writer_muxes_timestamps_audio_and_tags(clips, tmp_path):
    src = clips("nvenc-src.mp4", num_frames=30, vfr=True, audio=True, color=(1, 1, 1, 1))
    info = probe_source(src)
    out = tmp_path / "out.mp4"
    warnings = []
    writer = NvencFileWriter(
        out, gpu=0, codec="h264", width=info.width, height=info.height, time_base=info.time_base,
        frame_rate=info.average_rate, color=info.color, source_path=src, warn=warnings.append,
        encoder_factory=X264AsNvenc,
    )
    frames = _nv12_frames(src)
    for i, (nv12, pts) in enumerate(frames):
        writer.write_result(ResultItem(index=i, pts=pts, fmt="nv12", planes=(nv12,)))
    writer.close(complete=True)
    writer.close(complete=True)  # idempotent
    assert writer._encoder.closed
    assert probe.indices(out) == list(range(30))
    np.testing.assert_allclose(probe.pts_seconds(out), probe.pts_seconds(src), atol=1e-3)
    assert probe.packets(out, "audio") == probe.packets(src, "audio")
    assert probe.color_tags(out) == (1, 1, 1, 1)
    with av.open(str(out)) as c:
        keys = [p.is_keyframe for p in c.demux(video=0) if p.size]
    assert keys[0] and sum(keys) >= 1
    assert warnings == []


def test_nvenc_writer_partial_close_is_playable(clips, tmp_path):
    src = clips("nvenc-src2.mp4", num_frames=30, audio=True)
    info = probe_source(src)
    out = tmp_path / "out.mkv"
    writer = NvencFileWriter(
        out, gpu=0, codec="h264", width=info.width, height=info.height, time_base=info.time_base,
        frame_rate=info.average_rate, color=info.color, source_path=src, warn=print, encoder_factory=X264AsNvenc,
    )
    for i, (nv12, pts) in enumerate(_nv12_frames(src)[:12]):
        writer.write_result(ResultItem(index=i, pts=pts, fmt="nv12", planes=(nv12,)))
    writer.close(complete=False)
    assert probe.indices(out) == list(range(12))


class FakeNvDecoder:
    bit_depth = 8
    average_rate = Fraction(25)
    time_base = Fraction(1, 25)

    def __init__(self, path, *, gpu):
        self.closed = False

    def __iter__(self):
        for pts in (None, None, None):
            yield torch.zeros(6, 4, dtype=torch.uint8), pts

    def close(self):
        self.closed = True


def test_nvdec_source_numbers_frames_without_pts():
    source = NvdecSource("x.mp4", gpu=0, decoder_factory=FakeNvDecoder)
    frames = list(source)
    assert [f.pts for f in frames] == [0, 1, 2]
    assert all(f.fmt == "nv12" and f.planes[0].shape == (6, 4) for f in frames)
    source.close()
    assert source._decoder.closed
