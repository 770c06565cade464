"""torch.compile's kernel cache (TORCHINDUCTOR_CACHE_DIR) in framepipe's cache folder, kept
under a size budget. Imports no torch: `main.py` decides this before torch is imported.

The folder is torch's own: what each file is and which files belong together is torch's
business, and differs between its versions. So framepipe never removes single files from it:
when it takes more than FRAMEPIPE_COMPILE_CACHE_MB (4,096 by default) at the start of a
process that no other framepipe process shares it with, the whole folder goes, and torch
starts a new one. What that costs: the next compilation of each model for each frame size is a
cold one again (a helper process makes it, the run stays eager meanwhile), and the first load of
each ahead-of-time artefact of `precompiled/` may rebuild its wrapper code (the artefacts hold
their kernels: with the folder removed, one loaded and matched eager on an H100 in 3.1 s, as
with it, and on the CPU in 8.8 s instead of 1.0, compiling its C++ wrapper; benchmarks/RESULTS.md).

Every framepipe process that uses the folder (a run, the service, a compile helper) holds a
shared `flock` on `torch-compile.lock` beside it for its life; the folder is removed only under
an exclusive one, taken without waiting: never under a process still compiling or loading.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

__all__ = ["COMPILE_CACHE_NAME", "budget_bytes", "env_megabytes", "folder_bytes", "lock_of", "share_compile_cache"]

log = logging.getLogger(__name__)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the folder is kept whole, unlimited
    fcntl = None  # type: ignore[assignment]

COMPILE_CACHE_NAME = "torch-compile"
_OLD = ".old-"  # a folder being removed: renamed away first, so torch never finds a half-removed one
_held: dict[str, int] = {}  # lock path -> the descriptor this process holds it with (for the process's life)


def env_megabytes(name: str, default_mb: int) -> int:
    """The environment variable `name`, in megabytes, as bytes (`default_mb` where unset or not
    a number; 0 at least)."""
    try:
        return max(0, int(float(os.environ.get(name, str(default_mb))) * 2**20))
    except ValueError:
        return default_mb * 2**20


def budget_bytes() -> int:
    """FRAMEPIPE_COMPILE_CACHE_MB in bytes, 4 GiB by default (x4plus-anime at 480x270 took 7 MB of
    it on an H100, a small model ~1 MB on the CPU)."""
    return env_megabytes("FRAMEPIPE_COMPILE_CACHE_MB", 4096)


def folder_bytes(folder: Path, *, stop_above: int | None = None) -> int:
    """What the files under `folder` take (their sizes; links not followed); the count stops
    once it passes `stop_above`."""
    total, pending = 0, [folder]
    while pending:
        try:
            entries = os.scandir(pending.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(Path(entry.path))
                    else:
                        total += entry.stat(follow_symlinks=False).st_size
                except OSError:
                    continue
                if stop_above is not None and total > stop_above:
                    return total
    return total


def lock_of(folder: Path) -> Path:
    """The lock file beside the cache `folder` that every framepipe process using it holds."""
    return folder.with_name(folder.name + ".lock")


def share_compile_cache(folder: Path, *, prune: bool = True) -> bool:
    """Take this process's shared lock on `folder` (torch.compile's cache), first removing the
    folder where it is over budget and no other framepipe process holds it (`prune`), then make
    it. False where it cannot be made (torch should not be pointed at it)."""
    folder = Path(folder)
    lock = lock_of(folder)
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        fd = _held.get(str(lock))
        if fd is None and fcntl is not None:
            fd = os.open(lock, os.O_RDONLY | os.O_CREAT, 0o644)
            _held[str(lock)] = fd
            if prune:
                _prune_alone(fd, folder)
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while another process removes the folder
        folder.mkdir(exist_ok=True)
    except OSError:
        log.debug("torch.compile's cache cannot be kept in %s", folder, exc_info=True)
        return False
    return True


def _prune_alone(fd: int, folder: Path) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # another framepipe process uses the folder: it stays
    try:
        _remove_if_over_budget(folder)
    except OSError:  # a folder that cannot be renamed or read: kept as it is
        log.debug("could not prune %s", folder, exc_info=True)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def _remove_if_over_budget(folder: Path) -> None:
    for old in folder.parent.glob(folder.name + _OLD + "*"):  # one a killed process did not finish removing
        shutil.rmtree(old, ignore_errors=True)
    budget = budget_bytes()
    if folder.is_dir() and folder_bytes(folder, stop_above=budget) > budget:
        old = folder.with_name(f"{folder.name}{_OLD}{os.getpid()}")
        os.rename(folder, old)
        shutil.rmtree(old, ignore_errors=True)
        log.info("torch.compile's cache %s took more than FRAMEPIPE_COMPILE_CACHE_MB (%d MB): removed", folder,
                 budget // 2**20)
