"""Compiled inference that no frame waits for (issue 12).

`CompiledModel(module, ...)` is what a worker calls instead of its module. It runs the
module eagerly at once and, on the first batch, starts compiling it with `torch.compile`
in a background thread, for the worker's batch size (`batch_size`, set by the worker once
its probe chose it) and that batch's frame size: static, one compiled graph, no
recompiling per batch size. When the compiled model is warm and its output matches the
eager output closely enough (PSNR against the worker's own eager output of that first batch,
>= `min_psnr_db`, 50 dB by default: fp16 run to run is ~60-80 dB), every later batch of that shape runs
compiled; a shorter batch (the last one) is padded to the compiled size and cut back.
Anything else stays eager: a batch halved after an out-of-memory (padding it back would
run out of memory again), tiles, a different frame size. Compilation that fails, or that
does not match, leaves the model eager with one line saying why; frames never wait. A worker
may keep the model eager before its first batch (`keep_eager`): where it already outruns the
CPU encoders, compiling would not pay (pipeline/worker.py `Worker._weigh_compile`).

Dynamo's frame hook is per thread, so the worker's eager calls run untouched while the
background thread traces the same module (its weights are only read); torch.fx's class-wide patches
of nn.Module during that trace are kept to the compile thread (`confine_fx_patches`). Mode
"default": torch.compile's CUDA graphs ("reduce-overhead") keep per-thread state and hand out
outputs the next call overwrites; a CUDA graph of the compiled model captured here measured no
faster on an H100, idle or with every core busy (benchmarks/RESULTS.md, 2026-12-06), so none.
The compiled kernels land in the inductor cache (main.py points it into framepipe's cache
folder), so a second run with the same model and shape compiles in seconds.

Those seconds (5-16 for realesrgan-x4plus-anime on an H100, more the more encoders run beside
it) are still Dynamo tracing the model in the run's own process, its Python holding the GIL the
worker needs: the worker ran at under half its eager rate meanwhile. So where a `Precompiled`
artefact exists (torch.compile's ahead-of-time compilation, `aot_compile`, saved by the compile
helper for that model, shape, dtype, device and torch), the compile thread loads it instead (on
the H100 with torch 2.11: 3.2-6.1 s beside 1-3 encoders and 7.5-11.9 s beside 6, against 7.9-9.4 s
and 15.8 s compiling from the cache; alone in a fresh process 2.7 s, after 3.5 s importing Dynamo
and Inductor where torch's bytecode is not cached: benchmarks/bench_load.py); a missing, unusable
or failing artefact falls back to torch.compile, as before. `precompile` makes one
(models/compile_helper.py calls it after filling the cache, loads what it saved back and checks
it before keeping it). While it loads, the worker ran eagerly at 13-30 fps against 61-81 alone:
each time it gives up the GIL (every torch op, copy and wait) it waits up to the switch interval
to take it back from a thread running Python. A CUDA graph of the eager model meanwhile (one
launch a batch) did not lift it (21 fps); the loading thread giving up the GIL every 0.5-1 ms (a
profile hook) doubled its own imports for a third more eager batches (on the CPU,
benchmarks/bench_convoy.py): neither was kept (benchmarks/RESULTS.md, 2026-12-06).

`compile_choice(requested, device)` says whether `--compile auto|on|off` compiles on a device
(auto: CUDA GPUs Triton supports, compute capability 7.0 or newer; never the CPU).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from core.compile_cache import env_megabytes

__all__ = ["CompiledModel", "CompileState", "Precompiled", "compile_choice", "confine_fx_patches", "precompile",
           "precompiled_budget_bytes", "prune_artefacts", "psnr_db", "runs_channels_last"]

log = logging.getLogger(__name__)

_MIN_CAPABILITY = (7, 0)  # Triton's floor: Volta. A Tesla P40 (6.1) runs eagerly.


def compile_choice(requested: str, device: torch.device) -> tuple[bool, str]:
    """(compile?, why) for `--compile requested` on `device`."""
    if requested == "off":
        return False, "eager (--compile off)"
    if device.type != "cuda":
        if requested == "on":
            return True, "compiled on the CPU (--compile on)"
        return False, "eager (CPU: --compile on to try torch.compile there)"
    capability = torch.cuda.get_device_capability(device)
    if capability < _MIN_CAPABILITY:
        return False, (f"eager (compute capability {capability[0]}.{capability[1]}: torch.compile's Triton needs "
                       f"{_MIN_CAPABILITY[0]}.{_MIN_CAPABILITY[1]} or newer)")
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "eager (Triton is not installed: torch.compile cannot build GPU kernels)"
    return True, "compiled in the background (--compile auto; eager until ready)"


_fx_lock = threading.Lock()
_fx_confined = False


def confine_fx_patches() -> bool:
    """torch.fx's tracer (make_fx, under torch.compile's AOTAutograd, when the caches miss) patches
    `torch.nn.Module.__call__` and `__getattr__` on the class for the length of a trace, so for every
    thread: a worker calling its model eagerly meanwhile ran through the compile thread's tracer
    (torch 2.11 on the H100 host: "NameError: module is not installed as a submodule", and the run
    was lost). Here those two patches apply on the thread that made them only; the others call the
    methods as they were. Once per process; True where in place (False: a torch without that patcher).
    Two threads tracing at once: the second traces its modules without the first's patch, as plain
    calls (its graph lacks their module-stack names, nothing else)."""
    global _fx_confined
    with _fx_lock:
        if _fx_confined:
            return True
        try:
            from torch.fx import _symbolic_trace

            patcher = _symbolic_trace._Patcher
            original = patcher.patch_method
        except (ImportError, AttributeError):
            return False

        @functools.wraps(original)
        def patch_method(self, cls, name, new_fn, *args, **kwargs):
            if cls is torch.nn.Module:
                new_fn = _on_this_thread(new_fn, getattr(cls, name), threading.get_ident())
            return original(self, cls, name, new_fn, *args, **kwargs)

        patcher.patch_method = patch_method
        _fx_confined = True
        return True


def _on_this_thread(new_fn: Callable, orig_fn: Callable, owner: int) -> Callable:
    @functools.wraps(new_fn)
    def confined(*args, **kwargs):
        return (new_fn if threading.get_ident() == owner else orig_fn)(*args, **kwargs)

    return confined


def psnr_db(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR of two RGB batches in [0, 1] (clamped), in dB; inf when identical."""
    mse = float(torch.mean((a.float().clamp(0, 1) - b.float().clamp(0, 1)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(1.0 / mse)


class Precompiled:
    """Where torch.compile's ahead-of-time compilation of a model for one input is kept
    (`path`), and the marker beside it that says none can be made there (`path.none`: a graph
    break, a torch without `aot_compile`, an artefact that did not load back), so that no run
    tries again. `load(module)` is the compiled model as `fn(x)`, or None (none there, not
    ours, or it fails to load: then it is removed); load it under the inference mode it will
    run in (torch 2.11 sets its guards' expected dispatch keys from the loading thread's).
    Loading unpickles the file, so only a file this user wrote and nobody else can write is
    loaded (framepipe's own cache: the inductor cache beside it is imported code of the same
    trust)."""

    MAX_PASSING_FAILURES = 3  # failures of the moment (out of GPU memory, a helper killed) before giving up

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.marker = self.path.with_name(self.path.name + ".none")
        self.tries = self.path.with_name(self.path.name + ".tries")  # passing failures so far, the last's reason

    def exists(self) -> bool:
        return self.path.is_file()

    def unsupported(self) -> str:
        """Why no artefact can be made for it ("" where nothing says so)."""
        try:
            return self.marker.read_text(encoding="utf-8").strip() or "unsupported"
        except OSError:
            return ""

    def settled(self) -> bool:
        """An artefact is there, or none can be made: nothing for a helper to do."""
        return self.exists() or bool(self.unsupported())

    def note_failure(self, why: str, *, lasting: bool) -> None:
        """A failure to make or use it: one that would repeat marks it unsupported at once; one of
        the moment (out of GPU memory beside the worker's probe, a helper past its time) only after
        MAX_PASSING_FAILURES of them, so that no run after the last starts a helper for it again."""
        if lasting:
            self.mark_unsupported(why)
            return
        count = self.num_passing_failures() + 1
        if count >= self.MAX_PASSING_FAILURES:
            self.mark_unsupported(f"{count} failures, the last: {why}")
            self.tries.unlink(missing_ok=True)
            return
        try:
            self.tries.parent.mkdir(parents=True, exist_ok=True)
            self.tries.write_text(f"{count}\n{why[:500]}\n", encoding="utf-8")
        except OSError:
            log.debug("could not write %s", self.tries, exc_info=True)

    def num_passing_failures(self) -> int:
        try:
            return int(self.tries.read_text(encoding="utf-8").split("\n", 1)[0])
        except (OSError, ValueError):
            return 0

    def last_failure(self) -> str:
        try:
            return self.tries.read_text(encoding="utf-8").split("\n", 1)[1].strip()
        except (OSError, IndexError):
            return ""

    def mark_unsupported(self, why: str) -> None:
        try:
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(why[:500] + "\n", encoding="utf-8")
        except OSError:
            log.debug("could not write %s", self.marker, exc_info=True)

    def load(self, module: torch.nn.Module) -> Callable | None:
        """Loaded once per process and file: a later run in the same process (the service's next
        job, a benchmark's next pipeline) takes the same loaded function without reading the file
        again; the module is its argument (`CompiledModel._loaded_and_checked` checks its guards
        on the first batch, `__call__` each later batch's layout)."""
        if not self.exists():
            return None
        opened = _open_ours(self.path)
        if opened is None:
            return None
        handle, key = opened
        _note_use(handle, key[2])
        with handle:
            with _loaded_lock:
                fn = _loaded.get(key)
                if fn is not None:
                    _loaded.move_to_end(key)
            data = handle.read() if fn is None else b""
        if fn is None:
            try:
                fn = torch.compiler.load_compiled_function(io.BytesIO(data))
            except Exception:  # noqa: BLE001 - a torch that cannot read it, a broken file: compile instead
                log.debug("could not load %s", self.path, exc_info=True)
                self.discard()
                return None
            with _loaded_lock:
                fn = _loaded.setdefault(key, fn)
                while len(_loaded) > _MAX_LOADED:
                    _loaded.popitem(last=False)
        return functools.partial(fn, module)

    def discard(self) -> None:
        with _loaded_lock:
            for key in [key for key in _loaded if key[0] == str(self.path)]:
                del _loaded[key]
        with contextlib.suppress(OSError):
            self.path.unlink()


def _note_use(handle, mtime_ns: int) -> None:
    """Stamp an opened artefact's access time now, its modification time (`mtime_ns`, as
    `_open_ours` read it) kept: it is part of `_loaded`'s key. `prune_artefacts` removes the least
    recently used first. Set explicitly, as mounts with relatime or noatime would not."""
    try:
        os.utime(handle.fileno(), ns=(time.time_ns(), mtime_ns))
    except (OSError, NotImplementedError):
        log.debug("could not stamp %s's use", handle.name, exc_info=True)


def precompiled_budget_bytes() -> int:
    """How much the artefacts of `precompiled/` may take together: FRAMEPIPE_PRECOMPILED_MB, 2 GiB
    by default (one is the code for one model, input shape, GPU and torch: 3.7 MB for x4plus-anime,
    batch 4 at 480x270 on an H100; a new torch or an edited user model leaves the old ones unused)."""
    return env_megabytes("FRAMEPIPE_PRECOMPILED_MB", 2048)


def prune_artefacts(folder: Path, budget_bytes: int, *, keep: Path | None = None) -> list[Path]:
    """Remove the least recently used artefacts (`*.pt`, and the failure count beside each) of
    `folder` until those left take at most `budget_bytes`; `keep` (the one just made) stays
    whatever its size. The paths removed, oldest first. A run that loaded one keeps its loaded
    function; the next run that needs it has a helper make it again."""
    found = []
    for path in Path(folder).glob("*.pt"):
        try:
            st = path.stat()
        except OSError:
            continue
        found.append((max(st.st_atime_ns, st.st_mtime_ns), st.st_size, path))
    total = sum(size for _, size, _ in found)
    removed = []
    for _, size, path in sorted(found):
        if total <= budget_bytes:
            break
        if keep is not None and path == Path(keep):
            continue
        artefact = Precompiled(path)
        artefact.discard()
        if not path.exists():
            artefact.tries.unlink(missing_ok=True)
            total -= size
            removed.append(path)
    return removed


_MAX_LOADED = 8  # functions kept loaded per process (a service sees a few models and frame sizes)
_loaded: OrderedDict[tuple[str, int, int], Callable] = OrderedDict()  # (path, size, mtime) -> its function
_loaded_lock = threading.Lock()


def _open_ours(path: Path):
    """(the file opened for reading, (path, size, mtime)), where this user owns it and its folder
    and nobody else can write either; None otherwise. Opened through descriptors that follow no
    links and checked as opened, so that nothing swapped in between the check and the read is
    unpickled."""
    if not hasattr(os, "O_NOFOLLOW"):
        return None  # no way to read it safely here: compile instead
    flags = os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    folder = file = -1
    try:
        folder = os.open(path.parent, flags | os.O_DIRECTORY)
        file = os.open(path.name, flags, dir_fd=folder)
        for fd in (folder, file):
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                log.debug("%s is not this user's alone: not loaded", path)
                return None
        handle, file = os.fdopen(file, "rb"), -1
        return handle, (str(path), st.st_size, st.st_mtime_ns)
    except OSError:
        return None
    finally:
        for fd in (folder, file):
            if fd >= 0:
                os.close(fd)


def _lasting(exc: BaseException) -> bool:
    """Would this failure happen again (a graph break, guards that refuse the input), or was it
    the moment's (the GPU's memory, taken by the worker's probe beside it)?"""
    return not isinstance(exc, torch.cuda.OutOfMemoryError) and "out of memory" not in str(exc).lower()


def _run_module(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """What `precompile` compiles: the module is an input, so its weights are read at each call
    (none is in the artefact) and its parameters' shapes, dtypes and devices are guarded."""
    return module(x)


def precompile(module: torch.nn.Module, example: torch.Tensor, mode: str, artefact: Precompiled) -> Callable | None:
    """torch.compile's ahead-of-time compilation of `module` for `example`'s shape (call under
    the inference mode it will run in: the artefact's guards check it), saved at
    `artefact.path`; the compiled model as `fn(x)`, or None where it cannot be made (marked, so
    that it is not tried again; a failure of the moment, out of GPU memory, only after a few)."""
    try:
        config = torch._dynamo.config  # torch 2.11 offers aot_compile only with this on; later ones always
        with config.patch(enable_aot_compile=True) if hasattr(config, "enable_aot_compile") else contextlib.nullcontext():
            compiled = torch.compile(_run_module, mode=mode, dynamic=False, fullgraph=True)
        aot_compile = getattr(compiled, "aot_compile", None)
        if aot_compile is None:
            raise RuntimeError(f"torch {torch.__version__} has no aot_compile")
        fn = aot_compile(((module, example), {}))
        artefact.path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(artefact.path.parent, 0o755)
        fn.save_compiled_function(str(artefact.path))
        os.chmod(artefact.path, 0o644)
    except Exception as exc:  # noqa: BLE001 - a graph break, a torch without it: torch.compile as before
        log.debug("precompiling failed", exc_info=True)
        artefact.discard()
        artefact.note_failure(f"{type(exc).__name__}: {_first_line(exc)}", lasting=_lasting(exc))
        return None
    return functools.partial(fn, module)


@dataclass
class CompileState:
    """What compilation did, for the run's stats."""

    status: str = "eager"  # eager, compiling, compiled, failed, mismatch
    note: str = ""
    seconds: float = 0.0  # compile + warm-up
    psnr_db: float | None = None  # compiled vs eager on the first batch
    shape: tuple[int, ...] | None = None
    num_compiled_batches: int = 0
    num_eager_batches: int = 0
    loaded: bool = False  # from a precompiled artefact (`Precompiled`), not compiled in this process


class CompiledModel:
    """Call as the module: `model(x) -> y`. Eager until the compiled version is ready."""

    def __init__(self, module: torch.nn.Module, *, name: str, enabled: bool, warn: Callable[[str], None],
                 reason: str = "", min_psnr_db: float = 50.0, mode: str = "default",
                 compile_fn: Callable[..., Callable] | None = None, prepare: Callable[..., None] | None = None,
                 artefact: Callable[..., Precompiled | None] | None = None) -> None:
        self.module = module
        self.name = name
        self.warn = warn
        self.min_psnr_db = min_psnr_db
        self.mode = mode
        self._compile_fn = compile_fn or torch.compile
        self.prepare = prepare  # fills the compile cache first, out of process (models/compile_helper.py)
        self.artefact = artefact  # (shape, dtype, device, mode) -> where a precompiled model is kept, or None
        self.kept_eager = False  # `keep_eager`: not compiling for now, maybe later (`compile_after_all`)
        self._kept_prepare = None
        if enabled and isinstance(module, torch.jit.ScriptModule):
            enabled, reason = False, "eager (a TorchScript model: torch.compile does not take it)"
        self.enabled = enabled
        self.state = CompileState(status="waiting" if enabled else "eager", note=reason)
        # (shape, dtype, fn, check), set once: check(x) says whether a loaded artefact's guards take x
        self._compiled: tuple[tuple[int, ...], torch.dtype, Callable, Callable | None] | None = None
        self.batch_size = 1  # the batch size the worker settled on (set before its first batch)
        self._thread: threading.Thread | None = None
        self._closed = False  # `close`: the run is over
        self.channels_last = runs_channels_last(module)
        if self.channels_last:  # before any forward: the compiled and the eager path share these weights
            module.to(memory_format=torch.channels_last)

    # -- calling --------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        compiled = self._compiled
        start = compiled is None and self.enabled and self._thread is None and x.shape[0] <= self.batch_size
        if compiled is not None:
            shape, dtype, fn, check = compiled
            n = x.shape[0]
            if tuple(x.shape[1:]) == shape[1:] and shape[0] // 2 < n <= shape[0] and x.dtype == dtype:
                padded = _pad_batch(x, shape[0])
                if check is None or check(padded):  # else eager, where torch.compile would recompile
                    self.state.num_compiled_batches += 1
                    return fn(padded)[:n]
        self.state.num_eager_batches += 1
        if not start:
            return self.module(x)
        first = self._start(_pad_batch(x, self.batch_size))  # compiled for the worker's batch size
        try:
            y = self.module(x)
            first.put(y)  # the reference the compiled model must match
        except BaseException:
            first.fail()
            raise
        return y

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        """The module itself, fed as the compiled path is (channels_last on a GPU)."""
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.module(x)

    def keep_eager(self, why: str) -> None:
        """Do not compile (before the first batch started it): the model runs eagerly, `why` in its
        state's note, until `compile_after_all`. A compilation already under way goes on."""
        if self.enabled and self._thread is None:
            self.enabled, self.kept_eager, self._kept_prepare, self.prepare = False, True, self.prepare, None
            self.state.status, self.state.note = "eager", why

    def compile_after_all(self, why: str) -> bool:
        """Undo `keep_eager`: the next batch of the worker's size starts the compilation; True if it
        will (False where the model was never kept eager, or was never to compile)."""
        if not self.kept_eager:
            return False
        self.enabled, self.kept_eager, self.prepare, self._kept_prepare = True, False, self._kept_prepare, None
        self.state.status, self.state.note = "waiting", why
        return True

    def close(self, *, finish_cache: bool = False) -> None:
        """The run is over: no compilation starts in this process any more. A helper process still
        compiling is ended, or, with `finish_cache` (the run completed), left to finish filling
        the cache for later runs (`models.compile_helper.pending`)."""
        self._closed = True
        prepare = self.prepare
        if prepare is None or not hasattr(prepare, "cancel"):
            return
        if finish_cache and getattr(prepare, "running", lambda: False)():
            return  # left to finish (main.py waits for it)
        prepare.cancel()

    def wait(self, timeout: float | None = None) -> CompileState:
        """Block until the background compilation ends (tests, benchmarks); the state."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.state

    # -- the background compilation -----------------------------------------------------
    def _start(self, example: torch.Tensor) -> _FirstOutput:
        """Called on the worker's thread and CUDA stream with its first batch (padded to its batch
        size), before the worker's eager call of it: the compile thread starts at once (a precompiled
        model's load then overlaps that first call, cuDNN's autotuning included, which leaves the
        GIL free; started after it, the load took 4.7 s on average instead of 4.1 on an H100, though
        on an H200 no way was faster beyond the runs' spread: benchmarks/RESULTS.md), and checks
        against that call's output once handed over (`_FirstOutput`). The example is copied there,
        and the compile thread's own stream waits for the copy (an event), never for the worker."""
        example, written = _copy_for_another_stream(example)
        self.state.status, self.state.shape = "compiling", tuple(example.shape)
        self.state.note = (f"compiling in the background for batch {example.shape[0]} of "
                           f"{example.shape[-1]}x{example.shape[-2]}; eager until ready")
        device, first = example.device, _FirstOutput()
        self._thread = threading.Thread(target=self._compile, args=(example, first, device, written),
                                        name=f"compile-{self.name}", daemon=True)
        self._thread.start()
        return first

    def _compile(self, example: torch.Tensor, first: _FirstOutput, device: torch.device, written) -> None:
        t0 = time.perf_counter()
        confine_fx_patches()  # the worker goes on calling the module while this thread traces it
        try:
            if device.type == "cuda":
                torch.cuda.set_device(device)
                stream = torch.cuda.Stream(device)
                _wait_for_copy(stream, example, written)
            else:
                stream = None
            if self.prepare is not None:
                self.prepare(tuple(example.shape), example.dtype, device, self.mode)
            if self._closed:  # the run ended meanwhile: compiling in this process would serve nothing
                raise RuntimeError("cancelled")
            with torch.inference_mode(), (torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()):
                fn, check, quality = self._loaded_and_checked(example, first)
                if fn is None:
                    fn = self._compile_fn(self.module, mode=self.mode, dynamic=False)
                    fn(example)
                    ref = first.get(self.module, example)
                    quality = psnr_db(fn(example)[:len(ref)], ref)  # warm: the second call must not recompile
                if stream is not None:
                    stream.synchronize()
        except Exception as exc:  # noqa: BLE001 - any failure keeps the model eager
            self.state.seconds = time.perf_counter() - t0
            if str(exc) == "cancelled":
                self.state.status, self.state.note = "cancelled", "the run ended before the compilation did"
                return
            self.state.status = "failed"
            self.state.note = f"torch.compile failed ({type(exc).__name__}: {_first_line(exc)}); running eagerly"
            log.debug("compiling %s failed", self.name, exc_info=True)
            self.warn(f"model {self.name}: {self.state.note}.")
            return
        self.state.seconds, self.state.psnr_db = time.perf_counter() - t0, quality
        if quality < self.min_psnr_db:
            self.state.status = "mismatch"
            self.state.note = (f"compiled output differs from eager (PSNR {quality:.1f} dB < {self.min_psnr_db:g}); "
                               "running eagerly")
            self.warn(f"model {self.name}: {self.state.note}.")
            return
        self._compiled = (tuple(example.shape), example.dtype, fn, check)
        self.state.status = "compiled"
        shown = "identical" if math.isinf(quality) else f"PSNR {quality:.1f} dB"
        how = "loaded precompiled" if self.state.loaded else "compiled"
        self.state.note = (f"{how} in {self.state.seconds:.1f} s for batch {example.shape[0]} of "
                           f"{example.shape[-1]}x{example.shape[-2]} ({shown} vs eager)")
        log.info("%s: %s", self.name, self.state.note)

    def _loaded_and_checked(self, example: torch.Tensor, first: _FirstOutput):
        """(fn, check, PSNR vs eager) of the precompiled model for `example`'s shape, run twice
        and matching eager as a compilation must; (None, None, None) where there is none, or it
        does not load (removed: the next helper makes it again), or it fails or differs on this
        input (marked: later runs compile from the cache, no helper tries again; not for a lack of
        GPU memory, which passes). Its guards check the module and this first batch; `check(x)`
        then checks each later batch's layout and device (its kernels assume the example's
        strides: what differs runs eagerly, where torch.compile would have recompiled; the
        guards' own per-call check also refuses a batch made outside inference mode)."""
        artefact = self.artefact(tuple(example.shape), example.dtype, example.device, self.mode) if self.artefact else None
        fn = artefact.load(self.module) if artefact is not None else None
        if fn is None:
            return None, None, None
        check = functools.partial(_same_layout, example.stride(), example.device)
        try:
            if not fn.func.guard_check(self.module, example):
                raise RuntimeError("its guards refused the run's model or input")
            fn.func.disable_guard_check()  # `check` before each call instead
            fn(example)
            ref = first.get(self.module, example)
            quality = psnr_db(fn(example)[:len(ref)], ref)
            if quality < self.min_psnr_db:
                raise RuntimeError(f"its output differs from eager (PSNR {quality:.1f} dB)")
        except Exception as exc:  # noqa: BLE001 - compile instead
            log.debug("the precompiled %s failed", self.name, exc_info=True)
            lasting = _lasting(exc)
            if lasting:
                artefact.discard()
            artefact.note_failure(f"it failed in a run: {type(exc).__name__}: {_first_line(exc)}", lasting=lasting)
            return None, None, None
        self.state.loaded = True
        return fn, check, quality


class _FirstOutput:
    """The worker's eager output of the batch its compilation started with, handed to the compile
    thread (which makes no eager call of its own: beside the worker, one took a fifth of its time
    while a precompiled model loaded, benchmarks/RESULTS.md). Copied on the worker's stream (the
    worker goes on to change its output in place); the compile thread's stream waits for the copy."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._ref: torch.Tensor | None = None
        self._written = None

    def put(self, y: torch.Tensor) -> None:
        """On the worker's thread and stream, after its eager call."""
        self._ref, self._written = _copy_for_another_stream(y)
        self._ready.set()

    def fail(self) -> None:
        """The worker's eager call or the copy raised (out of memory: it tries the frames again,
        maybe fewer)."""
        self._ready.set()

    def get(self, module: torch.nn.Module, example: torch.Tensor) -> torch.Tensor:
        """On the compile thread, on its stream: the worker's output, or, where its call failed,
        the module's own output for `example`."""
        self._ready.wait()
        ref = self._ref
        if ref is None:
            return module(example)
        if self._written is not None:
            _wait_for_copy(torch.cuda.current_stream(ref.device), ref, self._written)
        return ref


def _copy_for_another_stream(x: torch.Tensor):
    """(a copy of `x` made on this thread's current stream, the CUDA event after it; None on the
    CPU): the worker hands it over and goes on, changing `x` in place; `_wait_for_copy` on the
    other thread's stream."""
    copy, written = x.detach().clone(), None
    if copy.is_cuda:
        written = torch.cuda.Event()
        written.record(torch.cuda.current_stream(copy.device))
    return copy, written


def _wait_for_copy(stream, copy: torch.Tensor, written) -> None:
    """`stream` waits for the copy (queued on the worker's stream), never for the worker, and
    the copy's memory is kept until `stream`'s work on it is done."""
    stream.wait_event(written)
    copy.record_stream(stream)


def _same_layout(stride: tuple[int, ...], device: torch.device, x: torch.Tensor) -> bool:
    return x.stride() == stride and x.device == device


def _pad_batch(x: torch.Tensor, size: int) -> torch.Tensor:
    """`x` with its last frame repeated up to `size` frames (the compiled graph's shape)."""
    n = x.shape[0]
    if n == size:
        return x
    pad = x[-1:].expand(size - n, *x.shape[1:])
    return torch.cat([x, pad], dim=0).contiguous(memory_format=_memory_format(x))


def _memory_format(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) \
        else torch.contiguous_format


def runs_channels_last(module: torch.nn.Module) -> bool:
    """Whether `CompiledModel` runs `module` channels_last (a module with weights on a GPU); the
    compile helper feeds it the same way, else its cache and its artefact miss the run's input."""
    first = next(iter(module.parameters()), None)
    return first is not None and first.is_cuda


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__

