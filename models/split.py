"""Splitting a model in two stages for two devices (`--split-gpu`).

A model that can be split has `split_stages() -> (stage_a, stage_b)`: two modules over
disjoint parameters of the whole, with `stage_b(*stage_a(*inputs)) == model(*inputs)`
(bit-exact in fp32). Built-ins: RRDBNet (realesrgan-x4plus, -anime), RIFE. A built-in
brought to a smaller --scale (`ResizeOutput`) splits its inner model and resizes after
stage b. Anything else: `None` (the run stays unsplit and says so).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bicubic import ResizeOutput

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


def split_model(module: nn.Module, **where: int) -> tuple[nn.Module, nn.Module] | None:
    """(stage_a, stage_b) of `module`, or None when it has no known split point; `where` goes
    to the model's `split_stages` (e.g. RIFE's `num_blocks_a`)."""
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
