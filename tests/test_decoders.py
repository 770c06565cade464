"""pipeline/decoders.py (issue 12, "decode never the wall"): several decoders on consecutive
parts of one video give exactly one decoder's frames — pixels (YUV, bit for bit), indices and
timestamps — for B-frames, open GOPs, HEVC CRA/RASL, VFR, odd GOPs, no B-frames, audio beside
the video, one frame, few keyframes, a keyframe-less tail, a stream starting mid-GOP, parameter
sets sent once mid-stream, a damaged middle part, a truncated file; with --start/--end,
--max-frames and --resume's skip; bounded memory (spans longer than the buffer too); threads
joined on close."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

import pipeline.decoders as decoders
from core.frame import Frame
from hw.av_decode import PyAVDecoder
from hw.keyframes import DecodeSpan, cut_spans, scan_packets
from pipeline import RunConfig, plan_run, run
from pipeline.decoders import DecodePlan, SplitSource, choose_decoders, plan_decoders
from pipeline.reader import Reader
from pipeline.stats import RunStats
from tests.test_keyframes import CLOSED_GOP, OPEN_GOP, forced_keyframes

HEVC_OPEN_GOP = {"x265-params": "keyint=10:min-keyint=10:bframes=3:scenecut=0:log-level=none"}

# name -> make_clip arguments
CLIPS = {
    "bframes.mp4": dict(num_frames=90, codec_options={"g": "12", "bf": "3"}),
    "open-gop.mkv": dict(num_frames=90, codec_options=OPEN_GOP),
    "hevc-cra.mp4": dict(num_frames=70, codec="libx265", codec_options=HEVC_OPEN_GOP),
    "vfr.mkv": dict(num_frames=80, vfr=True, codec_options=CLOSED_GOP),
    "odd-gop.mp4": dict(num_frames=77, codec_options={"x264-params": "keyint=13:min-keyint=3:bframes=2:scenecut=0"}),
    "audio.mkv": dict(num_frames=60, audio=True, codec_options=OPEN_GOP),
    "one-frame.mp4": dict(num_frames=1),
    "two-keyframes.mp4": dict(num_frames=50, codec_options={"x264-params": "keyint=40:min-keyint=40:scenecut=0"}),
    "no-bframes.mp4": dict(num_frames=40, codec_options={"g": "10", "bf": "0"}),  # timestamps ascend, and frames
}


def _bytes(frame: Frame) -> bytes:
    return b"".join(np.ascontiguousarray(p).tobytes() for p in frame.planes)


def _whole(path: Path) -> tuple[list[tuple[int, int, bytes]], PyAVDecoder]:
    decoder = PyAVDecoder(path)
    try:
        return [(f.index, f.pts, _bytes(f)) for f in decoder], decoder
    finally:
        decoder.close()


def _split(path: Path, *, num_decoders: int, span_frames: int, max_ahead: int = 10_000,
           open_span=None) -> tuple[list[tuple[int, int, bytes]], SplitSource, list[str]]:
    scan = scan_packets(path)
    spans = cut_spans(scan, span_frames=span_frames)
    warnings: list[str] = []

    def make(span: DecodeSpan):
        return PyAVDecoder(path, span=span, first_shape=scan.first_shape if span.index else None, threads=1)

    source = SplitSource(spans, open_span or make, num_decoders=num_decoders, max_frames_ahead=max_ahead,
                         warn=warnings.append)
    try:
        return [(f.index, f.pts, _bytes(f)) for f in source], source, warnings
    finally:
        source.close()


@pytest.fixture
def clip(clips, request):
    return clips(request.param, **CLIPS[request.param])


@pytest.mark.parametrize("clip", list(CLIPS), indirect=True)
@pytest.mark.parametrize("num_decoders", [1, 2, 3, 4, 5])
def test_split_decoding_equals_one_decoder(clip, num_decoders, no_stage_threads_left):
    expected, whole = _whole(clip)
    num_spans = []
    for span_frames in (1, 12):
        got, source, warnings = _split(clip, num_decoders=num_decoders, span_frames=span_frames)
        assert [g[:2] for g in got] == [e[:2] for e in expected]  # indices and timestamps
        assert got == expected  # and the pictures, bit for bit
        assert source.num_corrupt_packets == whole.num_corrupt_packets == 0
        assert source.stopped_early_reason is None and warnings == []
        num_spans.append(source.num_spans)
    if not clip.name.startswith("one-frame"):
        assert num_spans[0] >= (2 if clip.name.startswith("two-keyframes") else 5)  # the test really cut the video


def test_a_keyframe_less_tail(tmp_path, no_stage_threads_left):
    clip = forced_keyframes(tmp_path / "tail.mp4", num_frames=120, keys={0, 6, 13, 20})
    expected, _ = _whole(clip)
    got, source, _ = _split(clip, num_decoders=3, span_frames=1)
    assert source.num_spans == 4 and got == expected


def _remux(source: Path, dest: Path, *, drop: int) -> Path:
    """`source`'s video remuxed without its first `drop` packets."""
    with av.open(str(source)) as inp, av.open(str(dest), "w") as out:
        ost = out.add_stream_from_template(inp.streams.video[0])
        for k, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.size):
            if k >= drop:
                packet.stream = ost
                out.mux(packet)
    return dest


