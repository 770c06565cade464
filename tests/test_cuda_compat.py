"""Tests of hw/cuda_compat.py (which torch build runs on which GPUs) and of
scripts/torch_build.py, the set-up's choice (issue 9: Pascal needs torch's CUDA 12.6 build)."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hw.cuda_compat import (TORCH_DEFAULT, TORCH_LEGACY, arch_covers, choose_torch_build, driver_major, parse_arch,
                            parse_nvidia_smi, parse_sm)

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("torch_build", ROOT / "scripts" / "torch_build.py")
torch_build = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(torch_build)

P40 = (6, 1)
LEGACY_ARGS = ["--index-url", "https://download.pytorch.org/whl/cu126", "torch==2.14.*", "torchvision==0.29.*"]


@pytest.mark.parametrize("archs, capability, covered", [
    (["sm_60"], (6, 1), True),        # same major, lower minor: a P40 runs sm_60 cubins
    (["sm_61"], (6, 0), False),       # a higher minor does not run on a lower one
    (["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"], (6, 1), False),  # PyPI's default vs a P40
    (["sm_86"], (8, 9), True),        # Ada runs Ampere's 8.6 cubins
    (["sm_80"], (9, 0), False),       # another major: no cubin compatibility
    (["compute_80"], (9, 0), True),   # PTX is JIT-compiled for any later GPU
    (["compute_90"], (8, 6), False),
    (["sm_90a"], (9, 0), True),       # architecture-specific: exactly 9.0
    (["sm_90a"], (9, 1), False),
    (["sm_100f"], (10, 3), True),     # family-specific: 10.x from 10.0
    ([], (9, 0), False),
    (["bogus", "sm_70"], (7, 5), True),
])
def test_arch_covers(archs, capability, covered):
    assert arch_covers(archs, capability) is covered


def test_parse_arch_and_sm():
    assert parse_arch("compute_120") == ("compute", (12, 0), "")
    assert parse_arch("sm_90a") == ("sm", (9, 0), "a")
    with pytest.raises(ValueError, match=r"not a CUDA architecture name: 'gfx90a'"):
        parse_arch("gfx90a")
    assert parse_sm("sm_61") == parse_sm("6.1") == parse_sm("61") == P40
    assert parse_sm("12.0") == parse_sm("sm_120") == (12, 0)
    with pytest.raises(ValueError, match=r"not a compute capability: 'P40'"):
        parse_sm("P40")


def test_parse_nvidia_smi():
    text = "6.1, 580.95.05\n6.1, 580.95.05\n\nNo devices were found\n9.0, [N/A]\n"
    assert parse_nvidia_smi(text) == [(P40, "580.95.05"), (P40, "580.95.05"), ((9, 0), None)]
    assert parse_nvidia_smi("") == []
    assert driver_major("580.95.05") == 580 and driver_major(None) is None and driver_major("x") is None


def test_no_gpu_keeps_pypis_default():
    choice = choose_torch_build([])
    assert choice.build is TORCH_DEFAULT and choice.pip_args() == [] and not choice.warnings


def test_hopper_keeps_pypis_default():
    choice = choose_torch_build([((9, 0), "580.95.05")] * 2)
    assert choice.pip_args() == [] and not choice.warnings


def test_pascal_gets_the_cuda_12_6_build():
    """Issue 9: PyPI's default torch has no sm_6x kernels; a P40 needs the cu126 build."""
    choice = choose_torch_build([(P40, "580.95.05"), (P40, "580.95.05")])
    assert choice.build is TORCH_LEGACY
    assert choice.pip_args() == LEGACY_ARGS
    assert "no kernels for sm_61" in choice.reason and not choice.warnings


def test_old_driver_is_named_with_its_fix():
    choice = choose_torch_build([(P40, "470.256.02")])
    assert choice.warnings == ("driver 470.256.02 is older than the 525.60.13 the CUDA 12.6 legacy build needs: "
                               "install the NVIDIA R580 driver (the last branch for Pascal/Maxwell/Volta) or newer",)


def test_no_single_build_covers_pascal_and_blackwell():
    choice = choose_torch_build([(P40, None), ((10, 0), None)])
    assert "no single torch build" in choice.reason
    assert choice.warnings and "CUDA_VISIBLE_DEVICES" in choice.warnings[0]


def test_installed_default_torch_has_no_pascal_kernels():
    """The premise, checked on the torch this suite runs with when it is PyPI's default
    CUDA build: it starts at sm_75, so a P40 (sm_61) cannot run it."""
    torch = pytest.importorskip("torch")
    archs = torch.cuda.get_arch_list()
    if not torch.version.cuda or not archs or "+cu126" in torch.__version__:
        pytest.skip(f"torch {torch.__version__} is not PyPI's default CUDA build")
    assert not arch_covers(archs, P40)
    if torch.__version__.startswith("2.14."):  # the release TORCH_DEFAULT describes
        assert set(archs) <= set(TORCH_DEFAULT.archs)


def test_torch_build_prints_nothing_without_nvidia_smi():
    out, err = io.StringIO(), io.StringIO()
    assert torch_build.main([], smi=lambda: None, out=out, err=err) == 0
    assert out.getvalue() == "" and err.getvalue() == ""


def test_torch_build_prints_the_pascal_args():
    out, err = io.StringIO(), io.StringIO()
    assert torch_build.main([], smi=lambda: "6.1, 580.95.05\n", out=out, err=err) == 0
    assert out.getvalue().split() == [
        "--index-url", "https://download.pytorch.org/whl/cu126", "'torch==2.14.*'", "'torchvision==0.29.*'"]
    assert "sm_61" in err.getvalue()


def test_torch_build_gpu_arch_option():
    out, err = io.StringIO(), io.StringIO()
    assert torch_build.main(["--gpu-arch", "sm_61"], smi=lambda: pytest.fail("asked nvidia-smi"),
                            out=out, err=err) == 0
    assert "cu126" in out.getvalue()
    out = io.StringIO()
    assert torch_build.main(["--gpu-arch", "sm_86,sm_90"], out=out, err=err) == 0
    assert out.getvalue() == ""
    err = io.StringIO()
    assert torch_build.main(["--gpu-arch", "P40"], out=out, err=err) == 2
    assert "Invalid --gpu-arch ('P40'): not a compute capability" in err.getvalue()


def _run_script(tmp_path, smi_lines: str | None):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    if smi_lines is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nprintf '{smi_lines}'\n")
        smi.chmod(0o755)
    env = {**os.environ, "PATH": str(bin_dir)}  # only the fake nvidia-smi, if any (a GPU host has a real one)
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "torch_build.py")], env=env,
                          capture_output=True, text=True, timeout=60)


def test_torch_build_script_as_make_setup_runs_it(tmp_path):
    """`make setup` runs the script with the system Python before anything is installed:
    standard library only; nothing printed on a CPU machine (the default install stays)."""
    cpu = _run_script(tmp_path / "cpu", None)
    assert cpu.returncode == 0 and cpu.stdout == ""
    p40 = _run_script(tmp_path / "p40", "6.1, 580.95.05\\n")
    assert p40.returncode == 0 and p40.stdout.strip().startswith("--index-url https://download.pytorch.org/whl/cu126")


def test_makefile_installs_the_chosen_torch_first():
    text = (ROOT / "Makefile").read_text()
    assert "scripts/torch_build.py" in text
    assert text.index("scripts/torch_build.py)") < text.index("install -q -r requirements.txt")
