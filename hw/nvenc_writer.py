"""The NVENC file writer: NV12 / P010 device frames in, H.264/HEVC/AV1 access units muxed by PyAV.

`NvencFileWriter` is the writer's `hw.encoding.Encoder` when the GPU has NVENC: frames in
(each with the CUDA event that marks it complete), access units out of `hw.nvenc.NvEncoder`,
muxed with the source timestamps, the colour description written into the bitstream, and
the source's audio/subtitles (`StreamCopier`, shared with the CPU writer). NVENC runs
without B-frames, so access unit k belongs to input frame k.

NVENC was NOT run on real hardware while building this (the H100/H200 hosts used have no
NVENC engine); it is built on PyNvVideoCodec 2.2.4's signatures, sources and samples, and
tested with stand-ins that behave like it: parameter sets only where NVENC puts them, a
profile libx264 would not pick, its own CUDA stream for the input copy. See README, "What
has run where".
"""

from __future__ import annotations

import logging
import os
from collections import deque
from fractions import Fraction
from pathlib import Path
from typing import Callable, Literal

from core.choices import DEFAULT_NVENC_PRESET
from core.cut import TimeShift
from core.files import disk_errors
from hw.av_encode import open_output, presentation_durations
from hw.av_streams import stream_copier
from hw.color import ColorInfo
from hw.hdr import HdrMetadata

__all__ = ["NvencFileWriter", "nvenc_metadata_filter"]

log = logging.getLogger(__name__)


def nvenc_metadata_filter(codec: str, color: ColorInfo, *, sample_aspect_ratio: Fraction | None = None) -> str:
    """The FFmpeg bitstream filter that writes `color` into the SPS VUI / sequence header.

    NVENC leaves the colour description unset (PyNvVideoCodec's SetupVuiConfig writes
    "unspecified" unless its `colorspace` option is given, and that option also forces the
    full-range flag, so it is not used). FFmpeg's h264_metadata / hevc_metadata rewrite the
    VUI of every SPS they see (in-band and, through the muxer's extradata extraction, the
    header); av1_metadata does the same for the sequence header OBU. Codes are H.273's, which
    are FFmpeg's enum values (the same the CPU writer puts on its encoder).
    """
    full = 1 if color.output_range_tag == 2 else 0
    codes = {"primaries": color.primaries_tag, "transfer": color.transfer_tag,
             "matrix": color.output_matrix_tag}
    codes = {k: int(v) for k, v in codes.items() if v is not None and 0 < int(v) < 256}
    if codec in ("h264", "hevc"):
        parts = [f"video_full_range_flag={full}"]
        names = {"primaries": "colour_primaries", "transfer": "transfer_characteristics",
                 "matrix": "matrix_coefficients"}
    elif codec == "av1":
        parts = [f"color_range={'pc' if full else 'tv'}"]
        names = {"primaries": "color_primaries", "transfer": "transfer_characteristics",
                 "matrix": "matrix_coefficients"}
    else:
        raise ValueError(f"no metadata bitstream filter for codec {codec!r} (NVENC encodes h264, hevc, av1)")
    parts += [f"{names[k]}={v}" for k, v in codes.items()]
    if sample_aspect_ratio is not None and codec in ("h264", "hevc"):  # the VUI's aspect_ratio_idc/sar
        parts.append(f"sample_aspect_ratio={sample_aspect_ratio.numerator}/{sample_aspect_ratio.denominator}")
    return f"{codec}_metadata=" + ":".join(parts)


