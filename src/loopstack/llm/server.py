"""OpenAI-compatible HTTP server for the LLM engine (FastAPI on uvicorn).

Endpoints: ``POST /v1/completions``, ``POST /v1/chat/completions`` (both stream SSE with
``stream: true``), ``GET /v1/models``, ``GET /v1/models/{id}``, ``GET /metrics`` (Prometheus),
``GET /healthz``. The engine runs in one background thread (`EngineWorker`); a client that leaves
mid-request aborts its engine request at once, which frees its KV blocks. Client errors are 400 and a
full waiting queue is 429, both with the OpenAI error body. Every response carries ``x-request-id``.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any, AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from loopstack.asgi import MAX_BODY_BYTES, AccessMiddleware, BodyTooLarge, read_body, too_large_detail
from loopstack.llm.engine.params import QueueFullError, SamplingParams
from loopstack.llm.openai_schema import (ApiError, ChatCompletionRequest, CompletionRequest, Prepared, chat_body,
                                         chat_chunk, check_model, completion_body, format_logprobs, parse,
                                         prepare_chat, prepare_completion, usage)
from loopstack.llm.server_metrics import LLMServerMetrics
from loopstack.llm.streaming import ACCEPTED, EngineFailed, EngineWorker, OutputQueue, SSEResponse

log = logging.getLogger("loopstack.llm.server")


def _json(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _engine_error(exc: BaseException) -> ApiError:
    """What add_request raised, as the HTTP answer: a full queue is 429, a bad request 400."""
    if isinstance(exc, QueueFullError):
        return ApiError(429, f"the server is at capacity ({exc}); retry after a short wait",
                        type="rate_limit_error", code="queue_full")
    if isinstance(exc, (ValueError, TypeError)):
        return ApiError(400, str(exc))
    return ApiError(500, f"the engine failed: {exc}", type="server_error", code="engine_error")


def _context_len(engine: Any) -> int:
    """The engine's context length (LLMEngine.max_model_len, else its config's or the model's)."""
    cfg = getattr(engine, "config", None)
    mcfg = getattr(getattr(engine, "model", None), "config", None)
    n = (getattr(engine, "max_model_len", None) or getattr(cfg, "max_model_len", None)
         or getattr(mcfg, "max_position", None))
    if not n:
        raise ValueError("cannot tell the engine's context length: pass max_context= to create_app")
    return int(n)


def _kv_tokens(engine: Any, ctx: int) -> int:
    """Most tokens one request can hold in the KV cache (the default chat max_tokens must fit in it)."""
    bm = getattr(engine, "block_manager", None)
    if bm is None:
        return ctx
    return min(ctx, int(bm.num_blocks) * int(bm.block_size))


class _RequestIdMiddleware(AccessMiddleware):
    """x-request-id in and out (pure ASGI: it must not buffer SSE or hide disconnects), HTTP counts
    and the access log (with the request's token counts and finish reason)."""

    ROUTES = ("/v1/completions", "/v1/chat/completions", "/v1/models", "/metrics", "/healthz")

    def __init__(self, app: Any, metrics: LLMServerMetrics) -> None:
        super().__init__(app)
        self.metrics = metrics

    def record(self, scope: dict, status: int, seconds: float) -> None:
        route = scope["path"] if scope["path"] in self.ROUTES else "other"
        self.metrics.child(self.metrics.http, route, str(status)).inc()

    def access_extra(self, scope: dict) -> dict:
        return scope["state"].get("llm", {})

    async def handle(self, scope: dict, receive: Any, send: Any) -> None:
        """Serve the request; an unexpected failure before the answer started is a 500 in the OpenAI shape."""
        send.status = 0   # set again when the response starts
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            if send.status:   # part of the answer is out: all we can do is drop the connection
                raise
            log.exception("%s %s failed", scope.get("method"), scope.get("path"))
            body = ApiError(500, f"internal server error: {type(exc).__name__}: {exc}", type="server_error",
                            code="internal_error").body()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": orjson.dumps(body)})
        if not send.status:   # nothing was sent (as TaggedSend counts it)
            send.status = 500


