"""Tests of hw/nv_runtime.py, nv_probe.py, nvdec.py, nvenc.py and annexb.py with a fake
PyNvVideoCodec module (real NVDEC: needs_cuda)."""

from __future__ import annotations

import contextlib
import ctypes
import heapq
import types
from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from core.errors import HardwareUnavailable
from hw import nv_runtime, nvdec, nvenc
from hw.annexb import annexb_is_keyframe, annexb_parameter_sets, split_annexb
from hw.nv_probe import nvenc_size_problem, probe_nvdec, probe_nvenc
from hw.nv_runtime import nvcodec_import
from hw.nvdec import NvDecoder
from hw.nvenc import NvEncoder, nvenc_options
from tests import probe


@pytest.fixture(autouse=True)
def _fresh_caches(request, monkeypatch):
    if "needs_cuda" not in request.keywords:  # same labels with or without a real GPU
        monkeypatch.setattr(nv_runtime, "gpu_label", lambda gpu: f"GPU {gpu}")
    nv_runtime.reset_caches_for_tests()
    yield
    nv_runtime.reset_caches_for_tests()


class _Enum:
    def __init__(self, *names):
        self.__members__ = {n: f"E.{n}" for n in names}


def fake_module(*, caps=None, encoder_error=None, decoder_factory=None, encoder_caps=None,
                lag=0, log=None, refuse_stream=False):
    """A PyNvVideoCodec stand-in. `encoder_error`: an exception, or f(w, h, opts) -> exception
    or None; `encoder_caps`: f(kwargs) -> GetEncoderCaps dict (absent: no such function);
    `lag`: access units come out that many calls late; `log`: Encode calls are logged there."""
    m = types.ModuleType("PyNvVideoCodec")
    m.cudaVideoCodec = _Enum("H264", "HEVC", "AV1", "VP9", "VP8", "MPEG1", "MPEG2", "MPEG4",
                             "VC1", "JPEG")
    m.cudaVideoChromaFormat = _Enum("420", "422", "444", "Monochrome")
    m.VideoPacketFlag = types.SimpleNamespace(TIMESTAMP=4, ENDOFSTREAM=1)
    m.calls = []
    m.encoders = []

    def get_caps(**kw):
        m.calls.append(("caps", kw))
        if isinstance(caps, Exception):
            raise caps
        return caps(kw) if callable(caps) else dict(caps or {})
    m.GetDecoderCaps = get_caps
    if encoder_caps is not None:
        def get_encoder_caps(**kw):
            m.calls.append(("encoder_caps", kw))
            return encoder_caps(kw)
        m.GetEncoderCaps = get_encoder_caps

    class Encoder:
        def __init__(self):
            self.frames = []
            self.queued = []
            self.extra_args = []  # Encode(frame, pic_flags, sei): (pic_flags, sei) per call

        def Encode(self, frame, *flags_and_sei):
            if log is not None:
                log.append(("encoder", "Encode"))
            planes = frame.cuda()
            self.frames.append([p.__cuda_array_interface__ for p in planes])
            self.extra_args.append(flags_and_sei)
            self.queued.append({"data": b"\x00\x00\x00\x01\x65au%d" % len(self.frames), "timestamp": 0,
                                "picture_type": 3})
            out, self.queued = (self.queued[:-lag], self.queued[-lag:]) if lag else (self.queued, [])
            return out

        def EndEncode(self):
            out, self.queued = self.queued, []
            return out + [{"data": b"tail", "timestamp": 1, "picture_type": 0}, {"data": b""}]

        def GetSequenceParams(self):
            return b"\x00\x00\x00\x01\x67sps"

    def create_encoder(w, h, fmt, cpu, **opts):
        m.calls.append(("encoder", (w, h, fmt, cpu), opts))
        if refuse_stream and "cudastream" in opts:
            raise TypeError("unexpected keyword cudastream")
        error = encoder_error(w, h, opts) if callable(encoder_error) else encoder_error
        if error is not None:
            raise error
        m.encoders.append(Encoder())
        return m.encoders[-1]
    m.CreateEncoder = create_encoder

    class PacketData:
        bsl_data = 0
        bsl = 0
        pts = 0
        decode_flag = 0
    m.PacketData = PacketData
    m.CreateDecoder = decoder_factory or (lambda **kw: (_ for _ in ()).throw(RuntimeError("no")))
    return m


def use(monkeypatch, module):
    monkeypatch.setattr(nv_runtime, "nvcodec_import", lambda: module)
    return module


# ----------------------------------------------------------------------------- import

def test_import_failure_is_hardware_unavailable(monkeypatch):
    def fail(name):
        raise RuntimeError("libnvidia-encode.so.1: cannot open shared object file\nmore")
    monkeypatch.setattr(nv_runtime.importlib, "import_module", fail)
    with pytest.raises(HardwareUnavailable,
                       match=r"PyNvVideoCodec is not usable: RuntimeError: libnvidia-encode"):
        nvcodec_import()
    # the failure is remembered: no second import attempt
    monkeypatch.setattr(nv_runtime.importlib, "import_module", lambda n: pytest.fail("retried"))
    with pytest.raises(HardwareUnavailable, match="not usable"):
        nvcodec_import()


def test_import_success_is_cached(monkeypatch):
    mod = types.ModuleType("PyNvVideoCodec")
    monkeypatch.setattr(nv_runtime.importlib, "import_module", lambda n: mod)
    assert nvcodec_import() is mod
    monkeypatch.setattr(nv_runtime.importlib, "import_module", lambda n: pytest.fail("again"))
    assert nvcodec_import() is mod


def test_version_without_package(monkeypatch):
    def missing(name):
        raise nv_runtime.importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(nv_runtime.importlib.metadata, "version", missing)
    assert nv_runtime.nvcodec_version() is None


# ----------------------------------------------------------------------------- probes

CAPS_OK = {"supported": 1, "width_min": 48, "height_min": 16, "width_max": 4096,
           "height_max": 4096, "mb_num_max": 65536, "num_decoder_engines": 7}


def test_probe_nvdec_supported(monkeypatch):
    m = use(monkeypatch, fake_module(caps=CAPS_OK))
    ok, why = probe_nvdec(codec="h264", bit_depth=8, chroma_format="420", width=1920,
                          height=1080, gpu=0)
    assert ok and "decodes h264 8-bit 4:2:0 up to 4096x4096, 7 engine(s)" in why
    assert m.calls[0][1] == {"gpuid": 0, "codec": "E.H264", "chromaformat": "E.420",
                             "bitdepth": 8}


def test_probe_nvdec_unsupported_codec_from_caps(monkeypatch):
    use(monkeypatch, fake_module(caps={**CAPS_OK, "supported": 0}))
    ok, why = probe_nvdec(codec="av1", bit_depth=8, chroma_format="420", width=1920,
                          height=1080, gpu=0)
    assert not ok and why == "NVDEC on GPU 0 cannot decode av1 8-bit 4:2:0"


def test_probe_nvdec_caps_without_supported_key(monkeypatch):
    use(monkeypatch, fake_module(caps={"width_max": 0}))
    assert not probe_nvdec(codec="vp9", bit_depth=10, chroma_format="420", width=64,
                           height=64, gpu=1)[0]


def test_probe_nvdec_size_limits(monkeypatch):
    use(monkeypatch, fake_module(caps=CAPS_OK))
    ok, why = probe_nvdec(codec="h264", bit_depth=8, chroma_format="420", width=8192,
                          height=4320, gpu=0)
    assert not ok and "largest is 4096x4096" in why
    ok, why = probe_nvdec(codec="h264", bit_depth=8, chroma_format="420", width=16,
                          height=16, gpu=0)
    assert not ok and "smallest is 48x16" in why


def test_probe_nvdec_codec_nvdec_lacks(monkeypatch):
    use(monkeypatch, fake_module(caps=CAPS_OK))
    ok, why = probe_nvdec(codec="prores", bit_depth=10, chroma_format="422", width=64,
                          height=64, gpu=0)
    assert not ok and "NVDEC cannot decode prores" in why


