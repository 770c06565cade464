"""The worker's overlapped chunks (issue 12, pipeline/worker.py): a take of several batches run
as model-sized chunks whose conversion in, model and conversion out overlap on CUDA streams.

On the CPU the same scheduling runs without streams (`overlap=True`): the take size, chunking,
OOM halving inside a take (in the model call and in the next chunk's conversion in), and the
order of results, against the plain path. On a GPU (needs_cuda): the overlapped path gives the
very bytes of the plain one (yuv420p 8- and 10-bit, batch sizes that do and do not divide the
take), a consumer holding its planes while later takes run never sees them change, and a whole
run with FRAMEPIPE_OVERLAP=0 writes the same file as one with the overlap on.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ModelOutputError
from core.frame import Frame
from hw.color import ColorInfo
from models import load_model
from pipeline.stage import take_size
from pipeline.stats import WorkerStats
from pipeline.worker import TAKE_BATCHES, Temporal, Worker
from tests.faults import WorkerFaults, inject

CPU = torch.device("cpu")


def yuv_frames(n: int, height: int = 24, width: int = 32, *, bit_depth: int = 8, first: int = 0, seed: int = 0
               ) -> list[Frame]:
    """Decoded frames as PyAV's reader hands them: yuv420p planes (uint16 codes above 8 bits)."""
    rng = np.random.default_rng(seed)
    top, dtype = (1 << bit_depth) - 1, np.uint8 if bit_depth == 8 else np.uint16
    frames = []
    for k in range(n):
        y = rng.integers(0, top + 1, (height, width)).astype(dtype)
        u = rng.integers(0, top + 1, ((height + 1) // 2, (width + 1) // 2)).astype(dtype)
        v = rng.integers(0, top + 1, ((height + 1) // 2, (width + 1) // 2)).astype(dtype)
        frames.append(Frame(index=first + k, pts=10 * (first + k), fmt="yuv", planes=(y, u, v), bit_depth=bit_depth))
    return frames


def make_worker(device=CPU, *, overlap, batch_size=2, output_format="yuv420p", module=None, faults=None,
                dtype=torch.float32, **kwargs) -> Worker:
    module = module if module is not None else load_model("bicubic", scale=2).build(device, dtype)
    name = "worker-cpu0" if device.type == "cpu" else f"worker-gpu{device.index or 0}"
    worker = Worker(name, device, lambda d, t: module, stats=WorkerStats(name, str(device)), warn=lambda m: None,
                    color=ColorInfo(matrix="bt709"), dtype=dtype, model_name="bicubic", scale=2,
                    output_format=output_format, batch_size=batch_size, overlap=overlap, **kwargs)
    if faults is not None:
        worker = inject(workers={name: faults})(name, worker)
    worker.start()
    return worker


def planes_of(results) -> list[list[np.ndarray]]:
    return [[np.array(p, copy=True) for p in r.planes] for r in results]


def assert_same_planes(got, want) -> None:
    assert len(got) == len(want)
    for k, (a, b) in enumerate(zip(got, want)):
        for name, p, q in zip("YUV", a, b):
            assert p.dtype == q.dtype and p.shape == q.shape, (k, name)
            assert np.array_equal(p, q), f"frame {k} {name}: {int(np.count_nonzero(p != q))} samples differ"


# -- which workers overlap, and how much they take -------------------------------------------------


def test_take_size_is_several_batches_where_the_chunks_overlap():
    on = make_worker(overlap=True, batch_size=4)
    assert on.overlap and on.take_size == 4 * TAKE_BATCHES == take_size(on) and on.ws.to_dict()["overlap"] is True
    off = make_worker(overlap=False, batch_size=4)
    assert not off.overlap and off.take_size == 4 == take_size(off)
    on.batch_size = 2  # halved after an out-of-memory: the take follows
    assert take_size(on) == 2 * TAKE_BATCHES


def test_overlap_is_a_gpu_thing_unless_asked():
    assert not make_worker(overlap=None).overlap  # the CPU keeps the plain path


@pytest.mark.parametrize("kwargs", [dict(output_format="nv12"), dict(output_format="p010"), dict(output_format="rgb24"),
                                    dict(restore_radius=1)], ids=["nv12", "p010", "rgb24", "restore"])
def test_paths_that_do_not_overlap_take_one_batch(kwargs):
    worker = Worker("worker-cpu0", CPU, lambda d, t: None, stats=WorkerStats("w", "cpu"), warn=lambda m: None,
                    color=ColorInfo(), dtype=torch.float32, model_name="m", scale=2, batch_size=4, overlap=True,
                    **kwargs)
    assert not worker.overlap and worker.take_size == 4


def test_interpolation_does_not_overlap():
    temporal = Temporal(model=load_model("bicubic", scale=1), factor=2, scene_threshold=0.0)
    worker = Worker("worker-cpu0", CPU, lambda d, t: None, stats=WorkerStats("w", "cpu"), warn=lambda m: None,
                    color=ColorInfo(), dtype=torch.float32, model_name="m", scale=2, batch_size=4, overlap=True,
                    temporal=temporal)
    assert not worker.overlap and worker.take_size == 4


def test_a_run_overlaps_where_the_model_compiles_unless_framepipe_overlap_says(monkeypatch, caplog):
    """By default a worker overlaps where its model compiles (measured faster there on an H100, and
    slower with an eager model); FRAMEPIPE_OVERLAP=1 turns it on wherever the path allows, =0 off."""
    from pipeline import build

    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "0")
    assert build._overlap_from_env() is False
    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "1")
    assert build._overlap_from_env() is None
    monkeypatch.delenv("FRAMEPIPE_OVERLAP")
    assert build._overlap_from_env() == "compiled"
    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "sometimes")
    with caplog.at_level("WARNING"):
        assert build._overlap_from_env() == "compiled"
    assert [r.getMessage() for r in caplog.records] == [
        "FRAMEPIPE_OVERLAP=sometimes: not 1 or 0; the default (overlap where the model compiles) applies"]

    def worker(device, compile):
        return Worker("w", device, lambda d, t: None, stats=WorkerStats("w", str(device)), warn=lambda m: None,
                      color=ColorInfo(), dtype=torch.float16, model_name="m", scale=2, batch_size=4,
                      overlap="compiled", compile=compile)

    from types import SimpleNamespace

    from models.compiled import CompileState

    gpu = torch.device("cuda", 0)  # not started: nothing here touches the device
    compiling = worker(gpu, (True, "compiled in the background"))
    assert compiling.overlap is True
    for status, overlapping in (("waiting", False), ("compiling", False), ("compiled", True), ("failed", False),
                                ("mismatch", False)):  # eager batches never overlap: only compiled ones
        compiling.model = SimpleNamespace(state=CompileState(status=status))
        assert compiling.overlapping is overlapping, status
        assert compiling.take_size == (4 * TAKE_BATCHES if overlapping else 4), status
    assert worker(gpu, (False, "eager (--compile off)")).overlap is False
    assert worker(CPU, (True, "compiled on the CPU (--compile on)")).overlap is False  # no streams on the CPU
    forced = Worker("w", gpu, lambda d, t: None, stats=WorkerStats("w", "cuda:0"), warn=lambda m: None,
                    color=ColorInfo(), dtype=torch.float16, model_name="m", scale=2, batch_size=4, overlap=None,
                    compile=(False, "eager (--compile off)"))
    forced.model = SimpleNamespace(state=CompileState(status="eager"))
    assert forced.overlapping and forced.take_size == 4 * TAKE_BATCHES  # FRAMEPIPE_OVERLAP=1: eager too
    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "off")
    assert build._overlap_from_env() is False
    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "sometimes")
    assert build._overlap_from_env() == "compiled"


