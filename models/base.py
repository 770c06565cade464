"""Model records shared by the registry and the user-file loader.

`ModelInfo` is one row of `--list-models`. `LoadedModel` is a model whose weights sit in
host memory; each worker thread calls `build(device, dtype)` once to get its own module.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from pipeline.errors import ModelError

__all__ = ["ModelInfo", "LoadedModel", "dtype_name"]

logger = logging.getLogger(__name__)

_ALL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class ModelInfo:
    """One row of `--list-models`. `num_params` is None where unknown without loading."""

    name: str
    arch: str
    scale: int
    num_params: int | None
    source: str
    cached: bool
    description: str


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to be built on devices.

    `scale`: output size = input size * scale (after any resize for a smaller --scale).
    `make_module` returns a fresh CPU fp32 module with its own copy of the weights; it is
    called under a lock, so `build` is safe from several threads at once.
    """

    name: str
    arch: str
    scale: int
    num_params: int | None = None
    source: str = ""
    dtypes: frozenset[torch.dtype] = _ALL_DTYPES
    make_module: Callable[[], nn.Module] = field(  # type: ignore[assignment]
        default=None, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.make_module is None:
            raise TypeError("LoadedModel needs make_module")
        if self.scale < 1:
            raise ValueError(f"LoadedModel scale must be >= 1, got {self.scale}")

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def build(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """A new module on `device` in `dtype`, eval mode, gradients off.

        `forward(x)`: x is (N, 3, H, W) RGB in [0, 1] of `dtype` on `device`; returns
        (N, 3, H*scale, W*scale) of the same dtype, not clamped.
        """
        if not self.supports_dtype(dtype):
            allowed = ", ".join(sorted(dtype_name(d) for d in self.dtypes))
            raise ModelError(
                f"Model {self.name} ({self.arch}) cannot run in {dtype_name(dtype)}: it "
                f"supports {allowed}. Use --precision fp32."
            )
        with self._lock:
            module = self.make_module()
        module = module.to(device=torch.device(device), dtype=dtype)
        module.eval()
        for parameter in module.parameters():  # ScriptModules lack requires_grad_()
            parameter.requires_grad_(False)
        logger.debug("built %s on %s in %s", self.name, device, dtype_name(dtype))
        return module
