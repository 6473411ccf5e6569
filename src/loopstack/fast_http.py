"""uvicorn's httptools protocol with a fast lane: a server's hot route is answered by the protocol itself,
with no ASGI cycle (the feature server's online reads, the model server's predictions).

Why: through ASGI each request also pays a task, a scope, receive/send events, the middleware coroutines
and two socket writes (head, then body): about 0.3 ms of CPU per request on this project's 2-core
machine, ten times an online read. A *lane* (any object with the `FastLane` methods, found as the
``fast_lane`` attribute of the app or of an app it wraps) takes the raw body and gives back the status,
body and scope its ASGI route would have; the request id, metrics and access-log line are the lane's
own, as on its ASGI path, and the answer is one write. A lane may answer at once (a tuple) or later (an
awaitable: the request is then in flight on the connection, and a request pipelined behind it waits, as
under uvicorn), or decline (None): the request then goes the ASGI way with its body, so its route
validates it and answers as documented. Everything else (other routes, ``Expect: 100-continue``,
forwarded headers, a request pipelined behind one still in flight, a server with a root path or a
concurrency limit) goes the ASGI way unchanged.
"""
from __future__ import annotations

import http
from typing import Any, Awaitable, Protocol, Union

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_HEAD_PASS = (b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded")   # these go the ASGI way
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}

# (status, body, scope, t0, extra header lines such as b"retry-after: 1\r\n")
Reply = tuple[int, bytes, dict, float, bytes]


class FastLane(Protocol):
    def accepts(self, path: bytes) -> bool:
        """True for a URL path (bytes, no query) this lane answers."""

    def begin(self, raw: bytes, path: str, headers: list, client: Any) -> Union[Reply, Awaitable[Reply], None]:
        """The answer to a POST of `raw` to `path`: now, later (awaitable), or None (go the ASGI way)."""

    def finish(self, scope: dict, status: int, t0: float) -> None:
        """Count the answered request and write its access-log line."""

    # optional: ``max_body`` (bytes; a larger body is refused) and ``too_large(path, headers, client)``, the
    # Reply (413) that refuses it. A lane without them takes bodies of any size.


def find_lane(app: Any) -> FastLane | None:
    """The ``fast_lane`` of `app` or of an app it wraps (uvicorn's wrappers, middleware), else None."""
    for _ in range(8):
        lane = getattr(app, "fast_lane", None)
        if lane is not None:
            return lane
        app = getattr(app, "app", None)
    return None


class _Discard:
    """The body of a request refused for its size: its remaining bytes are dropped (the connection closes)."""

    @staticmethod
    def append(_chunk: bytes) -> None:
        pass


_DISCARD = _Discard()


class _InFlight:
    """Stands for uvicorn's request cycle while a fast answer is being made: a request pipelined behind it
    queues (uvicorn sees a cycle not complete), shutdown clears `keep_alive`, a lost connection sets
    `disconnected`."""

    __slots__ = ("response_complete", "keep_alive", "disconnected", "message_event")

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete, self.keep_alive, self.disconnected = False, keep_alive, False
        self.message_event = self     # connection_lost calls cycle.message_event.set()

    def set(self) -> None:
        pass


class FastLaneProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.run(..., http=FastLaneProtocol)``; behaves as uvicorn's own protocol for anything
    but a request of the app's fast lane."""

    _fast: list[bytes] | _Discard | None = None
    _size = 0
    _counting = False         # a body without content-length (chunked): its size is counted as it comes
    _path = b""               # the URL path of the request being parsed (no query)
    _hdr_src: Any = None      # the default-header list `_hdr` was formatted from
    _hdr = b""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._lane = find_lane(config.loaded_app) if not self.root_path else None

    def _default_headers(self) -> bytes:
        """uvicorn's default headers (date, server) as bytes, formatted again only when uvicorn replaces the
        list (its date header changes once a second), not for every answer."""
        hs = self.server_state.default_headers
        if hs is not self._hdr_src:
            self._hdr_src, self._hdr = hs, b"".join(b"%s: %s\r\n" % kv for kv in hs)
        return self._hdr

    def on_message_begin(self) -> None:
        self._unset_keepalive_if_required()   # a request parsed right after a fast answer: not idle any more
        super().on_message_begin()

    def _takes(self) -> bool:
        """True when this request (headers just parsed) can be answered here."""
        lane = self._lane
        self._path = self.url.partition(b"?")[0]
        if lane is None or not lane.accepts(self._path):
            return False
        if self.flow.write_paused:
            return False   # the client is not reading its answers: the ASGI way waits for the drain
        if self.parser.get_method() != b"POST" or self.limit_concurrency is not None or self.pipeline:
            return False
        if self.cycle is not None and not self.cycle.response_complete:
            return False   # a request still in flight on this connection: answer in order, the ASGI way
        if self.parser.should_upgrade():
            return False
        return not any(k in _HEAD_PASS for k, _ in self.headers)

    def on_headers_complete(self) -> None:
        if self._takes():
            self._fast, self._size = [], 0
            self._keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            length = next((v for k, v in self.headers if k == b"content-length"), None)
            self._counting = length is None
            if length is not None and length.isdigit():
                self._count(int(length))
            return
        self._fast = None
        super().on_headers_complete()

    def _count(self, n: int) -> None:
        """Add `n` body bytes; over the lane's ``max_body``, refuse the request (413 and ``connection: close``
        at once); the rest of its body is read and dropped, and the connection closes when it has come."""
        self._size += n
        limit = getattr(self._lane, "max_body", None)
        if limit is not None and self._size > limit and self._fast is not _DISCARD:
            self._fast = _DISCARD
            self._send(self._lane.too_large(self._path.decode("latin-1"), self.headers, self.client), False,
                       close=False)

    def on_body(self, body: bytes) -> None:
        fast = self._fast
        if fast is None:
            super().on_body(body)
        elif fast is not _DISCARD:
            fast.append(body)
            if self._counting:
                self._count(len(body))

    def on_message_complete(self) -> None:
        if self._fast is None:
            super().on_message_complete()
            return
        if self._fast is _DISCARD:
            self._fast = None
            self.transport.close()
            return
        chunks, self._fast = self._fast, None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        out = self._lane.begin(raw, self._path.decode("latin-1"), self.headers, self.client)
        if out is None:          # declined: the ASGI way, with the body already read
            super().on_headers_complete()
            if raw:
                super().on_body(raw)
            super().on_message_complete()
        elif type(out) is tuple:
            self._send(out, self._keep_alive)
        else:
            self.cycle = flight = _InFlight(self._keep_alive)
            task = self.loop.create_task(self._later(out, flight))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _later(self, answer: Awaitable[Reply], flight: _InFlight) -> None:
        out = await answer     # a lane's awaitable answers every failure itself (a 500 at worst)
        flight.response_complete = True
        if flight.disconnected:
            status, _, scope, t0, _ = out
            self._lane.finish(scope, status, t0)
            return
        self._send(out, flight.keep_alive)

    def _send(self, out: Reply, keep_alive: bool, close: bool = True) -> None:
        status, body, scope, t0, extra = out
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), self._default_headers(),
                b"content-length: %d\r\ncontent-type: application/json\r\nx-request-id: %s\r\n%s"
                % (len(body), scope["state"]["request_id"].encode(), extra)]
        if not keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))
        self._lane.finish(scope, status, t0)
        if not keep_alive:
            if close:
                self.transport.close()
            return
        self.on_response_complete()

