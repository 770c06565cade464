"""framepipe's cache folder, and what names a video or framepipe's own output, without importing
torch (main.py needs them before torch is imported: the bytecode cache, torch.compile's folder, a
folder of videos)."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["VIDEO_SUFFIXES", "default_cache_dir", "is_own_output_name"]

# What a folder of videos offers as videos (the service's folder jobs, the command line's batch)
VIDEO_SUFFIXES = frozenset({".mp4", ".mkv", ".mov", ".avi", ".webm", ".m4v", ".ts", ".mts", ".m2ts", ".flv", ".wmv",
                            ".mpg", ".mpeg", ".3gp", ".ogv"})
# framepipe's own output names (`pipeline.default_output_path`: `<stem>.<model>-x<scale><suffix>`,
# and a stopped run's `<stem>.partial<suffix>` or `.partial-N`, pipeline.segments): a folder source
# never takes them as inputs.
_OWN_OUTPUT_STEM = re.compile(r"(\.[A-Za-z0-9_.-]+-x\d+|\.fps\d+x)(\.partial(-\d+)?)?$")


def is_own_output_name(path: Path) -> bool:
    """Whether `path` is named as framepipe names its outputs (`_OWN_OUTPUT_STEM`)."""
    return bool(_OWN_OUTPUT_STEM.search(Path(path).stem))


def refuse_shared_outputs(pairs: list[tuple[Path, Path | None]], *, apart: str) -> None:
    """Two videos of one batch (or service request) never write one file (`a.avi` and `a.ts`
    both name `a.<model>-xN.mp4`): refused before any runs (OutputExists), rather than one output
    replacing the other, or the second skipped as done. `apart`: how to run them instead."""
    from core.errors import OutputExists

    seen: dict[Path, Path] = {}
    for src, out in pairs:
        if out is None:
            continue
        if out in seen:
            raise OutputExists(f"{seen[out].name!r} and {src.name!r} would both be written to {str(out)!r}: "
                               f"rename one of them, or {apart}.")
        seen[out] = src


def default_cache_dir() -> Path:
    """$FRAMEPIPE_CACHE, else $XDG_CACHE_HOME/framepipe, else ~/.cache/framepipe."""
    if os.environ.get("FRAMEPIPE_CACHE"):
        return Path(os.environ["FRAMEPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "framepipe"
    return Path.home() / ".cache" / "framepipe"
