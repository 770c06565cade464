"""The service (issue 14), in-process: path confinement, the weighted choice of device, the
model manager's state machine on a fake clock, the scheduler's fault handling, the HTTP API's
contract (FastAPI's TestClient) and the MCP tools (the SDK's in-process client).

Real servers (uvicorn in a child process: restart, load test, browser) are in
tests/test_service_live.py."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core.errors import HardwareUnavailable, InvalidOption
from service.devices import RETRY_SECONDS, Devices, score
from service.jobs import JobRequest
from service.models import ModelManager
from service.paths import PathRefused, Roots
from service.service import Service
from service.store import JobStore
from tests import probe

pytestmark = pytest.mark.usefixtures("no_stage_threads_left")

LOSSLESS = {"model": "bicubic", "scale": 2, "quality": 0, "preset": "ultrafast"}


# -- paths --------------------------------------------------------------------------------------
@pytest.fixture
def root(tmp_path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    (r / "in.mp4").write_bytes(b"x")
    return r


@pytest.mark.parametrize("text", ["../outside.mp4", "sub/../../outside.mp4", "/etc/passwd", "file:in.mp4",
                                  "pipe:0", "concat:in.mp4|in.mp4", "http://example.com/v.mp4", "in.mp4\x00.txt", ""])
def test_paths_outside_the_roots_or_with_a_protocol_are_refused(root, text):
    (root.parent / "outside.mp4").write_bytes(b"x")
    with pytest.raises(PathRefused):
        Roots([root]).resolve(text, what="source", must_exist=True)


def test_a_symlink_out_of_the_root_is_refused_in_the_middle_or_at_the_end(root, tmp_path):
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "v.mp4").write_bytes(b"x")
    (root / "escape").symlink_to(secret)
    (root / "link.mp4").symlink_to(secret / "v.mp4")
    roots = Roots([root])
    for text in ("escape/v.mp4", "link.mp4", str(root / "escape" / "new.mp4")):
        with pytest.raises(PathRefused, match="outside"):
            roots.resolve(text, what="output", must_exist=False)


def test_the_services_own_folder_is_off_limits_though_inside_a_root(root):
    (root / ".framepipe").mkdir()
    (root / ".framepipe" / "service.db").write_bytes(b"")
    roots = Roots([root], private=[root / ".framepipe"])
    for text in (".framepipe/service.db", ".framepipe/x.mp4", ".framepipe", "sub/../.framepipe/service.db"):
        with pytest.raises(PathRefused, match="own folder"):
            roots.resolve(text, what="output", must_exist=False)
    assert roots.resolve("in.mp4", what="source", must_exist=True) == root / "in.mp4"


def test_paths_inside_any_root_are_taken_resolved(root, tmp_path):
    second = tmp_path / "second"
    second.mkdir()
    (root / "inner").mkdir()
    (root / "inner" / "ok.mp4").symlink_to(root / "in.mp4")  # a link that stays inside
    roots = Roots([root, second])
    assert roots.resolve("in.mp4", what="source", must_exist=True) == root / "in.mp4"
    assert roots.resolve("inner/ok.mp4", what="source", must_exist=True) == root / "in.mp4"
    assert roots.resolve(str(second / "new.mp4"), what="output", must_exist=False) == second / "new.mp4"
    with pytest.raises(PathRefused, match="does not exist"):
        roots.resolve("missing.mp4", what="source", must_exist=True)


# -- the weighted choice of device ----------------------------------------------------------------
def test_score_is_the_documented_weighting():
    assert score(2, 40.0, 50.0) == 2 * 10 + 40 * 0.5 + 50 * 0.3


def _devices(figures, clock=None):
    """Fake GPUs with NVML figures {index: (used, total, utilisation)}."""
    return Devices(list(figures), clock=clock or time.monotonic,
                   sample=lambda i: ((figures[i][0], figures[i][1]), figures[i][2]))


def test_the_device_with_the_lowest_score_gets_the_job():
    gib = 2**30
    figures = {0: (60 * gib, 80 * gib, 90), 1: (10 * gib, 80 * gib, 5), 2: (20 * gib, 80 * gib, 0)}
    devices = _devices(figures)
    # scores: gpu0 37.5 + 27 = 64.5; gpu1 6.25 + 1.5 = 7.75; gpu2 12.5 + 0 = 12.5
    assert [d.name for d in devices.choose("a")] == ["cuda:1"]
    # gpu1 now has a queue of 1: 17.75 > gpu2's 12.5
    assert [d.name for d in devices.choose("b")] == ["cuda:2"]
    status = {d["device"]: d for d in devices.status()}
    assert status["cuda:1"]["score"] == 17.8 and status["cuda:0"]["score"] == 64.5
    devices.leave("a")
    assert [d.name for d in devices.choose("c")] == ["cuda:1"]


def test_a_device_with_its_memory_nearly_full_takes_no_job_and_the_job_waits():
    gib = 2**30
    figures = {0: (79 * gib, 80 * gib, 0), 1: (10 * gib, 80 * gib, 100)}
    devices = _devices(figures)
    assert [d.name for d in devices.choose("a")] == ["cuda:1"]
    figures[1] = (78 * gib, 80 * gib, 100)
    devices._last_sample = -1e9
    assert devices.choose("b") == []


def test_a_faulted_device_is_left_out_and_tried_again_after_30_s():
    now = [1000.0]
    devices = _devices({0: (0, 100, 0), 1: (50, 100, 50)}, clock=lambda: now[0])
    devices.fault("cuda:0", "Xid 79")
    assert [d.name for d in devices.choose("a")] == ["cuda:1"]
    assert devices.status()[0]["health"] == "unhealthy"
    now[0] += RETRY_SECONDS
    devices.leave("a")
    assert [d.name for d in devices.choose("b")] == ["cuda:0"]


def test_spread_adds_the_idle_devices():
    devices = _devices({0: (0, 100, 0), 1: (0, 100, 0), 2: (0, 100, 0)})
    devices.choose("busy")  # gpu0
    assert [d.name for d in devices.choose("big", spread=True)] == ["cuda:1", "cuda:2"]


# -- the model manager ----------------------------------------------------------------------------
class _FakeModel:
    """A LoadedModel stand-in counting builds; its module records where it is."""

    scale = 2

    def __init__(self):
        self.builds = 0

    def build(self, device, dtype):
        self.builds += 1
        m = torch.nn.Conv2d(3, 3, 1)
        m.where = str(device)
        return m


def _fake_move(module, device):
    module.where = str(device)
    return module


def _manager(clock, freed=None):
    return ModelManager(idle_timeout=60, clock=lambda: clock[0], move=_fake_move,
                        free=lambda device: freed.append(str(device)) if freed is not None else None)


def test_model_manager_load_offload_restore_release_on_a_fake_clock():
    clock, freed = [0.0], []
    manager, model = _manager(clock, freed), _FakeModel()
    gpu = torch.device("cuda:0")
    m = manager.acquire(model, "net", gpu, torch.float16)  # disk -> GPU
    assert m.where == "cuda:0" and model.builds == 1
    assert manager.status()[0]["location"] == "gpu" and manager.status()[0]["in_use_by"] == 1
    m2 = manager.acquire(model, "net", gpu, torch.float16)  # a second job shares it
    assert m2 is m and model.builds == 1 and manager.status()[0]["in_use_by"] == 2
    manager.release(model, "net", gpu, torch.float16)
    assert manager.status()[0]["location"] == "gpu"  # still used by one job
    manager.release(model, "net", gpu, torch.float16)
    s = manager.status()[0]
    assert s["location"] == "cpu" and m.where == "cpu" and freed == ["cuda:0"]  # offloaded when its jobs finished
    assert s["offload_seconds"] is not None
    clock[0] += 30
    assert manager.check_idle() == []  # idle 30 s < 60 s
    assert manager.status()[0]["idle_seconds"] == 30.0
    m3 = manager.acquire(model, "net", gpu, torch.float16)  # back on the GPU without a rebuild
    assert m3 is m and m.where == "cuda:0" and model.builds == 1
    assert manager.status()[0]["restore_seconds"] is not None
    clock[0] += 1000
    assert manager.check_idle() == []  # in use: never released
    manager.release(model, "net", gpu, torch.float16)
    clock[0] += 59
    assert manager.check_idle() == []
    clock[0] += 2
    assert manager.check_idle() == ["net x2 on cuda:0"]
    assert manager.status() == []
    manager.acquire(model, "net", gpu, torch.float16)
    assert model.builds == 2  # released: loaded from disk again


def test_forced_offload_and_release_leave_models_in_use_alone():
    clock = [0.0]
    manager, model = _manager(clock), _FakeModel()
    a, b = torch.device("cuda:0"), torch.device("cuda:1")
    manager.acquire(model, "net", a, torch.float16)
    manager.acquire(model, "net", b, torch.float16)
    manager.release(model, "net", b, torch.float16)  # cuda:1 idle on the CPU now
    manager.acquire(model, "net", b, torch.float16)  # and back
    manager.release_idle()  # nothing idle on a GPU... cuda:1 is in use again
    assert {s["device"]: s["location"] for s in manager.status()} == {"cuda:0": "gpu", "cuda:1": "gpu"}
    manager.release(model, "net", b, torch.float16)
    assert manager.offload("cuda:0") == []  # in use
    assert manager.release_idle("cuda:1") == ["net x2 on cuda:1"]
    assert [s["device"] for s in manager.status()] == ["cuda:0"]
    with pytest.raises(ValueError):
        manager.set_idle_timeout(0)


def test_the_monitor_thread_releases_idle_models():
    manager = ModelManager(idle_timeout=0.2)
    model = _FakeModel()
    manager.acquire(model, "net", torch.device("cpu"), torch.float32)
    manager.release(model, "net", torch.device("cpu"), torch.float32)
    assert manager.status()[0]["location"] == "cpu"  # the CPU device: no offload, kept until released
    manager.start_monitor(every_seconds=0.05)
    try:
        deadline = time.monotonic() + 5
        while manager.status() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert manager.status() == []
    finally:
        manager.close()


# -- the scheduler and the API --------------------------------------------------------------------
def _service(root, *, devices=None, run=None, token=None, **kw) -> Service:
    return Service(roots=Roots([root]), store=JobStore(root / "jobs.db"), devices=devices or Devices(None),
                   models=ModelManager(idle_timeout=60), token=token, run=run, event_seconds=0.05, **kw)


def _client(service, **kw):
    from fastapi.testclient import TestClient

    from service.api import create_app

    # The server answers only to the names it is reached by (issue 2): the loopback address here.
    return TestClient(create_app(service, **kw), base_url="http://127.0.0.1:7860")


def _wait(client, job_id, states=("done", "failed", "cancelled"), timeout=60.0, headers=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["state"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still {job['state']}")


@pytest.fixture
def clip_root(clips, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    src = clips("svc.mp4", num_frames=30, audio=True)
    (root / "in.mp4").write_bytes(src.read_bytes())
    return root


def test_a_job_runs_frame_exact_and_reports_its_progress(clip_root):
    from pipeline import RunConfig, run

    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        r = client.post("/jobs", json={"source": "in.mp4", "output": "out.mp4", **LOSSLESS, "segment_frames": 8})
        assert r.status_code == 201, r.text
        (job,) = r.json()["jobs"]
        assert job["state"] == "queued" and job["output"] == str(clip_root / "out.mp4")
        done = _wait(client, job["id"])
        assert done["state"] == "done", done
        assert done["frames_done"] == done["frames_total"] == 30 and done["progress"] == 1.0
        assert done["devices"] == ["cpu"] and done["error"] is None and done["attempts"] == 1
        assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [job["id"]]
        whole = clip_root / "whole.mp4"
        run(RunConfig(source=clip_root / "in.mp4", output=whole, model="bicubic", scale=2, crf=0, preset="ultrafast",
                      device="cpu"))  # the service above has the CPU as its one device
        out = clip_root / "out.mp4"
        assert probe.frames_yuv(out) and all(
            (a == b).all() for a, b in zip(probe.frames_yuv(out), probe.frames_yuv(whole), strict=True))
        assert probe.pts_exact(out) == probe.pts_exact(whole)
        assert probe.packet_times(out, "audio") == probe.packet_times(whole, "audio")
        models = client.get("/gpu/status").json()["devices"][0]["models"]
        assert [(m["model"], m["location"], m["in_use_by"]) for m in models] == [("bicubic", "cpu", 0)]
    finally:
        service.close()


def test_bad_requests_get_422_403_404_409_with_one_clear_line(clip_root):
    service = _service(clip_root)
    client = _client(service)
    cases = [
        ({"source": "in.mp4", "bogus": 1}, 422, "unknown setting 'bogus'"),
        ({"source": "in.mp4", "codec": "mpeg2"}, 422, "codec"),
        ({"source": "in.mp4", "scale": 0}, 422, "scale"),
        ({"source": "in.mp4", "compile": "maybe"}, 422, "compile"),
        ({"source": "in.mp4", "picture_format": "gif"}, 422, "picture_format"),
        ({"source": "in.mp4", "precision": "fp8"}, 422, "precision"),
        ({"output": "x.mp4"}, 422, "source"),
        ({"source": "in.mp4", "output": "out.avi"}, 422, "must end in"),
        ({"source": "in.mp4", "tile_size": 8}, 422, "Invalid \"tile_size\" (8)"),
        ({"source": "in.mp4", "scene_threshold": 0.3}, 422, "scene_threshold does nothing without interpolate"),
        ({"source": "in.mp4", "model": "no-such-model"}, 422, None),
        ({"source": "../in.mp4"}, 403, "outside"),
        ({"source": "/etc/hostname"}, 403, "outside"),
        ({"source": "pipe:0"}, 403, "protocols"),
        ({"source": "in.mp4", "output": "file:out.mp4"}, 403, "protocols"),
        ({"source": "in.mp4", "model": "../weights.pth"}, 403, "outside"),
        ({"source": "missing.mp4"}, 403, "does not exist"),
        ({"source": "in.mp4", "output": "in.mp4", "scale": 2}, 409, "exists"),
    ]
    for body, status, text in cases:
        r = client.post("/jobs", json=body)
        assert r.status_code == status, (body, r.text)
        error = r.json()["error"]
        assert "\n" not in error and "Traceback" not in error
        if text:
            assert text in error, (body, error)
    r = client.post("/jobs", content=b'{"source": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    assert client.get("/jobs/nope").status_code == 404
    assert client.delete("/jobs/nope").status_code == 404
    assert client.post("/gpu/timeout", json={"seconds": -1}).status_code == 422
    r = client.post("/gpu/offload", json={"device": "cuda:7"})
    assert r.status_code == 422 and "no device 'cuda:7'" in r.json()["error"]
    assert client.get("/jobs").json()["jobs"] == []  # nothing was queued by any of them


def test_the_model_being_a_user_file_must_be_inside_the_roots(clip_root, tmp_path):
    service = _service(clip_root)
    client = _client(service)
    (tmp_path / "evil.pth").write_bytes(b"x")
    r = client.post("/jobs", json={"source": "in.mp4", "model": str(tmp_path / "evil.pth")})
    assert r.status_code == 403


def test_a_token_is_required_on_every_call_but_the_page(clip_root):
    service = _service(clip_root, token="s3cret")
    client = _client(service)
    for method, path in (("get", "/jobs"), ("get", "/gpu/status"), ("get", "/health"), ("post", "/gpu/offload"),
                         ("delete", "/jobs/x"), ("get", "/jobs/x/events"), ("get", "/jobs/x/output"),
                         ("post", "/jobs/x/retry"), ("post", "/jobs/x/forget")):
        assert getattr(client, method)(path).status_code == 401, path
        assert getattr(client, method)(path, headers={"Authorization": "Bearer wrong"}).status_code == 401, path
    assert client.get("/health", headers={"Authorization": "Bearer s3cret"}).json() == {"ok": True}
    page = client.get("/")
    assert page.status_code == 200 and "framepipe service" in page.text and "s3cret" not in page.text


def test_serve_refuses_an_outside_address_without_a_token(root, capsys):
    from service.server import serve_main

    assert serve_main(["--root", str(root), "--host", "0.0.0.0"]) == 2
    assert "--token" in capsys.readouterr().err


def test_ctrl_c_while_serve_starts_is_one_line(root, capsys):
    """`main.py serve` imports torch for its process settings (seconds) before it serves."""
    from service.server import serve_main

    def interrupted() -> None:
        raise KeyboardInterrupt

    assert serve_main(["--root", str(root)], process_settings=interrupted) == 130
    assert capsys.readouterr().err.splitlines() == ["interrupted before the service started"]


def test_events_stream_progress_until_the_job_ends(clip_root):
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS}).json()["jobs"]
        events = []
        with client.stream("GET", f"/jobs/{job['id']}/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    events.append((kind, json.loads(line[6:])))
        assert events[-1][0] == "end" and events[-1][1]["state"] == "done"
        assert all(k == "progress" for k, _ in events[:-1])
        frames = [e["frames_done"] for _, e in events]
        assert frames == sorted(frames) and frames[-1] == 30
    finally:
        service.close()


def test_an_event_stream_whose_job_is_forgotten_meanwhile_ends_in_one_line(clip_root):
    """A job that ended and was forgotten between two of its stream's looks (POST .../forget at
    once): the stream sent `data: null`, then broke off with a TypeError traceback in the server's
    log (curl: exit 18). It ends with an `end` event saying the job is gone."""
    service = _service(clip_root)
    client = _client(service)
    job = service.store.add(source=str(clip_root / "in.mp4"), output=str(clip_root / "o.mp4"), settings={})
    events = []
    with client.stream("GET", f"/jobs/{job.id}/events") as r:
        kind = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[6:])))
                service.store.forget(job.id)  # between this look and the next
    assert [k for k, _ in events] == ["progress", "end"], events
    assert events[-1][1] == {"error": f"no job {job.id!r}: it was forgotten while it was watched"}
    service.store.close()


def _slow_workers(monkeypatch) -> Callable[[], None]:
    """Every batch 0.05 s slower, so a job can be cancelled mid-run; returns what undoes it."""
    from pipeline.worker import Worker

    original = Worker.process

    def slow(self, batch):
        time.sleep(0.05)
        return original(self, batch)

    monkeypatch.setattr(Worker, "process", slow)
    return lambda: monkeypatch.setattr(Worker, "process", original)


def _cancel_after(client, job_id: str, frames: int = 10) -> dict:
    """Cancel a job once it has done `frames` frames; its state after the cancel."""
    _wait(client, job_id, states=("running",))
    deadline = time.monotonic() + 30
    while client.get(f"/jobs/{job_id}").json()["frames_done"] < frames and time.monotonic() < deadline:
        time.sleep(0.02)
    return client.delete(f"/jobs/{job_id}").json()


def test_cancel_leaves_a_finalized_partial_output_that_a_new_job_resumes(clip_root, monkeypatch):
    full_speed = _slow_workers(monkeypatch)
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        body = {"source": "in.mp4", "output": "c.mp4", **LOSSLESS, "segment_frames": 5, "encoders": 1}
        (job,) = client.post("/jobs", json=body).json()["jobs"]
        cancelled = _cancel_after(client, job["id"])
        assert cancelled["state"] == "cancelled" and cancelled["frames_done"] < 30
        out = clip_root / "c.mp4"
        partial = probe.indices(out)
        assert partial == list(range(len(partial))) and 10 <= len(partial) < 30  # playable, in order
        assert (clip_root / "c.mp4.parts" / "manifest.json").is_file()
        error = _wait(client, job["id"], states=("cancelled",))["error"]
        assert "the same job submitted again" in error and "command" not in error, error  # a job has no command
        full_speed()
        # The same job submitted again finishes from the kept segments (the partial output is its own).
        r = client.post("/jobs", json=body)
        assert r.status_code == 201, r.text
        done = _wait(client, r.json()["jobs"][0]["id"])
        assert done["state"] == "done" and probe.indices(out) == list(range(30))
        assert done["frames_done"] == done["frames_total"] == 30  # the kept segments' frames are done too
        assert not (clip_root / "c.mp4.parts").exists()
    finally:
        service.close()


def test_a_job_that_raises_leaves_the_server_serving(clip_root):
    calls = []

    def run(config, **kw):
        calls.append(config.source)
        if len(calls) == 1:
            raise RuntimeError("a bug in a model\nwith a second line")
        return _stats(frames=3)

    service = _service(clip_root, run=run)
    service.start()
    try:
        client = _client(service)
        first = client.post("/jobs", json={"source": "in.mp4", "output": "a.mp4"}).json()["jobs"][0]
        failed = _wait(client, first["id"])
        assert failed["state"] == "failed" and failed["error"] == "RuntimeError: a bug in a model"
        second = client.post("/jobs", json={"source": "in.mp4", "output": "b.mp4"}).json()["jobs"][0]
        assert _wait(client, second["id"])["state"] == "done"
        assert client.get("/health").status_code == 200
    finally:
        service.close()


def test_a_gpu_fault_marks_the_device_unhealthy_and_requeues_the_job_on_another(clip_root):
    seen = []

    def run(config, *, on_progress, **kw):
        seen.append(config.device)
        if config.device == "cuda:0":
            on_progress(_stats(workers={"worker-gpu0": SimpleNamespace(device="cuda:0", health="failed")}))
            raise HardwareUnavailable("every device failed: worker-gpu0: 3 fault(s)")
        return _stats(frames=5)

    devices = _devices({0: (0, 100, 0), 1: (10, 100, 20)})
    service = _service(clip_root, devices=devices, run=run, spread=False)
    service.start()
    try:
        client = _client(service)
        job = client.post("/jobs", json={"source": "in.mp4", "output": "g.mp4", "scale": 2}).json()["jobs"][0]
        done = _wait(client, job["id"])
        assert seen == ["cuda:0", "cuda:1"]
        assert done["state"] == "done" and done["attempts"] == 2 and done["devices"] == ["cuda:1"]
        status = {d["device"]: d for d in client.get("/gpu/status").json()["devices"]}
        assert status["cuda:0"]["health"] == "unhealthy" and "worker-gpu0" in status["cuda:0"]["last_fault"]
        assert 0 < status["cuda:0"]["retry_in_seconds"] <= RETRY_SECONDS
    finally:
        service.close()


def _stats(*, frames=1, workers=None):
    """What a fake run reports (the fields the scheduler reads of pipeline.RunStats)."""
    return SimpleNamespace(num_frames_expected=frames, num_frames_decoded=frames, num_frames_written=frames, fps=1.0,
                           num_frames_done=frames, num_frames_total=frames, warnings=[], workers=workers or {})


def test_jobs_side_by_side_share_the_cores_a_job_alone_takes_them_all(clip_root, monkeypatch):
    """On 8 usable cores with two jobs to a device: the first job, alone, plans for all of them
    (cores None); the second, starting beside it, for half; the third waits for a free slot and
    then also starts beside one other."""
    import service.jobs as jobs

    monkeypatch.setattr(jobs, "usable_cores", lambda: 8)
    release, seen = {n: threading.Event() for n in "abc"}, {}

    def run(config, **kw):
        seen[config.output.name[0]] = config.cores
        release[config.output.name[0]].wait(10)
        return _stats()

    service = _service(clip_root, run=run, jobs_per_device=2)
    service.start()
    try:
        client = _client(service)

        def post(name):
            return client.post("/jobs", json={"source": "in.mp4", "output": f"{name}.mp4", "scale": 2}).json()["jobs"][0]["id"]

        a = post("a")
        _wait(client, a, states=("running",))
        b = post("b")
        _wait(client, b, states=("running",))
        c = post("c")
        time.sleep(0.3)
        assert client.get(f"/jobs/{c}").json()["state"] == "queued"  # two jobs to the device already
        release["a"].set()
        _wait(client, c, states=("running",))
        assert seen == {"a": None, "b": 4, "c": 4}
        release["b"].set(), release["c"].set()
        assert all(_wait(client, i)["state"] == "done" for i in (a, b, c))
    finally:
        for event in release.values():
            event.set()
        service.close()


def test_jobs_wait_when_every_device_is_full_and_run_in_submission_order(clip_root):
    release = threading.Event()
    order = []

    def run(config, **kw):
        order.append(config.output.name)
        release.wait(10)
        return _stats(frames=1)

    service = _service(clip_root, run=run, jobs_per_device=1)
    service.start()
    try:
        client = _client(service)
        ids = [client.post("/jobs", json={"source": "in.mp4", "output": f"{n}.mp4", "scale": 2}).json()["jobs"][0]["id"]
               for n in "abc"]
        _wait(client, ids[0], states=("running",))
        time.sleep(0.3)
        states = [client.get(f"/jobs/{i}").json() for i in ids]
        assert [s["state"] for s in states] == ["running", "queued", "queued"]
        assert [s["queue_position"] for s in states] == [None, 0, 1]
        cancelled = client.delete(f"/jobs/{ids[2]}").json()
        assert cancelled["state"] == "cancelled" and "before it started" in cancelled["error"]
        release.set()
        assert _wait(client, ids[1])["state"] == "done"
        assert order == ["a.mp4", "b.mp4"]
    finally:
        release.set()
        service.close()


def test_jobs_queued_together_get_a_gpu_each_and_a_lone_job_spreads_over_the_idle_ones(clip_root):
    release = threading.Event()
    seen = {}

    def run(config, **kw):
        seen[config.output.name if config.output else config.source.name] = (config.device, config.gpus)
        release.wait(10)
        return _stats(frames=1)

    folder = clip_root / "two"
    folder.mkdir()
    for name in ("x.mp4", "y.mp4"):
        (folder / name).write_bytes(b"not read by the fake run")
    service = _service(clip_root, devices=_devices({0: (0, 100, 0), 1: (0, 100, 0), 2: (0, 100, 0)}), run=run)
    service.start()
    try:
        client = _client(service)
        pair = client.post("/jobs", json={"source": "two", "output": "two", "scale": 2}).json()["jobs"]
        for j in pair:
            _wait(client, j["id"], states=("running",))
        # x waited with y behind it: one GPU. y was the last in the queue: it takes the idle rest.
        assert sorted(seen.values()) == [("auto", "1,2"), ("cuda:0", None)], seen
        lone = client.post("/jobs", json={"source": "in.mp4", "output": "lone.mp4", "scale": 2}).json()["jobs"][0]
        _wait(client, lone["id"], states=("running",))
        assert seen["lone.mp4"] == ("cuda:0", None)  # every GPU has one job: equal scores, the first
        release.set()
        for j in [*pair, lone]:
            assert _wait(client, j["id"])["state"] == "done"
        release.clear()
        wide = client.post("/jobs", json={"source": "in.mp4", "output": "wide.mp4", "scale": 2}).json()["jobs"][0]
        running = _wait(client, wide["id"], states=("running",))
        assert seen["wide.mp4"] == ("auto", "0,1,2") and running["devices"] == ["cuda:0", "cuda:1", "cuda:2"]
        queues = {d["device"]: d["queue"] for d in client.get("/gpu/status").json()["devices"]}
        assert queues == {"cuda:0": [wide["id"]], "cuda:1": [wide["id"]], "cuda:2": [wide["id"]]}
        release.set()
        assert _wait(client, wide["id"])["state"] == "done"
    finally:
        release.set()
        service.close()


def test_a_folder_of_videos_submits_one_job_each_into_the_output_folder(clip_root):
    folder = clip_root / "batch"
    folder.mkdir()
    for name in ("one.mp4", "two.mkv"):
        (folder / name).write_bytes((clip_root / "in.mp4").read_bytes())
    (folder / "notes.txt").write_text("not a video")
    (clip_root / "ups").mkdir()
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        r = client.post("/jobs", json={"source": "batch", "output": "ups", **LOSSLESS})
        assert r.status_code == 201, r.text
        jobs = r.json()["jobs"]
        assert [Path(j["source"]).name for j in jobs] == ["one.mp4", "two.mkv"]
        for j in jobs:
            assert _wait(client, j["id"])["state"] == "done"
        assert sorted(p.name for p in (clip_root / "ups").iterdir()) == ["one.bicubic-x2.mp4", "two.bicubic-x2.mkv"]
        assert probe.indices(clip_root / "ups" / "two.bicubic-x2.mkv") == list(range(30))
    finally:
        service.close()


def test_upload_runs_a_job_on_the_uploaded_video_and_is_size_limited(clip_root):
    service = _service(clip_root, max_upload_bytes=1 << 20)
    service.start()
    try:
        client = _client(service)
        data = (clip_root / "in.mp4").read_bytes()
        r = client.post("/jobs/upload", files={"file": ("my clip.mp4", data, "video/mp4")},
                        data={"settings": json.dumps(LOSSLESS), "output": "up.mp4"})
        assert r.status_code == 201, r.text
        uploaded = Path(r.json()["uploaded"])
        assert uploaded.parent == clip_root / "uploads" and uploaded.name == f"{uploaded.name[:32]}-my_clip.mp4"
        assert _wait(client, r.json()["jobs"][0]["id"])["state"] == "done"
        assert probe.indices(clip_root / "up.mp4") == list(range(30))
        assert not uploaded.exists()  # issue 8: the upload goes with the end of its job
        big = client.post("/jobs/upload", files={"file": ("big.mp4", b"\0" * (3 << 20), "video/mp4")})
        assert big.status_code == 413 and "limit" in big.json()["error"]
        bad = client.post("/jobs/upload", files={"file": ("x.mp4", data, "video/mp4")}, data={"settings": '{"codec": 5}'})
        assert bad.status_code == 422
        assert list((clip_root / "uploads").iterdir()) == []
    finally:
        service.close()


def test_offload_release_and_timeout_through_the_api(clip_root):
    service = _service(clip_root)
    client = _client(service)
    model = _FakeModel()
    service.models.acquire(model, "net", torch.device("cpu"), torch.float32)
    status = client.get("/gpu/status").json()
    (m,) = status["devices"][0]["models"]
    assert (m["model"], m["location"], m["in_use_by"]) == ("net", "cpu", 1)
    assert client.post("/gpu/release").json()["released"] == []  # in use
    service.models.release(model, "net", torch.device("cpu"), torch.float32)
    assert client.post("/gpu/release", json={"device": "cpu"}).json()["released"] == ["net x2 on cpu"]
    assert client.post("/gpu/timeout", json={"seconds": 5}).json() == {"idle_timeout_seconds": 5.0}
    assert client.get("/gpu/status").json()["idle_timeout_seconds"] == 5.0


# -- MCP --------------------------------------------------------------------------------------------
def test_the_mcp_tools_are_the_api_operations(clip_root):
    from mcp import Client

    from service.mcp_tools import TOOLS, make_mcp

    service = _service(clip_root)
    service.start()

    async def session():
        async with Client(make_mcp(service)) as client:
            names = sorted(t.name for t in (await client.list_tools()).tools)
            assert names == sorted(TOOLS)

            async def call(name, args=None):
                result = await client.call_tool(name, args or {})
                assert not result.is_error, result
                return result.structured_content

            status = await call("get_gpu_status")
            assert status["devices"][0]["device"] == "cpu"
            refused = await call("submit_job", {"source": "../x.mp4"})
            assert "outside" in refused["error"]
            bad = await call("submit_job", {"source": "in.mp4", "settings": {"codec": "x"}})
            assert "codec" in bad["error"]
            (job,) = (await call("submit_job", {"source": "in.mp4", "output": "m.mp4", "settings": LOSSLESS}))["jobs"]
            deadline = time.monotonic() + 60
            while (state := await call("job_status", {"job_id": job["id"]}))["state"] not in ("done", "failed"):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            assert state["state"] == "done" and state["frames_done"] == 30
            assert (await call("update_gpu_timeout", {"seconds": 9}))["idle_timeout_seconds"] == 9
            assert (await call("offload_gpu"))["offloaded"] == []
            assert (await call("release_gpu"))["released"] == ["bicubic x2 on cpu"]
            assert "has ended (done)" in (await call("cancel_job", {"job_id": job["id"]}))["error"]
            assert "no job" in (await call("job_status", {"job_id": "zzz"}))["error"]
            assert state["output_url"] == f"/jobs/{job['id']}/output"
            page = await call("job_status", {"state": ["done"], "limit": 1})
            assert [j["id"] for j in page["jobs"]] == [job["id"]] and page["total"] == 1 and page["next_offset"] is None
            assert "Invalid state 'over'" in (await call("job_status", {"state": ["over"]}))["error"]
            assert "only a failed or cancelled job" in (await call("retry_job", {"job_id": job["id"]}))["error"]
            assert (await call("forget_job", {"job_id": job["id"]}))["forgotten"] == job["id"]
            assert (await call("job_status"))["total"] == 0

    try:
        asyncio.run(session())
    finally:
        service.close()
    assert probe.indices(clip_root / "m.mp4") == list(range(30))


def test_the_store_keeps_jobs_across_a_restart(tmp_path):
    store = JobStore(tmp_path / "j.db")
    a = store.add(source="s", output="o", settings={"k": 1})
    store.update(a.id, state="running", frames_done=5, warnings=["w"])
    b = store.add(source="s2", output="o2", settings={})
    store.update(b.id, state="done")
    store.close()
    again = JobStore(tmp_path / "j.db")
    assert [j.id for j in again.unfinished()] == [a.id]
    job = again.get(a.id)
    assert (job.state, job.frames_done, job.warnings, job.settings) == ("running", 5, ["w"], {"k": 1})
    with pytest.raises(ValueError):
        again.update(a.id, state="exploded")
    assert os.path.getsize(tmp_path / "j.db") > 0
    again.close()


def test_a_database_an_earlier_server_made_is_taken_with_its_jobs(tmp_path):
    """The store's later columns (output_identity, forgotten) are added to an older database."""
    import sqlite3

    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript("CREATE TABLE jobs (id TEXT PRIMARY KEY, state TEXT NOT NULL, source TEXT NOT NULL, output TEXT NOT "
                     "NULL, settings TEXT NOT NULL, created REAL NOT NULL, started REAL, finished REAL, frames_done "
                     "INTEGER NOT NULL DEFAULT 0, frames_total INTEGER NOT NULL DEFAULT 0, fps REAL NOT NULL DEFAULT 0, "
                     "devices TEXT NOT NULL DEFAULT '[]', warnings TEXT NOT NULL DEFAULT '[]', error TEXT, attempts "
                     "INTEGER NOT NULL DEFAULT 0, resumed INTEGER NOT NULL DEFAULT 0);"
                     "INSERT INTO jobs (id, state, source, output, settings, created) VALUES ('old', 'done', 's', 'o', "
                     "'{}', 1.0);")
    db.commit()
    db.close()
    store = JobStore(tmp_path / "old.db")
    try:
        job = store.get("old")
        assert (job.state, job.output_identity, job.forgotten) == ("done", None, False)
        store.update("old", output_identity={"size": 1, "mtime_ns": 2, "inode": 3})
        assert store.get("old").output_identity == {"size": 1, "mtime_ns": 2, "inode": 3}
        store.forget("old")
        assert store.get("old") is None and store.list() == [] and store.count() == 0
    finally:
        store.close()


