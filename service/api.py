"""The HTTP API (FastAPI, served by uvicorn), the MCP tools and the live page, over one `Service`.

    GET  /                    the live page (GPUs, models, jobs; submit form)
    GET  /health              {"ok": true}
    POST /jobs                a job (JSON: source, output, settings); a folder of videos: one job each
    POST /jobs/upload         a video uploaded (multipart: file, settings as JSON), then a job on it
    GET  /jobs                every job, newest first
    GET  /jobs/{id}           state, frames done/total, fps, ETA, devices, warnings, error
    DELETE /jobs/{id}         cancel (the partial output stays finalized and resumable)
    GET  /jobs/{id}/events    progress as server-sent events, about once a second, until it ends
    GET  /gpu/status          per device: memory, utilisation, queue, score, health; each model's location
    POST /gpu/offload         {"device": "cuda:0" | null}: idle models to host memory now
    POST /gpu/release         {"device": ... | null}: idle models released now
    POST /gpu/timeout         {"seconds": 120}: the idle timeout
    /mcp                      the same operations as MCP tools (official SDK, streamable HTTP)

FastAPI was chosen for pydantic request checking (bad JSON or settings: 422 with the reason),
its streaming responses (SSE) and its ASGI mounting of the MCP SDK's app; uvicorn is the
server FastAPI documents. A bearer token, when set, is required on every call but the page
itself (which holds no data: it reads the token from its URL fragment, `/#token=...`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import uuid
from importlib import resources
from pathlib import Path

from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field, ValidationError

from core.errors import FramepipeError, OutputExists, one_line
from service.jobs import VIDEO_SUFFIXES, JobRequest, JobSettings
from service.paths import PathRefused
from service.service import Service

__all__ = ["create_app"]

log = logging.getLogger("service")


class DeviceChoice(BaseModel):
    model_config = {"extra": "forbid"}
    device: str | None = None


class Timeout(BaseModel):
    model_config = {"extra": "forbid"}
    seconds: float = Field(gt=0)


def create_app(service: Service, *, mcp=None, host: str = "127.0.0.1", on_stop=None) -> FastAPI:
    """The API over `service`; with `mcp` (service.mcp_tools.make_mcp), its tools at /mcp.
    `on_stop()` runs when the server shuts down (before uvicorn re-raises a SIGTERM/SIGINT)."""
    mcp_app = None
    if mcp is not None:
        # Stateless JSON answers: every tool call is one HTTP request, any worker can answer it.
        mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                          host=host)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            async with mcp.session_manager.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            if on_stop is not None:
                await asyncio.to_thread(on_stop)

    app = FastAPI(title="framepipe service", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    @app.middleware("http")
    async def limit_uploads(request: Request, call_next):
        """An upload is refused before its body is read when it is larger than the limit."""
        if request.url.path == "/jobs/upload" and request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse(status_code=411, content={"error": "an upload needs a Content-Length header"})
            if int(length) > service.max_upload_bytes + (1 << 20):  # the multipart framing is small
                return JSONResponse(status_code=413, content={"error": f"upload larger than the server's limit "
                                                                       f"({service.max_upload_bytes // 2**20} MiB)"})
        return await call_next(request)

    def authorized(request: Request) -> None:
        if service.token is None:
            return
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), service.token.encode()):
            raise HTTPException(status_code=401, detail="missing or wrong bearer token (Authorization: Bearer <token>)",
                                headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"error": _validation_line(exc.errors()), "detail": _plain(exc.errors())})

    @app.exception_handler(PathRefused)
    async def refused(request: Request, exc: PathRefused):
        return JSONResponse(status_code=403, content={"error": str(exc)})

    @app.exception_handler(OutputExists)
    async def exists(request: Request, exc: OutputExists):
        return JSONResponse(status_code=409, content={"error": str(exc)})

    @app.exception_handler(FramepipeError)
    async def invalid(request: Request, exc: FramepipeError):
        return JSONResponse(status_code=422, content={"error": one_line(exc)})

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("service").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health(_=Depends(authorized)) -> dict:
        return {"ok": True}

    @app.post("/jobs", status_code=201)
    def submit(request: JobRequest, _=Depends(authorized)) -> dict:
        return {"jobs": [j.to_dict() for j in service.submit(request)]}

    @app.post("/jobs/upload", status_code=201)
    async def upload(request: Request, file: UploadFile = File(...), settings: str = Form("{}"),
                     output: str | None = Form(None), _=Depends(authorized)) -> dict:
        try:
            values = json.loads(settings)
            JobSettings.model_validate(values)
        except json.JSONDecodeError as exc:
            raise HTTPException(status_code=422, detail=f"settings is not JSON: {exc}") from None
        except ValidationError as exc:
            return JSONResponse(status_code=422, content={"error": _validation_line(exc.errors()), "detail": _plain(exc.errors())})
        name = Path(file.filename or "upload.mp4").name
        if Path(name).suffix.lower() not in VIDEO_SUFFIXES:
            raise HTTPException(status_code=422, detail=f"upload {name!r}: not a video file name "
                                                        f"({', '.join(sorted(VIDEO_SUFFIXES))})")
        target = service.uploads / f"{uuid.uuid4().hex[:8]}-{_safe(name)}"
        size = 0
        try:
            with open(target, "xb") as f:
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > service.max_upload_bytes:
                        raise HTTPException(status_code=413, detail=f"upload larger than the server's limit "
                                                                    f"({service.max_upload_bytes // 2**20} MiB)")
                    f.write(chunk)
        except BaseException:
            target.unlink(missing_ok=True)
            raise
        job_request = JobRequest(source=str(target), output=output, **values)
        return {"jobs": [j.to_dict() for j in service.submit(job_request)], "uploaded": str(target)}

    @app.get("/jobs")
    def jobs(_=Depends(authorized)) -> dict:
        return {"jobs": service.jobs()}

    @app.get("/jobs/{job_id}")
    def job(job_id: str, _=Depends(authorized)) -> dict:
        return _found(service.job(job_id), job_id)

    @app.delete("/jobs/{job_id}")
    def cancel(job_id: str, _=Depends(authorized)) -> dict:
        return _found(service.cancel(job_id), job_id)

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request, _=Depends(authorized)) -> StreamingResponse:
        _found(service.job(job_id), job_id)

        async def stream():
            last = None
            while True:
                state = service.job(job_id)
                text = json.dumps(state)
                if text != last:
                    last = text
                    yield f"event: progress\ndata: {text}\n\n"
                if state["state"] in ("done", "failed", "cancelled"):
                    yield f"event: end\ndata: {text}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(service.event_seconds)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/gpu/status")
    def gpu_status(_=Depends(authorized)) -> dict:
        return service.gpu_status()

    @app.post("/gpu/offload")
    def offload(choice: DeviceChoice | None = None, _=Depends(authorized)) -> dict:
        return service.offload(choice.device if choice else None)

    @app.post("/gpu/release")
    def release(choice: DeviceChoice | None = None, _=Depends(authorized)) -> dict:
        return service.release(choice.device if choice else None)

    @app.post("/gpu/timeout")
    def timeout(body: Timeout, _=Depends(authorized)) -> dict:
        return service.set_idle_timeout(body.seconds)

    if mcp_app is not None:  # last: every path above is matched first; the MCP app serves /mcp only
        app.mount("/", _guarded(mcp_app, service))
    return app


def _guarded(asgi_app, service: Service):
    """The MCP endpoint behind the same bearer token as the rest of the API."""
    async def app(scope, receive, send):
        if scope["type"] == "http" and service.token is not None:
            headers = dict(scope.get("headers") or [])
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, b"Bearer " + service.token.encode()):
                response = JSONResponse(status_code=401, content={"detail": "missing or wrong bearer token"})
                await response(scope, receive, send)
                return
        await asgi_app(scope, receive, send)

    return app


def _found(job: dict | None, job_id: str) -> dict:
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    return job


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[-120:]


def _plain(errors) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in errors]


def _validation_line(errors) -> str:
    """One line for the first problem: which field, what is wrong."""
    if not errors:
        return "invalid request"
    e = errors[0]
    where = ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    if e.get("type") == "extra_forbidden":
        return f"unknown setting {where!r}{more}"
    if e.get("type") == "json_invalid":
        return f"the body is not valid JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
    return f"{where}: {e.get('msg')}{more}"
