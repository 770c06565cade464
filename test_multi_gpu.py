"""GPU self-test: what this machine has for framepipe, and what works.

    python test_multi_gpu.py

Lists each CUDA GPU (name, memory, compute capability, fp16 fast/slow), NVDEC and NVENC
support per codec (probed through PyNvVideoCodec, not assumed), the peer-to-peer access
matrix and the driver / CUDA / torch / PyNvVideoCodec / PyAV versions, then the
compatibility checks with the fix for each mismatch:

- the driver version, against what torch's CUDA runtime needs;
- torch's compiled architectures (`torch.cuda.get_arch_list()`) against each GPU's compute
  capability (a Tesla P40 is sm_61; PyPI's default torch starts at sm_75);
- PyNvVideoCodec: driver >= 530 (NVENC API 12.1), and NVIDIA's supported list (Turing and
  newer; Pascal is not in it, and may work);
- GPUs nvidia-smi sees that torch does not (CPU-only torch, or a driver too old for it).

Then one verdict line. Exit status 0 when the machine can run framepipe (on its GPUs, or
on the CPU when it has none); 1 when a GPU is there that torch cannot run on.

The logic is pure functions (`collect_report`, `compatibility_checks`, `render`, `verdict`)
over a `Report`, so tests/test_multi_gpu_selftest.py checks it with fake machines; only
`main` prints. The rules and their evidence live in hw/cuda_compat.py.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from hw.cuda_compat import (PYNVVIDEOCODEC_MIN_CC, PYNVVIDEOCODEC_MIN_DRIVER, arch_covers, choose_torch_build,
                            driver_major, parse_nvidia_smi, query_nvidia_smi)
from hw.gpus import GpuInfo, Nvml, list_gpus, peer_access_matrix, versions
from hw.nv_probe import probe_nvdec, probe_nvenc
from hw.nv_runtime import nvcodec_version

from core.choices import CODECS

Probe = tuple[bool, str]


@dataclass(frozen=True)
class Report:
    """Everything the self-test found. `nvdec[gpu][codec]` / `nvenc[gpu][codec]` = (ok, why)."""

    gpus: list[GpuInfo]
    nvdec: dict[int, dict[str, Probe]] = field(default_factory=dict)
    nvenc: dict[int, dict[str, Probe]] = field(default_factory=dict)
    peer_access: list[list[bool]] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    pynvvideocodec_installed: bool = False
    arch_list: list[str] = field(default_factory=list)  # torch.cuda.get_arch_list(); [] = unknown
    smi_gpus: list[tuple[tuple[int, int], str | None]] = field(default_factory=list)  # nvidia-smi's view


@dataclass(frozen=True)
class Check:
    """One compatibility finding: `level` ok / warn (works, with a caveat) / error (will
    fail), what was found, and the fix (empty when nothing is to be done)."""

    level: Literal["ok", "warn", "error"]
    text: str
    fix: str = ""


# Oldest Linux driver branch for torch's CUDA runtime major version (CUDA minor version
# compatibility: 11.x needs >= 450.80.02, 12.x >= 525.60.13, 13.x >= 580.65.06; compared
# by branch here, the first number).
_MIN_DRIVER_FOR_CUDA = {11: 450, 12: 525, 13: 580}
_DRIVER_FIX = "install NVIDIA driver R580 or newer (R580 is the last branch for Pascal GPUs such as the Tesla P40)"


def _torch_args_for(caps: list[tuple[int, int]]) -> str:
    args = choose_torch_build([(c, None) for c in caps]).pip_args()
    return ("pip install " + shlex.join(args) + " (make setup picks it by itself)") if args else ""


def _gpu_name(gpu: GpuInfo) -> str:
    major, minor = gpu.compute_capability
    return f"GPU {gpu.index} ({gpu.name}, sm_{major}{minor})"


def compatibility_checks(report: Report) -> list[Check]:
    """Driver, torch kernels per GPU, PyNvVideoCodec support, GPUs torch cannot see."""
    checks: list[Check] = []
    driver = report.versions.get("driver") or next((d for _, d in report.smi_gpus if d), None)
    cuda = report.versions.get("cuda")
    torch_version = report.versions.get("torch") or "?"
    if driver is None:
        if report.gpus or report.smi_gpus:
            checks.append(Check("warn", "driver version unknown (NVML and nvidia-smi did not answer)",
                                "check with nvidia-smi"))
    else:
        needed = _MIN_DRIVER_FOR_CUDA.get(int(cuda.split(".")[0])) if cuda and cuda.split(".")[0].isdigit() else None
        if needed is not None and (driver_major(driver) or 0) < needed:
            checks.append(Check("error", f"driver {driver} is older than torch's CUDA {cuda} needs "
                                         f"(the {needed} branch or newer)", _DRIVER_FIX))
        else:
            checks.append(Check("ok", f"driver {driver}" + (f" (enough for torch's CUDA {cuda})" if cuda else "")))
    if report.smi_gpus and not report.gpus:
        caps = [cap for cap, _ in report.smi_gpus]
        names = ", ".join(sorted({f"sm_{a}{b}" for a, b in caps}))
        why = ("torch is a CPU-only build" if not cuda else
               f"torch {torch_version} (CUDA {cuda}) cannot use them")
        fix = _torch_args_for(caps) or "install a CUDA build of torch: make setup (or pip install torch torchvision)"
        checks.append(Check("error", f"nvidia-smi sees {len(caps)} GPU(s) ({names}) but torch sees none: {why}", fix))
    for gpu in report.gpus:
        cap = gpu.compute_capability
        if report.arch_list:
            if arch_covers(report.arch_list, cap):
                checks.append(Check("ok", f"{_gpu_name(gpu)}: torch {torch_version} has kernels for it"))
            else:
                checks.append(Check(
                    "error",
                    f"{_gpu_name(gpu)}: torch {torch_version} has no kernels for it (built for "
                    f"{', '.join(report.arch_list)}): the first CUDA kernel fails",
                    _torch_args_for([g.compute_capability for g in report.gpus])
                    or "install a torch build compiled for this GPU"))
    major = driver_major(driver)
    if report.gpus and report.pynvvideocodec_installed:
        if major is not None and major < PYNVVIDEOCODEC_MIN_DRIVER:
            checks.append(Check("error", f"PyNvVideoCodec needs driver >= {PYNVVIDEOCODEC_MIN_DRIVER} "
                                         f"(NVENC API 12.1); this one is {driver}: --nvdec/--nvenc fall back "
                                         "to the CPU", _DRIVER_FIX))
        for gpu in report.gpus:
            if tuple(gpu.compute_capability) < PYNVVIDEOCODEC_MIN_CC:
                checks.append(Check(
                    "warn", f"{_gpu_name(gpu)}: not in NVIDIA's supported list for PyNvVideoCodec (Turing "
                            "and newer), may work: the NVDEC/NVENC probes above are what this machine answered",
                    "run a short job with --nvdec --nvenc (e.g. --max-frames 50) and check the output plays"))
            else:
                checks.append(Check("ok", f"{_gpu_name(gpu)}: supported by PyNvVideoCodec"))
    return checks


def collect_report(
    *,
    gpus: list[GpuInfo] | None = None,
    nvdec_probe: Callable[..., Probe] = probe_nvdec,
    nvenc_probe: Callable[..., Probe] = probe_nvenc,
    peer_matrix: Callable[[list[int]], list[list[bool]]] = peer_access_matrix,
    version_info: Callable[[], dict[str, str | None]] | None = None,
    arch_list: Callable[[], list[str]] | None = None,
    smi: Callable[[], str | None] | None = None,
) -> Report:
    """Probe the machine (every dependency injectable for tests). When `gpus` is given, the
    arch list and nvidia-smi are only consulted if given too (a test injects a whole machine)."""
    probe_machine = gpus is None
    gpus = list_gpus() if gpus is None else gpus
    info = version_info() if version_info is not None else versions(Nvml())
    if arch_list is None:
        arch_list = _torch_arch_list if probe_machine else list
    if smi is None:
        smi = query_nvidia_smi if probe_machine else (lambda: None)
    installed = info.get("PyNvVideoCodec") is not None or nvcodec_version() is not None
    nvdec: dict[int, dict[str, Probe]] = {}
    nvenc: dict[int, dict[str, Probe]] = {}
    for gpu in gpus:
        nvdec[gpu.index], nvenc[gpu.index] = {}, {}
        for codec in CODECS:
            if not installed:
                nvdec[gpu.index][codec] = (False, "PyNvVideoCodec not installed")
                nvenc[gpu.index][codec] = (False, "PyNvVideoCodec not installed")
                continue
            nvdec[gpu.index][codec] = nvdec_probe(codec=codec, bit_depth=8, chroma_format="420",
                                                  width=1920, height=1080, gpu=gpu.index)
            nvenc[gpu.index][codec] = nvenc_probe(codec=codec, gpu=gpu.index)
    peers = peer_matrix([g.index for g in gpus]) if len(gpus) > 1 else []
    return Report(gpus=gpus, nvdec=nvdec, nvenc=nvenc, peer_access=peers, versions=info,
                  pynvvideocodec_installed=installed, arch_list=list(arch_list()),
                  smi_gpus=parse_nvidia_smi(smi() or ""))


def _torch_arch_list() -> list[str]:
    """torch.cuda.get_arch_list(), or [] (no torch, a CPU build, or no usable driver)."""
    try:
        import torch

        return list(torch.cuda.get_arch_list()) if torch.cuda.is_available() else []
    except Exception:
        return []


def _mark(probe: Probe) -> str:
    return "yes" if probe[0] else "no"


def render(report: Report) -> list[str]:
    """The report as plain lines (main draws the same content as rich tables)."""
    lines = []
    if not report.gpus:
        lines.append("No CUDA GPU visible (CPU build of torch, no NVIDIA driver, or no GPU).")
    for gpu in report.gpus:
        major, minor = gpu.compute_capability
        lines.append(f"GPU {gpu.index}: {gpu.name} | {gpu.total_memory_gib:.1f} GiB | "
                     f"compute {major}.{minor} | fp16 {'fast' if gpu.fast_fp16 else 'slow (fp32 used)'}"
                     f" | {gpu.multiprocessors} SMs")
        for kind, table in (("NVDEC", report.nvdec), ("NVENC", report.nvenc)):
            probes = table.get(gpu.index, {})
            cells = ", ".join(f"{c} {_mark(probes[c])}" for c in CODECS if c in probes)
            lines.append(f"  {kind}: {cells}")
            if not report.pynvvideocodec_installed:
                continue
            for codec in CODECS:
                if codec in probes and not probes[codec][0]:
                    lines.append(f"    {codec}: {probes[codec][1]}")
    if report.peer_access:
        lines.append("Peer-to-peer access (row reads column):")
        idx = [g.index for g in report.gpus]
        lines.append("       " + " ".join(f"GPU{i:<2}" for i in idx))
        for i, row in zip(idx, report.peer_access):
            lines.append(f"  GPU{i:<2} " + " ".join(f"{'yes' if ok else 'no':<5}" for ok in row))
    checks = compatibility_checks(report)
    if checks:
        lines.append("Compatibility:")
        marks = {"ok": "ok  ", "warn": "WARN", "error": "FAIL"}
        for check in checks:
            lines.append(f"  {marks[check.level]} {check.text}")
            if check.fix:
                lines.append(f"       fix: {check.fix}")
    names = ("driver", "cuda", "torch", "PyNvVideoCodec", "PyAV")
    lines.append("Versions: " + ", ".join(
        f"{n} {report.versions.get(n) or ('not installed' if n in ('PyNvVideoCodec', 'PyAV') else 'unknown')}"
        for n in names))
    return lines


def verdict(report: Report) -> tuple[str, int]:
    """(one line saying what works and what is missing, exit status)."""
    n = len(report.gpus)
    notes = []
    if n and not report.pynvvideocodec_installed:
        notes.append("PyNvVideoCodec not installed: NVDEC/NVENC off (pip install PyNvVideoCodec)")
    elif n:
        if not any(p[0] for probes in report.nvdec.values() for p in probes.values()):
            notes.append("no NVDEC: decoding on the CPU")
        if not any(p[0] for probes in report.nvenc.values() for p in probes.values()):
            notes.append("no NVENC: encoding on the CPU")
    slow = [g.index for g in report.gpus if not g.fast_fp16]
    if slow:
        notes.append(f"GPU {', '.join(map(str, slow))} slow at fp16: fp32 is used there")
    if report.versions.get("PyAV") is None:
        notes.append("PyAV not installed: pip install av (needed for all video I/O)")
    errors = [c for c in compatibility_checks(report) if c.level == "error"]
    if errors:
        notes.insert(0, f"{len(errors)} compatibility problem(s), each with its fix above")
    tail = (" (" + "; ".join(notes) + ")") if notes else ""
    if errors:
        if n == 0:
            return "NVIDIA GPU(s) present but unusable by torch" + tail, 1
        return f"{n} GPU(s) visible, but framepipe cannot run on all of them as installed" + tail, 1
    if n == 0:
        return ("No CUDA GPU visible: CPU mode works (slow); multi-GPU needs 2 or more "
                "NVIDIA GPUs with a CUDA build of torch." + tail), 0
    if n == 1:
        return ("Only 1 GPU visible: multi-GPU runs need 2 or more; single-GPU mode works."
                + tail), 0
    return f"Multi-GPU setup detected! {n} GPUs available." + tail, 0


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    report = collect_report()
    if report.gpus:
        table = Table(title="CUDA GPUs")
        for column in ("GPU", "name", "memory", "compute", "fp16", "SMs",
                       *(f"NVDEC {c}" for c in CODECS), *(f"NVENC {c}" for c in CODECS)):
            table.add_column(column)
        for gpu in report.gpus:
            major, minor = gpu.compute_capability
            table.add_row(str(gpu.index), gpu.name, f"{gpu.total_memory_gib:.1f} GiB",
                          f"{major}.{minor}", "fast" if gpu.fast_fp16 else "slow",
                          str(gpu.multiprocessors),
                          *(_mark(report.nvdec[gpu.index][c]) for c in CODECS),
                          *(_mark(report.nvenc[gpu.index][c]) for c in CODECS))
        console.print(table)
    for line in render(report):
        if not line.startswith("GPU ") or not report.gpus:
            console.print(line, markup=False, highlight=False)
    text, code = verdict(report)
    console.print(text, style="bold green" if report.gpus else "bold yellow",
                  markup=False, highlight=False)
    return code


if __name__ == "__main__":
    sys.exit(main())
