"""torch.compile's slow first compilation, done in a helper process (issue 12).

Compiling in the worker's own process holds the GIL for most of its 5-65 s (Dynamo's
tracing and Inductor's code generation are Python): measured on an H100, the reader, the
workers and the encoders starved meanwhile, and a run made 16 fps where the same run with a
warm cache made 30. So the first compilation of a model for a shape runs here, in a
separate process, which fills torch.compile's on-disk cache (TORCHINDUCTOR_CACHE_DIR,
framepipe's cache folder); the worker's own compilation then finds every kernel there and
takes several seconds. The helper builds the model exactly as a worker does (same loader,
dtype, device, channels_last) and compiles it for the same input shape.

Then, with `--artefact PATH`, it compiles it ahead of time (`models.compiled.precompile`,
torch.compile's `aot_compile`), saves that, loads it back from the file and checks its output
against the compiled model's before keeping it: a later run loads it in about a second
without Dynamo tracing the model in its process (`models.compiled.Precompiled`). Where that
cannot be done (a graph break, a torch without it, an artefact that does not load back) a
marker says so and runs compile from the cache as before. The helper prints "cache filled"
once the cache is, so that a helper that dies making the artefact still counts as done.

    python models/compile_helper.py --model realesr-animevideov3 --scale 4 --dtype float16 \\
        --device cuda:0 --shape 8,3,480,640 --mode default --artefact /tmp/a.pt
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["CacheWarmer", "artefacts_folder", "cancel_pending", "pending"]

ROOT = Path(__file__).resolve().parents[1]
FILLED = "cache filled"  # the helper's stdout line once torch.compile's cache is


class CacheWarmer:
    """`warmer(shape, dtype, device, mode)` runs the helper process and returns when it is
    done; raises RuntimeError with its last line if it fails. `cancel()` ends it (a run stopped
    or failed). A run that completed before its helper did lets it finish filling the cache
    (`pending`; `main.py` waits for it, Ctrl-C skips): else a first run shorter than the
    compilation would leave the cache cold, and so would every run after it.

    `memo` (a `hw.memory.ProbeMemo` file) remembers what a helper compiled: a warm cache needs
    no helper (its start alone, importing torch and its compile workers, takes ~10 s), and
    the worker's own compilation, from the cache, takes several seconds.

    `on_start` is called when a helper process starts: it compiles on every core, which the
    run's own measurements of its encoders must not take for the machine's speed.

    `artefacts` (a folder) is where the helper keeps the models it compiled ahead of time
    (`artefact`); a shape in the memo whose artefact is missing (made by an older framepipe, or
    for another GPU of the machine) runs the helper again, which finds its cache warm."""

    def __init__(self, model: str, scale: int, *, memo=None, artefacts: Path | None = None,
                 timeout_seconds: float = 1200.0, on_start=None) -> None:
        self.model, self.scale, self.timeout_seconds = model, scale, timeout_seconds
        self.memo = memo
        self.artefacts = artefacts
        self.on_start = on_start  # called once its process started (the run notes the CPUs it took)
        self._process: subprocess.Popen | None = None
        self.outcome = ""  # "compiled", or why not (the helper's last line, "cancelled"), once it ended
        self._cancelled = threading.Event()

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

        digest = hashlib.sha256(f"{self.key(shape, dtype, device, mode)}|{device}".encode()).hexdigest()[:32]
        return Precompiled(Path(self.artefacts) / f"{digest}.pt")

    def command(self, shape, dtype, device, mode: str) -> list[str]:
        command = [sys.executable, str(Path(__file__).resolve()), "--model", self.model, "--scale", str(self.scale),
                   "--dtype", str(dtype).removeprefix("torch."), "--device", str(device),
                   "--shape", ",".join(map(str, shape)), "--mode", mode]
        artefact = self.artefact(shape, dtype, device, mode)
        return command + (["--artefact", str(artefact.path)] if artefact is not None else [])

    def __call__(self, shape, dtype, device, mode: str) -> None:
        if self._cancelled.is_set():
            raise RuntimeError("cancelled")
        key = self.key(shape, dtype, device, mode)
        artefact = self.artefact(shape, dtype, device, mode)
        if self.memo is not None and self.memo.get(key) and (artefact is None or artefact.settled()):
            return
        with _PENDING_LOCK:
            _PENDING.add(self)
        try:
            self._process = subprocess.Popen(self.command(shape, dtype, device, mode), stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
            if self.on_start is not None:
                self.on_start()
            if self._cancelled.is_set():  # cancelled while it started
                self._process.kill()
            try:
                out, err = self._process.communicate(timeout=self.timeout_seconds)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.communicate()
                raise RuntimeError(f"the compile helper took over {self.timeout_seconds:.0f} s") from None
            if self._cancelled.is_set():
                raise RuntimeError("cancelled")
            if self._process.returncode != 0:
                lines = [line for line in (err or "").strip().splitlines() if line.strip()]
                why = lines[-1] if lines else f"the compile helper exited with {self._process.returncode}"
                if FILLED not in (out or "").splitlines():
                    raise RuntimeError(why)
                if artefact is not None:  # it died making the artefact (the cache is filled): never again
                    artefact.mark_unsupported(f"the helper failed making it: {why}")
            if self.memo is not None:
                self.memo.put(key, {"compiled": True})
            self.outcome = "compiled"
        except Exception as exc:  # the helper could not start (OSError), failed, timed out, was cancelled
            self.outcome = str(exc) or type(exc).__name__
            raise
        finally:
            with _PENDING_LOCK:
                _PENDING.discard(self)

    def running(self) -> bool:
        """Its helper process is compiling now."""
        process = self._process
        return process is not None and process.poll() is None and not self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()
        process = self._process
        if process is not None and process.poll() is None:
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


_PENDING: set[CacheWarmer] = set()  # helpers compiling now, until their result is in the memo
_PENDING_LOCK = threading.Lock()


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
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
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
    with torch.inference_mode():
        fn = torch.compile(module, mode=args.mode, dynamic=False)
        fn(x)
        expected = fn(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(FILLED, flush=True)
    if args.artefact is not None:
        from models.compiled import Precompiled

        with torch.inference_mode():
            keep_artefact(module, x, expected, args.mode, Precompiled(args.artefact))
    return 0


def keep_artefact(module, x, expected, mode: str, artefact, *, min_psnr_db: float = 50.0) -> bool:
    """Compile `module` ahead of time for `x` into a temporary artefact, load that back from the
    file, and keep it at `artefact.path` if its output matches `expected` (the compiled
    model's); else mark it unsupported. True if kept."""
    from models.compiled import Precompiled, precompile, psnr_db

    trial = Precompiled(artefact.path.with_name(f".{artefact.path.name}.{os.getpid()}.new"))
    try:
        if precompile(module, x, mode, trial) is None:
            artefact.mark_unsupported(trial.unsupported())
            return False
        fn = trial.load(module)
        if fn is None:
            artefact.mark_unsupported("it did not load back")
            return False
        try:
            quality = psnr_db(fn(x), expected)
        except Exception as exc:  # noqa: BLE001 - its guards refused the input it was made for
            artefact.mark_unsupported(f"it failed once loaded: {type(exc).__name__}: {exc}")
            return False
        if quality < min_psnr_db:
            artefact.mark_unsupported(f"its output differs from the compiled model's (PSNR {quality:.1f} dB)")
            return False
        os.replace(trial.path, artefact.path)
        return True
    finally:
        trial.discard()
        trial.marker.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