def test_probe_nvdec_query_error(monkeypatch):
    use(monkeypatch, fake_module(caps=RuntimeError("CUDA_ERROR_NO_DEVICE")))
    ok, why = probe_nvdec(codec="hevc", bit_depth=8, chroma_format="444", width=64,
                          height=64, gpu=3)
    assert not ok and "capability query for hevc 8-bit 4:4:4 failed: CUDA_ERROR_NO_DEVICE" in why


def test_probe_nvdec_keeps_answers_not_failures(monkeypatch):
    """Each part of a video decoded by several NVDEC sessions opens a decoder: the caps query
    (tens of ms) is asked once per stream kind; a failed query is asked again next time."""
    flaky = {"fail": True}

    def caps(kw):
        if flaky["fail"]:
            raise RuntimeError("CUDA_ERROR_LAUNCH_TIMEOUT")
        return CAPS_OK

    m = use(monkeypatch, fake_module(caps=caps))
    ask = dict(codec="h264", bit_depth=8, chroma_format="420", width=1920, height=1080, gpu=0)
    assert not probe_nvdec(**ask)[0]
    flaky["fail"] = False
    assert probe_nvdec(**ask)[0] and probe_nvdec(**ask)[0]
    assert sum(1 for c in m.calls if c[0] == "caps") == 2  # the failure, then one answer kept
    assert probe_nvdec(**{**ask, "width": 8192, "height": 4320})[0] is False  # another size: asked again
    other = use(monkeypatch, fake_module(caps={**CAPS_OK, "supported": 0}))  # another module: its own answer
    assert probe_nvdec(**ask)[0] is False and other.calls


def test_probe_nvdec_without_pynvvideocodec(monkeypatch):
    def fail():
        raise HardwareUnavailable("PyNvVideoCodec is not usable: ImportError: x")
    monkeypatch.setattr(nv_runtime, "nvcodec_import", fail)
    assert probe_nvdec(codec="h264", bit_depth=8, chroma_format="420", width=64, height=64,
                       gpu=0) == (False, "PyNvVideoCodec is not usable: ImportError: x")


def test_probe_nvdec_bad_chroma():
    with pytest.raises(ValueError, match=r"Invalid chroma_format \('4:2:0'\)"):
        probe_nvdec(codec="h264", bit_depth=8, chroma_format="4:2:0", width=64, height=64, gpu=0)


def test_probe_nvdec_bad_bit_depth():
    with pytest.raises(ValueError, match=r"Invalid bit_depth \(9\): allowed are 8, 10, 12"):
        probe_nvdec(codec="h264", bit_depth=9, chroma_format="420", width=64, height=64, gpu=0)


def test_probe_nvenc_h100_like_failure_is_cached(monkeypatch):
    m = use(monkeypatch, fake_module(encoder_error=RuntimeError("PyNvEncoderCaps : ")))
    ok, why = probe_nvenc(codec="h264", gpu=0)
    assert not ok and "NVENC on GPU 0 cannot encode h264" in why and "H100" in why
    assert probe_nvenc(codec="h264", gpu=0) == (ok, why)
    assert len([c for c in m.calls if c[0] == "encoder"]) == 1


def test_probe_nvenc_success_creates_small_encoder(monkeypatch):
    m = use(monkeypatch, fake_module())
    assert probe_nvenc(codec="av1", gpu=1)[0]
    kind, (w, h, fmt, cpu), opts = m.calls[-1]
    assert (w, h) == (256, 256)
    assert fmt == "NV12" and opts["codec"] == "av1" and opts["gpu_id"] == "1"


def test_probe_nvenc_unknown_codec():
    assert probe_nvenc(codec="vp9", gpu=0) == (False, "NVENC cannot encode vp9 (it encodes "
                                                      "h264, hevc, av1)")


PASCAL_CAPS = {"h264": {"width_max": 4096, "height_max": 4096, "mb_num_max": 65536,
                        "width_min": 145, "height_min": 49, "num_encoder_engines": 2},
               "hevc": {"width_max": 8192, "height_max": 8192, "mb_num_max": 262144,
                        "width_min": 129, "height_min": 33, "num_encoder_engines": 2}}


def pascal_encoder_error(w, h, opts):
    """CreateEncoder as a P40 answers it: sizes above the codec's limit fail, AV1 fails."""
    limit = PASCAL_CAPS.get(opts["codec"])
    if limit is None:
        return RuntimeError("PyNvVideoCodec: NV_ENC_ERR_UNSUPPORTED_PARAM")
    if w > limit["width_max"] or h > limit["height_max"]:
        return RuntimeError("PyNvVideoCodec: NV_ENC_ERR_INVALID_PARAM")
    return None


@pytest.mark.parametrize("source, scale", [((1280, 720), 4), ((1920, 1080), 4)])
def test_probe_nvenc_checks_the_real_output_size(monkeypatch, source, scale):
    """Regression, issue 9: the probe created a 256x256 encoder, so a 720p/1080p source at
    x4 passed it, and CreateEncoder at the real size then aborted the run. The probe now
    checks the real size and names the codec that would fit."""
    m = use(monkeypatch, fake_module(encoder_caps=lambda kw: PASCAL_CAPS.get(kw["codec"], {}),
                                     encoder_error=pascal_encoder_error))
    w, h = source[0] * scale, source[1] * scale
    ok, why = probe_nvenc(codec="h264", gpu=0, width=w, height=h)
    assert not ok
    assert why == (f"NVENC on GPU 0 cannot encode h264 at {w}x{h}: largest is 4096x4096; NVENC's "
                   "hevc encoder takes this size: add --codec hevc to keep encoding on the GPU")
    assert not [c for c in m.calls if c[0] == "encoder" and c[2]["codec"] == "h264"]  # caps said no
    ok, why = probe_nvenc(codec="hevc", gpu=0, width=w, height=h)
    assert ok and why == f"NVENC on GPU 0 encodes hevc at {w}x{h}"
    assert ("encoder", (w, h, "NV12", False)) in [c[:2] for c in m.calls]  # really created at that size


def test_probe_nvenc_without_caps_creates_at_the_real_size(monkeypatch):
    """No GetEncoderCaps: the documented limits (h264 4096x4096) rule out 5120x2880, and an
    encoder really created at the size decides the rest (here a GPU that stops at 2048)."""
    def small_gpu(w, h, opts):
        return RuntimeError("NV_ENC_ERR_INVALID_PARAM") if max(w, h) > 2048 else None

    m = use(monkeypatch, fake_module(encoder_error=small_gpu))
    ok, why = probe_nvenc(codec="h264", gpu=0, width=5120, height=2880)
    assert not ok and "cannot encode h264 at 5120x2880: largest is 4096x4096" in why
    ok, why = probe_nvenc(codec="h264", gpu=0, width=3840, height=2160)
    assert not ok and "cannot encode h264 at 3840x2160: NV_ENC_ERR_INVALID_PARAM" in why
    assert ("encoder", (3840, 2160, "NV12", False)) in [c[:2] for c in m.calls]
    assert probe_nvenc(codec="h264", gpu=0, width=1920, height=1080)[0]


def test_probe_nvenc_macroblock_budget(monkeypatch):
    caps = {"width_max": 4096, "height_max": 4096, "mb_num_max": 8192}
    use(monkeypatch, fake_module(encoder_caps=lambda kw: caps))
    assert probe_nvenc(codec="h264", gpu=0, width=1920, height=1080)[0]  # 8160 macroblocks
    ok, why = probe_nvenc(codec="h264", gpu=0, width=2048, height=1088)
    assert not ok and "2048x1088: 8704 macroblocks, more than its 8192" in why


def test_probe_nvenc_av1_on_pascal_is_not_a_missing_engine(monkeypatch):
    """Issue 9: AV1 refused on Pascal was reported as "this GPU may have no NVENC engine"."""
    use(monkeypatch, fake_module(encoder_caps=lambda kw: PASCAL_CAPS.get(kw["codec"], {}),
                                 encoder_error=pascal_encoder_error))
    ok, why = probe_nvenc(codec="av1", gpu=0)
    assert not ok
    assert "has no AV1 encoder" in why and "Ada Lovelace" in why and "--codec hevc" in why
    assert "no NVENC engine" not in why


