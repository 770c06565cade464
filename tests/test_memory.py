"""hw/memory.py: the batch-size probe's logic with fake measurements, OOM / fault detection."""

from __future__ import annotations

import pytest
import torch

from hw.memory import DeviceFault, choose_batch_size, free_cached_memory, is_device_fault, is_oom


class FakeDevice:
    """A `measure(b)` from a frames/s table; None where the batch does not fit.

    Records the sizes it was asked for, and advances a fake clock per measurement.
    """

    def __init__(self, fps_of, *, fits_below: int | None = None, seconds_per_measure: float = 1.0):
        self.fps_of = fps_of
        self.fits_below = fits_below
        self.seconds_per_measure = seconds_per_measure
        self.tried: list[int] = []
        self.now = 100.0

    def clock(self) -> float:
        return self.now

    def measure(self, b: int) -> float | None:
        self.tried.append(b)
        self.now += self.seconds_per_measure
        if self.fits_below is not None and b >= self.fits_below:
            return None
        return b / self.fps_of(b)  # seconds per batch


def _probe(dev: FakeDevice, **kwargs):
    kwargs.setdefault("max_batch_size", 256)
    kwargs.setdefault("time_budget_seconds", 1e9)
    return choose_batch_size(dev.measure, clock=dev.clock, **kwargs)


def test_plateau_picks_smallest_batch_within_5_percent_of_best():
    # linear up to 8, then flat-ish (+2.5%, +3.75%: under the 5% plateau)
    table = {1: 100.0, 2: 200.0, 4: 400.0, 8: 800.0, 16: 820.0, 32: 830.0, 64: 2000.0}
    dev = FakeDevice(table.__getitem__)
    result = _probe(dev)
    assert dev.tried == [1, 2, 4, 8, 16, 32]  # stopped after `patience`=2 flat doublings; 64 never tried
    assert result.batch_size == 8  # not 32, the fastest: within 5% and 4x less memory
    assert result.largest_fitting == 32
    assert result.fps_by_batch == pytest.approx({b: table[b] for b in dev.tried})
    assert result.note == "throughput flat past batch 8"
    assert result.seconds == pytest.approx(6.0)  # six fake measurements of 1 s


def test_a_gain_above_the_plateau_resets_patience():
    table = {1: 100.0, 2: 200.0, 4: 202.0, 8: 400.0, 16: 404.0, 32: 405.0}
    dev = FakeDevice(table.__getitem__)
    result = _probe(dev, max_batch_size=32)
    assert dev.tried == [1, 2, 4, 8, 16, 32]
    assert result.batch_size == 8


def test_patience_one_stops_at_first_flat_doubling():
    dev = FakeDevice(lambda b: 100.0 * min(b, 4))
    result = _probe(dev, patience=1)
    assert dev.tried == [1, 2, 4, 8]
    assert result.batch_size == 4


def test_oom_stops_the_probe_and_is_never_chosen():
    dev = FakeDevice(lambda b: 100.0 * b, fits_below=16)
    result = _probe(dev)
    assert dev.tried == [1, 2, 4, 8, 16]
    assert result.batch_size == 8 and result.largest_fitting == 8
    assert 16 not in result.fps_by_batch
    assert result.note == "batch 16 does not fit"


def test_batch_1_does_not_fit():
    dev = FakeDevice(lambda b: 100.0, fits_below=1)
    result = _probe(dev)
    assert dev.tried == [1]
    assert result.batch_size == 1
    assert result.largest_fitting == 0 and result.fps_by_batch == {}
    assert result.note == "batch 1 does not fit"


def test_max_batch_size_cap_is_tried_and_respected():
    dev = FakeDevice(lambda b: 100.0 * b)
    result = _probe(dev, max_batch_size=6)
    assert dev.tried == [1, 2, 4, 6]
    assert result.batch_size == 6 and result.largest_fitting == 6
    assert result.note == "reached --max-batch-size 6"


def test_max_batch_size_1_measures_once():
    dev = FakeDevice(lambda b: 50.0)
    result = _probe(dev, max_batch_size=1)
    assert dev.tried == [1] and result.batch_size == 1
    assert result.note == "reached --max-batch-size 1"


