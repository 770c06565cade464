"""NVDEC: a file's video decoded on the GPU into CUDA NV12/P016 `Frame`s, through PyNvVideoCodec.

How `NvDecoder` gets its PTS, and why
-------------------------------------
The file is demuxed by PyAV, not by PyNvVideoCodec's own demuxer, and each packet is fed to
the NVDEC decoder (`CreateDecoder` + `Decode(PacketData)`):

* The frame count and PTS must match the CPU path (PyAV) exactly, so that `--nvdec` and the
  CPU reader produce the same frame indices and timestamps. Demuxing with the same library
  (same libavformat, same edit-list handling, same `time_base`) makes that true by
  construction instead of by hoping two demuxers agree.
* Packets that FFmpeg marks `is_discard` (e.g. the pre-roll that an MP4 edit list cuts) are
  decoded (they are references) but their frames are dropped, as libavcodec does.
* H.264/HEVC packets from MP4/MOV/MKV are length-prefixed (avcC/hvcC); NVDEC's parser wants
  Annex-B, so they go through `h264_mp4toannexb` / `hevc_mp4toannexb`
  (`av.bitstream.BitStreamFilterContext`); that filter passes Annex-B input through.
  For AV1 from MP4/MKV the av1C configuration OBUs are put in front of the first packet.
* NVDEC returns frames in display order. `DecodedFrame.getPTS()` cannot be trusted for
  the PTS: measured with PyNvVideoCodec 2.2.4 on an H100 (driver 580), a B-frame clip came
  back with the timestamps in *decode* order (0, 2048, 1024, 512, ... for display order
  0, 512, 1024, 1536, ...), i.e. the k-th frame out got the k-th packet's timestamp. Since
  display order is ascending PTS, each frame instead takes the smallest PTS among packets
  that have not produced a frame yet (`_PtsBook`). A missing PTS (raw Annex-B files, where
  PyAV also reports None) stays None, and the discard flag travels with its PTS.
  Measured on that H100: 300-frame 1080p H.264 (B-frames) and 50-frame MKV clips, and a
  10-bit HEVC clip: same frame count, same PTS list and bit-identical pixels as PyAV.

Frames are COPIED out of the decoder's surface (DLPack view -> `copy_` into a fresh tensor)
on a private CUDA stream, the one the decoder itself works on (else the copy first waits for
the stream the decoder names), and that stream is synchronized once for the frames of one
`Decode` call before they are handed on: the decoder reuses its output memory, and the
consumer is another thread on another stream (which records its use of the frame:
`hw.frames`).

With a `span` (hw.keyframes), a decoder decodes one part of the stream, beside others each in
its own NVDEC session (pipeline/decoders.py): it seeks to the span's keyframe, feeds the span's
packets (the parameter sets first), flushes, and keeps the span's frames. NVDEC spans start at
clean cuts only (no leading pictures): a picture NVDEC drops without a frame (a RASL picture
after a CRA) would shift every PTS `_PtsBook` hands out after it.

Sessions outlive spans (`NvSessions`): creating an NVDEC session costs far more than decoding a
short span, and a new session per span made several sessions slower than one (238 fps with 7
against 533 with one, H100, benchmarks/RESULTS.md). A span's decoder takes a free session of
the pool and gives it back once the span is flushed to its end (after the end-of-stream packet
the parser starts afresh at the next span's keyframe and its parameter sets, as PyNvVideoCodec's
decode_reconfigure sample decodes a second stream on one decoder); a span stopped early drops
its session, which may still hold pictures.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

from core.errors import HardwareUnavailable
from core.frame import Frame
from hw import nv_runtime as rt
from hw.av_decode import PtsFiller
from hw.av_source import fraction, main_video_stream, open_input
from hw.keyframes import DecodeSpan, span_packets
from hw.nv_probe import CHROMA_TEXT, NVDEC_CODECS, probe_nvdec

__all__ = ["NvDecoder", "NvSessions"]

logger = logging.getLogger(__name__)


def _stream_format(stream: Any) -> tuple[int, str]:
    """(bit_depth, chroma "420"/"422"/"444"/"400") of a PyAV video stream."""
    import av

    pix_fmt = stream.codec_context.pix_fmt or "yuv420p"
    fmt = av.VideoFormat(pix_fmt)
    bit_depth = int(fmt.components[0].bits)
    if len(fmt.components) < 3:
        return bit_depth, "400"
    w, h = 64, 64
    cw, ch = fmt.chroma_width(w), fmt.chroma_height(h)
    if cw == w and ch == h:
        return bit_depth, "444"
    if cw * 2 == w and ch == h:
        return bit_depth, "422"
    return bit_depth, "420"


class _PtsBook:
    """Gives decoded frames their PTS: the smallest PTS among packets not yet matched.

    NVDEC outputs frames in display order, and display order is ascending PTS, so the k-th
    frame out carries the smallest PTS still pending (with its packet's discard flag).
    Packets without a PTS sort by arrival. Invariant: one pending entry per fed packet that
    has not produced its frame yet; a packet that never yields a frame (a lost or corrupt
    picture; a field-per-packet interlaced stream) would shift later PTS by one, which is
    why `NvDecoder` logs the number left over at the end.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[int, int, int | None, bool]] = []
        self._seq = itertools.count()

    def add(self, pts: int | None, discard: bool) -> int:
        """Record a fed packet; returns its sequence number (the NVDEC timestamp we pass)."""
        seq = next(self._seq)
        heapq.heappush(self._heap, (pts if pts is not None else seq, seq, pts, discard))
        return seq

    def take(self) -> tuple[int | None, bool]:
        """(pts, discard) for the next frame in display order."""
        if not self._heap:
            logger.warning("NVDEC returned more frames than packets were fed; PTS unknown")
            return None, False
        _, _, pts, discard = heapq.heappop(self._heap)
        return pts, discard

    def __len__(self) -> int:
        return len(self._heap)