def test_invalid_roots_are_one_line(tmp_path):
    with pytest.raises(InvalidOption, match="not a folder"):
        Roots([tmp_path / "missing"])
    with pytest.raises(InvalidOption, match="at least one --root"):
        Roots([])


# -- the review's defects (one test each; the number is the review's) ------------------------------
def _asgi(app, method: str, path: str, headers: dict[str, str], chunks: list[bytes]):
    """One raw ASGI request; returns (status, JSON body, how many times the app read the body)."""
    reads, sent, chunks = [], [], list(chunks)

    async def receive():
        reads.append(1)
        if chunks:
            body = chunks.pop(0)
            return {"type": "http.request", "body": body, "more_body": bool(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in {"host": "127.0.0.1:7860", **headers}.items()],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7860)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body), len(reads)


def _multipart(name: str, data: bytes, boundary: str = "b0undary") -> bytes:
    return (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
            f"Content-Type: video/mp4\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()


def test_issue1_an_upload_body_is_not_read_before_the_token_nor_past_the_limit(root):
    from service.api import create_app

    service = _service(root, token="s3cret", max_upload_bytes=1 << 20)
    service.uploads.mkdir()
    app = create_app(service)
    body = _multipart("a.mp4", b"\0" * (3 << 20))
    chunks = [body[i:i + (64 << 10)] for i in range(0, len(body), 64 << 10)]
    form = {"content-type": "multipart/form-data; boundary=b0undary"}
    auth = {"authorization": "Bearer s3cret"}
    # No token: refused before a byte of the body is read.
    status, answer, reads = _asgi(app, "POST", "/jobs/upload", {**form, "content-length": str(len(body))}, chunks)
    assert (status, reads) == (401, 0) and "bearer token" in answer["error"]
    # Chunked (no Content-Length): refused before reading.
    status, answer, reads = _asgi(app, "POST", "/jobs/upload", {**form, **auth, "transfer-encoding": "chunked"}, chunks)
    assert (status, reads) == (411, 0) and "Content-Length" in answer["error"]
    # A Content-Length that lies: the bytes are counted, and reading stops past the limit.
    status, answer, reads = _asgi(app, "POST", "/jobs/upload", {**form, **auth, "content-length": "100"}, chunks)
    assert status == 413 and "limit" in answer["error"] and reads < len(chunks)
    assert list(service.uploads.iterdir()) == []
    # Every other body has a limit too (a JSON request is small).
    status, answer, reads = _asgi(app, "POST", "/jobs", {**auth, "content-type": "application/json",
                                                         "content-length": "10"}, [b" " * (2 << 20)])
    assert status == 413 and reads == 1
    big = _client(service).post("/jobs", content=b" " * (2 << 20), headers={**auth, "content-type": "application/json"})
    assert big.status_code == 413 and set(big.json()) == {"error"}
    service.store.close()


def test_issue2_other_sites_and_other_host_names_are_refused_the_page_and_mcp_still_work(clip_root):
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.mcp_tools import make_mcp

    (clip_root / "out.mp4").write_bytes(b"precious")
    service = _service(clip_root)  # loopback, no token
    client = _client(service)
    body = {"source": "in.mp4", "output": "out.mp4", "overwrite": True, **LOSSLESS}
    r = client.post("/jobs", json=body, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "another site" in r.json()["error"]
    assert client.delete("/jobs/x", headers={"Origin": "null"}).status_code == 403
    assert client.post("/gpu/release", headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    assert client.get("/jobs").json()["jobs"] == [] and (clip_root / "out.mp4").read_bytes() == b"precious"
    # DNS rebinding: the browser sends the attacker's name as the Host.
    rebound = TestClient(create_app(service), base_url="http://evil.example:7860")
    for path in ("/jobs", "/", "/gpu/status"):
        r = rebound.get(path)
        assert r.status_code == 421 and "--allow-host" in r.json()["error"], path
    for host in ("127.0.0.1:7860@evil.example", "[::1]:80@evil.example"):  # a "port" that is no number
        assert client.get("/jobs", headers={"Host": host}).status_code == 421, host
    assert client.get("/jobs", headers={"Host": "[::1]:7860"}).status_code == 200
    assert TestClient(create_app(service, allowed_hosts=["gpubox.lan"]),
                      base_url="http://gpubox.lan:7860").get("/jobs").status_code == 200
    # The page (same origin: its Origin is the Host) and a client that sends no Origin submit.
    page = client.get("/")
    assert page.status_code == 200
    r = client.post("/jobs", json={**body, "output": "same.mp4"}, headers={"Origin": "http://127.0.0.1:7860"})
    assert r.status_code == 201, r.text
    # MCP clients send no Origin: /mcp answers them; a browser page elsewhere is refused.
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    accept = {"Accept": "application/json, text/event-stream"}
    with TestClient(create_app(service, mcp=make_mcp(service)), base_url="http://localhost:7860") as mcp_client:
        assert mcp_client.post("/mcp", json=init, headers=accept).status_code == 200
        assert mcp_client.post("/mcp", json=init, headers={**accept, "Origin": "http://evil.example"}).status_code == 403
    service.store.close()


def test_issue3_a_folder_source_never_follows_a_link_out_of_the_roots(root, tmp_path):
    from hw.pictures import find_pictures

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(b"x")
    (outside / "secret.png").write_bytes(b"x")
    videos = root / "videos"
    videos.mkdir()
    (videos / "ok.mp4").write_bytes(b"x")
    (videos / "loop.mp4").symlink_to(videos / "loop.mp4")  # a link loop: left out, not followed
    (videos / "leak.mp4").symlink_to(outside / "secret.mp4")
    pictures = root / "pictures"
    pictures.mkdir()
    for n in (1, 2):
        (pictures / f"f{n:04d}.png").write_bytes(b"x")
    (pictures / "f0003.png").symlink_to(outside / "secret.png")
    (pictures / "f0004.png").symlink_to(pictures)  # a link to a folder (its own): not a picture
    (pictures / "f0005.png").symlink_to(pictures / "f0005.png")
    service = _service(root)
    client = _client(service)
    for source, what in (("videos", "video of the source folder"), ("pictures", "picture of the source folder")):
        r = client.post("/jobs", json={"source": source, "model": "bicubic", "scale": 2})
        assert r.status_code == 403 and what in r.json()["error"] and "outside" in r.json()["error"], r.text
    assert client.get("/jobs").json()["jobs"] == []
    # The command line's listing (hw.pictures): the link loop and the folder link are no pictures.
    (pictures / "f0003.png").unlink()
    assert [p.name for p in find_pictures(str(pictures)).paths] == ["f0001.png", "f0002.png"]
    (videos / "leak.mp4").unlink()
    r = client.post("/jobs", json={"source": "videos", "model": "bicubic", "scale": 2})
    assert r.status_code == 201 and [Path(j["source"]).name for j in r.json()["jobs"]] == ["ok.mp4"]
    service.store.close()


def test_issue4_a_stored_job_outside_the_roots_of_a_restarted_server_fails_untouched(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "in.mp4").write_bytes(b"x")
    calls = []

    def run(config, **kw):
        calls.append(config)
        return _stats()

    def service(roots):
        return Service(roots=Roots(roots), store=JobStore(b / "jobs.db"), devices=Devices(None),
                       models=ModelManager(idle_timeout=60), run=run)

    first = service([a, b])
    jobs = [first.submit(JobRequest(source=str(a / "in.mp4"), output=str(b / "o1.mp4"), model="bicubic", scale=2)),
            first.submit(JobRequest(source=str(b / "in.mp4"), output=str(a / "o2.mp4"), model="bicubic", scale=2))]
    first.store.close()  # the server stops before running them; it starts again with the root b only
    second = service([b])
    second.start()
    try:
        client = _client(second)
        for (job,), what in zip(jobs, ("source", "output")):
            done = _wait(client, job.id)
            assert done["state"] == "failed" and done["error"].startswith(f"{what} ") and "outside" in done["error"]
        assert calls == [] and sorted(p.name for p in a.iterdir()) == ["in.mp4"]
    finally:
        second.close()


def test_issue5_a_refused_folder_leaves_nothing_queued_and_earlier_outputs_are_not_inputs(clip_root):
    folder = clip_root / "batch"
    folder.mkdir()
    (clip_root / "ups").mkdir()
    for name in ("a.mp4", "b.mp4", "a.bicubic-x2.mp4", "a.bicubic-x2.partial.mkv", "c.realesrgan-x4plus-x4.mp4"):
        (folder / name).write_bytes(b"x")
    (clip_root / "ups" / "b.bicubic-x2.mp4").write_bytes(b"done before")
    (folder / "linked.mp4").symlink_to(clip_root / "ups" / "b.bicubic-x2.mp4")  # an output, by a link
    service = _service(clip_root)
    client = _client(service)
    settings = {"model": "bicubic", "scale": 2}
    r = client.post("/jobs", json={"source": "batch", "output": "ups", **settings})  # b's output exists: 409
    assert r.status_code == 409 and "b.bicubic-x2.mp4" in r.json()["error"]
    assert client.get("/jobs").json()["jobs"] == [] and service.store.unfinished() == []
    assert service.scheduler.queue_position("any") is None
    r = client.post("/jobs", json={"source": "batch", "output": "ups", "overwrite": True, **settings})
    assert r.status_code == 201, r.text
    assert [Path(j["source"]).name for j in r.json()["jobs"]] == ["a.mp4", "b.mp4"]
    r = client.post("/jobs", json={"source": "batch", **settings, "scale": 3})  # outputs beside the sources
    assert [Path(j["output"]).name for j in r.json()["jobs"]] == ["a.bicubic-x3.mp4", "b.bicubic-x3.mp4"]
    assert all(service.scheduler.queue_position(j["id"]) is not None for j in r.json()["jobs"])
    service.store.close()


def test_issue6_two_jobs_never_write_one_output(clip_root):
    folder = clip_root / "same"
    folder.mkdir()
    for name in ("a.avi", "a.ts"):
        (folder / name).write_bytes(b"x")
    service = _service(clip_root)
    client = _client(service)
    r = client.post("/jobs", json={"source": "same", "model": "bicubic", "scale": 2})
    assert r.status_code == 409 and "'a.avi' and 'a.ts' would both be written" in r.json()["error"], r.text
    assert client.get("/jobs").json()["jobs"] == []
    first = client.post("/jobs", json={"source": "in.mp4", "output": "x.mp4", **LOSSLESS}).json()["jobs"][0]
    r = client.post("/jobs", json={"source": "same/a.avi", "output": "x.mp4", **LOSSLESS})  # x.mp4 is queued
    assert r.status_code == 409 and f"output of job {first['id']} (queued)" in r.json()["error"]
    r = client.post("/jobs", json={"source": "same/a.avi", "output": "in.mp4", "overwrite": True, **LOSSLESS})
    assert r.status_code == 409 and f"source of job {first['id']}" in r.json()["error"]
    assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [first["id"]]
    service.store.close()


def test_issue7_a_cancel_is_never_lost_to_a_device_fault_and_an_input_error_blames_no_device(clip_root):
    calls, started = [], threading.Event()

    def run(config, *, on_progress, stop, **kw):
        calls.append(config.output.name)
        if config.output.name == "cancel.mp4":
            started.set()
            stop.wait(10)  # the device faults while the run stops
            on_progress(_stats(workers={"w": SimpleNamespace(device=config.device, health="failed")}))
            raise HardwareUnavailable("every device failed: worker-gpu0: 3 fault(s)")
        raise HardwareUnavailable("NVDEC returned a frame of shape (8, 8), expected (12, 8) for 8x8 4:2:0. "
                                  "Run without --nvdec.")

    devices = _devices({0: (0, 100, 0), 1: (10, 100, 20)})
    service = _service(clip_root, devices=devices, run=run, spread=False)
    service.start()
    try:
        client = _client(service)
        job = client.post("/jobs", json={"source": "in.mp4", "output": "cancel.mp4", "model": "bicubic"}).json()["jobs"][0]
        assert started.wait(10)
        cancelled = client.delete(f"/jobs/{job['id']}").json()
        assert cancelled["state"] == "cancelled" and cancelled["queue_position"] is None
        time.sleep(0.3)
        assert calls == ["cancel.mp4"]  # not requeued on the other GPU
        for d in devices.devices:
            d.unhealthy_until = 0.0
        bad = client.post("/jobs", json={"source": "in.mp4", "output": "nvdec.mp4", "model": "bicubic"}).json()["jobs"][0]
        failed = _wait(client, bad["id"])
        assert failed["state"] == "failed" and failed["attempts"] == 1 and "NVDEC returned" in failed["error"]
        assert [d["health"] for d in client.get("/gpu/status").json()["devices"]] == ["ok", "ok"]
    finally:
        service.close()


def test_issue8_an_upload_is_deleted_when_its_job_is_refused_or_ends(clip_root):
    service = _service(clip_root)
    service.uploads.mkdir()
    orphan = service.uploads / f"{'ab' * 16}-left.mp4"
    orphan.write_bytes(b"x")
    (service.uploads / "mine.mp4").write_bytes(b"x")  # not an upload's name: never deleted
    client = _client(service)
    data = (clip_root / "in.mp4").read_bytes()
    for form, status in (({"output": "../outside.mp4"}, 403), ({"settings": '{"source": "in.mp4"}'}, 422),
                         ({"settings": '["not", "an", "object"]'}, 422), ({"output": "in.mp4"}, 409)):
        r = client.post("/jobs/upload", files={"file": ("v.mp4", data, "video/mp4")}, data=form)
        assert r.status_code == status and set(r.json()) <= {"error", "detail"}, (form, r.text)
        assert "\n" not in r.json()["error"]
    r = client.post("/jobs/upload", files={"file": ("v.mp4", data, "video/mp4")}, data={"output": "v.mp4"})
    assert r.status_code == 201
    uploaded = Path(r.json()["uploaded"])
    assert sorted(p.name for p in service.uploads.iterdir()) == sorted([uploaded.name, orphan.name, "mine.mp4"])
    client.delete(f"/jobs/{r.json()['jobs'][0]['id']}")  # cancelled before it started: its upload goes
    assert not uploaded.exists()
    service.start()  # an upload no job uses (a server died between the two) is swept at the start
    service.close()
    assert sorted(p.name for p in service.uploads.iterdir()) == ["mine.mp4"]


@pytest.mark.parametrize("name", ["\u00e9" * 200 + ".mp4", "\u6620" * 150 + ".mkv"])
def test_an_uploads_long_non_ascii_name_is_shortened_in_bytes_not_a_503(clip_root, name):
    """The client's name was cut to 120 characters: 120 two- or three-byte characters and the
    upload's 33 made a name past the file system's 255 bytes, answered 503 "the server cannot store
    it now ... try again later" (no retry could help). The name is cut to its last 120 bytes."""
    service = _service(clip_root)
    service.uploads.mkdir()
    data = (clip_root / "in.mp4").read_bytes()
    r = _client(service).post("/jobs/upload", files={"file": (name, data, "video/mp4")},
                              data={"settings": json.dumps(LOSSLESS)})
    assert r.status_code == 201, r.text
    uploaded = Path(r.json()["uploaded"])
    assert uploaded.suffix == Path(name).suffix and len(uploaded.name.encode()) <= 33 + 120
    assert uploaded.name[33:-4] == name[-len(uploaded.name) + 33:-4]  # the end of the client's name
    service.store.close()


def test_issue9_an_upload_name_clash_never_deletes_the_other_upload(clip_root, monkeypatch):
    import uuid

    service = _service(clip_root)
    service.uploads.mkdir()
    fixed = uuid.UUID(int=7)
    monkeypatch.setattr("service.api.uuid.uuid4", lambda: fixed)
    other = service.uploads / f"{fixed.hex}-v.mp4"
    other.write_bytes(b"another client's upload")
    r = _client(service).post("/jobs/upload", files={"file": ("v.mp4", b"mine", "video/mp4")})
    assert r.status_code == 409 and "exists already" in r.json()["error"]
    assert other.read_bytes() == b"another client's upload" and len(fixed.hex) == 32
    service.store.close()


def test_issue10_checks_at_submit_one_error_shape_case_free_bearer_no_docs_one_server_per_db(clip_root, capsys):
    from fastapi.testclient import TestClient

    from core.errors import OutputBusy
    from service.api import create_app
    from service.mcp_tools import make_mcp
    from service.server import build_parser, make_service, serve_main

    service = _service(clip_root)
    client = _client(service)
    json_headers = {"content-type": "application/json"}
    for raw in (b'{"seconds": 1e999}', b'{"seconds": Infinity}', b'{"seconds": NaN}'):
        assert client.post("/gpu/timeout", content=raw, headers=json_headers).status_code == 422, raw
    r = client.post("/jobs", content=b'{"source": "in.mp4", "segment_seconds": 1e999}', headers=json_headers)
    assert r.status_code == 422 and "segment_seconds" in r.json()["error"]
    with pytest.raises(InvalidOption, match="idle timeout"):
        service.set_idle_timeout(float("inf"))
    # What the command line refuses before a run is refused at submit, not when the job runs.
    (clip_root / "model.txt").write_bytes(b"x")
    cases = [({"output": "missing/out.mp4"}, 422, "does not exist"),
             ({"scale": 9}, 422, 'Invalid "scale" (9) for model bicubic'),  # the setting, not the flag
             ({"output": "in.mp4", "overwrite": True}, 422, "same file"),
             ({"model": "main.py"}, 422, "Unknown model 'main.py'"),  # a file in the server's cwd: not looked at
             ({"model": "model.txt"}, 422, "Unknown model 'model.txt'"),
             ({"model": "sub/none.pth"}, 403, "does not exist")]
    for extra, status, text in cases:
        r = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", "model": "bicubic", "scale": 2, **extra})
        assert r.status_code == status and text in r.json()["error"], (extra, r.text)
    assert client.get("/jobs").json()["jobs"] == []
    # Every error body is {"error": "..."}.
    for r in (client.get("/jobs/nope"), client.get("/no/such/path"), client.put("/jobs")):
        assert set(r.json()) == {"error"} and r.status_code in (404, 405), r.text
    service.store.close()

    # A token: any case of "Bearer", on the API and /mcp alike; 401 is {"error"}; no /docs.
    service = _service(clip_root, token="s3cret")
    with TestClient(create_app(service, mcp=make_mcp(service)), base_url="http://127.0.0.1:7860") as client:
        r = client.get("/jobs")
        assert r.status_code == 401 and set(r.json()) == {"error"}
        assert client.get("/jobs", headers={"Authorization": "bEaReR s3cret"}).status_code == 200
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        accept = {"Accept": "application/json, text/event-stream"}
        assert client.post("/mcp", json=init, headers=accept).status_code == 401
        assert client.post("/mcp", json=init, headers={**accept, "Authorization": "bearer s3cret"}).status_code == 200
        for path in ("/docs", "/openapi.json"):
            assert client.get(path).status_code == 401
            assert client.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 404
    service.store.close()

    # A second server on the same root stops with one line; the first keeps the database.
    (clip_root / "second").mkdir()
    args = build_parser().parse_args(["--root", str(clip_root / "second")])
    first = make_service(args, devices=Devices(None))
    try:
        with pytest.raises(OutputBusy, match="another framepipe server is using the job database"):
            make_service(args, devices=Devices(None))
        assert serve_main(["--root", str(clip_root / "second")]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: another framepipe server"), errors
    finally:
        first.close()
    make_service(args, devices=Devices(None)).close()  # free again once the first has closed


def test_issue10_mcp_submit_job_with_paths_in_its_settings_is_a_clean_error(clip_root):
    from mcp import Client

    from service.mcp_tools import make_mcp

    service = _service(clip_root)

    async def session():
        async with Client(make_mcp(service)) as client:
            result = await client.call_tool("submit_job", {"source": "in.mp4", "settings": {"source": "x.mp4"}})
            assert not result.is_error and "settings hold 'source'" in result.structured_content["error"]
            result = await client.call_tool("update_gpu_timeout", {"seconds": -1})
            assert "idle timeout" in result.structured_content["error"]

    asyncio.run(session())
    service.store.close()


def test_an_interpolation_job_doubles_the_frames_and_is_named_like_the_cli(clip_root):
    """`interpolate` without a model only interpolates (as on the command line), named
    `<stem>.fps2x.mp4` beside the source; 30 frames -> 59."""
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        r = client.post("/jobs", json={"source": "in.mp4", "interpolate": 2, "interpolation_model": "blend",
                                       "quality": 0, "preset": "ultrafast"})
        assert r.status_code == 201, r.text
        (job,) = r.json()["jobs"]
        assert job["output"] == str(clip_root / "in.fps2x.mp4")
        assert job["settings"]["model"] == "bicubic" and job["settings"]["scale"] == 1
        done = _wait(client, job["id"])
        assert done["state"] == "done", done
        assert len(probe.pts_exact(clip_root / "in.fps2x.mp4")) == 2 * 29 + 1
        assert client.post("/jobs", json={"source": "in.mp4", "interpolate": 99}).status_code == 422
    finally:
        service.close()


def test_review_a_queued_jobs_work_folder_and_side_files_are_its_output_too(clip_root):
    """No second job writes inside a queued or running job's `.parts/` work folder, over its
    hidden temporary file or partial output, nor reads from them (a second job's output in
    a running job's work folder made that job fail); and no job's work folder is where another
    job's files are."""
    service = _service(clip_root)
    client = _client(service)
    first = client.post("/jobs", json={"source": "in.mp4", "output": "a.mp4", **LOSSLESS}).json()["jobs"][0]
    (clip_root / "a.mp4.parts").mkdir()  # as the job makes it when it runs
    for output in ("a.mp4.parts/segment-000000.mp4", ".a.0123abcd.part.mp4", "a.partial.mp4", "a.partial-2.mp4"):
        r = client.post("/jobs", json={"source": "in.mp4", "output": output, "overwrite": True, **LOSSLESS})
        assert r.status_code == 409 and f"of job {first['id']} (queued)" in r.json()["error"], (output, r.text)
    (clip_root / "a.mp4.parts" / "x.mp4").write_bytes((clip_root / "in.mp4").read_bytes())
    r = client.post("/jobs", json={"source": "a.mp4.parts/x.mp4", "output": "b.mp4", **LOSSLESS})
    assert r.status_code == 409 and "among the files job" in r.json()["error"], r.text
    r = client.post("/jobs", json={"source": "in.mp4", "output": "c.mp4", **LOSSLESS})  # an unrelated name: fine
    assert r.status_code == 201, r.text
    service.store.close()


def test_review_bad_numbers_names_and_cancels_get_one_clear_4xx(clip_root):
    """An encoder count meant to exhaust the server, a segment length that overflows, a name
    longer than the file system takes (a 500 with a traceback before), a cancel of a job that has
    ended; the upload limit named as the server was given it."""
    service = _service(clip_root, max_upload_bytes=1 << 20)
    client = _client(service)
    for settings, status, words in (({"encoders": 10**9}, 422, "encoders"), ({"segment_seconds": 1e308}, 422,
                                    "segment_seconds"), ({"decoders": 10**9}, 422, "decoders")):
        r = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS, **settings})
        assert r.status_code == status and words in r.text and "\n" not in r.json()["error"], r.text
    for field in ("source", "output", "model"):
        body = {"source": "in.mp4", "output": "o.mp4", **LOSSLESS, field: "a" * 300 + (".pth" if field == "model" else ".mp4")}
        r = client.post("/jobs", json=body)
        assert r.status_code in (403, 422) and "too long" in r.json()["error"], (field, r.text)
    r = client.post("/jobs/upload", files={"file": ("v.mp4", b"x" * (3 << 20), "video/mp4")})
    assert r.status_code == 413 and "(1 MiB)" in r.json()["error"], r.text
    service.start()
    job = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS}).json()["jobs"][0]
    assert _wait(client, job["id"])["state"] == "done"
    r = client.delete(f"/jobs/{job['id']}")
    assert r.status_code == 409 and "has ended (done)" in r.json()["error"], r.text
    service.close()


