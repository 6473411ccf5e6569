"""The engine thread and the SSE response of the LLM server.

`EngineWorker` owns the engine: ONE background thread loops ``engine.step()`` while there is work and
otherwise sleeps on a thread-safe command queue (add, abort, call). Requests never touch the engine;
they get their outputs through a `deliver` callback (the server wraps ``loop.call_soon_threadsafe``),
so the engine thread never waits for the event loop.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from typing import Any, AsyncIterator, Callable

import orjson
from starlette.responses import Response

from loopstack.threads import name_os_thread

log = logging.getLogger("loopstack.llm.server")
ACCEPTED = object()   # first item a request receives when the engine took it


class EngineFailed(RuntimeError):
    """engine.step() raised: every request in flight is failed with this error."""


class EngineWorker:
    """Runs the engine in one thread; everything else talks to it through `submit`, `abort` and `call`."""

    def __init__(self, engine: Any, idle_poll_s: float = 0.5) -> None:
        self.engine = engine
        self.idle_poll_s = idle_poll_s
        self._cmds: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, Callable[[Any], None]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="llm-engine", daemon=True)
        self.steps = 0
        self.step_seconds = 0.0
        self.failures = 0

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Abort what is in flight and end the thread."""
        self._stop.set()
        self._cmds.put(("wake",))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, request_id: str, prompt_ids: list[int], params: Any, deliver: Callable[[Any], None],
               priority: int = 0) -> None:
        """Queue a request; `deliver` gets ACCEPTED or the add_request exception, then each RequestOutput."""
        self._cmds.put(("add", request_id, prompt_ids, params, deliver, priority))

    def abort(self, request_id: str) -> None:
        """Abort a request (client gone): its blocks are freed before the next step."""
        self._cmds.put(("abort", request_id))

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the engine thread between steps (engine state is only read there)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._stop.is_set():
            fut.set_exception(EngineFailed("the engine thread has stopped"))
        else:
            self._cmds.put(("call", fn, fut))
        return fut

    def _run(self) -> None:
        name_os_thread()
        eng = self.engine
        while not self._stop.is_set():
            try:
                busy = eng.has_unfinished()
                if not busy:   # idle: sleep until a command arrives
                    try:
                        self._do(self._cmds.get(timeout=self.idle_poll_s))
                    except queue.Empty:
                        continue
                while True:   # drain commands without blocking
                    try:
                        self._do(self._cmds.get_nowait())
                    except queue.Empty:
                        break
                if self._stop.is_set() or not eng.has_unfinished():
                    continue
                t0 = time.perf_counter()
                outs = eng.step()
                self.step_seconds += time.perf_counter() - t0
                self.steps += 1
                for out in outs:
                    sink = self._sinks.get(out.request_id)
                    if sink is not None:
                        if out.finished:
                            del self._sinks[out.request_id]
                        _safe(sink, out)
            except Exception as exc:   # a broken step fails everyone in flight, the server keeps serving
                self.failures += 1
                log.exception("engine step failed; failing %d requests in flight", len(self._sinks))
                self._fail_all(EngineFailed(f"the engine failed: {type(exc).__name__}: {exc}"))
        gone = EngineFailed("the server is shutting down")
        self._fail_all(gone)
        while True:   # commands that arrived too late: answer them so nobody waits forever
            try:
                cmd = self._cmds.get_nowait()
            except queue.Empty:
                break
            if cmd[0] == "add":
                _safe(cmd[4], gone)
            elif cmd[0] == "call":
                cmd[2].set_exception(gone)

    def _fail_all(self, err: Exception) -> None:
        for rid, sink in list(self._sinks.items()):
            try:
                self.engine.abort(rid)
            except Exception:
                pass
            _safe(sink, err)
        self._sinks.clear()

    def _do(self, cmd: tuple) -> None:
        kind = cmd[0]
        if kind == "add":
            _, rid, ids, params, deliver, priority = cmd
            try:
                self.engine.add_request(rid, ids, params, priority)
            except Exception as exc:   # ValueError (400), QueueFullError (429): the server decides
                _safe(deliver, exc)
                return
            self._sinks[rid] = deliver
            _safe(deliver, ACCEPTED)
        elif kind == "abort":
            if self._sinks.pop(cmd[1], None) is not None:
                try:
                    self.engine.abort(cmd[1])
                except Exception:   # an abort that fails must not fail the other requests
                    log.exception("engine.abort(%s) failed", cmd[1])
        elif kind == "call":
            _, fn, fut = cmd
            try:
                fut.set_result(fn())
            except Exception as exc:
                fut.set_exception(exc)


def _safe(deliver: Callable[[Any], None], item: Any) -> None:
    try:
        deliver(item)
    except RuntimeError:   # the request's event loop is closed: nobody is listening any more
        pass


class OutputQueue:
    """A request's items on the event loop: ACCEPTED or an error, then its RequestOutputs.

    Outputs are cumulative, so a new one replaces an unread one: a client that stops reading holds one
    output, not one per step (each a copy of all the text and token ids so far)."""

    def __init__(self) -> None:
        self._items: collections.deque = collections.deque()
        self._ready = asyncio.Event()

    def qsize(self) -> int:
        """Items not read yet (as asyncio.Queue.qsize)."""
        return len(self._items)

    def put(self, item: Any) -> None:
        """Add an item (on the event loop); a running output replaces the unread one before it."""
        items = self._items
        if items and hasattr(item, "outputs") and hasattr(items[-1], "outputs") and not items[-1].finished:
            items[-1] = item
        else:
            items.append(item)
        self._ready.set()

    async def get(self) -> Any:
        """The next item, waiting for one."""
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class SSEResponse(Response):
    """A ``text/event-stream`` ASGI response that watches for the client leaving.

    `events` yields the ``data:`` payloads; when the client disconnects the generator is closed at once and
    `on_close` runs (it aborts the engine request), instead of waiting for the next write to fail."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        self.events, self.on_close, self.extra_headers = events, on_close, headers or {}
        self.status_code, self.background = 200, None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        headers = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache"),
                   (b"x-accel-buffering", b"no"), *((k.encode(), v.encode()) for k, v in self.extra_headers.items())]
        gone = asyncio.Event()

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    gone.set()
                    return

        watcher = asyncio.ensure_future(watch())
        it = self.events.__aiter__()
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            while True:
                nxt = asyncio.ensure_future(it.__anext__())
                done, _ = await asyncio.wait({nxt, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if nxt not in done:   # client went away mid-stream: close the generator (its finally aborts)
                    nxt.cancel()
                    with contextlib.suppress(BaseException):
                        await nxt
                    return
                try:
                    data = nxt.result()
                except StopAsyncIteration:
                    break
                except Exception as exc:   # headers are sent: report the failure in-band, as OpenAI does
                    log.warning("stream failed: %s", exc)
                    err = {"error": {"message": str(exc), "type": "server_error", "param": None,
                                     "code": "engine_error"}}
                    data = orjson.dumps(err).decode()
                    await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(),
                                "more_body": True})
                    break
                await send({"type": "http.response.body", "body": f"data: {data}\n\n".encode(), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
        except OSError:   # the socket broke while writing
            gone.set()
        finally:
            watcher.cancel()
            await it.aclose()  # type: ignore[attr-defined]
            if self.on_close is not None:   # also when the generator never started (the socket broke early)
                self.on_close()
