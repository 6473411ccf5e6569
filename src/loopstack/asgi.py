"""The outer ASGI layer shared by loopstack's HTTP servers (feature server, model server, LLM server):
``x-request-id`` in and out, the response status captured, and one JSON access-log line per request.

Pure ASGI on purpose: it must not buffer streamed (SSE) responses or hide client disconnects, and it
costs the hot paths nothing beyond a few attribute lookups.
"""
from __future__ import annotations

import logging
import random
import re
import time
from datetime import datetime, timezone
from typing import Any

import orjson

ACCESS_LOG = logging.getLogger("loopstack.access")
_RID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
MAX_BODY_BYTES = 16 * 2**20   # the servers' default request-body limit (--max-body-mb 16)


class BodyTooLarge(Exception):
    """A request body passed the server's limit (HTTP 413); it was read no further."""


def too_large_detail(limit: int, fewer: str) -> str:
    """The detail of a 413 for a body over `limit` bytes: the limit, and what to do (`fewer`: what to send
    fewer of per request) -- the same words from every server."""
    return (f"the request body is larger than {limit} bytes ({limit / 2**20:g} MiB): send fewer {fewer} per "
            "request, or start the server with a larger --max-body-mb")


def request_id(scope: dict) -> str:
    """The request's own ``x-request-id`` when it is a sane token (letters, digits, ``._:-``, at most
    128), else a new random one: ids from clients are echoed so a request can be traced end to end."""
    rid = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), "")
    return rid if rid and _RID.match(rid) else f"{random.getrandbits(128):032x}"


def lane_scope(path: str, headers: list, client: Any) -> tuple[dict, float]:
    """The scope (with its request id) and arrival time of a POST answered outside ASGI by a fast lane
    (loopstack.fast_http), as `AccessMiddleware` would set them up."""
    t0 = time.perf_counter()
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers, "client": client}
    scope["state"] = {"request_id": request_id(scope), "t0": t0}
    return scope, t0


async def read_body(receive: Any, limit: int | None) -> bytes | None:
    """The whole body of an ASGI request; None when the client left first; `BodyTooLarge` once it passes
    `limit` bytes (None: no limit), without reading more."""
    chunks, size = [], 0
    while True:
        msg = await receive()
        if msg["type"] != "http.request":   # the client went away: nobody to answer
            return None
        chunk = msg.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not msg.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class TaggedSend:
    """An ASGI ``send`` that adds ``x-request-id`` to the response start and remembers the status."""

    __slots__ = ("send", "rid", "status")

    def __init__(self, send: Any, rid: str) -> None:
        self.send, self.rid, self.status = send, rid, 500

    async def __call__(self, msg: dict) -> None:
        if msg["type"] == "http.response.start":
            self.status = msg["status"]
            msg["headers"] = [*msg.get("headers", ()), (b"x-request-id", self.rid.encode())]
        await self.send(msg)


class AccessMiddleware:
    """Request id, status and access log around ``handle``; subclasses route (``handle``), count
    (``record``) and add fields to the access-log line (``ACCESS_FIELDS`` taken from the scope state)."""

    ACCESS_FIELDS: tuple[str, ...] = ()

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        rid = request_id(scope)
        st = scope.setdefault("state", {})
        st["request_id"], st["t0"] = rid, t0
        tagged = TaggedSend(send, rid)
        try:
            await self.handle(scope, receive, tagged)
        finally:
            self.finish(scope, tagged.status, t0)

    def finish(self, scope: dict, status: int, t0: float) -> None:
        """Count the answered request and write its access-log line (`t0`: when it arrived)."""
        dt = time.perf_counter() - t0
        self.record(scope, status, dt)
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            st = scope["state"]
            rec = {"ts": datetime.now(timezone.utc).isoformat(), "request_id": st["request_id"],
                   "method": scope["method"], "path": scope["path"], "status": status,
                   "duration_ms": round(dt * 1000, 3)}
            for k in self.ACCESS_FIELDS:
                if k in st:
                    rec[k] = st[k]
            rec.update(self.access_extra(scope))
            ACCESS_LOG.info(orjson.dumps(rec, default=str).decode())

    async def handle(self, scope: dict, receive: Any, send: TaggedSend) -> None:
        """Serve the request (default: the wrapped app)."""
        await self.app(scope, receive, send)

    def record(self, scope: dict, status: int, seconds: float) -> None:
        """Count the finished request in the server's metrics (default: nothing)."""

    def access_extra(self, scope: dict) -> dict:
        """More fields for the access-log line (default: none)."""
        return {}
