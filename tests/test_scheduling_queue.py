"""pipeline/queues.py: `WorkQueue` (and `FifoOutbox.end`) on its own, with real threads where blocking matters.

Threads are always joined with a timeout and checked dead; no sleep is longer than 0.2 s.
"""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from core.frame import Frame
from pipeline.queues import FifoOutbox, WorkQueue

JOIN_SECONDS = 5.0
POLL = 0.01


def _item(index: int) -> Frame:
    return Frame(index=index, pts=index * 1001, fmt="rgb24", planes=(np.zeros((2, 2, 3), np.uint8),))


def _indices(items) -> list[int]:
    return [it.index for it in items]


class _Runner(threading.Thread):
    """Run `fn` in a thread and keep its result or exception."""

    def __init__(self, fn):
        super().__init__(name="test-queue-helper", daemon=True)
        self.fn = fn
        self.result = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # pragma: no cover - surfaced by finish()
            self.error = exc

    def finish(self):
        self.join(JOIN_SECONDS)
        assert not self.is_alive(), "thread did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _wait_until(predicate, timeout: float = JOIN_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.005)


def _fill(q: WorkQueue, indices, stop=None) -> None:
    stop = stop or threading.Event()
    for i in indices:
        assert q.put(_item(i), stop=stop)


def test_maxsize_below_1_raises():
    with pytest.raises(ValueError, match="maxsize must be >= 1, got 0"):
        WorkQueue(0)


def test_fifo_order_and_batching():
    q = WorkQueue(10)
    stop = threading.Event()
    _fill(q, range(7))
    assert q.qsize() == 7
    assert _indices(q.take(3, stop=stop)) == [0, 1, 2]
    assert _indices(q.take(3, stop=stop)) == [3, 4, 5]
    assert _indices(q.take(3, stop=stop)) == [6]  # fewer than asked: no waiting for a full batch
    assert q.qsize() == 0 and q.num_in_flight == 7


def test_put_blocks_when_full_until_a_take():
    q = WorkQueue(2)
    stop = threading.Event()
    _fill(q, [0, 1])
    putter = _Runner(lambda: q.put(_item(2), stop=stop, poll_seconds=POLL))
    putter.start()
    time.sleep(0.1)
    assert putter.is_alive() and q.qsize() == 2  # blocked: backpressure
    assert _indices(q.take(1, stop=stop)) == [0]
    assert putter.finish() is True
    assert _indices(q.take(5, stop=stop)) == [1, 2]


def test_put_returns_false_once_stop_is_set():
    q = WorkQueue(1)
    stop = threading.Event()
    _fill(q, [0])
    putter = _Runner(lambda: q.put(_item(1), stop=stop, poll_seconds=POLL))
    putter.start()
    time.sleep(0.05)
    assert putter.is_alive()
    stop.set()
    assert putter.finish() is False
    assert q.qsize() == 1  # the item was not queued
    # with stop set, even a queue with room refuses
    q2 = WorkQueue(5)
    assert q2.put(_item(0), stop=stop) is False and q2.qsize() == 0


def test_given_back_items_go_out_first_lowest_index_first():
    q = WorkQueue(20)
    stop = threading.Event()
    _fill(q, range(10))
    first = q.take(4, stop=stop)  # 0..3
    second = q.take(3, stop=stop)  # 4..6
    assert q.num_in_flight == 7
    q.give_back(second)
    q.give_back(first[2:])  # 2, 3
    assert q.num_in_flight == 2
    assert q.qsize() == 3 + 5
    assert _indices(q.take(3, stop=stop)) == [2, 3, 4]
    assert _indices(q.take(4, stop=stop)) == [5, 6, 7, 8]  # returned first, then the queue
    assert _indices(q.take(4, stop=stop)) == [9]
    assert q.num_in_flight == 2 + 3 + 4 + 1