def test_time_budget_stops_probing():
    dev = FakeDevice(lambda b: 100.0 * b, seconds_per_measure=10.0)
    result = _probe(dev, time_budget_seconds=25.0)
    # the budget counts from the end of the first size: 2 at 10 s, 4 at 20 s (within 25), 8 at 30 s: stop
    assert dev.tried == [1, 2, 4, 8]
    assert result.batch_size == 8
    assert result.note == "probe time budget used"
    assert result.seconds == pytest.approx(40.0)


def test_a_slow_first_measurement_does_not_use_up_the_budget():
    """The first size pays one-time costs (cuDNN's search): it must not leave the probe at batch 1."""
    dev = FakeDevice(lambda b: 30.0 * min(b, 4), seconds_per_measure=0.5)
    first = dev.measure

    def measure(b: int):
        if not dev.tried:
            dev.now += 10.0  # the first call: 10 s of start-up
        return first(b)

    result = choose_batch_size(measure, clock=dev.clock, max_batch_size=64, time_budget_seconds=4.0)
    assert dev.tried[:3] == [1, 2, 4] and result.batch_size == 4


def test_zero_seconds_measurement_does_not_divide_by_zero():
    result = choose_batch_size(lambda b: 0.0, max_batch_size=2, clock=lambda: 0.0)
    assert result.fps_by_batch == pytest.approx({1: 1e9, 2: 2e9})  # seconds floored at 1 ns
    assert result.batch_size == 2


# -- is_oom / is_device_fault ---------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"),
        RuntimeError("cuda OUT OF MEMORY"),
        RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                     "tried to allocate 10000000000000 bytes. Error code 12 (Cannot allocate memory)"),
        MemoryError("Unable to allocate 7.28 TiB for an array with shape (2000000, 4000000) and data type uint8"),
    ],
)
def test_is_oom_true(exc):
    assert is_oom(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("CUDA out of memory"),  # not a RuntimeError
        RuntimeError("shape mismatch"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        DeviceFault("worker-gpu0: injected fault"),
        OSError(12, "Cannot allocate memory"),  # a file or a process, not a tensor: nothing to halve
    ],
)
def test_is_oom_false(exc):
    assert not is_oom(exc)


def test_the_cpu_allocators_own_refusal_is_out_of_memory():
    """Not a message copied by hand: what this torch raises when the host refuses an allocation."""
    with pytest.raises(RuntimeError) as caught:
        torch.empty(1 << 60, dtype=torch.uint8)
    assert is_oom(caught.value), caught.value


def _accelerator_error():
    cls = getattr(torch, "AcceleratorError", None)
    if cls is None:
        pytest.skip("this torch has no torch.AcceleratorError")
    try:
        return cls("CUDA-capable device(s) is/are busy or unavailable")
    except TypeError:
        pytest.skip("torch.AcceleratorError cannot be constructed from Python here")


@pytest.mark.parametrize(
    "exc",
    [
        DeviceFault("worker-gpu1: injected fault at frame 7"),
        RuntimeError("CUDA error: an illegal memory access was encountered"),
        RuntimeError("CUDA error: device-side assert triggered"),
        RuntimeError("Uncorrectable ECC error encountered"),
        RuntimeError("unspecified launch failure"),
    ],
)
def test_is_device_fault_true(exc):
    assert is_device_fault(exc)


def test_accelerator_error_is_a_device_fault():
    assert is_device_fault(_accelerator_error())


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError("shape mismatch"),
        RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)"),
        ValueError("CUDA error: an illegal memory access"),  # program error type, not RuntimeError
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),  # OOM is retried, not a fault
        KeyboardInterrupt(),
    ],
)
def test_is_device_fault_false(exc):
    assert not is_device_fault(exc)


def test_device_fault_is_a_runtime_error():
    assert issubclass(DeviceFault, RuntimeError)


def test_free_cached_memory_is_a_noop_on_cpu(monkeypatch):
    def touched(*args, **kwargs):
        raise AssertionError("CUDA was called for a CPU device")

    monkeypatch.setattr(torch.cuda, "synchronize", touched)
    monkeypatch.setattr(torch.cuda, "empty_cache", touched)
    free_cached_memory(torch.device("cpu"))  # must not touch CUDA on a CPU-only host