def test_review_an_uploads_output_beside_it_survives_a_restart(clip_root):
    """An upload's default output goes beside it in the uploads folder, named after the upload:
    the sweep of uploads no job uses at the next start kept only uploads, and deleted it."""
    service = _service(clip_root)
    service.start()
    client = _client(service)
    r = client.post("/jobs/upload", files={"file": ("clip.mp4", (clip_root / "in.mp4").read_bytes(), "video/mp4")},
                    data={"settings": json.dumps(LOSSLESS)})
    assert r.status_code == 201, r.text
    job = _wait(client, r.json()["jobs"][0]["id"])
    assert job["state"] == "done" and Path(job["output"]).parent == service.uploads
    service.close()
    again = _service(clip_root)
    again.start()
    again.close()
    assert Path(job["output"]).is_file() and len(probe.indices(Path(job["output"]))) == 30


def test_review_the_service_never_runs_a_torchscript_model(clip_root):
    """A TorchScript file in a root named as a job's model (as .pt, where weights are expected):
    refused at submit, and its code never ran (it overwrote a file outside the root as the
    submission was checked, before)."""
    from tests.faults import file_writing_torchscript

    victim = clip_root.parent / "victim.txt"
    victim.write_text("original content here")
    file_writing_torchscript(clip_root / "weights.pt", victim)
    service = _service(clip_root)
    client = _client(service)
    r = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", "model": "weights.pt"})
    assert r.status_code == 422 and "the service runs weights files only" in r.json()["error"], r.text
    assert victim.read_text() == "original content here"
    service.store.close()


