"""Keep framepipe's threads at the scheduling policy the process started with; the cores it may use.

SVT-AV1 (FFmpeg's `libsvtav1`, the AV1 encoder in PyAV's wheels) switches the thread that opens
an encoder to real-time scheduling (SCHED_FIFO, priority 99) when the process runs as root, as in
most containers; its own threads and every thread started after inherit it. Busy threads at
real-time priority starve every other thread of the process: torch's OpenMP threads spinning at
priority 99 stalled a test run on a 2-core machine for over 15 minutes, and a stop signal's run
never exited (seen 2026-12-05). After an encoder opens, `restore_scheduling()` puts every thread
of the process back (a user who starts framepipe under `chrt` keeps that policy: it is the one
recorded at import).

`usable_cores()` is how many cores the process may keep busy: its affinity (taskset, cpusets), and
under a CPU quota (`docker run --cpus 4`, Kubernetes CPU limits: the cgroup's `cpu.max`, or
`cpu.cfs_quota_us` in cgroup v1) no more than the quota, rounded up. `os.cpu_count()` is the
machine's count: in a container limited to 4 CPUs of a 64-core host, planning 8 x264 encoders of
several threads each for 64 cores had them throttled most of each period.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

__all__ = ["restore_scheduling", "usable_cores", "cpu_quota", "quota_note", "fit_torch_threads"]

log = logging.getLogger(__name__)

_TASKS = "/proc/self/task"
try:
    _POLICY, _PARAM = os.sched_getscheduler(0), os.sched_getparam(0)
except (AttributeError, OSError):  # not Linux: nothing to restore
    _POLICY = _PARAM = None


def restore_scheduling() -> int:
    """Every thread of the process whose policy differs from the process's starting one is put
    back to it; returns how many were."""
    if _POLICY is None or not os.path.isdir(_TASKS):
        return 0
    moved = 0
    for name in os.listdir(_TASKS):
        tid = int(name)
        try:
            if os.sched_getscheduler(tid) != _POLICY:
                os.sched_setscheduler(tid, _POLICY, _PARAM)
                moved += 1
        except OSError:  # the thread ended meanwhile
            continue
    if moved:
        log.debug("put %d thread(s) back to scheduling policy %d", moved, _POLICY)
    return moved


def usable_cores(*, cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int:
    """The cores this process may keep busy: its affinity, within its cgroup's CPU quota."""
    return _within_quota(_affinity_cores(), cpu_quota(cgroup_root=cgroup_root, proc_cgroup=proc_cgroup))


def quota_note() -> str | None:
    """One line for the summary where a CPU quota, not the cores, bounds what the process may use."""
    cores, quota = _affinity_cores(), cpu_quota()
    usable = _within_quota(cores, quota)
    if usable >= cores:
        return None
    return (f"a CPU quota of {quota:g} CPU{'' if quota == 1 else 's'} (the process's cgroup) on {cores} cores: "
            f"decoders, encoders and their threads are planned for {usable}.")


def _within_quota(cores: int, quota: float | None) -> int:
    """`cores` within a quota of `quota` CPUs, rounded up (None: no quota)."""
    return max(1, min(cores, math.ceil(quota))) if quota is not None else cores


def _affinity_cores() -> int:
    """The cores the process may run on (taskset, cpusets); the machine's count off Linux."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fit_torch_threads() -> int:
    """torch's CPU threads (a model on the CPU) kept within `usable_cores()`: torch counts the
    cores, not the quota, and threads over a quota are throttled in turn. Returns the count."""
    import torch

    usable = usable_cores()
    if torch.get_num_threads() > usable:
        log.info("torch CPU threads: %d -> %d (the cores this process may use)", torch.get_num_threads(), usable)
        torch.set_num_threads(usable)
    return torch.get_num_threads()


def cpu_quota(*, cgroup_root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> float | None:
    """The CPU quota of this process's cgroup and those above it, in CPUs (the smallest; None: no
    quota, or not Linux). cgroup v2: `cpu.max` ("400000 100000", or "max ..."); v1: the cpu
    controller's `cpu.cfs_quota_us` / `cpu.cfs_period_us` (-1: none)."""
    root = Path(cgroup_root)
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    found: list[float] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # v2: one hierarchy
            found += _quotas_up(root, path, lambda d: _v2_quota(d / "cpu.max"))
        elif "cpu" in controllers.split(","):  # v1: the cpu controller's own hierarchy
            mount = next((root / name for name in (controllers, "cpu", "cpu,cpuacct") if (root / name).is_dir()), None)
            if mount is not None:
                found += _quotas_up(mount, path, _v1_quota)
    return min(found) if found else None


def _quotas_up(mount: Path, path: str, read) -> list[float]:
    """The quotas from the cgroup `path` up to the hierarchy's root (a container often sees only
    its own cgroup, as "/")."""
    quotas, here = [], Path(path.strip() or "/")
    while True:
        quota = read(mount / str(here).lstrip("/"))
        if quota is not None:
            quotas.append(quota)
        if here == here.parent:
            return quotas
        here = here.parent


def _v2_quota(path: Path) -> float | None:
    try:
        limit, period = path.read_text().split()[:2]
        return None if limit == "max" else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def _v1_quota(folder: Path) -> float | None:
    try:
        quota = int((folder / "cpu.cfs_quota_us").read_text())
        period = int((folder / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
