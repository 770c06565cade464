"""A full disk stops the run at once with one line and keeps what can be kept (issue 8).

Three ways in: the free-space guard stops the run while the file can still be finalized
(simulated free space, in process); a write the kernel refuses (a file-size limit,
`RLIMIT_FSIZE`, in a subprocess: EFBIG like ENOSPC); and a real full file system (a 12 MiB
tmpfs, where this machine allows mounting one)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import core.files
from core.errors import DiskFull
from core.files import FreeSpaceGuard
from pipeline import RunConfig, run
from tests import probe

ROOT = Path(__file__).resolve().parents[1]


def test_guard_reserve_grows_with_frame_size_and_encoder_delay():
    guard = FreeSpaceGuard(Path("/x/o.mp4"), free_bytes=lambda: 10 << 20)
    base = guard.reserve_bytes(bytes_written=0, frames_written=0, frames_pending=0)
    assert base == FreeSpaceGuard.MIN_RESERVE_BYTES
    big = guard.reserve_bytes(bytes_written=100 << 20, frames_written=100, frames_pending=40)
    assert big == base + 2 * (1 << 20) * 42 + 64 * 100
    guard.check(bytes_written=0, frames_written=0, frames_pending=0)
    with pytest.raises(DiskFull, match=r"Disk almost full: 10\.0 MiB left .* stopped there"):
        guard.check(bytes_written=100 << 20, frames_written=100, frames_pending=40)
    FreeSpaceGuard(Path("o.mp4"), free_bytes=lambda: None).check(bytes_written=1 << 40, frames_written=1,
                                                                 frames_pending=1)


def test_run_stops_while_the_output_can_still_be_finalized(clips, tmp_path, monkeypatch):
    """The disk fills as the output grows: the run stops before a write fails, and the file plays."""
    src = clips("diskfull.mp4", num_frames=120, width=128, height=96, audio=True)
    out = tmp_path / "out.mp4"
    room = FreeSpaceGuard.MIN_RESERVE_BYTES + 60_000

    def free(folder: Path) -> int:
        used = sum(p.stat().st_size for p in Path(folder).glob(".out.*.part.mp4"))
        return room - used

    monkeypatch.setattr(core.files, "_free_bytes", free)
    # asked per MiB only, not also per half second: the same checks on a fast machine and a loaded one
    # (packets wait for their durations before the file gets them: the guard asks as they are made)
    monkeypatch.setattr(FreeSpaceGuard, "CHECK_EVERY_SECONDS", float("inf"))
    with pytest.raises(DiskFull, match=r"Disk almost full.*stopped there.* (\d+) frame\(s\) written .*\(finalized, playable\)"):
        run(RunConfig(source=src, output=out, model="bicubic", scale=2, parallel=True, crf=0, preset="ultrafast"))
    got = probe.indices(out)
    assert 0 < len(got) < 120 and got == list(range(len(got)))


_LIMITED = """
import resource, signal, sys
sys.path.insert(0, {root!r})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
import main
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_refused_write_stops_at_once_with_one_line(clips, tmp_path, suffix):
    src = clips("diskfull.mp4", num_frames=120, width=128, height=96, audio=True)
    out = tmp_path / f"out{suffix}"
    proc = subprocess.run(
        [sys.executable, "-c", _LIMITED.format(root=str(ROOT), limit=150_000), "--source", str(src), "--output",
         str(out), "--model", "bicubic", "--scale", "2", "--quality", "0", "--preset", "ultrafast", "--parallel"],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "file is too large" in errors[0] and "frame(s)" in errors[0]
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []
    if out.exists():  # kept only when it plays: frames contiguous from 0
        got = probe.indices(out)
        assert got == list(range(len(got))) and got
        assert "decode from" in errors[0] or "playable" in errors[0]
    else:
        assert "was removed" in errors[0]
    if suffix == ".mkv":  # Matroska plays without its index: what was written is kept
        assert out.exists()


def _mount_tmpfs(folder: Path, size: str) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    folder.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_real_full_file_system(clips, tmp_path):
    disk = Path("/tmp") / f"framepipe-full-{uuid.uuid4().hex[:8]}"
    if not _mount_tmpfs(disk, "12m"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount rights); the RLIMIT test covers EFBIG")
    try:
        src = clips("diskfull-big.mp4", num_frames=60, width=320, height=240, audio=True)
        out = disk / "out.mp4"
        proc = subprocess.run(
            [sys.executable, str(ROOT / "main.py"), "--source", str(src), "--output", str(out), "--model", "bicubic",
             "--scale", "4", "--quality", "0", "--preset", "ultrafast", "--parallel"],
            capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "Disk almost full" in errors[0], proc.stderr
        got = probe.indices(out)
        assert 0 < len(got) < 60 and got == list(range(len(got)))
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)
        shutil.rmtree(disk, ignore_errors=True)


def test_pictures_on_a_full_disk_stop_with_one_line_and_resume_writes_the_rest(clips, tmp_path):
    """Picture output past the file size limit (EFBIG, as a full disk's ENOSPC): one line saying
    so, not "sequential: RuntimeError: picture ... was not written: [Errno 27]"; the pictures
    written are whole, and --resume writes the rest."""
    src = clips("diskfull-pics.mp4", num_frames=24, width=128, height=96)
    out = tmp_path / "pics"
    args = ["--source", str(src), "--output", str(out), "--model", "bicubic", "--scale", "2"]
    # (a limit per file: above the run's manifest, below a picture)
    proc = subprocess.run([sys.executable, "-c", _LIMITED.format(root=str(ROOT), limit=4_000), *args],
                          capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "the file is too large" in errors[0] and "RuntimeError" not in errors[0], errors[0]
    assert subprocess.run([sys.executable, str(ROOT / "main.py"), *args, "--resume", "-q"]).returncode == 0
    assert len(list(out.glob("*.png"))) == 24


def test_pictures_stop_while_the_disk_still_has_room(clips, tmp_path, monkeypatch):
    """Picture output had no free-space guard (a video's writer has one): the pictures filled the
    disk to the last byte before a write failed, other programs' writes and the run's manifest
    with it. Now the writer stops while the reserve is still free, the pictures written are whole,
    and --resume writes the rest once there is room."""
    src = clips("diskfull-guard.mp4", num_frames=40, width=128, height=96)
    out = tmp_path / "pics"
    room = FreeSpaceGuard.MIN_RESERVE_BYTES + 2_500_000  # room for some of the 512x384 pictures above the reserve

    def free(folder: Path) -> int:
        return room - sum(p.stat().st_size for p in Path(folder).glob("*.png"))

    monkeypatch.setattr(core.files, "_free_bytes", free)
    config = RunConfig(source=src, output=out, model="bicubic", scale=4, parallel=True)
    with pytest.raises(DiskFull, match=r"Disk almost full.*stopped there.* (\d+) picture\(s\) written to .*--resume"):
        run(config)
    written = sorted(out.glob("*.png"))
    assert 0 < len(written) < 40
    # the reserve was kept (the guard asks the file system once per MiB written, as for a video)
    assert free(out) >= FreeSpaceGuard.MIN_RESERVE_BYTES - FreeSpaceGuard.CHECK_EVERY_BYTES
    for path in written:
        assert probe.video_size(path) == (512, 384)  # whole pictures only
    monkeypatch.setattr(core.files, "_free_bytes", lambda folder: 1 << 40)
    run(RunConfig(source=src, output=out, model="bicubic", scale=4, parallel=True, resume=True))
    assert len(list(out.glob("*.png"))) == 40