def test_an_uploads_finished_output_is_never_deleted_as_an_upload(clip_root):
    """An upload's default output (`uploads/<id>-v.bicubic-x2.mp4`) bears an upload's name: a
    second job that read it deleted it when it ended, as if it were that job's upload."""
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        data = (clip_root / "in.mp4").read_bytes()
        r = client.post("/jobs/upload", files={"file": ("v.mp4", data, "video/mp4")},
                        data={"settings": json.dumps(LOSSLESS)})
        assert _wait(client, r.json()["jobs"][0]["id"])["state"] == "done"
        (result,) = list(service.uploads.iterdir())  # the upload went with its job; its output stays
        second = client.post("/jobs", json={**LOSSLESS, "source": f"uploads/{result.name}", "output": "again.mp4"})
        assert second.status_code == 201, second.text
        assert _wait(client, second.json()["jobs"][0]["id"])["state"] == "done"
        assert result.is_file() and probe.indices(result) == list(range(30))
    finally:
        service.close()
    restarted = _service(clip_root)
    restarted.start()  # nor at the next start's sweep
    restarted.close()
    assert result.is_file()


def test_a_jobs_pictures_and_a_users_own_file_in_the_uploads_folder_are_never_deleted_as_uploads(clip_root):
    """Uploads were told by their names' start alone (8 or 32 hex digits and a dash): a done job's
    pictures written there (output `uploads/deadbeef-%04d.png`) were deleted at the next start as
    "no job uses it", and so was a user's `20261208-trip.mp4` (a date is 8 hex digits), at the
    start or when a job that read it ended. An upload is 32 hex digits, a dash and a video's name."""
    service = _service(clip_root)
    service.uploads.mkdir()
    pictures = [service.uploads / f"deadbeef-{i:04d}.png" for i in range(3)]
    for picture in pictures:
        picture.write_bytes(b"a picture")
    job = service.store.add(source=str(clip_root / "in.mp4"), output=str(service.uploads / "deadbeef-%04d.png"),
                            settings={})
    service.store.update(job.id, state="done")
    dated = service.uploads / "20261208-trip.mp4"
    dated.write_bytes(b"the user's own video")
    reader = service.store.add(source=str(dated), output=str(clip_root / "trip.mp4"), settings={})
    service.store.update(reader.id, state="done")
    service.scheduler._drop_upload(service.store.get(reader.id))  # the job that read it ended
    assert dated.read_bytes() == b"the user's own video"
    orphan = service.uploads / f"{'ab' * 16}-left.mkv"  # an upload no job uses: still swept
    orphan.write_bytes(b"x")
    service.start()
    service.close()
    assert all(p.read_bytes() == b"a picture" for p in pictures) and dated.is_file() and not orphan.exists()


