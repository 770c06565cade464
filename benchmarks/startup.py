#!/usr/bin/env python3
"""Where the time to the first frame goes (issue 12's target: <= 4 s with warm caches).

Measured in one run, each in a fresh interpreter:
  import torch          `python -c "import torch"` three times (wall), and `-X importtime`'s
                        heaviest modules
  bytecode cache        whether torch's __pycache__ holds this interpreter's .pyc files and can
                        be written (a read-only install compiles every module on every import)
  the command           `python main.py --source CLIP --output-mode none --max-frames 8 --parallel`
                        three times with FRAMEPIPE_BYTECODE_CACHE=0 (Python's own bytecode
                        behaviour), then three times as framepipe starts by default: the first
                        frame after the command, and its steps (the run's own `--stats-json`:
                        imports, plan, build, CUDA context, first batch)

    python benchmarks/startup.py --out bench-out/startup
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._steps import Steps  # noqa: E402


def wall(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=env)
    return round(time.perf_counter() - t0, 3)


def import_torch(repeats: int, env: dict | None = None) -> dict:
    return {"seconds": [wall([sys.executable, "-c", "import torch"], env) for _ in range(repeats)]}


def importtime(out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch"], capture_output=True, text=True)
    (out / "importtime_torch.txt").write_text(proc.stderr)
    rows = []
    for line in proc.stderr.splitlines():
        parts = line.split("|")
        if len(parts) == 3 and parts[0].startswith("import time:") and parts[1].strip().isdigit():
            rows.append((int(parts[0].split(":")[1]), int(parts[1]), parts[2].rstrip()))
    heaviest_self = sorted(rows, reverse=True)[:12]
    return {"modules": len(rows), "self_us_total": sum(r[0] for r in rows),
            "heaviest_self_us": [(name.strip(), us) for us, _, name in heaviest_self]}


def bytecode_cache() -> dict:
    import importlib.util

    spec = importlib.util.find_spec("torch")
    root = Path(spec.origin).parent
    tag = sys.implementation.cache_tag
    pys = [p for p in root.rglob("*.py")][:2000]
    cached = sum(1 for p in pys if (p.parent / "__pycache__" / f"{p.stem}.{tag}.pyc").is_file())
    return {"torch": str(root), "py_files_sampled": len(pys), "with_pyc": cached,
            "pycache_writable": os.access(root / "__pycache__", os.W_OK) if (root / "__pycache__").is_dir()
            else os.access(root, os.W_OK),
            "pycache_prefix": sys.pycache_prefix, "dont_write_bytecode": sys.dont_write_bytecode}


def first_frame(clip: Path, out: Path, k: str, extra: list[str], env: dict | None = None) -> dict:
    stats = out / f"first-frame-{k}.json"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--source", str(clip), "--output-mode", "none",
                           "--max-frames", "8", "--parallel", "--stats-json", str(stats), *extra],
                          capture_output=True, text=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - t0
    (out / f"first-frame-{k}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}", "tail": (proc.stdout + proc.stderr)[-600:]}
    s = json.loads(stats.read_text())
    notes = s.get("notes", {})
    return {"command_seconds": round(seconds, 2),
            "first_frame_from_command": s.get("first_frame_seconds_from_command", notes.get("first_frame_seconds_from_command")),
            "imports": s.get("imports_seconds", notes.get("imports_seconds")),
            "steps": s.get("startup_seconds")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="640x480")
    p.add_argument("--model", default=None, help="main.py --model (default: main.py's default)")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", type=Path, default=Path("bench-out/startup"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {"date": time.strftime("%Y-%m-%d"), "python": sys.version.split()[0], "cpu_count": os.cpu_count()}
    step = Steps(results, args.out / "startup.json")
    step("bytecode_cache", bytecode_cache)
    step("import_torch", lambda: import_torch(3))
    prefix = args.out / "pycache-prefix"  # what main.py's bytecode cache does (main.bytecode_cache_folder)
    step("import_torch_bytecode_cached", lambda: import_torch(3, {**os.environ, "PYTHONPYCACHEPREFIX": str(prefix),
                                                                  "PYTHONDONTWRITEBYTECODE": ""}))
    step("importtime", lambda: importtime(args.out))
    w, h = map(int, args.size.split("x"))
    clip = args.out / f"startup-{w}x{h}.mp4"

    def make() -> dict:
        from hw.clips import make_clip

        make_clip(clip, width=w, height=h, num_frames=48, fps=24, photo=True)
        return {"clip": str(clip)}

    step("make_clip", make)
    extra = ["--model", args.model] if args.model else []
    off = {**os.environ, "FRAMEPIPE_BYTECODE_CACHE": "0"}
    for k in range(args.runs):  # the baseline: Python's own bytecode behaviour
        step(f"first_frame_bytecode_cache_off:{k + 1}", lambda: first_frame(clip, args.out, f"off-{k + 1}", extra, off))
    for k in range(args.runs):  # framepipe's default (the first may compile into its cache)
        step(f"first_frame:{k + 1}", lambda: first_frame(clip, args.out, str(k + 1), extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
