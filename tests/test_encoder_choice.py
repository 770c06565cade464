"""The automatic number of encoders (issue 11): from one encoder's measured speed and the rate
the model delivered before, within the limits of cores, memory and segments; `--encoders N`
obeyed as given. Every measurement is injected: nothing here depends on this machine's speed."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace

import pytest
import torch

import main as cli
from hw.clips import make_clip
from hw.encode_speed import EncoderSpeed, measure_encoder_speed, remembered_encoder_speed, speed_key
from hw.memory import ProbeMemo
from pipeline import RunConfig, run
from pipeline.encoder_choice import (ENCODER_FACTORS_FILE, MODEL_RATES_FILE, choose_encoders, content_factor, encoder_busy_share, encoder_capacity_fps,
                                     encoder_threads, source_frames_per_second)

SPEED = EncoderSpeed(fps=36.0, cores_busy=4.0)  # on 16 cores the encoders together give up to 144 fps


def _choose(**kw):
    base = dict(speed=SPEED, model_fps=None, num_cores=16, memory_fits=8, num_segments=40, what="2560x1920 h264 medium")
    base.update(kw)
    return choose_encoders(**base)


@pytest.mark.parametrize("model_fps, expected", [(20, 1), (40, 2), (80, 3), (110, 4), (200, 6)])
def test_enough_encoders_for_the_model_rate_and_no_more(model_fps, expected):
    """The smallest count whose measured speed keeps up with the model's rate + 25%; a model
    faster than the cores can encode gets every encoder the limits allow (here 6)."""
    assert _choose(model_fps=model_fps).num_encoders == expected


@pytest.mark.parametrize("fps, expected", [(110.0, 1), (36.0, 3), (20.0, 5), (12.0, 6)])
def test_the_choice_follows_the_measured_encoder_speed(fps, expected):
    """The same model (80 fps: 100 with headroom), encoders of different speeds."""
    assert _choose(model_fps=80, speed=EncoderSpeed(fps=fps, cores_busy=2.0)).num_encoders == expected


def test_encoders_past_the_cores_are_not_counted_as_speed():
    """One encoder keeps 8 of 16 cores busy: two fill the machine, a third adds nothing."""
    busy = EncoderSpeed(fps=36.0, cores_busy=8.0)
    assert _choose(model_fps=50, speed=busy).num_encoders == 2  # 62.5 needed, 72 possible
    choice = _choose(model_fps=80, speed=busy)  # 100 needed, the cores give 72: encoding bounds the run
    assert choice.num_encoders == 6 and "encoding bounds this run" in choice.line


@pytest.mark.parametrize("limits, expected", [
    (dict(num_cores=4), 2),  # half the cores
    (dict(num_cores=2), 1),
    (dict(memory_fits=3), 3),  # what memory holds
    (dict(num_segments=2), 2),  # no more encoders than segments
])
def test_the_limits_hold_whatever_the_speed(limits, expected):
    assert _choose(model_fps=1000, **limits).num_encoders == expected
    assert _choose(model_fps=None, **limits).num_encoders == expected


def test_the_line_says_what_was_chosen_and_why():
    line = _choose(model_fps=40).line
    assert line.startswith("encoders: 2 (one encodes 36 fps at 2560x1920 h264 medium, keeping 4.0 of 16 cores busy; "
                           "the model delivered 40 fps here before, +25% is 50 fps; the limits would allow 6: ")
    assert "16 cores allow 8; memory allows 8" in line
    unknown = _choose(model_fps=None)
    assert unknown.num_encoders == 6 and "the model's rate here is not known yet" in unknown.line
    assert _choose(model_fps=40, frames_per_source_frame=2).num_encoders == 3  # --interpolate 2: 100 fps out


# -- in the plan -----------------------------------------------------------------------------


@pytest.fixture
def sixteen_cores(monkeypatch):
    from pipeline import plan as planning

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(planning, "_num_cores", lambda: 16)  # the cores the process may use (its affinity)
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 64 << 30)
    return planning


def test_plan_measures_the_encoder_at_the_output_size_and_settings(sixteen_cores, monkeypatch, clips):
    planning = sixteen_cores
    calls = []

    def speed(codec, **kw):
        calls.append((codec, kw))
        return EncoderSpeed(fps=36.0, cores_busy=4.0)

    monkeypatch.setattr(planning, "_encoder_speed", speed)
    monkeypatch.setattr(planning, "_model_rate", lambda key: 40.0 if key == "the key" else None)
    src = clips("choice.mp4", num_frames=120)
    source = planning.probe_source(src)
    cfg = RunConfig(source=src, segment_frames=10, codec="hevc", preset="fast", crf=22)
    _, choice = planning._plan_segments(cfg, source, 2560, 1920, use_nvenc=False, notes=[], bytes_per_sample=2,
                                        preset="fast", model_rate_key="the key")
    assert calls == [("hevc", dict(preset="fast", crf=22, width=2560, height=1920, bit_depth=10))]
    assert choice.num_encoders == 2 and choice.line.startswith("encoders: 2 (one encodes 36 fps at 2560x1920 hevc fast")


def test_a_measurement_that_fails_leaves_the_choice_to_the_limits(sixteen_cores, monkeypatch, clips):
    """An encoder that refuses the size (libx265 below its smallest) is reported by the build in
    one line; the plan only loses the speed."""
    planning = sixteen_cores

    def refuses(*a, **k):
        raise RuntimeError("encoder refused")

    monkeypatch.setattr(planning, "_encoder_speed", refuses)
    monkeypatch.setattr(planning, "_model_rate", lambda key: 40.0)
    src = clips("choice.mp4", num_frames=120)
    _, choice = planning._plan_segments(RunConfig(source=src, segment_frames=10), planning.probe_source(src), 2560,
                                        1920, use_nvenc=False, notes=[], model_rate_key="k")
    assert choice.num_encoders == 6 and choice.line.startswith("encoders: 6 (16 cores allow 8")


def test_explicit_encoders_are_obeyed_without_measuring(sixteen_cores, monkeypatch, clips):
    planning = sixteen_cores

    def no_measuring(*a, **k):
        raise AssertionError("--encoders N needs no measurement")

    monkeypatch.setattr(planning, "_encoder_speed", no_measuring)
    monkeypatch.setattr(planning, "_model_rate", no_measuring)
    src = clips("choice.mp4", num_frames=120)
    source = planning.probe_source(src)
    for n in (1, 3, 11):
        _, choice = planning._plan_segments(RunConfig(source=src, segment_frames=10, encoders=n), source, 2560, 1920,
                                            use_nvenc=False, notes=[])
        assert (choice.num_encoders, choice.line) == (n, f"encoders: {n} (--encoders)")
    monkeypatch.setattr(planning, "_num_cores", lambda: 2)  # nothing to choose: one encoder, nothing measured
    _, choice = planning._plan_segments(RunConfig(source=src, segment_frames=10), source, 2560, 1920,
                                        use_nvenc=False, notes=[])
    assert choice.num_encoders == 1


def test_the_plan_estimates_what_the_pool_encodes_for_the_workers(sixteen_cores, monkeypatch, clips):
    """`EncoderChoice.capacity_fps` (the plan's `encoders_fps`, which workers weigh compiling
    against): an upper estimate of the pool's rate, from the larger of one encoder's synthetic
    speed and that speed corrected by the content factor (learnt on other clips); with
    --encoders N only from a speed measured before (nothing measured now); none for NVENC."""
    planning = sixteen_cores

    def no_measuring(*a, **k):
        raise AssertionError("--encoders N needs no measurement")

    monkeypatch.setattr(planning, "_encoder_speed", lambda codec, **kw: EncoderSpeed(fps=36.0, cores_busy=4.0))
    monkeypatch.setattr(planning, "_model_rate", lambda key: 40.0)
    monkeypatch.setattr(planning, "_content_factor", lambda key: None)
    src = clips("choice.mp4", num_frames=120)
    source = planning.probe_source(src)

    def choice(use_nvenc=False, **kw):
        return planning._plan_segments(RunConfig(source=src, segment_frames=10, **kw), source, 2560, 1920,
                                       use_nvenc=use_nvenc, notes=[], model_rate_key="k")[1]

    assert (choice().num_encoders, choice().capacity_fps) == (2, 72.0)  # 2 x 36: the 40 fps model +25% fits
    monkeypatch.setattr(planning, "_content_factor", lambda key: 0.5)  # real frames encoded at half the speed
    assert (choice().num_encoders, choice().capacity_fps) == (3, 108.0)  # 3 chosen for 18 fps; 3 x 36 at most
    monkeypatch.setattr(planning, "_content_factor", lambda key: 2.0)  # real frames encoded twice as fast
    assert (choice().num_encoders, choice().capacity_fps) == (1, 72.0)
    monkeypatch.setattr(planning, "_encoder_speed", no_measuring)
    monkeypatch.setattr(planning, "_known_speed", lambda key: EncoderSpeed(fps=36.0, cores_busy=4.0))
    assert choice(encoders=5).capacity_fps == 288.0  # 5 x 72 fps, but 16 cores hold 4 such encoders
    monkeypatch.setattr(planning, "_content_factor", lambda key: None)
    assert choice(encoders=5).capacity_fps == 144.0  # 5 x 36 fps, 4 by the cores
    monkeypatch.setattr(planning, "_known_speed", lambda key: None)
    assert choice(encoders=5).capacity_fps is None
    monkeypatch.setattr(planning, "_nvenc_sessions", lambda *a: 2)
    assert choice(use_nvenc=True).capacity_fps is None


def test_the_model_rate_of_a_run_is_remembered_for_the_next_choice(sixteen_cores, monkeypatch, clips, tmp_path, capsys):
    """A run remembers what its decoder and model delivered; the next plan of the same job
    chooses from it, and the CLI says so in one line at the start."""
    planning = sixteen_cores
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=1e6, cores_busy=1.0))
    src = clips("choice-rate.mp4", num_frames=120)
    base = ["--source", str(src), "--model", "bicubic", "--scale", "2", "--parallel", "--quality", "0",
            "--preset", "ultrafast", "--segment-frames", "30"]
    assert cli.main([*base, "--output", str(tmp_path / "a.mp4")]) == 0
    err = capsys.readouterr().err
    assert "encoders: 4 (one encodes 1000000 fps at 128x96 h264 ultrafast" in err  # 4 segments: all of them
    assert "the model's rate here is not known yet" in err
    rates = json.loads((tmp_path / "cache" / MODEL_RATES_FILE).read_text())
    ((key, entry),) = rates.items()
    assert key.startswith("bicubic x2|64x48|") and entry["fps"] > 0 and entry["frames"] == 120
    assert cli.main([*base, "--output", str(tmp_path / "b.mp4")]) == 0
    err = capsys.readouterr().err
    assert f"encoders: 1 (one encodes 1000000 fps at 128x96 h264 ultrafast, keeping 1.0 of 16 cores busy; the model " \
           f"delivered {entry['fps']:.0f} fps here before" in err


def test_source_frames_per_second_is_the_slower_of_decoder_and_workers():
    def worker(frames, busy, probe=0.0):
        return SimpleNamespace(num_frames=frames, probe_seconds=probe, clock=SimpleNamespace(busy_seconds=busy))

    stats = SimpleNamespace(num_frames_written=1000, num_frames_decoded=1000,
                            stages={"reader": SimpleNamespace(busy_seconds=2.0)},
                            workers={"a": worker(500, 6.0, probe=1.0), "b": worker(500, 5.0)})
    assert source_frames_per_second(stats) == pytest.approx(200.0)  # workers: 100 + 100; the reader 500
    stats.stages["reader"].busy_seconds = 10.0
    assert source_frames_per_second(stats) == pytest.approx(100.0)  # the reader: 100
    stats.num_frames_written = 99
    assert source_frames_per_second(stats) is None  # too short to say


def test_a_workers_rate_is_that_of_the_mode_it_settled_in():
    """Compiled once ready: the batches after the switch say what the next run's model delivers;
    the eager batches before it, the model's start and the probe do not. A worker that never
    ran compiled (the run ended first) gives no rate at all: its eager rate would plan the
    next, compiled run's encoders for half its speed."""
    def worker(status, steady_frames, steady_seconds):
        return SimpleNamespace(num_frames=1000, probe_seconds=1.0, clock=SimpleNamespace(busy_seconds=21.0),
                               steady_frames=steady_frames, steady_seconds=steady_seconds,
                               compile=SimpleNamespace(status=status))

    def stats(*workers):
        return SimpleNamespace(num_frames_written=1000, num_frames_decoded=1000, stages={},
                               workers={f"w{k}": w for k, w in enumerate(workers)})

    assert source_frames_per_second(stats(worker("compiled", 800, 4.0))) == pytest.approx(200.0)  # not 1000/20
    assert source_frames_per_second(stats(worker("eager", 1000, 10.0), worker("compiled", 600, 2.0))) == \
        pytest.approx(400.0)  # 100 + 300
    for unsettled in ("waiting", "compiling", "cancelled"):
        assert source_frames_per_second(stats(worker(unsettled, 0, 0.0))) is None
    # compiled only at the end (8 frames after the switch): its rate is the eager batches', not the compiled
    # model's (an H100 run that compiled for 40 s of 44 would have planned the next run for 59 fps, not 130)
    assert source_frames_per_second(stats(worker("compiled", 8, 0.01))) is None
    assert source_frames_per_second(stats(worker("eager", 8, 0.01))) == pytest.approx(50.0)  # too few: the run's
    assert source_frames_per_second(stats(worker("failed", 0, 0.0))) == pytest.approx(50.0)  # eager for good


