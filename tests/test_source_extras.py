"""What the video source holds besides its streams' pixels and samples: the file's tags, chapters,
attachments, each stream's language, title and flags, a timecode, data streams. Kept as
`ffmpeg -map 0 -c copy` keeps them, moved and cut with the video (hw/av_streams.py); what the
output's container cannot hold is named in one line. Before, all of it was lost without a word
(a reviewer's comparison against ffmpeg, 2026-12-07)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import av.stream
import pytest

from pipeline import RunConfig, run
from tests import probe

LOSSLESS = dict(crf=0, preset="ultrafast")
FONT = b"\x00\x01\x00\x00 not really a font, but bytes to carry"
Disposition = av.stream.Disposition


def _cfg(src, out, **kw) -> RunConfig:
    base = dict(source=src, output=out, model="bicubic", scale=2, **LOSSLESS)
    base.update(kw)
    return RunConfig(**base)


def _tagged(src: Path, dst: Path) -> Path:
    """`src` (video, audio, subtitles) remuxed with tags, flags, a font attachment and two chapters
    (0-1 s "Intro", 1-2 s "Main"), as mkvmerge or an editor leaves them."""
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        o.metadata.update({"title": "A film", "artist": "Someone", "ENCODER": "an old muxer"})
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams}
        video, audio, subs = (streams[i.streams.video[0].index], streams[i.streams.audio[0].index],
                              streams[i.streams.subtitles[0].index])
        video.metadata.update({"title": "Main video", "BPS": "12345", "NUMBER_OF_FRAMES": "9", "DURATION-eng": "01:00:00",
                               "NUMBER_OF_BYTES-eng": "1"})
        audio.metadata.update({"language": "fra", "title": "Commentaire"})
        audio.disposition = Disposition.default | Disposition.comment
        video.disposition = Disposition(0)
        subs.metadata["language"] = "eng"
        subs.disposition = Disposition.forced
        o.add_attachment("font.ttf", "font/ttf", FONT)
        o.set_chapters([{"id": 1, "start": 0, "end": 1000, "time_base": Fraction(1, 1000), "metadata": {"title": "Intro"}},
                        {"id": 2, "start": 1000, "end": 2000, "time_base": Fraction(1, 1000), "metadata": {"title": "Main"}}])
        for packet in i.demux():
            if packet.size:  # not the demuxer's flush packets
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    return dst


def _chapters(path: Path) -> list[tuple[str, float, float]]:
    with av.open(str(path)) as c:
        return [(ch["metadata"].get("title"), round(float(ch["start"] * ch["time_base"]), 3),
                 round(float(ch["end"] * ch["time_base"]), 3)) for ch in c.chapters()]


@pytest.fixture
def tagged(clips, tmp_path):
    return _tagged(clips("extras.mkv", num_frames=48, audio=True, subtitles=["one", "two"]), tmp_path / "tagged.mkv")


@pytest.mark.parametrize("segmented", [False, True])
def test_tags_flags_attachments_and_chapters_go_with_the_video(tagged, tmp_path, segmented):
    out = tmp_path / "out.mkv"
    run(_cfg(tagged, out, **(dict(parallel=True, segment_frames=12, encoders=2) if segmented else {})))
    with av.open(str(out)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        assert tags["title"] == "A film" and tags["artist"] == "Someone"
        assert tags.get("encoder") != "an old muxer"  # the new file's muxer names itself
        video, audio, subs = c.streams.video[0], c.streams.audio[0], c.streams.subtitles[0]
        assert video.metadata.get("title") == "Main video"
        # the old file's statistics, with FFmpeg's language suffix too (mkvmerge's "DURATION-eng")
        assert not {"BPS", "NUMBER_OF_FRAMES", "DURATION-eng", "NUMBER_OF_BYTES-eng"} & set(video.metadata)
        assert (audio.metadata.get("language"), audio.metadata.get("title")) == ("fra", "Commentaire")
        assert audio.disposition == Disposition.default | Disposition.comment
        assert subs.metadata.get("language") == "eng" and subs.disposition == Disposition.forced
        assert not video.disposition & Disposition.default
        (font,) = c.streams.attachments
        assert font.metadata.get("filename") == "font.ttf" and bytes(font.data) == FONT
    assert _chapters(out) == [("Intro", 0.0, 1.0), ("Main", 1.0, 2.0)]
    assert probe.indices(out) == list(range(48))


def test_a_cut_moves_the_chapters_with_the_video(tagged, tmp_path):
    """--start 0.5 --end 1.5: the chapters on the output's clock, cut at its ends."""
    out = tmp_path / "cut.mkv"
    run(_cfg(tagged, out, start="0.5", end="1.5"))
    assert _chapters(out) == [("Intro", 0.0, 0.5), ("Main", 0.5, 1.0)]
    run(_cfg(tagged, out, start="1.25", overwrite=True))
    assert _chapters(out) == [("Main", 0.0, 0.75)]