class _Stream:
    """One engine request seen from the event loop: its outputs, timing, and abort-on-exit."""

    def __init__(self, worker: EngineWorker, metrics: LLMServerMetrics, endpoint: str, rid: str, t0: float) -> None:
        self.worker, self.metrics, self.endpoint, self.rid, self.t0 = worker, metrics, endpoint, rid, t0
        self.q = OutputQueue()
        self.finished = False
        self.t_first: float | None = None
        self.n_prompt = 0
        self.log: dict[str, Any] = {}   # fields for the access-log line

    async def start(self, prep: Prepared, params: Any) -> None:
        loop = asyncio.get_running_loop()
        put = self.q.put
        self.n_prompt = len(prep.prompt_ids)
        self.worker.submit(self.rid, prep.prompt_ids, params, lambda item: loop.call_soon_threadsafe(put, item),
                           prep.priority)
        try:
            first = await self.q.get()
        except asyncio.CancelledError:
            self.worker.abort(self.rid)
            raise
        if first is not ACCEPTED:
            raise _engine_error(first)

    def close(self) -> None:
        """Abort the engine request unless it finished (idempotent): the client is gone or stopped reading."""
        if not self.finished:
            self.finished = True
            self.worker.abort(self.rid)
            self.metrics.aborted.inc()
            self.log["finish_reason"] = "client_disconnected"

    async def outputs(self) -> AsyncIterator[Any]:
        """Each RequestOutput (cumulative) until the finished one; aborts the request if left early."""
        try:
            while True:
                item = await self.q.get()
                if isinstance(item, BaseException):
                    self.finished = True   # the engine thread already dropped it
                    raise item
                if self.t_first is None and item.outputs and item.outputs[0].token_ids:
                    self.t_first = time.perf_counter()
                    self.metrics.ttft.observe(self.t_first - self.t0)
                if item.finished:
                    self.finished = True
                    self._observe(item)
                    yield item
                    return
                yield item
        finally:
            self.close()

    def _observe(self, out: Any) -> None:
        now = time.perf_counter()
        n = len(out.outputs[0].token_ids)
        m = self.metrics
        m.e2e.observe(now - self.t0)
        if self.t_first is not None and n > 1:
            m.tpot.observe((now - self.t_first) / (n - 1))
        m.prompt_tokens.inc(self.n_prompt)
        m.generation_tokens.inc(n)
        m.child(m.finished, out.outputs[0].finish_reason or "unknown").inc()
        self.log.update(completion_tokens=n, finish_reason=out.outputs[0].finish_reason,
                        ttft_ms=round((self.t_first - self.t0) * 1000, 3) if self.t_first else None)


