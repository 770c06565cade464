"""Stop signals while stage threads run: recorded by the handler, raised by the run's own loop.

A Python signal handler runs in the main thread between any two bytecodes. An exception raised
from it can land between a lock's acquire and the `try` that releases it: inside
`threading.Event.wait`, `queue.Queue.put`, rich's live display. The lock stays held, and the
thread that next needs it (the writer setting its "done" Event) waits forever: a stop signal
that hangs the run it should have stopped (seen once, with py-spy: the main thread and the
writer both in `Condition.__enter__`).

So while a run's stage threads exist, the runner holds `signals_deferred()`: main.py's handler
hands its stop to `defer()` instead of raising it, and the runner's loop, which polls
`requested()` every progress tick (0.1 s), raises it from a point that holds no lock. Before and
after that span (planning, loading the model, joining segments: nothing else runs) the handler
raises at once, as before.

A second signal while the first is still waiting to be seen raises at once: the loop may be
stuck, and a user pressing Ctrl-C twice gets the old behaviour. State is module-wide on purpose:
a signal stops the process, so every run the process holds sees it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

__all__ = ["acknowledge", "defer", "deferring", "requested", "signals_deferred"]


class _State:
    # Plain attributes, no lock: the handler runs in the main thread between bytecodes and must
    # not wait for a lock that thread may hold.
    active = 0  # run loops inside signals_deferred()
    signal: KeyboardInterrupt | None = None  # the stop a signal asked for
    seen = False  # a run acted on it (or is finishing anyway)


@contextmanager
def signals_deferred() -> Iterator[None]:
    """The span where stage threads run: stop signals are recorded, the caller raises them."""
    _State.active += 1
    try:
        yield
    finally:
        _State.active -= 1
        if _State.active == 0:
            _State.signal, _State.seen = None, False


def deferring() -> bool:
    """A run's stage threads exist: a signal handler should `defer()` its stop."""
    return _State.active > 0


def defer(stop: KeyboardInterrupt) -> bool:
    """For a signal handler, while `deferring()`: True when a run's loop will raise `stop` or is
    stopping already (the handler returns); False when an earlier stop was never picked up (the
    loop is stuck: the handler raises)."""
    if _State.seen:
        return True  # the run is stopping or finishing already: nothing more to do
    if _State.signal is None:
        _State.signal = stop
        return True
    return False  # an earlier stop is still unseen: the loop may be stuck


def requested() -> KeyboardInterrupt | None:
    """The stop a signal asked for, for a run loop to raise; marks it seen."""
    stop = _State.signal
    if stop is not None:
        _State.seen = True
    return stop


def acknowledge() -> None:
    """The run is finishing (its threads are being joined): a signal from here is only recorded."""
    if _State.active:
        _State.seen = True
