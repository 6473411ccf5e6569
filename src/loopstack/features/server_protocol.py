"""The feature server's HTTP protocol: uvicorn's httptools protocol, except that ``POST /get-online-features``
is answered by the protocol itself, with no ASGI cycle.

Why: an online read costs ~35 us in-process, but through ASGI each request also paid a task, a scope, an
event, the middleware coroutines and two socket writes (head, then body): about 0.3 ms of CPU per request
on this project's 2-core machine, ten times the read. Here the handler (`FeatureReads.handle`, the same
one the ASGI route calls), the request id, the metrics and the access-log line are the same as on the ASGI
path; the answer is one write. Everything else (other routes, ``Expect: 100-continue``, forwarded
headers, a request pipelined behind one still in flight, a server with a root path or a concurrency
limit) goes the ASGI way unchanged.
"""
from __future__ import annotations

import http
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from loopstack.features.server import READ_PATH, FeatureServerApp

_PATH = READ_PATH.encode()
_HEAD_PASS = (b"expect", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded")   # these go the ASGI way
_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}


def access_layer(app: Any) -> Any:
    """The feature server's access layer under uvicorn's wrappers (None when `app` is not a feature server)."""
    for _ in range(8):
        if isinstance(app, FeatureServerApp):
            return app.access
        app = getattr(app, "app", None)
    return None


class FastReadProtocol(HttpToolsProtocol):
    """Pass as ``uvicorn.run(..., http=FastReadProtocol)``; behaves as uvicorn's own protocol for anything
    but a plain online read."""

    _fast: list[bytes] | None = None
    _hdr_src: Any = None      # the default-header list `_hdr` was formatted from
    _hdr = b""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._access = access_layer(config.loaded_app) if not self.root_path else None

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
        url = self.url
        if self._access is None or (url != _PATH and url.partition(b"?")[0] != _PATH):
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
            self._fast = []
            self._keep_alive = self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            return
        self._fast = None
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._fast is not None:
            self._fast.append(body)
        else:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._fast is None:
            super().on_message_complete()
            return
        chunks, self._fast = self._fast, None
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        access = self._access
        status, body, scope, t0 = access.read_outside_asgi(raw, self.headers, self.client)
        head = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"")), self._default_headers(),
                b"content-length: %d\r\ncontent-type: application/json\r\nx-request-id: %s\r\n"
                % (len(body), scope["state"]["request_id"].encode())]
        if not self._keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))
        access.finish(scope, status, t0)
        if not self._keep_alive:
            self.transport.close()
        self.on_response_complete()
