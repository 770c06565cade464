"""The NVENC writer's CUDA hand-off on a real GPU, with an encoder that behaves like
PyNvVideoCodec's where ordering is concerned (issue 9). Runs on any CUDA GPU, NVENC or not.

`CudaNvencLike` stands in for PyNvVideoCodec: CreateEncoder(..., cudastream=) runs its
copies on that stream (its own non-blocking stream when none is given), Encode(frame) reads
the planes' `__cuda_array_interface__` pointers and queues a device-to-device copy of the
frame on that stream WITHOUT looking at any `stream` key (as PyNvEncoder.cpp does), and
the access unit comes out one call later (NVENC's output lags its input). The access unit
is real H.264: the copied frame is downloaded after the copy's event and encoded
losslessly (libx264, qp 0), so the output file holds exactly the pixels the encoder read.

The races (each scenario also runs with the hand-off switched off, and must then show
corruption, which proves the test can see the race it guards against):
- slow producer: a long kernel on the worker's stream before the RGB->NV12 conversion; an
  encoder that does not wait for the worker's event copies a half-made frame;
- busy encoder: the encoder's stream is busy when the frame arrives, and the worker frees
  the frame and writes its next batch into the same memory at once; an encoder that does not
  keep the frame alive copies the next batch's bytes;
- another GPU (2 GPUs): the frame is made on cuda:1 and encoded on cuda:0; a plain
  `.to("cuda:0")` from the writer's thread does not wait for the worker's stream.

Frames are compared bit-exactly with the same conversion run alone and synchronized, and
within 1 code of the CPU conversion (GPU and CPU float rounding may differ at exact halves).
"""

from __future__ import annotations

import types
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from hw import nv_runtime, nvenc, nvenc_writer
from hw.color import ColorInfo, rgb_to_nv12
from hw.frames import rgb_to_device_nv12, rgb_to_nv12_frames, to_8bit_rgb
from hw.nvenc_writer import NvencFileWriter
from pipeline.messages import ResultItem

pytestmark = pytest.mark.needs_cuda

WIDTH, HEIGHT, NUM_FRAMES = 128, 96, 8
SLOW_CYCLES = 50_000_000  # ~25-50 ms of torch.cuda._sleep on current GPUs
COLOR = ColorInfo(matrix="bt709", primaries_tag=1, transfer_tag=1, matrix_tag=1, range_tag=1)


class _CudaArrayView:
    def __init__(self, cai):
        self.__cuda_array_interface__ = {k: cai[k] for k in ("shape", "strides", "typestr", "data", "version")}