def test_a_stream_that_starts_without_a_keyframe(clips, tmp_path, no_stage_threads_left):
    """Its first open cut has no keyframe before it to pre-roll from: not a cut (it failed the plan)."""
    clip = _remux(clips("open-gop.mkv", **CLIPS["open-gop.mkv"]), tmp_path / "mid-gop.mkv", drop=3)
    expected, _ = _whole(clip)
    got, source, _ = _split(clip, num_decoders=3, span_frames=1)
    assert got == expected and source.num_spans == 8


def test_parameter_sets_sent_once_mid_stream(clips, tmp_path, no_stage_threads_left):
    """A stream that changes size mid-way, sending the new SPS/PPS once (at the change): a decoder
    starting at a later keyframe would decode with the first ones. Cut at the change, not after."""
    from hw.annexb import config_parameter_sets, split_annexb

    options = {"x264-params": "keyint=10:min-keyint=10:bframes=2:scenecut=0"}
    first = clips("small.mp4", num_frames=30, codec_options=options)
    second = clips("large.mp4", width=96, height=64, num_frames=30, codec_options=options)
    with av.open(str(second)) as c:
        sets = b"".join(len(nal).to_bytes(4, "big") + nal
                        for nal in split_annexb(config_parameter_sets(c.streams.video[0].codec_context.extradata,
                                                                      codec="h264")))
    clip = tmp_path / "resized.mkv"
    with av.open(str(first)) as a, av.open(str(second)) as b, av.open(str(clip), "w") as out:
        ost = out.add_stream_from_template(a.streams.video[0])
        offset = 0
        for inp in (a, b):
            for k, packet in enumerate(p for p in inp.demux(inp.streams.video[0]) if p.size):
                copy = av.Packet((sets if offset and k == 0 else b"") + bytes(packet))
                copy.pts, copy.dts = packet.pts + offset, packet.dts + offset
                copy.time_base, copy.is_keyframe, copy.stream = packet.time_base, packet.is_keyframe, ost
                out.mux(copy)
            offset = 2 * packet.pts  # past the first part's frames
    scan = scan_packets(clip)
    assert scan.missing_sets == (40, 50)  # the keyframes after the change's (30)
    expected, _ = _whole(clip)
    got, source, _ = _split(clip, num_decoders=3, span_frames=1)
    assert got == expected and source.num_spans == 4


def _with_broken_packets(source: Path, dest: Path, broken: set[int]) -> Path:
    """`source` remuxed with the video packets numbered `broken` (decode order) cut to 8 bytes:
    the decoder refuses exactly those (tests/test_cli_errors.py's helper)."""
    from tests.test_cli_errors import _with_broken_packets as remux

    return remux(source, dest, broken)[0]


