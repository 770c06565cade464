"""The service on a GPU: one job alone vs two concurrent jobs on one GPU, and the model
manager's load / offload / restore times and GPU memory, through a real `main.py serve`.

    python benchmarks/bench_service.py --out bench-out/service

Steps, in one run against one server (uvicorn, 127.0.0.1, a fresh job database):
  1. job A alone                     (the model is loaded from disk onto the GPU)
  2. jobs B and C submitted at once  (one module shared; both on the one GPU)
  3. job D alone after B and C       (the model comes back from host memory: restore)
  4. wait for the idle timeout       (the model is released; the service's GPU memory drops)
  5. with two GPUs or more: two jobs queued together (a GPU each), then job G alone (it takes
     every idle GPU)
Every output is decoded and its frames counted. Writes service.json and service.log.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="640x480")
    p.add_argument("--frames", type=int, default=240)
    p.add_argument("--model", default="realesr-animevideov3")
    p.add_argument("--scale", type=int, default=2)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--compile", default="off", choices=("auto", "on", "off"))
    p.add_argument("--idle-timeout", type=float, default=15.0)
    p.add_argument("--port", type=int, default=7861)
    p.add_argument("--work", type=Path, default=Path("/tmp/bench-service"))
    p.add_argument("--out", type=Path, default=Path("bench-out/service"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    from hw.clips import make_clip

    w, h = map(int, args.size.split("x"))
    make_clip(args.work / "in.mp4", width=w, height=h, num_frames=args.frames, fps=24, photo=True, audio=True)
    log = open(args.out / "service.log", "w")
    server = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "serve", "--root", str(args.work), "--port",
                               str(args.port), "--idle-timeout", str(args.idle_timeout)], stdout=log, stderr=log, cwd=ROOT)
    url = f"http://127.0.0.1:{args.port}"
    http = httpx.Client(base_url=url, timeout=60)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "samples": []}
    try:
        t0 = time.monotonic()
        while True:
            try:
                http.get("/health")
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() - t0 > 120:
                    raise SystemExit("server did not start; see service.log")
                time.sleep(0.2)
        results["server_start_seconds"] = round(time.monotonic() - t0, 2)
        settings = {"model": args.model, "scale": args.scale, "preset": args.preset, "compile": args.compile}

        def sample(label: str) -> dict:
            status = http.get("/gpu/status").json()
            d = status["devices"][0]
            s = {"t": round(time.monotonic() - t0, 2), "label": label, "device": d["device"],
                 "memory_used_mib": d["memory_used"] >> 20, "utilization": d["utilization_percent"],
                 "service_allocated_mib": (d.get("service_allocated") or 0) >> 20,
                 "service_reserved_mib": (d.get("service_reserved") or 0) >> 20,
                 "queue": d["queue_length"], "score": d["score"], "models": d["models"]}
            results["samples"].append(s)
            return s

        def submit(name: str) -> str:
            r = http.post("/jobs", json={"source": "in.mp4", "output": f"{name}.mp4", **settings})
            r.raise_for_status()
            return r.json()["jobs"][0]["id"]

        def wait(ids: list[str], label: str) -> list[dict]:
            while True:
                jobs = [http.get(f"/jobs/{i}").json() for i in ids]
                sample(label)
                if all(j["state"] in ("done", "failed", "cancelled") for j in jobs):
                    return jobs
                time.sleep(0.5)

        def summary(job: dict) -> dict:
            import av

            with av.open(job["output"]) as c:
                frames = sum(1 for _ in c.decode(video=0))
            return {"id": job["id"], "state": job["state"], "error": job["error"], "frames_done": job["frames_done"],
                    "frames_in_output": frames, "fps": job["fps"], "devices": job["devices"],
                    "started": job["started"], "finished": job["finished"],
                    "wall_seconds": round(job["finished"] - job["started"], 2) if job["finished"] else None}

        sample("before")
        (a,) = wait([submit("a")], "job A alone")
        results["alone"] = summary(a)
        results["after_alone"] = sample("after A")
        b, c = submit("b"), submit("c")
        jobs = wait([b, c], "jobs B+C together")
        results["together"] = [summary(j) for j in jobs]
        span = max(j["finished"] for j in jobs) - min(j["started"] for j in jobs)
        results["together_aggregate_fps"] = round(sum(j["frames_done"] for j in jobs) / span, 2)
        results["alone_fps"] = a["fps"]
        results["after_together"] = sample("after B+C")
        (d,) = wait([submit("d")], "job D (restore)")
        results["restore_job"] = summary(d)
        results["after_restore"] = sample("after D")
        deadline = time.monotonic() + args.idle_timeout + 20
        while time.monotonic() < deadline:
            s = sample("waiting for the idle timeout")
            if not s["models"]:
                break
            time.sleep(1)
        results["after_idle_timeout"] = sample("after the idle timeout")
        results["model_times"] = results["after_restore"]["models"]
        num_devices = len(http.get("/gpu/status").json()["devices"])
        if num_devices >= 2:  # scheduling across GPUs: a pair queued together, then a lone job spreading
            folder = args.work / "pair"
            folder.mkdir()
            for name in ("e.mp4", "f.mp4"):
                (folder / name).write_bytes((args.work / "in.mp4").read_bytes())
            (args.work / "pair-out").mkdir()
            r = http.post("/jobs", json={"source": "pair", "output": "pair-out", **settings})
            r.raise_for_status()
            pair = wait([j["id"] for j in r.json()["jobs"]], "pair E+F queued together")
            results["pair"] = [summary(j) for j in pair]
            span = max(j["finished"] for j in pair) - min(j["started"] for j in pair)
            results["pair_aggregate_fps"] = round(sum(j["frames_done"] for j in pair) / span, 2)
            (g,) = wait([submit("g")], "job G alone (spread over the idle GPUs)")
            results["spread"] = summary(g)
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
        (args.out / "service.json").write_text(json.dumps(results, indent=2))
    keys = ("server_start_seconds", "alone_fps", "together_aggregate_fps", "model_times", "pair", "pair_aggregate_fps",
            "spread")
    print(json.dumps({k: results.get(k) for k in keys}, indent=2))
    print("memory after A / after B+C / after D / after idle timeout (service reserved MiB):",
          [results[k]["service_reserved_mib"] for k in ("after_alone", "after_together", "after_restore", "after_idle_timeout")])


if __name__ == "__main__":
    main()
