"""Planning --nvenc at the run's real output size (issue 9, finding 3), with a
PyNvVideoCodec stand-in that answers like a Tesla P40: H.264 NVENC up to 4096x4096, HEVC up
to 8192x8192, no AV1. A 720p or 1080p source upscaled x4 passed the old 256x256 probe and
then aborted the run in CreateEncoder; now the plan falls back with one line saying why."""

from __future__ import annotations

import types
from pathlib import Path

import pytest
import torch

from hw import nv_runtime
from pipeline import plan as planning
from pipeline.config import RunConfig

CAPS = {"h264": {"width_max": 4096, "height_max": 4096, "mb_num_max": 65536, "support_10bit_encode": 0},
        "hevc": {"width_max": 8192, "height_max": 8192, "mb_num_max": 262144, "support_10bit_encode": 1}}


@pytest.fixture
def p40(monkeypatch):
    module = types.ModuleType("PyNvVideoCodec")
    module.created = []

    def caps(*, gpuid, codec):
        if codec not in CAPS:
            raise RuntimeError("NV_ENC_ERR_UNSUPPORTED_PARAM")
        return CAPS[codec]

    def create_encoder(width, height, fmt, cpu, **options):
        limit = CAPS.get(options["codec"])
        if limit is None or width > limit["width_max"] or height > limit["height_max"]:
            raise RuntimeError("PyNvVideoCodec: NV_ENC_ERR_INVALID_PARAM")
        if fmt == "P010" and not limit["support_10bit_encode"]:  # PyNvEncoder's own check
            raise RuntimeError("Format P010 is not supported by current encoder.")
        module.created.append((options["codec"], width, height) if fmt == "NV12" else (options["codec"], width, height, fmt))
        return object()

    module.GetEncoderCaps = caps
    module.CreateEncoder = create_encoder
    monkeypatch.setattr(nv_runtime, "nvcodec_import", lambda: module)
    monkeypatch.setattr(nv_runtime, "gpu_label", lambda gpu: f"GPU {gpu} (Tesla P40)")
    nv_runtime.reset_caches_for_tests()
    yield module
    nv_runtime.reset_caches_for_tests()


def plan(codec, output_size, bit_depth=8):
    config = RunConfig(source=Path("v.mp4"), nvenc=True, codec=codec)
    devices = (torch.device("cuda", 0),)
    notes: list[str] = []
    _, use_nvenc = planning._plan_codecs(config, source=None, devices=devices, notes=notes, output_size=output_size,
                                         bit_depth=bit_depth)
    return use_nvenc, notes


def test_10bit_hevc_stays_on_nvenc_fed_p010(p40):
    """Issue 13: 10-bit output with --nvenc was always sent to the CPU; HEVC Main10 on NVENC
    (P010 in) is used where the GPU encodes it, probed at the real size and depth."""
    assert plan("hevc", (3840, 2160), bit_depth=10) == (True, [])
    assert ("hevc", 3840, 2160, "P010") in p40.created


def test_10bit_h264_falls_back_to_the_cpu_with_one_line(p40):
    use_nvenc, notes = plan("h264", (1920, 1080), bit_depth=10)
    assert not use_nvenc
    assert notes == ["--nvenc: NVENC on GPU 0 (Tesla P40) cannot encode 10-bit h264 at 1920x1080: its encoder caps say "
                     "no 10-bit encoding (support_10bit_encode = 0); NVENC encodes 10-bit H.264 only from Blackwell "
                     "(RTX 50) on: --codec hevc keeps 10 bits on NVENC (HEVC Main10); encoding on the CPU from "
                     "GPU-converted yuv420p10le instead."]


def test_the_worker_feeds_p010_and_the_writer_gets_depth_and_hdr10(tmp_path, monkeypatch):
    """The builder's side of issue 13: a 10-bit NVENC plan makes the workers convert to P010 and
    opens the NVENC writer with the plan's depth and the source's HDR10 metadata."""
    import dataclasses

    from hw import nvenc_writer
    from hw.clips import make_clip
    from hw.hdr import HdrMetadata
    from pipeline import build as building

    clip = make_clip(tmp_path / "v.mp4", width=64, height=48, num_frames=2, fps=24)
    cpu_plan = planning.plan_run(RunConfig(source=clip, output=tmp_path / "o.mkv", device="cpu", model="bicubic",
                                           scale=2, codec="hevc"))
    md = HdrMetadata(max_cll=1000, max_fall=400)
    plan = dataclasses.replace(cpu_plan, devices=(torch.device("cuda", 0),), use_nvenc=True, output_bit_depth=10,
                               source=dataclasses.replace(cpu_plan.source, hdr=md))
    assert building._output_format(plan) == "p010"
    assert building._output_format(dataclasses.replace(plan, output_bit_depth=8)) == "nv12"
    opened = {}
    monkeypatch.setattr(nvenc_writer, "NvencFileWriter", lambda path, **kw: opened.update(kw))
    building.open_encoder(plan, tmp_path / "o.tmp.mkv", warn=print)
    assert opened["bit_depth"] == 10 and opened["hdr"] is md and opened["codec"] == "hevc"
    assert planning._hdr_notes(plan.source) == []  # HDR10 is written by NVENC too: nothing to say