@pytest.mark.parametrize("name", ["bframes.mp4", "open-gop.mkv"])
def test_a_damaged_middle_part(clips, tmp_path, name, no_stage_threads_left):
    good = clips(name, **CLIPS[name])
    keyframes = scan_packets(good).keyframes
    middle = keyframes[len(keyframes) // 2]
    bad = _with_broken_packets(good, tmp_path / f"bad{Path(name).suffix}", {middle + 2, middle + 5})
    expected, whole = _whole(bad)
    assert whole.num_corrupt_packets == 2 and len(expected) == CLIPS[name]["num_frames"] - 2
    got, source, warnings = _split(bad, num_decoders=3, span_frames=1)
    assert got == expected
    assert source.num_corrupt_packets == 2 and warnings == []


def test_a_truncated_file_says_so(clips, tmp_path, no_stage_threads_left):
    good = clips("bframes.mkv", **CLIPS["bframes.mp4"])
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(good.read_bytes()[: int(good.stat().st_size * 0.7)])
    expected, whole = _whole(cut)
    got, source, _ = _split(cut, num_decoders=3, span_frames=1)
    assert got == expected and source.num_spans > 2
    assert "truncated" in whole.stopped_early_reason and source.stopped_early_reason == whole.stopped_early_reason


def test_frames_are_renumbered_from_each_span(monkeypatch, clips, no_stage_threads_left):
    """A span whose decoder yields fewer frames than the scan counted (a corrupt packet) leaves
    no gap: indices are contiguous (a gap would stall the collector)."""
    clip = clips("bframes.mp4", **CLIPS["bframes.mp4"])
    scan = scan_packets(clip)

    class Lossy(PyAVDecoder):
        def __iter__(self):
            for k, frame in enumerate(super().__iter__()):
                if not (self.span.index == 1 and k == 0):
                    yield frame

    got, _, _ = _split(clip, num_decoders=2, span_frames=1,
                       open_span=lambda span: Lossy(clip, span=span, first_shape=scan.first_shape))
    assert [g[0] for g in got] == list(range(89))


class _Synthetic:
    """A span's decoder making numbered frames without a file; records the spans it was made for."""

    made: list[int] = []

    def __init__(self, span: DecodeSpan, *, fail_at: int | None = None, delay: float = 0.0) -> None:
        self.span, self.fail_at, self.delay, self.closed = span, fail_at, delay, False
        self.num_corrupt_packets = 1
        _Synthetic.made.append(span.index)

    def __iter__(self):
        for k in range(self.span.num_frames):
            if self.span.index == self.fail_at and k == 2:
                raise OSError("disk read error")
            time.sleep(self.delay)
            yield Frame(index=k, pts=self.span.start_pts + k, fmt="yuv",
                        planes=(np.zeros((2, 2), np.uint8),) * 3)

    def close(self) -> None:
        self.closed = True


def _synthetic_spans(num_spans: int, frames_each: int) -> tuple[DecodeSpan, ...]:
    n = num_spans * frames_each
    return tuple(DecodeSpan(index=k, first_packet=k * frames_each, end_packet=(k + 1) * frames_each,
                            owned_end=(k + 1) * frames_each, start_pts=k * frames_each,
                            stop_pts=(k + 1) * frames_each if k + 1 < num_spans else None, num_frames=frames_each,
                            num_packets_total=n, seek_pts=k * frames_each or None)
                 for k in range(num_spans))


def test_decoders_hold_at_most_the_buffer(no_stage_threads_left):
    """The invariant: a span starts only when spans current..it hold <= max_frames_ahead frames."""
    _Synthetic.made = []
    source = SplitSource(_synthetic_spans(10, 10), _Synthetic, num_decoders=4, max_frames_ahead=25, warn=print)
    frames = iter(source)
    next(frames)
    time.sleep(0.3)  # the decoders run as far as the buffer lets them
    assert sorted(_Synthetic.made) == [0, 1]  # spans 0 and 1 (20 frames); span 2 would make 30
    assert sum(len(p.frames) for p in source._parts) <= 25
    got = [f.index for f in frames]
    assert got == list(range(1, 100)) and sorted(_Synthetic.made) == list(range(10))
    assert source.num_corrupt_packets == 10  # one a span (the synthetic decoders' count), added up
    source.close()
    source.close()  # twice is fine


def test_a_span_longer_than_the_buffer_holds_at_most_the_buffer(no_stage_threads_left):
    """A span is as long as its GOPs: its decoder waits while the reader is max_frames_ahead behind."""
    source = SplitSource(_synthetic_spans(2, 300), _Synthetic, num_decoders=2, max_frames_ahead=25, warn=print)
    frames = iter(source)
    next(frames)
    time.sleep(0.2)
    assert sum(len(p.frames) for p in source._parts) == 25
    assert [f.index for f in frames] == list(range(1, 600))
    source.close()


def test_a_failing_span_fails_after_the_frames_before_it(no_stage_threads_left):
    source = SplitSource(_synthetic_spans(5, 10), lambda span: _Synthetic(span, fail_at=2), num_decoders=3,
                         max_frames_ahead=1000, warn=print)
    got = []
    with pytest.raises(OSError, match="disk read error"):
        for frame in source:
            got.append(frame.index)
    assert got == list(range(22))
    source.close()


def test_close_mid_video_joins_every_thread(clips, no_stage_threads_left):
    clip = clips("bframes.mp4", **CLIPS["bframes.mp4"])
    scan = scan_packets(clip)
    opened, closed = [], []

    class Tracked(PyAVDecoder):
        def close(self):
            closed.append(self.span.index)
            super().close()

    def make(span):
        opened.append(span.index)
        return Tracked(clip, span=span, first_shape=scan.first_shape)

    source = SplitSource(cut_spans(scan, span_frames=1), make, num_decoders=4, max_frames_ahead=40, warn=print)
    frames = iter(source)
    assert [next(frames).index for _ in range(5)] == list(range(5))
    source.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("reader-dec")]
    assert len(opened) > 1 and sorted(closed) == sorted(opened)  # every decoder made was closed
    with pytest.raises(RuntimeError, match="SplitSource can be read once"):
        iter(source).__next__()