# -- the scheduling, on the CPU ------------------------------------------------------------------


@pytest.mark.parametrize("batch_size", [2, 3, 8, 11], ids=["divides", "does-not-divide", "one-chunk", "above-take"])
@pytest.mark.parametrize("output_format,bit_depth", [("yuv420p", 8), ("yuv420p10", 10)])
def test_overlapped_scheduling_gives_the_plain_results_in_order(batch_size, output_format, bit_depth):
    frames = yuv_frames(8, bit_depth=bit_depth)
    plain = make_worker(overlap=False, batch_size=batch_size, output_format=output_format)
    chunked = make_worker(overlap=True, batch_size=batch_size, output_format=output_format)
    want, got = plain.process(frames), chunked.process(frames)
    assert [(r.index, r.pts, r.fmt) for r in got] == [(f.index, f.pts, output_format) for f in frames]
    assert_same_planes(planes_of(got), planes_of(want))
    sizes = [min(batch_size, 8 - i) for i in range(0, 8, batch_size)]
    assert chunked.ws.num_frames == 8 and sum(n * c for n, c in chunked.ws.batch_sizes.items()) == 8
    assert chunked.ws.num_batches == len(sizes) and sorted(chunked.ws.batch_sizes.elements()) == sorted(sizes)


def test_output_none_gives_empty_planes_in_order():
    got = make_worker(overlap=True, batch_size=3, output_format="none").process(yuv_frames(7))
    assert [(r.index, r.planes) for r in got] == [(k, ()) for k in range(7)]


