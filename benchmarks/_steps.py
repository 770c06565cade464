"""The step runner the GPU benchmarks share: time each step, keep going past a failure,
and save the results after every step (a run cut short still leaves its figures)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable


class Steps:
    def __init__(self, results: dict, json_path: Path, *, preview_chars: int = 600) -> None:
        self.results = results
        self.json_path = json_path
        self.preview_chars = preview_chars

    def __call__(self, name: str, fn: Callable[[], object]) -> None:
        t0 = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a benchmark reports what failed and goes on
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}"}
        preview = json.dumps(self.results[name], default=str)[: self.preview_chars]
        print(f"[{time.perf_counter() - t0:6.1f}s] {name}: {preview}", flush=True)
        self.save()

    def save(self) -> None:
        self.json_path.write_text(json.dumps(self.results, indent=2, default=str))


def steady_fps(stats: dict) -> float | None:
    """Frames per second after the first frame, from a run's stats (`RunStats.to_dict()` or the
    `--stats-json` file); None where the run gave no first frame. Stats from before 2026-12-06
    lack `after_first_frame_fps`: there `wall_seconds - first_frame_seconds` is taken, which mixes
    two clocks (the first frame counts from the call of run(), the wall from the stages' start)
    and overstates the rate by the planning's seconds."""
    if "after_first_frame_fps" in stats:
        return stats["after_first_frame_fps"]
    frames, wall, first = stats["frames_written"], stats["wall_seconds"], stats.get("first_frame_seconds")
    return (frames - 1) / (wall - first) if first is not None and wall > first else None