def test_a_second_server_on_the_root_with_a_database_of_its_own_is_refused(clip_root, tmp_path):
    """Its start swept the first server's uploads and results as "no job uses it" (its own
    database knew none of them)."""
    from core.errors import OutputBusy

    first = _service(clip_root)
    first.start()
    upload = first.uploads / f"{'cd' * 16}-running.mp4"
    upload.write_bytes(b"the first server's")
    first.store.add(source=str(upload), output=str(clip_root / "o.mp4"), settings={})
    second = Service(roots=Roots([clip_root]), store=JobStore(tmp_path / "other.db"), devices=Devices(None),
                     models=ModelManager(idle_timeout=60))
    try:
        with pytest.raises(OutputBusy, match="another framepipe server is using the uploads folder"):
            second.start()
        assert upload.read_bytes() == b"the first server's"
    finally:
        second.close()
        first.close()


def test_a_write_the_database_refuses_is_kept_and_never_leaves_a_job_running(tmp_path):
    """The database's disk full: the job thread's last write raised, the thread died, and the job
    stayed "running" for good (no cancel, no resubmit). Now the change is read back from memory
    and written once the database takes writes again."""
    import sqlite3

    store = JobStore(tmp_path / "j.db")
    job = store.add(source="s", output="o", settings={})
    store.update(job.id, state="running")

    class Full:
        def __init__(self, db):
            self.db, self.full = db, True

        def execute(self, sql, *args):
            if self.full and sql.startswith("UPDATE"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.db, name)

    store._db = full = Full(store._db)
    store.update(job.id, state="failed", error="no space", frames_done=7)  # never raises
    assert (store.get(job.id).state, store.get(job.id).frames_done) == ("failed", 7)
    assert store.unfinished() == [] and store.list()[0].state == "failed"
    full.full = False
    other = store.add(source="s2", output="o2", settings={})
    store.update(other.id, fps=1.0)  # the next write the database takes carries the kept one
    store.close()
    again = JobStore(tmp_path / "j.db")
    assert (again.get(job.id).state, again.get(job.id).error) == ("failed", "no space")
    again.close()


