"""Keep framepipe's threads at the scheduling policy the process started with.

SVT-AV1 (FFmpeg's `libsvtav1`, the AV1 encoder in PyAV's wheels) switches the thread that opens
an encoder to real-time scheduling (SCHED_FIFO, priority 99) when the process runs as root, as in
most containers; its own threads and every thread started after inherit it. Busy threads at
real-time priority starve every other thread of the process: torch's OpenMP threads spinning at
priority 99 stalled a test run on a 2-core machine for over 15 minutes, and a stop signal's run
never exited (seen 2026-12-05). After an encoder opens, `restore_scheduling()` puts every thread
of the process back (a user who starts framepipe under `chrt` keeps that policy: it is the one
recorded at import).
"""

from __future__ import annotations

import logging
import os

__all__ = ["restore_scheduling"]

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
