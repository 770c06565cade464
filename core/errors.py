"""Errors a user reads.

Every error framepipe raises on purpose derives from `FramepipeError` and also from
the built-in exception that fits, so callers can catch either (PyAV does the same).
The CLI prints `str(exc)` as one line and exits non-zero; a traceback means a bug.
"""

from __future__ import annotations

__all__ = [
    "FramepipeError",
    "SourceNotFound",
    "InvalidSource",
    "NoVideoStream",
    "OutputExists",
    "OutputNotWritable",
    "InvalidOption",
    "ModelError",
    "UnsafeModelFile",
    "HardwareUnavailable",
    "StageError",
    "RunInterrupted",
]


class FramepipeError(Exception):
    """Base class of every error framepipe raises on purpose."""


class SourceNotFound(FramepipeError, FileNotFoundError):
    """The --source path does not exist."""


class InvalidSource(FramepipeError, ValueError):
    """The --source exists but cannot be read as a video (directory, text, corrupt header)."""


class NoVideoStream(InvalidSource):
    """The source holds no video stream, or a video stream with zero decodable frames."""


class OutputExists(FramepipeError, FileExistsError):
    """The --output exists and --overwrite was not given."""


class OutputNotWritable(FramepipeError, PermissionError):
    """The --output cannot be created or written."""


class InvalidOption(FramepipeError, ValueError):
    """A command-line option has a value that is not allowed."""


class ModelError(FramepipeError, ValueError):
    """A model name, file or scale that cannot be used."""


class UnsafeModelFile(ModelError):
    """A model file that could only be loaded by executing untrusted code (a pickle)."""


class HardwareUnavailable(FramepipeError, RuntimeError):
    """Requested hardware (GPU, NVDEC, NVENC) is not present or not usable."""


class StageError(FramepipeError, RuntimeError):
    """A pipeline stage failed; `stage` names it and `__cause__` holds the original error."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class RunInterrupted(FramepipeError, KeyboardInterrupt):
    """The run was stopped by Ctrl-C (SIGINT) or a stop request."""
