"""The model server's HTTP layer: JSON replies, error bodies, and the outer middleware that is also the
server's fast lane (loopstack.fast_http) for predictions."""
from __future__ import annotations

import re
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import Response

from loopstack.asgi import AccessMiddleware, BodyTooLarge, lane_scope, read_body, too_large_detail
from loopstack.serving.metrics import ServingMetrics

_FAST_PATH = re.compile(r"^/v1/models/[^/]+:predict(_batch)?$")
_FAST_PATH_B = re.compile(rb"^/v1/models/[^/%]+:predict(_batch)?$")   # the fast lane's (percent-escapes: ASGI)
Reply = tuple[int, bytes, "dict | None"]   # status, JSON body, extra headers


def dumps(body: Any) -> bytes:
    """JSON bytes of an answer (numpy values included)."""
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    """`body` as a JSON response (the ASGI routes)."""
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


def respond(reply: Reply) -> Response:
    """A `Reply` as a Starlette response."""
    return Response(reply[1], status_code=reply[0], media_type="application/json", headers=reply[2])


def error_reply(st: dict, status: int, code: str, detail: str, headers: dict | None = None,
                **extra: Any) -> Reply:
    """The documented error body (code, detail, request id, extras); records the code for the access log."""
    st["error"] = code
    body = {"error": code, "detail": detail, "request_id": st.get("request_id"),
            **{k: v for k, v in extra.items() if v is not None}}
    return status, dumps(body), headers


def error_response(request: Request, status: int, code: str, detail: str, headers: dict | None = None,
                   **extra: Any) -> Response:
    """`error_reply` as a response, for FastAPI's exception handlers."""
    return respond(error_reply(request.scope.setdefault("state", {}), status, code, detail, headers, **extra))


class ServingAccess(AccessMiddleware):
    """Request id in and out, HTTP metrics, and one JSON access-log line per request.

    ``start(scope, body)`` may take a prediction request (an awaitable of its `Reply`) or decline (None):
    then the body is replayed to FastAPI, which validates it with pydantic and answers as documented.
    The same object (with no app) is the server's fast lane (loopstack.fast_http): `accepts` and `begin`
    answer predictions under `FastLaneProtocol` with no ASGI cycle, through the same `start`."""

    ACCESS_FIELDS = ("model", "version", "variant", "rung", "instances", "error")

    def __init__(self, app: Any, metrics: ServingMetrics, start: Any = None, max_body: int | None = None) -> None:
        super().__init__(app)
        self.metrics, self.start, self.max_body = metrics, start, max_body

    def _too_large(self, st: dict) -> Reply:
        return error_reply(st, 413, "payload_too_large", too_large_detail(self.max_body, "instances"))

    def too_large(self, path: str, headers: list, client: Any) -> tuple[int, bytes, dict, float, bytes]:
        """The fast lane's 413 for a body over `max_body` (the connection is closed after it)."""
        scope, t0 = lane_scope(path, headers, client)
        status, body, _ = self._too_large(scope["state"])
        return status, body, scope, t0, b""

    def accepts(self, path: bytes) -> bool:
        return self.start is not None and _FAST_PATH_B.match(path) is not None

    def begin(self, raw: bytes, path: str, headers: list, client: Any) -> Any:
        """The fast lane's answer to a POST of `raw` to `path`: an awaitable of (status, body, scope, t0,
        extra header lines), or None to go the ASGI way (the same request id either way)."""
        scope, t0 = lane_scope(path, headers, client)
        reply = self.start(scope, raw)
        return None if reply is None else self._lane_reply(reply, scope, t0)

    @staticmethod
    async def _lane_reply(reply: Any, scope: dict, t0: float) -> tuple[int, bytes, dict, float, bytes]:
        status, body, headers = await reply
        extra = b"".join(b"%s: %s\r\n" % (k.lower().encode(), v.encode()) for k, v in headers.items()) \
            if headers else b""
        return status, body, scope, t0, extra

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        if self.start is not None and scope["method"] == "POST" and _FAST_PATH.match(scope["path"]):
            receive = await self._fast(scope, receive, send)
            if receive is None:
                return
        await self.app(scope, receive, send)

    def record(self, scope: dict, status: int, seconds: float) -> None:
        path = scope["path"]
        route = path.rsplit(":", 1)[-1] if path.startswith("/v1/models/") and ":" in path else path
        route = route if route in ("predict", "predict_batch", "/metrics", "/healthz", "/readyz") else "other"
        self.metrics.child(self.metrics.http, route, str(status)).inc()

    async def _fast(self, scope: dict, receive: Any, send: Any) -> Any:
        """Read the body and let `start` answer; None when it did, else a `receive` that replays the body."""
        try:
            body = await read_body(receive, self.max_body)
        except BodyTooLarge:
            await respond(self._too_large(scope["state"]))(scope, receive, send)
            return None
        if body is None:
            return None
        reply = self.start(scope, body)
        if reply is None:
            return _replay(body, receive)
        await respond(await reply)(scope, receive, send)
        return None


def _replay(body: bytes, receive: Any) -> Any:
    """An ASGI `receive` that yields `body` once, then defers to the real one."""
    sent = False

    async def again() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()
    return again
