"""framepipe's streaming pipeline: plan, build and run the stages of one job.

    reader -> work queue -> worker-gpu0 / worker-gpu1 / ... -> collector -> writer

`run(RunConfig(...))` is the one entry point (a re-entrant library call); `main.py` builds
the config from flags. The stage contract and its runner are in `pipeline.stage`.
"""

from core.errors import *  # noqa: F401,F403 - the error classes a caller catches
from core.errors import __all__ as _error_names
from pipeline.config import RunConfig, default_output_path
from pipeline.messages import END, ErrorChannel, ResultItem, StageFailed
from pipeline.plan import RunPlan, plan_run
from pipeline.runner import run
from pipeline.stats import RunStats, WorkerStats

__all__ = [
    "run",
    "plan_run",
    "RunPlan",
    "RunConfig",
    "default_output_path",
    "RunStats",
    "WorkerStats",
    "ResultItem",
    "END",
    "StageFailed",
    "ErrorChannel",
    *_error_names,
]
