"""Frame interpolation's bookkeeping, shared by the worker and the split stages.

A batch of interpolation `Window`s (each frame and the next) holds B+1 distinct frames for B
windows: each goes through the model once (`distinct_frames`), the pairs are cut out of that
result (`pairs`), the made frames of a scene cut are replaced by the pair's first frame
(`repeat_on_cut`), everything is put in output order (`in_output_order`), and each window's
result carries its made frames as `extra`, timestamped k/N of the way to the next frame in
the output time base (the source's / N), so every timestamp is a whole number
(`window_results`). RGBA pictures keep their alpha, in the same order (`alpha_in_output_order`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from core.frame import Frame, Window
from pipeline.messages import OutputFormat, ResultItem

__all__ = ["distinct_frames", "pairs", "timesteps", "repeat_on_cut", "in_output_order", "alpha_in_output_order",
           "window_results"]


def distinct_frames(windows: Sequence[Window]) -> tuple[list[Frame], dict[int, int]]:
    """The batch's frames, each once, in index order, and each index's position among them."""
    unique: dict[int, Frame] = {}
    for w in windows:
        for f in w.frames:
            unique.setdefault(f.index, f)
    order = sorted(unique)
    return [unique[i] for i in order], {index: k for k, index in enumerate(order)}


def timesteps(factor: int) -> list[float]:
    return [k / factor for k in range(1, factor)]


def pairs(windows: Sequence[Window], out: torch.Tensor, pos: dict[int, int]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first frames, second frames) of the windows that have a next frame, or None."""
    both = [w for w in windows if len(w.frames) > 1]
    if not both:
        return None
    return out[[pos[w.frames[0].index] for w in both]], out[[pos[w.frames[1].index] for w in both]]


def repeat_on_cut(made: torch.Tensor, first: torch.Tensor, cut: torch.Tensor) -> int:
    """Scene cuts: the pair's first frame instead of its made frames (in place); how many."""
    if not bool(cut.any()):
        return 0
    made[cut] = first[cut].unsqueeze(1).expand(-1, made.shape[1], -1, -1, -1).to(made.dtype)
    return int(cut.sum())


def in_output_order(windows: Sequence[Window], out: torch.Tensor, pos: dict[int, int],
                    made: torch.Tensor | None) -> torch.Tensor:
    """Every frame out, in order: each window's own frame, then the frames made after it."""
    stack, k = [], 0
    for w in windows:
        stack.append(out[pos[w.index]].unsqueeze(0))
        if len(w.frames) > 1:
            stack.append(made[k])
            k += 1
    return torch.cat(stack)


def alpha_in_output_order(windows: Sequence[Window], alpha: torch.Tensor, pos: dict[int, int], factor: int,
                          cut: torch.Tensor | None) -> torch.Tensor:
    """The alpha planes (one per distinct frame) to go with `in_output_order`: a made frame's
    is its neighbours' cross-faded k/N of the way (a matte is not a picture: no motion is
    estimated on it), a scene cut's the pair's first frame's."""
    made, both = None, pairs(windows, alpha, pos)
    if both is not None:
        first, second = both
        made = torch.stack([first * (1 - t) + second * t for t in timesteps(factor)], dim=1)
        if cut is not None:
            repeat_on_cut(made, first, cut)
    return in_output_order(windows, alpha, pos, made)


def window_results(windows: Sequence[Window], planes: Sequence[tuple[Any, ...]], factor: int, fmt: OutputFormat,
                   worker: str) -> list[ResultItem]:
    """One `ResultItem` per window from the converted frames of `in_output_order`."""
    results, at = [], 0
    for w in windows:
        own = planes[at]
        at += 1
        extra: tuple = ()
        if len(w.frames) > 1:
            step = w.frames[1].pts - w.pts
            extra = tuple((w.pts * factor + step * j, planes[at + j - 1]) for j in range(1, factor))
            at += factor - 1
        results.append(ResultItem(index=w.index, pts=w.pts * factor, fmt=fmt, planes=own, worker=worker, extra=extra))
    return results
