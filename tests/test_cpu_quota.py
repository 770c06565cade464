"""The cores the process may use under a CPU quota (docker --cpus, Kubernetes limits): the cgroup's
cpu.max (v2) or cfs quota (v1), up from the process's own cgroup; the plan, its encoder line and
summary note, and torch's CPU threads follow it (hw.scheduling.usable_cores). The cgroup trees
are built in a temporary folder, as the kernel lays them out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from hw import scheduling
from hw.encode_speed import EncoderSpeed
from hw.scheduling import cpu_quota, fit_torch_threads, quota_note, usable_cores
from pipeline import RunConfig


def _tree(root: Path, files: dict[str, str], proc: str) -> dict:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "proc-cgroup").write_text(proc)
    return {"cgroup_root": str(root / "sys"), "proc_cgroup": str(root / "proc-cgroup")}


@pytest.mark.parametrize("files, proc, quota", [
    ({"sys/cpu.max": "400000 100000\n"}, "0::/\n", 4.0),  # v2 in a container (its own cgroup seen as /)
    ({"sys/cpu.max": "max 100000\n"}, "0::/\n", None),  # v2, no limit
    ({"sys/user.slice/cpu.max": "250000 100000\n", "sys/user.slice/job/cpu.max": "max 100000\n"},
     "0::/user.slice/job\n", 2.5),  # v2: the parent's quota binds its children
    ({"sys/a/cpu.max": "800000 100000\n", "sys/a/b/cpu.max": "150000 100000\n"}, "0::/a/b\n", 1.5),  # the smallest
    ({"sys/cpu,cpuacct/cpu.cfs_quota_us": "150000\n", "sys/cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
     "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n", 1.5),  # v1: the container's cgroup mounted as the root
    ({"sys/cpu/cpu.cfs_quota_us": "-1\n", "sys/cpu/cpu.cfs_period_us": "100000\n"}, "3:cpu:/\n", None),  # v1, none
    ({"sys/cpu.max": "garbage\n"}, "0::/\n", None),
    ({}, "", None),  # not Linux, or no cgroup file
], ids=["v2-container", "v2-max", "v2-parent", "v2-smallest", "v1-docker", "v1-none", "unreadable", "none"])
def test_the_cpu_quota_is_read_as_the_kernel_lays_it_out(tmp_path, files, proc, quota):
    assert cpu_quota(**_tree(tmp_path, files, proc)) == quota


def test_the_usable_cores_are_the_affinity_within_the_quota(tmp_path, monkeypatch):
    paths = _tree(tmp_path, {"sys/cpu.max": "250000 100000\n"}, "0::/\n")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert usable_cores(**paths) == 3  # 2.5 CPUs: three threads can share them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert usable_cores(**paths) == 2  # the affinity is the smaller
    (tmp_path / "sys" / "cpu.max").write_text("max 100000\n")
    assert usable_cores(**paths) == 2


def test_a_quota_is_said_in_the_run_notes(monkeypatch, clips):
    """On a 64-core host in a container limited to 4 CPUs the run's notes say why it plans for 4
    (the plan itself: tests/test_encoder_choice.py, container-quota)."""
    from pipeline import plan as planning

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    monkeypatch.setattr(scheduling, "cpu_quota", lambda **kw: 4.0)
    assert quota_note() == ("a CPU quota of 4 CPUs (the process's cgroup) on 64 cores: decoders, encoders and their "
                            "threads are planned for 4.")
    src = clips("quota.mp4", num_frames=24)
    plan = planning.plan_run(RunConfig(source=src, model="bicubic", scale=2, device="cpu", output_mode="none"))
    assert quota_note() in plan.notes
    monkeypatch.setattr(scheduling, "cpu_quota", lambda **kw: 1.0)
    assert quota_note().startswith("a CPU quota of 1 CPU (the process's cgroup) on 64 cores")
    monkeypatch.setattr(scheduling, "cpu_quota", lambda **kw: None)
    assert quota_note() is None


def test_torch_cpu_threads_stay_within_the_usable_cores(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        monkeypatch.setattr(scheduling, "usable_cores", lambda: 1)
        assert fit_torch_threads() == 1 == torch.get_num_threads()
        monkeypatch.setattr(scheduling, "usable_cores", lambda: 8)
        assert fit_torch_threads() == 1  # never raised: torch's own choice, or the user's, stands
    finally:
        torch.set_num_threads(before)


def test_a_run_given_a_share_of_the_cores_plans_for_that_share(monkeypatch, clips):
    """`RunConfig.cores` (what the service gives each job beside others) bounds the plan below the
    process's cores, never above them; 0 is refused with one line."""
    from core.errors import InvalidOption
    from pipeline import plan as planning

    monkeypatch.setattr(planning, "_num_cores", lambda: 16)
    monkeypatch.setattr(planning, "_available_memory_bytes", lambda: 64 << 30)
    monkeypatch.setattr(planning, "_encoder_speed", lambda *a, **k: EncoderSpeed(fps=10.0, cores_busy=1.0))
    monkeypatch.setattr(planning, "_model_rate", lambda key: 1000.0)
    src = clips("share.mp4", num_frames=120)
    lines = {}
    for cores in (None, 4, 64):
        _, choice = planning._plan_segments(RunConfig(source=src, segment_frames=10, cores=cores),
                                            planning.probe_source(src), 2560, 1920, use_nvenc=False, notes=[],
                                            model_rate_key="k")
        lines[cores] = (choice.num_encoders, choice.line)
    assert lines[None][0] == 6 and lines[4][0] == 2 and lines[64] == lines[None], lines
    assert "4 cores allow 2" in lines[4][1] and "16 cores allow 8" in lines[None][1], lines
    with pytest.raises(InvalidOption, match=r"Invalid --cores \(0\)"):
        RunConfig(source=src, cores=0).validate()


def test_cores_on_the_command_line(clips, tmp_path, capsys):
    """`--cores 1` plans one encoder, said in the encoder line; `--cores 0` is one
    line and exit 2, nothing written."""
    import main as cli

    src = clips("cores.mp4", num_frames=48)
    out = tmp_path / "o.mp4"
    assert cli.main(["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2", "--parallel",
                     "--cores", "1", "--segment-frames", "12", "--preset", "ultrafast"]) == 0
    said = capsys.readouterr()
    assert "1 core allows 1;" in said.out + said.err and out.exists()
    bad = tmp_path / "bad.mp4"
    assert cli.main(["--source", str(src), "--output", str(bad), "--cores", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: Invalid --cores (0): give at least 1, or leave it out for every core the process may use."]
    assert not bad.exists()