def test_probe_nvenc_10bit_asks_the_caps_then_creates_a_p010_encoder(monkeypatch):
    """Issue 13: --nvenc with 10-bit output. HEVC: support_10bit_encode = 1, a real "P010"
    encoder at the output size. H.264 (cap 0 before Blackwell): refused with the way out."""
    caps = {"h264": {"support_10bit_encode": 0}, "hevc": {"support_10bit_encode": 1}}
    m = use(monkeypatch, fake_module(encoder_caps=lambda kw: caps[kw["codec"]]))
    ok, why = probe_nvenc(codec="hevc", gpu=0, width=3840, height=2160, bit_depth=10)
    assert ok and why == "NVENC on GPU 0 encodes 10-bit hevc at 3840x2160"
    assert ("encoder", (3840, 2160, "P010", False)) in [c[:2] for c in m.calls]
    ok, why = probe_nvenc(codec="h264", gpu=0, width=1920, height=1080, bit_depth=10)
    assert not ok
    assert why == ("NVENC on GPU 0 cannot encode 10-bit h264 at 1920x1080: its encoder caps say no 10-bit "
                   "encoding (support_10bit_encode = 0); NVENC encodes 10-bit H.264 only from Blackwell (RTX 50) "
                   "on: --codec hevc keeps 10 bits on NVENC (HEVC Main10)")
    assert probe_nvenc(codec="h264", gpu=0, width=1920, height=1080)[0]  # 8 bits: cached apart, fine


def test_probe_nvenc_10bit_refused_by_createencoder_says_so(monkeypatch):
    """No caps query: CreateEncoder decides; P010 refused while NV12 works is not a missing engine."""
    m = use(monkeypatch, fake_module())
    real = m.CreateEncoder

    def create(w, h, fmt, cpu, **opts):
        if fmt == "P010":
            raise RuntimeError("Format P010 is not supported by current encoder.")
        return real(w, h, fmt, cpu, **opts)
    m.CreateEncoder = create
    ok, why = probe_nvenc(codec="h264", gpu=0, width=1280, height=720, bit_depth=10)
    assert not ok and why.startswith("NVENC on GPU 0 cannot encode 10-bit h264 at 1280x720: Format P010 is not "
                                     "supported by current encoder.; NVENC encodes 10-bit H.264 only from Blackwell")
    assert "no NVENC engine" not in why
    with pytest.raises(ValueError, match=r"bit_depth 12; framepipe feeds NVENC 8 or 10 bits"):
        probe_nvenc(codec="hevc", gpu=0, bit_depth=12)


def test_probe_nvenc_size_arguments():
    with pytest.raises(ValueError, match=r"give both width and height or neither"):
        probe_nvenc(codec="h264", gpu=0, width=1920)


def test_probe_nvenc_needs_a_pyav_that_muxes_without_an_encoder(monkeypatch):
    """The NVENC writer muxes through a stream PyAV opens no encoder for (PyAV 18+): with an
    older PyAV, --nvenc falls back to the CPU instead of failing at the first frame."""
    use(monkeypatch, fake_module())
    monkeypatch.setattr(av, "__version__", "16.0.1")
    ok, why = probe_nvenc(codec="h264", gpu=0)
    assert not ok
    assert why == ("NVENC on GPU 0 encodes h264, but PyAV 16.0.1 cannot mux encoded video without an "
                   "encoder of its own (needs PyAV 18 or newer: OutputContainer.add_mux_stream). Run "
                   "'pip install -U av'")


@pytest.mark.parametrize("caps, size, problem", [
    (None, (4096, 2304), None),
    (None, (5120, 2880), "largest is 4096x4096"),
    ({"width_max": 8192, "height_max": 8192}, (7680, 4320), None),
    ({"width_max": 4096, "height_max": 4096, "width_min": 145, "height_min": 49}, (128, 64),
     "smallest is 145x49"),
    ({"width_max": 4096, "height_max": 4096, "mb_num_max": 65536}, (4096, 4096), None),
])
def test_nvenc_size_problem(caps, size, problem):
    assert nvenc_size_problem(caps, codec="h264", width=size[0], height=size[1]) == problem


# ----------------------------------------------------------------------------- encoder

def test_nvenc_options_quality_modes():
    base = dict(codec="hevc", gpu=0, width=1920, height=1080, frame_rate=Fraction(30000, 1001))
    assert nvenc_options(**base)["fps"] == "29.97" and nvenc_options(**base)["bf"] == "0"
    assert nvenc_options(**base, qp=20)["rc"] == "constqp"
    cq = nvenc_options(**base, cq=23)
    assert (cq["rc"], cq["cq"], cq["bitrate"]) == ("vbr", "23", "0") and "constqp" not in cq
    assert nvenc_options(**base, bitrate=8_000_000)["maxbitrate"] == "16000000"
    assert nvenc_options(**{**base, "codec": "av1"})["use_ivf_container"] == "0"
    assert nvenc_options(**base, preset="P7")["preset"] == "P7"


def test_nvenc_options_default_quality_is_explicit_constant_qp():
    """Issue 9: with no quality option NVENC uses constant QP 28/31/25 (P/B/I), not "the
    preset default"; the options now say so instead of relying on the binding."""
    options = nvenc_options(codec="h264", gpu=0, width=64, height=64, frame_rate=Fraction(25))
    assert (options["rc"], options["constqp"]) == ("constqp", "28,31,25")


def test_nvenc_av1_quality_is_the_0_63_scale_on_nvencs_0_255_quantizer_index():
    """NVENC's AV1 constant QP is an index 0-255: --quality 28 (AV1's 0-63 scale) went through as
    index 28, near lossless, and so did the default 28,31,25."""
    av1 = dict(codec="av1", gpu=0, width=64, height=64, frame_rate=Fraction(25))
    assert nvenc_options(**av1, qp=63)["constqp"] == "255" and nvenc_options(**av1, qp=0)["constqp"] == "0"
    assert nvenc_options(**av1, qp=28)["constqp"] == "113"
    assert nvenc_options(**av1)["constqp"] == "113,125,101"
    assert nvenc_options(**{**av1, "codec": "hevc"}, qp=28)["constqp"] == "28"  # H.264/HEVC: 0-51 as it is
    with pytest.raises(ValueError, match=r"Invalid NVENC qp \(64\) for av1: allowed are 0-63"):
        nvenc_options(**av1, qp=64)


@pytest.mark.parametrize("rate, text", [(Fraction(30000, 1001), "29.97"), (Fraction(24000, 1001), "23.98"),
                                        (Fraction(60000, 1001), "59.94"), (Fraction(25), "25"),
                                        (Fraction(50, 2), "25"), (Fraction(12, 5), "2.4")])
def test_nvenc_fps_is_not_rounded_to_an_integer(rate, text):
    """Issue 9: `fps` was round(rate): 29.97 -> 30. The binding parses 2 decimals."""
    options = nvenc_options(codec="h264", gpu=0, width=64, height=64, frame_rate=rate)
    assert options["fps"] == text == nvenc.nvenc_fps_option(rate)


@pytest.mark.parametrize("codec, repeat", [("h264", "1"), ("hevc", "1"), ("av1", None)])
def test_nvenc_options_repeat_parameter_sets_and_no_colorspace(codec, repeat):
    """Issue 9: SPS/PPS (VPS) at every IDR; never the `colorspace` option (it forces full range)."""
    options = nvenc_options(codec=codec, gpu=0, width=64, height=64, frame_rate=Fraction(25))
    assert options.get("repeatspspps") == repeat
    assert "colorspace" not in options


