"""Batch sizes remembered between runs (issue 12, fast start): hw.memory.ProbeMemo, and on a
GPU the second run of the same job starting at the first run's batch without probing."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hw.memory import ProbeMemo

ROOT = Path(__file__).resolve().parents[1]


def test_remembers_per_key_and_survives_a_damaged_file(tmp_path):
    memo = ProbeMemo(tmp_path / "cache" / "batch-sizes.json")
    assert memo.get("a") is None
    memo.put("a", {"batch_size": 8})
    memo.put("b", {"batch_size": 2})
    assert memo.get("a") == {"batch_size": 8} and memo.get("b") == {"batch_size": 2}
    memo.path.write_text("{not json")
    assert memo.get("a") is None  # a damaged file is a slower start, not an error
    memo.put("c", {"batch_size": 4})
    assert json.loads(memo.path.read_text()) == {"c": {"batch_size": 4}}


def test_workers_writing_at_once_lose_nothing(tmp_path):
    memo = ProbeMemo(tmp_path / "batch-sizes.json")
    threads = [threading.Thread(target=memo.put, args=(f"gpu{i}", {"batch_size": i + 1})) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {k: v["batch_size"] for k, v in json.loads(memo.path.read_text()).items()} == {
        f"gpu{i}": i + 1 for i in range(8)}
    # no temporary file left; the lock file stays (empty), as torch-compile.lock does
    assert sorted(p.name for p in tmp_path.iterdir()) == [".batch-sizes.json.lock", "batch-sizes.json"]


_WRITER = """
import pathlib, sys, time
from hw.memory import ProbeMemo
memo, name, go = ProbeMemo(pathlib.Path(sys.argv[1])), sys.argv[2], pathlib.Path(sys.argv[3])
go.with_name("ready-" + name).touch()
while not go.exists():
    time.sleep(0.01)
for i in range(int(sys.argv[4])):
    memo.update(name + str(i), lambda old: {"n": i})
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path):
    """Two framepipe processes (two runs, or a run and its compile helper) changing one memo file
    at once: each change reads and writes under the file's flock, so no entry either wrote is
    lost (without the lock, a third of 1,000 were lost on a 2-core machine: each process wrote back
    the table it had read before the other's change)."""
    memo, go, count = tmp_path / "model-rates.json", tmp_path / "go", 300
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(memo), name, str(go), str(count)], cwd=ROOT)
             for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{name}").exists() for name in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)  # both imported: they start together
    go.touch()
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    table = json.loads(memo.read_text())
    assert sorted(table) == sorted(f"{name}{i}" for name in "ab" for i in range(count))
    assert table["a299"] == table["b299"] == {"n": 299}


def test_an_unwritable_cache_is_not_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    memo = ProbeMemo(blocker / "batch-sizes.json")  # its folder is a file
    memo.put("a", {"batch_size": 8})
    assert memo.get("a") is None


@pytest.mark.needs_cuda
def test_the_second_run_starts_at_the_remembered_batch(tmp_path):
    """(conftest gives each test its own memo file; both runs here share it.)"""
    from hw.clips import make_clip
    from pipeline import RunConfig, run

    clip = make_clip(tmp_path / "v.mp4", width=96, height=64, num_frames=24, fps=24)
    notes = []
    for i in range(2):
        stats = run(RunConfig(source=clip, output=tmp_path / f"o{i}.mp4", model="bicubic", scale=2, device="cuda",
                              batch_size=0, compile="off"))
        worker = stats.to_dict()["workers"][0]
        notes.append((worker["probe_seconds"], worker["probe_note"], worker["batch_size_now"]))
    (first_seconds, first_note, first_batch), (second_seconds, second_note, second_batch) = notes
    assert first_seconds > 0 and first_note.startswith("chose ")
    assert second_seconds == 0 and "as probed on" in second_note and second_batch == first_batch