def test_overwrite_replaces_an_output_whose_work_folder_another_run_left(clip_root):
    """Jobs run as --resume (a restart finishes them): with "overwrite" a job whose output's work
    folder holds another run's parts failed ("Cannot resume ... pass --overwrite"); it starts again."""
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        first = client.post("/jobs", json={**LOSSLESS, "source": "in.mp4", "output": "o.mp4", "segment_frames": 10,
                                           "keep_parts": True, "max_frames": 20})
        assert _wait(client, first.json()["jobs"][0]["id"])["state"] == "done"
        (clip_root / "o.mp4").unlink()  # as a stopped job leaves it: the parts, and no output
        again = client.post("/jobs", json={**LOSSLESS, "source": "in.mp4", "output": "o.mp4", "scale": 1,
                                           "segment_frames": 10, "overwrite": True})
        job = _wait(client, again.json()["jobs"][0]["id"])
        assert job["state"] == "done", job
        assert probe.indices(clip_root / "o.mp4") == list(range(30))
    finally:
        service.close()


def test_a_full_disk_at_submit_or_upload_is_one_json_line_not_a_500(clip_root, monkeypatch):
    """The database's disk full at submit (sqlite3), the upload's at its write (OSError): plain
    text "Internal Server Error" (500) with a traceback in the log, before."""
    import errno
    import sqlite3

    service = _service(clip_root)
    client = _client(service)

    def full(*a, **k):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(service.store, "add_many", full)
    r = client.post("/jobs", json={**LOSSLESS, "source": "in.mp4", "output": "o.mp4"})
    assert r.status_code == 507 and "disk is full" in r.json()["error"] and "\n" not in r.json()["error"], r.text

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(service, "submit", no_space)
    r = client.post("/jobs", json={**LOSSLESS, "source": "in.mp4", "output": "o.mp4"})
    assert r.status_code == 507 and r.headers["content-type"] == "application/json", r.text
    monkeypatch.setattr(service, "submit", lambda request: (_ for _ in ()).throw(PermissionError(13, "Read-only")))
    r = client.post("/jobs", json={**LOSSLESS, "source": "in.mp4", "output": "o.mp4"})
    assert r.status_code == 503 and "cannot store it now" in r.json()["error"], r.text
    monkeypatch.undo()
    service.store.close()


def test_paths_and_methods_the_api_lacks_are_json_404_and_405_and_mcp_still_answers(clip_root):
    """The MCP app mounted at / answered every path the API lacks "Not Found" in plain text,
    wrong methods included (POST /jobs/abc, GET /gpu/offload)."""
    from fastapi.testclient import TestClient

    from service.api import create_app
    from service.mcp_tools import make_mcp

    service = _service(clip_root)
    with TestClient(create_app(service, mcp=make_mcp(service)), base_url="http://127.0.0.1:7860") as client:
        for method, path, status, allow in (("GET", "/gpu/offload", 405, "POST"), ("POST", "/jobs/abc", 405, "DELETE, GET"),
                                            ("DELETE", "/jobs", 405, "GET, POST"), ("GET", "/nothing", 404, None)):
            r = client.request(method, path)
            assert (r.status_code, r.headers.get("allow")) == (status, allow), (method, path, r.text)
            assert r.headers["content-type"] == "application/json" and "\n" not in r.json()["error"]
        r = client.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                        headers={"accept": "application/json, text/event-stream"})
        assert r.status_code == 200 and r.json()["result"]["tools"]
    service.store.close()


