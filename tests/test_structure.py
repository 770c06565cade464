"""The structure the features stand on (issue 10): the import graph has no upward arrow,
errors live at the bottom, each list of names is defined once, and a run is a re-entrant
library call (two pipelines at once in one process, both frame-exact)."""

from __future__ import annotations

import ast
import threading
from pathlib import Path

import pytest

from pipeline import RunConfig, run
from tests import probe

ROOT = Path(__file__).resolve().parents[1]
# Lower layers never import higher ones. hw/ and models/ sit side by side (hw/clips.py
# uses the models' cache folder); neither imports pipeline/, and core/ imports neither.
LAYER = {"core": 0, "hw": 1, "models": 1, "pipeline": 2, "main": 3, "test_multi_gpu": 3}


def _imported_packages(path: Path) -> set[str]:
    """Top-level names of every import in a file, at any depth (lazy imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", ["core", "hw", "models", "pipeline"])
def test_no_import_points_up(package):
    upward = []
    for path in sorted((ROOT / package).glob("*.py")):
        for name in _imported_packages(path):
            if name in LAYER and LAYER[name] > LAYER[package]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert upward == []


def test_every_error_class_lives_in_core():
    from core import errors

    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] in ("tests", "benchmarks", "scripts", ".venv") or path.parent.name == "core":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = {getattr(b, "id", getattr(b, "attr", "")) for b in node.bases}
                assert not bases & set(errors.__all__), f"{path.relative_to(ROOT)}: {node.name} derives a user error"


def test_lists_of_names_are_defined_once():
    """The codecs, presets, precisions, container suffixes and default model appear as
    literals only in core/choices.py."""
    literals = ['"ultrafast", "superfast"', '("h264", "hevc", "av1")', '"auto", "fp32", "fp16", "bf16"',
                '(".mp4", ".mkv", ".mov")', 'DEFAULT_MODEL = "', '".pth", ".ckpt"']
    found = []
    for path in sorted(list(ROOT.glob("*/*.py")) + [ROOT / "main.py", ROOT / "test_multi_gpu.py"]):
        if path.parts[-2] in ("tests", ".venv") or path.name == "choices.py":
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {lit}" for lit in literals if lit in text]
    assert found == []


def test_two_runs_at_once_in_one_process(clips, tmp_path, no_stage_threads_left):
    """Two pipelines in one process at the same time share nothing but the devices: both
    outputs are frame-exact, with the same pixels as the same runs made one at a time.
    Lossless x264 (crf 0): this FFmpeg build's x264 at its default (mbtree on) does not give
    the same bytes twice for the same frames on some content, run alone or not."""
    a = clips("twins-a.mp4", num_frames=60, audio=True)
    b = clips("twins-b.mkv", num_frames=45, width=96, height=64, vfr=True)
    jobs = {
        "a": RunConfig(source=a, output=tmp_path / "a.mp4", model="bicubic", scale=2, parallel=True, batch_size=2,
                       cpu_workers=2, queue_size=6, crf=0, preset="ultrafast"),
        "b": RunConfig(source=b, output=tmp_path / "b.mkv", model="bicubic", scale=3, parallel=False, crf=0,
                       preset="ultrafast"),
    }
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def one(name: str) -> None:
        barrier.wait()
        try:
            results[name] = run(jobs[name])
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=one, args=(name,)) for name in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(type(r).__name__ == "RunStats" for r in results.values()), results
    assert probe.indices(tmp_path / "a.mp4") == list(range(60))
    assert probe.indices(tmp_path / "b.mkv") == list(range(45))
    assert probe.pts_seconds(tmp_path / "b.mkv") == pytest.approx(probe.pts_seconds(b), abs=1e-3)  # VFR kept
    assert probe.packets(tmp_path / "a.mp4", "audio") == probe.packets(a, "audio")
    for name, cfg in jobs.items():  # the same runs, one at a time
        cfg.output = tmp_path / f"alone-{name}{cfg.output.suffix}"
        run(cfg)
        together, alone = probe.frames_yuv(tmp_path / f"{name}{cfg.output.suffix}"), probe.frames_yuv(cfg.output)
        assert len(together) == len(alone)
        for x, y in zip(together, alone):
            assert (x == y).all()
