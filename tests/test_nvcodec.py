"""Tests of hw/nvcodec.py with a fake PyNvVideoCodec module (real NVDEC: needs_cuda)."""

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

from hw import nvcodec
from hw.nvcodec import (NvDecoder, NvEncoder, annexb_is_keyframe, annexb_parameter_sets,
                        nvcodec_import, nvenc_options, probe_nvdec, probe_nvenc, split_annexb)
from pipeline.errors import HardwareUnavailable, InvalidOption


@pytest.fixture(autouse=True)
def _fresh_caches(request, monkeypatch):
    if "needs_cuda" not in request.keywords:  # same labels with or without a real GPU
        monkeypatch.setattr(nvcodec, "_gpu_label", lambda gpu: f"GPU {gpu}")
    nvcodec._reset_caches_for_tests()
    yield
    nvcodec._reset_caches_for_tests()


class _Enum:
    def __init__(self, *names):
        self.__members__ = {n: f"E.{n}" for n in names}


def fake_module(*, caps=None, encoder_error=None, decoder_factory=None):
    m = types.ModuleType("PyNvVideoCodec")
    m.cudaVideoCodec = _Enum("H264", "HEVC", "AV1", "VP9", "VP8", "MPEG1", "MPEG2", "MPEG4",
                             "VC1", "JPEG")
    m.cudaVideoChromaFormat = _Enum("420", "422", "444", "Monochrome")
    m.VideoPacketFlag = types.SimpleNamespace(TIMESTAMP=4, ENDOFSTREAM=1)
    m.calls = []

    def get_caps(**kw):
        m.calls.append(("caps", kw))
        if isinstance(caps, Exception):
            raise caps
        return caps(kw) if callable(caps) else dict(caps or {})
    m.GetDecoderCaps = get_caps

    class Encoder:
        def __init__(self):
            self.frames = []
        def Encode(self, frame):
            planes = frame.cuda()
            self.frames.append([p.__cuda_array_interface__ for p in planes])
            return [{"data": b"\x00\x00\x00\x01\x65au%d" % len(self.frames), "timestamp": 0,
                     "picture_type": 3}]
        def EndEncode(self):
            return [{"data": b"tail", "timestamp": 1, "picture_type": 0}, {"data": b""}]
        def GetSequenceParams(self):
            return b"\x00\x00\x00\x01\x67sps"

    def create_encoder(w, h, fmt, cpu, **opts):
        m.calls.append(("encoder", (w, h, fmt, cpu), opts))
        if encoder_error is not None:
            raise encoder_error
        return Encoder()
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
    monkeypatch.setattr(nvcodec, "nvcodec_import", lambda: module)
    return module


# ----------------------------------------------------------------------------- import

def test_import_failure_is_hardware_unavailable(monkeypatch):
    def fail(name):
        raise RuntimeError("libnvidia-encode.so.1: cannot open shared object file\nmore")
    monkeypatch.setattr(nvcodec.importlib, "import_module", fail)
    with pytest.raises(HardwareUnavailable,
                       match=r"PyNvVideoCodec is not usable: RuntimeError: libnvidia-encode"):
        nvcodec_import()
    # the failure is remembered: no second import attempt
    monkeypatch.setattr(nvcodec.importlib, "import_module", lambda n: pytest.fail("retried"))
    with pytest.raises(HardwareUnavailable, match="not usable"):
        nvcodec_import()


def test_import_success_is_cached(monkeypatch):
    mod = types.ModuleType("PyNvVideoCodec")
    monkeypatch.setattr(nvcodec.importlib, "import_module", lambda n: mod)
    assert nvcodec_import() is mod
    monkeypatch.setattr(nvcodec.importlib, "import_module", lambda n: pytest.fail("again"))
    assert nvcodec_import() is mod


def test_version_without_package(monkeypatch):
    def missing(name):
        raise nvcodec.importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(nvcodec.importlib.metadata, "version", missing)
    assert nvcodec.nvcodec_version() is None


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


def test_probe_nvdec_without_pynvvideocodec(monkeypatch):
    def fail():
        raise HardwareUnavailable("PyNvVideoCodec is not usable: ImportError: x")
    monkeypatch.setattr(nvcodec, "nvcodec_import", fail)
    assert probe_nvdec(codec="h264", bit_depth=8, chroma_format="420", width=64, height=64,
                       gpu=0) == (False, "PyNvVideoCodec is not usable: ImportError: x")


def test_probe_nvdec_bad_chroma():
    with pytest.raises(InvalidOption, match=r"Invalid chroma_format \('4:2:0'\)"):
        probe_nvdec(codec="h264", bit_depth=8, chroma_format="4:2:0", width=64, height=64, gpu=0)


def test_probe_nvdec_bad_bit_depth():
    with pytest.raises(InvalidOption, match=r"Invalid bit_depth \(9\): allowed are 8, 10, 12"):
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
    kind, (w, h, fmt, cpu), opts = m.calls[0]
    assert fmt == "NV12" and opts["codec"] == "av1" and opts["gpu_id"] == "1"


