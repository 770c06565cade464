"""GPUs: what is there (torch.cuda), how busy it is (NVML), and the --gpus option.

Role: facts about the CUDA devices for the runner, the scheduler and the self-test
(`test_multi_gpu.py`). NVML (pynvml, from nvidia-ml-py) is optional and imported lazily;
every NVML failure reads as "unknown" (None), never as an exception. No threads, no queues.

fp16 rule (`fast_fp16`): compute capability >= (7, 0) is fast (Volta and later run fp16 at
2x fp32 or better, with tensor cores), and so is exactly (6, 0) (P100, 2x fp32). Every other
Pascal/Maxwell/Kepler part (sm_61 P40/P4/GTX 10xx: 1/64 of fp32; sm_62 Jetson TX2 is fast
fp16 too, but is not a framepipe target and is treated as slow) is slow: "auto" precision
picks fp32 there.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from core.errors import InvalidOption

__all__ = [
    "GpuInfo",
    "list_gpus",
    "fast_fp16",
    "peer_access_matrix",
    "Nvml",
    "versions",
    "parse_gpu_list",
    "why_no_gpu",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuInfo:
    """One visible CUDA device (index as torch numbers it, after CUDA_VISIBLE_DEVICES)."""

    index: int
    name: str
    total_memory_bytes: int
    compute_capability: tuple[int, int]
    fast_fp16: bool
    multiprocessors: int
    pci_bus_id: str | None = None

    @property
    def total_memory_gib(self) -> float:
        return self.total_memory_bytes / 2**30

    def __str__(self) -> str:
        major, minor = self.compute_capability
        return (f"GPU {self.index}: {self.name}, {self.total_memory_gib:.1f} GiB, "
                f"sm_{major}{minor}, fp16 {'fast' if self.fast_fp16 else 'slow'}")


def fast_fp16(compute_capability: tuple[int, int]) -> bool:
    """True where fp16 arithmetic is at least as fast as fp32 (see the module docstring)."""
    cc = tuple(compute_capability)
    return cc >= (7, 0) or cc == (6, 0)


def _pci_bus_id(props: Any) -> str | None:
    bus = getattr(props, "pci_bus_id", None)
    if bus is None:
        return None
    domain = int(getattr(props, "pci_domain_id", 0) or 0)
    device = int(getattr(props, "pci_device_id", 0) or 0)
    return f"{domain:08X}:{int(bus):02X}:{device:02X}.0"


def list_gpus() -> list[GpuInfo]:
    """Every CUDA device torch sees; [] without CUDA (CPU build, no driver, no GPU)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return []
        count = torch.cuda.device_count()
    except Exception:
        logger.debug("torch.cuda is not usable", exc_info=True)
        return []
    gpus = []
    for index in range(count):
        props = torch.cuda.get_device_properties(index)
        cc = (int(props.major), int(props.minor))
        gpus.append(GpuInfo(
            index=index,
            name=str(props.name),
            total_memory_bytes=int(props.total_memory),
            compute_capability=cc,
            fast_fp16=fast_fp16(cc),
            multiprocessors=int(props.multi_processor_count),
            pci_bus_id=_pci_bus_id(props),
        ))
    return gpus


def why_no_gpu() -> str:
    """Why torch sees no CUDA GPU, as a clause for an error line: a CPU-only torch build, or a
    CUDA build with GPUs hidden by CUDA_VISIBLE_DEVICES, or no driver or GPU (torch's own reason,
    e.g. "Found no NVIDIA driver on your system"). Only meant for when `list_gpus()` is []."""
    import os

    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken install: say what it said
        return f"torch cannot be imported ({type(exc).__name__}: {exc})"
    cuda = getattr(torch.version, "cuda", None)
    if not cuda:
        return (f"torch {torch.__version__} is a CPU-only build; install a CUDA build of torch to use a GPU "
                "(make setup picks one for this machine's GPUs)")
    build = f"torch {torch.__version__} is a CUDA {cuda} build, but it sees no GPU"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"{build}: CUDA_VISIBLE_DEVICES={visible!r} hides every GPU (unset it to use them)"
    try:
        torch.cuda.init()  # raises with the driver's reason where there is one
    except Exception as exc:  # noqa: BLE001 - its message is the reason
        reason = str(exc).split(". ")[0].strip().rstrip(".")
        return f"{build} ({reason}); check the NVIDIA driver with nvidia-smi"
    return f"{build}; check the NVIDIA driver and GPU with nvidia-smi"


def peer_access_matrix(indices: list[int]) -> list[list[bool]]:
    """m[i][j]: can GPU indices[i] read GPU indices[j]'s memory directly (P2P)? Diagonal True."""
    import torch

    matrix = []
    for a in indices:
        row = []
        for b in indices:
            if a == b:
                row.append(True)
                continue
            try:
                row.append(bool(torch.cuda.can_device_access_peer(a, b)))
            except Exception:
                logger.debug("can_device_access_peer(%d, %d) failed", a, b, exc_info=True)
                row.append(False)
        matrix.append(row)
    return matrix