@pytest.mark.parametrize("change, message", [
    ({"codec": "vp9"}, r"Invalid NVENC codec \('vp9'\): allowed are h264, hevc, av1"),
    ({"width": 1921}, r"Invalid NVENC frame size \(1921x1080\)"),
    ({"preset": "fast"}, r"Invalid NVENC preset \('fast'\): allowed are p1"),
    ({"tuning": "film"}, r"Invalid NVENC tuning \('film'\)"),
    ({"qp": 20, "cq": 20}, r"give one of qp, cq, bitrate, not qp and cq"),
    ({"qp": 60}, r"Invalid NVENC qp \(60\) for h264: allowed are 0-51"),
    ({"bitrate": 0}, r"Invalid NVENC bitrate \(0\)"),
    ({"frame_rate": Fraction(0)}, r"Invalid frame rate \(0\)"),
    ({"gop": 0}, r"Invalid NVENC gop \(0\)"),
])
def test_nvenc_options_rejects(change, message):
    args = dict(codec="h264", gpu=0, width=1920, height=1080, frame_rate=Fraction(25))
    with pytest.raises(ValueError, match=message):
        nvenc_options(**{**args, **change})


class FakeStream:
    """A torch.cuda.Stream stand-in that logs what the encoder asks of it."""

    def __init__(self, log, name, handle=1234):
        self.log, self.name, self.cuda_stream = log, name, handle

    def wait_event(self, event):
        self.log.append((self.name, "wait_event", event))

    def wait_stream(self, other):
        self.log.append((self.name, "wait_stream", other.name))

    def synchronize(self):
        self.log.append((self.name, "synchronize"))


class FakeEvent:
    def __init__(self, log):
        self.log = log

    def synchronize(self):
        self.log.append(("host", "event.synchronize"))


@pytest.fixture
def fake_cuda(monkeypatch):
    """CUDA streams that log, and tensors that claim to live on cuda:0 (CPU-only machine)."""
    log = []
    monkeypatch.setattr(torch.cuda, "device", lambda i: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream(log, "encoder"))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: FakeStream(log, "current"))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda:0")))
    return log


def test_encoder_create_failure(monkeypatch, fake_cuda):
    use(monkeypatch, fake_module(encoder_error=RuntimeError("error 2")))
    with pytest.raises(HardwareUnavailable, match=r"NVENC on GPU 0 cannot encode h264 64x64: "
                                                  r"error 2 .*Run without --nvenc"):
        NvEncoder(gpu=0, codec="h264", width=64, height=64, frame_rate=Fraction(25))


def test_encoder_encode_flush_close(monkeypatch, fake_cuda):
    m = use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25), cq=23)
    assert enc.extradata == b"\x00\x00\x00\x01\x67sps"
    frame = torch.zeros((48, 64), dtype=torch.uint8)
    units = enc.encode(frame)
    assert units == [nvenc.EncodedUnit(b"\x00\x00\x00\x01\x65au1", 3)] and units[0].is_idr
    y, uv = m.encoders[0].frames[0]
    assert y["shape"] == (32, 64, 1) and uv["shape"] == (16, 32, 2) and uv["strides"] == (64, 2, 1)
    assert uv["data"][0] - y["data"][0] == 64 * 32
    assert enc.flush() == [nvenc.EncodedUnit(b"tail", 0)]
    enc.close()
    enc.close()
    with pytest.raises(HardwareUnavailable, match="NvEncoder is closed"):
        enc.encode(frame)


def test_encoder_rejects_wrong_frame(monkeypatch, fake_cuda):
    use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25))
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cpu")))
    with pytest.raises(TypeError, match=r"got torch.uint8 \(32, 64\) on cpu; it takes a "
                                            r"uint8 NV12 tensor of shape \(48, 64\) on cuda:0"):
        enc.encode(torch.zeros((32, 64), dtype=torch.uint8))


def test_encoder_runs_on_our_stream_and_waits_for_the_producer(monkeypatch, fake_cuda):
    """Regression, issue 9: the worker's conversion ran on its stream and the encoder copied
    the frame on PyNvVideoCodec's own stream with nothing ordering the two. The encoder now
    gets our stream (`cudastream`), which waits on the frame's ready event before Encode."""
    m = use(monkeypatch, fake_module(log=fake_cuda))
    enc = NvEncoder(gpu=0, codec="hevc", width=64, height=32, frame_rate=Fraction(25))
    assert m.calls[0][2]["cudastream"] == 1234 == enc.stream.cuda_stream
    ready = FakeEvent(fake_cuda)
    enc.encode(torch.zeros((48, 64), dtype=torch.uint8), ready=ready)
    assert fake_cuda == [("encoder", "wait_event", ready), ("encoder", "Encode")]
    fake_cuda.clear()
    enc.encode(torch.zeros((48, 64), dtype=torch.uint8))  # no event: after the caller's stream
    assert fake_cuda == [("encoder", "wait_stream", "current"), ("encoder", "Encode")]


def test_encoder_keeps_frames_alive_until_their_access_unit_is_out(monkeypatch, fake_cuda):
    """Regression, issue 9: the frame could be freed (and its memory reused) while the
    encoder's copy of it was still queued. Frames are now held until their AU is out."""
    use(monkeypatch, fake_module(lag=2))
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25))
    frames = [torch.full((48, 64), i, dtype=torch.uint8) for i in range(5)]
    source = object()
    for i, frame in enumerate(frames):
        enc.encode(frame, hold=(source,))
        held = [item[0] for item in enc._in_flight]
        assert [int(f[0, 0]) for f in held] == list(range(max(0, i - 1), i + 1))  # 2 frames in flight
        assert all(item[-1] is source for item in enc._in_flight)
    assert len(enc.flush()) == 3 and not enc._in_flight  # the 2 lagging AUs and the fake's tail


def test_encoder_without_our_stream_waits_on_the_host(monkeypatch, fake_cuda):
    """A binding that refuses `cudastream`: the encoder still works, waiting for each frame."""
    m = use(monkeypatch, fake_module(log=fake_cuda, refuse_stream=True))
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25))
    assert enc.stream is None and "cudastream" not in m.calls[-1][2]
    ready = FakeEvent(fake_cuda)
    enc.encode(torch.zeros((48, 64), dtype=torch.uint8), ready=ready)
    assert fake_cuda == [("host", "event.synchronize"), ("encoder", "Encode")]


def test_encoder_10bit_feeds_p010_in_the_layout_the_binding_checks(monkeypatch, fake_cuda):
    """Issue 13: 10-bit output is CreateEncoder's "P010" format (no bit-depth option); each frame
    is described as PyNvVideoCodec's coerceToCudaArrayView requires (tests/nvenc_standin.py,
    `check_planes`: shapes, strides, "|u2", UV right after Y at the same pitch)."""
    from tests.nvenc_standin import check_planes

    m = use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="hevc", width=64, height=32, frame_rate=Fraction(25), bit_depth=10)
    assert m.calls[-1][1] == (64, 32, "P010", False) and "bitdepth" not in m.calls[-1][2]
    enc.encode(torch.zeros((48, 64), dtype=torch.uint16))
    y, uv = m.encoders[0].frames[0]
    assert (y["shape"], y["strides"], y["typestr"]) == ((32, 64, 1), (128, 2, 1), "|u2")
    assert (uv["shape"], uv["strides"], uv["typestr"]) == ((16, 32, 2), (128, 2, 1), "|u2")
    assert uv["data"][0] - y["data"][0] == 64 * 32 * 2
    check_planes([types.SimpleNamespace(__cuda_array_interface__=p) for p in (y, uv)], "P010", width=64, height=32)
    assert m.encoders[0].extra_args == [()]  # no HDR metadata: the plain Encode(frame)
    with pytest.raises(TypeError, match=r"got torch.uint8 \(48, 64\) on cuda:0; it takes a uint16 P010 tensor"):
        enc.encode(torch.zeros((48, 64), dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"bit_depth 12; framepipe feeds NVENC 8-bit NV12 or 10-bit P010"):
        NvEncoder(gpu=0, codec="hevc", width=64, height=32, frame_rate=Fraction(25), bit_depth=12)


def test_encoder_inserts_hdr10_sei_with_every_picture(monkeypatch, fake_cuda):
    """Issue 13: the mastering display and content light level go in through the binding's
    `Encode(frame, pic_flags, sei)`: [({"sei_type": t}, [ints])], with every picture."""
    from hw.hdr import HdrMetadata

    md = HdrMetadata(red=(Fraction(17, 25), Fraction(8, 25)), green=(Fraction(53, 200), Fraction(69, 100)),
                     blue=(Fraction(3, 20), Fraction(3, 50)), white=(Fraction(3127, 10000), Fraction(329, 1000)),
                     min_luminance=Fraction(1, 200), max_luminance=Fraction(1000), max_cll=1000, max_fall=400)
    m = use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="hevc", width=64, height=32, frame_rate=Fraction(25), bit_depth=10, hdr=md)
    for _ in range(3):
        enc.encode(torch.zeros((48, 64), dtype=torch.uint16))
    calls = m.encoders[0].extra_args
    assert len(calls) == 3 and all(c == calls[0] for c in calls)
    flags, sei = calls[0]
    assert flags == 0 and [kind for kind, _ in sei] == [{"sei_type": 137}, {"sei_type": 144}]
    assert all(type(payload) is list and all(type(b) is int for b in payload) for _, payload in sei)  # pybind11: no bytes
    assert sei[1][1] == [0x03, 0xE8, 0x01, 0x90]  # MaxCLL 1000, MaxFALL 400, big-endian u(16)
    assert bytes(sei[0][1]).hex() == "33c286c41d4c0bb884d03e803d1340420098968000000032"  # G, B, R, WP, Lmax, Lmin
    av1 = NvEncoder(gpu=0, codec="av1", width=64, height=32, frame_rate=Fraction(25), bit_depth=10, hdr=md)
    assert [kind["sei_type"] for kind, _ in av1.sei] == [2, 1]  # AV1 metadata_type HDR_MDCV, HDR_CLL