def test_the_worker_counts_as_steady_only_its_compiled_batches(tmp_path, monkeypatch):
    """Real runs, compiled by a stand-in after their first batch: the worker's steady frames are
    the compiled batches' frames (the first, eager batch left out), and that rate is remembered;
    with --compile off, every frame; a run whose compilation never ends remembers no rate."""
    import threading

    import torch

    from tests.test_compile import StandIn, _wait_for_the_compiler

    clip = make_clip(tmp_path / "v.mp4", width=48, height=32, num_frames=120, fps=24)
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch, "compile", StandIn())
    rates = tmp_path / "cache" / MODEL_RATES_FILE

    def cfg(source, compile):
        return RunConfig(source=source, output=tmp_path / f"{source.stem}-{compile}.mkv", model="bicubic", scale=2,
                         device="cpu", batch_size=4, parallel=True, encoders=2, segment_frames=30, preset="ultrafast",
                         compile=compile)

    stats = run(cfg(clip, "on"), wrap=_wait_for_the_compiler)
    assert stats.settled is not None  # the run knows when its model settled (compiled)
    worker, d = next(iter(stats.workers.values())), stats.to_dict()["workers"][0]
    assert d["compile"]["status"] == "compiled" and (d["compile"]["eager_batches"], d["compile"]["compiled_batches"]) == (1, 29)
    assert worker.steady_frames == 116 and worker.steady_seconds > 0 and d["steady_fps"] > 0
    ((key, entry),) = json.loads(rates.read_text()).items()
    assert "compiled yes" in key and entry["fps"] > 0
    off = next(iter(run(cfg(clip, "off")).workers.values()))
    assert off.steady_frames == 120

    release = threading.Event()

    def never_ready(module, *, mode, dynamic):
        release.wait(60)
        raise RuntimeError("cancelled")

    monkeypatch.setattr(torch, "compile", never_ready)
    before = json.loads(rates.read_text())
    other = make_clip(tmp_path / "w.mp4", width=64, height=32, num_frames=120, fps=24)  # another size: another key
    try:
        stats = run(cfg(other, "on"))
    finally:
        release.set()
    worker = next(iter(stats.workers.values()))
    assert worker.num_frames == 120 and worker.steady_frames == 0
    assert stats.settled is None and stats.to_dict()["settled_fps"] is None
    assert json.loads(rates.read_text()) == before  # nothing remembered for the run that never ran compiled


