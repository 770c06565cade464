"""Stop signals while stage threads run: recorded by the handler, raised by the run's own loop.

A Python signal handler runs in the main thread between any two bytecodes. An exception raised
from it can land between a lock's acquire and the `try` that releases it: inside
`threading.Event.wait`, `queue.Queue.put`, rich's live display. The lock stays held, and the
thread that next needs it (the writer setting its "done" Event) waits forever: a stop signal
that hangs the run it should have stopped (seen once, with py-spy: the main thread and the
writer both in `Condition.__enter__`).

So from building the stages until the output is in place, the runner holds
`signals_deferred()`: main.py's handler hands its stop to `defer()` instead of raising it, and
the runner's loop, which polls `requested()` every progress tick (0.1 s) or between batches,
raises it where no lock is held. Three exceptions:

* `interruptible()`: code that only computes in the main thread (a sequential run's model
  batch, which may take seconds on a CPU) lets the handler raise at once, as before, so a stop
  never waits for a batch.
* A stop the loop has not picked up within `STUCK_SECONDS` is taken for a stuck loop: the next
  signal raises at once.
* `finishing()`: the threads are being joined and the output finalized: signals are only
  recorded; the runner reads a late one with `requested()` after the joins. After every frame
  was written such a stop completes the job (one line says so); `settling()` then lets a long
  segment join (`interruptible()`) stop at once on a new one.

Outside that span (planning, loading the model: nothing else runs) the handler raises at once,
and keeps the stop (`raised`) until the command acts on it (`acted`): library code may swallow
the exception (a bare `except:`, a weakref callback, where Python prints "Exception ignored"),
so the next run's span raises a stop still kept (`raise_kept`) before any stage starts.
State is module-wide on purpose: a signal stops the process, so every run the process holds sees
it; it is cleared when the last run leaves the span.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

__all__ = ["STUCK_SECONDS", "acted", "defer", "deferring", "finishing", "held", "interruptible", "raise_kept", "raised",
           "requested", "settling", "signals_deferred"]

STUCK_SECONDS = 1.0  # a stop unseen this long: the loop does not poll; the next signal raises


class _State:
    # Plain attributes, no lock: the handler runs in the main thread between bytecodes and must
    # not wait for a lock that thread may hold.
    active = 0  # runs inside signals_deferred()
    immediate = 0  # inside interruptible(): the handler raises
    signal: KeyboardInterrupt | None = None  # the stop a signal asked for
    since = 0.0  # when it was recorded (time.monotonic)
    seen = False  # a run acted on it
    closing = False  # a run is joining its threads and finalizing
    holding = 0  # inside held(): a signal is recorded, never raised
    kept: KeyboardInterrupt | None = None  # raised outside a run's span, not yet acted on


def raised(stop: KeyboardInterrupt) -> None:
    """For a signal handler that raises `stop` outside a run's span: kept until `acted()`."""
    _State.kept = stop


def acted() -> None:
    """The command caught the stop it was raised: nothing is kept."""
    _State.kept = None


def raise_kept() -> None:
    """Raise a stop raised earlier that nothing acted on (library code swallowed it)."""
    stop, _State.kept = _State.kept, None
    if stop is not None:
        raise stop


@contextmanager
def signals_deferred() -> Iterator[None]:
    """The span where stage threads exist: stop signals are recorded, the caller raises them.
    A stop raised before it and swallowed (`raised`) is raised here, before any stage starts."""
    raise_kept()
    _State.active += 1
    try:
        yield
    finally:
        _State.active -= 1
        if _State.active == 0:
            _State.signal, _State.seen, _State.closing, _State.immediate = None, False, False, 0


@contextmanager
def interruptible() -> Iterator[None]:
    """Main-thread work that holds no lock another thread needs (a model batch): a stop signal
    raises here at once."""
    _State.immediate += 1
    try:
        yield
    finally:
        _State.immediate -= 1


def deferring() -> bool:
    """A run's stage threads exist, or `held()` code runs: a signal handler should `defer()` its stop."""
    return _State.active > 0 or _State.holding > 0


@contextmanager
def held() -> Iterator[None]:
    """Code no Python exception may cross: torch's import, whose C++ (pybind11) calls run Python
    module code. A stop raised there aborted the process ("terminate called after throwing an
    instance of 'pybind11::error_already_set'", exit -6, a C++ trace; seen with SIGINT 0.6 s into
    `python main.py`). A stop signal is only recorded here, and raised when the block ends."""
    _State.holding += 1
    try:
        yield
    finally:
        _State.holding -= 1
        stop = _State.signal if _State.holding == 0 and _State.active == 0 else None
        if stop is not None:
            _State.signal, _State.seen = None, False
            raised(stop)  # kept until the command acts on it, as a stop raised outside a run
            raise stop


def defer(stop: KeyboardInterrupt) -> bool:
    """For a signal handler, while `deferring()`: True when the run will act on `stop` (or is
    stopping or finalizing already): the handler returns. False: the handler raises `stop` (in
    `interruptible()` code, or an earlier stop unseen for `STUCK_SECONDS`: a stuck loop)."""
    if _State.signal is None:
        if _State.immediate and not _State.closing and not _State.holding:
            return False
        _State.signal, _State.since = stop, time.monotonic()
        return True
    if _State.seen or _State.closing or _State.holding:
        return True
    return time.monotonic() - _State.since < STUCK_SECONDS


def requested() -> KeyboardInterrupt | None:
    """The stop a signal asked for, for a run loop to raise (or to note after the joins); marks
    it seen."""
    stop = _State.signal
    if stop is not None:
        _State.seen = True
    return stop


def settling(*, stopping: bool) -> None:
    """The threads are joined; the output is put in place. A run that is stopping keeps only
    recording signals; a complete one forgets the stop it noted, so that `interruptible()` code
    (a long segment join) stops at once on a new one and other steps record it."""
    if _State.active and not stopping:
        _State.signal, _State.seen, _State.closing = None, False, False


def finishing() -> None:
    """The run is joining its threads and finalizing its output: a signal is only recorded."""
    if _State.active:
        _State.closing = True
