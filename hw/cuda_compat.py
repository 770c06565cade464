"""CUDA compatibility: which torch build runs on which GPUs, and what PyNvVideoCodec needs.

Role: pure functions over plain data (compute capabilities, driver versions, torch's
compiled architecture list) for the set-up (`scripts/torch_build.py`, which `make setup`
and `scripts/build_offline_bundle.py --gpu-arch` use to pick a torch build) and for the
self-test (`test_multi_gpu.py`). Standard library only: the set-up runs it before torch is
installed. No threads, no queues, no I/O except `query_nvidia_smi`.

Evidence behind the facts below (checked 2026-11):
- A cubin built for sm_XY runs on a GPU of compute capability X.Z with Z >= Y only (same
  major); PTX (compute_XY) is JIT-compiled for any GPU of capability >= X.Y; an
  architecture-specific target (sm_90a, sm_100a) runs on exactly X.Y; a family-specific one
  (sm_100f, CUDA 12.9+) on X.Z with Z >= Y. (CUDA C++ Programming Guide, "Binary
  Compatibility" and "PTX Compatibility"; CUDA 12.9 release notes for the `f` targets.)
  So PyTorch's sm_60 kernels run on a P40 (sm_61), and its sm_75+ kernels do not.
- PyTorch 2.14's wheels (RFC pytorch/pytorch#190355, RELEASE.md "PyTorch CUDA Support
  Matrix"): the PyPI default is CUDA 13.2 and CUDA 13.0 is on download.pytorch.org, both
  Turing(7.5), Ampere(8.0, 8.6), Hopper(9.0), Blackwell(10.0, 12.0+PTX); CUDA 12.6 is the
  "Legacy" build on https://download.pytorch.org/whl/cu126 with Maxwell(5.0), Pascal(6.0),
  Volta(7.0), Turing(7.5), Ampere(8.0, 8.6), Hopper(9.0). PyTorch's build script says "Only
  12.6 includes legacy Maxwell/Pascal/Volta" (.ci/manywheel/build_cuda.sh), and the 2.8
  cu126 wheels' measured arch list was 5.0;6.0;7.0;7.5;8.0;8.6;9.0. From 2.15 no CUDA 12.6
  wheels are published (RFC pytorch/pytorch#190385), so 2.14 + cu126 is the last build
  with Pascal kernels: torch 2.14.x with torchvision 0.29.x (the pair installed here).
- CUDA 12.x wheels need a driver >= 525.60.13 on Linux (CUDA minor version
  compatibility); CUDA 13.x wheels need >= 580. NVIDIA's R580 driver branch is the last to
  support Maxwell, Pascal and Volta ("The release 580 series will be the last to support
  GPUs based on the Maxwell, Pascal, and Volta architectures", Unix driver deprecation
  schedule), so a P40 runs R580.
- PyNvVideoCodec 2.2.4's __init__ refuses an NVENC API older than 12.1 ("Driver version is
  too old"), i.e. a driver older than 530; NVIDIA's system requirements list Turing, Ampere,
  Ada, Hopper and Blackwell discrete GPUs, not Pascal.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

__all__ = [
    "TorchBuild",
    "TORCH_DEFAULT",
    "TORCH_LEGACY",
    "PYNVVIDEOCODEC_MIN_DRIVER",
    "PYNVVIDEOCODEC_MIN_CC",
    "parse_arch",
    "arch_covers",
    "parse_nvidia_smi",
    "parse_sm",
    "driver_major",
    "choose_torch_build",
    "query_nvidia_smi",
]

Capability = tuple[int, int]


@dataclass(frozen=True)
class TorchBuild:
    """A torch wheel set: where pip finds it, what it pins, which GPUs it has kernels for."""

    name: str
    archs: tuple[str, ...]  # as torch.cuda.get_arch_list() reports them
    min_driver: str
    index_url: str | None = None  # None: PyPI's default
    requirements: tuple[str, ...] = ()  # pins installed from index_url

    def pip_args(self) -> list[str]:
        """Extra `pip install` arguments (empty for PyPI's default build)."""
        if self.index_url is None:
            return []
        return ["--index-url", self.index_url, *self.requirements]


TORCH_DEFAULT = TorchBuild(
    name="PyPI default (CUDA 13.x)",
    archs=("sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"),
    min_driver="580",
)
TORCH_LEGACY = TorchBuild(
    name="CUDA 12.6 legacy build",
    archs=("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    min_driver="525.60.13",
    index_url="https://download.pytorch.org/whl/cu126",
    requirements=("torch==2.14.*", "torchvision==0.29.*"),
)
PYNVVIDEOCODEC_MIN_DRIVER = 530  # NVENC API 12.1
PYNVVIDEOCODEC_MIN_CC: Capability = (7, 5)  # Turing: the oldest in NVIDIA's supported list

_ARCH = re.compile(r"^(sm|compute)_(\d+)(\d)([af]?)$")


def parse_arch(arch: str) -> tuple[str, Capability, str]:
    """'sm_61' -> ('sm', (6, 1), ''); 'compute_120' -> ('compute', (12, 0), ''); 'sm_90a' -> (..., 'a')."""
    m = _ARCH.match(arch.strip().lower())
    if not m:
        raise ValueError(f"not a CUDA architecture name: {arch!r} (expected e.g. sm_61 or compute_90)")
    return m.group(1), (int(m.group(2)), int(m.group(3))), m.group(4)


def parse_sm(text: str) -> Capability:
    """'sm_61', '6.1' or '61' -> (6, 1)."""
    t = text.strip().lower().removeprefix("sm_")
    if "." in t:
        major, minor = t.split(".", 1)
        if major.isdigit() and minor.isdigit():
            return int(major), int(minor)
    elif t.isdigit() and len(t) >= 2:
        return int(t[:-1]), int(t[-1])
    raise ValueError(f"not a compute capability: {text!r} (expected e.g. sm_61 or 6.1)")


def arch_covers(archs: list[str] | tuple[str, ...], capability: Capability) -> bool:
    """Does a build compiled for `archs` run on a GPU of `capability`? (Rule: module docstring.)"""
    cap = tuple(capability)
    for arch in archs:
        try:
            kind, (major, minor), suffix = parse_arch(arch)
        except ValueError:
            continue
        if kind == "compute":
            if (major, minor) <= cap:
                return True
        elif suffix == "a":
            if (major, minor) == cap:
                return True
        elif major == cap[0] and minor <= cap[1]:
            return True
    return False


def driver_major(version: str | None) -> int | None:
    """'580.95.05' -> 580; None or unparsable -> None."""
    if not version:
        return None
    m = re.match(r"\s*(\d+)", version)
    return int(m.group(1)) if m else None


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version))