def test_what_mp4_cannot_hold_is_named_and_the_rest_kept(tagged, tmp_path):
    out = tmp_path / "out.mp4"
    stats = run(_cfg(tagged, out))
    assert any("1 attachment(s) (font.ttf) cannot be stored in .mp4: left out" in w for w in stats.warnings)
    with av.open(str(out)) as c:
        tags = {k.lower(): v for k, v in c.metadata.items()}
        assert tags["title"] == "A film" and tags["artist"] == "Someone"
        (audio,) = c.streams.audio
        assert audio.metadata.get("language") == "fra" and audio.disposition & Disposition.default
    assert _chapters(out) == [("Intro", 0.0, 1.0), ("Main", 1.0, 2.0)]
    again = tmp_path / "again.mkv"  # an MP4's chapter track is read as chapters, not a data stream
    stats = run(_cfg(out, again, scale=1))
    assert not [w for w in stats.warnings if "data stream" in w], stats.warnings
    assert _chapters(again) == [("Intro", 0.0, 1.0), ("Main", 1.0, 2.0)]


def test_no_audio_still_keeps_the_files_tags_and_chapters(tagged, tmp_path):
    out = tmp_path / "quiet.mkv"
    run(_cfg(tagged, out, copy_audio=False))
    with av.open(str(out)) as c:
        assert not c.streams.audio and not c.streams.subtitles
        assert {k.lower(): v for k, v in c.metadata.items()}["title"] == "A film"
    assert _chapters(out) == [("Intro", 0.0, 1.0), ("Main", 1.0, 2.0)]


def test_tags_that_are_not_utf8_are_read_not_fatal(clips, tmp_path, capsys):
    """A tag written in Latin-1 (an old muxer): PyAV's strict decoding raised UnicodeDecodeError,
    a traceback before any frame; the tag is read with the bad bytes replaced."""
    import main as cli

    src = tmp_path / "latin1.mkv"
    try:
        o = av.open(str(src), "w", metadata_encoding="latin-1")
    except TypeError:  # PyAV 19 has no such option (nor metadata_errors: framepipe opens as it reads)
        pytest.skip("this PyAV writes tags as UTF-8 only")
    with av.open(str(clips("latin.mp4", num_frames=12))) as i, o:
        o.metadata["title"] = "Café à l'opéra"
        stream = o.add_stream_from_template(i.streams.video[0])
        for packet in i.demux(video=0):
            if packet.size:
                packet.stream = stream
                o.mux(packet)
    out = tmp_path / "out.mkv"
    assert cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "-q"]) == 0, capsys.readouterr().err
    assert probe.indices(out) == list(range(12))
    with av.open(str(out)) as c:
        assert c.metadata["title"].startswith("Caf")


def _with_timecode(src: Path, dst: Path, timecode: str = "01:00:00:00") -> Path:
    with av.open(str(src)) as i, av.open(str(dst), "w") as o:
        streams = {s.index: o.add_stream_from_template(s) for s in i.streams if s.type in ("video", "audio")}
        video = streams[i.streams.video[0].index]
        video.metadata["timecode"] = timecode  # MOV writes a tmcd track for it ...
        video.codec_context.framerate = i.streams.video[0].average_rate  # ... which needs the rate
        for packet in i.demux(*[s for s in i.streams if s.index in streams]):
            if packet.size:  # not the demuxer's flush packets
                packet.stream = streams[packet.stream.index]
                o.mux(packet)
    return dst


