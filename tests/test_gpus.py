"""Tests of hw/gpus.py: GPU facts, NVML wrapper, version report, --gpus parsing."""

from __future__ import annotations

import re
import sys
import types
from types import SimpleNamespace

import pytest
import torch

from hw import gpus
from hw.gpus import GpuInfo, Nvml, fast_fp16, list_gpus, parse_gpu_list, peer_access_matrix
from core.errors import InvalidOption


@pytest.mark.parametrize("cc, fast", [((6, 1), False), ((6, 0), True), ((5, 2), False),
                                      ((6, 2), False), ((7, 0), True), ((8, 6), True),
                                      ((9, 0), True), ((12, 0), True)])
def test_fast_fp16_rule(cc, fast):
    assert fast_fp16(cc) is fast


def _fake_cuda(monkeypatch, devices, peers=None):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: bool(devices))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(devices))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: devices[i])
    monkeypatch.setattr(torch.cuda, "can_device_access_peer",
                        lambda a, b: (peers or {}).get((a, b), False))


def _props(name, major, minor, mem=16 * 2**30, sms=80, bus=0x18):
    return SimpleNamespace(name=name, major=major, minor=minor, total_memory=mem,
                           multi_processor_count=sms, pci_bus_id=bus, pci_device_id=0,
                           pci_domain_id=0)


def test_list_gpus_without_cuda_is_empty(monkeypatch):
    _fake_cuda(monkeypatch, [])
    assert list_gpus() == []


def test_list_gpus_reports_each_device(monkeypatch):
    _fake_cuda(monkeypatch, [_props("NVIDIA H100", 9, 0, 80 * 2**30, 132),
                             _props("Tesla P40", 6, 1, 24 * 2**30, 30, bus=0x3B)])
    found = list_gpus()
    assert [g.name for g in found] == ["NVIDIA H100", "Tesla P40"]
    assert found[0].compute_capability == (9, 0) and found[0].fast_fp16
    assert not found[1].fast_fp16 and found[1].multiprocessors == 30
    assert found[1].pci_bus_id == "00000000:3B:00.0"
    assert "sm_61" in str(found[1]) and "slow" in str(found[1])
    with pytest.raises(Exception):
        found[0].index = 3  # frozen


def test_peer_access_matrix(monkeypatch):
    _fake_cuda(monkeypatch, [_props("a", 9, 0)] * 3, peers={(0, 1): True, (1, 0): True})
    assert peer_access_matrix([0, 1, 2]) == [[True, True, False], [True, True, False],
                                             [False, False, True]]


def _fake_pynvml(fail_init=False):
    m = types.ModuleType("pynvml")
    def init():
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
    m.nvmlInit = init
    m.nvmlDeviceGetHandleByPciBusId = lambda bus: ("h", bus)
    m.nvmlDeviceGetHandleByIndex = lambda i: ("h", i)
    m.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(used=5, total=10)
    m.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=42)
    m.nvmlSystemGetDriverVersion = lambda: b"580.159.04"
    return m


def test_nvml_reports_memory_utilization_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    nvml = Nvml()
    assert nvml.memory(0) == (5, 10)
    assert nvml.utilization(0) == 42
    assert nvml.driver_version() == "580.159.04"


def test_nvml_failures_are_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml(fail_init=True))
    nvml = Nvml()
    assert nvml.memory(0) is None and nvml.utilization(0) is None
    assert nvml.driver_version() is None


def test_nvml_query_errors_are_none(monkeypatch):
    m = _fake_pynvml()
    def boom(*_):
        raise RuntimeError("GPU is lost")
    m.nvmlDeviceGetMemoryInfo = m.nvmlDeviceGetUtilizationRates = boom
    m.nvmlSystemGetDriverVersion = boom
    monkeypatch.setitem(sys.modules, "pynvml", m)
    nvml = Nvml()
    assert nvml.memory(1) is None and nvml.utilization(1) is None
    assert nvml.driver_version() is None