def test_oom_inside_a_take_halves_the_batch_and_keeps_every_frame_in_order():
    """A take of 12 at batch 4: a model call of more than 2 frames runs out of memory, so the
    chunks go 4 (OOM) -> 2, 2, ...; every frame comes out once, in order, with the plain bytes."""
    frames = yuv_frames(12)
    want = make_worker(overlap=False, batch_size=4).process(frames)
    worker = make_worker(overlap=True, batch_size=4, faults=WorkerFaults(oom_when_batch_over=2))
    assert worker.take_size == 12
    got = worker.process(frames)
    assert [r.index for r in got] == list(range(12))
    assert_same_planes(planes_of(got), planes_of(want))
    assert worker.ws.num_oom == 1 and worker.batch_size == 2 and dict(worker.ws.batch_sizes) == {2: 6}
    assert worker.take_size == 2 * TAKE_BATCHES


def test_oom_in_the_middle_of_a_take_keeps_the_chunks_already_done():
    """The third model call (frames 4-5 at batch 2) runs out of memory once: the two chunks
    before it are not run again; the same frames and the rest go at batch 1."""
    frames = yuv_frames(8)
    worker = make_worker(overlap=True, batch_size=2, faults=WorkerFaults(oom_at_batch=3))
    calls = []
    launch = worker.launch
    worker.launch = lambda chunk, staged: calls.append([f.index for f in chunk]) or launch(chunk, staged)
    got = worker.process(frames)
    assert [r.index for r in got] == list(range(8))
    assert calls == [[0, 1], [2, 3], [4, 5], [4], [5], [6], [7]]
    assert worker.ws.num_oom == 1 and dict(worker.ws.batch_sizes) == {2: 2, 1: 4}
    assert_same_planes(planes_of(got), planes_of(make_worker(overlap=False, batch_size=2).process(frames)))


def test_oom_while_converting_the_next_chunk_in_retries_it_smaller():
    """Out of memory in the conversion in of the chunk after the first (queued while the model
    runs the first): that chunk is converted again at half the batch, nothing is lost."""
    frames = yuv_frames(9)
    worker = make_worker(overlap=True, batch_size=3)
    stage, calls = worker._stage, []

    def stage_once_out_of_memory(chunk):
        calls.append([f.index for f in chunk])
        if len(calls) == 2:
            raise torch.OutOfMemoryError("injected OOM in the conversion in")
        return stage(chunk)

    worker._stage = stage_once_out_of_memory
    got = worker.process(frames)
    assert [r.index for r in got] == list(range(9))
    assert calls == [[0, 1, 2], [3, 4, 5], [3], [4], [5], [6], [7], [8]]
    assert worker.ws.num_oom == 1 and dict(worker.ws.batch_sizes) == {3: 1, 1: 6}
    assert_same_planes(planes_of(got), planes_of(make_worker(overlap=False, batch_size=3).process(frames)))