@pytest.mark.parametrize("segmented", [False, True])
def test_a_timecode_is_carried_unless_start_moves_the_first_frame(clips, tmp_path, segmented):
    """A camera's MOV timecode track: carried as the video's timecode tag, from which MOV writes
    the track again (segments joined too: the join gave the muxer no frame rate, and it refused
    the timecode with EINVAL, a traceback after every frame was encoded)."""
    src = _with_timecode(clips("tc.mp4", num_frames=24, audio=True), tmp_path / "tc.mov")
    with av.open(str(src)) as c:
        assert c.streams.data  # the tmcd track
    out = tmp_path / "out.mov"
    stats = run(_cfg(src, out, **(dict(parallel=True, segment_frames=6, encoders=2) if segmented else {})))
    assert not [w for w in stats.warnings if "data stream" in w or "timecode" in w], stats.warnings
    with av.open(str(out)) as c:
        assert c.streams.video[0].metadata.get("timecode") == "01:00:00:00" and c.streams.data
    stats = run(_cfg(src, tmp_path / "cut.mov", start="0.5"))
    (line,) = [w for w in stats.warnings if "timecode" in w or "data stream" in w]
    assert "timecode (01:00:00:00) is not carried" in line and "--start" in line
    with av.open(str(tmp_path / "cut.mov")) as c:
        assert "timecode" not in c.streams.video[0].metadata and not c.streams.data


def test_an_interpolated_timecode_counts_the_new_frames(clips, tmp_path):
    """--interpolate 2 counts two frames where the source counted one: the first frame's
    timecode 01:00:00:10 at 24 fps is 01:00:00:20 at 48. Carried as it was (as ffmpeg's framerate
    filter does), it named a time 0.208 s earlier (the temporal reviewer, 2026-12-07)."""
    from hw.av_streams import _timecode_at

    src = _with_timecode(clips("tc.mp4", num_frames=24, audio=True), tmp_path / "tc.mov", "01:00:00:10")
    out = tmp_path / "out.mov"
    run(_cfg(src, out, scale=1, interpolate=2, interpolation_model="blend"))
    with av.open(str(out)) as c:
        assert c.streams.video[0].metadata.get("timecode") == "01:00:00:20" and c.streams.data
    assert _timecode_at("00:59:59;29", Fraction(60000, 30000)) == "00:59:59;58"  # drop-frame 29.97 -> 59.94
    assert _timecode_at("01:00:00:10", Fraction(1)) == "01:00:00:10"
    assert _timecode_at("01:00:00:10", Fraction(5, 2)) == "01:00:00:10"  # not whole: left as it was
    assert _timecode_at("take 3", Fraction(2)) == "take 3"


def test_a_join_the_muxer_refuses_is_one_line_that_says_how_to_finish(clips, tmp_path, monkeypatch, capsys):
    """Every segment finished, then an FFmpeg error joining them: one line naming it and --resume
    (it was a traceback)."""
    import hw.av_join
    import main as cli

    def refuse(*args, **kwargs):
        raise av.error.ArgumentError(22, "Invalid argument")

    monkeypatch.setattr(hw.av_join, "join_segments", refuse)
    src = clips("join-refused.mp4", num_frames=24, audio=True)
    code = cli.main(["--source", str(src), "--output", str(tmp_path / "out.mp4"), "--model", "bicubic",
                     "--segment-frames", "6", "--parallel"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "join: ArgumentError" in line and "Invalid argument" in line and "--resume" in line


def test_a_timecode_past_what_mov_counts_is_left_out_in_one_line(clips, tmp_path):
    """A timecode track counts frames in one byte: at 300 fps the muxer refused the output's
    header after every frame was encoded, and the sequential run exited 0 with no file."""
    src = _with_timecode(clips("tc300.mp4", num_frames=30, fps=300), tmp_path / "tc300.mkv")  # MOV refuses it too
    out = tmp_path / "out.mov"
    stats = run(_cfg(src, out, scale=1))
    (line,) = [w for w in stats.warnings if "timecode" in w]
    assert "at most 255 frames a second" in line and "300" in line
    assert probe.indices(out) == list(range(30))


def test_a_file_that_cannot_be_finalized_fails_the_sequential_run(clips, tmp_path, monkeypatch, capsys):
    """Every frame encoded, then the muxer refuses the trailer: exit 1 and one line naming the
    writer. Before, a sequential run counted as complete, its unplayable file was removed and it
    exited 0, naming an output that did not exist (a parallel run already failed)."""
    import hw.av_encode
    import main as cli

    def refuse(self, *, complete=True, **kw):
        raise av.error.ArgumentError(22, "Invalid argument")  # as the MOV muxer refusing a timecode track

    monkeypatch.setattr(hw.av_encode.PyAVWriter, "close", refuse)
    out = tmp_path / "out.mp4"
    code = cli.main(["--source", str(clips("trailer.mp4", num_frames=12)), "--output", str(out), "--model", "bicubic"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "writer" in line and "Invalid argument" in line
