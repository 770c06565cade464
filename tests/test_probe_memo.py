"""Batch sizes remembered between runs (issue 12, fast start): hw.memory.ProbeMemo, and on a
GPU the second run of the same job starting at the first run's batch without probing."""

from __future__ import annotations

import json
import threading

import pytest

from hw.memory import ProbeMemo


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
    assert [p.name for p in tmp_path.iterdir()] == ["batch-sizes.json"]  # no temporary file left


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
