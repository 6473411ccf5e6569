"""The HTTP feature server: online features as JSON over HTTP (FastAPI), Feast-compatible request shape.

`create_app(project)` builds the app; `loopstack features serve` runs it under uvicorn. Endpoints
(docs/feature-server.md has examples): ``POST /get-online-features``, ``GET /health``,
``GET /freshness``, ``GET /metrics`` (Prometheus text), ``POST /reload``, ``/openapi.json``, ``/docs``.

Views are read from the registry once at startup; a background task checks every
`reload_interval` seconds whether `loopstack apply` changed the definitions (one ``max(id)``
query) and swaps in the new views, and ``POST /reload`` does the same at once. Reads run inline
on the event loop: an online read is a sub-millisecond key lookup, and a thread hop would cost
more than the read. Every response carries ``x-request-id`` (echoed, or generated) and every
request is one JSON line on the ``loopstack.access`` logger.
"""
from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections import Counter
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from loopstack.asgi import MAX_BODY_BYTES, AccessMiddleware, lane_scope
from loopstack.features.online.service import OnlineFeatures
from loopstack.features.online.state import meta_key
from loopstack.features.server_models import (ErrorResponse, FreshnessResponse, GetOnlineFeaturesRequest,
                                              GetOnlineFeaturesResponse, HealthResponse, ReloadResponse, us_to_iso)
from loopstack.features.server_reads import FeatureReads, error_body, invalid_body, store_unavailable
from loopstack.features.server_reads import dumps as _dumps
from loopstack.heap import tune_gc

if TYPE_CHECKING:
    from loopstack.project import Project

log = logging.getLogger(__name__)
READ_PATH = "/get-online-features"
_READ_PATH_BYTES = READ_PATH.encode()
_PATHS = (READ_PATH, "/health", "/freshness", "/metrics", "/reload", "/openapi.json", "/docs")
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