def create_app(engine: Any, tokenizer: Any, model_name: str = "smollm2-135m", *, max_context: int | None = None,
               worker: EngineWorker | None = None, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The OpenAI-compatible app over `engine` (an LLMEngine); the engine thread starts with the app.

    A request body over `max_body_bytes` is refused (413) without being read further."""
    worker = worker or EngineWorker(engine)
    metrics = LLMServerMetrics()
    ctx = max_context or _context_len(engine)
    fits = _kv_tokens(engine, ctx)
    vocab = int(getattr(tokenizer, "vocab_size", 0) or getattr(getattr(engine.model, "config", None),
                                                                  "vocab_size", 1 << 31))
    created = int(time.time())
    started = time.monotonic()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if not worker.alive:
            worker.start()
        yield
        await asyncio.to_thread(worker.stop)

    app = FastAPI(title="loopstack LLM server", version="1", lifespan=lifespan,
                  description="OpenAI-compatible completions and chat completions from the loopstack LLM engine.")
    app.state.worker, app.state.metrics, app.state.engine = worker, metrics, engine
    app.state.max_body_bytes = max_body_bytes

    app.add_middleware(_RequestIdMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> Response:
        extra = {429: {"Retry-After": "1"}, 413: {"Connection": "close"}}.get(exc.status)
        return _json(exc.body(), exc.status, extra)

    @app.exception_handler(EngineFailed)
    async def _failed(_request: Request, exc: EngineFailed) -> Response:
        return _json(ApiError(500, str(exc), type="server_error", code="engine_error").body(), 500)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _json(ApiError(exc.status_code, str(exc.detail), code=code).body(), exc.status_code, exc.headers)

    async def read(request: Request, cls: type) -> Any:
        try:
            raw = await read_body(request.receive, max_body_bytes)
        except BodyTooLarge:
            raise ApiError(413, too_large_detail(max_body_bytes, "prompt tokens"), code="payload_too_large") \
                from None
        if raw is None:
            raise ApiError(499, "the client closed the connection before sending the whole body")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, f"the body is not valid JSON ({exc}); send a JSON object", code="invalid_json") \
                from None
        req = parse(cls, body)
        check_model(req.model, model_name)
        return req

    def params(prep: Prepared) -> Any:
        try:
            sp = SamplingParams(**prep.sampling)
            sp.validate()
        except (ValueError, TypeError) as exc:
            raise ApiError(400, str(exc)) from None
        return sp

    async def run(request: Request, endpoint: str, prep: Prepared, prefix: str) -> _Stream:
        st = request.scope["state"]
        sp = params(prep)
        s = _Stream(worker, metrics, endpoint, f"{prefix}-{random.getrandbits(96):024x}",
                    st.get("t0", time.perf_counter()))
        s.log = st["llm"] = {"id": s.rid, "prompt_tokens": len(prep.prompt_ids),
                             "max_tokens": prep.sampling["max_tokens"], "stream": prep.stream}
        try:
            await s.start(prep, sp)
        except ApiError as exc:
            metrics.child(metrics.rejected, endpoint, str(exc.status)).inc()
            raise
        return s

    async def collect(request: Request, s: _Stream) -> Any:
        """The final RequestOutput; aborts the request if the client disconnects first."""
        async def last() -> Any:
            final = None
            async for item in s.outputs():
                final = item
            return final

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        task, watch = asyncio.ensure_future(last()), asyncio.ensure_future(gone())
        try:
            done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
        if task not in done:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            s.close()
            return None
        return task.result()

    async def answer(request: Request, prep: Any, endpoint: str, prefix: str, events: Any, body: Any,
                     chat: bool) -> Response:
        """Run one prepared request: SSE events when it streams, else the whole body (499 if the client left)."""
        s = await run(request, endpoint, prep, prefix)
        if prep.stream:
            return SSEResponse(events(s, prep, model_name, tokenizer), s.close)
        out = await collect(request, s)
        if out is None:
            return Response(status_code=499)
        c = out.outputs[0]
        lp = None if prep.logprobs is None else format_logprobs(tokenizer, c.logprobs, c.token_ids, prep.logprobs,
                                                                   chat, 0)
        return _json(body(s.rid, int(time.time()), model_name, c.text, c.finish_reason, lp,
                          usage(len(out.prompt_token_ids), len(c.token_ids))))

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """OpenAI text completion (one prompt, n=1); SSE chunks with stream=true."""
        req = await read(request, CompletionRequest)
        prep = prepare_completion(req, tokenizer, ctx, vocab)
        return await answer(request, prep, "completions", "cmpl", _completion_events, completion_body, False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI chat completion: messages rendered with the model's ChatML template; SSE with stream=true."""
        req = await read(request, ChatCompletionRequest)
        prep = prepare_chat(req, tokenizer, ctx, vocab, fits)
        return await answer(request, prep, "chat", "chatcmpl", _chat_events, chat_body, True)

    def model_card() -> dict:
        return {"id": model_name, "object": "model", "created": created, "owned_by": "loopstack",
                "max_model_len": ctx}

    @app.get("/v1/models")
    async def list_models() -> Response:
        return _json({"object": "list", "data": [model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> Response:
        if model_id != model_name:
            raise ApiError(404, f"The model '{model_id}' does not exist; this server serves '{model_name}'",
                           param="model", code="model_not_found")
        return _json(model_card())

    @app.get("/healthz")
    async def healthz() -> Response:
        """200 while the engine thread runs; 503 once it has died."""
        ok = worker.alive
        return _json({"status": "ok" if ok else "engine thread stopped", "model": model_name,
                      "uptime_seconds": round(time.monotonic() - started, 3)}, 200 if ok else 503)

    @app.get("/metrics")
    async def metrics_endpoint() -> Response:
        """Prometheus text: server-measured TTFT/TPOT/latency plus the engine's own metrics()."""
        state = await asyncio.wrap_future(worker.call(engine.metrics)) if worker.alive else {}
        metrics.engine_state = {**state, "worker_steps": worker.steps, "worker_step_seconds": worker.step_seconds,
                                "worker_failures": worker.failures}
        return Response(metrics.render(), media_type=metrics.content_type)

    return app


def _deltas(s: _Stream, prep: Prepared, tokenizer: Any, chat: bool) -> AsyncIterator[tuple[str, list, Any, Any]]:
    """(new text, new token ids, new logprobs, final RequestOutput or None) per engine output."""
    async def gen() -> AsyncIterator[tuple[str, list, Any, Any]]:
        text_len = ntok = 0
        async for out in s.outputs():
            c = out.outputs[0]
            new_ids = c.token_ids[ntok:]
            new_text = c.text[text_len:]
            lp = None
            if prep.logprobs is not None and c.logprobs is not None:
                lp = format_logprobs(tokenizer, c.logprobs[ntok:], new_ids, prep.logprobs, chat, text_len)
            text_len, ntok = len(c.text), len(c.token_ids)
            if new_text or lp or out.finished:
                yield new_text, new_ids, lp, out if out.finished else None
    return gen()


async def _completion_events(s: _Stream, prep: Prepared, model: str, tokenizer: Any) -> AsyncIterator[str]:
    created = int(time.time())
    async for text, _ids, lp, final in _deltas(s, prep, tokenizer, False):
        finish = final.outputs[0].finish_reason if final is not None else None
        yield orjson.dumps(completion_body(s.rid, created, model, text, finish, lp, None, chunk=True)).decode()
        if final is not None and prep.include_usage:
            body = completion_body(s.rid, created, model, "", None, None,
                                   usage(len(final.prompt_token_ids), len(final.outputs[0].token_ids)), chunk=True)
            body["choices"] = []
            yield orjson.dumps(body).decode()


async def _chat_events(s: _Stream, prep: Prepared, model: str, tokenizer: Any) -> AsyncIterator[str]:
    created = int(time.time())
    yield orjson.dumps(chat_chunk(s.rid, created, model, {"role": "assistant", "content": ""})).decode()
    async for text, _ids, lp, final in _deltas(s, prep, tokenizer, True):
        if text or lp:
            yield orjson.dumps(chat_chunk(s.rid, created, model, {"content": text}, None, lp)).decode()
        if final is not None:
            yield orjson.dumps(chat_chunk(s.rid, created, model, {}, final.outputs[0].finish_reason)).decode()
            if prep.include_usage:
                use = usage(len(final.prompt_token_ids), len(final.outputs[0].token_ids))
                yield orjson.dumps(chat_chunk(s.rid, created, model, None, use=use)).decode()
