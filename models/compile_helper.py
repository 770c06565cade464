"""torch.compile's slow first compilation, done in a helper process (issue 12).

Compiling in the worker's own process holds the GIL for most of its 5-65 s (Dynamo's
tracing and Inductor's code generation are Python): measured on an H100, the reader, the
workers and the encoders starved meanwhile, and a run made 16 fps where the same run with a
warm cache made 30. So the first compilation of a model for a shape runs here, in a
separate process, which fills torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR,
framepipe's cache folder); the worker's own compilation then finds every kernel there and
takes several seconds. The helper builds the model exactly as a worker does (same loader,
dtype, device, channels_last) and compiles it for the same input shape.

It prints "cache filled" once the cache is: the run's own compilation starts from the cache
then, and a helper that dies afterwards still counts as done. Then, with `--artefact PATH`, it
compiles the model ahead of time (`models.compiled.precompile`, torch.compile's `aot_compile`),
saves that, loads it back from the file and checks its output against eager before keeping it:
a later run loads it without Dynamo tracing the model in its process
(`models.compiled.Precompiled`). Where that cannot be done (a graph break, a torch without it,
an artefact that does not load back or differs) a marker says so and runs compile from the
cache as before. Last, with `--rate`, it times the compiled model alone for about a second and
prints its frames per second ("model fps N"): where a first run ended before its compilation
did, that is the only measure of the compiled model's rate, and the next run plans its
encoders from it (`CacheWarmer(on_rate=...)`, `pipeline.encoder_choice.remember_helper_rate`).

    python models/compile_helper.py --model realesr-animevideov3 --scale 4 --dtype float16 \\
        --device cuda:0 --shape 8,3,480,640 --mode default --artefact /tmp/a.pt
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

__all__ = ["CacheWarmer", "artefacts_folder", "cancel_pending", "num_started", "pending"]

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
FILLED = "cache filled"  # the helper's stdout line once torch.compile's cache is
RATE = "model fps"  # its last line: "model fps 131.75", the compiled model alone (`time_model`)


class CacheWarmer:
    """`warmer(shape, dtype, device, mode)` runs the helper process and returns once it has
    filled torch.compile's cache (its "cache filled" line), or failed; raises RuntimeError with
    its last line if it failed before. The process goes on to make the precompiled artefact
    (`join` waits for it), and stays `pending` until it exits. `cancel()` ends it (a run stopped
    or failed). A run that completed before its helper did lets it finish (`pending`; `main.py`
    waits for it, Ctrl-C skips): else a first run shorter than the compilation would leave the
    cache cold, and so would every run after it.

    `memo` (a `hw.memory.ProbeMemo` file) remembers what a helper compiled: a warm cache needs
    no helper (its start alone, importing torch and its compile workers, takes ~10 s), and
    the worker's own compilation, from the cache, takes several seconds.

    `artefacts` (a folder) is where the helper keeps the models it compiled ahead of time
    (`artefact`); a shape in the memo whose artefact is missing (made by an older framepipe, or
    for another GPU of the machine) runs the helper again, which finds its cache warm.

    `on_rate(device, shape, fps)` is called with the compiled model's rate the helper timed last
    (its "model fps" line), from the thread that watches it."""

    def __init__(self, model: str, scale: int, *, memo=None, artefacts: Path | None = None,
                 timeout_seconds: float = 1200.0, on_rate: Callable[[str, tuple, float], None] | None = None) -> None:
        self.model, self.scale, self.timeout_seconds = model, scale, timeout_seconds
        self.memo = memo
        self.artefacts = artefacts
        self.on_rate = on_rate
        self._process: subprocess.Popen | None = None
        self.outcome = ""  # "compiled", or why not (the helper's last line, "cancelled"), once it ended
        self._cancelled = threading.Event()
        self._ended = threading.Event()  # its last process ended and was accounted for (`_watch`)
        self._timed_out = False

    def key(self, shape, dtype, device, mode: str) -> str:
        """What the compiled kernels depend on: GPU, torch, the model (a file's size and time
        too), the input's shape and dtype, the mode."""
        import torch

        gpu = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else "cpu"
        model = self.model
        path = Path(model)
        if path.is_file():
            stat = path.stat()
            model = f"{path.resolve()} {stat.st_size} {stat.st_mtime_ns}"
        return f"{gpu}|torch {torch.__version__}|{model}|x{self.scale}|{tuple(shape)}|{dtype}|{mode}"

    def artefact(self, shape, dtype, device, mode: str):
        """Where the model compiled ahead of time for this input on this device is kept (a
        `models.compiled.Precompiled`), or None without `artefacts`. Per device: the compiled
        code names its GPU."""
        if self.artefacts is None:
            return None
        from models.compiled import Precompiled

        digest = hashlib.sha256(f"{self.key(shape, dtype, device, mode)}|{_device_name(device)}".encode()).hexdigest()[:32]
        return Precompiled(Path(self.artefacts) / f"{digest}.pt")

    def command(self, shape, dtype, device, mode: str) -> list[str]:
        command = [sys.executable, str(Path(__file__).resolve()), "--model", self.model, "--scale", str(self.scale),
                   "--dtype", str(dtype).removeprefix("torch."), "--device", str(device),
                   "--shape", ",".join(map(str, shape)), "--mode", mode]
        artefact = self.artefact(shape, dtype, device, mode)
        return (command + (["--artefact", str(artefact.path)] if artefact is not None else [])
                + (["--rate"] if self.on_rate is not None else []))

    def __call__(self, shape, dtype, device, mode: str) -> None:
        if self._cancelled.is_set():
            raise RuntimeError("cancelled")
        key = self.key(shape, dtype, device, mode)
        artefact = self.artefact(shape, dtype, device, mode)
        if self.memo is not None and self.memo.get(key) and (artefact is None or artefact.settled()):
            return
        global _NUM_STARTED
        filled, ended = threading.Event(), threading.Event()  # this process's: its "cache filled" line; its end
        self._ended = ended
        self._timed_out = False
        with _PENDING_LOCK:
            _PENDING.add(self)
        errors = None
        try:
            errors = tempfile.TemporaryFile(mode="w+", encoding="utf-8", errors="replace")  # no pipe to fill up
            # Its own session: a Ctrl-C at the terminal reaches framepipe, which ends it (`cancel`), and
            # ending it ends torch.compile's worker processes with it (its process group).
            process = self._process = subprocess.Popen(self.command(shape, dtype, device, mode), stdout=subprocess.PIPE,
                                                       stderr=errors, text=True, start_new_session=True)
            with _PENDING_LOCK:
                _NUM_STARTED += 1
            if self._cancelled.is_set():  # cancelled while it started
                _kill(process)
            timer = threading.Timer(self.timeout_seconds, self._time_out, args=(process,))
            timer.daemon = True
            timer.start()
            threading.Thread(target=self._watch, args=(process, errors, timer, key, artefact, filled, ended),
                             kwargs={"shape": tuple(shape), "device": _device_name(device)},
                             name="compile-helper-watch", daemon=True).start()
        except Exception as exc:  # it could not start (OSError), nor be watched
            self.outcome = str(exc) or type(exc).__name__
            if self._process is not None:
                _kill(self._process)
            if errors is not None:
                errors.close()
            with _PENDING_LOCK:
                _PENDING.discard(self)
            ended.set()
            raise
        while not (filled.wait(0.05) or ended.is_set()):
            pass
        if self._cancelled.is_set():
            raise RuntimeError("cancelled")
        if not filled.is_set() and self.outcome != "compiled":
            raise RuntimeError(self.outcome)

    def _watch(self, process: subprocess.Popen, errors, timer: threading.Timer, key: str, artefact,
               filled: threading.Event, ended: threading.Event, *, shape: tuple = (), device: str = "") -> None:
        """Reads the helper's lines until it exits, then says how it ended (`outcome`), notes what
        it made, and leaves `pending`. The end is the process's exit, not its output's: worker
        processes of torch.compile that outlived it may hold its stdout (they are ended then)."""

        def read() -> None:
            for line in process.stdout:
                if line.strip() == FILLED and not filled.is_set():
                    if self.memo is not None:  # the cache is filled: no later run needs a helper for it
                        self.memo.put(key, {"compiled": True})
                    filled.set()
                elif line.startswith(RATE) and self.on_rate is not None and not self._cancelled.is_set():
                    try:
                        self.on_rate(device, shape, float(line[len(RATE):]))
                    except Exception as exc:  # noqa: BLE001 - a rate not noted is only a plan from the limits
                        log.debug("the compile helper's rate not noted: %s", exc)

        reader = threading.Thread(target=read, name="compile-helper-read", daemon=True)
        try:
            reader.start()
            process.wait()
            timer.cancel()
            reader.join(timeout=1)
            if reader.is_alive():  # some of its group holds its stdout still (the group id is theirs then)
                with contextlib.suppress(OSError, AttributeError):
                    os.killpg(process.pid, signal.SIGKILL)
                reader.join(timeout=5)
            errors.seek(0)
            lines = [line for line in errors.read().strip().splitlines() if line.strip()]
            why = (f"the compile helper took over {self.timeout_seconds:.0f} s" if self._timed_out else
                   lines[-1] if lines else f"the compile helper exited with {process.returncode}")
            if self._cancelled.is_set():
                self.outcome = "cancelled"
            elif process.returncode == 0 or filled.is_set():
                if self.memo is not None and not filled.is_set():
                    self.memo.put(key, {"compiled": True})
                self.outcome = "compiled"
                if process.returncode != 0 and artefact is not None:  # it failed making the artefact
                    crashed = process.returncode > 0 or -process.returncode in _CRASHES
                    artefact.note_failure(f"the helper failed making it: {why}", lasting=crashed and not self._timed_out)
            else:
                self.outcome = why
        except Exception as exc:  # noqa: BLE001 - never leave the run waiting on this thread
            self.outcome = self.outcome or f"{type(exc).__name__}: {exc}"
        finally:
            for stream in (process.stdout, errors):
                with contextlib.suppress(Exception):
                    stream.close()
            with _PENDING_LOCK:
                if self._process is process:
                    _PENDING.discard(self)
            ended.set()

    def _time_out(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            self._timed_out = True
            _kill(process)

    def join(self, timeout: float | None = None) -> bool:
        """Wait for its process to end (the artefact made); True if it did (or none ran)."""
        return self._process is None or self._ended.wait(timeout)

    def running(self) -> bool:
        """Its helper process is compiling now."""
        process = self._process
        return process is not None and process.poll() is None and not self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        process = self._process
        if process is not None:
            _kill(process)


_CRASHES = {signal.SIGSEGV, signal.SIGABRT, signal.SIGBUS, signal.SIGILL, signal.SIGFPE}  # it failed, not ended


def _kill(process: subprocess.Popen) -> None:
    """End the helper, while it runs, and its process group (torch.compile's workers)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (OSError, AttributeError):  # no process groups here
        process.kill()


def artefacts_folder() -> Path | None:
    """Where helpers keep the models they compiled ahead of time, which later runs load instead
    of compiling in their own process (`CacheWarmer.artefact`): framepipe's cache folder.
    FRAMEPIPE_PRECOMPILED=0: none made or loaded, every run compiles from the cache (benchmarks
    compare the two)."""
    if os.environ.get("FRAMEPIPE_PRECOMPILED", "").strip() == "0":
        return None
    from models.registry import default_cache_dir

    return default_cache_dir() / "precompiled"


_PENDING: set[CacheWarmer] = set()  # helpers whose process has not ended
_PENDING_LOCK = threading.Lock()
_NUM_STARTED = 0  # helper processes this process started


def num_started() -> int:
    """How many helper processes this process started so far: a run compares it at its start and
    end (with `pending`) to know whether one compiled beside it, on every core."""
    with _PENDING_LOCK:
        return _NUM_STARTED


def _device_name(device) -> str:
    """"cuda" is the current GPU, as "cuda:N": the same artefact whichever way a device was named."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def pending() -> list[CacheWarmer]:
    """The helpers still compiling (a run that ended before them may let them finish: the cache
    they fill makes the next run's compilation take seconds, not a minute)."""
    with _PENDING_LOCK:
        return list(_PENDING)


def cancel_pending() -> int:
    """End every helper still compiling; how many there were. Nothing is left running behind a
    process: `main.py` calls it when the user skips the wait, and at exit."""
    helpers = pending()
    for helper in helpers:
        helper.cancel()
    return len(helpers)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile a model for one input shape, filling torch.compile's cache.")
    p.add_argument("--model", required=True)
    p.add_argument("--scale", type=int, required=True)
    p.add_argument("--dtype", required=True)
    p.add_argument("--device", required=True)
    p.add_argument("--shape", required=True)
    p.add_argument("--mode", default="default")
    p.add_argument("--artefact", type=Path, help="also compile ahead of time, kept here (models.compiled.Precompiled)")
    p.add_argument("--rate", action="store_true", help=f'last, time the compiled model alone: "{RATE} N"')
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from core.compile_cache import lock_of, share_compile_cache

    cache = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if cache and lock_of(Path(cache)).is_file():  # framepipe's: kept while this helper runs, even one its run
        share_compile_cache(Path(cache), prune=False)  # no longer waits for
    import torch

    from models import load_model

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    shape = tuple(int(v) for v in args.shape.split(","))
    from models.compiled import runs_channels_last

    module = load_model(args.model, scale=args.scale).build(device, dtype)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    channels_last = runs_channels_last(module)  # as models.compiled.CompiledModel feeds it
    if channels_last:
        module.to(memory_format=torch.channels_last)
    with torch.inference_mode():  # an inference tensor, as the worker's batches are (the artefact's guards check it)
        x = torch.rand(shape, device=device).to(dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        fn = torch.compile(module, mode=args.mode, dynamic=False)
        fn(x)
        fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(FILLED, flush=True)
    if args.artefact is not None:
        from models.compiled import Precompiled

        with torch.inference_mode():
            keep_artefact(module, x, module(x), args.mode, Precompiled(args.artefact))
    if args.rate:
        print(f"{RATE} {time_model(fn, x):.2f}", flush=True)
    return 0


def time_model(fn, x, *, seconds: float = 1.0, min_calls: int = 3) -> float:
    """Frames per second of `fn` on the batch `x`, called for about `seconds` (at least
    `min_calls` times) after one call unmeasured; GPU work waited for."""
    import torch

    def sync() -> None:
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with torch.inference_mode():
        fn(x)
        sync()
        calls, start = 0, time.perf_counter()
        while calls < min_calls or time.perf_counter() - start < seconds:
            fn(x)
            calls += 1
            if calls % 4 == 0 or calls == min_calls:  # the clock read against finished work, now and then
                sync()
        sync()
        return calls * x.shape[0] / (time.perf_counter() - start)


def keep_artefact(module, x, reference, mode: str, artefact, *, min_psnr_db: float = 50.0) -> bool:
    """Compile `module` ahead of time for `x` into a temporary artefact, load that back from the
    file, and keep it at `artefact.path` if its output matches `reference` (eager, as a run's
    check is); else mark it unsupported (not for a lack of GPU memory: the next helper tries
    again). True if kept; the least recently used artefacts beside it over the folder's budget
    (FRAMEPIPE_PRECOMPILED_MB) are removed then."""
    from models.compiled import Precompiled, _lasting, precompile, precompiled_budget_bytes, prune_artefacts, psnr_db

    _remove_stale_trials(artefact)
    trial = Precompiled(artefact.path.with_name(f".{artefact.path.name}.{os.getpid()}.new"))
    try:
        if precompile(module, x, mode, trial) is None:
            artefact.note_failure(trial.unsupported() or trial.last_failure(), lasting=bool(trial.unsupported()))
            return False
        fn = trial.load(module)
        if fn is None:
            artefact.mark_unsupported("it did not load back")
            return False
        try:
            quality = psnr_db(fn(x), reference)
        except Exception as exc:  # noqa: BLE001 - its guards refused the input it was made for
            artefact.note_failure(f"it failed once loaded: {type(exc).__name__}: {exc}", lasting=_lasting(exc))
            return False
        if quality < min_psnr_db:
            artefact.mark_unsupported(f"its output differs from eager (PSNR {quality:.1f} dB)")
            return False
        os.replace(trial.path, artefact.path)
        prune_artefacts(artefact.path.parent, precompiled_budget_bytes(), keep=artefact.path)
        return True
    finally:
        trial.discard()
        trial.marker.unlink(missing_ok=True)
        trial.tries.unlink(missing_ok=True)


def _remove_stale_trials(artefact, *, older_than_seconds: float = 3600.0) -> None:
    """Trial files a helper killed meanwhile left behind (an hour old: no helper is still writing them)."""
    now = time.time()
    for stale in artefact.path.parent.glob(f".{artefact.path.name}.*.new*"):
        try:
            if now - stale.stat().st_mtime > older_than_seconds:
                stale.unlink()
        except OSError:
            pass


if __name__ == "__main__":
    sys.exit(main())
