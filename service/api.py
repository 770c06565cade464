"""The HTTP API (FastAPI, served by uvicorn), the MCP tools and the live page, over one `Service`.

    GET  /                    the live page (GPUs, models, jobs; submit form)
    GET  /health              {"ok": true}
    POST /jobs                a job (JSON: source, output, settings); a folder of videos: one job each
    POST /jobs/upload         a video uploaded (multipart: file, settings as JSON), then a job on it
    GET  /jobs                a page of the jobs, newest first (?limit=100&offset=0&state=done,failed), with the total
    GET  /jobs/{id}           state, frames done/total, fps, ETA, devices, warnings, error, output_url
    DELETE /jobs/{id}         cancel (the partial output stays finalized and resumable)
    GET  /jobs/{id}/output    the output file of an ended job (HTTP ranges: resumable downloads, seeking
                              players); a cancelled or failed job's playable partial output
    POST /jobs/{id}/output/link  that download as a link a browser can follow without the token
                              (signed with it, valid for an hour, for that job's output only)
    POST /jobs/{id}/retry     a failed or cancelled job queued again; it resumes from its segments
    POST /jobs/{id}/forget    an ended job left out of the lists; no file is touched
    GET  /jobs/{id}/events    progress as server-sent events, about once a second, until it ends
    GET  /gpu/status          per device: memory, utilisation, queue, score, health; each model's location
    POST /gpu/offload         {"device": "cuda:0" | null}: idle models to host memory now
    POST /gpu/release         {"device": ... | null}: idle models released now
    POST /gpu/timeout         {"seconds": 120}: the idle timeout
    /mcp                      the same operations as MCP tools (official SDK, streamable HTTP)

FastAPI was chosen for pydantic request checking (bad JSON or settings: 422 with the reason),
its streaming responses (SSE) and its ASGI mounting of the MCP SDK's app; uvicorn is the
server FastAPI documents.

Every request passes `_Guard` first, before any route reads a byte of its body:
- its Host must be one the server is reached by (`allowed_hosts`): a DNS-rebinding page's
  requests carry its own name;
- a bearer token, when set, is required on every call but the page itself (which holds no
  data: it reads the token from its URL fragment, `/#token=...`); the scheme is matched
  without regard to case (RFC 7235), the token in constant time. A download link (`POST
  /jobs/{id}/output/link`, made with the token) stands in for it on that one GET or HEAD: a
  link cannot carry a header, and a browser given one streams the file to disk, resumes and
  seeks by itself, where a script fetching it with the header would hold the whole file;
- a request that changes something (POST, DELETE) is refused when its Origin (sent by every
  browser) is another site: a cross-site form or script cannot submit, cancel or upload. The
  page is same-origin; MCP clients send no Origin;
- bodies are counted as they arrive: an upload must declare its Content-Length (411 when it
  does not, e.g. chunked) and is cut off with 413 beyond the limit whatever it declared; any
  other body beyond `MAX_BODY_BYTES` likewise.
Every error is one JSON line, `{"error": "..."}` (422s add the fields in `detail`). With a
token set, /docs and /openapi.json are not served.

An upload is a job's source: deleted when the job is refused, and when the last job on it
ends (done, failed or cancelled: a cancelled upload's job is not resumed by a new one).

A download serves the job's own output and nothing else: the file the job recorded (its identity
noted when it ended; a stopped job's partial output as its work folder's manifest notes it), inside
the roots, opened without following a link and checked after opening to be that very file.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.errors import FramepipeError, JobEnded, NoJobOutput, OutputExists, one_line
from hw.av_source import probe_source
from service.jobs import VIDEO_SUFFIXES, JobRequest, for_service, job_request, validation_line
from service.paths import PathRefused
from service.service import DEFAULT_PAGE, JobOutput, Service

__all__ = ["create_app", "MAX_BODY_BYTES"]

log = logging.getLogger("service")

MAX_BODY_BYTES = 1 << 20  # a JSON request or an MCP call; uploads have the server's own limit
UPLOAD_PATH = "/jobs/upload"
LINK_SECONDS = 3600  # how long a download link (POST /jobs/{id}/output/link) stays valid
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# An output's content type by its container (core.choices.CONTAINER_SUFFIXES); Python's table lacks .mkv
_MEDIA_TYPES = {".mp4": "video/mp4", ".mkv": "video/x-matroska", ".mov": "video/quicktime"}


class DeviceChoice(BaseModel):
    model_config = {"extra": "forbid"}
    device: str | None = None


class Timeout(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    seconds: float = Field(gt=0)


def create_app(service: Service, *, mcp=None, host: str = "127.0.0.1", allowed_hosts: Iterable[str] = (),
               on_stop=None, stopping=None) -> FastAPI:
    """The API over `service`; with `mcp` (service.mcp_tools.make_mcp), its tools at /mcp.
    `host`: the address the server listens on; `allowed_hosts`: further Host names it answers
    (`--allow-host`, "*" for any). `on_stop()` runs when the server shuts down (before uvicorn
    re-raises a SIGTERM/SIGINT). `stopping()`: whether the server is shutting down, when the
    event streams end (an open one held the shutdown until uvicorn cancelled it, with a traceback)."""
    mcp_app = None
    if mcp is not None:
        from mcp.server.transport_security import TransportSecuritySettings

        # Stateless JSON answers: every tool call is one HTTP request, any worker can answer it.
        # Host and Origin are checked by _Guard for every path, /mcp included (one list: --allow-host).
        mcp_app = mcp.streamable_http_app(streamable_http_path="/mcp", stateless_http=True, json_response=True,
                                          host=host, transport_security=TransportSecuritySettings(
                                              enable_dns_rebinding_protection=False))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            async with mcp.session_manager.run() if mcp is not None else contextlib.nullcontext():
                yield
        finally:
            if on_stop is not None:
                await asyncio.to_thread(on_stop)

    docs = service.token is None  # with a token, the schema is not served at all
    app = FastAPI(title="framepipe service", lifespan=lifespan, docs_url="/docs" if docs else None, redoc_url=None,
                  openapi_url="/openapi.json" if docs else None)
    app.add_middleware(_Guard, service=service, allowed_hosts=_allowed_hosts(host, allowed_hosts))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse(status_code=422, content={"error": validation_line(exc.errors()), "detail": _plain(exc.errors())})

    @app.exception_handler(PathRefused)
    async def refused(request: Request, exc: PathRefused):
        return _error(403, for_service(one_line(exc)))

    @app.exception_handler(OutputExists)
    async def exists(request: Request, exc: OutputExists):
        return _error(409, for_service(one_line(exc)))

    @app.exception_handler(JobEnded)
    async def ended(request: Request, exc: JobEnded):
        return _error(409, for_service(one_line(exc)))

    @app.exception_handler(NoJobOutput)
    async def no_output(request: Request, exc: NoJobOutput):
        return _error(404, for_service(one_line(exc)))

    @app.exception_handler(FramepipeError)
    async def invalid(request: Request, exc: FramepipeError):
        return _error(422, for_service(one_line(exc)))

    @app.exception_handler(OSError)
    @app.exception_handler(sqlite3.Error)
    async def server_side(request: Request, exc: Exception):
        """The server's disk or database failing (full, read-only, gone): one JSON line, 507 where
        the disk is full, else 503; never a text/plain 500 with a traceback in the log."""
        full = errno.ENOSPC == getattr(exc, "errno", None) or "full" in str(exc).lower()
        log.warning("%s %s: %s", request.method, request.url.path, one_line(exc))
        what = "the server's disk is full" if full else "the server cannot store it now"
        return _error(507 if full else 503, f"{what} ({one_line(exc)}): try again later, or ask its admin.")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return resources.files("service").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> dict:
        return {"ok": True}

    @app.post("/jobs", status_code=201)
    def submit(request: JobRequest) -> dict:
        return {"jobs": [j.to_dict() for j in service.submit(request)]}

    @app.post(UPLOAD_PATH, status_code=201)
    async def upload(file: UploadFile = File(...), settings: str = Form("{}"), output: str | None = Form(None)) -> dict:
        try:
            job = job_request("upload", output, json.loads(settings))  # the settings checked before the file is kept
        except json.JSONDecodeError as exc:
            raise HTTPException(status_code=422, detail=f"settings is not JSON: {exc}") from None
        except ValidationError as exc:
            return JSONResponse(status_code=422, content={"error": validation_line(exc.errors()), "detail": _plain(exc.errors())})
        name = Path(file.filename or "upload.mp4").name
        if Path(name).suffix.lower() not in VIDEO_SUFFIXES:
            raise HTTPException(status_code=422, detail=f"upload {name!r}: not a video file name "
                                                        f"({', '.join(sorted(VIDEO_SUFFIXES))})")
        # A full uuid4: names never clash in practice, and "xb" (outside the try) never takes
        # another upload's file, so the clean-up below only ever removes this request's own.
        target = service.uploads / f"{uuid.uuid4().hex}-{_safe(name)}"
        try:
            f = open(target, "xb")
        except FileExistsError:
            raise HTTPException(status_code=409, detail=f"an upload named {target.name!r} exists already: "
                                                        "send the file again") from None
        try:
            with f:
                size = 0
                while chunk := await file.read(1 << 20):
                    size += len(chunk)
                    if size > service.max_upload_bytes:
                        raise HTTPException(status_code=413, detail=_too_large(service.max_upload_bytes))
                    f.write(chunk)
            # A file nothing can read (empty, garbage): refused now (422), not a job that fails later
            await asyncio.to_thread(probe_source, target)
            jobs = await asyncio.to_thread(service.submit, job.model_copy(update={"source": str(target)}))
        except BaseException:
            target.unlink(missing_ok=True)  # refused: nothing of the upload is kept
            raise
        return {"jobs": [j.to_dict() for j in jobs], "uploaded": str(target)}

    @app.get("/jobs")
    def jobs(limit: int = DEFAULT_PAGE, offset: int = 0, state: str | None = None) -> dict:
        """`state`: one state or several, comma-separated (`done,failed`)."""
        states = [s.strip() for s in (state or "").split(",") if s.strip()] or None  # `state=`: any
        return service.jobs(limit=limit, offset=offset, states=states)

    @app.get("/jobs/{job_id}")
    def job(job_id: str) -> dict:
        return _found(service.job(job_id), job_id)

    @app.delete("/jobs/{job_id}")
    def cancel(job_id: str) -> dict:
        return _found(service.cancel(job_id), job_id)

    @app.post("/jobs/{job_id}/retry")
    def retry(job_id: str) -> dict:
        return _found(service.retry(job_id), job_id)

    @app.post("/jobs/{job_id}/forget")
    def forget(job_id: str) -> dict:
        return _found(service.forget(job_id), job_id)

    @app.api_route("/jobs/{job_id}/output", methods=["GET", "HEAD"])
    def output(job_id: str) -> Response:
        opened = service.open_output(job_id)
        if opened is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
        return _OpenedFile(opened)

    @app.post("/jobs/{job_id}/output/link")
    def output_link(job_id: str) -> dict:
        opened = service.open_output(job_id)  # refused as the download itself would be
        if opened is None:
            raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
        os.close(opened.fd)
        expires = int(time.time()) + LINK_SECONDS
        url = f"/jobs/{job_id}/output"
        if service.token is not None:
            url += f"?expires={expires}&key={_link_key(service.token, url, expires)}"
        return {"url": url, "expires": expires if service.token is not None else None}

    @app.get("/jobs/{job_id}/events")
    async def events(job_id: str, request: Request) -> StreamingResponse:
        _found(service.job(job_id), job_id)

        async def stream():
            last = None
            while True:
                state = service.job(job_id)
                if state is None:  # it ended and was forgotten between two looks
                    gone = json.dumps({"error": f"no job {job_id!r}: it was forgotten while it was watched"})
                    yield f"event: end\ndata: {gone}\n\n"
                    return
                text = json.dumps(state)
                if text != last:
                    last = text
                    yield f"event: progress\ndata: {text}\n\n"
                if state["state"] in ("done", "failed", "cancelled"):
                    yield f"event: end\ndata: {text}\n\n"
                    return
                if await request.is_disconnected():
                    return
                if stopping is not None and stopping():  # the client reconnects after the restart
                    yield "event: server-stopping\ndata: {}\n\n"
                    return
                await asyncio.sleep(service.event_seconds)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/gpu/status")
    def gpu_status() -> dict:
        return service.gpu_status()

    @app.post("/gpu/offload")
    def offload(choice: DeviceChoice | None = None) -> dict:
        return service.offload(choice.device if choice else None)

    @app.post("/gpu/release")
    def release(choice: DeviceChoice | None = None) -> dict:
        return service.release(choice.device if choice else None)

    @app.post("/gpu/timeout")
    def timeout(body: Timeout) -> dict:
        return service.set_idle_timeout(body.seconds)

    if mcp_app is not None:  # last: every path above is matched first; the MCP app serves /mcp only
        app.mount("/", _McpOnly(mcp_app, app))
    return app


class _McpOnly:
    """The MCP app, mounted at / (its session manager serves /mcp itself), answering only /mcp:
    any other path reaching it is one the API lacks (404), or has with other methods (405), in
    the API's JSON shape; the MCP app answered them "Not Found" in plain text."""

    def __init__(self, mcp_app, api) -> None:
        self.mcp_app, self.api = mcp_app, api

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("path", "").rstrip("/") == "/mcp":
            await self.mcp_app(scope, receive, send)
            return
        path = scope.get("path", "")
        allowed = sorted({m for route in self.api.routes if getattr(route, "methods", None)
                          and route.path_regex.match(path) for m in route.methods})
        if allowed:
            answer = _error(405, f"{scope['method']} is not allowed on {path}: use {', '.join(allowed)}.",
                            headers={"Allow": ", ".join(allowed)})
        else:
            answer = _error(404, f"no such path: {path} (the API's paths: /docs, or the README).")
        await answer(scope, receive, send)


