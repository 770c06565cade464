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
# and a stopped run's `<stem>.partial<suffix>`): a folder source never takes them as inputs.
_OWN_OUTPUT_STEM = re.compile(r"(\.[A-Za-z0-9_.-]+-x\d+|\.fps\d+x)(\.partial)?$")


def is_own_output_name(path: Path) -> bool:
    """Whether `path` is named as framepipe names its outputs (`_OWN_OUTPUT_STEM`)."""
    return bool(_OWN_OUTPUT_STEM.search(Path(path).stem))


def default_cache_dir() -> Path:
    """$FRAMEPIPE_CACHE, else $XDG_CACHE_HOME/framepipe, else ~/.cache/framepipe."""
    if os.environ.get("FRAMEPIPE_CACHE"):
        return Path(os.environ["FRAMEPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "framepipe"
    return Path.home() / ".cache" / "framepipe"
