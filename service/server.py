"""`python main.py serve` / `framepipe serve`: the long-running shared service.

    python main.py serve --root /data/videos                      # http://127.0.0.1:7860/
    python main.py serve --root /data --host 0.0.0.0 --token SECRET --gpus 0,2
    python main.py serve --root /data --allow-host gpubox.lan    # reached by that name too

Requests are answered only for the Host names the server is reached by (the address it
listens on, localhost, 127.0.0.1, [::1], and each --allow-host), and a request that changes
something is refused when a browser says it comes from another site (its Origin): a web page
elsewhere cannot drive a server on this machine, even one without a token (DNS rebinding,
cross-site requests). One server per job database: a second one on the same root stops with
one line.

Stopping it (Ctrl-C, SIGTERM) stops the running jobs the way Ctrl-C stops a command-line
run: outputs finalized, finished segments kept; the jobs stay queued in the database and the
next start finishes them from their segments.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import math
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "serve_main", "make_service"]

DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="framepipe serve", description="Run framepipe as a shared GPU service: "
                                "HTTP API, MCP tools and a live page over one job queue, every GPU and a model manager.")
    p.add_argument("--root", type=Path, action="append", required=True, metavar="DIR",
                   help="a folder jobs may read from and write to (repeatable); uploads go to the first one's uploads/")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; others need --token)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--token", default=os.environ.get("FRAMEPIPE_TOKEN"),
                   help="bearer token every call must carry (default: $FRAMEPIPE_TOKEN)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a further Host name clients reach the server by (repeatable; '*' for any). By default: "
                        "the --host address, localhost, 127.0.0.1 and [::1]; with --host 0.0.0.0, any")
    p.add_argument("--gpus", metavar="LIST", help='GPUs jobs may use, e.g. "0,2" (default: all; the CPU without GPUs)')
    p.add_argument("--jobs-per-device", type=int, default=2, metavar="N", help="jobs running at once on one device (default 2)")
    p.add_argument("--no-spread", action="store_true",
                   help="a job never takes more than one GPU (default: a job with nothing queued behind it also "
                        "takes every idle GPU)")
    p.add_argument("--idle-timeout", type=float, default=60.0, metavar="S",
                   help="seconds an unused model stays loaded before it is released (default 60)")
    p.add_argument("--max-upload-mb", type=int, default=2048, metavar="MB", help="largest upload accepted (default 2048)")
    p.add_argument("--db", type=Path, help="the job database (default <first root>/.framepipe/service.db)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines")
    return p


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_service(args: argparse.Namespace, *, devices=None):
    """The Service the arguments describe (not started)."""
    from core.errors import InvalidOption
    from service.devices import Devices
    from service.models import ModelManager
    from service.paths import Roots
    from service.service import Service
    from service.store import JobStore, lock_path

    if not _loopback(args.host) and not args.token:
        raise InvalidOption(f"--host {args.host} makes the service reachable from other machines: pass --token "
                            "(or set FRAMEPIPE_TOKEN) so every call must carry it.")
    if args.jobs_per_device < 1:
        raise InvalidOption(f"Invalid --jobs-per-device ({args.jobs_per_device}): it must be at least 1.")
    if not (math.isfinite(args.idle_timeout) and args.idle_timeout > 0):
        raise InvalidOption(f"Invalid --idle-timeout ({args.idle_timeout}): it must be above 0 seconds.")
    roots = Roots(args.root)
    db = args.db or roots.folders[0] / ".framepipe" / "service.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    # The root's .framepipe/ (the uploads' lock, the database by default) and the database's files
    own_files = [roots.folders[0] / ".framepipe"]
    if args.db is not None:
        own_files += [db, Path(f"{db}-wal"), Path(f"{db}-shm"), lock_path(db)]
    roots = Roots(args.root, private=own_files)
    devices = devices or Devices.detect(args.gpus)
    store = JobStore(db)  # OutputBusy when another server has it open
    return Service(roots=roots, store=store, devices=devices,
                   models=ModelManager(idle_timeout=args.idle_timeout), token=args.token,
                   max_upload_bytes=args.max_upload_mb << 20, jobs_per_device=args.jobs_per_device,
                   spread=not args.no_spread)


def serve_main(argv: list[str], *, process_settings=None) -> int:
    """`process_settings`: main.py's switches for the whole process (torch.compile's cache in
    framepipe's cache folder, the bytecode cache, cuDNN's autotuning), as a run has them."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose > 1 else logging.INFO,
                        format="%(asctime)s %(name)s: %(message)s", force=True)
    from core.errors import FramepipeError

    try:
        if process_settings is not None:
            process_settings()  # imports torch: seconds, in which Ctrl-C may come
        service = make_service(args)
    except FramepipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted before the service started", file=sys.stderr)
        return 130
    import uvicorn

    from service.api import create_app
    from service.mcp_tools import make_mcp

    log = logging.getLogger("service")

    def stop() -> None:
        log.info("stopping: running jobs are finalized and stay queued for the next start")
        service.close()

    servers: list = []  # the uvicorn server, made after the app: its should_exit says it is shutting down
    app = create_app(service, mcp=make_mcp(service), host=args.host, allowed_hosts=args.allow_host, on_stop=stop,
                     stopping=lambda: bool(servers) and servers[0].should_exit)
    taken = service.start()
    if taken:
        log.info("taken up again from the database: %d unfinished job(s)", len(taken))
    log.info("framepipe service on http://%s:%d/ (roots: %s; devices: %s)", args.host, args.port,
             ", ".join(str(r) for r in service.roots), ", ".join(d.name for d in service.devices.devices))
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=5))
    servers.append(server)
    # uvicorn stops on SIGINT/SIGTERM: the app's shutdown (stop() above) finalizes the running
    # jobs, then uvicorn re-raises the signal, so the exit status says which one stopped it
    # (SIGINT's comes back as KeyboardInterrupt: 130, one line, not a traceback).
    try:
        server.run()
    except KeyboardInterrupt:
        service.close()  # done already by the app's shutdown, unless the signal came before it
        print("interrupted: the service stopped; running jobs were finalized and resume at the next start",
              file=sys.stderr)
        return 130
    if not server.started:
        service.close()
        return 1
    return 0