class Nvml:
    """Lazy NVML: initialized once on first use; every failure answers None."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._module: ModuleType | None = None
        self._failed = False

    def _nvml(self) -> ModuleType | None:
        with self._lock:
            if self._module is None and not self._failed:
                try:
                    module = importlib.import_module("pynvml")
                    module.nvmlInit()
                    self._module = module
                except Exception as exc:
                    logger.debug("NVML unavailable: %s", exc)
                    self._failed = True
            return self._module

    def _handle(self, gpu: int) -> Any:
        nvml = self._nvml()
        if nvml is None:
            return None
        try:
            # torch's index -> NVML's: match by PCI bus id where torch knows it.
            bus_id = _torch_bus_id(gpu)
            if bus_id is not None:
                return nvml.nvmlDeviceGetHandleByPciBusId(bus_id)
            return nvml.nvmlDeviceGetHandleByIndex(gpu)
        except Exception:
            try:
                return nvml.nvmlDeviceGetHandleByIndex(gpu)
            except Exception:
                return None

    def memory(self, gpu: int) -> tuple[int, int] | None:
        """(used_bytes, total_bytes) of GPU `gpu` (all processes), or None."""
        handle = self._handle(gpu)
        if handle is None:
            return None
        try:
            info = self._module.nvmlDeviceGetMemoryInfo(handle)  # type: ignore[union-attr]
            return int(info.used), int(info.total)
        except Exception:
            return None

    def utilization(self, gpu: int) -> int | None:
        """GPU busy percentage over NVML's last sample period, or None."""
        handle = self._handle(gpu)
        if handle is None:
            return None
        try:
            return int(self._module.nvmlDeviceGetUtilizationRates(handle).gpu)  # type: ignore[union-attr]
        except Exception:
            return None

    def driver_version(self) -> str | None:
        nvml = self._nvml()
        if nvml is None:
            return None
        try:
            version = nvml.nvmlSystemGetDriverVersion()
            return version.decode() if isinstance(version, bytes) else str(version)
        except Exception:
            return None


def _torch_bus_id(gpu: int) -> str | None:
    try:
        import torch

        return _pci_bus_id(torch.cuda.get_device_properties(gpu))
    except Exception:
        return None


def dist_version(*names: str) -> str | None:
    """The first installed distribution's version among `names` (metadata only, no import)."""
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def versions(nvml: Nvml | None = None) -> dict[str, str | None]:
    """Driver, CUDA runtime (torch's), torch, PyNvVideoCodec and PyAV versions; None = absent."""
    try:
        import torch

        torch_version: str | None = torch.__version__
        cuda_version: str | None = torch.version.cuda
    except Exception:
        torch_version = cuda_version = None
    return {
        "driver": (nvml or Nvml()).driver_version(),
        "cuda": cuda_version,
        "torch": torch_version,
        "PyNvVideoCodec": dist_version("PyNvVideoCodec", "pynvvideocodec"),
        "PyAV": dist_version("av"),
    }


def _ranges(indices: list[int]) -> str:
    return f"0-{indices[-1]}" if len(indices) > 1 else "0"


def parse_gpu_list(text: str, num_visible: int) -> list[int]:
    """Validate `--gpus "0,2"` against `num_visible` GPUs; returns the indices in order."""
    given = text
    if num_visible <= 0:
        raise InvalidOption(
            f"Invalid --gpus ({given!r}): this machine has no CUDA GPU visible. Drop --gpus "
            "to run on the CPU, or check the driver with nvidia-smi.")
    example = ",".join(str(i) for i in range(min(num_visible, 2)))
    have = f"this machine has GPU{'s' if num_visible > 1 else ''} {_ranges(list(range(num_visible)))}"
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(p == "" for p in parts):
        raise InvalidOption(
            f"Invalid --gpus ({given!r}): expected comma-separated GPU indices; {have}. "
            f"Use e.g. --gpus {example}.")
    indices = []
    for part in parts:
        try:
            index = int(part)
        except ValueError:
            raise InvalidOption(
                f"Invalid --gpus ({given!r}): {part!r} is not a GPU index; {have}. "
                f"Use e.g. --gpus {example}.") from None
        indices.append(index)
    duplicates = sorted({i for i in indices if indices.count(i) > 1})
    if duplicates:
        raise InvalidOption(
            f"Invalid --gpus ({given!r}): GPU {', '.join(map(str, duplicates))} listed more "
            f"than once. Use e.g. --gpus {example}.")
    missing = [i for i in indices if not 0 <= i < num_visible]
    if missing:
        raise InvalidOption(f"Invalid --gpus ({given!r}): {have}. Use e.g. --gpus {example}.")
    return indices