def test_overlapped_path_still_checks_the_model_output():
    class NaNs(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2) * float("nan")

    worker = make_worker(overlap=True, batch_size=2, module=NaNs())
    with pytest.raises(ModelOutputError, match="model bicubic produced NaN or infinite values"):
        worker.process(yuv_frames(4))


def test_a_take_goes_whole_through_the_sequential_runner(clips, tmp_path, monkeypatch):
    """The sequential runner hands a worker `take_size` frames at once: a CPU worker made to
    overlap (wrapped, as tests inject faults) sees takes of 3 batches."""
    from pipeline import RunConfig, run
    from tests import probe

    seen = []

    def wrap(name, stage):
        if name.startswith("worker-"):
            stage.overlap = True
            process = stage.process
            stage.process = lambda batch: seen.append(len(batch)) or process(batch)
        return stage

    monkeypatch.setenv("FRAMEPIPE_OVERLAP", "1")  # on wherever the path allows (the default waits for a compiled model)
    src = clips("overlap.mp4", num_frames=20, width=64, height=48)
    out = tmp_path / "o.mp4"
    run(RunConfig(source=src, output=out, model="bicubic", scale=2, device="cpu", batch_size=2, max_batch_size=2),
        wrap=wrap)
    assert seen == [6, 6, 6, 2]
    assert probe.indices(out) == list(range(20))


# -- on a GPU --------------------------------------------------------------------------------------


