"""Tests of test_multi_gpu.py (the GPU self-test): its logic with fake GPUs, and the CLI."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw.gpus import GpuInfo

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("selftest", ROOT / "test_multi_gpu.py")
selftest = importlib.util.module_from_spec(_spec)
sys.modules["selftest"] = selftest  # dataclasses look their module up there
_spec.loader.exec_module(selftest)

VERSIONS = {"driver": "580.1", "cuda": "13.0", "torch": "2.11", "PyNvVideoCodec": "2.2.4",
            "PyAV": "19.0.2"}


def gpu(i, name="NVIDIA H100 80GB HBM3", cc=(9, 0)):
    return GpuInfo(index=i, name=name, total_memory_bytes=80 * 2**30, compute_capability=cc,
                   fast_fp16=cc >= (7, 0), multiprocessors=132)


def nvdec_yes(**kw):
    return (kw["codec"] != "av1", f"NVDEC {kw['codec']} on GPU {kw['gpu']}")


def nvenc_no(**kw):
    return (False, f"NVENC on GPU {kw['gpu']} cannot encode {kw['codec']}: error 2")


def nvenc_yes(**kw):
    return (True, "ok")


def report(gpus, *, nvenc=nvenc_no, versions=VERSIONS, peers=None):
    return selftest.collect_report(
        gpus=gpus, nvdec_probe=nvdec_yes, nvenc_probe=nvenc,
        peer_matrix=peers or (lambda idx: [[a == b or True for b in idx] for a in idx]),
        version_info=lambda: dict(versions))


def test_two_gpus_multi_gpu_detected():
    r = report([gpu(0), gpu(1)])
    text, code = selftest.verdict(r)
    assert code == 0 and text.startswith("Multi-GPU setup detected! 2 GPUs available.")
    assert "no NVENC: encoding on the CPU" in text
    lines = "\n".join(selftest.render(r))
    assert "GPU 1: NVIDIA H100 80GB HBM3 | 80.0 GiB | compute 9.0 | fp16 fast" in lines
    assert "NVDEC: h264 yes, hevc yes, av1 no" in lines
    assert "NVENC: h264 no, hevc no, av1 no" in lines
    assert "h264: NVENC on GPU 0 cannot encode h264: error 2" in lines
    assert "Peer-to-peer access" in lines
    assert "Versions: driver 580.1, cuda 13.0, torch 2.11, PyNvVideoCodec 2.2.4, PyAV 19.0.2" in lines


def test_one_gpu():
    text, code = selftest.verdict(report([gpu(0)], nvenc=nvenc_yes))
    assert code == 0
    assert text == "Only 1 GPU visible: multi-GPU runs need 2 or more; single-GPU mode works."


def test_no_gpu_is_cpu_mode():
    r = report([])
    text, code = selftest.verdict(r)
    assert code == 0 and text.startswith("No CUDA GPU visible: CPU mode works")
    assert selftest.render(r)[0].startswith("No CUDA GPU visible")
    assert r.peer_access == [] and r.nvdec == {}


def test_pynvvideocodec_missing(monkeypatch):
    monkeypatch.setattr(selftest, "nvcodec_version", lambda: None)
    r = report([gpu(0), gpu(1)], versions={**VERSIONS, "PyNvVideoCodec": None})
    assert not r.pynvvideocodec_installed
    assert r.nvdec[0]["h264"] == (False, "PyNvVideoCodec not installed")
    text, _ = selftest.verdict(r)
    assert "PyNvVideoCodec not installed: NVDEC/NVENC off" in text
    assert "PyNvVideoCodec not installed" in "\n".join(selftest.render(r))


def test_slow_fp16_gpu_is_named():
    r = report([gpu(0, "Tesla P40", (6, 1)), gpu(1)])
    text, _ = selftest.verdict(r)
    assert "GPU 0 slow at fp16: fp32 is used there" in text
    assert "fp16 slow (fp32 used)" in "\n".join(selftest.render(r))


def test_no_peer_access_rendered():
    r = report([gpu(0), gpu(1)], peers=lambda idx: [[a == b for b in idx] for a in idx])
    lines = selftest.render(r)
    row = [ln for ln in lines if ln.startswith("  GPU0")][0]
    assert row.split()[1:] == ["yes", "no"]


def test_script_runs_in_cpu_mode_here():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "test_multi_gpu.py"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "No CUDA GPU visible (CPU build of torch, no NVIDIA driver, or no GPU)." in result.stdout
    assert "No CUDA GPU visible: CPU mode works" in result.stdout
    assert "Versions: driver" in result.stdout


def test_import_has_no_side_effects(capsys):
    spec = importlib.util.spec_from_file_location("selftest2", ROOT / "test_multi_gpu.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["selftest2"] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["selftest2"]
    assert capsys.readouterr().out == ""


@pytest.mark.needs_cuda
def test_real_report():
    r = selftest.collect_report()
    text, code = selftest.verdict(r)
    assert code == 0 and r.gpus