def parse_nvidia_smi(text: str) -> list[tuple[Capability, str | None]]:
    """Lines of `nvidia-smi --query-gpu=compute_cap,driver_version --format=csv,noheader`
    ("6.1, 580.95.05") -> [((6, 1), '580.95.05'), ...]. Lines that are not that are skipped."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 2:
            continue
        try:
            cap = parse_sm(parts[0])
        except ValueError:
            continue
        driver = parts[1] if re.match(r"^\d+(\.\d+)*$", parts[1]) else None
        gpus.append((cap, driver))
    return gpus


@dataclass(frozen=True)
class TorchChoice:
    """The build to install and why, plus warnings (one line each, with the fix)."""

    build: TorchBuild
    reason: str
    warnings: tuple[str, ...] = ()

    def pip_args(self) -> list[str]:
        return self.build.pip_args()


def _sm(cap: Capability) -> str:
    return f"sm_{cap[0]}{cap[1]}"


def choose_torch_build(gpus: list[tuple[Capability, str | None]]) -> TorchChoice:
    """The torch build for these GPUs ((compute capability, driver version) each).

    PyPI's default when it has kernels for every GPU (or there is no GPU); else the CUDA
    12.6 legacy build when that covers them all (Pascal P40/P4/GTX 10xx, Maxwell, Volta);
    else whichever covers more, with a warning naming the GPUs left out.
    """
    if not gpus:
        return TorchChoice(TORCH_DEFAULT, "no NVIDIA GPU found: PyPI's default torch")
    caps = [cap for cap, _ in gpus]
    names = ", ".join(sorted({_sm(c) for c in caps}))
    covered = {build: [c for c in caps if arch_covers(build.archs, c)] for build in (TORCH_DEFAULT, TORCH_LEGACY)}
    warnings: list[str] = []
    if len(covered[TORCH_DEFAULT]) == len(caps):
        build, reason = TORCH_DEFAULT, f"GPUs {names}: PyPI's default torch has kernels for them"
    elif len(covered[TORCH_LEGACY]) == len(caps):
        build = TORCH_LEGACY
        reason = (f"GPUs {names}: PyPI's default torch has no kernels for "
                  f"{', '.join(sorted({_sm(c) for c in caps if c not in covered[TORCH_DEFAULT]}))}; "
                  f"installing torch 2.14 from {TORCH_LEGACY.index_url} (kernels sm_50-sm_90, the last "
                  "release with Pascal kernels)")
    else:
        build = max((TORCH_DEFAULT, TORCH_LEGACY), key=lambda b: len(covered[b]))
        left_out = sorted({_sm(c) for c in caps if c not in covered[build]})
        reason = f"GPUs {names}: no single torch build has kernels for all of them; using the {build.name}"
        warnings.append(f"no torch kernels for {', '.join(left_out)} in the {build.name}: hide those GPUs "
                        "(CUDA_VISIBLE_DEVICES) or give them an environment of their own")
    drivers = sorted({d for _, d in gpus if d})
    for driver in drivers:
        if _version_tuple(driver) < _version_tuple(build.min_driver):
            warnings.append(f"driver {driver} is older than the {build.min_driver} the {build.name} needs: "
                            "install the NVIDIA R580 driver (the last branch for Pascal/Maxwell/Volta) or newer")
    return TorchChoice(build, reason, tuple(warnings))


def query_nvidia_smi(timeout_seconds: float = 20.0) -> str | None:
    """nvidia-smi's compute_cap,driver_version CSV, or None (no nvidia-smi, or it failed)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        result = subprocess.run([exe, "--query-gpu=compute_cap,driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=timeout_seconds)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None
