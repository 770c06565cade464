"""Errors a user reads.

Every error framepipe raises on purpose derives from `FramepipeError` and also from
the built-in exception that fits, so callers can catch either (PyAV does the same).
The CLI prints `str(exc)` as one line and exits non-zero; a traceback means a bug.
"""

from __future__ import annotations

import re

__all__ = [
    "FramepipeError",
    "PathRefused",
    "SourceNotFound",
    "InvalidSource",
    "DamagedPicture",
    "AnimatedPicture",
    "NoVideoStream",
    "OutputExists",
    "OutputNotWritable",
    "OutputBusy",
    "UnsafeOutput",
    "DiskFull",
    "InvalidOption",
    "ModelError",
    "UnsafeModelFile",
    "CodeModelRefused",
    "JobEnded",
    "NoJobOutput",
    "HardwareUnavailable",
    "ModelOutputError",
    "StageError",
    "RunInterrupted",
    "one_line",
]


class FramepipeError(Exception):
    """Base class of every error framepipe raises on purpose.

    `exit_code` is the CLI's exit status for it: 2 for bad input (the default), 1 for a run
    that started and failed, 128 + the signal number for a run stopped by a signal."""

    exit_code = 2


class SourceNotFound(FramepipeError, FileNotFoundError):
    """The --source path does not exist."""


class InvalidSource(FramepipeError, ValueError):
    """The --source exists but cannot be read as a video (directory, text, corrupt header)."""


class AnimatedPicture(InvalidSource):
    """A picture file among pictures that holds several (an animated WebP, an APNG, a GIF named as
    a picture): not damaged, and not taken. `kind`: "WebP", "PNG (APNG)", "GIF"."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class DamagedPicture(InvalidSource):
    """A picture of a sequence, after the first, cannot be read: the run stops there (exit 1, as
    a run that started), the pictures before it written."""

    exit_code = 1


class NoVideoStream(InvalidSource):
    """The source holds no video stream, or a video stream with zero decodable frames."""


class OutputExists(FramepipeError, FileExistsError):
    """The --output exists and --overwrite was not given."""


class OutputNotWritable(FramepipeError, PermissionError):
    """The --output cannot be created or written."""


class OutputBusy(FramepipeError, FileExistsError):
    """Another framepipe run is writing the same output file right now."""


class UnsafeOutput(FramepipeError, PermissionError):
    """A path the run would write is the source (or another file of the run) under
    another name: a hard link, a symlink, the same path spelled differently."""


class DiskFull(FramepipeError, OSError):
    """The output's file system is (nearly) full, or refused a write: the run stopped."""

    exit_code = 1


class InvalidOption(FramepipeError, ValueError):
    """A command-line option has a value that is not allowed."""


class PathRefused(InvalidOption):
    """A service client's path is not a plain path inside the server's roots (service/paths.py)."""


class ModelError(FramepipeError, ValueError):
    """A model name, file or scale that cannot be used."""


class UnsafeModelFile(ModelError):
    """A model file that could only be loaded by executing untrusted code (a pickle)."""


class CodeModelRefused(UnsafeModelFile):
    """A model file that is a program (TorchScript), not trusted to run (`--trust-model`)."""


class JobEnded(FramepipeError):
    """The service: an operation the job's state does not allow (409): a cancel of a job that has
    ended, a retry of one that has not failed, the output of one still running."""


class NoJobOutput(FramepipeError, LookupError):
    """The service: a job has no output file to download (404): none written, or gone or replaced since."""


class HardwareUnavailable(FramepipeError, RuntimeError):
    """Requested hardware (GPU, NVDEC, NVENC) is not present or not usable."""

    exit_code = 1


class ModelOutputError(FramepipeError, RuntimeError):
    """The model returned something that is not a picture batch of the expected shape
    (wrong size, fewer frames, an integer tensor, NaN/Inf)."""

    exit_code = 1


class StageError(FramepipeError, RuntimeError):
    """A pipeline stage failed; `stage` names it and `__cause__` holds the original error."""

    exit_code = 1

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class RunInterrupted(KeyboardInterrupt):
    """The run was stopped by a signal (SIGINT/Ctrl-C, SIGTERM, SIGHUP) or a stop request.

    `signal_name` names the signal ("SIGTERM"), or is "" for Ctrl-C and library stops.

    A KeyboardInterrupt and not an Exception (nor a FramepipeError): main.py's signal handler
    raises it in the main thread between any two bytecodes, and an `except Exception` there (in
    torch's own import, in a library's fallback) would otherwise catch the stop, and the run went
    on to finish with exit 0."""

    def __init__(self, message: str = "", *, signal_name: str = "", signal_number: int = 2) -> None:
        super().__init__(message)
        self.signal_name = signal_name
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number  # the shell's convention: 130 SIGINT, 143 SIGTERM, 129 SIGHUP


_ERROR_LINE = re.compile(r"^\s*[A-Za-z_.]*(Error|Exception|Interrupt):\s*(?P<text>.+)$")


def one_line(exc: BaseException, *, limit: int = 300) -> str:
    """One line that says what went wrong in `exc`, for a user.

    Multi-line messages (TorchScript's interpreter trace, FFmpeg's, torch's advice) are
    reduced to their most telling line: the last `SomethingError: text` line when there
    is one (TorchScript puts the real error last), else the first non-empty line."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if len(lines) > 1:
        for line in reversed(lines):
            match = _ERROR_LINE.match(line)
            if match:
                return match.group("text")[:limit]
    if lines[0].endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for X:" and what erred
        return f"{lines[0]} {lines[1]}"[:limit]
    return lines[0][:limit]
