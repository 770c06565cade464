"""The GPU ends of a run: an NVDEC frame source and an NVENC file writer.

- `NvdecSource` adapts `NvDecoder` to the reader's frame-source interface: frames are
  NV12 (P016 for 10-bit) CUDA tensors with the source PTS; they never touch host memory.
- `NvencFileWriter` is the writer's encoder when the GPU has NVENC: NV12 device frames
  in, H.264/HEVC/AV1 access units out, muxed by PyAV with the source timestamps, the
  colour tags, and the source's audio/subtitles (`StreamCopier`, shared with the CPU
  writer). NVENC runs without B-frames, so access unit k belongs to input frame k.

NVENC was NOT run on real hardware while building this (the H100/H200 hosts used have no
NVENC engine); it is built on PyNvVideoCodec's documented API and tested with a fake
encoder. See README, "What has run where".
"""

from __future__ import annotations

import logging
import os
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterator, Literal

from hw.avio import DecodedFrame, PtsFiller, StreamCopier, add_video_stream, open_output
from hw.color import ColorInfo

__all__ = ["NvdecSource", "NvencFileWriter"]

log = logging.getLogger(__name__)


class NvdecSource:
    """Iterate a file's frames decoded by NVDEC on `gpu` (reader frame-source interface)."""

    def __init__(self, path: str | os.PathLike, *, gpu: int, decoder_factory=None) -> None:
        from hw.nvcodec import NvDecoder

        self._decoder = (decoder_factory or NvDecoder)(path, gpu=gpu)
        self.num_corrupt_packets = 0
        self.stopped_early_reason: str | None = None
        self._pts = PtsFiller(getattr(self._decoder, "average_rate", None), getattr(self._decoder, "time_base", None))

    def __iter__(self) -> Iterator[DecodedFrame]:
        bit_depth = self._decoder.bit_depth
        for frame, pts in self._decoder:
            # raw streams have no timestamps: number frames as the CPU reader does
            yield DecodedFrame(pts=self._pts.fill(pts), fmt="nv12", planes=(frame,), bit_depth=bit_depth)

    def close(self) -> None:
        self._decoder.close()


class NvencFileWriter:
    """Writer encoder on NVENC: `write_result(ResultItem nv12)`, `close(complete=)`."""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        gpu: int,
        codec: Literal["h264", "hevc", "av1"],
        width: int,
        height: int,
        time_base: Fraction,
        frame_rate: Fraction | None,
        color: ColorInfo,
        source_path: str | os.PathLike | None,
        warn: Callable[[str], None],
        qp: int | None = None,
        preset: str = "p4",
        encoder_factory=None,
    ) -> None:
        from hw.nvcodec import NvEncoder

        self.path = Path(path)
        self.codec = codec
        self.gpu = gpu
        self._time_base = time_base
        self._frame_seconds = float(1 / frame_rate) if frame_rate else 0.04
        self._encoder = (encoder_factory or NvEncoder)(
            gpu=gpu, codec=codec, width=width, height=height, frame_rate=frame_rate or Fraction(25),
            preset=preset, qp=qp,
        )
        try:
            self._out = open_output(self.path)
        except BaseException:
            self._encoder.close()
            raise
        try:
            self._stream = add_video_stream(self._out, codec, width=width, height=height, time_base=time_base,
                                            frame_rate=frame_rate, color=color)
            self._copier = StreamCopier(self._out, Path(source_path), warn=warn) if source_path else None
        except BaseException:
            self._out.close()
            self._encoder.close()
            raise
        self._pending_pts: deque[int] = deque()
        self._header_ready = False
        self._closed = False
        self.num_frames_written = 0

    def _set_extradata(self, first_au: bytes) -> None:
        from hw.nvcodec import annexb_parameter_sets

        extradata = getattr(self._encoder, "extradata", b"") or b""
        if not extradata and self.codec in ("h264", "hevc"):
            extradata = annexb_parameter_sets(first_au, codec=self.codec)
        if extradata:
            self._stream.codec_context.extradata = extradata
        self._header_ready = True

    def _mux_units(self, units: list[bytes]) -> None:
        import av

        from hw.nvcodec import annexb_is_keyframe

        for au in units:
            if not self._header_ready:
                self._set_extradata(au)
            pts = self._pending_pts.popleft()
            packet = av.Packet(au)
            packet.pts = packet.dts = pts
            packet.time_base = self._time_base
            packet.stream = self._stream
            if self.codec in ("h264", "hevc"):
                packet.is_keyframe = annexb_is_keyframe(au, codec=self.codec)
            self._out.mux(packet)
            self.num_frames_written += 1

    def write_result(self, item) -> None:
        seconds = float(item.pts * self._time_base)
        if self._copier is not None and self._header_ready:
            self._copier.mux_until(seconds)
            self._copier.last_video_seconds = seconds + self._frame_seconds  # the end of this frame
        frame = item.planes[0]
        if frame.is_cuda and frame.device.index != self.gpu:  # made by a worker on another GPU
            frame = frame.to(f"cuda:{self.gpu}")
        self._pending_pts.append(item.pts)
        self._mux_units(self._encoder.encode(frame))

    def close(self, *, complete: bool) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._mux_units(self._encoder.flush())
            if self._pending_pts:
                log.warning("NVENC returned %d access unit(s) fewer than frames given", len(self._pending_pts))
            if self._copier is not None:
                self._copier.finish(complete=complete)
        finally:
            self._encoder.close()
            self._out.close()
            if self._copier is not None:
                self._copier.close()