def test_a_run_marks_when_every_worker_settled_and_its_rate_from_then():
    """The rate after every live worker's model settled (a background compilation ready), to the end
    and to the last frame handed on: what the rest of a longer video goes at. None until then, and
    over less than a second."""
    from pipeline.stats import RunStats

    stats = RunStats()
    first, second = stats.add_worker("worker-gpu0", "cuda:0"), stats.add_worker("worker-gpu1", "cuda:1")
    half = stats.add_worker("split-b-gpu2", "cuda:2")  # no compile state: settled at its first batch
    from models.compiled import CompileState

    first.compile, second.compile = CompileState(status="compiled"), CompileState(status="compiling")
    stats.num_frames_written = 10
    first.settled_at = 1.0
    stats.note_settled()
    assert stats.settled is None and stats.settled_fps is None  # the second still compiling, the half not started
    second.health = "failed"  # out of the run: not waited for
    stats.note_settled()
    assert stats.settled is None  # the half has run no batch yet
    half.record_batch(4)
    stats.note_settled()
    assert stats.settled is not None and stats.settled[1] == 10
    stats.num_frames_written = 14
    stats.note_settled()
    assert stats.settled[1] == 10  # marked once
    stats.num_frames_written, stats.finished_at = 210, stats.settled[0] + 2.0
    d = stats.to_dict()
    assert stats.settled_fps == pytest.approx(100.0) and d["settled_fps"] == pytest.approx(100.0)
    assert d["settled_after_seconds"] == pytest.approx(stats.settled[0] - stats.started_at, abs=1e-3)  # no called_at
    stats.finished_at = stats.settled[0] + 0.5
    assert stats.settled_fps is None
    # To the last frame handed on: the encoders' tail and the join after it left out.
    stats.settled, stats.last_written, stats.finished_at = (100.0, 10), (102.0, 210), 104.0
    assert stats.settled_fps == pytest.approx(50.0) and stats.flow_fps == pytest.approx(100.0)
    assert stats.to_dict()["flow_fps"] == pytest.approx(100.0)
    stats.note_settled()
    assert stats.last_written == (102.0, 210)  # no frame since: kept
    stats.num_frames_written = 211
    stats.note_settled()
    assert stats.last_written[1] == 211 and stats.last_written[0] > 102.0


