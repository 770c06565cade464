"""framepipe's cache folder, without importing torch (main.py needs it before torch is imported:
the bytecode cache, torch.compile's folder)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_cache_dir"]


def default_cache_dir() -> Path:
    """$FRAMEPIPE_CACHE, else $XDG_CACHE_HOME/framepipe, else ~/.cache/framepipe."""
    if os.environ.get("FRAMEPIPE_CACHE"):
        return Path(os.environ["FRAMEPIPE_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "framepipe"
    return Path.home() / ".cache" / "framepipe"
