"""MCP tools for agents, on the official Python SDK (`mcp`, its high-level `MCPServer`).

The tools are the HTTP API's operations, calling the same `Service` methods:
get_gpu_status, offload_gpu, release_gpu, update_gpu_timeout, submit_job, job_status,
cancel_job, retry_job, forget_job. A job's answer carries `output_url`, the path of its download
on the HTTP API, once there is an output to download. Served over streamable HTTP at `/mcp` by the same uvicorn server (and behind the
same bearer token, Host and Origin checks) as the API. A refused call is an answer with
`error` (one line), never a protocol failure. Arguments of the wrong type (`"seconds": "abc"`),
which the SDK checks before a tool runs, are a tool error of one line naming the tool and the
argument, not pydantic's report of several lines with its documentation's address.
"""

from __future__ import annotations

from typing import Any

from core.errors import FramepipeError, one_line
from service.jobs import job_request, validation_line
from service.service import DEFAULT_PAGE, Service

__all__ = ["make_mcp", "TOOLS"]

TOOLS = ("get_gpu_status", "offload_gpu", "release_gpu", "update_gpu_timeout", "submit_job", "job_status", "cancel_job",
         "retry_job", "forget_job")


def make_mcp(service: Service):
    from mcp.server.mcpserver import MCPServer
    from mcp.server.mcpserver.exceptions import ToolError, UnexpectedToolError
    from pydantic import ValidationError

    class _Server(MCPServer):
        async def call_tool(self, name, arguments, context=None):
            try:
                return await super().call_tool(name, arguments, context)
            except ToolError as exc:
                cause = exc.__cause__
                if isinstance(exc, UnexpectedToolError) or not isinstance(cause, ValidationError):
                    raise
                raise ToolError(f"{name}: {_arguments_line(cause)}") from cause  # the SDK logs the fields

    mcp = _Server("framepipe", instructions="framepipe runs a video model (upscaling, restoration) over every frame "
                    "of videos on the server's GPUs. Submit jobs with paths inside the server's roots; follow them with "
                    "job_status; manage GPU memory with offload_gpu / release_gpu / update_gpu_timeout.")

    @mcp.tool()
    def get_gpu_status() -> dict[str, Any]:
        """Per device: name, memory used/total, utilisation, queue, score, health, and each model's location
        (gpu / cpu / unloaded) with its idle time; plus the idle timeout."""
        return service.gpu_status()

    @mcp.tool()
    def offload_gpu(device: str | None = None) -> dict[str, Any]:
        """Move idle models of `device` (e.g. "cuda:0"; all devices when left out) to host memory now."""
        return _answer(lambda: service.offload(device))

    @mcp.tool()
    def release_gpu(device: str | None = None) -> dict[str, Any]:
        """Release idle models of `device` (all devices when left out) entirely, now."""
        return _answer(lambda: service.release(device))

    @mcp.tool()
    def update_gpu_timeout(seconds: float) -> dict[str, Any]:
        """Set the idle timeout: seconds an unused model stays loaded before it is released."""
        return _answer(lambda: service.set_idle_timeout(seconds))

    @mcp.tool()
    def submit_job(source: str, output: str | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
        """Queue a job: `source` is a video, a picture sequence or a folder of videos inside the server's roots;
        `output` a file (a folder for a folder of videos; left out: beside the source); `settings` the command
        line's settings without dashes, e.g. {"model": "realesr-animevideov3", "scale": 2, "codec": "hevc"}."""
        return _answer(lambda: {"jobs": [j.to_dict() for j in service.submit(job_request(source, output, settings))]})

    @mcp.tool()
    def job_status(job_id: str | None = None, state: list[str] | None = None, limit: int = DEFAULT_PAGE,
                   offset: int = 0) -> dict[str, Any]:
        """One job's state, frames done/total, fps, ETA, devices, warnings, error and output_url (its download
        over HTTP, once it has one). Without `job_id`: a page of the jobs, newest first (`limit` from `offset`,
        in the `state`s given: queued, running, done, failed, cancelled), with `total` and `next_offset`."""
        if job_id is None:
            return _answer(lambda: service.jobs(limit=limit, offset=offset, states=state))
        job = service.job(job_id)
        return job if job is not None else {"error": f"no job {job_id!r}"}

    @mcp.tool()
    def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; a running job's partial output stays finalized and resumable."""
        job = _answer(lambda: service.cancel(job_id))
        return job if job is not None else {"error": f"no job {job_id!r}"}

    @mcp.tool()
    def retry_job(job_id: str) -> dict[str, Any]:
        """Queue a failed or cancelled job again, under its id; it resumes from the segments its last run finished."""
        job = _answer(lambda: service.retry(job_id))
        return job if job is not None else {"error": f"no job {job_id!r}"}

    @mcp.tool()
    def forget_job(job_id: str) -> dict[str, Any]:
        """Leave an ended job out of the lists; its output and work folder stay on disk (listed in `files_kept`)."""
        answer = _answer(lambda: service.forget(job_id))
        return answer if answer is not None else {"error": f"no job {job_id!r}"}

    return mcp


def _answer(call) -> dict[str, Any]:
    """A refused request is an answer the agent can read (`error`), not a protocol failure."""
    from pydantic import ValidationError

    try:
        return call()
    except (FramepipeError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            return {"error": _arguments_line(exc)}
        return {"error": one_line(exc)}


def _arguments_line(exc) -> str:
    """A pydantic ValidationError of a tool's arguments as one line (`validation_line`)."""
    return validation_line(exc.errors(), nothing="invalid arguments", whole="arguments")
