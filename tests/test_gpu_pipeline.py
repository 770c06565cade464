"""The pipeline on real GPUs (needs_cuda: skipped without one; run on the GPU host).

CUDA workers (fp16, batch probe, injected OOM), NVDEC in, GPU colour conversion against the
CPU's, and with two GPUs, both workers sharing one run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline import RunConfig, run
from pipeline.worker import WorkerFaults
from tests import probe

pytestmark = pytest.mark.needs_cuda


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=16)
    base.update(kw)
    return RunConfig(**base)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_cuda_run_matches_cpu_run(clips, tmp_path):
    src = clips("gpu.mp4", num_frames=40, width=128, height=96)
    gpu = run(_cfg(src, tmp_path / "gpu.mp4", device="cuda", batch_size=0))
    run(_cfg(src, tmp_path / "cpu.mp4", device="cpu"))
    assert probe.indices(tmp_path / "gpu.mp4") == list(range(40))
    a, b = probe.frames_rgb(tmp_path / "gpu.mp4"), probe.frames_rgb(tmp_path / "cpu.mp4")
    assert min(_psnr(x, y) for x, y in zip(a, b)) > 40  # fp16 on the GPU vs fp32 on the CPU
    worker = stats_worker(gpu)
    assert worker.device == "cuda:0" and worker.batch_size >= 1
    assert worker.probe_seconds > 0 and worker.probe_note.startswith("chose ")


def stats_worker(stats):
    (worker,) = stats.workers.values()
    return worker


def test_nvdec_run_is_frame_exact_with_pyav_decode(clips, tmp_path):
    pytest.importorskip("PyNvVideoCodec")
    src = clips("gpu-bframes.mp4", num_frames=60, width=128, height=96)
    nv = run(_cfg(src, tmp_path / "nv.mp4", device="cuda", nvdec=True, batch_size=4))
    assert nv.notes["decoder"] == "NVDEC"
    run(_cfg(src, tmp_path / "av.mp4", device="cuda", nvdec=False, batch_size=4))
    assert probe.pts_seconds(tmp_path / "nv.mp4") == probe.pts_seconds(tmp_path / "av.mp4")
    for x, y in zip(probe.frames_yuv(tmp_path / "nv.mp4"), probe.frames_yuv(tmp_path / "av.mp4")):
        np.testing.assert_array_equal(x, y)


def test_injected_oom_on_gpu_recovers(clips, tmp_path):
    src = clips("gpu.mp4", num_frames=40, width=128, height=96)
    stats = run(_cfg(src, tmp_path / "o.mp4", device="cuda", batch_size=8, max_batch_size=8,
                     faults={"workers": {"worker-gpu0": WorkerFaults(oom_when_batch_over=2)}}))
    w = stats_worker(stats)
    assert w.num_oom >= 2 and max(w.batch_sizes) <= 2
    assert probe.indices(tmp_path / "o.mp4") == list(range(40))


def test_gpu_color_conversion_equals_cpu():
    from hw.color import ColorInfo, rgb_to_yuv420, yuv_to_rgb

    g = torch.Generator().manual_seed(0)
    y = torch.randint(16, 236, (2, 64, 96), generator=g, dtype=torch.uint8)
    u = torch.randint(16, 241, (2, 32, 48), generator=g, dtype=torch.uint8)
    v = torch.randint(16, 241, (2, 32, 48), generator=g, dtype=torch.uint8)
    info = ColorInfo(matrix="bt709")
    cpu = yuv_to_rgb(y, u, v, info)
    gpu = yuv_to_rgb(y.cuda(), u.cuda(), v.cuda(), info).cpu()
    assert torch.allclose(cpu, gpu, atol=1e-5)
    for a, b in zip(rgb_to_yuv420(cpu, info), rgb_to_yuv420(cpu.cuda(), info)):
        assert (a.int() - b.cpu().int()).abs().max() <= 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
@pytest.mark.parametrize("nvdec", [False, True])
def test_two_gpus_share_one_run(clips, tmp_path, nvdec):
    if nvdec:
        pytest.importorskip("PyNvVideoCodec")
    src = clips("gpu-long.mp4", num_frames=120, width=128, height=96)
    stats = run(_cfg(src, tmp_path / "o.mp4", multi_gpu=True, nvdec=nvdec, batch_size=2))
    assert sorted(stats.workers) == ["worker-gpu0", "worker-gpu1"]
    assert all(w.num_frames > 0 for w in stats.workers.values())
    assert probe.indices(tmp_path / "o.mp4") == list(range(120))
