#!/usr/bin/env python3
"""Where each thread of a run spent its samples, from py-spy's raw (collapsed) output.

    py-spy record --threads --idle -f raw -o spy.txt -- python3 main.py ...
    python benchmarks/spy_summary.py spy.txt [--threads worker,encoder] [--top 15]

Per thread (named as Python names it: worker-gpu0, encoder3, ...): its samples, the functions
it was in when sampled (the innermost frame: "self"), and the functions on its stack ("total").
With --idle the samples include the time a thread waited (a queue, a CUDA synchronize), so a
thread's "self" lines say where its wall time went.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"^(.*) (\d+)$")
_FRAME = re.compile(r"^(.*?) \(([^()]*?)(?::\d+)?\)$")


def parse(text: str) -> dict[str, tuple[int, Counter, Counter]]:
    """thread -> (samples, self counts, total counts), functions as "name (file)"."""
    threads: dict[str, list] = defaultdict(lambda: [0, Counter(), Counter()])
    for raw in text.splitlines():
        m = _LINE.match(raw.strip())
        if not m:
            continue
        frames, count = m.group(1).split(";"), int(m.group(2))
        thread = next((f for f in frames if f.startswith("thread (")), "thread (?)")
        name = thread.split(": ", 1)[1] if ": " in thread else thread
        name = re.sub(r" \(\)$", "", name)
        calls = [_short(f) for f in frames if not f.startswith(("thread (", "process "))]
        if not calls:
            continue
        entry = threads[name]
        entry[0] += count
        entry[1][calls[-1]] += count
        for call in set(calls):
            entry[2][call] += count
    return {k: (v[0], v[1], v[2]) for k, v in threads.items()}


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    name, path = m.groups()
    parts = Path(path).parts
    return f"{name} ({'/'.join(parts[-2:])})"


def report(path: Path, *, only: list[str], top: int) -> str:
    threads = parse(path.read_text(errors="replace"))
    lines = [f"== {path.name}"]
    for name, (samples, own, total) in sorted(threads.items(), key=lambda kv: -kv[1][0]):
        if only and not any(name.startswith(o) for o in only):
            continue
        lines.append(f"-- {name}: {samples} samples")
        lines.append("   self:  " + "; ".join(f"{100 * n / samples:.0f}% {f}" for f, n in own.most_common(top)))
        shared = [(f, n) for f, n in total.most_common() if n < samples]  # not the frames every sample has
        lines.append("   total: " + "; ".join(f"{100 * n / samples:.0f}% {f}" for f, n in shared[:top * 2]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path)
    p.add_argument("--threads", default="", help="comma-separated thread name prefixes (default: all)")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args()
    only = [t for t in args.threads.split(",") if t]
    for path in args.files:
        print(report(path, only=only, top=args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
