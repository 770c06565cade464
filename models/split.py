"""Splitting a model in two stages for two devices (`--split-gpu`).

A model that can be split has `split_stages() -> (stage_a, stage_b)`: two modules over
disjoint parameters of the whole, with `stage_b(*stage_a(*inputs)) == model(*inputs)`
(bit-exact in fp32). Built-ins: RRDBNet (realesrgan-x4plus, -anime), RIFE. A built-in
brought to a smaller --scale (`ResizeOutput`) splits its inner model and resizes after
stage b. User files: spandrel's ESRGAN (RRDBNet, the same layout as framepipe's) where the
split is obvious (no pixel-unshuffle, no custom call): the same cut as the built-in, the
loader's padding before stage a and its crop after stage b. Anything else: `None` (the run
stays unsplit and says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bicubic import ResizeOutput
from .user import pad_to_requirements

__all__ = ["split_model", "parameters_disjoint"]


class _ResizeAfter(nn.Module):
    """Stage b of a `ResizeOutput` model: the inner model's stage b, then the same bicubic resize
    (to `scale / native` of the inner output, i.e. `scale` x the input)."""

    def __init__(self, stage_b: nn.Module, *, scale: int, native: int) -> None:
        super().__init__()
        self.stage_b, self.scale, self.native = stage_b, scale, native

    def forward(self, *inter: torch.Tensor) -> torch.Tensor:
        y = self.stage_b(*inter)
        height, width = y.shape[-2] // self.native, y.shape[-1] // self.native
        return F.interpolate(y, size=(height * self.scale, width * self.scale), mode="bicubic", align_corners=False)


class _PadThen(nn.Module):
    """A user model's stage a: the loader's padding (models/user.py), then the stage; the input
    size travels on as an empty (0, H, W) tensor (its shape, no bytes)."""

    def __init__(self, wrapper: nn.Module, stage: nn.Module) -> None:
        super().__init__()
        self.requirements, self.stage = wrapper.requirements, stage

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        height, width = x.shape[-2:]
        x = pad_to_requirements(self.requirements, x)
        return (*self.stage(x), x.new_empty((0, height, width)))


class _ThenCrop(nn.Module):
    def __init__(self, stage: nn.Module, *, scale: int) -> None:
        super().__init__()
        self.stage, self.scale = stage, scale

    def forward(self, *inter: torch.Tensor) -> torch.Tensor:
        *inter, size = inter
        y = self.stage(*inter)
        return y[..., : size.shape[1] * self.scale, : size.shape[2] * self.scale]


def _user_esrgan(module: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    """A spandrel ESRGAN (RRDBNet) in the user-model wrapper, cut like the built-in RRDBNet."""
    from .rrdb import _Back, _Front, split_point

    inner = getattr(module, "model", None)
    call = getattr(module, "call_fn", None)
    default_call = call is None or getattr(call, "__qualname__", "").startswith("ImageModelDescriptor.__init__")
    if (type(module).__name__ != "_SpandrelModule" or type(inner).__name__ not in ("RRDBNet", "ESRGAN")
            or not default_call or getattr(inner, "shuffle_factor", None)):
        return None
    layers = getattr(inner, "model", None)
    body = getattr(layers[1], "sub", None) if isinstance(layers, nn.Sequential) and len(layers) > 2 else None
    if not isinstance(body, nn.Sequential) or not isinstance(layers[0], nn.Conv2d):
        return None
    k = split_point(len(body) - 1, scale=module.scale, nf=layers[0].out_channels)
    return _PadThen(module, _Front(layers[0], body[:k])), _ThenCrop(_Back(body[k:], layers[2:]), scale=module.scale)


def split_model(module: nn.Module, **where: int) -> tuple[nn.Module, nn.Module] | None:
    """(stage_a, stage_b) of `module`, or None when it has no known split point; `where` goes
    to the model's `split_stages` (e.g. RIFE's `num_blocks_a`)."""
    user = _user_esrgan(module)
    if user is not None:
        return user
    if isinstance(module, ResizeOutput):
        inner = split_model(module.inner, **where)
        if inner is None:
            return None
        native = getattr(module.inner, "scale", None) or getattr(module.inner, "upscale", None) or 4
        return inner[0], _ResizeAfter(inner[1], scale=module.scale, native=int(native))
    split = getattr(module, "split_stages", None)
    if split is None:
        return None
    return split(**where)


def parameters_disjoint(a: nn.Module, b: nn.Module) -> bool:
    """The two stages hold no parameter in common (each can move to its own device)."""
    ids = {id(p) for p in a.parameters()}
    return not any(id(p) in ids for p in b.parameters())
