"""pipeline/messages.py (stage messages) and pipeline/config.py (RunConfig checks)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import CRF_RANGE, RunConfig, default_output_path
from core.errors import FramepipeError, InvalidOption
from core.frame import Frame
from pipeline.messages import END, EndOfStream, ResultItem, StageFailed


def _yuv_planes(height=1080, width=1920):
    return (
        np.zeros((height, width), np.uint8),
        np.zeros((height // 2, width // 2), np.uint8),
        np.zeros((height // 2, width // 2), np.uint8),
    )


# -- Frame ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt,planes,bit_depth",
    [
        ("yuv", _yuv_planes(8, 8), 8),
        ("yuv", _yuv_planes(8, 8), 10),
        ("rgb24", (np.zeros((8, 8, 3), np.uint8),), 8),
        ("nv12", (np.zeros((12, 8), np.uint8),), 8),
        ("nv12", (np.zeros((12, 8), np.uint16),), 10),
    ],
)
def test_frame_item_accepts_valid(fmt, planes, bit_depth):
    item = Frame(index=0, pts=0, fmt=fmt, planes=planes, bit_depth=bit_depth)
    assert item.planes is planes


def test_frame_item_negative_index_raises():
    with pytest.raises(ValueError, match=r"Frame\.index must be >= 0, got -1"):
        Frame(index=-1, pts=0, fmt="yuv", planes=_yuv_planes(8, 8))


def test_frame_item_bad_fmt_raises():
    with pytest.raises(ValueError, match=r"Frame\.fmt must be yuv, rgb24, rgb48 or nv12, got 'yuv420p'"):
        Frame(index=0, pts=0, fmt="yuv420p", planes=_yuv_planes(8, 8))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fmt,planes,message",
    [
        ("yuv", _yuv_planes(8, 8)[:2], r"Frame yuv needs 3 plane\(s\), got 2"),
        ("rgb24", _yuv_planes(8, 8), r"Frame rgb24 needs 1 or 2 plane\(s\), got 3"),
        ("nv12", (), r"Frame nv12 needs 1 plane\(s\), got 0"),
    ],
)
def test_frame_item_wrong_plane_count_raises(fmt, planes, message):
    with pytest.raises(ValueError, match=message):
        Frame(index=0, pts=0, fmt=fmt, planes=planes)


@pytest.mark.parametrize("bit_depth", [0, 7, 9, 14, 32])
def test_frame_item_bad_bit_depth_raises(bit_depth):
    with pytest.raises(ValueError, match=rf"Frame\.bit_depth must be 8, 10, 12 or 16, got {bit_depth}"):
        Frame(index=0, pts=0, fmt="yuv", planes=_yuv_planes(8, 8), bit_depth=bit_depth)


def test_frame_item_is_frozen():
    item = Frame(index=3, pts=3003, fmt="yuv", planes=_yuv_planes(8, 8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        item.index = 4  # type: ignore[misc]


def test_frame_item_repr_shows_shapes_not_data():
    planes = _yuv_planes()
    planes[0][:] = 7  # data that must not show up
    text = repr(Frame(index=12, pts=6006, fmt="yuv", planes=planes, bit_depth=10))
    assert text == "Frame(#12, pts=6006, yuv10 [(1080, 1920), (540, 960), (540, 960)])"
    assert len(text) < 120


def test_frame_item_repr_of_a_torch_tensor():
    torch = pytest.importorskip("torch")
    text = repr(Frame(index=0, pts=0, fmt="nv12", planes=(torch.zeros(1620, 1920, dtype=torch.uint8),)))
    assert "(1620, 1920)" in text and "tensor" not in text and "@" not in text  # no "@cpu"


# -- ResultItem ---------------------------------------------------------------------


def test_result_item_valid_and_repr():
    item = ResultItem(index=5, pts=10, fmt="yuv420p", planes=_yuv_planes(), worker="worker-gpu1")
    text = repr(item)
    assert text == "ResultItem(#5, pts=10, yuv420p [(1080, 1920), (540, 960), (540, 960)], by worker-gpu1)"
    assert repr(ResultItem(index=0, pts=0, fmt="nv12", planes=(np.zeros((12, 8), np.uint8),))).endswith("by ?)")


def test_result_item_negative_index_raises():
    with pytest.raises(ValueError, match=r"ResultItem\.index must be >= 0, got -5"):
        ResultItem(index=-5, pts=0, fmt="yuv420p", planes=_yuv_planes(8, 8))


def test_result_item_bad_fmt_raises():
    with pytest.raises(ValueError, match=r"ResultItem\.fmt must be yuv420p, yuv420p10, nv12, p010, rgb24, rgb48 or none, got 'bgr24'"):
        ResultItem(index=0, pts=0, fmt="bgr24", planes=(np.zeros((8, 8, 3), np.uint8),))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fmt,planes,message",
    [
        ("yuv420p", (np.zeros((12, 8), np.uint8),), r"ResultItem yuv420p needs 3 plane\(s\), got 1"),
        ("nv12", _yuv_planes(8, 8), r"ResultItem nv12 needs 1 plane\(s\), got 3"),
    ],
)
def test_result_item_wrong_plane_count_raises(fmt, planes, message):
    with pytest.raises(ValueError, match=message):
        ResultItem(index=0, pts=0, fmt=fmt, planes=planes)


# -- END, StageFailed ---------------------------------------------------------------


def test_end_is_a_singleton():
    assert EndOfStream() is END
    assert EndOfStream() is EndOfStream()
    assert isinstance(END, EndOfStream)
    assert repr(END) == "END"


def test_stage_failed_repr():
    failed = StageFailed("writer", OSError("disk full"))
    assert repr(failed) == "StageFailed('writer', OSError: disk full)"


# -- RunConfig.validate --------------------------------------------------------------


@pytest.fixture
def paths(tmp_path):
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"")
    return source, tmp_path / "out.mp4"


def _config(paths, **kwargs) -> RunConfig:
    source, output = paths
    return RunConfig(source=source, output=kwargs.pop("output", output), **kwargs)


def test_defaults_validate(paths):
    config = _config(paths)
    assert config.validate() is config


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"batch_size": -1}, r"Invalid --batch-size \(-1\): use 0 to probe"),
        ({"max_batch_size": 0}, r"Invalid --max-batch-size \(0\): it must be at least 1"),
        ({"batch_size": 300}, r"Invalid --batch-size \(300\): it is above --max-batch-size \(256\)"),
        ({"batch_size": 9, "max_batch_size": 8}, r"Invalid --batch-size \(9\): it is above --max-batch-size \(8\)"),
        ({"queue_size": 0}, r"Invalid --queue-size \(0\): it must be at least 1"),
        ({"cpu_workers": 0}, r"Invalid --cpu-workers \(0\): use 1 to 256"),
        ({"max_frames": 0}, r"Invalid --max-frames \(0\): it must be at least 1"),
        ({"scale": 0}, r"Invalid --scale \(0\): it must be a positive whole number"),
        ({"codec": "vp9"}, r"Invalid --codec \('vp9'\): allowed are h264, hevc, av1"),
        ({"precision": "fp8"}, r"Invalid --precision \('fp8'\): allowed are auto, fp32, fp16, bf16"),
    ],
)
def test_validate_rejects(paths, kwargs, message):
    with pytest.raises(InvalidOption, match=message) as info:
        _config(paths, **kwargs).validate()
    assert isinstance(info.value, ValueError) and isinstance(info.value, FramepipeError)


@pytest.mark.parametrize(
    "codec,good,bad",
    [("h264", [0, 51], [-1, 52]), ("hevc", [0, 51], [-1, 52]), ("av1", [0, 52, 63], [-1, 64])],
)
def test_crf_range_per_codec(paths, codec, good, bad):
    lo, hi = CRF_RANGE[codec]
    for crf in good:
        _config(paths, codec=codec, crf=crf).validate()
    for crf in bad:
        with pytest.raises(InvalidOption, match=rf"Invalid --quality \({crf}\) for {codec}: allowed is {lo}-{hi}"):
            _config(paths, codec=codec, crf=crf).validate()


@pytest.mark.parametrize(
    "codec,good,bad",
    [
        ("h264", ["ultrafast", "medium", "veryslow"], ["8", "p4", "placebo"]),
        ("hevc", ["slow"], ["13", "p1"]),
        ("av1", ["0", "8", "13"], ["14", "medium", "p7"]),
    ],
)
def test_preset_per_codec(paths, codec, good, bad):
    for preset in good:
        _config(paths, codec=codec, preset=preset).validate()
    for preset in bad:
        with pytest.raises(InvalidOption, match=rf"Invalid --preset \('{preset}'\) for {codec}: allowed are "):
            _config(paths, codec=codec, preset=preset).validate()


@pytest.mark.parametrize("codec", ["h264", "hevc", "av1"])
def test_nvenc_presets_only_with_nvenc(paths, codec):
    for preset in ("p1", "p4", "p7"):
        _config(paths, codec=codec, preset=preset, nvenc=True).validate()
        with pytest.raises(InvalidOption, match=rf"Invalid --preset \('{preset}'\) for {codec}"):
            _config(paths, codec=codec, preset=preset, nvenc=False).validate()
    for preset in ("p0", "p8"):
        with pytest.raises(InvalidOption, match=r"allowed are .*p1, p2, p3, p4, p5, p6, p7\.$"):
            _config(paths, codec=codec, preset=preset, nvenc=True).validate()


@pytest.mark.parametrize("name", ["out.avi", "out.webm"])  # "out" (no suffix) is a folder of pictures (issue 13)
def test_output_suffix(paths, name):
    source, _ = paths
    with pytest.raises(InvalidOption, match=r"Invalid --output \(.*\): the file must end in \.mp4, \.mkv or \.mov"):
        _config(paths, output=source.with_name(name)).validate()


@pytest.mark.parametrize("name", ["out.MP4", "out.mkv", "out.mov"])
def test_output_suffix_allowed(paths, name):
    source, _ = paths
    _config(paths, output=source.with_name(name)).validate()


def test_output_same_as_source(paths, monkeypatch):
    """Moved to core.files (issue 8): files are compared as files, with or without --overwrite."""
    from core.errors import UnsafeOutput
    from core.files import check_output_paths

    source, _ = paths
    with pytest.raises(UnsafeOutput, match=r"--output .* is the same file as --source"):
        check_output_paths([("--output", source)], inputs=[("--source", source)], overwrite=True)
    monkeypatch.chdir(source.parent)  # a relative spelling of the same file
    (source.parent / "sub").mkdir(exist_ok=True)
    with pytest.raises(UnsafeOutput, match=r"--output .* is the same file as --source"):
        check_output_paths([("--output", Path("sub/../clip.mp4"))], inputs=[("--source", source)], overwrite=True)


def test_defaults_for_crf_and_preset(paths):
    assert _config(paths, codec="av1").crf_or_default == 28
    assert _config(paths, codec="hevc", crf=30).crf_or_default == 30
    assert _config(paths, codec="av1").preset_or_default == "8"
    assert _config(paths, preset="slow").preset_or_default == "slow"


# -- default_output_path -----------------------------------------------------------


@pytest.mark.parametrize(
    "source,expected",
    [
        ("/videos/clip.mp4", "/videos/clip.realesr-animevideov3-x2.mp4"),
        ("/videos/clip.mkv", "/videos/clip.realesr-animevideov3-x2.mkv"),
        ("/videos/clip.MKV", "/videos/clip.realesr-animevideov3-x2.mkv"),
        ("/videos/clip.mov", "/videos/clip.realesr-animevideov3-x2.mov"),
        ("/videos/clip.avi", "/videos/clip.realesr-animevideov3-x2.mp4"),
        ("/videos/clip.webm", "/videos/clip.realesr-animevideov3-x2.mp4"),
        ("/videos/my.holiday.ts", "/videos/my.holiday.realesr-animevideov3-x2.mp4"),
    ],
)
def test_default_output_path_suffix(source, expected):
    assert default_output_path(Path(source), model_name="realesr-animevideov3", scale=2) == Path(expected)


def test_default_output_path_replaces_odd_characters():
    out = default_output_path(Path("/v/clip.mp4"), model_name="Real ESRGAN/x4+:anime", scale=4)
    assert out == Path("/v/clip.Real_ESRGAN_x4__anime-x4.mp4")
    assert out.parent == Path("/v")  # a slash in the model name never makes a folder
