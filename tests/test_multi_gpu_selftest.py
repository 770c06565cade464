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
        peer_matrix=peers or (lambda idx: [[True for _ in idx] for _ in idx]),  # every GPU reads every other
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
    assert "Peer-to-peer access (row reads column):" in lines
    assert [ln.split() for ln in lines.splitlines() if ln.startswith("  GPU")] == [["GPU0", "yes", "yes"],
                                                                                  ["GPU1", "yes", "yes"]]
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


# ----------------------------------------------------------------------------- compatibility (issue 9)

DEFAULT_ARCHS = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # PyPI's torch 2.14 (CUDA 13)
LEGACY_ARCHS = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]  # torch 2.14 + cu126
P40_VERSIONS = {**VERSIONS, "driver": "580.95.05", "torch": "2.14.1+cu130"}


def p40(i):
    return gpu(i, "Tesla P40", (6, 1))


def pascal_report(archs, *, versions=P40_VERSIONS, smi=None, gpus=None):
    return selftest.collect_report(
        gpus=[p40(0), p40(1)] if gpus is None else gpus, nvdec_probe=nvdec_yes, nvenc_probe=nvenc_yes,
        peer_matrix=lambda idx: [[True for _ in idx] for _ in idx], version_info=lambda: dict(versions),
        arch_list=lambda: list(archs), smi=smi)


def _levels(report):
    return [(c.level, c.text) for c in selftest.compatibility_checks(report)]


def test_p40_with_pypis_default_torch_is_a_failure_with_its_fix():
    """Issue 9: on a P40 the default install fails at the first kernel; the self-test says so
    and prints the torch build that has sm_6x kernels."""
    r = pascal_report(DEFAULT_ARCHS)
    checks = selftest.compatibility_checks(r)
    kernels = [c for c in checks if "kernels" in c.text]
    assert [c.level for c in kernels] == ["error", "error"]
    assert kernels[0].text.startswith("GPU 0 (Tesla P40, sm_61): torch 2.14.1+cu130 has no kernels for it")
    assert kernels[0].fix.startswith(
        "pip install --index-url https://download.pytorch.org/whl/cu126 'torch==2.14.*' 'torchvision==0.29.*'")
    text, code = selftest.verdict(r)
    assert code == 1 and "2 compatibility problem(s)" in text
    lines = "\n".join(selftest.render(r))
    assert "FAIL GPU 1 (Tesla P40, sm_61): torch" in lines and "fix: pip install --index-url" in lines


def test_p40_with_the_legacy_build_passes_and_pynvvideocodec_is_a_caveat():
    r = pascal_report(LEGACY_ARCHS, versions={**P40_VERSIONS, "torch": "2.14.1+cu126", "cuda": "12.6"})
    levels = _levels(r)
    assert ("ok", "driver 580.95.05 (enough for torch's CUDA 12.6)") in levels
    assert ("ok", "GPU 0 (Tesla P40, sm_61): torch 2.14.1+cu126 has kernels for it") in levels
    caveat = [c for c in selftest.compatibility_checks(r) if "PyNvVideoCodec" in c.text]
    assert [c.level for c in caveat] == ["warn", "warn"]
    assert "not in NVIDIA's supported list for PyNvVideoCodec (Turing and newer), may work" in caveat[0].text
    text, code = selftest.verdict(r)
    assert code == 0 and text.startswith("Multi-GPU setup detected! 2 GPUs available.")


def test_driver_too_old_for_pynvvideocodec_and_for_torch():
    r = pascal_report(LEGACY_ARCHS, versions={**P40_VERSIONS, "driver": "470.256.02", "cuda": "12.6"})
    errors = [c for c in selftest.compatibility_checks(r) if c.level == "error"]
    assert [c.text for c in errors] == [
        "driver 470.256.02 is older than torch's CUDA 12.6 needs (the 525 branch or newer)",
        "PyNvVideoCodec needs driver >= 530 (NVENC API 12.1); this one is 470.256.02: --nvdec/--nvenc fall back "
        "to the CPU"]
    assert all("R580" in c.fix for c in errors)
    assert selftest.verdict(r)[1] == 1


def test_gpus_nvidia_smi_sees_but_torch_does_not():
    r = pascal_report(DEFAULT_ARCHS, gpus=[], smi=lambda: "6.1, 580.95.05\n6.1, 580.95.05\n")
    (check,) = [c for c in selftest.compatibility_checks(r) if c.level == "error"]
    assert check.text == ("nvidia-smi sees 2 GPU(s) (sm_61) but torch sees none: torch 2.14.1+cu130 (CUDA 13.0) "
                          "cannot use them")
    assert "cu126" in check.fix
    text, code = selftest.verdict(r)
    assert code == 1 and text.startswith("NVIDIA GPU(s) present but unusable by torch")


def test_hopper_with_default_torch_is_all_ok():
    r = selftest.collect_report(gpus=[gpu(0)], nvdec_probe=nvdec_yes, nvenc_probe=nvenc_no,
                                peer_matrix=lambda idx: [[True]], version_info=lambda: dict(VERSIONS),
                                arch_list=lambda: list(DEFAULT_ARCHS))
    assert {c.level for c in selftest.compatibility_checks(r)} == {"ok"}
    assert selftest.verdict(r)[1] == 0


def test_unknown_arch_list_skips_the_kernel_check():
    r = report([p40(0)])  # no arch list injected: unknown, not a failure
    assert not [c for c in selftest.compatibility_checks(r) if "kernels" in c.text]