def test_encoded_units_are_dicts_and_older_bindings_joined_bytes_are_refused(monkeypatch):
    """Before 2.2 the binding joined the units it had ready (NVENC holds 3) into one bytes: one
    packet, one timestamp, for 3 frames at the end of every file. The plan's probe refuses such
    a binding (a fallback line); the writer never takes its bytes as one unit."""
    from hw import nv_probe

    assert nvenc._encoded_units(None) == [] and nvenc._encoded_units(b"") == []
    assert nvenc._encoded_units([{"data": b"x", "picture_type": 3}, {"data": b""}]) == [
        nvenc.EncodedUnit(b"x", 3)]
    with pytest.raises(HardwareUnavailable, match=r"needs 2\.2 or newer"):
        nvenc._encoded_units(bytearray(b"ab"))
    assert nv_runtime.nvenc_binding_too_old("2.2.4") is None and nv_runtime.nvenc_binding_too_old("3.0") is None
    monkeypatch.setattr(nv_runtime, "nvcodec_version", lambda: "2.0.2")
    nv_probe._nvenc_cache.clear()
    ok, why = probe_nvenc(codec="hevc", gpu=0)
    assert not ok and why.startswith("PyNvVideoCodec 2.0.2 hands several encoded frames over as one")


# ----------------------------------------------------------------------------- Annex-B

AU = (b"\x00\x00\x00\x01\x09\xf0" b"\x00\x00\x00\x01\x67\x64\x00\x1f" b"\x00\x00\x01\x68\xeb"
      b"\x00\x00\x01\x65\x88\x84\x00\x00")


def test_split_annexb():
    assert split_annexb(AU) == [b"\x09\xf0", b"\x67\x64\x00\x1f", b"\x68\xeb",
                                b"\x65\x88\x84\x00\x00"]
    assert split_annexb(b"") == []


def test_parameter_sets_and_keyframe():
    assert annexb_parameter_sets(AU, codec="h264") == (b"\x00\x00\x00\x01\x67\x64\x00\x1f"
                                                      b"\x00\x00\x00\x01\x68\xeb")
    assert annexb_is_keyframe(AU, codec="h264")
    assert not annexb_is_keyframe(b"\x00\x00\x01\x41\x9a", codec="h264")
    hevc = b"\x00\x00\x00\x01\x40\x01\x0c" b"\x00\x00\x01\x42\x01" b"\x00\x00\x01\x26\x01\xaf"
    assert annexb_parameter_sets(hevc, codec="hevc").count(b"\x00\x00\x00\x01") == 2
    assert annexb_is_keyframe(hevc, codec="hevc")  # type 19 = IDR_W_RADL


def test_annexb_helpers_reject_av1():
    with pytest.raises(ValueError, match=r"Annex-B parameter sets \('av1'\)"):
        annexb_parameter_sets(b"", codec="av1")
    with pytest.raises(ValueError, match=r"Annex-B keyframe test \('av1'\)"):
        annexb_is_keyframe(b"", codec="av1")


# ----------------------------------------------------------------------------- decoder

def make_clip(path, *, codec="libx264", n=24, fmt="yuv420p", options=None, w=64, h=48):
    with av.open(str(path), "w") as out:
        s = out.add_stream(codec, rate=25)
        s.width, s.height, s.pix_fmt = w, h, fmt
        s.options = options or {"bf": "2", "g": "12"}
        for i in range(n):
            img = np.full((h, w, 3), (i * 9) % 256, np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    return path


def pyav_pts(path):
    with av.open(str(path)) as c:
        return [f.pts for f in c.decode(video=0)]


class FakeNvdec:
    """Display-order output with a reorder delay; getPTS echoes FIFO order, like 2.2.4."""

    def __init__(self, decode_order_pts, delay=3):
        self.true_pts = list(decode_order_pts)
        self.delay, self.heap, self.fed, self.out = delay, [], 0, 0
        self.payload_heads = []

    def Decode(self, packet):
        frames = []
        if packet.bsl:
            data = ctypes.string_at(packet.bsl_data, packet.bsl)
            self.payload_heads.append(data[:4])
            k = self.fed
            self.fed += 1
            pts = self.true_pts[k]
            heapq.heappush(self.heap, (pts if pts is not None else k, pts))
        while self.heap and (len(self.heap) > self.delay or not packet.bsl):
            _, pts = heapq.heappop(self.heap)
            seq = self.out
            self.out += 1
            frames.append(types.SimpleNamespace(getPTS=lambda s=seq: s, true_pts=pts))
        return frames


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "device", lambda i: contextlib.nullcontext())
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: types.SimpleNamespace(
        cuda_stream=0, synchronize=lambda: None))
    monkeypatch.setattr(NvDecoder, "_copy_frames", lambda self, frames: [f.true_pts for f in frames])


def decode_order_pts(path):
    with av.open(str(path)) as c:
        return [p.pts for p in c.demux(video=0) if p.size]


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_decoder_matches_pyav_count_and_pts(tmp_path, monkeypatch, fake_gpu, suffix):
    clip = make_clip(tmp_path / f"b{suffix}")
    fake = FakeNvdec(decode_order_pts(clip))
    m = use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fake))
    with NvDecoder(clip, gpu=0) as dec:
        assert (dec.codec, dec.width, dec.height, dec.bit_depth) == ("h264", 64, 48, 8)
        assert dec.time_base is not None
        got = list(dec)
    expected = pyav_pts(clip)
    assert [f.pts for f in got] == expected
    assert [f.planes[0] for f in got] == expected  # each frame got its own PTS
    assert [f.index for f in got] == list(range(len(expected)))
    assert all(h in (b"\x00\x00\x00\x01",) or h[:3] == b"\x00\x00\x01"
               for h in fake.payload_heads)  # Annex-B after the mp4toannexb filter
    assert m.calls[0][0] == "caps"