def _conv_model(device, dtype) -> nn.Module:
    """A small x2 conv net (fixed weights): cuDNN convolutions, not only interpolation."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.PReLU(16), nn.Conv2d(16, 12, 3, padding=1),
                        nn.PixelShuffle(2), nn.Sigmoid())
    return net.to(device, dtype).eval()


def _gpu_worker(*, overlap, batch_size, output_format="yuv420p", model="bicubic", **kwargs) -> Worker:
    device = torch.device("cuda", 0)
    module = (load_model("bicubic", scale=2).build(device, torch.float16) if model == "bicubic"
              else _conv_model(device, torch.float16))
    return make_worker(device, overlap=overlap, batch_size=batch_size, output_format=output_format, module=module,
                       dtype=torch.float16, **kwargs)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("model", ["bicubic", "conv"])
@pytest.mark.parametrize("batch_size,take", [(2, 6), (4, 12), (3, 8), (5, 12)],
                         ids=["2-divides-6", "4-divides-12", "3-in-8", "5-in-12"])
@pytest.mark.parametrize("output_format,bit_depth", [("yuv420p", 8), ("yuv420p10", 10)])
def test_gpu_overlap_gives_the_same_bytes(monkeypatch, model, batch_size, take, output_format, bit_depth):
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)  # the scheduling is on trial, not cuDNN
    frames = yuv_frames(take * 2, height=90, width=130, bit_depth=bit_depth)  # odd chroma sizes (45x65)
    plain = _gpu_worker(overlap=False, batch_size=batch_size, output_format=output_format, model=model)
    over = _gpu_worker(overlap=None, batch_size=batch_size, output_format=output_format, model=model)
    assert over.overlap and over.take_size == batch_size * TAKE_BATCHES and not plain.overlap
    # The same takes to both (the same chunks: a convolution's bits may depend on the batch's size)
    want = [r for k in range(0, len(frames), take) for r in plain.process(frames[k : k + take])]
    got = [r for k in range(0, len(frames), take) for r in over.process(frames[k : k + take])]
    assert [r.index for r in got] == list(range(len(frames)))
    assert_same_planes(planes_of(got), planes_of(want))
    assert got[0].planes[0].dtype == (np.uint8 if bit_depth == 8 else np.uint16)


@pytest.mark.needs_cuda
def test_gpu_planes_held_by_a_slow_consumer_are_never_overwritten():
    """The writer may hold a take's planes while the worker runs the next takes: they are views of
    pinned memory, which must not be handed to a later copy while a view lives."""
    plain = _gpu_worker(overlap=False, batch_size=2, model="conv")
    over = _gpu_worker(overlap=None, batch_size=2, model="conv")
    takes = [yuv_frames(6, height=64, width=96, first=6 * k, seed=k) for k in range(6)]
    want = [planes_of(plain.process(t)) for t in takes]
    held = [over.process(t) for t in takes]  # every result kept, nothing copied, as a slow writer would
    for k in range(3):  # more takes, while the first ones are still held
        over.process(yuv_frames(6, height=64, width=96, first=100 + 6 * k, seed=50 + k))
    for results, expected in zip(held, want):
        assert_same_planes(planes_of(results), expected)


@pytest.mark.needs_cuda
def test_gpu_output_none_and_oom_inside_a_take():
    frames = yuv_frames(12, height=64, width=96)
    none = _gpu_worker(overlap=None, batch_size=3, output_format="none")
    assert [(r.index, r.planes) for r in none.process(frames)] == [(k, ()) for k in range(12)]
    plain = _gpu_worker(overlap=False, batch_size=2)  # the chunks the overlapped worker ends up with
    over = _gpu_worker(overlap=None, batch_size=4, faults=WorkerFaults(oom_when_batch_over=2))
    got = over.process(frames)
    assert [r.index for r in got] == list(range(12)) and over.ws.num_oom == 1 and over.batch_size == 2
    assert_same_planes(planes_of(got), planes_of(plain.process(frames)))


@pytest.mark.needs_cuda
def test_gpu_overlapped_path_finds_nan_output():
    class NaNs(nn.Module):
        def forward(self, x):
            return F.interpolate(x, scale_factor=2) * float("nan")

    worker = make_worker(torch.device("cuda", 0), overlap=None, batch_size=2, module=NaNs(), dtype=torch.float16)
    with pytest.raises(ModelOutputError, match="model bicubic produced NaN or infinite values"):
        worker.process(yuv_frames(6))


@pytest.mark.needs_cuda
def test_gpu_run_overlaps_by_default_only_where_the_model_compiles(clips, tmp_path, monkeypatch):
    from pipeline import RunConfig, run

    monkeypatch.delenv("FRAMEPIPE_OVERLAP", raising=False)
    src = clips("overlap-default.mp4", num_frames=24, width=130, height=98, photo=True)
    for compile in ("off", "on"):
        stats = run(RunConfig(source=src, output=None, output_mode="none", model="bicubic", scale=2, parallel=True,
                              device="cuda", batch_size=3, compile=compile))
        assert stats.to_dict()["workers"][0]["overlap"] is (compile == "on")


@pytest.mark.needs_cuda
def test_gpu_run_with_and_without_overlap_writes_the_same_frames(clips, tmp_path, monkeypatch):
    from pipeline import RunConfig, run
    from tests import probe

    src = clips("overlap-gpu.mp4", num_frames=40, width=130, height=98, photo=True)
    outputs = {}
    for setting in ("1", "0"):
        monkeypatch.setenv("FRAMEPIPE_OVERLAP", setting)
        out = tmp_path / f"overlap-{setting}.mp4"
        stats = run(RunConfig(source=src, output=out, model="bicubic", scale=2, parallel=True, device="cuda",
                              batch_size=3, crf=0, preset="ultrafast", compile="off"))
        assert stats.to_dict()["workers"][0]["overlap"] is (setting == "1")
        outputs[setting] = probe.planes_yuv420(out)
    assert len(outputs["1"]) == len(outputs["0"]) == 40
    for k, (a, b) in enumerate(zip(outputs["1"], outputs["0"])):
        for name, p, q in zip("YUV", a, b):
            assert np.array_equal(p, q), f"frame {k} {name}"
