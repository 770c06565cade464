"""The CLI in a child process with one stage slowed down, stopped by a signal mid-run.

Used by tests/test_faults.py and tests/test_signals.py: a real process, real signals, the
exit status and stderr a user would see.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import main
from {module} import {cls}
original = {cls}.{method}
def slow(self, *args, **kwargs):
    time.sleep({seconds})
    return original(self, *args, **kwargs)
{cls}.{method} = slow
sys.exit(main.main(sys.argv[1:]))
"""

SLOW_WORKER = ("pipeline.worker", "Worker", "process", 0.05)
SLOW_ENCODER = ("hw.av_encode", "PyAVWriter", "write", 0.5)


def slow_cli(slow: tuple[str, str, str, float], *args: str) -> list[str]:
    """argv of a child process running the CLI with `module.cls.method` slowed by `seconds` per call."""
    module, cls, method, seconds = slow
    script = textwrap.dedent(_SCRIPT).format(root=str(ROOT), module=module, cls=cls, method=method, seconds=seconds)
    return [sys.executable, "-c", script, *map(str, args)]


def is_writing(out: Path) -> bool:
    """The run has opened its output: a hidden temporary file beside it (renamed at the end;
    `out` itself may exist from before)."""
    return any(out.parent.glob(f".{out.stem}.*.part{out.suffix}"))


def signal_mid_run(argv: list[str], out: Path, signum: int, *, settle_seconds: float) -> tuple[int, str, float]:
    """Start `argv`, wait until it writes `out`, let it run `settle_seconds`, send `signum`;
    returns (exit status, stderr, seconds from the signal to the exit)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.perf_counter() + 60
    while not is_writing(out) and proc.poll() is None and time.perf_counter() < deadline:
        time.sleep(0.05)  # imports and set-up done once the writer has opened the file
    time.sleep(settle_seconds)
    assert proc.poll() is None, proc.communicate()
    t0 = time.perf_counter()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return proc.returncode, err, time.perf_counter() - t0