def test_the_rate_after_the_first_frame_is_timed_on_one_clock():
    """From the first frame out of the model to the end of the stages; the first frame's seconds
    count from the call of run(), before planning, which the stages' wall time leaves out."""
    from pipeline.stats import RunStats

    from benchmarks._steps import steady_fps

    stats = RunStats()
    stats.called_at = stats.started_at - 0.5  # half a second of planning
    worker = stats.add_worker("worker-gpu0", "cuda:0")
    worker.first_batch_at = stats.started_at + 0.5
    stats.finished_at = stats.started_at + 2.5
    stats.num_frames_written = 201
    d = stats.to_dict()
    assert d["first_frame_seconds"] == pytest.approx(1.0) and d["wall_seconds"] == pytest.approx(2.5)
    assert d["after_first_frame_fps"] == pytest.approx(100.0)  # 200 frames in the 2 s after the first
    assert steady_fps(d) == pytest.approx(100.0)
    # The encoders' busy share counts from there too: 2 encoders busy 1.2 s each of those 2 s.
    assert stats.after_first_frame_seconds == pytest.approx(2.0)
    stats.clock("encoder0").busy_seconds = stats.clock("encoder1").busy_seconds = 1.2
    assert encoder_busy_share(stats, 2) == pytest.approx(0.6)
    old = {k: v for k, v in d.items() if k != "after_first_frame_fps"}  # stats written before the field
    assert steady_fps(old) == pytest.approx(200 / 1.5)  # the two clocks mixed: overstated


# -- the measurement ---------------------------------------------------------------------------


def test_measure_encoder_speed_encodes_real_frames():
    speed = measure_encoder_speed("h264", preset="ultrafast", crf=23, width=64, height=48, seconds=0.05)
    assert speed.fps > 0 and speed.cores_busy > 0
    ten_bit = measure_encoder_speed("hevc", preset="ultrafast", crf=23, width=64, height=48, bit_depth=10,
                                    seconds=0.05, max_frames=40)
    assert ten_bit.fps > 0


def test_an_encoder_speed_is_measured_once_per_size_settings_and_machine(tmp_path, monkeypatch):
    memo = ProbeMemo(tmp_path / "encoder-speeds.json")
    calls = []

    def measure(codec, **kw):
        calls.append(kw["width"])
        return EncoderSpeed(fps=50.0, cores_busy=3.0)

    kw = dict(preset="medium", crf=23, height=480, measure=measure)
    assert remembered_encoder_speed(memo, "h264", width=640, **kw) == (EncoderSpeed(50.0, 3.0), True)
    assert remembered_encoder_speed(memo, "h264", width=640, **kw) == (EncoderSpeed(50.0, 3.0), False)
    assert calls == [640]
    remembered_encoder_speed(memo, "h264", width=1280, **kw)  # another size
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)), raising=False)  # another machine
    remembered_encoder_speed(memo, "h264", width=640, **kw)
    assert calls == [640, 1280, 640]
    key = speed_key("h264", preset="medium", crf=23, width=640, height=480, num_cores=96)
    assert key.startswith("libx264|preset medium|crf 23|640x480|8-bit|96 cores|libavcodec ")


def test_encoder_speed_checks_itself():
    with pytest.raises(ValueError, match="fps > 0 and cores_busy > 0"):
        EncoderSpeed(fps=0.0, cores_busy=1.0)


@pytest.mark.parametrize("encoders, cores, expected", [(1, 16, 0), (4, 16, 4), (6, 16, 3), (3, 16, 6), (20, 16, 1),
                                                       (2, 2, 1), (2, 3, 2)])
def test_the_pools_encoder_threads_together_match_the_cores(encoders, cores, expected):
    assert encoder_threads(encoders, cores) == expected