def test_the_reader_counts_and_skips_over_a_split_source(clips, no_stage_threads_left):
    clip = clips("open-gop.mkv", **CLIPS["open-gop.mkv"])
    scan = scan_packets(clip)
    spans = cut_spans(scan, span_frames=1)
    source = SplitSource(spans, lambda span: PyAVDecoder(clip, span=span, first_shape=scan.first_shape),
                         num_decoders=3, max_frames_ahead=1000, warn=print)
    stats = RunStats()
    reader = Reader(source, stats=stats, max_frames=70, skip=lambda index: index < 10)
    got = [f.index for f in reader.finish()]
    reader.close(complete=True)
    assert got == list(range(10, 70)) and stats.num_frames_decoded == 70


# -- the choice -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, expected", [
    (dict(asked=3, use_nvdec=False, num_cores=2, num_frames=10, nvdec_engines=None), 3),
    # NVDEC: one session unless asked (several measured slower on the H100, 2026-12-05)
    (dict(asked=0, use_nvdec=True, num_cores=16, num_frames=600, nvdec_engines=7), 4),  # H100: at most 4
    (dict(asked=0, use_nvdec=True, num_cores=16, num_frames=600, nvdec_engines=3), 3),  # L40: one per engine
    (dict(asked=0, use_nvdec=True, num_cores=16, num_frames=600, nvdec_engines=1), 1),  # Tesla P40
    (dict(asked=0, use_nvdec=True, num_cores=16, num_frames=600, nvdec_engines=None), 1),  # not known here
    (dict(asked=7, use_nvdec=True, num_cores=16, num_frames=600, nvdec_engines=7), 7),
    (dict(asked=0, use_nvdec=True, num_cores=16, num_frames=20, nvdec_engines=7), 1),
    (dict(asked=0, use_nvdec=False, num_cores=8, num_frames=600, nvdec_engines=None), 1),
    (dict(asked=0, use_nvdec=False, num_cores=16, num_frames=600, nvdec_engines=None), 2),
    (dict(asked=0, use_nvdec=False, num_cores=128, num_frames=600, nvdec_engines=None), 4),
    (dict(asked=0, use_nvdec=False, num_cores=64, num_frames=0, nvdec_engines=None), 4),  # length unknown
])
def test_choose_decoders(kw, expected):
    assert choose_decoders(**kw)[0] == expected


