"""torch.compile's cache folder (`torch-compile/` in framepipe's cache) is kept under
FRAMEPIPE_COMPILE_CACHE_MB: removed whole at the start of a process that no other framepipe
process (a run, the service, a compile helper) shares it with (core/compile_cache.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from core import compile_cache
from tests.cli_runs import ROOT

pytestmark = pytest.mark.skipif(compile_cache.fcntl is None, reason="no flock on this system")


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch):
    """Each test starts as a new process would: holding no lock (the ones taken are closed after)."""
    held: dict[str, int] = {}
    monkeypatch.setattr(compile_cache, "_held", held)
    yield
    for fd in held.values():
        os.close(fd)


def _fill(folder: Path, megabytes: int) -> Path:
    kernel = folder / "ab" / "cabcdef.py"  # torch's layout: kernels in two-letter folders, graphs in fxgraph/
    kernel.parent.mkdir(parents=True)
    kernel.write_bytes(b"k" * (megabytes * 2**20))
    (folder / "fxgraph").mkdir()
    (folder / "fxgraph" / "entry").write_bytes(b"g" * 1000)
    return kernel


def _holder(folder: Path, *, helper: bool = False) -> subprocess.Popen:
    """Another framepipe process using the folder until its stdin closes: a run, or (`helper`) a
    compile helper whose model is still loading."""
    if helper:
        body = """
            import models
            def loading(*args, **kwargs):
                print("using", flush=True)
                sys.stdin.read()
                raise SystemExit(0)
            models.load_model = loading
            from models import compile_helper
            compile_helper.main(["--model", "m", "--scale", "4", "--dtype", "float32", "--device", "cpu",
                                 "--shape", "1,3,8,8"])
            """
    else:
        body = f"""
            from core.compile_cache import share_compile_cache
            assert share_compile_cache(Path({str(folder)!r}))
            print("using", flush=True)
            sys.stdin.read()
            """
    script = f"import sys\nfrom pathlib import Path\nsys.path.insert(0, {str(ROOT)!r})\n" + textwrap.dedent(body)
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(folder))
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "using"
    return proc


def _end(proc: subprocess.Popen) -> None:
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0


def test_over_its_budget_the_folder_is_removed_whole_and_made_again(tmp_path, monkeypatch):
    folder = tmp_path / "torch-compile"
    _fill(folder, 3)
    monkeypatch.setenv("FRAMEPIPE_COMPILE_CACHE_MB", "2")
    assert compile_cache.share_compile_cache(folder)
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["torch-compile", "torch-compile.lock"]  # nothing left aside


def test_under_its_budget_nothing_is_touched(tmp_path, monkeypatch):
    folder = tmp_path / "torch-compile"
    kernel = _fill(folder, 3)
    monkeypatch.setenv("FRAMEPIPE_COMPILE_CACHE_MB", "4")
    assert compile_cache.share_compile_cache(folder)
    assert kernel.stat().st_size == 3 * 2**20 and (folder / "fxgraph" / "entry").is_file()
    monkeypatch.delenv("FRAMEPIPE_COMPILE_CACHE_MB")  # the default: 4 GiB
    assert compile_cache.budget_bytes() == 4096 * 2**20
    for value, expected in (("abc", 4096 * 2**20), ("0.5", 2**19), ("-3", 0)):
        monkeypatch.setenv("FRAMEPIPE_COMPILE_CACHE_MB", value)
        assert compile_cache.budget_bytes() == expected, value


@pytest.mark.parametrize("helper", [False, True], ids=["a run", "a compile helper"])
def test_a_folder_another_process_uses_is_kept_until_it_ends(tmp_path, monkeypatch, helper):
    folder = tmp_path / "torch-compile"
    kernel = _fill(folder, 3)
    if helper:  # the helper takes the lock only on the folder of a framepipe run, whose lock file is there
        (tmp_path / "torch-compile.lock").touch()
    other = _holder(folder, helper=helper)
    monkeypatch.setenv("FRAMEPIPE_COMPILE_CACHE_MB", "1")
    try:
        assert compile_cache.share_compile_cache(folder)
        assert kernel.is_file()  # still in use: stays, over budget or not
    finally:
        _end(other)
    os.close(compile_cache._held.pop(str(tmp_path / "torch-compile.lock")))  # this process ends too
    compile_cache.share_compile_cache(folder)  # the next process to start alone
    assert not kernel.exists() and folder.is_dir()


def test_a_removal_a_killed_process_left_half_done_is_finished(tmp_path, monkeypatch):
    folder = tmp_path / "torch-compile"
    kernel = _fill(folder, 1)
    left = tmp_path / "torch-compile.old-12345"
    _fill(left, 1)
    assert compile_cache.share_compile_cache(folder)
    assert not left.exists() and kernel.is_file()


def test_the_size_counts_files_in_every_folder_and_no_link(tmp_path):
    _fill(tmp_path / "c", 1)
    outside = tmp_path / "big"
    outside.write_bytes(b"x" * 2**21)
    (tmp_path / "c" / "ab" / "link").symlink_to(outside)
    (tmp_path / "c" / "ab" / "dirlink").symlink_to(tmp_path, target_is_directory=True)
    size = compile_cache.folder_bytes(tmp_path / "c")
    assert 2**20 + 1000 <= size < 2**20 + 1000 + 4096  # the two links' own few bytes at most
    assert compile_cache.folder_bytes(tmp_path / "c", stop_above=10) > 10


def test_a_folder_that_cannot_be_made_is_not_given_to_torch(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert not compile_cache.share_compile_cache(blocker / "torch-compile")


@pytest.mark.parametrize("argv", [["--source", "{missing}"], ["serve", "--root", "{root}", "--host", "0.0.0.0"]],
                         ids=["a run", "the service"])
def test_a_run_and_the_service_keep_their_kernels_in_framepipes_cache(tmp_path, argv):
    """Both get TORCHINDUCTOR_CACHE_DIR = <cache>/torch-compile (the service had torch's own
    folder in /tmp, which a reboot empties), and prune it first. Each stops on its bad input
    after the process settings."""
    cache = tmp_path / "cache"
    kernel = _fill(cache / "torch-compile", 2)
    argv = [a.format(missing=tmp_path / "missing.mp4", root=tmp_path) for a in argv]
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(ROOT)!r})
        import main
        code = main.main({argv!r})
        print(code, os.environ.get("TORCHINDUCTOR_CACHE_DIR"))
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "FRAMEPIPE_TOKEN")}
    env.update(FRAMEPIPE_CACHE=str(cache), FRAMEPIPE_COMPILE_CACHE_MB="1")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    code, folder = proc.stdout.split()[-2:]
    assert int(code) != 0 and folder == str(cache / "torch-compile")
    assert not kernel.exists() and (cache / "torch-compile").is_dir()