def test_each_encoder_of_the_pool_runs_its_share_of_the_cores(tmp_path, clips):
    """x264 left to itself runs ~1.5 threads per core in every instance of the pool, and the GPU
    worker's thread then waits behind them. x264 writes the settings it ran with into the stream
    (an SEI message per segment): each segment's encoder ran its share of the cores."""
    from pipeline.plan import _num_cores

    src = clips("threads.mp4", width=160, height=120, num_frames=120)  # 640x480 out: x264 caps threads on small frames
    out = tmp_path / "pool.mp4"
    assert cli.main(["--source", str(src), "--model", "bicubic", "--scale", "4", "--parallel", "--encoders", "2",
                     "--segment-frames", "30", "--preset", "ultrafast", "--output", str(out)]) == 0
    data = out.read_bytes()
    expected = encoder_threads(2, _num_cores())
    settings = [chunk.split(b" ") for chunk in data.split(b"x264 - core")[1:]]
    assert len(settings) == 4  # one per segment
    assert all(f"threads={expected}".encode() in words for words in settings), [
        [w for w in words if w.startswith(b"threads=")] for words in settings]
    one = tmp_path / "one.mp4"  # one file written directly: x264's own choice, as before
    assert cli.main(["--source", str(src), "--model", "bicubic", "--scale", "4", "--preset", "ultrafast",
                     "--output", str(one)]) == 0
    (words,) = [chunk.split(b" ") for chunk in one.read_bytes().split(b"x264 - core")[1:]]
    (threads,) = [int(w.removeprefix(b"threads=")) for w in words if w.startswith(b"threads=")]
    assert threads > expected or _num_cores() < 2


# -- what real frames teach: the synthetic measurement corrected ------------------------------------


def test_the_pools_capacity_comes_from_its_encoders_busy_time():
    """Frames per second of an encoder's busy time, times the encoders: the pool's rate where it
    bounded the run, what it could have done where it waited for frames."""
    def stats(*busy, encoded=1000):
        stages = {f"encoder{k}": SimpleNamespace(busy_seconds=b) for k, b in enumerate(busy)}
        return SimpleNamespace(num_frames_encoded=encoded, stages={**stages, "writer": SimpleNamespace(busy_seconds=9.0)})

    assert encoder_capacity_fps(stats(10.0, 10.0), 2) == pytest.approx(100.0)  # busy all along: the run's rate
    assert encoder_capacity_fps(stats(2.5, 2.5), 2) == pytest.approx(400.0)  # idle most of the run: 4x as fast
    assert encoder_capacity_fps(stats(5.0, 5.0, 0.0), 3) == pytest.approx(300.0)  # one never got a segment
    assert encoder_capacity_fps(stats(5.0, encoded=50), 1) is None  # too few frames to say
    assert encoder_capacity_fps(stats(0.2, 0.2), 2) is None  # too little work to say


def test_only_a_pool_that_bounded_the_run_teaches_the_factor(tmp_path):
    """Encoders busy less than 60% of the run kept up with frames to spare: their rate per busy
    second is no measure of the pool (on an H100 it came out at 0.39 of the prediction from one
    such run, and the factor, which such runs could only lower, planned 3 encoders for good).
    Nothing is learnt from them, whether their rate is above or below what is remembered; a pool
    busy 60% or more sets it, up or down."""
    from hw.memory import ProbeMemo
    from pipeline.encoder_choice import learn_content_factor, remembered_content_factor

    speeds, factors = ProbeMemo(tmp_path / "speeds.json"), ProbeMemo(tmp_path / "factors.json")
    speeds.put("k", {"fps": 100.0, "cores_busy": 1.0})

    def stats(busy_each, wall):  # 2 encoders, 1000 frames
        return SimpleNamespace(num_frames_encoded=1000, after_first_frame_seconds=wall,
                               stages={"encoder0": SimpleNamespace(busy_seconds=busy_each),
                                       "encoder1": SimpleNamespace(busy_seconds=busy_each)})

    def learn(s):
        return learn_content_factor(s, key="k", num_encoders=2, num_cores=16, speeds_memo=speeds, factors_memo=factors)

    assert learn(stats(2.0, 20.0)) is None  # busy 10%: 500 fps, above the synthetic 200
    assert learn(stats(10.0, 20.0)) is None  # busy 50%: 100 fps, below it: nothing either
    assert factors.get("k") is None
    assert learn(stats(16.0, 20.0)) == pytest.approx(0.3125)  # busy 80%: the pool's rate, set
    assert factors.get("k")["busy_share"] == pytest.approx(0.8)
    assert learn(stats(11.0, 20.0)) is None  # busy 55%, 90.9 fps: kept
    assert learn(stats(4.0, 20.0)) is None  # busy 20%, 250 fps: kept
    assert remembered_content_factor(factors, "k") == pytest.approx(0.3125, abs=1e-3)  # rounded to 3 places
    assert learn(stats(12.5, 20.0)) == pytest.approx(0.4)  # busy 62.5%: set, higher too
    assert remembered_content_factor(factors, "k") == pytest.approx(0.4)
    assert content_factor(70.0, EncoderSpeed(fps=200.0, cores_busy=2.0), 1, 16) == pytest.approx(0.35)
    assert content_factor(240.0, EncoderSpeed(fps=100.0, cores_busy=8.0), 4, 16) == pytest.approx(1.2)  # cores: 200
    assert content_factor(1.0, EncoderSpeed(fps=500.0, cores_busy=1.0), 1, 16) == 0.05  # within [1/20, 4]