def test_decoder_gives_an_avis_frames_its_decode_times_as_the_cpu_decoder_does(tmp_path, monkeypatch, fake_gpu):
    """AVI stores decode times only; FFmpeg's PTS there is the DTS plus one frame, so an AVI with
    B-frames started one frame late. NVDEC's frames take the decode times in display order, the
    same timestamps as the CPU decoder's (hw.av_decode)."""
    from hw.av_decode import PyAVDecoder

    clip = make_clip(tmp_path / "b.avi", options={"bf": "2"})
    with av.open(str(clip)) as c:
        decode_times = sorted(p.dts for p in c.demux(video=0) if p.size)
    fake = FakeNvdec(decode_order_pts(clip))
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fake))
    with NvDecoder(clip, gpu=0) as dec:
        got = [f.pts for f in dec]
    with PyAVDecoder(clip) as cpu:
        assert got == [f.pts for f in cpu] == decode_times
    assert decode_times[0] == 0


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_decoder_says_how_long_the_last_frame_lasts_as_the_cpu_decoder_does(tmp_path, monkeypatch, fake_gpu, suffix):
    """A variable frame rate's last frame is not the average one: NVDEC's decoder says its
    duration as the CPU decoder does (an MP4's last sample, a Matroska block's), so the output's
    last frame lasts as long (NVDEC said nothing: the average one)."""
    from hw.av_decode import PyAVDecoder
    from hw.clips import make_clip as make_vfr_clip

    clip = make_vfr_clip(tmp_path / f"vfr{suffix}", num_frames=20, vfr=True)
    fake = FakeNvdec(decode_order_pts(clip))
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fake))
    with NvDecoder(clip, gpu=0) as dec:
        assert dec.last_frame_seconds is None  # known once decoded to the end
        list(dec)
    with PyAVDecoder(clip) as cpu:
        pts = [f.pts for f in cpu]
        average = (pts[-1] - pts[0]) * Fraction(cpu._stream.time_base) / 19
    assert dec.last_frame_seconds == cpu.last_frame_seconds is not None
    assert abs(dec.last_frame_seconds - average) > Fraction(1, 1000)


def test_decoder_gives_an_avis_last_frame_a_frames_time_as_the_cpu_decoder_does(tmp_path, monkeypatch, fake_gpu):
    """An AVI's packets last one tick of its index (1/600 s for a 1/24 s frame): the last frame lasts
    the step between frames, on NVDEC as on the CPU."""
    from hw.av_decode import PyAVDecoder
    from tests.test_inputs import _avi_in_600ths

    clip = _avi_in_600ths(tmp_path / "a.avi")
    fake = FakeNvdec(decode_order_pts(clip))
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fake))
    with NvDecoder(clip, gpu=0) as dec:
        list(dec)
    with PyAVDecoder(clip) as cpu:
        list(cpu)
    assert dec.last_frame_seconds == cpu.last_frame_seconds == Fraction(1, 24)


@pytest.mark.needs_cuda
def test_real_nvdec_run_keeps_the_last_frames_duration_and_says_interlaced_once(tmp_path, monkeypatch):
    """End to end on NVDEC: a VFR clip's output lasts as long as the source; an interlaced source
    is said once (it was the CPU decoder's line)."""
    from hw.clips import make_clip as make_vfr_clip
    from pipeline import RunConfig
    from pipeline.runner import run

    clip = make_vfr_clip(tmp_path / "vfr.mp4", num_frames=30, width=128, height=96, vfr=True)
    out = tmp_path / "out.mp4"
    decoded = []
    original = NvDecoder._emit
    monkeypatch.setattr(NvDecoder, "_emit", lambda self, frames: (decoded.append(f) or f for f in original(self, frames)))
    try:
        stats = run(RunConfig(source=clip, output=out, model="bicubic", scale=2, nvdec=True, parallel=True))
    except HardwareUnavailable as exc:
        probe.skip_only_where_the_gpu_refuses(exc, clip)
    assert len(decoded) == 30 and probe.indices(out) == list(range(30))  # NVDEC decoded them
    with av.open(str(clip)) as a, av.open(str(out)) as b:
        src, got = a.streams.video[0], b.streams.video[0]
        assert got.duration * got.time_base == src.duration * src.time_base
    tv = tmp_path / "tv.mkv"
    with av.open(str(tv), "w") as o:
        s = o.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt = 128, 96, "yuv420p"
        s.codec_context.flags |= av.codec.context.Flags.interlaced_dct | av.codec.context.Flags.interlaced_me
        s.options = {"x264-params": "tff=1"}
        for i in range(12):
            for p in s.encode(av.VideoFrame.from_ndarray(np.full((96, 128, 3), i * 20, np.uint8), format="rgb24")):
                o.mux(p)
        for p in s.encode():
            o.mux(p)
    stats = run(RunConfig(source=tv, output=tmp_path / "tv-out.mkv", model="bicubic", scale=2, nvdec=True,
                          parallel=True))
    assert sum("interlaced" in w for w in stats.warnings) == 1 and len(decoded) == 30 + 12


class RecordingNvdec(FakeNvdec):
    """FakeNvdec that keeps the whole first payload fed (a span's: parameter sets first?)."""

    def Decode(self, packet):
        if packet.bsl and not hasattr(self, "first_payload"):
            self.first_payload = ctypes.string_at(packet.bsl_data, packet.bsl)
        return super().Decode(packet)


class _WithoutParameterSets:
    """h264_mp4toannexb as before a non-IDR keyframe (another encoder's open-GOP I picture at a
    clean cut): it adds no SPS/PPS."""

    def __init__(self, bsf):
        self.bsf = bsf

    def filter(self, packet):
        outs = []
        for out in self.bsf.filter(packet):
            nals = [n for n in split_annexb(bytes(out)) if n[0] & 0x1F not in (7, 8)]
            outs.append(av.Packet(b"".join(b"\x00\x00\x00\x01" + n for n in nals)))
        return outs


# IDR keyframes (the filter adds the parameter sets), and keyframes before which the filter adds
# none (the decoder adds them from the avcC record)
@pytest.mark.parametrize("strip", [False, True])
def test_decoder_spans_give_pyavs_frames(tmp_path, monkeypatch, fake_gpu, strip, no_stage_threads_left):
    """Issue 12: NVDEC sessions on consecutive spans (pipeline/decoders.py), each seeking to its
    keyframe, give the one decoder's frames and timestamps, renumbered from 0."""
    import threading

    from hw.keyframes import cut_spans, scan_packets
    from pipeline.decoders import SplitSource

    clip = make_clip(tmp_path / "b.mp4", n=60, options={"bf": "2", "g": "12"})
    scan = scan_packets(clip)
    spans = cut_spans(scan, span_frames=1, clean=True)
    assert len(spans) >= 5
    fakes, lock, feeding = [], threading.Lock(), {}
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fakes[-1]))

    def open_span(span):
        with lock:  # CreateDecoder runs inside NvDecoder(): hand it this span's stand-in
            fakes.append(RecordingNvdec(scan.pts[span.first_packet:span.end_packet]))
            feeding[span.index] = fakes[-1]
            decoder = NvDecoder(clip, gpu=0, span=span)
            if strip and span.index:
                decoder._bsf = _WithoutParameterSets(decoder._bsf)
            return decoder

    source = SplitSource(spans, open_span, num_decoders=3, max_frames_ahead=1000, warn=print)
    try:
        got = list(source)
    finally:
        source.close()
    assert [f.pts for f in got] == pyav_pts(clip)
    assert [f.planes[0] for f in got] == pyav_pts(clip)  # each frame its own picture's timestamp
    assert [f.index for f in got] == list(range(60))
    for k, fake in feeding.items():
        assert annexb_parameter_sets(fake.first_payload, codec="h264"), f"span {k} starts without SPS/PPS"
        assert fake.fed == spans[k].end_packet - spans[k].first_packet


