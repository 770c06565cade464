"""SVT-AV1 switches the thread that opens it to real-time scheduling when run as root
(hw/scheduling.py): framepipe puts every thread back, so nothing it starts afterwards runs at
real-time priority and starves the rest of the process."""

from __future__ import annotations

import os
import threading
from fractions import Fraction

import av
import numpy as np
import pytest

from hw.scheduling import restore_scheduling
from pipeline import RunConfig, run

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="only root may switch a thread to real-time scheduling")


def _policies() -> set[int]:
    return {os.sched_getscheduler(int(t)) for t in os.listdir("/proc/self/task")}


@AS_ROOT
def test_svt_av1_switches_its_opener_to_real_time_and_restore_undoes_it():
    """The hazard itself (so the test below means something here), and the repair."""
    start = os.sched_getscheduler(0)
    ctx = av.CodecContext.create("libsvtav1", "w")
    ctx.width, ctx.height, ctx.pix_fmt = 64, 64, "yuv420p"
    ctx.time_base, ctx.framerate = Fraction(1, 24), Fraction(24)
    ctx.open()
    ctx.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24").reformat(format="yuv420p"))
    assert os.sched_getscheduler(0) == os.SCHED_FIFO
    assert restore_scheduling() >= 1
    assert _policies() == {start}


@AS_ROOT
def test_restore_puts_any_thread_back():
    stop = threading.Event()
    t = threading.Thread(target=stop.wait)
    t.start()
    try:
        os.sched_setscheduler(t.native_id, os.SCHED_FIFO, os.sched_param(1))
        assert restore_scheduling() == 1 and os.sched_getscheduler(t.native_id) == os.sched_getscheduler(0)
    finally:
        stop.set()
        t.join()


def test_an_av1_run_leaves_no_thread_at_real_time(clips, tmp_path):
    """An AV1 output (SVT-AV1 opened three times: the settings check, the encoder-speed
    measurement where there is one, the writer): afterwards every thread is at the starting policy."""
    start = os.sched_getscheduler(0)
    stats = run(RunConfig(source=clips("plain.mp4", num_frames=4), output=tmp_path / "o.mp4", model="bicubic",
                          scale=1, codec="av1", device="cpu", overwrite=True))
    assert stats.num_frames_written == 4
    assert _policies() == {start}
