"""PyNvVideoCodec at run time: importing it lazily, GPU labels, and its CUDA context.

PyNvVideoCodec is imported on first use only. On a machine without the NVIDIA driver
`import PyNvVideoCodec` raises RuntimeError (its __init__ asks the driver for the NVENC
version), so every failure to import is reported as `HardwareUnavailable`.

PyNvVideoCodec's caps queries (GetEncoderCaps/GetDecoderCaps, and the encoder constructor's own
query) create a CUDA context of their own (`cuCtxCreate`, always on GPU 0 in the 2.x sources),
which a query that throws leaves current on the calling thread; `torch_context` and
`keep_current_context` keep every call in torch's context, and the plan probes in a thread of
its own (pipeline.plan._probe).
"""

from __future__ import annotations

import importlib
import logging
import re
from types import ModuleType
from typing import Any

from core.errors import HardwareUnavailable, one_line

__all__ = ["nvcodec_import", "nvcodec_version", "gpu_label", "enum_member", "first_line", "torch_context",
           "keep_current_context", "context_args", "reset_caches_for_tests", "NO_NVENC_HINT", "CudaArray"]

logger = logging.getLogger(__name__)

NO_NVENC_HINT = "this GPU may have no NVENC engine (A100, H100 and H200 have none)"

_module: ModuleType | None = None
_import_error: str | None = None
_on_reset: list = []  # caches of other modules to clear with the import result (tests)


def nvcodec_import() -> ModuleType:
    """PyNvVideoCodec, imported once; `HardwareUnavailable` when it cannot be used."""
    global _module, _import_error
    if _module is not None:
        return _module
    if _import_error is None:
        try:
            _module = importlib.import_module("PyNvVideoCodec")
            return _module
        except Exception as exc:  # ImportError, or RuntimeError without the driver
            _import_error = f"{type(exc).__name__}: {first_line(exc)}"
            logger.debug("import PyNvVideoCodec failed", exc_info=True)
    raise HardwareUnavailable(
        f"PyNvVideoCodec is not usable: {_import_error}. Install it with "
        "'pip install PyNvVideoCodec' on a machine with an NVIDIA driver, or run "
        "without --nvdec/--nvenc."
    )


def nvcodec_version() -> str | None:
    """The installed PyNvVideoCodec version (from package metadata, no import), or None."""
    from hw.gpus import dist_version

    return dist_version("PyNvVideoCodec", "pynvvideocodec")



# Before 2.2 the binding's Encode/EndEncode join every access unit it has ready (NVENC holds 3
# with B-frames off) into one bytes object: one packet, one timestamp, for several frames
# (PyNvEncoder.cpp of 2.0.x); 2.2 returns one dict per unit.
NVENC_MIN_VERSION = (2, 2)


def nvenc_binding_too_old(version: str | None = None, *, seen_joining: bool = False) -> str | None:
    """Why the installed PyNvVideoCodec cannot feed framepipe's NVENC writer, or None (also
    when its version is not known: not installed is said where it is imported).
    `seen_joining`: the binding was seen handing over bytes: too old, whatever its version says."""
    version = version if version is not None else nvcodec_version()
    if not seen_joining:
        if not version or tuple(int(n) for n in re.findall(r"\d+", version)[:2]) >= NVENC_MIN_VERSION:
            return None
    need = ".".join(map(str, NVENC_MIN_VERSION))
    return (f"PyNvVideoCodec {version or '(version unknown)'} hands several encoded frames over as one (before "
            f"{need}); framepipe's NVENC writer needs {need} or newer (pip install -U 'PyNvVideoCodec>={need}')")


def gpu_label(gpu: int) -> str:
    try:
        import torch

        if torch.cuda.is_available() and 0 <= gpu < torch.cuda.device_count():
            return f"GPU {gpu} ({torch.cuda.get_device_name(gpu)})"
    except Exception:  # a label must never fail
        pass
    return f"GPU {gpu}"


def enum_member(enum: Any, names: tuple[str, ...]) -> Any:
    members = getattr(enum, "__members__", {}) or {}
    for name in names:
        if name in members:
            return members[name]
        if hasattr(enum, name):
            return getattr(enum, name)
    raise KeyError(f"{enum!r} has none of {names}")




def first_line(exc: BaseException) -> str:
    return one_line(exc)


_libcuda: Any = None


def _driver() -> Any:
    """libcuda through ctypes (no extra package), or None where there is no NVIDIA driver."""
    global _libcuda
    if _libcuda is None:
        try:
            import ctypes

            _libcuda = ctypes.CDLL("libcuda.so.1")
        except OSError:
            _libcuda = False
    return _libcuda or None


def _current_context() -> int:
    import ctypes

    lib = _driver()
    ctx = ctypes.c_void_p()
    if lib is None or lib.cuCtxGetCurrent(ctypes.byref(ctx)) != 0:
        return 0
    return int(ctx.value or 0)


def torch_context(gpu: int) -> int:
    """The CUDA context torch works in on `gpu` (the device's primary context), 0 if unknown.

    PyNvVideoCodec's caps queries create a context of their own (`cuCtxCreate`, in the strings
    of PyNvVideoCodec_130.so; the decoder and encoder themselves retain the primary context),
    and one left current on the calling thread breaks torch: its streams do not exist in that
    context, so the next torch call on that thread fails with
    "invalid resource handle" (seen on an H100: a test after the NVDEC tests, and earlier the
    --nvdec --nvenc run). Given torch's context, the decoder and encoder work in it, as
    NVIDIA's decode_with_cuda_control.py sample does with the primary context."""
    try:
        import torch

        with torch.cuda.device(gpu):
            torch.empty(1, device=f"cuda:{gpu}")  # the primary context exists and is current here
            return _current_context()
    except Exception:  # no CUDA: the fakes in tests, or a broken driver
        return 0


class keep_current_context:
    """Restore this thread's current CUDA context after a PyNvVideoCodec call that may change it."""

    def __enter__(self) -> "keep_current_context":
        self._before = _current_context() if _driver() is not None else 0
        return self

    def __exit__(self, *exc_info: object) -> None:
        lib = _driver()
        if lib is not None and _current_context() != self._before:
            import ctypes

            lib.cuCtxSetCurrent(ctypes.c_void_p(self._before or None))


def context_args(gpu: int) -> dict[str, int]:
    ctx = torch_context(gpu)
    return {"cudacontext": ctx} if ctx else {}




def reset_caches_for_tests() -> None:
    """Forget the import result and every cached answer (tests only)."""
    global _module, _import_error
    _module, _import_error = None, None
    for clear in _on_reset:
        clear()


class CudaArray:
    """A bare `__cuda_array_interface__` holder, for `torch.as_tensor` views."""

    def __init__(self, ptr: int, shape: tuple[int, ...], strides: tuple[int, ...], typestr: str):
        self.__cuda_array_interface__ = {
            "shape": shape, "strides": strides, "typestr": typestr,
            "data": (int(ptr), False), "version": 3,
        }
