"""Which torch build this machine's GPUs need: prints the extra `pip install` arguments.

    python scripts/torch_build.py                   # asks nvidia-smi; prints nothing for PyPI's default
    python scripts/torch_build.py --gpu-arch sm_61  # for another machine (e.g. a Tesla P40 server)

Role: the set-up's one decision about torch. `make setup` runs it and, when it prints
something, installs torch with those arguments before requirements.txt (whose `torch>=2.4`
is then already met). PyPI's default torch 2.14 (CUDA 13.x) has no kernels for Pascal
(P40/P4/GTX 10xx, sm_61): there it prints the CUDA 12.6 legacy build
(`--index-url https://download.pytorch.org/whl/cu126 torch==2.14.* torchvision==0.29.*`).
Without nvidia-smi (a CPU machine, CI) it prints nothing, so the default install is
unchanged. Why each build, and the evidence: `hw/cuda_compat.py`.

Standard library only (it runs before anything is installed). Stdout: the arguments, one
line, shell-quoted. Stderr: the reason and any warning. Exit 2 on a bad --gpu-arch.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw.cuda_compat import choose_torch_build, parse_nvidia_smi, parse_sm, query_nvidia_smi  # noqa: E402


def gpus_from_archs(text: str) -> list[tuple[tuple[int, int], None]]:
    """'sm_61,sm_75' (or '6.1 7.5') -> [((6, 1), None), ((7, 5), None)]."""
    items = [t for t in text.replace(",", " ").split() if t]
    if not items:
        raise ValueError("--gpu-arch is empty: give e.g. --gpu-arch sm_61")
    return [(parse_sm(t), None) for t in items]


def main(argv: list[str] | None = None, *, smi: Callable[[], str | None] = query_nvidia_smi,
         out=sys.stdout, err=sys.stderr) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-arch", help="decide for these GPUs instead of this machine's, e.g. sm_61 or 6.1,8.6")
    args = parser.parse_args(argv)
    if args.gpu_arch:
        try:
            gpus = gpus_from_archs(args.gpu_arch)
        except ValueError as exc:
            print(f"error: Invalid --gpu-arch ({args.gpu_arch!r}): {exc}", file=err)
            return 2
    else:
        gpus = parse_nvidia_smi(smi() or "")
    choice = choose_torch_build(gpus)
    if gpus:  # a machine without NVIDIA GPUs (CI) gets the default silently
        print(f"torch: {choice.reason}", file=err)
    for warning in choice.warnings:
        print(f"torch: warning: {warning}", file=err)
    pip_args = choice.pip_args()
    if pip_args:
        print(shlex.join(pip_args), file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