def test_plan_decoders_spans_fit_the_buffer(clips):
    clip = clips("long-gops.mp4", num_frames=400, codec_options=CLOSED_GOP)
    scan = scan_packets(clip)
    plan, line = plan_decoders(scan, wanted=4, why="--decoders", use_nvdec=False, frame_bytes=3 << 20,
                               memory_bytes=64 << 30, num_cores=16)
    # 2 GiB of 3 MiB frames: 682 ahead; spans of max(48, min(682 // 5, 400 // 16)) = 48 -> 50 frames
    assert plan.max_frames_ahead == 682 and all(s.num_frames == 50 for s in plan.spans)
    assert plan.num_decoders == 4 and plan.threads_per_decoder == 4
    assert line == "decoders: 4 PyAV decoders at once on 8 consecutive parts of the video cut at keyframes (--decoders)"
    nvdec, line = plan_decoders(scan, wanted=7, why="auto", use_nvdec=True, frame_bytes=3 << 20,
                                memory_bytes=64 << 30, num_cores=16)
    assert nvdec.num_decoders == 7 and line.startswith("decoders: 7 NVDEC sessions") and nvdec.threads_per_decoder == 0
    small, line = plan_decoders(scan, wanted=7, why="--decoders", use_nvdec=False, frame_bytes=3 << 20,
                                memory_bytes=2 << 30, num_cores=16)
    assert small.max_frames_ahead == 170 and small.num_decoders == 7 and "only" not in line
    # Large frames (8K 10-bit: ~95 MiB) in a 1 GiB budget: not two parts' worth, so one decoder,
    # never more frames held than the budget (before, at least 96 frames: ~9 GiB)
    huge, line = plan_decoders(scan, wanted=4, why="auto", use_nvdec=True, frame_bytes=7680 * 4320 * 3,
                               memory_bytes=4 << 30, num_cores=16)
    assert huge is None and line == ("two parts of 48+ frames of 95 MiB do not fit the 1024 MiB kept for frames "
                                     "decoded ahead on the GPU")


def test_plan_decoders_says_why_one(clips, tmp_path):
    one, why = plan_decoders(lambda: pytest.fail("no scan for one decoder"), wanted=1, why="auto: 8 cores",
                             use_nvdec=False, frame_bytes=1, memory_bytes=1 << 30, num_cores=8)
    assert one is None and why == "auto: 8 cores"
    og = scan_packets(clips("og.mkv", num_frames=90, codec_options=OPEN_GOP))
    none, why = plan_decoders(og, wanted=4, why="--decoders", use_nvdec=True, frame_bytes=1, memory_bytes=1 << 30,
                              num_cores=8)
    assert none is None and why == "no clean keyframes (no leading pictures: NVDEC needs them) at least 48 frames apart to cut at"
    with pytest.raises(ValueError, match=r"DecodePlan needs 2 <= decoders \(1\) <= spans \(1\)"):
        DecodePlan(spans=cut_spans(og, span_frames=1000), num_decoders=1, max_frames_ahead=1, first_shape=None,
                   threads_per_decoder=0, line="")


# -- through a run ----------------------------------------------------------------------------------


class _Recording:
    """Wraps the reader: records what it hands to the workers (index, pts, pixels)."""

    def __init__(self, stage, log):
        self.stage, self.log = stage, log

    def process(self, item):
        return self.stage.process(item)

    def finish(self):
        for item in self.stage.finish():
            self.log.append((item.index, item.pts, _bytes(item)))
            yield item

    def close(self, *, complete):
        self.stage.close(complete=complete)

    def __getattr__(self, name):
        return getattr(self.stage, name)


def _run(source: Path, **kw) -> tuple[list, RunStats]:
    log: list = []
    wrap = lambda name, stage: _Recording(stage, log) if name == "reader" else stage  # noqa: E731
    stats = run(RunConfig(source=source, model="bicubic", scale=1, device="cpu", output_mode="none", parallel=True,
                          **kw), wrap=wrap)
    return log, stats


