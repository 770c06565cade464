"""The stage contract, and the one loop that runs any stage in a thread.

A stage is a small object with three methods (cf. Ray Data's operators, CPython's
`concurrent.futures` worker loop):

    process(item) -> iterable of outputs     one input in, any number out
    finish() -> iterable of outputs          end of stream: flush what is held
    close(*, complete: bool) -> None         always called, once, last

and, optionally, `start()` (called first, in the stage's own thread: a CUDA device and
stream belong to the thread that uses them) and `on_idle(inbox_is_empty)` (called when
nothing arrived for a poll period). A stage with no inbox is a source: all its output
comes from `finish()`. A stage knows nothing of queues, threads, stop events or clocks.
A stage that batches says how many items it takes at once with `take_size` (or `batch_size`).

`process` may raise two control exceptions instead of returning:
- `Retry(after_seconds)`: the item cannot be done now (a device fault); it goes back to
  the inbox (handed out again before anything newer) and the stage waits;
- `Retire(reason)`: the stage can do no more (its device failed for good); the item goes
  back to the inbox for the other stages and this one ends, without an error.

`StageRunner` owns everything else: get from the inbox and put to the outbox until the
stop event, end of stream (`END` downstream once, whatever happens), the busy/waiting
clocks, and posting the one error on the run's `ErrorChannel`. What a stage does when the
run is stopped is a policy (`on_stop`), written next to each stage's wiring:
- "exit": return at once (the reader, the workers);
- "drain": process what is already in the inbox without waiting, then return (the
  collector: finished frames continue to the writer, nothing produced is lost);
- "until_end": keep taking items until end of stream, processing them for
  `stop_budget_seconds` and dropping (counting) the rest (the writer: a stop is quick even
  behind a slow encoder, and the file is always finalized).

Queues between stages implement `Inbox` / `Outbox` (`pipeline.queues`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol

from pipeline.messages import END, ErrorChannel
from pipeline.stats import StageClock

__all__ = [
    "Stage",
    "Inbox",
    "Outbox",
    "Retry",
    "Retire",
    "StageRunner",
    "OnStop",
    "take_size",
]

log = logging.getLogger(__name__)

OnStop = Literal["exit", "drain", "until_end"]


class Retry(Exception):
    """Raised by `process`: give the item back, wait `after_seconds`, go on."""

    def __init__(self, reason: str, *, after_seconds: float) -> None:
        super().__init__(reason)
        self.after_seconds = after_seconds


class Retire(Exception):
    """Raised by `start` or `process`: give the item back and end this stage (no error)."""


class Stage(Protocol):
    def process(self, item: Any) -> Iterable[Any]: ...

    def finish(self) -> Iterable[Any]: ...

    def close(self, *, complete: bool) -> None: ...


class Inbox(Protocol):
    """Where a stage's items come from. `get` returns an item, `END`, or None (nothing
    within `timeout`); `want` is how many frames the stage would take at once (batching)."""

    def get(self, *, stop: threading.Event, timeout: float, want: int) -> Any: ...

    def get_nowait(self) -> Any: ...

    def task_done(self, item: Any) -> None: ...

    def give_back(self, item: Any) -> None: ...

    def empty(self) -> bool: ...


class Outbox(Protocol):
    """Where a stage's outputs go. `put` returns False when the item was not delivered
    because the run stopped; `end` passes end of stream on (once per producer)."""

    def put(self, item: Any, *, stop: threading.Event) -> bool: ...

    def end(self, *, stop: threading.Event) -> None: ...


class StageRunner:
    """Runs one stage: `run()` is the body of its thread (or is called in a plain loop)."""

    def __init__(
        self,
        name: str,
        stage: Any,
        *,
        inbox: Inbox | None,
        outbox: Outbox | None,
        errors: ErrorChannel,
        clock: StageClock,
        on_stop: OnStop = "exit",
        stop_budget_seconds: float = 1.0,
        poll_seconds: float = 0.1,
        on_retire: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self.name = name
        self.stage = stage
        self.inbox = inbox
        self.outbox = outbox
        self.errors = errors
        self.stop = errors.stop
        self.clock = clock
        self.on_stop = on_stop
        self.stop_budget_seconds = stop_budget_seconds
        self.poll_seconds = poll_seconds
        self.on_retire = on_retire
        self.reached_end = False  # end of stream came through (the stream was whole up to here)
        self.num_dropped_at_stop = 0
        self.closed_cleanly = False

    # -- the thread body -----------------------------------------------------------
    def run(self) -> None:
        try:
            start = getattr(self.stage, "start", None)
            if start is not None:
                with self.clock.busy():
                    start()
            if self.inbox is None:
                self.reached_end = self._emit(self.stage.finish())
            else:
                self._loop()
        except Retire as exc:
            self._retire(exc)
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the one error channel
            self.errors.post(self.name, exc)
        finally:
            try:
                with self.clock.busy():
                    self.stage.close(complete=self.reached_end and not self.stop.is_set())
                self.closed_cleanly = True
            except BaseException as exc:  # noqa: BLE001
                self.errors.post(self.name, exc)
            finally:
                if self.outbox is not None:
                    self.outbox.end(stop=self.stop)

    def _retire(self, exc: BaseException) -> None:
        log.debug("%s retired: %s", self.name, exc)
        if self.on_retire is not None:
            self.on_retire(self.name, exc)

    def _want(self) -> int:
        return take_size(self.stage)

    def _loop(self) -> None:
        stopped_at: float | None = None
        while True:
            if self.stop.is_set():
                if self.on_stop == "exit":
                    return
                if self.on_stop == "drain":
                    self._drain()
                    return
                stopped_at = stopped_at if stopped_at is not None else time.perf_counter()
            with self.clock.waiting():
                item = self.inbox.get(stop=self.stop, timeout=self.poll_seconds, want=self._want())
            if item is None:
                if not self.stop.is_set():
                    on_idle = getattr(self.stage, "on_idle", None)
                    if on_idle is not None:
                        on_idle(self.inbox.empty)
                continue
            if item is END:
                if not self.stop.is_set():
                    self.reached_end = self._emit(self.stage.finish())
                return
            if stopped_at is not None and time.perf_counter() - stopped_at > self.stop_budget_seconds:
                self.num_dropped_at_stop += _size(item)  # stopping: not processed, counted
                self.inbox.task_done(item)
                continue
            if not self._handle(item):
                return

    def _handle(self, item: Any) -> bool:
        """Process one item and deliver its outputs; False when this stage must end."""
        try:
            with self.clock.busy():
                outputs = list(self.stage.process(item))
        except Retry as exc:
            self.inbox.give_back(item)
            log.debug("%s: %s; retrying in %.1f s", self.name, exc, exc.after_seconds)
            self.stop.wait(exc.after_seconds)
            return True
        except Retire as exc:
            self.inbox.give_back(item)
            self._retire(exc)
            return False
        except BaseException:
            self.inbox.task_done(item)
            raise
        delivered = self._emit(outputs)
        self.inbox.task_done(item)
        return delivered

    def _drain(self) -> None:
        """Stopped: process what is already in the inbox, without waiting for more."""
        while True:
            item = self.inbox.get_nowait()
            if item is None or item is END:
                return
            if not self._handle(item):
                return

    def _emit(self, outputs: Iterable[Any]) -> bool:
        """Deliver outputs; False (stop delivering) once the run stopped and one was refused."""
        iterator = iter(outputs)
        while True:
            with self.clock.busy():
                try:
                    out = next(iterator)
                except StopIteration:
                    return True
            if self.outbox is None:
                continue
            with self.clock.waiting(blocked=True):
                if not self.outbox.put(out, stop=self.stop):
                    return False
            if self.stop.is_set() and self.on_stop == "exit" and self.inbox is None:
                return False  # a source stops producing at once


def take_size(stage: Any) -> int:
    """How many frames `stage` takes from its inbox at once: its `take_size` (a worker that
    overlaps several batches, pipeline/worker.py), else its `batch_size`, else 1."""
    size = getattr(stage, "take_size", None) or getattr(stage, "batch_size", 1)
    return max(1, int(size or 1))


def _size(item: Any) -> int:
    return len(item) if isinstance(item, (list, tuple)) else 1