class SessionLikeNvdec:
    """One NVDEC session as the hardware behaves across spans: pictures come out in display order
    after a reorder delay; the end-of-stream packet flushes them all and resets the parser, which
    then decodes nothing until a keyframe with its parameter sets; each picture is known by its
    slice data (the payload's tail), so a session fed another span's packets gives that span's
    pictures, and one fed a span without its keyframe gives nothing (as NVDEC drops them)."""

    def __init__(self, pts_by_tail, delay=3):
        self.pts_by_tail, self.delay = pts_by_tail, delay
        self.heap, self.synced, self.num_flushes, self.num_packets = [], False, 0, 0

    def Decode(self, packet):
        frames = []
        if packet.bsl:
            data = ctypes.string_at(packet.bsl_data, packet.bsl)
            self.num_packets += 1
            if not self.synced:
                self.synced = bool(annexb_parameter_sets(data, codec="h264")) and annexb_is_keyframe(data, codec="h264")
            if self.synced:
                pts = self.pts_by_tail[data[-48:]]
                heapq.heappush(self.heap, (pts, pts))
        while self.heap and (len(self.heap) > self.delay or not packet.bsl):
            frames.append(types.SimpleNamespace(true_pts=heapq.heappop(self.heap)[1]))
        if not packet.bsl:
            self.synced, self.num_flushes = False, self.num_flushes + 1
        return frames


def _pts_by_slice_tail(clip):
    with av.open(str(clip)) as c:
        stream = c.streams.video[0]
        bsf = av.bitstream.BitStreamFilterContext("h264_mp4toannexb", in_stream=stream)
        table = {}
        for packet in c.demux(stream):
            if packet.size:
                pts = packet.pts
                for out in bsf.filter(packet):
                    table[bytes(out)[-48:]] = pts
    return table


def test_spans_reuse_nvdec_sessions(tmp_path, monkeypatch, fake_gpu, no_stage_threads_left):
    """Issue 12: creating an NVDEC session costs more than a short span; the spans' decoders take
    sessions from one pool (at most one per decoder thread) and give them back flushed, and the
    frames, timestamps and order are one decoder's. A span stopped early drops its session."""
    from hw.keyframes import cut_spans, scan_packets
    from hw.nvdec import NvSessions
    from pipeline.decoders import SplitSource

    clip = tmp_path / "b.mp4"
    rng = np.random.default_rng(5)
    with av.open(str(clip), "w") as out:  # every picture different: its slice data names it
        s = out.add_stream("libx264", rate=25)
        s.width, s.height, s.pix_fmt, s.options = 64, 48, "yuv420p", {"bf": "2", "g": "12"}
        for i in range(72):
            img = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(p)
        for p in s.encode():
            out.mux(p)
    table = _pts_by_slice_tail(clip)
    assert len(table) == 72  # every picture has its own slice data
    spans = cut_spans(scan_packets(clip), span_frames=1, clean=True)
    assert len(spans) >= 6
    created = []

    def create(**kw):
        created.append(SessionLikeNvdec(table))
        return created[-1]

    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=create))
    sessions = NvSessions()

    source = SplitSource(spans, lambda span: NvDecoder(clip, gpu=0, span=span, sessions=sessions), num_decoders=2,
                         max_frames_ahead=1000, warn=print, on_close=sessions.close)
    try:
        got = list(source)
    finally:
        source.close()
    assert [f.pts for f in got] == pyav_pts(clip)
    assert [f.planes[0] for f in got] == pyav_pts(clip)  # each frame its own picture
    assert [f.index for f in got] == list(range(72))
    # 2 decoder threads (+ the first span's, opened at build): never a session per span
    assert 1 <= sessions.num_created <= 3 < len(spans) and len(created) == sessions.num_created
    assert sessions.num_created + sessions.num_reused == len(spans)
    assert sum(s.num_flushes for s in created) == len(spans)  # each span flushed its session
    assert sessions.take() is None  # closed with the source: nothing kept

    # A span read only in part keeps its session out of the pool: it may still hold pictures.
    sessions = NvSessions()
    dec = NvDecoder(clip, gpu=0, span=spans[1], sessions=sessions)
    first = next(iter(dec))
    dec.close()
    assert first.planes[0] == spans[1].start_pts
    assert sessions.take() is None and sessions.num_created == 1
    with NvDecoder(clip, gpu=0, span=spans[2], sessions=sessions) as dec:
        assert len(list(dec)) == spans[2].num_frames
    assert sessions.take() is not None  # flushed to its end: back in the pool


def test_a_session_holding_a_picture_is_not_reused(tmp_path, monkeypatch, fake_gpu):
    """A flush that leaves a packet without its picture (the session may still hold it) keeps the
    session out of the pool: its picture would come out of the next span, paired with that span's
    timestamps."""
    from hw.keyframes import cut_spans, scan_packets
    from hw.nvdec import NvSessions

    class HoldsOne(SessionLikeNvdec):
        def Decode(self, packet):
            frames = super().Decode(packet)
            return frames[:-1] if not packet.bsl and frames else frames

    clip = make_clip(tmp_path / "b.mp4", n=36, options={"bf": "2", "g": "12"})
    spans = cut_spans(scan_packets(clip), span_frames=1, clean=True)
    table = _pts_by_slice_tail(clip)
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: HoldsOne(table)))
    sessions = NvSessions()
    with NvDecoder(clip, gpu=0, span=spans[0], sessions=sessions) as dec:
        assert len(list(dec)) == spans[0].num_frames - 1
    assert sessions.take() is None


def test_config_parameter_sets_are_the_filters(tmp_path):
    """avcC/hvcC extradata unpacked to Annex-B: what h264/hevc_mp4toannexb puts before an IDR."""
    from hw.annexb import config_parameter_sets

    for codec, lib, opts in (("h264", "libx264", {"g": "12"}), ("hevc", "libx265", {"x265-params": "log-level=none"})):
        clip = make_clip(tmp_path / f"{codec}.mp4", codec=lib, options=opts)
        with av.open(str(clip)) as c:
            stream = c.streams.video[0]
            bsf = av.bitstream.BitStreamFilterContext(f"{codec}_mp4toannexb", in_stream=stream)
            first = b"".join(bytes(p) for p in bsf.filter(next(c.demux(stream))))
            sets = config_parameter_sets(stream.codec_context.extradata, codec=codec)
        assert sets == annexb_parameter_sets(first, codec=codec) and sets.count(b"\x00\x00\x00\x01") >= 2
        assert config_parameter_sets(sets, codec=codec) == sets  # Annex-B extradata as it is
    assert config_parameter_sets(b"\x01\x64", codec="h264") == b""  # cut short
    with pytest.raises(ValueError, match=r"Invalid codec for configuration records \('av1'\)"):
        config_parameter_sets(b"\x81\x00\x00\x00", codec="av1")


def test_decoder_drops_discarded_frames(monkeypatch, fake_gpu):
    book = nvdec._PtsBook()
    for pts, discard in [(-2, True), (4, False), (0, False), (2, False)]:
        book.add(pts, discard)
    assert [book.take() for _ in range(4)] == [(-2, True), (0, False), (2, False), (4, False)]
    assert book.take() == (None, False) and len(book) == 0


