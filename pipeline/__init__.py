"""framepipe's streaming pipeline: stages, wiring, configuration, messages and errors.

    reader -> WorkQueue -> worker-gpu0 / worker-gpu1 / ... -> collector -> writer

`run(RunConfig(...))` is the one entry point; `main.py` builds the config from flags.
"""

from pipeline.errors import (  # first: hw/ and models/ import it while this package loads
    FramepipeError,
    HardwareUnavailable,
    InvalidOption,
    InvalidSource,
    ModelError,
    NoVideoStream,
    OutputExists,
    OutputNotWritable,
    RunInterrupted,
    SourceNotFound,
    StageError,
    UnsafeModelFile,
)
from pipeline.config import RunConfig, default_output_path
from pipeline.messages import END, FrameItem, ResultItem, StageFailed
from pipeline.stats import RunStats, WorkerStats
from pipeline.runner import RunPlan, plan_devices, prepare, run

__all__ = [
    "run",
    "prepare",
    "plan_devices",
    "RunPlan",
    "RunConfig",
    "default_output_path",
    "RunStats",
    "WorkerStats",
    "FrameItem",
    "ResultItem",
    "END",
    "StageFailed",
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