def test_versions_keys(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", _fake_pynvml())
    info = gpus.versions(Nvml())
    assert set(info) == {"driver", "cuda", "torch", "PyNvVideoCodec", "PyAV"}
    assert info["driver"] == "580.159.04" and info["torch"] and info["PyAV"]


@pytest.mark.parametrize("text, n, expected", [("0", 1, [0]), ("0,1", 2, [0, 1]),
                                               (" 2, 0 ", 4, [2, 0])])
def test_parse_gpu_list_ok(text, n, expected):
    assert parse_gpu_list(text, n) == expected


def test_parse_gpu_list_out_of_range():
    with pytest.raises(InvalidOption, match=r"^Invalid --gpus \('0,7'\): this machine has "
                                            r"GPUs 0-1\. Use e\.g\. --gpus 0,1\.$"):
        parse_gpu_list("0,7", 2)


def test_parse_gpu_list_single_gpu_wording():
    with pytest.raises(InvalidOption, match=r"this machine has GPU 0\. Use e\.g\. --gpus 0\."):
        parse_gpu_list("1", 1)


def test_parse_gpu_list_no_gpu():
    with pytest.raises(InvalidOption, match=r"this machine has no CUDA GPU visible"):
        parse_gpu_list("0", 0)


@pytest.mark.parametrize("text", ["", "  ", "0,", ",1"])
def test_parse_gpu_list_empty(text):
    with pytest.raises(InvalidOption, match=r"expected comma-separated GPU indices"):
        parse_gpu_list(text, 2)


def test_parse_gpu_list_not_integer():
    with pytest.raises(InvalidOption, match=r"'a' is not a GPU index"):
        parse_gpu_list("0,a", 2)


def test_parse_gpu_list_duplicates():
    with pytest.raises(InvalidOption, match=r"GPU 1 listed more than once"):
        parse_gpu_list("1,0,1", 2)


def test_parse_gpu_list_negative():
    with pytest.raises(InvalidOption, match=r"this machine has GPUs 0-3"):
        parse_gpu_list("-1", 4)


def test_gpu_info_fields():
    g = GpuInfo(index=0, name="x", total_memory_bytes=2**30, compute_capability=(8, 0),
                fast_fp16=True, multiprocessors=1)
    assert g.pci_bus_id is None and g.total_memory_gib == 1.0


@pytest.mark.needs_cuda
def test_list_gpus_real():
    found = list_gpus()
    assert found and all(g.total_memory_bytes > 0 for g in found)
    assert len(peer_access_matrix([g.index for g in found])) == len(found)


@pytest.mark.parametrize("count, flags, devices, note", [
    (4, dict(multi_gpu=True), ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], ""),
    (4, dict(gpus="2,0"), ["cuda:2", "cuda:0"], ""),
    (4, dict(), ["cuda:0"], ""),
    (4, dict(device="cuda:3"), ["cuda:3"], ""),
    (2, dict(multi_gpu=True, device="cuda"), ["cuda:0", "cuda:1"], ""),
    (1, dict(multi_gpu=True), ["cuda:0"], "--multi-gpu: only 1 GPU is visible; running single-GPU."),
    (0, dict(multi_gpu=True), ["cpu"], "--multi-gpu: no CUDA GPU is visible; running on the CPU."),
    (4, dict(device="cpu", cpu_workers=2), ["cpu", "cpu"], ""),
])
def test_the_plan_gives_one_worker_per_visible_or_listed_gpu(monkeypatch, count, flags, devices, note):
    """--multi-gpu / --gpus / --device as the README says, with 0-4 GPUs faked (the GPU tests that
    cover them need 2 GPUs, and skip elsewhere): one worker per visible GPU, or per listed one in
    the order listed; one GPU visible: single-GPU, said."""
    from pathlib import Path

    from pipeline.config import RunConfig
    from pipeline.plan import plan_devices

    monkeypatch.setattr(gpus, "list_gpus", lambda: [GpuInfo(index=i, name=f"GPU {i}", total_memory_bytes=1 << 34,
                                                            compute_capability=(8, 0), fast_fp16=True, multiprocessors=108)
                                                    for i in range(count)])
    plan = plan_devices(RunConfig(source=Path("x.mp4"), **flags))
    assert [str(d) for d in plan.devices] == devices
    assert plan.note == note


def _fake_gpus(monkeypatch, count):
    monkeypatch.setattr(gpus, "list_gpus", lambda: [GpuInfo(index=i, name=f"GPU {i}", total_memory_bytes=1 << 34,
                                                            compute_capability=(8, 0), fast_fp16=True, multiprocessors=108)
                                                    for i in range(count)])


@pytest.mark.parametrize("cuda, visible, init_error, says, never", [
    (None, None, None, "is a CPU-only build; install a CUDA build of torch", "sees no GPU"),
    ("13.0", None, "Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU",
     "is a CUDA 13.0 build, but it sees no GPU (Found no NVIDIA driver on your system); check the NVIDIA driver",
     "install a CUDA build"),
    ("13.0", "", None, "is a CUDA 13.0 build, but it sees no GPU: CUDA_VISIBLE_DEVICES='' hides every GPU",
     "install a CUDA build"),
])
def test_no_gpu_says_why_for_each_build(monkeypatch, cuda, visible, init_error, says, never):
    """--device cuda:3 on a machine without a GPU said "install a CUDA build of torch" while the
    installed torch was a CUDA build (walkthrough defect 5): the line now says which case it is."""
    from pathlib import Path

    from pipeline.config import RunConfig
    from pipeline.plan import plan_devices

    _fake_gpus(monkeypatch, 0)
    monkeypatch.setattr(torch.version, "cuda", cuda)
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)

    def init():
        if init_error is not None:
            raise RuntimeError(init_error)

    monkeypatch.setattr(torch.cuda, "init", init)
    for flags, start in ((dict(device="cuda:3"), "--device cuda:3: no CUDA GPU is visible: "),
                         (dict(device="cuda"), "--device cuda: no CUDA GPU is visible: "),
                         (dict(gpus="0,1"), "Invalid --gpus ('0,1'): no CUDA GPU is visible: ")):
        with pytest.raises(InvalidOption) as caught:
            plan_devices(RunConfig(source=Path("x.mp4"), **flags))
        line = str(caught.value)
        assert line.startswith(start) and says in line and never not in line and "\n" not in line, line


@pytest.mark.parametrize("count, says", [
    (1, "Invalid --device (cuda:3): this machine has 1 GPU, cuda:0 (counted from 0, as torch sees them). "
        "Use e.g. --device cuda:0."),
    (2, "Invalid --device (cuda:3): this machine has 2 GPUs, cuda:0 to cuda:1"),
])
def test_a_gpu_index_out_of_range_says_how_many_there_are(monkeypatch, count, says):
    from pathlib import Path

    from pipeline.config import RunConfig
    from pipeline.plan import plan_devices

    _fake_gpus(monkeypatch, count)
    with pytest.raises(InvalidOption, match=re.escape(says)):
        plan_devices(RunConfig(source=Path("x.mp4"), device="cuda:3"))
