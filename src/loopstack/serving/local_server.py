"""Run an ASGI app under uvicorn on a free loopback port in a background thread (demo, notebooks, tests)."""
from __future__ import annotations

import socket
import threading
import time
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackServer:
    """``with LoopbackServer(app) as srv:`` serves `app` at ``srv.url`` until the block ends, then shuts
    down gracefully (in-flight requests finish, the app's lifespan shutdown runs). `http`: uvicorn's
    HTTP protocol (a name such as "auto" for uvicorn's own, or a class); by default `FastLaneProtocol`, as
    `loopstack serve` and `loopstack features serve` run (uvicorn's own for apps without a fast lane)."""

    def __init__(self, app: Any, port: int | None = None, ready_path: str | None = "/readyz",
                 timeout: float = 60.0, http: Any = None) -> None:
        import uvicorn

        from loopstack.fast_http import FastLaneProtocol
        http = FastLaneProtocol if http is None else http
        self.app, self.port, self.ready_path, self.timeout = app, port or free_port(), ready_path, timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    access_log=False, timeout_graceful_shutdown=10, http=http))
        self.thread = threading.Thread(target=self.server.run, name=f"uvicorn-{self.port}", daemon=True)

    def start(self) -> "LoopbackServer":
        import httpx
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"the server on {self.url} did not start")
            time.sleep(0.02)
        while self.ready_path:
            r = httpx.get(self.url + self.ready_path, timeout=5)
            if r.status_code == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server on {self.url} did not become ready: {r.text}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(60)

    def __enter__(self) -> "LoopbackServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