class NvencFileWriter:
    """The `hw.encoding.Encoder` on NVENC: `write((nv12,), pts)`, `close(complete=)`.

    `bit_depth` 8 takes NV12 frames, 10 takes P010 (`hw.frames.rgb_to_nv12_frames(...,
    bit_depth=10)`: HEVC Main10 / AV1 10-bit). `hdr`: the source's HDR10 static metadata,
    written into the bitstream by the encoder itself (SEI / metadata OBUs with every picture,
    see `hw.nvenc`), as the CPU writer's x265/SVT-AV1 parameters do; the colour tags
    (primaries, PQ/HLG transfer, matrix, range) go through the metadata filter as for 8-bit.

    The video stream is one PyAV opens no encoder for (`add_mux_stream`), so its header
    carries NVENC's own parameter sets (taken from the first access unit, which starts with
    them), never libx264's or libx265's. Each access unit goes through the colour metadata
    filter (`nvenc_metadata_filter`) on its way to the muxer, and IDRs are flagged as
    keyframes, so the file can be entered at any keyframe.

    Frames from the workers arrive as `hw.frames.CudaFrame`s (tensor + ready event). A frame
    made on another GPU is copied to the encoder's GPU on a stream of ours that first waits
    for the frame's event; the copy lands on the encoder's stream, so the encoder's own copy
    of the frame is ordered after it. The encoder keeps every frame (and a cross-GPU copy's
    source) alive until its access unit is out.

    The pixel aspect ratio goes into the bitstream's VUI (the metadata filter). Not carried
    (PyAV has no codec context on a stream it opens no encoder for): the display matrix
    (rotation) and the `hvc1` tag; the plan says so in one line when a run would need them.
    """

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
        audio_shift: TimeShift | None = None,
        extras_path: str | os.PathLike | None = None,
        qp: int | None = None,
        preset: str = DEFAULT_NVENC_PRESET,
        sample_aspect_ratio: Fraction | None = None,
        display_matrix: tuple[int, ...] | None = None,
        bit_depth: int = 8,
        hdr: HdrMetadata | None = None,
        encoder_factory=None,
    ) -> None:
        import av

        from hw.nvenc import NvEncoder

        self.path = Path(path)
        self.codec = codec
        self.gpu = gpu
        self._time_base = time_base
        self._frame_seconds = float(1 / frame_rate) if frame_rate else 0.04
        self._vui_filter = av.bitstream.BitStreamFilterContext(
            nvenc_metadata_filter(codec, color, sample_aspect_ratio=sample_aspect_ratio), in_stream=codec)
        self._encoder = (encoder_factory or NvEncoder)(
            gpu=gpu, codec=codec, width=width, height=height, frame_rate=frame_rate or Fraction(25),
            preset=preset, qp=qp, bit_depth=bit_depth, hdr=hdr,
        )
        try:
            self._out = open_output(self.path)
        except BaseException:
            self._encoder.close()
            raise
        self._durations = presentation_durations(self._out)  # Matroska: how long each frame shows
        self._frame_ticks = max(1, round(self._frame_seconds / float(time_base)))  # the last frame's
        try:
            self._stream = self._out.add_mux_stream(codec, rate=frame_rate or Fraction(25), width=width,
                                                    height=height)
            self._stream.time_base = time_base
            self._copier = stream_copier(self._out, source_path, extras_path, warn=warn, shift=audio_shift)
        except BaseException:
            self._out.close()
            self._encoder.close()
            raise
        self._pending_pts: deque[int] = deque()
        self._peer_streams: dict[int, object] = {}
        self._header_ready = False
        self._closed = False
        self.num_frames_written = 0

    # -- access units in -------------------------------------------------------------

    def _first_unit(self, data: bytes) -> bytes:
        """The first AU, led by NVENC's parameter sets (`GetSequenceParams`) if it lacks them."""
        from hw.annexb import annexb_parameter_sets

        extradata = getattr(self._encoder, "extradata", b"") or b""
        if self.codec in ("h264", "hevc") and extradata and not annexb_parameter_sets(data, codec=self.codec):
            return extradata + data
        return data

    def _is_keyframe(self, data: bytes, picture_type: int | None) -> bool:
        from hw.annexb import annexb_is_keyframe
        from hw.nvenc import PICTURE_TYPE_IDR

        if self.codec in ("h264", "hevc"):
            return annexb_is_keyframe(data, codec=self.codec)
        if picture_type is not None:
            return picture_type == PICTURE_TYPE_IDR
        return not self._header_ready  # AV1 from a binding without picture types: the first only

    def _mux_units(self, units: list) -> None:
        import av

        from hw.nvenc import EncodedUnit

        for unit in units:
            data, picture_type = (unit.data, unit.picture_type) if isinstance(unit, EncodedUnit) else (bytes(unit), None)
            if not self._header_ready:
                data = self._first_unit(data)
            if not self._pending_pts:
                log.warning("NVENC returned an access unit with no frame waiting for it; dropped")
                continue
            pts = self._pending_pts.popleft()
            key = self._is_keyframe(data, picture_type)
            for packet in self._vui_filter.filter(av.Packet(data)):
                packet.pts = packet.dts = pts
                packet.time_base = self._time_base
                packet.stream = self._stream
                packet.is_keyframe = key
                packet.duration = self._frame_ticks  # until the next frame's timestamp is known (Matroska)
                for ready in self._durations.push(packet):
                    self._out.mux(ready)
            self._header_ready = True
            self.num_frames_written += 1

    # -- frames in -------------------------------------------------------------------

    def _peer_stream(self, device):
        import torch

        index = device.index
        if index not in self._peer_streams:
            with torch.cuda.device(index):
                self._peer_streams[index] = torch.cuda.Stream(device=index)
        return self._peer_streams[index]

    def _to_encoder_gpu(self, tensor, ready):
        """Copy a frame made on another GPU to ours, ordered after `ready`; (copy, its event)."""
        import torch

        src_stream = self._peer_stream(tensor.device)
        if ready is not None:
            src_stream.wait_event(ready)
        else:
            src_stream.wait_stream(torch.cuda.current_stream(tensor.device))
        dst_stream = getattr(self._encoder, "stream", None) or torch.cuda.current_stream(self.gpu)
        # A cross-device copy_ runs on the source device's current stream, after the
        # destination's current stream, and makes the destination's stream wait for it
        # (aten/src/ATen/native/cuda/Copy.cu, copy_device_to_device).
        with torch.cuda.stream(src_stream), torch.cuda.stream(dst_stream):
            copy = tensor.to(f"cuda:{self.gpu}", non_blocking=True)
            done = torch.cuda.Event()
            done.record(dst_stream)
        return copy, done

    def write(self, planes: tuple, pts: int) -> None:
        """Encode one NV12/P010 frame (a `CudaFrame` or a device tensor) at source timestamp `pts`."""
        from hw.frames import CudaFrame

        seconds = float(pts * self._time_base)
        (plane,) = planes
        tensor, ready = (plane.tensor, plane.ready) if isinstance(plane, CudaFrame) else (plane, None)
        if tensor.is_cuda and tensor.device.index != self.gpu:  # made by a worker on another GPU
            tensor, ready = self._to_encoder_gpu(tensor, ready)
        with disk_errors(self.path):
            if self._copier is not None and self._header_ready:
                self._copier.mux_until(seconds)
                self._copier.last_video_seconds = seconds + self._frame_seconds  # the end of this frame
            self._pending_pts.append(pts)
            self._mux_units(self._encoder.encode(tensor, ready=ready, hold=(plane,)))

    def close(self, *, complete: bool, last_frame_seconds: Fraction | None = None) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            with disk_errors(self.path):
                self._mux_units(self._encoder.flush())
                for ready in self._durations.flush(last_seconds=last_frame_seconds):
                    self._out.mux(ready)
                if self._pending_pts:
                    log.warning("NVENC returned %d access unit(s) fewer than frames given", len(self._pending_pts))
                if self._copier is not None:
                    self._copier.finish(complete=complete)
        finally:
            self._encoder.close()
            try:
                with disk_errors(self.path):
                    self._out.close()
            finally:
                if self._copier is not None:
                    self._copier.close()
