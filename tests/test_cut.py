"""--start / --end (issue 11): part of a video, with timestamps and audio cut to match.

The clips number their frames in the picture (`probe.indices`), so which frames came out
is read from the output itself. Pixel comparisons use lossless x264 (crf 0)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

import main as cli
from core.cut import Cut, CutPoint, CutSource, TimeShift, parse_cut_point
from core.errors import InvalidOption
from core.frame import Frame
from pipeline import RunConfig, run
from tests import probe

LOSSLESS = dict(crf=0, preset="ultrafast")
MP4_EDIT_LIST_SECONDS = Fraction(1, 1000)  # an MP4 track's start is stored in the movie time scale (ms)


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, parallel=True, queue_size=8, **LOSSLESS)
    base.update(kw)
    return RunConfig(**base)


@pytest.mark.parametrize("text, expected", [
    ("12.5", CutPoint(seconds=Fraction(25, 2))),
    ("0", CutPoint(seconds=Fraction(0))),
    ("2:03", CutPoint(seconds=Fraction(123))),
    ("1:02:03.25", CutPoint(seconds=Fraction(3723) + Fraction(1, 4))),
    ("300f", CutPoint(frames=300)),
    (" 7F ", CutPoint(frames=7)),
])
def test_cut_points_parse(text, expected):
    assert parse_cut_point(text, "--start") == expected


@pytest.mark.parametrize("text", ["-1", "abc", "1:60", "1:2:3:4", "1.5:02", "f", "2.5f", "inf", "nan", "", "1e3"])
def test_bad_cut_points_are_refused_with_the_forms(text):
    with pytest.raises(InvalidOption, match=r"--start .*seconds \(12\.5\).*300f"):
        parse_cut_point(text, "--start")


@pytest.mark.parametrize("start, end", [("10", "10"), ("10", "5"), ("20f", "20f"), (None, "0"), (None, "0f")])
def test_an_empty_cut_is_refused_before_the_run(start, end):
    with pytest.raises(InvalidOption, match="nothing would be processed"):
        Cut.from_flags(start, end)


def test_frame_estimate():
    rate = 24.0
    assert Cut.from_flags("1.5", "3").frame_estimate(rate, 120) == 36
    assert Cut.from_flags("100f", None).frame_estimate(rate, 120) == 20
    assert Cut.from_flags(None, "1000f").frame_estimate(rate, 120) == 120
    assert Cut.from_flags("200f", None).frame_estimate(rate, 120) == 0


def _audio_in(path: Path, first: Fraction, end: Fraction) -> list[tuple[Fraction, bytes]]:
    """Source audio packets starting in [first, end), moved back by `first`."""
    return [(pts - first, data) for pts, _, _, data in probe.packet_times(path, "audio") if first <= pts < end]


def _same_audio(got: list, expected: list) -> None:
    assert [data for _, data in got] == [data for _, data in expected]  # the same packets, bit for bit
    for (t_got, _), (t_exp, _) in zip(got, expected):
        assert abs(t_got - t_exp) <= MP4_EDIT_LIST_SECONDS


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_time_cut_keeps_frames_timestamps_and_audio_of_the_range(clips, tmp_path, suffix):
    src = clips("cut.mp4", num_frames=120, audio=True)
    whole = tmp_path / f"whole{suffix}"
    run(_cfg(src, whole))
    out = tmp_path / f"cut{suffix}"
    stats = run(_cfg(src, out, start="1.5", end="3"))
    assert probe.indices(out) == list(range(36, 72))  # 1.5 s <= t < 3 s at 24 fps
    assert stats.num_frames_written == 36
    # Times from each file's first video frame (Matroska moves a file whose audio starts
    # before its video, the source's AAC priming, forward as a whole).
    zero, zero_whole = probe.video_start(out), probe.video_start(whole)
    assert [t - zero for t in probe.pts_exact(out)] == [t - zero_whole - Fraction(3, 2)
                                                       for t in probe.pts_exact(whole)[36:72]]
    assert all(np.array_equal(a, b) for a, b in zip(probe.frames_yuv(out), probe.frames_yuv(whole)[36:72]))
    got = [(pts - zero, data) for pts, _, _, data in probe.packet_times(out, "audio")]
    _same_audio(got, _audio_in(src, Fraction(3, 2), Fraction(3)))
    assert got[-1][0] + Fraction(1024, 48000) >= Fraction(3, 2)  # the audio lasts as long as the video


@pytest.mark.parametrize("suffix, segment_frames", [(".mp4", None), (".mkv", None), (".mp4", 7)])
def test_avi_cut_moves_the_audio_exactly_with_the_video(clips, tmp_path, suffix, segment_frames):
    """Regression, issue 11 ("AVI B-frame cut audio jitter (+-8 ms)"): AVI counts AAC time in whole
    packets (time base 1024/48000 s), and the audio was moved back by the cut's shift rounded to
    that tick: up to half a packet (10.7 ms) off the video. It is now moved in the output's time
    base: the same packets as the source's inside the cut, at the same times from the first
    frame as in the source (MP4: to the edit list's millisecond; Matroska: to its millisecond)."""
    src = clips("cut-bframes.avi", num_frames=120, audio=True)  # x264 veryfast: B-frames
    with av.open(str(src)) as c:
        raw = [f.pts for f in c.decode(video=0)]
        assert c.streams.audio[0].time_base == Fraction(1024, 48000)  # whole packets
    assert raw != sorted(raw)  # decode-order timestamps: B-frames in AVI
    with av.open(str(src)) as c:  # the frames take the decode times in order (AVI stores no other)
        times = sorted(p.dts * c.streams.video[0].time_base for p in c.demux(video=0) if p.size)
    out = tmp_path / f"cut{suffix}"
    run(_cfg(src, out, start="1.5", end="3", segment_frames=segment_frames))
    assert probe.indices(out) == list(range(36, 72))
    first, end = times[36], times[72]  # the first kept frame and the first past the end, on the source's clock
    assert first - times[0] == Fraction(3, 2)
    zero = probe.video_start(out)
    got = [(pts - zero, data) for pts, _, _, data in probe.packet_times(out, "audio")]
    _same_audio(got, _audio_in(src, first, end))


@pytest.mark.parametrize("source", ["cut.mkv"])
@pytest.mark.parametrize("part", [dict(start="1.5"), dict(max_frames=20)], ids=["start", "max-frames"])
def test_a_cut_into_mp4_lasts_its_frames_whatever_the_sources_time_base(clips, tmp_path, source, part):
    """A 1.48 s cut of a WebM (VP9, time base 1/1000) into MP4 was a 23.7 s video track (its last
    sample lasted 22.3 s), --max-frames 20 of it 12.2 s: the end of the last frame shown was read
    after that packet was muxed, which moves it into the MP4's time base (1/16000) in place, and the
    last packet decoded (a B-frame) was given the difference. Sources whose time base the MP4 keeps
    (an MP4's) were right."""
    src = clips(source, num_frames=60)
    out = tmp_path / "cut.mp4"
    run(_cfg(src, out, scale=1, crf=30, preset="medium", **part))  # medium: B-frames, the last decoded not the last shown
    kept = probe.indices(out)
    assert kept == (list(range(36, 60)) if "start" in part else list(range(20)))
    with av.open(str(out)) as c:
        video = c.streams.video[0]
        assert abs(video.duration * video.time_base - Fraction(len(kept), 24)) <= MP4_EDIT_LIST_SECONDS


def test_frame_number_cut_and_max_frames_after_it(clips, tmp_path):
    src = clips("cut.mp4", num_frames=120, audio=True)
    out = tmp_path / "frames.mp4"
    run(_cfg(src, out, start="10f", end="50f"))
    assert probe.indices(out) == list(range(10, 50))
    out2 = tmp_path / "max.mp4"
    run(_cfg(src, out2, start="100f", max_frames=5))
    assert probe.indices(out2) == list(range(100, 105))
    out3 = tmp_path / "end-past.mp4"
    run(_cfg(src, out3, start="110f", end="99:00"))  # an end past the clip: to the clip's end, audio whole
    assert probe.indices(out3) == list(range(110, 120))
    got = [(pts, data) for pts, _, _, data in probe.packet_times(out3, "audio")]
    first = Fraction(110, 24)
    _same_audio(got, _audio_in(src, first, Fraction(10**6)))


def test_time_cut_of_a_variable_frame_rate_clip_picks_frames_by_their_times(clips, tmp_path):
    src = clips("cut-vfr.mkv", num_frames=40, vfr=True)
    times = probe.pts_exact(src)
    start, end = Fraction(1), Fraction(2)
    wanted = [k for k, t in enumerate(times) if start <= t - times[0] < end]
    out = tmp_path / "vfr.mkv"
    run(_cfg(src, out, start="1", end="2"))
    assert probe.indices(out) == wanted
    shift = times[wanted[0]] - times[0]
    assert probe.pts_exact(out) == [times[k] - shift for k in wanted]


def test_segmented_cut_equals_one_encoder_and_resume_must_keep_the_cut(clips, tmp_path):
    src = clips("cut.mp4", num_frames=120, audio=True)
    one = tmp_path / "one.mp4"
    run(_cfg(src, one, start="0.5", end="4"))
    seg = tmp_path / "seg.mp4"
    run(_cfg(src, seg, start="0.5", end="4", segment_frames=7, encoders=3, keep_parts=True))
    assert probe.indices(seg) == list(range(12, 96))
    assert all(np.array_equal(a, b) for a, b in zip(probe.frames_yuv(seg), probe.frames_yuv(one)))
    assert probe.pts_exact(seg) == probe.pts_exact(one)
    assert [d for *_, d in probe.packet_times(seg, "audio")] == [d for *_, d in probe.packet_times(one, "audio")]
    seg.unlink()
    with pytest.raises(InvalidOption, match=r"Cannot resume: .*start \('0\.5s' then, '1s' now\)"):
        run(_cfg(src, seg, start="1", end="4", segment_frames=7, encoders=3, resume=True))


def test_kill_9_then_resume_of_a_cut(clips, tmp_path):
    """A real process killed mid-run, resumed: the same frames, timestamps and audio as one run."""
    from tests.test_segments import _kill_mid_run

    src = clips("cut-long.mp4", num_frames=160, audio=True)
    whole = tmp_path / "whole.mp4"
    run(_cfg(src, whole, start="20f", end="150f", segment_frames=10, encoders=2))
    out = tmp_path / "out.mp4"
    _kill_mid_run(src, out, ["--start", "20f", "--end", "150f", "--segment-frames", "10", "--encoders", "2"])
    run(_cfg(src, out, start="20f", end="150f", segment_frames=10, encoders=2, resume=True))
    assert probe.indices(out) == list(range(20, 150))
    assert all(np.array_equal(a, b) for a, b in zip(probe.frames_yuv(out), probe.frames_yuv(whole)))
    assert probe.pts_exact(out) == probe.pts_exact(whole)
    assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")


@pytest.mark.parametrize("args, words", [
    (["--start", "9:99"], "Invalid --start ('9:99')"),
    (["--end", "soon"], "Invalid --end ('soon')"),
    (["--start", "3", "--end", "2"], "--end (2s) is not after --start (3s)"),
    (["--start", "60"], "--start 60s is past the end of the video"),
    (["--start", "2", "--end", "10f"], "--end 10f comes before --start 2s"),
])
def test_cli_bad_cuts_give_one_line_and_no_file(clips, tmp_path, capsys, args, words):
    src = clips("cut.mp4", num_frames=120, audio=True)
    out = tmp_path / "o.mp4"
    rc = cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    errors = [ln for ln in err.splitlines() if ln.startswith("error")]
    assert len(errors) == 1 and words in errors[0], err  # the other lines are the plan's notes
    assert "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_subtitles_are_cut_with_the_video(clips, tmp_path):
    """A subtitle on screen at --start is kept from the first frame on; later ones move back."""
    import av

    src = clips("cut-subs.mkv", num_frames=48, subtitles=["one", "two", "three"], audio=True)
    out = tmp_path / "subs.mkv"
    stats = run(_cfg(src, out, start="0.5", segment_frames=5))
    with av.open(str(src)) as c:
        before = [(p.pts * p.time_base, p.duration * p.time_base, bytes(p)) for p in c.demux(c.streams.subtitles[0]) if p.size]
    zero = probe.video_start(out)
    with av.open(str(out)) as c:
        after = [(p.pts * p.time_base - zero, p.duration * p.time_base, bytes(p))
                 for p in c.demux(c.streams.subtitles[0]) if p.size]
    half = Fraction(1, 2)
    (s0, d0, t0), rest = before[0], before[1:]
    assert after[0] == (0, s0 + d0 - half, t0)  # "one" (0 - 1 s) is shown from the cut's first frame to its end
    assert after[1:] == [(s - half, d, t) for s, d, t in rest]
    assert stats.warnings == []
    out2 = tmp_path / "subs-end.mkv"
    run(_cfg(src, out2, start="0.5", end="1.25"))  # "two" (1 - 2 s) is cut at 1.25 s
    zero = probe.video_start(out2)
    with av.open(str(out2)) as c:
        cues = [(p.pts * p.time_base - zero, p.duration * p.time_base, bytes(p))
                for p in c.demux(c.streams.subtitles[0]) if p.size]
    assert cues == [(0, s0 + d0 - half, t0), (rest[0][0] - half, Fraction(1, 4), rest[0][2])]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
@pytest.mark.parametrize("start", [None, "1.5"])
def test_re_encoded_audio_keeps_its_timing(clips, tmp_path, suffix, start):
    """Audio that must be re-encoded (mu-law PCM) starting 0.5 s after the video: the AAC track
    starts where the source's audio does (cut or not), its priming (1024 samples) before it."""
    import av

    plain = clips("cut-mulaw.mov", num_frames=96, audio=True, audio_codec="pcm_mulaw")
    late = tmp_path / "late.mov"
    with av.open(str(plain)) as i, av.open(str(late), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        for p in i.demux():
            if p.dts is None:
                continue
            if p.stream.type == "audio":  # 0.5 s later
                p.pts += 24000
                p.dts += 24000
            p.stream = streams[p.stream.index]
            o.mux(p)
    out = tmp_path / f"out{suffix}"
    stats = run(_cfg(late, out, start=start))
    assert any("re-encoded to aac" in w for w in stats.warnings)
    first_packet = min(pts for pts, *_ in probe.packet_times(out, "audio"))
    audio_start = first_packet + Fraction(1024, 48000) - probe.video_start(out)
    expected = Fraction(1, 2) if start is None else Fraction(0)  # after a cut at 1.5 s it starts with the video
    packet = max(d for *_, d, _ in probe.packet_times(late, "audio"))  # a cut keeps whole source packets
    slack = Fraction(1, 1000) + (packet if start is not None else 0)  # and MP4 stores the start in ms
    assert -Fraction(1, 1000) <= audio_start - expected <= slack, float(audio_start)


@pytest.mark.parametrize("context", [(0, 0), (0, 1), (2, 2), (3, 1)])
def test_cut_source_lends_a_temporal_model_the_frames_around_the_cut(context):
    """Frames 3..5 of 10 kept, renumbered 0..2 and moved back; up to `before` frames before the
    start and `after` from the end on come marked neighbour, numbered on from the kept ones
    (negative before), moved back the same; none at all without a context."""
    src = [Frame(index=i, pts=100 + 10 * i, fmt="rgb24", planes=(np.zeros((2, 2, 3), np.uint8),)) for i in range(10)]
    before, after = context
    got = list(CutSource(src, Cut.from_flags("3f", "6f"), TimeShift(), time_base=Fraction(1, 100), context=context))
    want = [(i, 100 + 10 * i, i < 0 or i > 2) for i in range(-min(before, 3), 3 + after)]
    assert [(f.index, f.pts, f.neighbour) for f in got] == want


def _starting_before_zero(src: Path, dst: Path, offset: str = "95441.5") -> Path:
    """`src` remuxed to MPEG-TS with its clock just short of the 33-bit wrap: FFmpeg unwraps it,
    and the video starts at -2.2 s (the audio ~10 ms before it), as recorders' files do. Another
    `offset` (seconds) gives a TS whose clock starts there (a broadcast's, an hour in)."""
    with av.open(str(src)) as i, av.open(str(dst), "w", format="mpegts",
                                         container_options={"output_ts_offset": offset}) as o:
        chosen = [s for s in i.streams if s.type in ("video", "audio")]
        streams = {s.index: o.add_stream_from_template(s) for s in chosen}
        for packet in i.demux(*chosen):
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    return dst


@pytest.mark.parametrize("suffix,segmented", [(".mp4", False), (".mov", False), (".mp4", True), (".mkv", False)])
def test_a_video_starting_before_zero_keeps_every_frame_and_its_sync(clips, tmp_path, suffix, segmented):
    """MP4/MOV keep negative times as an edit list starting at 0, so players skipped every frame
    before it: a TS whose clock wrapped (-0.82 s) played 54 of its 75 frames, 22 ms off the audio.
    The first frame now lands on 0, every stream moved with it."""
    src = _starting_before_zero(clips("wrap.mp4", num_frames=50, audio=True, codec_options={"bf": "2"}),
                                tmp_path / "wrap.ts")
    assert probe.video_start(src) < -2
    out = tmp_path / f"out{suffix}"
    run(_cfg(src, out, **(dict(parallel=True, segment_frames=12, encoders=2) if segmented else {})))
    assert probe.indices(out) == list(range(50))
    # Matroska cannot start the audio before 0 either: every stream moves later by the audio's lead
    lead = probe.video_start(src) - probe.packet_times(src, "audio")[0][0]
    assert abs(probe.video_start(out) - (0 if suffix != ".mkv" else lead)) <= Fraction(1, 1000)  # Matroska: in ms

    def audio_lead(path):  # how far the audio starts before the video
        return probe.video_start(path) - probe.packet_times(path, "audio")[0][0]

    assert abs(audio_lead(out) - audio_lead(src)) <= Fraction(1, 1000)
    got, want = probe.pts_exact(out), probe.pts_exact(src)
    assert all(abs((g - got[0]) - (w - want[0])) <= Fraction(1, 1000) for g, w in zip(got, want))


def _audio_lead(path: Path) -> Fraction:
    """How far the audio starts before the video."""
    return probe.video_start(path) - probe.packet_times(path, "audio")[0][0]


@pytest.mark.parametrize("suffix,segmented", [(".mp4", False), (".mkv", False), (".mp4", True)])
def test_a_file_that_starts_late_starts_at_zero_with_its_sync(clips, tmp_path, suffix, segmented):
    """A TS an hour into a broadcast's clock: MP4 and MKV kept its start, a 2 s clip written as a
    file of an hour of nothing and then the clip. Every stream now moves back together, as ffmpeg
    moves them: the earliest starts at 0, the audio keeps its lead, no frame is lost."""
    src = _starting_before_zero(clips("late.mp4", num_frames=40, audio=True, codec_options={"bf": "2"}),
                                tmp_path / "late.ts", offset="3600")
    assert probe.video_start(src) >= 3600
    out = tmp_path / f"out{suffix}"
    run(_cfg(src, out, **(dict(parallel=True, segment_frames=12, encoders=2) if segmented else {})))
    assert probe.indices(out) == list(range(40))
    first_audio = probe.packet_times(out, "audio")[0][0]
    assert min(first_audio, probe.video_start(out)) >= 0 and max(first_audio, probe.video_start(out)) < Fraction(1, 10)
    assert abs(_audio_lead(out) - _audio_lead(src)) <= Fraction(1, 1000)
    got, want = probe.pts_exact(out), probe.pts_exact(src)
    assert all(abs((g - got[0]) - (w - want[0])) <= Fraction(1, 1000) for g, w in zip(got, want))
    with av.open(str(out)) as c:
        assert c.duration / 1e6 < 2.1  # 40 frames at 24 fps, not an hour and 2 s


def test_another_files_soundtrack_starts_with_the_first_frame_of_a_late_or_early_video(clips, tmp_path):
    """--audio beside a TS that starts an hour in (or before 0): the soundtrack's 0 is the first
    frame, and a cut takes the soundtrack from the same time as the video."""
    song = clips("song.mp4", num_frames=96, audio=True)  # 4 s of tone: its audio is the soundtrack
    for offset in ("3600", "95441.5"):
        src = _starting_before_zero(clips("late.mp4", num_frames=40, audio=True), tmp_path / f"v{offset}.ts",
                                    offset=offset)
        out = tmp_path / f"with{offset}.mp4"
        run(_cfg(src, out, audio=song))
        assert probe.indices(out) == list(range(40))
        song_start = probe.packet_times(song, "audio")[0][0]  # AAC's priming: -1024 samples, as in the song
        assert probe.video_start(out) == 0 and abs(probe.packet_times(out, "audio")[0][0] - song_start) <= Fraction(1, 1000)
        cut = tmp_path / f"cut{offset}.mp4"
        run(_cfg(src, cut, audio=song, start="1"))
        assert probe.indices(cut) == list(range(24, 40))  # from 1 s at 24 fps
        # the soundtrack's packets from 1 s on, moved to start with the cut's first frame
        want = [t for t, *_ in probe.packet_times(song, "audio") if t is not None and t >= 1]
        got = [t for t, *_ in probe.packet_times(cut, "audio")]
        assert got and abs(got[0] - (want[0] - 1)) <= Fraction(1, 1000), (got[:3], want[:3])


def _audio_cut_before_zero(src: Path, dst: Path, seconds: Fraction) -> Path:
    """`src` with its audio moved `seconds` earlier, into MP4: an edit list then hides the audio
    before 0, and FFmpeg's demuxer flags those packets "discard" (as in an MP4 cut with `-c copy`,
    which keeps up to a keyframe interval of audio before the cut)."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        chosen = [s for s in i.streams if s.type in ("video", "audio")]
        streams = {s.index: o.add_stream_from_template(s) for s in chosen}
        for packet in i.demux(*chosen):
            if packet.dts is None:
                continue
            if packet.stream.type == "audio":
                ticks = round(seconds / packet.time_base)
                packet.pts, packet.dts = packet.pts - ticks, packet.dts - ticks
            packet.stream = streams[packet.stream.index]
            o.mux(packet)
    return dst


@pytest.mark.parametrize("suffix,codec", [(".mkv", "aac"), (".mp4", "aac"), (".mkv", "pcm_s16le")])
def test_audio_an_edit_list_hides_is_not_played(clips, tmp_path, suffix, codec):
    """Matroska cannot hide packets as MP4's edit list does: the half second of audio before 0
    was written as audio to play, and every stream moved half a second later. Only what the
    decoder needs stays (AAC's last hidden packet, as its priming; nothing of PCM, whose samples
    stand alone); MP4 keeps them all, hidden."""
    container = ".mp4" if codec == "aac" else ".mov"
    src = _audio_cut_before_zero(clips(f"edl-{codec}{container}", num_frames=48, audio=True, audio_codec=codec),
                                 tmp_path / f"edl{container}", Fraction(1, 2))
    with av.open(str(src)) as c:
        flags = [p.is_discard for p in c.demux(audio=0) if p.size]
    assert sum(flags) > 10 and not any(flags[sum(flags):])
    out = tmp_path / f"out{suffix}"
    run(_cfg(src, out, parallel=False))
    assert probe.indices(out) == list(range(48))
    audio = probe.packet_times(out, "audio")
    kept = {"aac": 1, "pcm_s16le": 0}[codec] if suffix == ".mkv" else sum(flags)
    assert len(audio) == len(flags) - sum(flags) + kept
    assert [a[3] for a in audio[-10:]] == [a[3] for a in probe.packet_times(src, "audio")[-10:]]
    def lead(path):  # how far the audio starts before the video
        return probe.video_start(path) - probe.packet_times(path, "audio")[0][0]

    assert lead(src) >= Fraction(1, 2)
    assert lead(out) <= Fraction(2048, 48000) if suffix == ".mkv" else lead(out) == lead(src)


@pytest.mark.parametrize("suffix", [".mp4", ".mov"])
def test_mp3s_end_trim_in_mp4_is_kept(clips, tmp_path, suffix):
    """An MP4's edit list trims the encoder's padding off MP3's last frame, but FFmpeg's MP3
    parser gives that packet its whole frame's duration again: the copy played up to 1,151
    samples (~24 ms) of padding longer than the source (a reviewer's comparison with ffmpeg -c
    copy). The copied track ends where the source's edit list ends it."""
    src = clips("mp3.mp4", num_frames=25, audio=True, audio_codec="libmp3lame")
    with av.open(str(src)) as c:
        stream = c.streams.audio[0]
        end = stream.start_time + stream.duration
        last = [p for p in c.demux(stream) if p.size][-1]
        assert last.pts + last.duration > end  # the padding the parser gives back
    out = tmp_path / f"out{suffix}"
    run(_cfg(src, out, parallel=False))
    with av.open(str(out)) as c:
        stream = c.streams.audio[0]
        assert stream.start_time + stream.duration == end
        assert [p.pts for p in c.demux(stream) if p.size][-1] == last.pts


def _opus_padding_left_to_the_side_data(src: Path, dst: Path) -> Path:
    """`src` remuxed with the last Opus packet lasting a whole frame, its end trim said only by its
    `discard_padding` side data, as ffmpeg's Matroska/WebM muxer writes it (no block duration)."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        frame = 0
        for packet in i.demux():
            if not packet.size:
                continue
            if packet.stream.type == "audio":
                if packet.has_sidedata("skip_samples") and bytes(packet.get_sidedata("skip_samples"))[4:8] != bytes(4):
                    packet.duration = frame
                frame = packet.duration
            packet.stream = streams[packet.stream.index]
            o.mux(packet)
    return dst


def test_opus_end_padding_from_matroska_is_kept_in_mp4(clips, tmp_path):
    """Matroska/WebM trims Opus's last frame with side data beside the packet (`discard_padding`),
    which MP4/MOV cannot carry: copied as read, the track ran to the frame's end, 568 samples
    (11.8 ms) past the source's audio here (168 for a WebM from ffmpeg, the reviewer's). The
    copied track ends where the source's audio does: its last packet to the sample, its edit list
    to the millisecond it counts in. (MOV cannot copy Opus: re-encoded, the decoder trims it.)"""
    src = _opus_padding_left_to_the_side_data(
        clips("opus.mkv", num_frames=25, audio=True, audio_codec="libopus"), tmp_path / "opus-padded.mkv")
    with av.open(str(src)) as c:
        packets = [p for p in c.demux(c.streams.audio[0]) if p.size]
    padding = int.from_bytes(bytes(packets[-1].get_sidedata("skip_samples"))[4:8], "little")
    assert padding > 0 and packets[-1].duration == packets[-2].duration
    audio_end = packets[-1].pts * packets[-1].time_base + Fraction(960 - padding, 48000)
    out = tmp_path / "out.mp4"
    run(_cfg(src, out, parallel=False))
    with av.open(str(out)) as c:
        stream = c.streams.audio[0]
        last = [p for p in c.demux(stream) if p.size][-1]
        assert stream.codec_context.name == "opus" and stream.time_base == Fraction(1, 48000)
        assert last.duration == 960 - padding
        # the track's end, as its edit list states it (whole milliseconds), is the source audio's end
        end = (stream.start_time + stream.duration) * stream.time_base
        assert abs(end - audio_end) <= MP4_EDIT_LIST_SECONDS


def test_audio_with_nothing_inside_the_part_is_named_not_lost_silently(clips, tmp_path, capsys):
    """A part of the video past the end of its audio: the muxer leaves the empty track out, and
    the output had no audio without a word (the temporal reviewer, 2026-12-07). One line says so."""
    whole = clips("short-audio.mp4", num_frames=24, audio=True)
    src = tmp_path / "audio-ends-early.mp4"
    with av.open(str(whole)) as i, av.open(str(src), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in (i.streams.video[0], i.streams.audio[0])}
        for packet in i.demux(i.streams.video[0], i.streams.audio[0]):
            if packet.dts is None or (packet.stream.type == "audio" and packet.pts * packet.time_base > Fraction(1, 2)):
                continue
            packet.stream = streams[packet.stream.index]
            o.mux(packet)
    out = tmp_path / "out.mp4"
    assert cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--start", "20f"]) == 0
    with av.open(str(out)) as c:
        assert not c.streams.audio and c.streams.video[0].frames == 4
    said = [ln for ln in capsys.readouterr().err.splitlines() if "audio stream" in ln]
    assert said == ["warning: audio stream 1 (aac) has nothing within the frames written, so the output has none"]