def test_a_factor_an_earlier_framepipe_learnt_from_an_idle_pool_is_not_used(tmp_path):
    """Entries written before the rule above (no `busy_share`) may come from pools that kept up,
    ratcheted down run after run: the plan goes by the synthetic measurement until a run the
    encoders bound teaches a factor again."""
    from hw.memory import ProbeMemo
    from pipeline.encoder_choice import remembered_content_factor

    factors = ProbeMemo(tmp_path / "factors.json")
    factors.put("old", {"factor": 0.39, "observed_fps": 199.54, "encoders": 4, "date": "2026-12-07"})
    factors.put("new", {"factor": 0.74, "observed_fps": 124.0, "encoders": 1, "busy_share": 0.97, "date": "2026-12-07"})
    assert remembered_content_factor(factors, "old") is None
    assert remembered_content_factor(factors, "new") == pytest.approx(0.74)
    assert remembered_content_factor(factors, "none") is None


def test_the_plan_corrects_the_synthetic_speed_by_what_real_frames_gave(sixteen_cores, monkeypatch, clips):
    """Synthetic frames encode ~3x faster than an upscaled video (seen on an H200: 207 fps
    measured, 63-77 fps on the run's frames); the remembered factor plans for the real speed."""
    planning = sixteen_cores
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=200.0, cores_busy=2.0))
    monkeypatch.setattr(planning, "_model_rate", lambda key: 145.0)  # +25%: 181 fps to keep up with
    src = clips("choice-factor.mp4", num_frames=120)
    source = planning.probe_source(src)
    cfg = RunConfig(source=src, segment_frames=10, preset="veryfast")
    for factor, expected in ((None, 1), (0.35, 3), (1.0, 1), (0.1, 6)):
        monkeypatch.setattr(planning, "_content_factor", lambda key, f=factor: f)
        _, choice = planning._plan_segments(cfg, source, 1920, 1080, use_nvenc=False, notes=[], model_rate_key="job")
        assert choice.num_encoders == expected, (factor, choice.line)
        assert ("x the synthetic measurement" in choice.line) == (factor is not None)
        assert choice.speed_key.startswith("libx264|preset veryfast|crf ")


def test_a_run_into_the_pool_teaches_the_next_plan(sixteen_cores, monkeypatch, clips, tmp_path, capsys):
    """A run into the encoder pool remembers how much slower its frames encoded than the synthetic
    measurement (here each frame costs the encoders 12 ms, then 40 ms more: they bound the run);
    the next plan says so and counts with it."""
    import time

    from hw.av_encode import PyAVWriter

    planning = sixteen_cores
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=400.0, cores_busy=1.0))
    memo = ProbeMemo(tmp_path / "cache" / "encoder-speeds.json")  # as _encoder_speed would have remembered it
    src = clips("choice-learn.mp4", num_frames=120)
    base = ["--source", str(src), "--model", "bicubic", "--scale", "2", "--parallel", "--quality", "0",
            "--preset", "ultrafast", "--segment-frames", "30", "--encoders", "2"]
    key = speed_key("h264", preset="ultrafast", crf=0, width=128, height=96)
    memo.put(key, {"fps": 400.0, "cores_busy": 1.0})
    factors = tmp_path / "cache" / ENCODER_FACTORS_FILE
    write = PyAVWriter.write
    delay = {"seconds": 0.012}

    def slow_write(self, planes, pts):
        time.sleep(delay["seconds"])
        write(self, planes, pts)

    monkeypatch.setattr(PyAVWriter, "write", slow_write)
    assert cli.main([*base, "--max-frames", "60", "--output", str(tmp_path / "short.mp4")]) == 0
    assert not factors.exists()  # 60 frames: too few to tell the encoders' speed
    assert cli.main([*base, "--output", str(tmp_path / "fast.mp4")]) == 0
    fast = json.loads(factors.read_text())[key]
    assert fast["encoders"] == 2 and 50 < fast["observed_fps"] < 2 / 0.012  # 2 encoders at < 83 fps each
    delay["seconds"] = 0.04
    assert cli.main([*base, "--output", str(tmp_path / "slow.mp4")]) == 0
    learnt = json.loads(factors.read_text())[key]
    assert learnt["encoders"] == 2 and 20 < learnt["observed_fps"] < 50  # 2 encoders at < 25 fps each
    assert learnt["factor"] < fast["factor"]
    assert learnt["factor"] == pytest.approx(learnt["observed_fps"] / 800.0, rel=0.01)
    # A run beside a compile helper (torch.compile's workers on every core) teaches nothing: its
    # encoders went slower than the machine's, here 3x slower again. The helper is another job's
    # (the service), still compiling, or one this process started during the run.
    from models import compile_helper

    delay["seconds"] = 0.12
    started = compile_helper.num_started()
    another = compile_helper.CacheWarmer("m", 2)  # another job's helper, making its artefact still
    another.command = lambda *a: [sys.executable, "-c", f"import time; print({compile_helper.FILLED!r}, flush=True); "
                                  "time.sleep(2)"]
    another((2, 3, 8, 8), torch.float32, torch.device("cpu"), "default")
    assert compile_helper.pending() == [another]
    assert cli.main([*base, "--output", str(tmp_path / "beside.mp4"), "--stats-json", str(tmp_path / "b.json")]) == 0
    assert json.loads(factors.read_text())[key] == learnt
    assert json.loads((tmp_path / "b.json").read_text())["compile_helper_ran"] is True
    with monkeypatch.context() as patch:
        counts = iter([started, started + 1])  # at the run's start, at its end
        patch.setattr(compile_helper, "num_started", lambda: next(counts))
        assert cli.main([*base, "--output", str(tmp_path / "beside2.mp4")]) == 0
    assert json.loads(factors.read_text())[key] == learnt
    capsys.readouterr()
    monkeypatch.setattr(planning, "_model_rate", lambda key: 40.0)
    assert cli.main([*base[:-2], "--output", str(tmp_path / "next.mp4")]) == 0  # --encoders auto
    err = capsys.readouterr().err
    assert f"one encodes {400 * learnt['factor']:.0f} fps at 128x96 h264 ultrafast ({learnt['factor']:.2f} x the " \
           "synthetic measurement, as a run here encoded)" in err