# -- metrics (Prometheus text format, no dependency) ------------------------------------------------
class Metrics:
    """Request counts, latency histogram and error counts, rendered in Prometheus text format."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()
        self.hist: dict[str, list[float]] = {}   # path -> count per bucket (last: > every bucket), and sum
        self.sums: Counter[str] = Counter()
        self.entity_rows = 0

    def observe(self, path: str, method: str, status: int, seconds: float, error: str | None) -> None:
        """Record one finished request."""
        self.requests[(path, method, status)] += 1
        if error:
            self.errors[(path, error)] += 1
        h = self.hist.get(path)
        if h is None:
            h = self.hist[path] = [0] * (len(_BUCKETS) + 1)
        h[bisect.bisect_left(_BUCKETS, seconds)] += 1   # the first bucket with seconds <= le
        self.sums[path] += seconds

    def count_rows(self, n: int) -> None:
        """Entity rows answered."""
        self.entity_rows += n

    def render(self, gauges: dict[str, list[tuple[str, float]]]) -> str:
        """The exposition text; `gauges` maps a metric name to (labels text, value) samples."""
        p = "loopstack_feature_server_"
        out = [f"# HELP {p}requests_total HTTP requests by path, method and status.",
               f"# TYPE {p}requests_total counter"]
        out += [f'{p}requests_total{{path="{a}",method="{m}",status="{s}"}} {n}'
                for (a, m, s), n in sorted(self.requests.items())]
        out += [f"# HELP {p}errors_total Requests answered with an error, by error code.",
                f"# TYPE {p}errors_total counter"]
        out += [f'{p}errors_total{{path="{a}",error="{e}"}} {n}' for (a, e), n in sorted(self.errors.items())]
        out += [f"# HELP {p}request_duration_seconds Time from request to response.",
                f"# TYPE {p}request_duration_seconds histogram"]
        for path, h in sorted(self.hist.items()):
            les = [*map(str, _BUCKETS), "+Inf"]
            out += [f'{p}request_duration_seconds_bucket{{path="{path}",le="{le}"}} {sum(h[:i + 1])}'
                    for i, le in enumerate(les)]
            out += [f'{p}request_duration_seconds_sum{{path="{path}"}} {self.sums[path]:.6f}',
                    f'{p}request_duration_seconds_count{{path="{path}"}} {sum(h)}']
        out += [f"# TYPE {p}entity_rows_total counter", f"{p}entity_rows_total {self.entity_rows}"]
        for name, samples in gauges.items():
            out += [f"# TYPE {name} gauge", *(f"{name}{lab} {value}" for lab, value in samples)]
        return "\n".join(out) + "\n"


# -- state, reload ----------------------------------------------------------------------------------
def definitions_version(project: "Project") -> int | None:
    """A number that grows with every `loopstack apply` change (the newest definition row id)."""
    return project.meta.definitions_version()


class ServerState:
    """What the app serves from: the project, its views (loaded once, swapped on reload), metrics."""

    def __init__(self, project: "Project") -> None:
        self.project = project
        self.metrics = Metrics()
        self.started = time.monotonic()
        self.version: int | None = None
        self.reloads = 0
        self.online: OnlineFeatures = None  # type: ignore[assignment]
        self.reload()

    def reload(self) -> bool:
        """Load the views again if the definitions changed; True if they did."""
        version = definitions_version(self.project)   # read first: a concurrent apply reloads next time
        if self.online is not None and version == self.version:
            return False
        views = self.project.registry.views()
        self.online = OnlineFeatures(self.project.online_store, views,
                                     on_demand=self.project.on_demand_names())
        self.version = version
        self.reloads += 1
        return True


def _error(status: int, code: str, detail: str, rid: str | None, request: Request | None = None,
           **extra: Any) -> Response:
    code_, body = error_body(status, code, detail, rid, request.scope.setdefault("state", {}) if request else None,
                             **extra)
    return Response(body, status_code=code_, media_type="application/json")


def _json(body: Any, status: int = 200) -> Response:
    return Response(_dumps(body), status_code=status, media_type="application/json")


_REQUEST_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/GetOnlineFeaturesRequest"}}}}}


def _with_request_schema(app: FastAPI) -> None:
    """The request model is parsed by hand (server_reads.py), so FastAPI does not list it: add it."""
    default = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = default()
            schema = GetOnlineFeaturesRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            for prop in schema["properties"].values():   # as FastAPI writes it: no `"default": null`
                if prop.get("default", ...) is None:
                    del prop["default"]
            spec.setdefault("components", {}).setdefault("schemas", {})["GetOnlineFeaturesRequest"] = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


class _AccessMiddleware(AccessMiddleware):
    """Request id in and out, one JSON access-log line and the metrics of every HTTP request; the
    online-read route skips FastAPI (`FeatureServerApp` calls this layer first, outside FastAPI's stack)."""

    ACCESS_FIELDS = ("error", "rows", "features")

    def __init__(self, app: Any, state: ServerState, reads: FeatureReads) -> None:
        super().__init__(app)
        self.state, self.reads = state, reads

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["path"] == READ_PATH and scope["method"] == "POST":
            await self.reads.asgi(scope, receive, send)   # the hot path skips FastAPI's routing
        else:
            await self.app(scope, receive, send)

    def accepts(self, path: bytes) -> bool:
        """The fast lane (loopstack.fast_http) answers the online reads."""
        return path == _READ_PATH_BYTES

    @property
    def max_body(self) -> int:
        """The largest body the fast lane reads (`FeatureReads.max_body`)."""
        return self.reads.max_body

    def too_large(self, path: str, headers: list, client: Any) -> tuple[int, bytes, dict, float, bytes]:
        """The fast lane's 413 for a body over `max_body` (the connection is closed after it)."""
        scope, t0 = lane_scope(READ_PATH, headers, client)
        return (*self.reads.too_large(scope["state"]), scope, t0, b"")

    def begin(self, raw: bytes, path: str, headers: list, client: Any) -> tuple[int, bytes, dict, float, bytes]:
        """``POST /get-online-features`` for `fast_http.FastLaneProtocol`, which answers it without an ASGI
        cycle: the same handler and request id as `handle`. Returns (status, body, scope, t0, b""); the
        caller writes the answer, then calls `finish(scope, status, t0)` for the metrics and access log."""
        scope, t0 = lane_scope(READ_PATH, headers, client)
        st = scope["state"]
        rid = st["request_id"]
        ct = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), None)
        try:
            status, body = self.reads.handle(raw, ct, st)
        except Exception as exc:  # noqa: BLE001 - answered like the ASGI path's error middleware would
            log.exception("get-online-features failed (request %s)", rid)
            status, body = error_body(500, "internal", f"{type(exc).__name__}: {exc}", rid, st)
        return status, body, scope, t0, b""

    def record(self, scope: dict, status: int, seconds: float) -> None:
        path = scope["path"] if scope["path"] in _PATHS else "other"
        err = scope["state"].get("error") or ("internal" if status >= 500 else None)
        self.state.metrics.observe(path, scope["method"], status, seconds, err)

    def access_extra(self, scope: dict) -> dict:
        return {"client": (scope.get("client") or ("", 0))[0]}


