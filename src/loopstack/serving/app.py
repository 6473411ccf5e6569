"""The model server (FastAPI on uvicorn): predictions over HTTP for the models of one project.

Endpoints (docs/serving.md has examples): ``POST /v1/models/{name}:predict``,
``POST /v1/models/{name}:predict_batch``, ``GET /v1/models``, ``GET /v1/models/{name}``,
``GET /metrics`` (Prometheus), ``GET /healthz``, ``GET /readyz``, ``/openapi.json``, ``/docs``.
Bad input is always a 4xx whose body names what was wrong; 429 carries ``Retry-After``. Every
response carries ``x-request-id`` and every request is one JSON line on the ``loopstack.access``
logger. Shutdown (SIGTERM / Ctrl-C): uvicorn stops accepting and finishes in-flight requests, then
shadow copies finish, every batcher drains, workers stop, and the prediction log is flushed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from operator import itemgetter
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from loopstack.serving.answers import DeadlineError, NotReady, Unavailable
from loopstack.serving.answers import Request as PredictInput
from loopstack.serving.batcher import BatcherClosed, QueueFull
from loopstack.serving.block import Block, block_body, predict_block
from loopstack.serving.config import ServingConfig
from loopstack.serving.errors import NoRoute, ServingError
from loopstack.serving.http_layer import (Reply, ServingAccess, dumps, error_reply, error_response, json_response,
                                          respond)
from loopstack.serving.metrics import ServingMetrics
from loopstack.serving.models import ModelFleet, UnknownModel
from loopstack.serving.predict import PredictService
from loopstack.serving.prediction_log import PredictionLog
from loopstack.serving.schemas import (ErrorResponse, HealthResponse, ModelsResponse, ModelStatus,
                                       PredictBatchRequest, PredictBatchResponse, PredictRequest, PredictResponse,
                                       ReadyResponse, fast_predict, fast_predict_batch,
                                       fast_predict_rows)
from loopstack.serving.vector import FeatureUnavailable, InputError, Row

if TYPE_CHECKING:
    from loopstack.project import Project

log = logging.getLogger("loopstack.serving")
# (error class, HTTP status, code); first match wins
_ERRORS: list[tuple[type, int, str]] = [
    (UnknownModel, 404, "unknown_model"), (InputError, 422, "invalid_input"), (QueueFull, 429, "overloaded"),
    (DeadlineError, 504, "deadline_exceeded"), (NotReady, 503, "not_ready"), (NoRoute, 503, "not_ready"),
    (FeatureUnavailable, 503, "unavailable"), (Unavailable, 503, "unavailable"), (BatcherClosed, 503, "unavailable"),
    (ServingError, 503, "unavailable")]


def _uid(v: Any) -> str | None:
    return None if v is None else str(v)


def _validation_text(errors: list[dict]) -> str:
    """The 422 detail of pydantic's errors; a non-finite number is named once (not as every type of the union
    it failed), with what to send instead."""
    finite = {tuple(e["loc"][:-1]) for e in errors if e["type"] == "finite_number" and e["loc"][-1:] == ["float"]}
    shown = [e for e in errors if tuple(e["loc"][:-1]) not in finite or e["type"] == "finite_number"]
    text = "; ".join(f"{'.'.join(e['loc'][:-1] if tuple(e['loc'][:-1]) in finite else e['loc'])}: {e['msg']}"
                     for e in shown)
    if any(e["type"] == "finite_number" for e in errors):
        text += " (JSON has no NaN or Infinity: send null for a missing value)"
    return text


def _unreadable(exc: BaseException) -> str:
    """The 400 detail of a body Python's JSON reader gave up on: what was wrong and what to send."""
    if isinstance(exc, UnicodeDecodeError):
        return f"the body is not UTF-8 ({exc.reason} at byte {exc.start}): send JSON encoded as UTF-8"
    if isinstance(exc, RecursionError):
        return "the body nests arrays or objects too deeply to read: send a flatter JSON body"
    if "digits" in str(exc):
        return "the body has a number with too many digits to read: send numbers a float64 can hold"
    return f"the body is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})"