@pytest.mark.parametrize("bad", [{"scale": True}, {"scale": "2"}, {"nvdec": 1}, {"quality": 20.5}])
def test_settings_take_json_types_as_they_are(clip_root, bad):
    """`"scale": true` ran at scale 1: a setting of the wrong JSON type is a 422 naming it."""
    service = _service(clip_root)
    r = _client(service).post("/jobs", json={"source": "in.mp4", **bad})
    assert r.status_code == 422 and next(iter(bad)) in r.json()["error"], r.text
    service.store.close()


@pytest.mark.parametrize("data", [b"", b"\x00garbage" * 100])
def test_an_upload_nothing_can_read_is_refused_at_once_and_not_kept(clip_root, data):
    """An empty or garbage upload was accepted (201) and its job failed later; it is a 422 now,
    and the upload goes with the refusal."""
    service = _service(clip_root)
    service.uploads.mkdir()
    client = _client(service)
    r = client.post("/jobs/upload", files={"file": ("v.mp4", data, "video/mp4")})
    assert r.status_code == 422 and "\n" not in r.json()["error"], r.text
    assert list(service.uploads.iterdir()) == [] and service.store.list() == []
    service.store.close()


def test_errors_name_the_jobs_settings_not_the_command_lines_flags():
    from service.jobs import for_service

    assert for_service("Invalid --scale (99) for model bicubic: allowed are 2, 4.") == \
        'Invalid "scale" (99) for model bicubic: allowed are 2, 4.'
    assert for_service("--start 100s is past the end of the video. Pass --overwrite to replace it.") == \
        '"start" 100s is past the end of the video. pass "overwrite": true to replace it.'
    assert for_service("Run without --nvdec; the same command with --resume finishes it.") == \
        'Run without "nvdec"; the same job submitted again finishes it.'
    assert for_service("use --multi-gpu or --cpu-workers") == "use --multi-gpu or --cpu-workers"  # not settings


def test_a_bad_fps_is_refused_at_submit_for_a_video_too(clip_root):
    """"fps": "-5" with a video was accepted (201) and the job failed when it ran."""
    service = _service(clip_root)
    r = _client(service).post("/jobs", json={"source": "in.mp4", "output": "o.mp4", "model": "bicubic", "fps": "-5"})
    assert r.status_code == 422 and 'Invalid "fps"' in r.json()["error"], r.text
    assert service.store.list() == []
    service.store.close()


# -- results: download, retry, forget, pages ---------------------------------------------------------
def test_an_ended_jobs_output_downloads_whole_or_in_ranges_and_a_queued_ones_is_409(clip_root):
    """GET /jobs/{id}/output had no route: a result could be uploaded but not fetched back over HTTP."""
    service = _service(clip_root)
    client = _client(service)
    (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "o.mkv", **LOSSLESS}).json()["jobs"]
    r = client.get(f"/jobs/{job['id']}/output")  # not started yet: the server's dispatcher is off
    assert r.status_code == 409 and r.json() == {"error": f"job {job['id']} is queued: its output can be downloaded "
                                                          "once it has ended."}
    assert client.get(f"/jobs/{job['id']}").json()["output_url"] is None
    service.store.close()
    service = _service(clip_root)  # a server that starts, and takes the queued job up
    service.start()
    try:
        client = _client(service)
        done = _wait(client, job["id"])
        assert done["state"] == "done" and done["output_url"] == f"/jobs/{job['id']}/output", done["error"]
        data = (clip_root / "o.mkv").read_bytes()
        r = client.get(done["output_url"])
        assert r.status_code == 200 and r.content == data
        assert r.headers["content-type"] == "video/x-matroska" and r.headers["x-framepipe-output"] == "whole"
        assert r.headers["content-disposition"] == 'attachment; filename="o.mkv"'
        assert r.headers["accept-ranges"] == "bytes" and int(r.headers["content-length"]) == len(data)
        r = client.get(done["output_url"], headers={"Range": "bytes=1000-"})  # curl -C 1000, a player's seek
        assert r.status_code == 206 and r.content == data[1000:]
        assert r.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
        r = client.head(done["output_url"])
        assert r.status_code == 200 and r.content == b"" and int(r.headers["content-length"]) == len(data)
        assert client.get("/jobs/nope/output").json() == {"error": "no job 'nope'"}
    finally:
        service.close()


def test_a_download_is_the_jobs_own_file_and_nothing_else(clip_root, tmp_path):
    """The file served is the one the job wrote: not one put at its name since, not one reached
    through a folder swapped for a link out of the roots (the same file, hard-linked outside)."""
    (clip_root / "sub").mkdir()
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "sub/o.mp4", **LOSSLESS}).json()["jobs"]
        url = _wait(client, job["id"])["output_url"]
        assert client.get(url).status_code == 200
        outside = tmp_path / "outside"
        outside.mkdir()
        os.link(clip_root / "sub" / "o.mp4", outside / "o.mp4")  # the same file: size, time, inode
        (clip_root / "sub").rename(clip_root / "sub.old")
        (clip_root / "sub").symlink_to(outside)
        r = client.get(url)
        assert r.status_code == 403 and "outside the folders" in r.json()["error"], r.text
        (clip_root / "sub").unlink()
        (clip_root / "sub.old").rename(clip_root / "sub")
        assert client.get(url).status_code == 200
        (clip_root / "sub" / "o.mp4").write_bytes(b"someone else's file")
        r = client.get(url)
        assert r.status_code == 404 and r.json() == {"error": f"job {job['id']}: its output 'sub/o.mp4' was changed or "
                                                              "replaced since the job ended."}
        (clip_root / "sub" / "o.mp4").unlink()
        (clip_root / "sub" / "o.mp4").symlink_to(outside / "o.mp4")
        assert client.get(url).status_code == 404 and client.get(f"/jobs/{job['id']}").json()["output_url"] is None
        (clip_root / "sub" / "o.mp4").unlink()
        r = client.get(url)
        assert r.status_code == 404 and r.json()["error"] == f"job {job['id']}: its output 'sub/o.mp4' is gone."
    finally:
        service.close()


def test_a_signed_link_downloads_one_jobs_output_without_the_token_until_it_expires(clip_root, monkeypatch):
    """With a token, the page could only fetch a download with its header and hand the browser the
    whole file from memory (a 10 GB output: 10 GB in the tab). A link the server signs for one
    job's output stands in for the token on that GET/HEAD alone, and only until it expires."""
    import service.api as api

    auth = {"Authorization": "Bearer s3cret"}
    service = _service(clip_root, token="s3cret")
    service.start()
    try:
        client = _client(service)
        ids = [client.post("/jobs", json={"source": "in.mp4", "output": name, **LOSSLESS}, headers=auth).json()["jobs"][0]["id"]
               for name in ("a.mp4", "b.mp4")]
        for job_id in ids:
            assert _wait(client, job_id, headers=auth)["state"] == "done"
        a, b = ids
        assert client.get(f"/jobs/{a}/output").status_code == 401
        assert client.post(f"/jobs/{a}/output/link").status_code == 401  # a link is made with the token only
        link = client.post(f"/jobs/{a}/output/link", headers=auth).json()
        assert link["url"].startswith(f"/jobs/{a}/output?expires=") and link["expires"] > time.time() + 3000
        r = client.get(link["url"])  # no header: the link alone
        assert r.status_code == 200 and r.content == (clip_root / "a.mp4").read_bytes()
        assert client.get(link["url"], headers={"Range": "bytes=100-"}).status_code == 206
        assert client.head(link["url"]).status_code == 200
        query = link["url"].split("?", 1)[1]
        assert client.get(f"/jobs/{b}/output?{query}").status_code == 401  # another job's output
        assert client.get(f"/jobs/{a}?{query}").status_code == 401  # another route
        assert client.delete(f"/jobs/{a}/output?{query}").status_code == 401  # only GET/HEAD
        later = query.replace(f"expires={link['expires']}", f"expires={link['expires'] + 3600}")
        assert client.get(f"/jobs/{a}/output?{later}").status_code == 401  # its time changed: the key no longer fits
        monkeypatch.setattr(api.time, "time", lambda: link["expires"] + 1)
        assert client.get(link["url"]).status_code == 401  # expired
        monkeypatch.undo()
        r = client.post("/jobs/nope/output/link", headers=auth)
        assert r.status_code == 404 and r.json() == {"error": "no job 'nope'"}
    finally:
        service.close()


def test_a_link_is_refused_as_the_download_is_and_needs_no_signature_without_a_token(clip_root):
    service = _service(clip_root)
    client = _client(service)
    (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS}).json()["jobs"]
    r = client.post(f"/jobs/{job['id']}/output/link")  # queued: the server's dispatcher is off
    assert r.status_code == 409 and "can be downloaded once it has ended" in r.json()["error"]
    service.store.close()
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        _wait(client, job["id"])
        assert client.post(f"/jobs/{job['id']}/output/link").json() == {"url": f"/jobs/{job['id']}/output",
                                                                         "expires": None}
    finally:
        service.close()


def test_a_job_submitted_before_the_start_runs_once(clip_root):
    """start() queued every unfinished job again, one submitted to this service before it started
    included: it stood twice in the queue and two runs of it raced for its output."""
    runs = []

    def run(config, **kw):
        runs.append(config.output)
        time.sleep(0.3)  # long enough for a second dispatch of it to begin
        raise InvalidOption("stop here")

    service = _service(clip_root, run=run)
    client = _client(service)
    (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS}).json()["jobs"]
    assert service.scheduler.queue_position(job["id"]) == 0
    service.start()
    try:
        assert _wait(client, job["id"])["state"] == "failed"
        time.sleep(0.5)
        assert runs == [clip_root / "o.mp4"]
    finally:
        service.close()


def test_a_fixed_batch_above_the_probes_ceiling_is_taken(clip_root):
    """"batch_size": 300 was refused with "Raise --max-batch-size", a flag no job has."""
    service = _service(clip_root)
    r = _client(service).post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS, "batch_size": 300})
    assert r.status_code == 201, r.text
    assert r.json()["jobs"][0]["settings"]["batch_size"] == 300
    service.store.close()


@pytest.mark.parametrize("swap", ["another file", "a link"])
def test_a_download_refuses_a_file_swapped_in_between_its_check_and_its_open(clip_root, tmp_path, monkeypatch, swap):
    """The checks before the open see the job's file; what is opened must be it too: a file renamed
    over it, or a link put at its name, in between is refused (404), never served."""
    import service.service as svc

    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS}).json()["jobs"]
        url = _wait(client, job["id"])["output_url"]
        out = clip_root / "o.mp4"
        secret = tmp_path / "secret.mp4"
        secret.write_bytes(b"not the job's output" * 100)
        real_open = os.open

        def racing_open(path, flags, *args):
            if Path(path) == out:
                out.unlink()
                if swap == "a link":
                    out.symlink_to(secret)
                else:
                    (clip_root / "other.mp4").write_bytes(secret.read_bytes())
                    (clip_root / "other.mp4").rename(out)
            return real_open(path, flags, *args)

        monkeypatch.setattr(svc.os, "open", racing_open)
        r = client.get(url)
        assert r.status_code == 404 and b"not the job's output" not in r.content, r.text
        assert f"job {job['id']}: its output 'o.mp4'" in r.json()["error"]
    finally:
        monkeypatch.undo()
        service.close()