def test_decoder_needs_cuda(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(HardwareUnavailable, match=r"NVDEC needs CUDA GPU 0, but no CUDA GPU "
                                                  r"is visible\. Run without --nvdec"):
        NvDecoder(tmp_path / "x.mp4", gpu=0)


def test_decoder_gpu_out_of_range(tmp_path, monkeypatch, fake_gpu):
    with pytest.raises(HardwareUnavailable, match=r"only 1 GPU\(s\) are visible"):
        NvDecoder(tmp_path / "x.mp4", gpu=2)


def test_decoder_unsupported_stream(tmp_path, monkeypatch, fake_gpu):
    clip = make_clip(tmp_path / "a.mp4")
    use(monkeypatch, fake_module(caps={**CAPS_OK, "supported": 0}))
    with pytest.raises(HardwareUnavailable, match=r"cannot decode h264 8-bit 4:2:0\. Run "
                                                  r"without --nvdec"):
        NvDecoder(clip, gpu=0)


def test_decoder_rejects_444(tmp_path, monkeypatch, fake_gpu):
    clip = make_clip(tmp_path / "a.mkv", fmt="yuv444p", options={})
    use(monkeypatch, fake_module(caps=CAPS_OK))
    with pytest.raises(HardwareUnavailable, match=r"outputs 4:2:0 \(NV12/P016\) only; .* 4:4:4"):
        NvDecoder(clip, gpu=0)


def test_decoder_no_video_stream(tmp_path, monkeypatch, fake_gpu):
    path = tmp_path / "a.wav"
    with av.open(str(path), "w") as out:
        s = out.add_stream("pcm_s16le", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16",
                                           layout="mono")
        frame.sample_rate = 8000
        for p in s.encode(frame):
            out.mux(p)
    use(monkeypatch, fake_module(caps=CAPS_OK))
    with pytest.raises(HardwareUnavailable, match=r"has no video stream"):
        NvDecoder(path, gpu=0)


def test_decoder_bad_stream_index(tmp_path, monkeypatch, fake_gpu):
    clip = make_clip(tmp_path / "a.mp4")
    use(monkeypatch, fake_module(caps=CAPS_OK))
    with pytest.raises(ValueError, match=r"Invalid stream_index \(5\): video streams .* \[0\]"):
        NvDecoder(clip, gpu=0, stream_index=5)


def test_decoder_create_failure(tmp_path, monkeypatch, fake_gpu):
    clip = make_clip(tmp_path / "a.mp4")
    use(monkeypatch, fake_module(caps=CAPS_OK))  # CreateDecoder raises
    with pytest.raises(HardwareUnavailable, match=r"CreateDecoder for h264 failed: no"):
        NvDecoder(clip, gpu=0)


def test_decoder_closed_iteration(tmp_path, monkeypatch, fake_gpu):
    clip = make_clip(tmp_path / "a.mp4")
    fake = FakeNvdec(decode_order_pts(clip))
    use(monkeypatch, fake_module(caps=CAPS_OK, decoder_factory=lambda **kw: fake))
    dec = NvDecoder(clip, gpu=0)
    dec.close()
    dec.close()
    with pytest.raises(HardwareUnavailable, match="NvDecoder is closed"):
        list(dec)


def test_source_view_shape_mismatch(monkeypatch):
    dec = NvDecoder.__new__(NvDecoder)
    dec.gpu, dec.width, dec.height, dec.bit_depth = 0, 64, 48, 8
    monkeypatch.setattr(torch, "from_dlpack", lambda f: torch.zeros((10, 10), dtype=torch.uint8)[:, :5])
    with pytest.raises(HardwareUnavailable, match=r"frame of shape \(10, 5\), expected \(72, 64\)"):
        dec._source_view(object(), torch, torch.uint8, (72, 64))


@pytest.mark.needs_cuda
def test_real_nvdec_matches_pyav(tmp_path):
    """Textured frames (photos), exact match: a pitch, chroma offset or U/V swap would show."""
    from hw.clips import make_clip as make_photo_clip

    clip = make_photo_clip(tmp_path / "real.mp4", num_frames=30, width=320, height=240, photo=True)
    try:
        dec = NvDecoder(clip, gpu=0)
    except HardwareUnavailable as exc:
        probe.skip_only_where_the_gpu_refuses(exc, clip)
    with dec:
        got = list(dec)
    with av.open(str(clip)) as c:
        ref = [(f.pts, f.reformat(format="nv12").to_ndarray()) for f in c.decode(video=0)]
    assert [_pts(g) for g in got] == [p for p, _ in ref]
    for g, (_, a) in zip(got, ref):
        t = _tensor(g)
        assert t.is_cuda and t.dtype == torch.uint8 and tuple(t.shape) == (360, 320)
        np.testing.assert_array_equal(t.cpu().numpy(), a)


@pytest.mark.needs_cuda
@pytest.mark.parametrize("codec, options", [("libx264", {"g": "12", "bf": "3"}),
                                            ("libx265", {"x265-params": "keyint=12:min-keyint=12:open-gop=0:"
                                                                        "bframes=3:scenecut=0:log-level=none"})])
@pytest.mark.parametrize("pooled", [False, True])
def test_real_nvdec_sessions_on_spans_match_pyav(tmp_path, codec, options, pooled, no_stage_threads_left):
    """Issue 12: 4 NVDEC sessions on consecutive spans (closed GOPs: clean cuts) give PyAV's
    frames, pixels and timestamps, renumbered from 0; also with the sessions kept between spans
    (each flushed session decoding a later span)."""
    from hw.clips import make_clip as make_photo_clip
    from hw.keyframes import cut_spans, scan_packets
    from hw.nvdec import NvSessions
    from pipeline.decoders import SplitSource

    sessions = NvSessions() if pooled else None

    clip = make_photo_clip(tmp_path / "spans.mp4", num_frames=96, width=320, height=240, photo=True, codec=codec,
                           codec_options=options)
    scan = scan_packets(clip)
    spans = cut_spans(scan, span_frames=12, clean=True)
    assert len(spans) >= 6
    try:
        source = SplitSource(spans, lambda span: NvDecoder(clip, gpu=0, span=span, sessions=sessions),
                             num_decoders=4, max_frames_ahead=48, warn=print,
                             on_close=sessions.close if sessions is not None else None)
    except HardwareUnavailable as exc:
        probe.skip_only_where_the_gpu_refuses(exc, clip)
    try:
        got = list(source)
    finally:
        source.close()
    with av.open(str(clip)) as c:
        ref = [(f.pts, f.reformat(format="nv12").to_ndarray()) for f in c.decode(video=0)]
    assert [g.pts for g in got] == [p for p, _ in ref] and [g.index for g in got] == list(range(96))
    for g, (_, a) in zip(got, ref):
        np.testing.assert_array_equal(g.planes[0].cpu().numpy(), a)
    if pooled:
        assert sessions.num_reused > 0 and sessions.num_created <= 5, sessions


def _pts(item):
    return item.pts if hasattr(item, "pts") else item[1]


def _tensor(item):
    return item.planes[0] if hasattr(item, "planes") else item[0]


@pytest.mark.parametrize("width, height, pix_fmt, words", [
    (853, 480, "yuv420p", "the frame size 853x480 is odd"),
    (64, 47, "yuv420p", "the frame size 64x47 is odd"),
    (64, 48, "yuv444p", "takes 4:2:0 video, and this one is 4:4:4"),
])
def test_nvdec_is_not_planned_where_its_frames_would_not_fit_framepipes_copy(tmp_path, monkeypatch, width, height,
                                                                           pix_fmt, words):
    """NVDEC pads a 4:2:0 frame to an even width (NvDecoder.h: `(m_nWidth + 1) & ~1`) and gives
    ceil(H/2) chroma rows, and framepipe's copy takes NV12/P016 of the stream's own size: an odd
    853x480 failed mid-run after the plan said NVDEC was fine. NVDEC on Turing+ decodes 4:4:4, which
    NvDecoder refused mid-run too. The plan decodes them on the CPU, with one line."""
    from hw.av_source import probe_source
    from pipeline import RunConfig
    from pipeline import plan as planning

    odd = width % 2 or height % 2  # (x264 takes no odd 4:2:0 size: FFV1 does, in Matroska)
    clip = make_clip(tmp_path / ("c.mkv" if odd else "c.mp4"), w=width, h=height, fmt=pix_fmt, n=2,
                     codec="ffv1" if odd else "libx264")
    asked = []
    monkeypatch.setattr(planning, "_probe", lambda name, **kw: asked.append(name) or (True, ""))
    notes: list[str] = []
    source = probe_source(clip)
    use_nvdec, _ = planning._plan_codecs(RunConfig(source=clip, nvdec=True), source, (torch.device("cuda", 0),),
                                          notes, output_size=(width * 4, height * 4), encode=False)
    assert not use_nvdec and asked == [] and len(notes) == 1 and words in notes[0], notes
    assert notes[0].endswith("decoding on the CPU with PyAV instead.")
    notes.clear()
    even = probe_source(make_clip(tmp_path / "e.mp4", n=2))
    assert planning._plan_codecs(RunConfig(source=clip, nvdec=True), even, (torch.device("cuda", 0),), notes,
                                 output_size=(256, 192), encode=False)[0] and notes == []
