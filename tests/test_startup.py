"""Issue 12, fast start: where Python would cache no bytecode for torch (PYTHONDONTWRITEBYTECODE
with an install made without .pyc files, as on the H100 host), framepipe keeps it in its cache
folder, so only the first start compiles torch's ~1,100 modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import main
from tests.cli_runs import ROOT


def _package(root, *, with_pyc: bool):
    pkg = root / "site" / "heavy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("VALUE = 42\n")
    if with_pyc:
        import py_compile

        py_compile.compile(str(pkg / "__init__.py"))
    return root / "site"


def test_a_package_without_bytecode_gets_a_cache_folder(tmp_path, monkeypatch):
    site = _package(tmp_path, with_pyc=False)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FRAMEPIPE_BYTECODE_CACHE", raising=False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    folder = main.bytecode_cache_folder(tmp_path / "cache", package="heavy")
    assert folder == tmp_path / "cache" / "bytecode" and folder.is_dir()
    monkeypatch.setenv("FRAMEPIPE_BYTECODE_CACHE", "0")  # the user's choice: Python's own behaviour
    assert main.bytecode_cache_folder(tmp_path / "cache", package="heavy") is None


def test_a_package_with_its_bytecode_is_left_alone(tmp_path, monkeypatch):
    site = _package(tmp_path, with_pyc=True)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("FRAMEPIPE_BYTECODE_CACHE", raising=False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    assert main.bytecode_cache_folder(tmp_path / "cache", package="heavy") is None
    assert main.bytecode_cache_folder(tmp_path / "cache", package="no_such_package_here") is None
    monkeypatch.setattr(sys, "pycache_prefix", str(tmp_path / "theirs"))  # a prefix of the user's: kept
    assert main.bytecode_cache_folder(tmp_path / "cache", package="heavy") is None


def test_the_second_start_reads_the_cached_bytecode(tmp_path):
    """In a process as main.py starts it (PYTHONDONTWRITEBYTECODE=1): the first start writes the
    package's bytecode under the cache folder and nothing beside its sources; the second loads it
    from there."""
    site = _package(tmp_path, with_pyc=False)
    script = textwrap.dedent(
        """
        import sys
        sys.path[:0] = [{root!r}, {site!r}]
        import main
        folder = main.bytecode_cache_folder(main.Path({cache!r}), package="heavy")
        sys.pycache_prefix, sys.dont_write_bytecode = str(folder), False
        import heavy
        print(heavy.__spec__.loader.__class__.__name__, heavy.__cached__)
        """
    ).format(root=str(ROOT), site=str(site), cache=str(tmp_path / "cache"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(tmp_path)}
    written = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        cached = [p for p in (tmp_path / "cache" / "bytecode").rglob("__init__*.pyc") if "heavy" in str(p)]
        assert len(cached) == 1, cached
        written.append(cached[0].stat().st_mtime_ns)
    assert written[0] == written[1]  # the second start used the first one's bytecode, did not compile again
    assert not (site / "heavy" / "__pycache__").exists()  # the installed files are never written
    assert str(tmp_path / "cache" / "bytecode") in proc.stdout


def test_torch_is_not_imported_before_the_decision():
    """The cache folder is found without importing torch (models.registry imports it): a
    bytecode cache chosen after torch is imported would speed up nothing (seen on the H100 host:
    the same 2.6 s of imports with and without it)."""
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, {root!r})
        import main
        decided = []
        original = main.bytecode_cache_folder
        def spy(*args, **kwargs):
            decided.append("torch" in sys.modules)
            return original(*args, **kwargs)
        main.bytecode_cache_folder = spy
        main._process_settings()
        print(decided, "torch" in sys.modules)
        """
    ).format(root=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[False]", "True"], proc.stdout


def test_a_child_process_such_as_the_compile_helper_writes_into_the_same_cache(tmp_path):
    """Under PYTHONDONTWRITEBYTECODE=1 (as the H100 host sets it), a process started by framepipe
    (the compile helper, which imports torch.compile's modules for the next run's load) writes its
    bytecode into framepipe's folder too, and still nothing beside the installed sources."""
    site = _package(tmp_path, with_pyc=False)
    cache = tmp_path / "cache"
    script = textwrap.dedent(
        """
        import subprocess, sys
        sys.path[:0] = [{root!r}]
        import main
        folder = main.Path({cache!r}) / "bytecode"
        folder.mkdir(parents=True, exist_ok=True)
        main.bytecode_cache_folder = lambda cache, package="torch": folder  # as where torch has no bytecode
        main._process_settings()
        child = "import sys; sys.path.insert(0, {site!r}); import heavy"
        subprocess.run([sys.executable, "-c", child], check=True)
        """
    ).format(root=str(ROOT), site=str(site), cache=str(cache))
    env = {"PATH": "/usr/bin:/bin", "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(tmp_path), "FRAMEPIPE_CACHE": str(cache)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cached = [p for p in (cache / "bytecode").rglob("__init__*.pyc") if "heavy" in str(p)]
    assert len(cached) == 1, cached
    assert not (site / "heavy" / "__pycache__").exists()