def create_app(project: "Project", cfg: ServingConfig, server_gc: bool = False) -> FastAPI:
    """The model server for `project`; models load in the background once the app starts (see /readyz).
    `server_gc`: tune the garbage collector once the models are loaded (`heap.tune_gc`; for a process that
    only serves this app: `loopstack serve` sets it)."""
    metrics = ServingMetrics()
    fleet = ModelFleet(project, cfg, metrics)
    service = PredictService(fleet, cfg, metrics)
    started = time.monotonic()
    spill = project.path("data/predictions.spill.jsonl")

    def state() -> dict:
        out: dict[str, Any] = {"versions": [], "cache": service.cache.stats() if service.cache else None,
                               "prediction_log": service.plog.stats() if service.plog else None}
        for h in fleet.handles.values():
            snap = h.snapshot
            out["versions"] += [{**lv.stats(), "roles": snap.roles(v)} for v, lv in snap.versions.items()]
        return out

    metrics.attach(state)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if cfg.log_predictions:
            service.plog = PredictionLog(project.log, max_queue=cfg.log_queue, spill_path=spill)
        fleet.start(settle_heap=server_gc)
        yield
        await service.drain(cfg.drain_timeout_s)
        await asyncio.to_thread(fleet.close)
        if service.plog is not None:
            await asyncio.to_thread(service.plog.close)

    # FastAPI's native OpenTelemetry checks the global providers on every request; the server has its own
    # Prometheus metrics and JSON access log, so it is off (it is not configured in a loopstack process)
    app = FastAPI(title="loopstack model server", version="1", lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  description="Predictions from registered models: online features, dynamic batching, "
                              "shadow/canary/experiment/holdback routing, degradation ladder.")
    app.state.fleet, app.state.service, app.state.metrics = fleet, service, metrics
    errs = {c: {"model": ErrorResponse} for c in (400, 404, 405, 413, 422, 429, 503, 504)}

    def _model_label(st: dict) -> str:
        """The model label of error metrics: a served model, else "other" (no label per unknown name)."""
        name = st.get("model", "")
        return name if name in fleet.handles else "other"

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        errors = [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))} for e in exc.errors()]
        if any(e["type"] == "json_invalid" for e in errors):
            return error_response(request, 400, "invalid_json", "the body is not valid JSON: " + "; ".join(
                f"{(e.get('ctx') or {}).get('error') or e.get('msg')} at character {'.'.join(map(str, e['loc'][1:]))}"
                for e in exc.errors() if e.get("type") == "json_invalid"))
        text = _validation_text(errors)
        if "json" not in request.headers.get("content-type", ""):
            text += " (send the body as JSON with the header content-type: application/json)"
        return error_response(request, 422, "invalid_request", f"malformed request: {text}", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = "not_found" if exc.status_code == 404 else "invalid_request"
        headers, detail = getattr(exc, "headers", None), str(exc.detail)
        if exc.status_code == 400 and exc.__cause__ is not None:   # FastAPI could not read the body
            return error_response(request, 400, "invalid_json", _unreadable(exc.__cause__), headers=headers)
        if exc.status_code == 405:
            allowed = (headers or {}).get("Allow") or (headers or {}).get("allow") or "another method"
            detail = (f"{request.method} is not allowed on {request.url.path} (allowed: {allowed}); predictions are "
                      "POST /v1/models/NAME:predict or POST /v1/models/NAME:predict_batch")
        return error_response(request, exc.status_code, code, detail, headers=headers)

    def serving_error(st: dict, exc: ServingError) -> Reply:
        status, code = next((s, c) for cls, s, c in _ERRORS if isinstance(exc, cls))
        metrics.child(metrics.errors, _model_label(st), code).inc()
        headers = None
        if isinstance(exc, QueueFull):
            headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
        elif status == 503:
            headers = {"Retry-After": "1"}
        return error_reply(st, status, code, str(exc), headers)

    def internal_error(st: dict, exc: Exception) -> Reply:
        log.exception("internal error (request %s)", st.get("request_id"))
        metrics.errors.labels(_model_label(st), "internal").inc()
        return error_reply(st, 500, "internal", f"{type(exc).__name__}: {exc}")

    @app.exception_handler(ServingError)
    async def _serving(request: Request, exc: ServingError) -> Response:
        return respond(serving_error(request.scope.setdefault("state", {}), exc))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> Response:
        return respond(internal_error(request.scope.setdefault("state", {}), exc))

    async def answer_one(name: str, st: dict, entities: dict, fields: dict, user_id: Any,
                         deadline_ms: float | None) -> Reply:
        st["model"] = name
        t0 = time.monotonic()
        inp = PredictInput(entities, fields, _uid(user_id), st["request_id"])
        ans = (await service.predict(name, [inp], deadline_ms))[0]
        st.update(version=ans.version, variant=ans.variant, rung=ans.rung)
        return 200, dumps({"prediction": ans.prediction, "model": name, "version": ans.version, "variant": ans.variant,
                      "rung": ans.rung, "request_id": ans.request_id, "cached": ans.cached,
                      "latency_ms": round((time.monotonic() - t0) * 1000, 3)}), None

    def admit(name: str, st: dict, n: int, noun: str) -> float:
        """The checks every batch request passes before it is predicted (a known model, at most
        `max_instances` of them); when it started."""
        st["model"], st["instances"] = name, n
        fleet.get(name)
        if n > cfg.max_instances:
            raise InputError(f"{n} {noun} in one request; the limit is {cfg.max_instances}: split the request")
        return time.monotonic()

    async def answer_batch(name: str, st: dict, instances: list[tuple[Any, Any, Any]], user_id: Any,
                           deadline_ms: float | None, floats: bool = False) -> Reply:
        """`floats`: every field value of every instance is known to be a float (checked by the caller)."""
        t0 = admit(name, st, len(instances), "instances")
        rid, uid = st["request_id"], _uid(user_id)

        def inputs() -> list[PredictInput]:
            return [PredictInput(e, f, uid if u is None else str(u), f"{rid}:{n}")
                    for n, (e, f, u) in enumerate(instances)]
        one_user = set(map(itemgetter(2), instances)) == {None}   # one user for all: may be one block
        return await answered(name, rid, uid, t0, len(instances), (lambda b: b.plain_fields(
            list(map(itemgetter(1), instances)), floats)) if one_user else None, inputs, deadline_ms, floats)

    async def answer_rows(name: str, st: dict, columns: tuple[str, ...], rows: list[list], user_id: Any,
                          deadline_ms: float | None, floats: bool = False) -> Reply:
        """A `columns` + `rows` batch: each row is one instance, seen through a `Row` (no dict per row)."""
        t0 = admit(name, st, len(rows), "rows")
        rid, uid = st["request_id"], _uid(user_id)

        def inputs() -> list[PredictInput]:
            index = {c: i for i, c in enumerate(columns)}
            return [PredictInput(r, r, uid, f"{rid}:{n}") for n, r in
                    enumerate(Row(columns, index, values) for values in rows)]
        return await answered(name, rid, uid, t0, len(rows), lambda b: b.plain_rows(columns, rows, floats), inputs,
                              deadline_ms, floats)

    async def answered(name: str, rid: str, uid: str | None, t0: float, n: int,
                       vectors_of: Callable[[Any], Any] | None, inputs: Callable[[], list[PredictInput]],
                       deadline_ms: float | None, floats: bool) -> Reply:
        """The 200 answer of a batch request of `n` instances: as one block when `vectors_of` is given and the
        request is one (`predict_block`; its answer from a template), else through the general path on
        `inputs()`, one item per Answer."""
        got = None
        if vectors_of is not None:
            got = await predict_block(service, name, uid, rid, n, vectors_of, deadline_ms, inputs)
        if got is None:
            got = await service.predict(name, inputs(), deadline_ms, floats)
        if type(got) is Block:
            return 200, block_body(name, rid, got, round((time.monotonic() - t0) * 1000, 3)), None
        items = [{"prediction": a.prediction, "version": a.version, "variant": a.variant, "rung": a.rung,
                  "request_id": a.request_id, "cached": a.cached} for a in got]
        return 200, dumps({"model": name, "predictions": items, "request_id": rid,
                            "latency_ms": round((time.monotonic() - t0) * 1000, 3)}), None

    def start(scope: dict, body: bytes) -> Any:
        """The hot path: a well-formed JSON body is answered without FastAPI's per-request machinery (an
        awaitable of its Reply); anything else (bad JSON, wrong shapes, another content type) returns None
        and goes through the documented endpoints below, whose pydantic validation produces the 4xx."""
        if scope.get("root_path"):
            return None
        ctype = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if not ctype.startswith(b"application/json"):
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        name, _, op = scope["path"][len("/v1/models/"):].rpartition(":")
        st = scope["state"]
        if op == "predict":
            one = fast_predict(obj)
            return None if one is None else guarded(st, answer_one(name, st, *one))
        if type(obj) is dict and "columns" in obj:
            split = fast_predict_rows(obj)
            return None if split is None else guarded(st, answer_rows(name, st, *split))
        many = fast_predict_batch(obj)
        return None if many is None else guarded(st, answer_batch(name, st, *many))

    async def guarded(st: dict, answer: Any) -> Reply:
        """`answer`'s reply, or the error reply the endpoints' exception handlers would give."""
        try:
            return await answer
        except ServingError as exc:
            return serving_error(st, exc)
        except Exception as exc:  # noqa: BLE001 - a 500 that says what failed, as the ASGI handler's
            return internal_error(st, exc)

    app.add_middleware(ServingAccess, metrics=metrics, start=start, max_body=cfg.max_body_bytes)
    app.fast_lane = ServingAccess(None, metrics, start, cfg.max_body_bytes)   # FastLaneProtocol's

    @app.post("/v1/models/{name}:predict", response_model=PredictResponse, responses=errs,
              summary="Predict one instance")
    async def predict(name: str, body: PredictRequest, request: Request) -> Response:
        """Fetch online features for `entities`, compute on-demand features from `fields`, assemble the
        model's vector, route (canary/experiment/holdback by `user_id`), predict through the ladder."""
        st = request.scope["state"]   # guarded: an exception past a handler would close the keep-alive connection
        return respond(await guarded(st, answer_one(name, st, dict(body.entities), dict(body.fields), body.user_id,
                                                    body.deadline_ms)))

    @app.post("/v1/models/{name}:predict_batch", response_model=PredictBatchResponse, responses=errs,
              summary="Predict several instances")
    async def predict_batch(name: str, body: PredictBatchRequest, request: Request) -> Response:
        """Each instance is routed and answered on its own (they share the dynamic batcher with everyone
        else); any failing instance fails the request, naming the instance."""
        st = request.scope["state"]
        if body.instances is None:
            return respond(await guarded(st, answer_rows(name, st, tuple(body.columns or ()), body.rows or [],
                                                         body.user_id, body.deadline_ms)))
        return respond(await guarded(st, answer_batch(
            name, st, [(dict(i.entities), dict(i.fields), i.user_id) for i in body.instances], body.user_id,
            body.deadline_ms)))

    def status(name: str) -> dict:
        h = fleet.get(name)
        snap = h.snapshot
        p = snap.policy
        policy = None if p is None else {
            "production": p.production, "shadow": p.shadow, "shadow_sample": p.shadow_sample, "canary": p.canary,
            "canary_percent": p.canary_percent, "experiment": dict(p.variants),
            "experiment_weights": dict(p.experiment_weights), "experiment_percent": p.experiment_percent,
            "holdback": p.holdback, "holdback_percent": p.holdback_percent, "fallback": p.fallback,
            "baseline": p.baseline}
        versions = [{"version": v, "roles": snap.roles(v), "breaker": lv.breaker.snapshot()["state"],
                     "runtime": lv.runtime.stats(), "queue_depth": lv.batcher.stats()["queue_depth"]}
                    for v, lv in sorted(snap.versions.items())]
        return {"name": name, "alias": h.spec.alias, "ready": h.ready, "policy": policy, "versions": versions,
                "refused": {str(k): v for k, v in h.refused.items()}, "notes": list(snap.notes), "error": h.error}

    @app.get("/v1/models", response_model=ModelsResponse, summary="Served models and their traffic policy")
    async def list_models() -> Response:
        return json_response({"models": [status(n) for n in sorted(fleet.handles)]})

    @app.get("/v1/models/{name}", response_model=ModelStatus, responses={404: {"model": ErrorResponse}},
             summary="One model: policy, loaded versions, breakers, refused versions")
    async def show_model(name: str) -> Response:
        if name.rpartition(":")[2] in ("predict", "predict_batch"):   # GET on a prediction route
            raise StarletteHTTPException(405, headers={"Allow": "POST"})
        return json_response(status(name))

    @app.get("/healthz", response_model=HealthResponse)
    async def healthz() -> Response:
        """200 while the process serves HTTP (liveness)."""
        return json_response({"status": "ok", "uptime_seconds": round(time.monotonic() - started, 3)})

    @app.get("/readyz", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
    async def readyz() -> Response:
        """200 when every configured model has a loaded version that can answer; 503 otherwise."""
        models = {n: {"ready": h.ready, "versions": sorted(h.snapshot.versions), "error": h.error,
                      "reason": h.not_ready_reason()} for n, h in fleet.handles.items()}
        ready = all(m["ready"] for m in models.values())
        return json_response({"ready": ready, "models": models}, 200 if ready else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def metrics_endpoint() -> Response:
        """Prometheus text format (see docs/serving.md for every series)."""
        return Response(metrics.render(), media_type=metrics.content_type)

    return app