class NvSessions:
    """NVDEC sessions of one video kept between its spans (module docstring): `take()` a free one
    (None: create one), `give_back()` one flushed to its end. Thread-safe; `close()` drops them."""

    def __init__(self) -> None:
        self._free: list[tuple[Any, Any, bool]] = []  # (decoder, its copy stream, decodes on that stream)
        self._lock = threading.Lock()
        self._closed = False
        self.num_created = 0  # sessions made for this video (a count for the tests and the benchmark)
        self.num_reused = 0

    def take(self) -> tuple[Any, Any, bool] | None:
        """(decoder, its copy stream, whether it decodes on that stream), or None when none is free."""
        with self._lock:
            if self._free:
                self.num_reused += 1
                return self._free.pop()
            return None

    def created(self) -> None:
        with self._lock:
            self.num_created += 1

    def give_back(self, session: tuple[Any, Any, bool]) -> None:
        with self._lock:
            if not self._closed:
                self._free.append(session)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._free.clear()

    def __repr__(self) -> str:
        return f"NvSessions({self.num_created} created, {self.num_reused} reused, {len(self._free)} free)"


class NvDecoder:
    """Decodes the video stream of a file with NVDEC on GPU `gpu`.

    Iterating yields `Frame`s in presentation order, numbered from 0: one plane, a CUDA
    uint8 tensor `(H*3//2, W)` NV12 (uint16 P016 for 10/12-bit, samples in the high bits), a
    copy the caller owns; `pts` in `time_base` units, the same values PyAV decodes (a raw
    stream without timestamps is numbered as the CPU decoder numbers it). Raises
    `HardwareUnavailable` when NVDEC cannot decode the stream (or its size changes).
    """

    def __init__(self, source: str | os.PathLike[str], *, gpu: int = 0,
                 stream_index: int | None = None, span: DecodeSpan | None = None,
                 sessions: NvSessions | None = None) -> None:
        import av
        import torch

        self.gpu = gpu
        self.span = span  # one part of the stream (hw.keyframes; a clean cut: see `_emit`)
        self._container = None
        self._decoder = None
        self._closed = False
        self._sessions = sessions  # where the session comes from and goes back to (spans of one video)
        self._flushed = False  # fed to its end-of-stream packet and emptied: the session is clean
        path = os.fspath(source)
        if not torch.cuda.is_available() or not 0 <= gpu < torch.cuda.device_count():
            raise HardwareUnavailable(
                f"NVDEC needs CUDA GPU {gpu}, but "
                + ("no CUDA GPU is visible" if not torch.cuda.is_available()
                   else f"only {torch.cuda.device_count()} GPU(s) are visible")
                + ". Run without --nvdec to decode on the CPU."
            )
        nvc = rt.nvcodec_import()
        self._nvc = nvc
        container = open_input(Path(path))
        self._container = container
        # AVI stores decode times only (FFmpeg's PTS there is the DTS plus a guessed frame): the
        # frames take the decode times in display order, as on the CPU (hw.av_decode.PyAVDecoder)
        self._decode_times_only = container.format.name.split(",")[0] == "avi"
        # How long the last frame lasts, in seconds, once decoded to the end (as the CPU decoder says
        # it): its packet's duration, the packet of the largest timestamp; MP4/MOV store decode-time
        # deltas, where the last packet decoded holds the duration the muxer gave the last frame
        self.last_frame_seconds: Fraction | None = None
        self._deltas_only = container.format.name.split(",")[0] == "mov"
        self._last_packet: tuple[int, int] | None = None  # (timestamp, duration) of that packet
        try:
            videos = list(container.streams.video)
            if not videos:
                raise HardwareUnavailable(f"NVDEC: {path!r} has no video stream to decode.")
            if stream_index is None:
                stream = main_video_stream(container)
            else:
                matches = [s for s in videos if s.index == stream_index]
                if not matches:
                    raise ValueError(
                        f"Invalid stream_index ({stream_index}): video streams of {path!r} "
                        f"are {[s.index for s in videos]}.")
                stream = matches[0]
            self._stream = stream
            cc = stream.codec_context
            self.codec: str = cc.name
            self.width: int = int(cc.width)
            self.height: int = int(cc.height)
            self.bit_depth, self.chroma_format = _stream_format(stream)
            self.time_base: Fraction | None = fraction(stream.time_base)
            self.average_rate: Fraction | None = fraction(stream.average_rate)
            self.num_frames_from_header: int = int(stream.frames or 0)
            ok, reason = probe_nvdec(codec=self.codec, bit_depth=self.bit_depth,
                                     chroma_format=self.chroma_format, width=self.width,
                                     height=self.height, gpu=gpu)
            if not ok:
                raise HardwareUnavailable(f"{reason}. Run without --nvdec to decode on the CPU.")
            if self.chroma_format != "420":
                raise HardwareUnavailable(
                    f"NvDecoder outputs 4:2:0 (NV12/P016) only; {path!r} is "
                    f"{CHROMA_TEXT[self.chroma_format]}. Run without --nvdec.")
            self._bsf = None
            if self.codec in ("h264", "hevc"):
                self._bsf = av.bitstream.BitStreamFilterContext(
                    f"{self.codec}_mp4toannexb", in_stream=stream)
            self._prefix = b""
            extradata = cc.extradata or b""
            self._parameter_sets = b""  # put before a span's first packet where the filter gives none
            if span is not None and span.first_packet > 0 and self.codec in ("h264", "hevc"):
                from hw.annexb import config_parameter_sets

                self._parameter_sets = config_parameter_sets(extradata, codec=self.codec)
            if self.codec == "av1" and len(extradata) > 4 and extradata[0] == 0x81:
                self._prefix = bytes(extradata[4:])  # av1C header, then config OBUs
            flags = getattr(nvc, "VideoPacketFlag", None)
            self._timestamp_flag = getattr(flags, "TIMESTAMP", None)
            self._eos_flag = getattr(flags, "ENDOFSTREAM", None)
            session = sessions.take() if sessions is not None else None
            if session is not None:
                self._decoder, self._copy_stream, self._on_copy_stream = session
            else:
                with torch.cuda.device(gpu):
                    self._copy_stream = torch.cuda.Stream(device=gpu)
                self._decoder, self._on_copy_stream = self._create_decoder(nvc, torch)
                if sessions is not None:
                    sessions.created()
        except BaseException:
            self.close()
            raise
        self._book = _PtsBook()
        self._pts = PtsFiller(self.average_rate, self.time_base)
        self.num_frames_decoded = 0
        self.num_corrupt_packets = 0  # the reader's FrameSource interface: NVDEC reports none
        self.stopped_early_reason: str | None = None
        logger.info("NVDEC on GPU %d: %s %dx%d %d-bit, time_base %s", gpu, self.codec,
                    self.width, self.height, self.bit_depth, self.time_base)

    def _create_decoder(self, nvc: Any, torch: Any) -> tuple[Any, bool]:
        """(decoder, whether it works on our copy stream)."""
        codec = rt.enum_member(nvc.cudaVideoCodec, (NVDEC_CODECS[self.codec],))
        context = rt.torch_context(self.gpu)
        try:
            # Decoding on our copy stream orders the decoder's writes before our copies (and
            # its next writes after them); in torch's own context (see `torch_context`),
            # restoring the thread's context after.
            with rt.keep_current_context():
                return nvc.CreateDecoder(gpuid=self.gpu, codec=codec, cudacontext=context,
                                         cudastream=int(self._copy_stream.cuda_stream),
                                         usedevicememory=True), True
        except Exception as exc:
            logger.debug("CreateDecoder with our CUDA stream failed (%s); using its own",
                         rt.first_line(exc))
        try:
            with rt.keep_current_context():
                return nvc.CreateDecoder(gpuid=self.gpu, codec=codec, usedevicememory=True), False
        except Exception as exc:
            raise HardwareUnavailable(
                f"NVDEC on {rt.gpu_label(self.gpu)}: CreateDecoder for {self.codec} failed: "
                f"{rt.first_line(exc)}. Run without --nvdec to decode on the CPU.") from exc

    # -- feeding -------------------------------------------------------------------

    def _packet_data(self, data: Any, seq: int) -> tuple[Any, Any]:
        """A PacketData pointing at `data` (kept alive by the returned holder)."""
        import numpy as np

        nvc = self._nvc
        buf = np.frombuffer(data, dtype=np.uint8)
        packet = nvc.PacketData()
        packet.bsl_data = int(buf.ctypes.data)
        packet.bsl = int(buf.size)
        packet.pts = seq
        flag = self._timestamp_flag
        if flag is not None:
            try:
                packet.decode_flag = flag
            except Exception:  # the binding may take plain ints only
                self._timestamp_flag = None
        return packet, buf

    def _end_of_stream_packet(self) -> Any:
        nvc = self._nvc
        packet = nvc.PacketData()
        flag = self._eos_flag
        if flag is not None:
            try:
                packet.decode_flag = flag
            except Exception:
                pass
        return packet

    def _annexb_packets(self) -> Iterator[tuple[Any, int | None, bool]]:
        """(payload, pts, is_discard) for every video packet (of the span), in decode order.

        A span starts at a keyframe; h264_mp4toannexb puts the parameter sets before an IDR
        picture only, so before any other keyframe (an open GOP's I picture, an HEVC CRA
        without them) they are added here from the stream's configuration record."""
        first = True
        packets = (self._container.demux(self._stream) if self.span is None
                   else (packet for _, packet in span_packets(self._container, self._stream, self.span)))
        for packet in packets:
            if packet.size == 0 and packet.dts is None:
                continue  # PyAV's end-of-stream marker
            # Read these before filtering: the filter takes the packet's contents.
            pts, discard = packet.dts if self._decode_times_only else packet.pts, bool(packet.is_discard)
            duration = packet.duration
            if self._decode_times_only:  # AVI: a packet lasts one tick of its index; a frame, the step to the next
                duration = pts - self._last_packet[0] if self._last_packet and pts is not None else None
            if duration and duration > 0 and pts is not None and (
                    self._deltas_only or self._last_packet is None or pts >= self._last_packet[0]):
                self._last_packet = (pts, duration)
            elif self._decode_times_only and pts is not None and self._last_packet is None:
                self._last_packet = (pts, 0)  # the first: its step is known with the next one
            outs = self._bsf.filter(packet) if self._bsf is not None else [packet]
            for out in outs:
                if out.size == 0:
                    continue
                payload: Any = out
                if first and self._prefix:
                    payload = self._prefix + bytes(out)
                if first and self._parameter_sets:
                    from hw.annexb import annexb_parameter_sets

                    if not annexb_parameter_sets(bytes(out), codec=self.codec):
                        payload = self._parameter_sets + bytes(out)
                first = False
                yield payload, pts, discard
        if self._bsf is not None:
            for out in self._bsf.filter(None):
                if out.size:
                    yield out, out.pts, False

    def __iter__(self) -> Iterator[Frame]:
        if self._closed:
            raise HardwareUnavailable("NvDecoder is closed; open a new one to decode again.")
        for payload, pts, discard in self._annexb_packets():
            seq = self._book.add(pts, discard)
            packet, keep_alive = self._packet_data(payload, seq)
            frames = self._decoder.Decode(packet)
            del keep_alive
            yield from self._emit(frames)
        yield from self._emit(self._decoder.Decode(self._end_of_stream_packet()))
        if self._last_packet is not None and self._last_packet[1] and self._stream.time_base:
            self.last_frame_seconds = self._last_packet[1] * Fraction(self._stream.time_base)
        # Clean only when every packet fed gave its picture: one still held would come out of the
        # next span's first Decode, paired with that span's timestamps.
        self._flushed = not len(self._book)
        if len(self._book):
            logger.warning("NVDEC: %d packet(s) produced no frame; PTS after the first such "
                           "packet may be off by one frame", len(self._book))

    def _emit(self, frames: Any) -> Iterator[Frame]:
        kept = []
        for frame in frames:
            pts, discard = self._book.take()
            # A span's cut is clean (hw.keyframes: no leading picture after it), so every packet
            # fed gives its frame and the book pairs them; frames past the span's end are dropped.
            if discard or (self.span is not None and not self.span.keeps(pts)):
                continue
            kept.append((pts, frame))
        if not kept:
            return
        tensors = self._copy_frames([frame for _, frame in kept])
        for (pts, _), tensor in zip(kept, tensors):
            index = self.num_frames_decoded
            self.num_frames_decoded += 1
            yield Frame(index=index, pts=self._pts.fill(pts), fmt="nv12", planes=(tensor,), bit_depth=self.bit_depth)

    # -- copying -------------------------------------------------------------------

    def _copy_frames(self, frames: list) -> list:
        """Contiguous CUDA copies `(H*3//2, W)` of the frames one `Decode` gave, then one wait:
        the decoder reuses their memory, and the consumers read on other streams."""
        import torch

        with torch.cuda.device(self.gpu), torch.cuda.stream(self._copy_stream):
            out = [self._copy_frame(frame) for frame in frames]
        self._copy_stream.synchronize()
        return out

    def _copy_frame(self, frame: Any) -> Any:
        """A copy of one decoded frame, queued on the copy stream (current here)."""
        import torch

        dtype = torch.uint8 if self.bit_depth == 8 else torch.uint16
        shape = (self.height * 3 // 2, self.width)
        if not self._on_copy_stream:  # the decoder writes on a stream of its own
            self._wait_for_producer(torch)
        src = self._source_view(frame, torch, dtype, shape)
        out = torch.empty(shape, dtype=dtype, device=f"cuda:{self.gpu}")
        out.copy_(src)
        return out

    def _wait_for_producer(self, torch: Any) -> None:
        """The decoder wrote on a stream of its own (it refused ours): wait for the whole device.
        A frame's __cuda_array_interface__ cannot say which stream: PyNvVideoCodec's binding
        sets its "stream" to 0 or 2 (PyNvDecoder.cpp: `self->stream == 0 ? 0 : 2`), never the
        decoder's, and waiting on that ordered nothing (the 16-bit copy reads raw pointers)."""
        torch.cuda.synchronize(self.gpu)

    def _source_view(self, frame: Any, torch: Any, dtype: Any, shape: tuple[int, int]) -> Any:
        if dtype == torch.uint8:
            src = torch.from_dlpack(frame)
        else:
            # PyNvVideoCodec 2.2 reports 16-bit plane strides in samples rather than bytes:
            # read the luma plane's pointer and pitch, and view luma + chroma at that pitch.
            cai = frame.cuda()[0].__cuda_array_interface__
            pitch = int(cai["strides"][0])
            if pitch < int(cai["shape"][1]) * 2:
                pitch *= 2
            src = torch.as_tensor(
                rt.CudaArray(int(cai["data"][0]), shape, (pitch, 2), "<u2"),
                device=f"cuda:{self.gpu}")
        if src.dim() == 3 and src.shape[-1] == 1:
            src = src[..., 0]
        if tuple(src.shape) != shape:
            if src.numel() == shape[0] * shape[1] and src.is_contiguous():
                src = src.reshape(shape)
            else:
                raise HardwareUnavailable(
                    f"NVDEC returned a frame of shape {tuple(src.shape)}, expected {shape} "
                    f"for {self.width}x{self.height} 4:2:0. Run without --nvdec.")
        return src.view(dtype) if src.dtype != dtype and src.element_size() == 2 else src

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Release the decoder (back to its pool when flushed) and the file; safe to call twice."""
        self._closed = True
        if self._sessions is not None and self._decoder is not None and self._flushed:
            self._sessions.give_back((self._decoder, self._copy_stream, self._on_copy_stream))
        self._decoder = None
        if self._container is not None:
            try:
                self._container.close()
            finally:
                self._container = None

    def __enter__(self) -> NvDecoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"NvDecoder(gpu={self.gpu}, codec={getattr(self, 'codec', '?')}, "
                f"{getattr(self, 'width', '?')}x{getattr(self, 'height', '?')}, "
                f"bit_depth={getattr(self, 'bit_depth', '?')})")


