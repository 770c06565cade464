"""Model records shared by the registry and the user-file loader.

`ModelInfo` is one row of `--list-models`. `LoadedModel` is a model whose weights sit in
host memory; each worker thread calls `build(device, dtype)` once to get its own module.
A model's `kind` says how it is called: "spatial" (one frame in, one out: the upscalers),
"interpolate" (two frames in, the frames between them out: RIFE, blend) or "restore" (a window
of 2r+1 frames in, the middle one restored out: temporal-median).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from core.errors import ModelError, ModelOutputError

__all__ = ["ModelInfo", "LoadedModel", "ModelKind", "MODEL_KINDS", "FRAMES_IN", "dtype_name", "check_model_output",
           "all_finite", "not_finite_error"]

logger = logging.getLogger(__name__)

_ALL_DTYPES = frozenset({torch.float32, torch.float16, torch.bfloat16})
_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

ModelKind = Literal["spatial", "interpolate", "restore"]
MODEL_KINDS: tuple[ModelKind, ...] = ("spatial", "interpolate", "restore")
# Frames in per window: 0 for a spatial model (one frame at a time, not temporal); 2 for an
# interpolation model (each frame and the next; it makes any number of frames between them);
# for a restoration model, 2 x `radius` + 1 (`LoadedModel.radius`).
FRAMES_IN: dict[ModelKind, int] = {"spatial": 0, "interpolate": 2, "restore": 3}


def dtype_name(dtype: torch.dtype) -> str:
    return _DTYPE_NAMES.get(dtype, str(dtype).removeprefix("torch."))


@dataclass(frozen=True)
class ModelInfo:
    """One row of `--list-models`. `num_params` is None where unknown without loading.
    `kind` and `temporal` as in `LoadedModel`."""

    name: str
    arch: str
    scale: int
    num_params: int | None
    source: str
    cached: bool
    description: str
    kind: ModelKind = "spatial"

    @property
    def temporal(self) -> int:
        return FRAMES_IN[self.kind]


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to be built on devices.

    `scale`: output size = input size * scale (after any resize for a smaller --scale); 1 for
    an interpolation model. `kind`: "spatial" or "interpolate" (how `build`'s module is
    called); `temporal`: the frames in per window (`FRAMES_IN`: 0 spatial, 2 interpolate: each
    frame and the next, with N-1 frames made between them for --interpolate N).
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
    kind: ModelKind = "spatial"
    radius: int = 0  # "restore": frames before and after the one restored; the module takes (B, 2r+1, 3, H, W)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.make_module is None:
            raise TypeError("LoadedModel needs make_module")
        if self.scale < 1:
            raise ValueError(f"LoadedModel scale must be >= 1, got {self.scale}")
        if self.kind not in FRAMES_IN:
            raise ValueError(f"LoadedModel kind must be one of {', '.join(MODEL_KINDS)}, got {self.kind!r}")
        if self.kind == "interpolate" and self.scale != 1:
            raise ValueError(f"an interpolation LoadedModel has scale 1, got {self.scale}")
        if (self.kind == "restore") != (self.radius > 0):
            raise ValueError(f"a restoration LoadedModel (only) has a radius >= 1, got {self.kind} radius {self.radius}")

    @property
    def temporal(self) -> int:
        return 2 * self.radius + 1 if self.kind == "restore" else FRAMES_IN[self.kind]

    def supports_dtype(self, dtype: torch.dtype) -> bool:
        return dtype in self.dtypes

    def build(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """A new module on `device` in `dtype`, eval mode, gradients off.

        Spatial: `forward(x)`: x is (N, 3, H, W) RGB in [0, 1] of `dtype` on `device`; returns
        (N, 3, H*scale, W*scale) of the same dtype, not clamped.
        Interpolate: `forward(img0, img1, timesteps)`: two (N, 3, H, W) batches as above and T
        floats in (0, 1); returns (N, T, 3, H, W) of the same dtype, in [0, 1].
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


def check_model_output(name: str, x: torch.Tensor, y: object, *, scale: int, check_values: bool = True) -> torch.Tensor:
    """`y`, the model's output for input `x` (N, 3, H, W), checked against the contract:
    a floating tensor (N, 3, H*scale, W*scale) of finite values. Anything else raises
    `ModelOutputError` naming what came back: never resized, padded or written as garbage.
    `check_values=False` skips the NaN/Inf scan (it reads the whole tensor)."""
    n, _, height, width = x.shape
    expected = (n, 3, height * scale, width * scale)
    if not isinstance(y, torch.Tensor):
        raise ModelOutputError(
            f"model {name} returned a {type(y).__name__}, not a tensor: framepipe needs forward(x) -> "
            f"a float tensor of shape {expected}"
        )
    if not (y.is_floating_point()):
        raise ModelOutputError(
            f"model {name} returned {str(y.dtype).removeprefix('torch.')} values: framepipe needs floating RGB in "
            "[0, 1]. Make the model return float (divide integer output by 255)"
        )
    if tuple(y.shape) != expected:
        got = tuple(y.shape)
        if len(got) == 4 and got[0] != n:
            detail = f"{got[0]} frame(s) for a batch of {n}"
        else:
            detail = f"shape {got} for input {tuple(x.shape)}, expected {expected} (scale {scale})"
        raise ModelOutputError(
            f"model {name} returned {detail}: framepipe never resizes or pads a model's output. Check the model's "
            "scale (--scale) and that it maps every input frame to one output frame"
        )
    if check_values and y.numel() and not bool(all_finite(y)):
        raise not_finite_error(name, y.dtype)
    return y


def all_finite(y: torch.Tensor) -> torch.Tensor:
    """Whether every value of `y` is finite, as a 0-dim bool tensor on `y`'s device: queued, not
    read (reading it waits for the device; the worker's overlapped path reads it once a batch).
    Two reductions (NaN propagates through min/max), not isfinite(y): that would allocate a
    bool the size of the output, 1.5 GiB for one 8K frame at x4."""
    if not y.numel():
        return torch.ones((), dtype=torch.bool, device=y.device)
    return torch.isfinite(torch.stack(torch.aminmax(y))).all()


def not_finite_error(name: str, dtype: torch.dtype) -> ModelOutputError:
    """The line for a model that made NaN or infinite values, with the hint that fits the precision
    it ran in (an fp16 overflow; in fp32 the model itself)."""
    if dtype == torch.float16:
        hint = "in fp16 this is usually an overflow; try --precision fp32 (or bf16)"
    elif dtype == torch.bfloat16:
        hint = "in bf16 this may be the lost precision; try --precision fp32"
    else:
        hint = f"it ran in {str(dtype).removeprefix('torch.')}, so not for want of precision: check the model's weights"
    return ModelOutputError(f"model {name} produced NaN or infinite values: {hint}")