# -- the app ----------------------------------------------------------------------------------------
class FeatureServerApp(FastAPI):
    """The FastAPI app (OpenAPI, docs, every route) whose HTTP requests enter through the access layer
    first: ``POST /get-online-features`` is answered there by `FeatureReads.asgi`, before FastAPI's
    per-request work (its telemetry checks, error middleware, routing); everything else goes on to FastAPI."""

    access: _AccessMiddleware | None = None

    @property
    def fast_lane(self) -> "_AccessMiddleware | None":
        """What `fast_http.FastLaneProtocol` answers online reads with."""
        return self.access

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if self.access is not None and scope["type"] == "http":
            await self.access(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)

    async def _fastapi(self, scope: dict, receive: Any, send: Any) -> None:
        await super().__call__(scope, receive, send)


def create_app(project: "Project", *, reload_interval: float = 5.0, max_rows: int = 10_000,
               server_gc: bool = False, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The feature server for `project`: views are loaded now; definitions are re-checked every
    `reload_interval` seconds while the app runs (0 = only on ``POST /reload``); requests with more
    than `max_rows` entity rows are refused (422), bodies over `max_body_bytes` too (413). `server_gc`:
    apply `tune_gc` when the app starts (for a process that only serves this app: `loopstack features
    serve` sets it)."""
    state = ServerState(project)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if server_gc:
            tune_gc()
        async def poll() -> None:
            while True:
                await asyncio.sleep(reload_interval)
                try:
                    if await asyncio.to_thread(state.reload):
                        log.info("definitions changed: reloaded views %s", sorted(state.online.views))
                except Exception:  # keep serving the views we have
                    log.exception("checking the definitions for changes failed")

        task = asyncio.create_task(poll()) if reload_interval > 0 else None
        yield
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app = FeatureServerApp(title="loopstack feature server", version="1", lifespan=lifespan,
                           description="Online features over HTTP. Request shape follows Feast's "
                                       "`/get-online-features`.")
    app.state.server = state
    reads = FeatureReads(lambda: state.online, max_rows, state.metrics.count_rows, max_body_bytes)
    app.access = _AccessMiddleware(app._fastapi, state=state, reads=reads)
    _with_request_schema(app)
    errors = {c: {"model": ErrorResponse} for c in (404, 422, 500, 503)}

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        status, body = invalid_body(exc.errors(), request.headers.get("content-type"), request.state.request_id,
                                    request.scope.setdefault("state", {}))
        return Response(body, status_code=status, media_type="application/json")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        """Unknown paths and methods answer in the documented error shape too, not FastAPI's {"detail"}."""
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        status, body = error_body(exc.status_code, code, f"{exc.detail}: {request.method} {request.url.path}",
                                  getattr(request.state, "request_id", None), request.scope.setdefault("state", {}))
        return Response(body, status_code=status, media_type="application/json", headers=getattr(exc, "headers", None))

    @app.post("/get-online-features", response_model=GetOnlineFeaturesResponse, responses=errors,
              summary="Online feature values for entities", openapi_extra=_REQUEST_BODY)
    async def get_online_features(request: Request) -> Response:
        """Latest feature values (as of `as_of`, default now) for each entity row."""
        # served by `reads.asgi` from the middleware; this route is the OpenAPI entry (and a fallback)
        status, body = reads.handle(await request.body(), request.headers.get("content-type"),
                                    request.scope.setdefault("state", {}))
        return Response(body, status_code=status, media_type="application/json")

    @app.get("/health", response_model=HealthResponse, responses={503: {"model": ErrorResponse}})
    async def health(request: Request) -> Response:
        """200 when the online store answers a read; 503 otherwise."""
        try:
            state.online.store.read([meta_key("__health__")])
        except Exception as exc:
            return _error(503, "internal", f"online store unreachable: {type(exc).__name__}: {exc}",
                          request.state.request_id, request)
        return _json({"status": "ok", "views": sorted(state.online.views), "definitions_version": state.version,
                      "uptime_seconds": round(time.monotonic() - state.started, 3)})

    @app.get("/freshness", response_model=FreshnessResponse, responses={503: {"model": ErrorResponse}})
    async def freshness(request: Request) -> Response:
        """Per view: newest event applied (watermark), when, and the lag behind now in seconds."""
        times = ("newest_event_ts", "watermark", "exact_from", "applied_at")
        online = state.online
        try:
            fresh = online.freshness()
        except online.store.unavailable as exc:
            status, body = store_unavailable(exc, request.state.request_id, request.scope.setdefault("state", {}))
            return Response(body, status_code=status, media_type="application/json")
        views = {v: {k: us_to_iso(x) if k in times else x for k, x in f.items()} for v, f in fresh.items()}
        return _json({"now": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"), "views": views})

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics() -> Response:
        """Prometheus text format: requests, latency histogram, errors, freshness lag per view."""
        online = state.online
        try:   # the request counters matter most while the store is down: serve them without the lag
            fresh = online.freshness()
        except online.store.unavailable as exc:
            log.warning("metrics without freshness lag: the online store cannot be read (%s)", exc)
            fresh = {}
        lag = [(f'{{view="{v}"}}', f["lag_seconds"]) for v, f in fresh.items() if f["lag_seconds"] is not None]
        gauges = {"loopstack_feature_freshness_lag_seconds": lag,
                  "loopstack_feature_server_views": [("", len(state.online.views))],
                  "loopstack_feature_server_definitions_version": [("", state.version or 0)]}
        return Response(state.metrics.render(gauges), media_type="text/plain; version=0.0.4")

    @app.post("/reload", response_model=ReloadResponse)
    async def reload() -> Response:
        """Pick up `loopstack apply` changes now (a no-op when nothing changed)."""
        changed = state.reload()
        return _json({"reloaded": changed, "views": sorted(state.online.views), "definitions_version": state.version})

    return app


def app_from_env() -> FastAPI:
    """App factory for multi-worker uvicorn: the project folder comes from ``LOOPSTACK_SERVE_PROJECT``."""
    import os

    from loopstack.features.cli_serve import configure_access_log
    from loopstack.project import Project
    configure_access_log(os.environ.get("LOOPSTACK_SERVE_ACCESS_LOG", "1") == "1")
    return create_app(Project(os.environ.get("LOOPSTACK_SERVE_PROJECT", ".")),
                      reload_interval=float(os.environ.get("LOOPSTACK_SERVE_RELOAD_INTERVAL", "5")), server_gc=True,
                      max_body_bytes=int(os.environ.get("LOOPSTACK_SERVE_MAX_BODY", str(MAX_BODY_BYTES))))
