"""`loopstack features serve`: run the HTTP feature server (see docs/feature-server.md).

Mounted on the `features` group: ``features_app.registered_commands.extend(app.registered_commands)``.
"""
from __future__ import annotations

import ipaddress
import logging
import math
import os
import sys
from pathlib import Path

import typer
from rich.console import Console

err_console = Console(stderr=True)
app = typer.Typer(no_args_is_help=True)   # its `serve` command is mounted on `loopstack features`
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")   # uvicorn's


def mib_bytes(mb: float) -> int:
    """A --max-body-mb value in bytes; a clear error for a size that is not positive."""
    if not (mb > 0 and math.isfinite(mb)):
        raise typer.BadParameter(f"--max-body-mb must be a positive number of MiB, got {mb}")
    return max(1, int(mb * 2**20))


def check_serve_options(reload_interval: float, log_level: str) -> None:
    """A usage error for a reload interval or log level uvicorn/the poller would mishandle (not a traceback)."""
    if not (reload_interval >= 0 and math.isfinite(reload_interval)):   # NaN and -1 silently meant "never"
        raise typer.BadParameter(f"--reload-interval must be a finite number of seconds >= 0 (0: only on "
                                 f"POST /reload), got {reload_interval}")
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"--log-level {log_level!r} is not a log level: use one of {', '.join(LOG_LEVELS)}")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def configure_access_log(enabled: bool = True) -> None:
    """Access-log lines (already JSON) go to stdout, one per request, nothing added around them."""
    logger = logging.getLogger("loopstack.access")
    logger.handlers.clear()
    logger.propagate = False
    if enabled:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    else:
        logger.setLevel(logging.WARNING)


@app.command("serve")
def serve(project: Path = ProjectOpt,
          host: str = typer.Option("127.0.0.1", help="Interface to bind (loopback by default; the server has "
                                                     "no authentication)."),
          port: int = typer.Option(6566, min=1, max=65535, help="TCP port (Feast's default)."),
          workers: int = typer.Option(1, min=1, help="Worker processes (each loads the views and keeps its own "
                                                     "metrics)."),
          reload_interval: float = typer.Option(5.0, help="Seconds between checks for `loopstack apply` changes "
                                                          "(0: only on POST /reload)."),
          access_log: bool = typer.Option(True, help="JSON-lines access log on stdout."),
          max_body_mb: float = typer.Option(16.0, help="Largest request body in MiB (a larger one gets 413)."),
          log_level: str = typer.Option("info", help=f"uvicorn log level ({'|'.join(LOG_LEVELS)}).")
          ) -> None:
    """Serve online features over HTTP: POST /get-online-features, /health, /freshness, /metrics, /docs."""
    import uvicorn

    from loopstack.features.server import create_app
    from loopstack.fast_http import FastLaneProtocol
    from loopstack.project import Project
    if not _is_loopback(host):
        err_console.print(f"[yellow]warning:[/] binding {host}: the feature server has no authentication; "
                          "put it behind a proxy or firewall")
    max_body = mib_bytes(max_body_mb)
    check_serve_options(reload_interval, log_level)
    configure_access_log(access_log)
    common = {"host": host, "port": port, "log_level": log_level, "access_log": False, "http": FastLaneProtocol}
    if workers == 1:
        p = Project(project)   # fails here, before binding, if the project or its views are broken
        try:
            uvicorn.run(create_app(p, reload_interval=reload_interval, server_gc=True, max_body_bytes=max_body),
                        **common)
        finally:
            p.close()
        return
    Project(project).close()   # validate once in the parent; every worker opens its own
    os.environ["LOOPSTACK_SERVE_PROJECT"] = str(project.resolve())
    os.environ["LOOPSTACK_SERVE_RELOAD_INTERVAL"] = str(reload_interval)
    os.environ["LOOPSTACK_SERVE_ACCESS_LOG"] = "1" if access_log else "0"
    os.environ["LOOPSTACK_SERVE_MAX_BODY"] = str(max_body)
    uvicorn.run("loopstack.features.server:app_from_env", factory=True, workers=workers, **common)