def test_probe_nvenc_unknown_codec():
    assert probe_nvenc(codec="vp9", gpu=0) == (False, "NVENC cannot encode vp9 (it encodes "
                                                      "h264, hevc, av1)")


# ----------------------------------------------------------------------------- encoder

def test_nvenc_options_quality_modes():
    base = dict(codec="hevc", gpu=0, width=1920, height=1080, frame_rate=Fraction(30000, 1001))
    assert nvenc_options(**base)["fps"] == "30" and nvenc_options(**base)["bf"] == "0"
    assert nvenc_options(**base, qp=20)["rc"] == "constqp"
    assert nvenc_options(**base, cq=23) | {} == {**nvenc_options(**base), "rc": "vbr",
                                                 "cq": "23", "bitrate": "0"}
    assert nvenc_options(**base, bitrate=8_000_000)["maxbitrate"] == "16000000"
    assert nvenc_options(**{**base, "codec": "av1"})["use_ivf_container"] == "0"
    assert nvenc_options(**base, preset="P7")["preset"] == "P7"


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
    with pytest.raises(InvalidOption, match=message):
        nvenc_options(**{**args, **change})


def test_encoder_create_failure(monkeypatch):
    use(monkeypatch, fake_module(encoder_error=RuntimeError("error 2")))
    with pytest.raises(HardwareUnavailable, match=r"NVENC on GPU 0 cannot encode h264 64x64: "
                                                  r"error 2 .*Run without --nvenc"):
        NvEncoder(gpu=0, codec="h264", width=64, height=64, frame_rate=Fraction(25))


def test_encoder_encode_flush_close(monkeypatch):
    use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25), cq=23)
    assert enc.extradata == b"\x00\x00\x00\x01\x67sps"
    frame = torch.zeros((48, 64), dtype=torch.uint8)
    monkeypatch.setattr(torch.Tensor, "device", property(lambda self: torch.device("cuda:0")))
    aus = enc.encode(frame)
    assert aus == [b"\x00\x00\x00\x01\x65au1"]
    y, uv = enc._encoder.frames[0]
    assert y["shape"] == (32, 64, 1) and uv["shape"] == (16, 32, 2) and uv["strides"] == (64, 2, 1)
    assert uv["data"][0] - y["data"][0] == 64 * 32
    assert enc.flush() == [b"tail"]
    enc.close()
    enc.close()
    with pytest.raises(HardwareUnavailable, match="NvEncoder is closed"):
        enc.encode(frame)


def test_encoder_rejects_wrong_frame(monkeypatch):
    use(monkeypatch, fake_module())
    enc = NvEncoder(gpu=0, codec="h264", width=64, height=32, frame_rate=Fraction(25))
    with pytest.raises(InvalidOption, match=r"got torch.uint8 \(32, 64\) on cpu; it takes a "
                                            r"uint8 NV12 tensor of shape \(48, 64\) on cuda:0"):
        enc.encode(torch.zeros((32, 64), dtype=torch.uint8))


def test_packets_to_bytes_accepts_1x_bytes():
    assert nvcodec._packets_to_bytes(bytearray(b"ab")) == [b"ab"]
    assert nvcodec._packets_to_bytes(None) == [] and nvcodec._packets_to_bytes(b"") == []


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
    with pytest.raises(InvalidOption, match=r"Annex-B parameter sets \('av1'\)"):
        annexb_parameter_sets(b"", codec="av1")
    with pytest.raises(InvalidOption, match=r"Annex-B keyframe test \('av1'\)"):
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
    monkeypatch.setattr(NvDecoder, "_copy_frame", lambda self, frame: frame.true_pts)


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
    assert [pts for _, pts in got] == expected
    assert [marker for marker, _ in got] == expected  # each frame got its own PTS
    assert all(h in (b"\x00\x00\x00\x01",) or h[:3] == b"\x00\x00\x01"
               for h in fake.payload_heads)  # Annex-B after the mp4toannexb filter
    assert m.calls[0][0] == "caps"


def test_decoder_drops_discarded_frames(monkeypatch, fake_gpu):
    book = nvcodec._PtsBook()
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
    with pytest.raises(InvalidOption, match=r"Invalid stream_index \(5\): video streams .* \[0\]"):
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
    clip = make_clip(tmp_path / "real.mp4", n=30, w=320, h=240)
    try:
        dec = NvDecoder(clip, gpu=0)
    except HardwareUnavailable as exc:
        pytest.skip(str(exc))
    with dec:
        got = list(dec)
    with av.open(str(clip)) as c:
        ref = [(f.pts, f.reformat(format="nv12").to_ndarray()) for f in c.decode(video=0)]
    assert [p for _, p in got] == [p for p, _ in ref]
    for (t, _), (_, a) in zip(got, ref):
        assert t.is_cuda and t.dtype == torch.uint8 and tuple(t.shape) == (360, 320)
        assert np.abs(t.cpu().numpy().astype(int) - a.astype(int)).mean() < 1.0