def test_a_rate_is_remembered_under_how_the_workers_ran_not_how_the_plan_meant_them_to():
    """A model the worker kept eager (the encoders bound the run), or whose compilation failed,
    ran eagerly: its rate goes under "compiled no", never as the compiled model's."""
    from pipeline.encoder_choice import compiled_as_run, model_rate_key

    base = dict(model="m", scale=4, width=480, height=270, devices=["H100", "H100"], dtypes=["float16"] * 2)
    key = model_rate_key(**base, compiled=[True, True])

    def stats(*statuses):
        return SimpleNamespace(workers={f"w{i}": SimpleNamespace(device=f"cuda:{i}", compile=SimpleNamespace(status=s))
                                        for i, s in enumerate(statuses)})

    def as_run(*statuses):
        return model_rate_key(**base, compiled=compiled_as_run(["cuda:0", "cuda:1"], stats(*statuses)))

    assert as_run("compiled", "compiled") == key
    assert as_run("eager", "compiled") == key.replace("compiled yes,yes", "compiled no,yes")
    assert as_run("failed", "mismatch") == key.replace("compiled yes,yes", "compiled no,no")
    assert as_run("compiled") == key.replace("compiled yes,yes", "compiled yes,no")  # one left out
    assert as_run("eager", "eager").endswith("|tiles 0|interpolate 1")


def test_a_run_whose_model_stayed_eager_remembers_an_eager_rate(tmp_path, monkeypatch):
    import torch

    from tests.test_compile import StandIn, _wait_for_the_compiler

    clip = make_clip(tmp_path / "v.mp4", width=48, height=32, num_frames=120, fps=24)
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(torch, "compile", StandIn(fail=True))
    stats = run(RunConfig(source=clip, output=tmp_path / "o.mkv", model="bicubic", scale=2, device="cpu", batch_size=4,
                          parallel=True, encoders=2, segment_frames=30, preset="ultrafast", compile="on"),
                wrap=_wait_for_the_compiler)
    assert stats.to_dict()["workers"][0]["compile"]["status"] == "failed"
    ((key, entry),) = json.loads((tmp_path / "cache" / MODEL_RATES_FILE).read_text()).items()
    assert "|compiled no|" in key and entry["fps"] > 0


@pytest.mark.parametrize("affinity, quota", [(4, None), (64, 4.0)], ids=["taskset", "container-quota"])
def test_the_pool_is_planned_for_the_cores_the_process_may_use(monkeypatch, clips, affinity, quota):
    """Under taskset or a cpuset, or in a container limited to 4 CPUs (docker --cpus: the cgroup's
    quota, hw.scheduling), the machine's core count overstates what the encoders get: the choice
    (and the threads each encoder runs) follow the process's affinity within its quota."""
    from hw import scheduling
    from pipeline import plan as planning

    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
    monkeypatch.setattr(scheduling, "cpu_quota", lambda **kw: quota)
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=10.0, cores_busy=1.0))
    monkeypatch.setattr(planning, "_model_rate", lambda key: 1000.0)  # a fast model: as many encoders as allowed
    src = clips("choice.mp4", num_frames=120)
    _, choice = planning._plan_segments(RunConfig(source=src, segment_frames=10), planning.probe_source(src), 2560, 1920,
                                        use_nvenc=False, notes=[], model_rate_key="k")
    assert choice.num_encoders == 2 and "4 cores allow 2" in choice.line


def test_a_compile_helpers_timing_stands_in_until_a_run_measures_the_rate(tmp_path):
    """A run that ended before its compilation did measured no rate; its helpers' timings of the
    compiled model alone stand in, all the devices' together, until a run measures its own,
    which a helper's timing never replaces. Each timing goes in its device's place in the run's
    list (the key names the GPUs in that order): a later run on other GPUs of the same kind
    refreshes the same places."""
    from pipeline.encoder_choice import (model_rate_timed_alone, remember_helper_rate, remember_model_rate,
                                         remembered_model_rate)

    memo, two = ProbeMemo(tmp_path / MODEL_RATES_FILE), ["cuda:0", "cuda:1"]
    remember_helper_rate(memo, "k", devices=two, device="cuda:1", fps=60.0)
    assert remembered_model_rate(memo, "k") is None and not model_rate_timed_alone(memo, "k")  # cuda:0's not yet
    remember_helper_rate(memo, "k", devices=two, device="cuda:2", fps=99.0)  # not one of the run's: not kept
    remember_helper_rate(memo, "k", devices=two, device="cuda:0", fps=70.5)
    assert remembered_model_rate(memo, "k") == 130.5 and model_rate_timed_alone(memo, "k")
    assert memo.get("k")["helper_fps"] == {"0": 70.5, "1": 60.0}
    remember_helper_rate(memo, "k", devices=two, device="cuda:0", fps=80.0)  # a later helper: the newer timing
    assert remembered_model_rate(memo, "k") == 140.0
    remember_helper_rate(memo, "k", devices=["cuda:2", "cuda:3"], device="cuda:3", fps=65.0)  # cuda:2's helper: warm
    assert remembered_model_rate(memo, "k") == 145.0 and memo.get("k")["helper_fps"] == {"0": 80.0, "1": 65.0}
    remember_helper_rate(memo, "k", devices=["cuda:0"], device="cuda:0", fps=90.0)  # a key of one GPU: not these
    assert memo.get("k")["helper_fps"] == {"0": 90.0} and remembered_model_rate(memo, "k") == 90.0
    remember_helper_rate(memo, "k", devices=two, device="cuda:0", fps=80.0)
    remember_helper_rate(memo, "k", devices=two, device="cuda:1", fps=60.0)

    stats = SimpleNamespace(num_frames_written=400, num_frames_decoded=400,
                            stages={"reader": SimpleNamespace(busy_seconds=1.0)},
                            workers={"w": SimpleNamespace(num_frames=400, steady_frames=400, steady_seconds=4.0)})
    remember_model_rate(memo, "k", stats)  # the run's own: 100 fps
    assert remembered_model_rate(memo, "k") == 100.0 and not model_rate_timed_alone(memo, "k")
    remember_helper_rate(memo, "k", devices=two, device="cuda:0", fps=500.0)
    assert remembered_model_rate(memo, "k") == 100.0 and "helper_fps" not in memo.get("k")

    memo.put("odd", {"helper_fps": {"0": "fast"}, "devices": 1})  # another format: none
    memo.put("older", {"helper_fps": {"cuda:0": 50.0}, "devices": ["cuda:0"]})
    assert remembered_model_rate(memo, "odd") is None and remembered_model_rate(memo, "older") is None
    assert remembered_model_rate(memo, "none") is None