def test_reorder_window_holds_back_indices_until_released():
    q = WorkQueue(20, window=4)
    stop = threading.Event()
    _fill(q, range(8))
    assert _indices(q.take(10, stop=stop)) == [0, 1, 2, 3]  # released=0: only 0..3
    assert q.take_more(10) == []
    taker = _Runner(lambda: q.take(10, stop=stop, poll_seconds=POLL))
    taker.start()
    time.sleep(0.1)
    assert taker.is_alive()  # 4 is outside the window: it waits
    q.release_upto(2)
    assert _indices(taker.finish()) == [4, 5]
    q.release_upto(1)  # going backwards changes nothing
    assert q.take_more(10) == []
    q.release_upto(4)
    assert _indices(q.take_more(10)) == [6, 7]


def test_returned_items_ignore_the_window():
    q = WorkQueue(20, window=2)
    stop = threading.Event()
    _fill(q, range(4))
    batch = q.take(5, stop=stop)
    assert _indices(batch) == [0, 1]
    q.give_back(batch)
    assert _indices(q.take(5, stop=stop)) == [0, 1]


def test_take_returns_none_only_when_closed_empty_and_nothing_in_flight():
    q = WorkQueue(10)
    stop = threading.Event()
    _fill(q, range(3))
    q.close()
    assert q.reader_done
    held = q.take(5, stop=stop)
    assert _indices(held) == [0, 1, 2]  # closed but not empty: work first
    # closed and empty, but 3 frames are held by a worker: must wait
    waiter = _Runner(lambda: q.take(5, stop=stop, poll_seconds=POLL))
    waiter.start()
    time.sleep(0.1)
    assert waiter.is_alive()
    q.done(held)
    assert waiter.finish() is None
    assert q.take(5, stop=stop) is None


def test_a_blocked_worker_receives_a_batch_given_back_after_close():
    """Worker A holds a batch and fails; worker B is blocked in take: B gets A's frames, not None."""
    q = WorkQueue(10)
    stop = threading.Event()
    _fill(q, range(4))
    q.close()
    held = q.take(4, stop=stop)
    worker_b = _Runner(lambda: q.take(8, stop=stop, poll_seconds=POLL))
    worker_b.start()
    time.sleep(0.1)
    assert worker_b.is_alive()
    q.give_back(held[::-1])  # order of the give-back does not matter
    got = worker_b.finish()
    assert got is not None and _indices(got) == [0, 1, 2, 3]
    q.done(got)
    assert q.take(1, stop=stop) is None and q.num_in_flight == 0


def test_take_returns_none_when_stop_is_set():
    q = WorkQueue(4)
    stop = threading.Event()
    taker = _Runner(lambda: q.take(1, stop=stop, poll_seconds=POLL))
    taker.start()
    time.sleep(0.05)
    assert taker.is_alive()
    stop.set()
    assert taker.finish() is None
    _fill(q, [0])
    assert q.take(1, stop=stop) is None  # even with work queued


def test_abort_wakes_blocked_put_and_take():
    full = WorkQueue(1)
    empty = WorkQueue(1)
    stop = threading.Event()
    _fill(full, [0])
    # long poll: only the abort's notify can wake them within the join timeout budget used below
    putter = _Runner(lambda: full.put(_item(1), stop=stop, poll_seconds=30))
    taker = _Runner(lambda: empty.take(1, stop=stop, poll_seconds=30))
    putter.start()
    taker.start()
    time.sleep(0.1)
    assert putter.is_alive() and taker.is_alive()
    t0 = time.monotonic()
    full.abort()
    empty.abort()
    assert putter.finish() is False
    assert taker.finish() is None
    assert time.monotonic() - t0 < 5  # woken, not timed out after 30 s
    assert full.reader_done and empty.put(_item(0), stop=stop) is False


def test_close_wakes_a_blocked_take():
    q = WorkQueue(1)
    stop = threading.Event()
    taker = _Runner(lambda: q.take(1, stop=stop, poll_seconds=30))
    taker.start()
    time.sleep(0.05)
    q.close()
    assert taker.finish() is None