@pytest.mark.parametrize("cut", [{}, {"start": "1.0"}, {"start": "10f", "end": "70f"}, {"end": "1.5"},
                                 {"max_frames": 33}, {"start": "0.5", "max_frames": 40}])
def test_a_run_with_several_decoders_sees_the_same_frames(clips, monkeypatch, cut, no_stage_threads_left):
    monkeypatch.setattr(decoders, "MIN_SPAN_FRAMES", 4)
    clip = clips("audio.mkv", **CLIPS["audio.mkv"]) if cut.get("end") == "1.5" else clips("vfr.mkv", **CLIPS["vfr.mkv"])
    one, _ = _run(clip, decoders=1, **cut)
    several, stats = _run(clip, decoders=3, **cut)
    assert stats.notes["decoders"].startswith("decoders: 3 PyAV decoders at once on ")
    assert "decoders" not in _run(clip, decoders=1, **cut)[1].notes
    assert several == one and len(one) > 10
    assert [e[0] for e in several] == list(range(len(several)))


def test_decoders_option_checks_and_notes(clips, monkeypatch):
    from core.errors import InvalidOption

    with pytest.raises(InvalidOption, match=r"Invalid --decoders \(-1\): use 0 to choose .* e\.g\. --decoders 4\."):
        RunConfig(source=Path("x.mp4"), decoders=-1).validate()
    monkeypatch.setattr(decoders, "MIN_SPAN_FRAMES", 4)
    clip = clips("vfr.mkv", **CLIPS["vfr.mkv"])
    base = dict(source=clip, model="bicubic", scale=1, device="cpu", output_mode="none")
    assert plan_run(RunConfig(**base, decoders=3)).decoding.num_decoders == 3
    sequential = plan_run(RunConfig(**base, decoders=3, parallel=False))
    assert sequential.decoding is None
    assert "--decoders 3: the sequential loop decodes with one decoder (use --parallel)." in sequential.notes
    single = clips("single-key.mp4", num_frames=30)  # x264's default GOP: one keyframe
    plan = plan_run(RunConfig(**{**base, "source": single}, decoders=3))
    assert plan.decoding is None and "--decoders 3: one decoder, because the video cannot be cut exactly: it has a " \
                                      "single keyframe." in plan.notes
    monkeypatch.setattr(decoders, "MIN_SPAN_FRAMES", 48)
    auto = plan_run(RunConfig(**base))  # 80 frames, fewer than two spans: one decoder, nothing said
    assert auto.decoding is None and not [n for n in auto.notes if "decoder" in n]


def test_nvdec_parts_buffer_within_the_gpus_free_memory(clips, monkeypatch):
    """NVDEC parts keep their frames on the GPU, beside the model's batches: the frames held ahead
    are bounded by an eighth of the GPU's free memory as well as by the host's (a small GPU must
    not give its memory to frames decoded ahead); PyAV parts by the host's only."""
    import torch

    from pipeline import plan as planning

    src = clips("bframes-320.mp4", width=320, height=240, num_frames=200, codec_options={"g": "12", "bf": "3"})
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(planning, "_num_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    asked = []
    monkeypatch.setattr(planning, "_gpu_free_bytes", lambda device: asked.append(device) or 256 << 20)
    config = RunConfig(source=src, model="bicubic", output_mode="none", parallel=True)
    info = plan_run(config).source
    frame_bytes = 320 * 240 * 3 // 2
    on_gpu = planning._plan_decoding(config, info, (torch.device("cuda", 0),), [], use_nvdec=True, pictures=None)
    assert asked and on_gpu is not None and on_gpu.num_decoders == 4  # H100: 7 engines, at most 4 sessions
    assert on_gpu.max_frames_ahead == (256 << 20) // 2 // 4 // frame_bytes  # an eighth of the GPU's free memory
    on_cpu = planning._plan_decoding(config, info, (torch.device("cpu"),), [], use_nvdec=False, pictures=None)
    assert on_cpu is not None and on_cpu.max_frames_ahead == decoders.DECODE_BUFFER_BYTES // frame_bytes
    assert len(asked) == 1  # the GPU was not asked for the PyAV plan