def test_the_plan_says_when_its_model_rate_is_the_helpers_timing(sixteen_cores, monkeypatch, clips, tmp_path, capsys):
    """The next run plans from the helper's timing and its line says whose figure it is."""
    planning = sixteen_cores
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=100.0, cores_busy=1.0))
    src = clips("choice-helper-rate.mp4", num_frames=120)
    base = ["--source", str(src), "--model", "bicubic", "--scale", "2", "--device", "cpu", "--parallel", "--quality", "0",
            "--preset", "ultrafast", "--segment-frames", "30"]
    assert cli.main([*base, "--output", str(tmp_path / "a.mp4")]) == 0
    capsys.readouterr()
    memo = ProbeMemo(tmp_path / "cache" / MODEL_RATES_FILE)
    ((key, _),) = json.loads(memo.path.read_text()).items()
    memo.put(key, {"helper_fps": {"0": 230.0}, "devices": 1})  # as a helper that timed 230 fps leaves it
    assert cli.main([*base, "--output", str(tmp_path / "b.mp4")]) == 0
    err = capsys.readouterr().err
    assert ("encoders: 3 (one encodes 100 fps at 128x96 h264 ultrafast, keeping 1.0 of 16 cores busy; the compiled "
            "model alone ran 230 fps here (its compile helper timed it), +25% is 288 fps") in err


def test_a_run_keeps_its_helpers_timing_of_whole_frames_only(tmp_path, monkeypatch):
    """`pipeline.build`'s `on_rate`: a helper compiled for the whole frame keeps its timing under
    the plan's key; one compiled for tiles does not, nor one that timed while a run of this
    process went on (the GPU shared), nor any where model rates are not kept (a sequential run)
    or the frames per second are not the model's (interpolation after it)."""
    from pipeline import runner
    from pipeline.build import _helper_rate
    from pipeline.encoder_choice import remembered_model_rate

    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path))
    memo = ProbeMemo(tmp_path / MODEL_RATES_FILE)

    def plan(parallel=True, interpolate=1, key="k"):
        return SimpleNamespace(model_rate_key=key, config=SimpleNamespace(parallel=parallel), interpolate=interpolate,
                               source=SimpleNamespace(height=270, width=480), devices=[torch.device("cuda:0")])

    on_rate = _helper_rate(plan())
    on_rate("cuda:0", (4, 3, 256, 256), 500.0)  # a tile's
    with runner._in_progress():  # a run going on
        on_rate("cuda:0", (4, 3, 270, 480), 60.0)
    assert memo.get("k") is None
    on_rate("cuda:0", (4, 3, 270, 480), 131.8)
    assert remembered_model_rate(memo, "k") == 131.8
    assert _helper_rate(plan(parallel=False)) is None and _helper_rate(plan(interpolate=2)) is None
    assert _helper_rate(plan(key="")) is None


@pytest.mark.needs_cuda
@pytest.mark.timeout(900)
def test_on_a_gpu_a_run_shorter_than_its_compilation_leaves_its_helpers_timing(tmp_path, monkeypatch):
    """The real helper on the GPU: a run over before its compilation measured no rate of its own;
    the helper, which goes on after it, times the compiled model alone and keeps that under the
    key the next run with the same plan reads (compiled yes)."""
    from models import compile_helper
    from pipeline.encoder_choice import model_rate_timed_alone, remembered_model_rate

    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "cache"))
    clip = make_clip(tmp_path / "v.mp4", width=96, height=64, num_frames=480, fps=24, photo=True)
    stats = run(RunConfig(source=clip, output=tmp_path / "o.mp4", model="bicubic", scale=2, device="cuda", batch_size=4,
                          parallel=True, compile="on", preset="ultrafast"))
    assert stats.num_frames_written == 480 and stats.to_dict()["workers"][0]["compile"]["status"] == "compiling"
    for helper in compile_helper.pending():
        assert helper.join(timeout=800) and helper.outcome == "compiled"
    memo = ProbeMemo(tmp_path / "cache" / MODEL_RATES_FILE)
    ((key, entry),) = json.loads(memo.path.read_text()).items()
    assert "bicubic x2|96x64|" in key and "|compiled yes|" in key and "fps" not in entry
    assert set(entry["helper_fps"]) == {"0"} and entry["helper_fps"]["0"] > 0 and entry["devices"] == 1
    assert model_rate_timed_alone(memo, key) and remembered_model_rate(memo, key) == entry["helper_fps"]["0"]