class _OpenedFile(FileResponse):
    """A job's output, opened and checked by `Service.open_output`, served with Starlette's
    FileResponse (HTTP ranges, If-Range, HEAD, ETag): through the open file itself (Linux's
    /proc/self/fd/N opens the file that descriptor holds, whatever is at its path now). The
    descriptor is closed when the answer ends, however it ends."""

    def __init__(self, opened: JobOutput) -> None:
        self.opened = opened
        own = f"/proc/self/fd/{opened.fd}"
        super().__init__(own if os.path.exists(own) else opened.path, stat_result=opened.stat,
                         media_type=_MEDIA_TYPES.get(opened.path.suffix.lower()), filename=opened.filename,
                         headers={"X-Framepipe-Output": "whole" if opened.whole else "partial"})

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            os.close(self.opened.fd)


class _BodyTooLarge(StarletteHTTPException):
    """Raised from `receive` when a body passes its limit: FastAPI lets an HTTPException through
    its body parsing, so the route answers 413; `_Guard` answers it for a mounted app."""

    def __init__(self, shown: int) -> None:  # the limit a client is told (an upload's: on its file)
        super().__init__(status_code=413, detail=_too_large(shown))


class _Guard:
    """Host, token, Origin and body size, checked for every HTTP request before the app sees it
    (see the module's docstring). A plain ASGI middleware: it wraps `receive` itself."""

    def __init__(self, app, *, service: Service, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.service = service
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        # an upload's body is its file and the multipart form around it (1 MiB allowed for that);
        # a refusal names the server's limit on the file itself
        shown = self.service.max_upload_bytes if scope["path"] == UPLOAD_PATH else MAX_BODY_BYTES
        limit = shown + (1 << 20) if scope["path"] == UPLOAD_PATH else shown
        refusal = self._refusal(scope, headers, limit, shown=shown)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0

        async def counted():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(shown)
            return message

        started = False

        async def tracked(message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _BodyTooLarge as exc:
            if started:
                raise
            await _error(413, exc.detail)(scope, receive, send)

    def _refusal(self, scope, headers: Headers, limit: int, *, shown: int) -> JSONResponse | None:
        method, path = scope["method"], scope["path"]
        host = headers.get("host", "")
        if self.allowed_hosts is not None and _hostname(host) not in self.allowed_hosts:
            return _error(421, f"this server does not answer to the host {host!r}: it answers to "
                               f"{', '.join(sorted(self.allowed_hosts))}. Start it with --allow-host NAME to add one.")
        token = self.service.token
        if token is not None and not (path == "/" and method in ("GET", "HEAD")) \
                and not (method in ("GET", "HEAD") and _linked(token, path, scope.get("query_string", b""))):
            if not hmac.compare_digest(_bearer(headers).encode(), token.encode()):
                return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                              headers={"WWW-Authenticate": "Bearer"})
        if method not in _SAFE_METHODS:
            origin = headers.get("origin")
            if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
                return _error(403, f"a request from {origin!r} (another site) may not change anything here: use "
                                   "this server's own page, or a client that is not a browser.")
            if headers.get("sec-fetch-site") == "cross-site":
                return _error(403, "a cross-site request may not change anything here.")
        length = headers.get("content-length")
        if length is not None and not length.isdigit():
            return _error(400, f"Content-Length {length!r} is not a number.")
        if path == UPLOAD_PATH and method == "POST" and length is None:
            return _error(411, "an upload needs a Content-Length header (chunked uploads are not accepted).")
        if length is not None and int(length) > limit:
            return _error(413, _too_large(shown))
        return None


def _allowed_hosts(host: str, extra) -> frozenset[str] | None:
    """The Host names (no port) the server answers to; None: any (`*`, or listening on every
    address with no name given: the token, required then, is the guard)."""
    extra = [h.strip().lower().strip("[]") for h in extra or () if h.strip()]
    if "*" in extra:
        return None
    everywhere = host in ("0.0.0.0", "::", "")
    if everywhere and not extra:
        return None
    names = {*_LOOPBACK_NAMES, *extra}
    if not everywhere:
        names.add(host.lower().strip("[]"))
    return frozenset(names)


def _hostname(host: str) -> str:
    """`127.0.0.1:7860` -> `127.0.0.1`, `[::1]:7860` -> `::1`; a port that is not a number keeps the
    whole (`127.0.0.1:7860@evil.com` is no allowed name: it passed as `127.0.0.1`)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1:] if end > 0 else None
        return host[1:end] if rest == "" or (rest and rest[0] == ":" and rest[1:].isdigit()) else host
    name, colon, port = host.rpartition(":")
    return name if colon and host.count(":") == 1 and port.isdigit() else host


def _link_key(token: str, path: str, expires: int) -> str:
    """The signature of a download link: HMAC-SHA256 of its path and expiry under the token."""
    return hmac.new(token.encode(), f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()


def _linked(token: str, path: str, query: bytes) -> bool:
    """Whether a request's query is a valid, unexpired download link (`output_link`) for its path."""
    if not (path.startswith("/jobs/") and path.endswith("/output")):
        return False
    args = parse_qs(query.decode("latin-1"))
    try:
        expires = int(args["expires"][0])
        key = args["key"][0]
    except (KeyError, IndexError, ValueError):
        return False
    return expires >= time.time() and hmac.compare_digest(key.encode(), _link_key(token, path, expires).encode())


def _bearer(headers: Headers) -> str:
    scheme, _, credentials = headers.get("authorization", "").strip().partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def _error(status: int, text: str, *, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": text}, headers=headers)


def _too_large(limit: int) -> str:
    return f"the request is larger than the server's limit ({limit / 2**20:.0f} MiB)"


def _found(job: dict | None, job_id: str) -> dict:
    if job is None:
        raise HTTPException(status_code=404, detail=f"no job {job_id!r}")
    return job


def _safe(name: str) -> str:
    """The client's file name as an upload's: letters, digits and `-_.` kept, its last 120 bytes
    (UTF-8: not characters, of up to 4 bytes each: with the upload's 33 and what a job adds beside
    it, `<name>.<model>-x<scale>.mp4` and its lock, the names stay under the file system's 255)."""
    kept = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return kept.encode()[-120:].decode(errors="ignore")  # a character cut in two is left out


def _plain(errors) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")} for e in errors]
