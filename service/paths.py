"""The folders a service job may read and write (`serve --root DIR`, repeatable), and nothing else.

A path from a client is taken only as a plain file path inside a root, after every symlink
is resolved: `../` that climbs out, an absolute path elsewhere, a symlink pointing outside, an
FFmpeg protocol or URL (`file:`, `pipe:`, `concat:`, `http://`), a NUL byte or a device file
are all refused with one line saying why. The pipeline's own checks (never the source as the
output, never an existing file without `overwrite`) still apply on top of this.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from core.errors import InvalidOption, PathRefused

__all__ = ["Roots", "PathRefused"]

# `proto:` (two or more letters: a Windows drive letter is not an FFmpeg protocol) or `x://`.
_PROTOCOL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")


class Roots:
    """The allowed folders, resolved once when the server starts."""

    def __init__(self, folders: list[Path], *, private: list[Path] = ()) -> None:
        if not folders:
            raise InvalidOption("serve needs at least one --root DIR: the folders jobs may read from and write to.")
        resolved = []
        for folder in folders:
            real = Path(os.path.realpath(folder))
            if not real.is_dir():
                raise InvalidOption(f"--root {str(folder)!r} is not a folder.")
            resolved.append(real)
        self.folders = tuple(resolved)
        # The service's own files (its job database): inside a root, but never a job's to touch.
        self.private = tuple(Path(os.path.realpath(p)) for p in private)

    def __iter__(self):
        return iter(self.folders)

    def resolve(self, text: str, *, what: str, must_exist: bool) -> Path:
        """`text` (absolute, or relative to the first root) as a real path inside a root."""
        if not isinstance(text, str) or not text.strip():
            raise PathRefused(f"{what}: an empty path.")
        if "\x00" in text:
            raise PathRefused(f"{what}: the path holds a NUL byte.")
        if _PROTOCOL.match(text):
            raise PathRefused(f"{what} {text!r}: protocols and URLs are not accepted, only paths inside the roots.")
        path = Path(text)
        if not path.is_absolute():
            path = self.folders[0] / path
        try:
            real = self._confine(path, text=text, what=what)
            if must_exist:
                if not real.exists():
                    raise PathRefused(f"{what} {text!r} does not exist.")
                if not (real.is_file() or real.is_dir()):
                    raise PathRefused(f"{what} {text!r} is not a file or a folder.")
            elif real.exists() and not (real.is_file() or real.is_dir()):
                raise PathRefused(f"{what} {text!r} is not a regular file.")
        except OSError as exc:  # a name too long for the file system, a folder it may not enter ...
            raise PathRefused(f"{what} {text[:80]!r}{'...' if len(text) > 80 else ''}: {exc.strerror or exc}.") from None
        return real

    def confined(self, path: Path, *, what: str) -> Path:
        """The real path of `path` (found on disk: a folder's entry, a picture of a sequence),
        PathRefused when it leads out of the roots or into the service's own folder."""
        return self._confine(Path(path), text=str(path), what=what)

    def _confine(self, path: Path, *, text: str, what: str) -> Path:
        # realpath resolves every symlink on the way, including a last component that does not
        # exist yet (then the parent's real location decides).
        real = Path(os.path.realpath(path))
        if not any(real == root or root in real.parents for root in self.folders):
            raise PathRefused(f"{what} {text!r} is outside the folders this server may use "
                              f"({', '.join(str(r) for r in self.folders)}).")
        if any(real == p or p in real.parents for p in self.private):
            raise PathRefused(f"{what} {text!r} is inside the service's own folder ({self.private[0]}).")
        return real

    def relative(self, path: Path) -> str:
        """How a path is shown to clients: relative to its root when inside the first one."""
        try:
            return str(path.relative_to(self.folders[0]))
        except ValueError:
            return str(path)