@pytest.mark.parametrize("output_size", [(5120, 2880), (7680, 4320)])  # 720p and 1080p, x4
def test_h264_over_nvencs_limit_falls_back_with_one_line(p40, output_size):
    use_nvenc, notes = plan("h264", output_size)
    w, h = output_size
    assert not use_nvenc
    assert notes == [f"--nvenc: NVENC on GPU 0 (Tesla P40) cannot encode h264 at {w}x{h}: largest is 4096x4096; "
                     "NVENC's hevc encoder takes this size: add --codec hevc to keep encoding on the GPU; "
                     "encoding on the CPU from GPU-converted yuv420p instead."]


def test_hevc_at_the_same_size_stays_on_nvenc(p40):
    use_nvenc, notes = plan("hevc", (7680, 4320))
    assert use_nvenc and notes == []
    assert ("hevc", 7680, 4320) in p40.created  # probed at the real size, not 256x256


def test_h264_within_the_limit_stays_on_nvenc(p40):
    assert plan("h264", (3840, 2160)) == (True, [])
    assert ("h264", 3840, 2160) in p40.created  # probed at the real size, not 256x256


def test_av1_on_pascal_says_the_codec_is_missing_not_the_engine(p40):
    use_nvenc, (note,) = plan("av1", (1920, 1080))
    assert not use_nvenc
    assert "has no AV1 encoder" in note and "no NVENC engine" not in note


def test_what_the_nvenc_writer_cannot_carry_is_said_up_front(tmp_path):
    """Issue 8 carries rotation and tags hvc1; the NVENC writer's stream has no codec context
    in PyAV, so a run that would lose either says so before it starts."""
    from fractions import Fraction

    from hw.av_source import SourceInfo
    from hw.color import ColorInfo

    src = SourceInfo(path=Path("v.mp4"), width=64, height=48, codec="h264", pix_fmt="yuv420p", bit_depth=8,
                     chroma_format="420", time_base=Fraction(1, 25), average_rate=Fraction(25), num_frames_from_header=0, num_frames_estimate=0,
                     color=ColorInfo(), display_matrix=(0, -65536, 0, 65536, 0, 0, 0, 0, 1 << 30), rotation=90)
    notes = planning._nvenc_limits(RunConfig(source=Path("v.mp4"), codec="hevc"), src, Path("o.mp4"))
    assert len(notes) == 2 and "rotation (90 degrees)" in notes[0] and "hev1" in notes[1]
    plain = SourceInfo(**{**src.__dict__, "display_matrix": None, "rotation": 0})
    assert planning._nvenc_limits(RunConfig(source=Path("v.mp4"), codec="hevc"), plain, Path("o.mkv")) == []


def test_the_builder_opens_both_hardware_ends_on_the_plans_gpu(monkeypatch, tmp_path):
    """`build`'s NVDEC and NVENC branches, run on the CPU with the hardware classes replaced:
    a `RunPlan` property lost in an edit once broke every --nvdec and --nvenc run, and only
    the GPU host (where these branches run for real) saw it."""
    import dataclasses

    from hw import nvdec, nvenc_writer
    from hw.clips import make_clip
    from pipeline import build as building

    clip = make_clip(tmp_path / "v.mp4", width=64, height=48, num_frames=2, fps=24)
    cpu_plan = planning.plan_run(RunConfig(source=clip, output=tmp_path / "o.mp4", device="cpu", model="bicubic",
                                           scale=2))
    plan = dataclasses.replace(cpu_plan, devices=(torch.device("cuda", 1),), use_nvdec=True, use_nvenc=True)
    opened = {}
    monkeypatch.setattr(nvdec, "NvDecoder", lambda path, *, gpu: opened.setdefault("decoder", (path, gpu)))
    monkeypatch.setattr(nvenc_writer, "NvencFileWriter",
                        lambda path, *, gpu, codec, **kw: opened.setdefault("encoder", (path, gpu, codec)))
    building.open_source(plan, warn=print)
    building.open_encoder(plan, tmp_path / "o.tmp.mp4", warn=print)
    assert opened == {"decoder": (clip, 1), "encoder": (tmp_path / "o.tmp.mp4", 1, "h264")}