def test_an_empty_state_filter_lists_every_job(clip_root):
    service = _service(clip_root)
    client = _client(service)
    client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", **LOSSLESS})
    assert client.get("/jobs?state=").json()["total"] == client.get("/jobs").json()["total"] == 1
    service.store.close()


def test_a_matroska_jobs_total_is_fixed_while_it_runs(clip_root, clips, monkeypatch):
    """A Matroska file stores no frame count: a job's total was the frames decoded so far, which ran
    a queue ahead (53, 61, ... 120); it is the duration's estimate until the source ends."""
    (clip_root / "in.mkv").write_bytes(clips("svc-long.mkv", num_frames=120).read_bytes())
    _slow_workers(monkeypatch)
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        (job,) = client.post("/jobs", json={"source": "in.mkv", "output": "o.mkv", **LOSSLESS}).json()["jobs"]
        totals = set()
        while (state := client.get(f"/jobs/{job['id']}").json())["state"] in ("queued", "running"):
            if state["frames_done"]:
                totals.add(state["frames_total"])
            time.sleep(0.02)
        assert state["state"] == "done" and state["frames_done"] == 120
        assert totals == {120}, totals
    finally:
        service.close()


def test_a_failed_job_without_output_has_none_to_download(clip_root):
    def run(config, **kw):
        raise InvalidOption("a bad setting found late")

    service = _service(clip_root, run=run)
    service.start()
    try:
        client = _client(service)
        (job,) = client.post("/jobs", json={"source": "in.mp4", "output": "f.mp4"}).json()["jobs"]
        assert _wait(client, job["id"])["output_url"] is None
        r = client.get(f"/jobs/{job['id']}/output")
        assert r.status_code == 404 and r.json() == {"error": f"job {job['id']} (failed) left no playable output "
                                                              "(a bad setting found late)."}
    finally:
        service.close()


def test_a_cancelled_jobs_partial_output_downloads_and_a_retry_finishes_it_under_its_id(clip_root, monkeypatch):
    """A cancelled job could only be submitted again as a new job; POST /jobs/{id}/retry queues it
    again, and it resumes from its segments. Its partial output downloads meanwhile."""
    full_speed = _slow_workers(monkeypatch)
    service = _service(clip_root)
    service.start()
    try:
        client = _client(service)
        body = {"source": "in.mp4", "output": "c.mp4", **LOSSLESS, "segment_frames": 5, "encoders": 1}
        (job,) = client.post("/jobs", json=body).json()["jobs"]
        r = client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 409 and "only a failed or cancelled job can be retried" in r.json()["error"]
        cancelled = _cancel_after(client, job["id"])
        assert cancelled["state"] == "cancelled" and cancelled["output_url"] == f"/jobs/{job['id']}/output"
        r = client.get(cancelled["output_url"])
        assert r.status_code == 200 and r.headers["x-framepipe-output"] == "partial"
        assert r.headers["content-disposition"] == 'attachment; filename="c.partial.mp4"'
        (clip_root.parent / "got.mp4").write_bytes(r.content)
        partial = probe.indices(clip_root.parent / "got.mp4")
        assert partial == list(range(len(partial))) and 10 <= len(partial) < 30  # playable, in order
        full_speed()
        r = client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 200 and r.json()["id"] == job["id"] and r.json()["error"] is None, r.text
        done = _wait(client, job["id"])
        assert done["state"] == "done" and done["frames_done"] == 30 and probe.indices(clip_root / "c.mp4") == list(range(30))
        assert not (clip_root / "c.mp4.parts").exists()
        assert client.get(done["output_url"]).content == (clip_root / "c.mp4").read_bytes()
        assert [j["id"] for j in client.get("/jobs").json()["jobs"]] == [job["id"]]  # the same job, not a second
        assert client.post("/jobs/nope/retry").status_code == 404
    finally:
        service.close()


def test_a_retry_is_refused_in_one_line_when_its_source_is_gone_or_its_output_taken(clip_root):
    def run(config, **kw):
        raise InvalidOption("failed")

    service = _service(clip_root, run=run)
    service.start()
    try:
        client = _client(service)
        (clip_root / "gone.mp4").write_bytes((clip_root / "in.mp4").read_bytes())
        (job,) = client.post("/jobs", json={"source": "gone.mp4", "output": "g.mp4"}).json()["jobs"]
        _wait(client, job["id"])
        (clip_root / "gone.mp4").unlink()
        r = client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 409 and r.json() == {"error": f"job {job['id']} cannot be retried: its source "
                                                              "'gone.mp4' is gone."}
        (clip_root / "gone.mp4").write_bytes((clip_root / "in.mp4").read_bytes())
        (clip_root / "g.mp4").write_bytes(b"a file of the user's since")
        r = client.post(f"/jobs/{job['id']}/retry")
        assert r.status_code == 409 and "exists" in r.json()["error"] and "\n" not in r.json()["error"], r.text
        assert client.get(f"/jobs/{job['id']}").json()["state"] == "failed"
    finally:
        service.close()


def test_forget_leaves_an_ended_job_out_of_the_lists_and_touches_no_file(clip_root):
    service = _service(clip_root)
    client = _client(service)
    (queued,) = client.post("/jobs", json={"source": "in.mp4", "output": "q.mp4", **LOSSLESS}).json()["jobs"]
    r = client.post(f"/jobs/{queued['id']}/forget")
    assert r.status_code == 409 and r.json()["error"] == (f"job {queued['id']} is queued: cancel it first "
                                                          f"(DELETE /jobs/{queued['id']}), then forget it.")
    service.store.close()
    service = _service(clip_root)  # a server that starts, and takes the queued job up
    service.start()
    try:
        client = _client(service)
        assert _wait(client, queued["id"])["state"] == "done"
        r = client.post(f"/jobs/{queued['id']}/forget")
        assert r.status_code == 200 and r.json() == {"forgotten": queued["id"], "files_kept": [str(clip_root / "q.mp4")]}
        assert (clip_root / "q.mp4").is_file()
        assert client.get(f"/jobs/{queued['id']}").status_code == 404
        assert client.get("/jobs").json()["jobs"] == [] and client.get("/jobs").json()["total"] == 0
        assert client.post(f"/jobs/{queued['id']}/forget").status_code == 404
        assert service.store.outputs() == {str(clip_root / "q.mp4")}  # still known: the uploads' sweep spares it
    finally:
        service.close()


def test_jobs_come_in_pages_with_a_state_filter_and_the_total(clip_root):
    """GET /jobs gave up to 500 jobs at once, with no way to the rest, nor to one state's."""
    service = _service(clip_root)
    client = _client(service)
    ids = [service.store.add(source="s", output=f"o{i}", settings={}).id for i in range(5)]
    for job_id in ids[:2]:
        service.store.update(job_id, state="failed")
    page = client.get("/jobs?limit=2").json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2]  # newest first
    assert (page["total"], page["limit"], page["offset"], page["next_offset"]) == (5, 2, 0, 2)
    last = client.get("/jobs?limit=2&offset=4").json()
    assert [j["id"] for j in last["jobs"]] == [ids[0]] and last["next_offset"] is None
    failed = client.get("/jobs?state=failed").json()
    assert sorted(j["id"] for j in failed["jobs"]) == sorted(ids[:2]) and failed["total"] == 2
    assert client.get("/jobs?state=failed,queued").json()["total"] == 5
    assert client.get("/jobs").json()["limit"] == 100
    for query, words in (("limit=0", "Invalid limit (0): give 1 to 500"), ("limit=501", "Invalid limit (501)"),
                         ("offset=-1", "Invalid offset (-1): give 0 to "), ("state=finished", "Invalid state 'finished': allowed"),
                         ("limit=x", "limit: Input should be a valid integer")):
        r = client.get(f"/jobs?{query}")
        assert r.status_code == 422 and r.json()["error"].startswith(words) and "\n" not in r.json()["error"], (query, r.text)
    service.store.close()


def test_a_page_offset_past_what_sqlite_holds_is_a_422_not_a_500(root):
    """GET /jobs?offset=9223372036854775808 (and MCP's job_status with such an offset) answered a
    plain-text 500 with an OverflowError traceback in the server's log: SQLite's integers are 64-bit."""
    service = _service(root)
    client = _client(service)
    service.store.add(source="s", output="o", settings={})
    assert client.get(f"/jobs?offset={2**63 - 1}").json()["jobs"] == []  # the largest SQLite takes: an empty page
    for offset in (2**63, 10**30):
        r = client.get(f"/jobs?offset={offset}")
        assert r.status_code == 422 and r.json()["error"].startswith(f"Invalid offset ({offset}): give 0 to "), r.text
    with pytest.raises(InvalidOption, match=r"Invalid offset \(1180591620717411303424\)"):
        service.jobs(offset=2**70)  # what MCP's job_status calls
    service.store.close()


@pytest.mark.parametrize("settings, words", [
    ({"start": "100"}, '"start" 100s is past the end of the video: its last frame is at 1.208 s.'),
    ({"start": "1.25"}, '"start" 1.25s is past the end of the video: its last frame is at 1.208 s.'),
    ({"start": "30f"}, '"start" 30f is past the end of the video: it has 30 frames (0f to 29f).'),
    ({"start": "500f", "end": "600f"}, '"start" 500f is past the end of the video: it has 30 frames (0f to 29f).'),
    ({"bit_depth": 16}, '"bit_depth" 16 is for pictures (PNG/TIFF output); video is written with 8 or 10 bits.'),
])
def test_a_start_past_the_end_or_a_pictures_depth_for_a_video_is_refused_at_submit(clip_root, settings, words):
    """Accepted (201) and failed when the job ran ("Nothing to process"); a 422 now. The 30-frame
    clip's last frame is frame 29, at 29/24 s: a start there is taken."""
    service = _service(clip_root)
    client = _client(service)
    r = client.post("/jobs", json={"source": "in.mp4", "output": "o.mp4", "model": "bicubic", **settings})
    assert r.status_code == 422 and r.json() == {"error": words}, r.text
    for i, fine in enumerate(({"start": "29f"}, {"start": "1.2"}, {"start": "1.2083"}, {"bit_depth": 16, "output": "pics/"})):
        body = {"source": "in.mp4", "output": f"fine{i}.mp4", "model": "bicubic", **fine}
        assert client.post("/jobs", json=body).status_code == 201, fine
    assert service.store.count() == 4
    service.store.close()


def test_mcp_arguments_of_the_wrong_type_are_one_line_naming_the_tool_and_the_argument(clip_root):
    """The SDK's own check of a tool's arguments answered pydantic's report: several lines, the
    input echoed, and "For further information visit https://errors.pydantic.dev/..."."""
    from mcp import Client

    from service.mcp_tools import make_mcp

    service = _service(clip_root)

    async def session():
        async with Client(make_mcp(service)) as client:
            texts = []
            for name, args in (("update_gpu_timeout", {"seconds": "abc"}), ("submit_job", {"source": 5, "output": 6}),
                               ("job_status", {"limit": "many"})):
                result = await client.call_tool(name, args)
                assert result.is_error, result
                texts.append(result.content[0].text)
            return texts

    try:
        assert asyncio.run(session()) == [
            "update_gpu_timeout: seconds: Input should be a valid number, unable to parse string as a number",
            "submit_job: source: Input should be a valid string (and 1 more)",
            "job_status: limit: Input should be a valid integer, unable to parse string as an integer"]
    finally:
        service.store.close()
