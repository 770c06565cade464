"""GPU self-test: what this machine has for framepipe, and what works.

    python test_multi_gpu.py

Lists each CUDA GPU (name, memory, compute capability, fp16 fast/slow), NVDEC and NVENC
support per codec (probed through PyNvVideoCodec, not assumed), the peer-to-peer access
matrix and the driver / CUDA / torch / PyNvVideoCodec / PyAV versions, then one verdict
line. Exit status 0 when the machine can run framepipe (on any GPU, or on the CPU).

The logic is pure functions (`collect_report`, `render`, `verdict`) over a `Report`, so
tests/test_multi_gpu_selftest.py checks it with fake GPU lists; only `main` prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from hw.gpus import GpuInfo, Nvml, list_gpus, peer_access_matrix, versions
from hw.nvcodec import nvcodec_version, probe_nvdec, probe_nvenc

CODECS = ("h264", "hevc", "av1")

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


def collect_report(
    *,
    gpus: list[GpuInfo] | None = None,
    nvdec_probe: Callable[..., Probe] = probe_nvdec,
    nvenc_probe: Callable[..., Probe] = probe_nvenc,
    peer_matrix: Callable[[list[int]], list[list[bool]]] = peer_access_matrix,
    version_info: Callable[[], dict[str, str | None]] | None = None,
) -> Report:
    """Probe the machine (every dependency injectable for tests)."""
    gpus = list_gpus() if gpus is None else gpus
    info = version_info() if version_info is not None else versions(Nvml())
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
                  pynvvideocodec_installed=installed)


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
    tail = (" (" + "; ".join(notes) + ")") if notes else ""
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
