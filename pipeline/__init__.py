"""framepipe's streaming pipeline: stages, wiring, configuration, messages and errors.

    reader -> WorkQueue -> worker-gpu0 / worker-gpu1 / ... -> collector -> writer

`run(RunConfig(...))` is the one entry point; `main.py` builds the config from flags.
"""

from pipeline import errors
from pipeline.errors import *  # noqa: F401,F403 - the error classes, listed in errors.__all__
from pipeline.config import RunConfig, default_output_path
from pipeline.messages import END, FrameItem, ResultItem, StageFailed
from pipeline.stats import RunStats, WorkerStats

# The runner imports hw/ and models/, which import pipeline.errors: load it on first use
# so that `import hw.avio` (which loads this package first) does not import itself.
_LAZY = {"run", "prepare", "plan_devices", "RunPlan"}


def __getattr__(name: str):
    if name in _LAZY:
        from pipeline import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")


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
    *errors.__all__,
]