class CudaNvencLike:
    """PyNvVideoCodec's encoder as far as CUDA ordering goes (see the module docstring)."""

    def __init__(self, width, height, *, gpu, cudastream=None, busy_cycles=0):
        self.width, self.height, self.gpu = width, height, gpu
        self.busy_cycles = busy_cycles
        with torch.cuda.device(gpu):
            self.stream = (torch.cuda.ExternalStream(int(cudastream), device=gpu) if cudastream
                           else torch.cuda.Stream(device=gpu))
        self.pending = []
        self.x264 = av.CodecContext.create("libx264", "w")
        self.x264.width, self.x264.height, self.x264.pix_fmt = width, height, "yuv420p"
        self.x264.time_base = Fraction(1, 25)
        self.x264.options = {"qp": "0", "preset": "ultrafast", "tune": "zerolatency", "bf": "0"}
        self.n = 0

    def _device_view(self, cai):
        return torch.as_tensor(_CudaArrayView(cai), device=f"cuda:{self.gpu}")

    def Encode(self, frame):
        y, uv = (p.__cuda_array_interface__ for p in frame.cuda())
        with torch.cuda.device(self.gpu), torch.cuda.stream(self.stream):
            if self.busy_cycles:
                torch.cuda._sleep(self.busy_cycles)
            copy = torch.empty((self.height * 3 // 2, self.width), dtype=torch.uint8, device=f"cuda:{self.gpu}")
            copy[: self.height].copy_(self._device_view(y)[..., 0])
            copy[self.height:].copy_(self._device_view(uv).reshape(self.height // 2, self.width))
            done = torch.cuda.Event()
            done.record(self.stream)
        self.pending.append((copy, done))
        out = []
        while len(self.pending) > 1:  # one call late
            out += self._finish(*self.pending.pop(0))
        return out

    def _finish(self, copy, done):
        done.synchronize()
        frame = av.VideoFrame.from_ndarray(copy.cpu().numpy(), format="nv12").reformat(format="yuv420p")
        frame.pts = self.n
        self.n += 1
        return [{"data": bytes(p), "timestamp": 0, "picture_type": 3 if p.is_keyframe else 0}
                for p in self.x264.encode(frame)]

    def EndEncode(self):
        out = []
        while self.pending:
            out += self._finish(*self.pending.pop(0))
        return out + [{"data": bytes(p), "timestamp": 0, "picture_type": 0} for p in self.x264.encode(None)]

    def GetSequenceParams(self):
        return b""


def cuda_nvenc_module(*, busy_cycles=0):
    module = types.ModuleType("PyNvVideoCodec")

    def create_encoder(width, height, fmt, usecpuinputbuffer, cudastream=None, **options):
        return CudaNvencLike(width, height, gpu=int(options["gpu_id"]), cudastream=cudastream,
                             busy_cycles=busy_cycles)

    module.CreateEncoder = create_encoder
    return module


def _rgb_frames(device):
    gen = torch.Generator().manual_seed(9)
    codes = torch.randint(0, 256, (NUM_FRAMES, 1, 3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8)
    return [(c.float() / 255.0).to(device) for c in codes]


def _expected(rgbs):
    """The conversion run alone (synchronized) on the GPU, and on the CPU."""
    gpu = []
    for rgb in rgbs:
        nv12 = rgb_to_device_nv12(rgb, COLOR)[0]
        torch.cuda.synchronize()
        gpu.append(nv12.cpu().numpy())
    cpu = [rgb_to_nv12(to_8bit_rgb(rgb.cpu()), COLOR)[0].numpy() for rgb in rgbs]
    return gpu, cpu


def _decoded_nv12(path):
    with av.open(str(path)) as c:
        return [f.reformat(format="nv12").to_ndarray() for f in c.decode(video=0)]


def _run(tmp_path, monkeypatch, *, producer_gpu, encoder_gpu, slow_producer, busy_cycles, overwrite_after):
    monkeypatch.setattr(nv_runtime, "nvcodec_import", lambda: cuda_nvenc_module(busy_cycles=busy_cycles))
    out = tmp_path / "out.mkv"
    writer = NvencFileWriter(out, gpu=encoder_gpu, codec="h264", width=WIDTH, height=HEIGHT,
                             time_base=Fraction(1, 25), frame_rate=Fraction(25), color=COLOR,
                             source_path=None, warn=print)
    device = torch.device("cuda", producer_gpu)
    rgbs = _rgb_frames(device)
    torch.cuda.synchronize(device)
    worker_stream = torch.cuda.Stream(device=device)
    for i, rgb in enumerate(rgbs):
        with torch.cuda.device(device), torch.cuda.stream(worker_stream):  # the worker thread's part
            if slow_producer:
                torch.cuda._sleep(SLOW_CYCLES)
            frame = rgb_to_nv12_frames(rgb, COLOR)[0]
        item = ResultItem(index=i, pts=i, fmt="nv12", planes=(frame,))
        writer.write(item.planes, item.pts)  # the writer thread's part: no stream of the worker's is current
        del item, frame
        if overwrite_after:  # the worker's next batch lands in the memory it just let go of
            with torch.cuda.device(device), torch.cuda.stream(worker_stream):
                junk = torch.empty((1, HEIGHT * 3 // 2, WIDTH), dtype=torch.uint8, device=device)
                junk.fill_(255)
                del junk
    writer.close(complete=True)
    torch.cuda.synchronize()
    return _decoded_nv12(out), _expected(rgbs)


def _no_handoff(monkeypatch):
    """Today's code before issue 9: no wait on the producer's event, nothing held, a plain .to()."""
    monkeypatch.setattr(nvenc.NvEncoder, "_wait_ready", lambda self, frame, ready, torch: None)
    monkeypatch.setattr(nvenc.NvEncoder, "_hold", lambda self, entry: None)
    monkeypatch.setattr(nvenc_writer.NvencFileWriter, "_to_encoder_gpu",
                        lambda self, tensor, ready: (tensor.to(f"cuda:{self.gpu}"), None))


SCENARIOS = {
    "slow producer": dict(producer_gpu=0, encoder_gpu=0, slow_producer=True, busy_cycles=0, overwrite_after=False),
    "busy encoder": dict(producer_gpu=0, encoder_gpu=0, slow_producer=False, busy_cycles=SLOW_CYCLES,
                         overwrite_after=True),
    "another GPU": dict(producer_gpu=1, encoder_gpu=0, slow_producer=True, busy_cycles=0, overwrite_after=True),
}


def _needs(scenario):
    if SCENARIOS[scenario]["producer_gpu"] >= torch.cuda.device_count():
        pytest.skip("needs 2 GPUs")


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_nvenc_frames_are_bit_exact_despite_races(tmp_path, monkeypatch, scenario):
    """Regression, issue 9: no ordering between the worker's CUDA stream and the encoder's
    copy, frames freed while the copy was pending, and the same gap in the cross-GPU copy."""
    _needs(scenario)
    got, (gpu_ref, cpu_ref) = _run(tmp_path, monkeypatch, **SCENARIOS[scenario])
    assert len(got) == NUM_FRAMES
    for k, (frame, ref) in enumerate(zip(got, gpu_ref)):
        assert np.array_equal(frame, ref), f"frame {k} differs from the conversion run alone ({scenario})"
    assert max(int(np.abs(g.astype(int) - c.astype(int)).max()) for g, c in zip(got, cpu_ref)) <= 1


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_race_is_visible_without_the_handoff(tmp_path, monkeypatch, scenario):
    """The same run with the hand-off switched off must show corrupt frames: the test above
    can see each race it guards against."""
    _needs(scenario)
    _no_handoff(monkeypatch)
    got, (gpu_ref, _) = _run(tmp_path, monkeypatch, **SCENARIOS[scenario])
    assert len(got) == NUM_FRAMES
    assert any(not np.array_equal(frame, ref) for frame, ref in zip(got, gpu_ref))