def test_done_and_give_back_accounting():
    q = WorkQueue(10)
    stop = threading.Event()
    _fill(q, range(6))
    a = q.take(2, stop=stop)
    b = q.take(2, stop=stop)
    c = q.take_more(5)
    assert _indices(c) == [4, 5]
    assert q.num_in_flight == 6 and q.qsize() == 0
    q.done(a)
    assert q.num_in_flight == 4
    q.give_back(b)
    assert q.num_in_flight == 2 and q.qsize() == 2
    q.done(c)
    assert q.num_in_flight == 0


def test_take_more_does_not_block():
    q = WorkQueue(3)
    t0 = time.monotonic()
    assert q.take_more(4) == []
    assert time.monotonic() - t0 < 1.0
    assert q.num_in_flight == 0


def test_wait_for_items_returns_when_something_is_put():
    q = WorkQueue(3)
    stop = threading.Event()
    waiter = _Runner(lambda: q.wait_for_items(30))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()
    _fill(q, [0], stop)
    waiter.finish()


def test_many_workers_take_every_index_exactly_once():
    q = WorkQueue(4, window=8)
    stop = threading.Event()
    num_frames = 200
    taken: list[int] = []
    lock = threading.Lock()
    calls = [0]

    def worker():
        while True:
            batch = q.take(3, stop=stop, poll_seconds=POLL)
            if batch is None:
                return
            with lock:
                calls[0] += 1
                fail = calls[0] % 7 == 0  # every 7th batch "fails" and is given back
            if fail:
                q.give_back(batch)
                continue
            with lock:
                taken.extend(_indices(batch))
                q.release_upto(_contiguous_prefix(taken))
            q.done(batch)

    def reader():
        for i in range(num_frames):
            assert q.put(_item(i), stop=stop, poll_seconds=POLL)
        q.close()

    threads = [_Runner(worker) for _ in range(3)] + [_Runner(reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.finish()
    assert sorted(taken) == list(range(num_frames))
    assert q.num_in_flight == 0 and q.qsize() == 0


def _contiguous_prefix(indices: list[int]) -> int:
    seen = set(indices)
    n = 0
    while n in seen:
        n += 1
    return n


def test_delivered_means_put_and_out_of_every_hand():
    """Issue 8: the collector tells a lost frame from a slow one by `delivered`."""
    q = WorkQueue(10)
    stop = threading.Event()
    assert not q.delivered(0)  # never put
    _fill(q, range(4))
    assert not q.delivered(0)  # queued
    batch = q.take(2, stop=stop)
    assert not q.delivered(0) and not q.delivered(1)  # in a worker's hands
    q.give_back(batch[1:])
    assert not q.delivered(1)  # returned, will go out again
    q.done(batch[:1])
    assert q.delivered(0) and not q.delivered(1) and not q.delivered(2) and not q.delivered(4)


def test_end_gives_up_a_second_after_a_stop_that_comes_while_it_waits():
    """Regression: a segment encoder failed while its queue was full; END was offered for the
    full patience (30 s) because the stop came after the offer began."""
    q: queue.Queue = queue.Queue(maxsize=1)
    q.put("a frame nobody will take")
    stop = threading.Event()
    outbox = FifoOutbox(q, end_patience_seconds=30.0)
    threading.Timer(0.3, stop.set).start()
    t0 = time.perf_counter()
    outbox.end(stop=stop)
    assert 1.0 <= time.perf_counter() - t0 < 2.5


def test_end_returns_at_once_when_the_consumer_is_gone():
    q: queue.Queue = queue.Queue(maxsize=1)
    q.put("x")
    gone = threading.Event()
    outbox = FifoOutbox(q, consumer_gone=gone)
    threading.Timer(0.2, gone.set).start()
    t0 = time.perf_counter()
    outbox.end(stop=threading.Event())
    assert time.perf_counter() - t0 < 1.0
