"""Dynamic batching: the edge (``DynamicBatcher``) that runs the pure rule of ``batch_policy.decide``.

Requests wait in a bounded queue; one worker thread takes batches off it and calls ``run_batch``. The
queue bound is the backpressure: a full queue refuses new work with ``QueueFull`` (HTTP 429) instead of
growing memory, and ``retry_after_s`` tells the client when the backlog should have cleared.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from loopstack.serving.batch_policy import REASONS, BatchConfig, decide
from loopstack.serving.errors import ServingError
from loopstack.threads import name_os_thread

class QueueFull(ServingError):
    """The request queue is full: retry after ``retry_after_s`` seconds (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its batch ran; it was not sent to the model."""


class BatcherClosed(ServingError):
    """The batcher is shut down (or shut down before this request ran); send the request elsewhere."""


@dataclass
class _Item:
    payload: Any
    future: Any              # a concurrent.futures.Future, or an asyncio.Future of `loop`
    enqueued_at: float
    deadline: float | None
    loop: asyncio.AbstractEventLoop | None = None
    rows: int = 1            # a block (``submit_block``) carries several payloads, run in one batch
    block: bool = False


class DynamicBatcher:
    """Edge: bounded queue + one worker thread that forms batches with `decide` and calls run_batch.

    ``clock`` must tick in seconds like ``time.monotonic`` (the worker sleeps on real time); deadlines
    passed to ``submit`` are in ``clock()`` time. Results are set in batch order; ``run_batch`` gets the
    payloads of one batch and must return one result per payload, in the same order.
    """

    def __init__(self, cfg: BatchConfig, run_batch: Callable[[list[Any]], list[Any]], name: str = "",
                 clock: Callable[[], float] = time.monotonic,
                 split_on: Callable[[BaseException], bool] | None = None):
        self.cfg, self.name, self._run_batch, self._clock = cfg, name, run_batch, clock
        self._split_on = split_on   # a batch failing with such an error is split in halves (see `_outcomes`)
        self._queue: deque[_Item] = deque()
        self._queued_rows = 0    # payloads waiting (a block counts its rows): what `decide` sees
        self._cv = threading.Condition(threading.Lock())
        self._closed = False
        self._drain = True
        self._fired = dict.fromkeys(REASONS, 0)
        self._sizes: dict[int, int] = {}
        self._batches = self._requests = self._rejected = self._expired = self._failed_batches = 0
        self._batch_s_ewma: float | None = None
        self._model_s = 0.0                       # seconds spent in run_batch, summed over batches
        self._in_flight = 0
        self._worker = threading.Thread(target=self._loop, name=f"batcher-{name or id(self)}", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------ submitting
    def submit(self, payload: Any, deadline: float | None = None) -> concurrent.futures.Future:
        """Queue one request; the future resolves to its result. Raises QueueFull / BatcherClosed."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._enqueue(_Item(payload, fut, 0.0, deadline))
        return fut

    async def submit_async(self, payload: Any, deadline: float | None = None, timeout: float | None = None) -> Any:
        """Queue one request and await its result (QueueFull is raised at once, not awaited); after
        ``timeout`` seconds: asyncio.TimeoutError. The worker settles the asyncio futures of a batch with
        one ``call_soon_threadsafe`` per batch, not one thread hop per request."""
        fut = self.submit_future(payload, deadline)
        if timeout is None:
            return await fut
        timer = fut.get_loop().call_later(timeout, time_out, fut)
        try:
            return await fut
        finally:
            timer.cancel()

    def submit_future(self, payload: Any, deadline: float | None = None) -> asyncio.Future:
        """Queue one request from the event loop; the asyncio future of its result (see submit_async)."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(_Item(payload, fut, 0.0, deadline, loop))
        return fut

    def submit_block(self, payloads: list[Any], deadline: float | None = None) -> asyncio.Future:
        """Queue several payloads of one request as a unit (they run in the same batch, never split): one
        queue entry, one future resolving to the list of their results in order. A block larger than
        ``max_batch_size`` runs as a batch of its own. Cuts the per-row bookkeeping of a batch request."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._enqueue(_Item(list(payloads), fut, 0.0, deadline, loop, len(payloads), True))
        return fut

    def _enqueue(self, item: _Item) -> None:
        now = item.enqueued_at = self._clock()
        with self._cv:
            if self._closed:
                raise BatcherClosed(f"batcher {self.name!r} is shut down and takes no new requests: "
                                    "retry on another replica")
            if item.deadline is not None and item.deadline <= now:
                self._expired += 1
                item.future.set_exception(DeadlineExceeded(
                    f"request to {self.name!r} arrived after its deadline; give it more time"))
                return
            depth = self._queued_rows
            if depth and depth + item.rows > self.cfg.max_queue:
                self._rejected += 1
                retry = self._retry_after_locked(depth)
                raise QueueFull(f"request queue of {self.name!r} is full ({depth} waiting): retry after "
                                f"{retry:.3f}s", retry)
            self._queue.append(item)
            self._requests += item.rows
            n = self._queued_rows = depth + item.rows
            # Wake the worker only when its decision can change: first request, full, or a preferred size.
            if depth == 0 or depth < self.cfg.max_batch_size <= n \
                    or any(depth < p <= n for p in self.cfg.preferred_batch_sizes):
                self._cv.notify()

    def _retry_after_locked(self, depth: int) -> float:
        """Seconds until a queue of ``depth`` should have drained: batches needed x recent batch time."""
        batch_s = self._batch_s_ewma if self._batch_s_ewma is not None else self.cfg.max_latency_ms / 1000.0
        batches = math.ceil(depth / self.cfg.max_batch_size)
        return max(0.001, batches * batch_s + self.cfg.max_latency_ms / 1000.0)

    # ------------------------------------------------------------------ worker
    def _take_locked(self) -> tuple[list[_Item], list[_Item], str] | None:
        """Block until a batch is due; return (live items, expired items, reason), or None to stop."""
        while True:
            if self._closed and (not self._drain or not self._queue):
                return None
            if not self._queue:
                self._cv.wait()
                continue
            now = self._clock()
            # Draining: nothing more will arrive, so do not wait for the batch to fill.
            wait = math.inf if self._closed else now - self._queue[0].enqueued_at
            d = decide(self.cfg, self._queued_rows, wait)
            if isinstance(d, tuple):
                n, reason = d
                live: list[_Item] = []
                expired: list[_Item] = []
                rows = 0
                while self._queue and rows < n:
                    item = self._queue[0]
                    if live and rows + item.rows > n:   # a block is not split: it waits for the next batch
                        break
                    self._queue.popleft()
                    self._queued_rows -= item.rows
                    if item.deadline is not None and item.deadline <= now:
                        expired.append(item)
                        self._expired += item.rows
                    else:
                        live.append(item)
                        rows += item.rows
                self._fired[reason] += 1
                self._in_flight = rows
                return live, expired, reason
            self._cv.wait(timeout=d)

    def _loop(self) -> None:
        name_os_thread()
        while True:
            with self._cv:
                taken = self._take_locked()
            if taken is None:
                return
            live, expired, _reason = taken
            if expired:
                _settle_all(expired, DeadlineExceeded(
                    f"request to {self.name!r} waited past its deadline before its batch ran; "
                    "give it more time or reduce load"))
            live = [item for item in live if _start(item)]
            if live:
                self._run(live)
            with self._cv:
                self._in_flight = 0

    def _run(self, items: list[_Item]) -> None:
        _settle(items, self._outcomes(items))

    def _outcomes(self, items: list[_Item]) -> list[tuple[bool, Any]]:
        """(True, result) or (False, error) per item. A batch of several requests that fails with an error
        `split_on` accepts (the model raised on some input) is run again in halves, down to single requests,
        so a request the model cannot score fails alone, not every request batched with it (about 2·log2(n)
        more model calls for one such request in a batch of n)."""
        try:
            return [(True, r) for r in self._call(items)]
        except BaseException as exc:  # the worker must survive any failure of the model
            if len(items) > 1 and self._split_on is not None and self._split_on(exc):
                half = len(items) // 2
                return self._outcomes(items[:half]) + self._outcomes(items[half:])
            return [(False, exc)] * len(items)

    def _call(self, items: list[_Item]) -> list:
        """One run_batch call for `items`: one result per item (a block gets the list of its rows' results)."""
        started = time.perf_counter()
        failed = True
        try:
            payloads: list = []
            for item in items:
                if item.block:
                    payloads.extend(item.payload)
                else:
                    payloads.append(item.payload)
            results = list(self._run_batch(payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"run_batch of {self.name!r} returned {len(results)} results for a batch of "
                                   f"{len(payloads)}: it must return exactly one result per payload, in order")
            if any(item.block for item in items):   # blocks get the list of their rows' results (a 1-row block too)
                per_item, at = [], 0
                for item in items:
                    per_item.append(results[at:at + item.rows] if item.block else results[at])
                    at += item.rows
                results = per_item
            failed = False
            return results
        finally:
            elapsed = time.perf_counter() - started
            with self._cv:   # counted before the callers hear back, so stats() read after an answer include it
                self._batches += 1
                size = sum(item.rows for item in items)
                self._sizes[size] = self._sizes.get(size, 0) + 1
                self._failed_batches += failed
                self._model_s += elapsed
                prev = self._batch_s_ewma
                self._batch_s_ewma = elapsed if prev is None else 0.8 * prev + 0.2 * elapsed

    # ------------------------------------------------------------------ inspection and shutdown
    def stats(self) -> dict:
        """Counters for metrics: why batches fired, batch-size histogram, queue depth (consistent snapshot).

        ``fired`` counts decisions; ``batches``/``batch_sizes`` count calls of run_batch (requests whose
        deadline passed are dropped from a batch before it runs).
        """
        with self._cv:
            return {"fired": dict(self._fired), "batch_sizes": dict(sorted(self._sizes.items())),
                    "queue_depth": self._queued_rows, "in_flight": self._in_flight, "batches": self._batches,
                    "requests": self._requests, "rejected": self._rejected, "expired": self._expired,
                    "failed_batches": self._failed_batches, "recent_batch_s": self._batch_s_ewma,
                    "model_seconds": self._model_s,
                    "closed": self._closed}

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, drain: bool = True, timeout: float = 10.0) -> None:
        """Stop taking requests. ``drain``: finish queued work first; else fail queued futures at once.

        Whatever is still queued after ``timeout`` seconds fails with BatcherClosed, so no caller hangs.
        """
        dropped: list[_Item] = []
        with self._cv:
            self._closed = True
            self._drain = self._drain and drain
            if not self._drain:
                dropped.extend(self._queue)
                self._queue.clear()
                self._queued_rows = 0
            self._cv.notify_all()
        self._fail(dropped, "shut down without draining")
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        with self._cv:
            leftover = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        self._fail(leftover, f"did not drain within {timeout}s")

    def _fail(self, items: list[_Item], why: str) -> None:
        if items:
            _settle_all(items, BatcherClosed(
                f"batcher {self.name!r} {why} before this request ran: retry it on another replica"))


def time_out(fut: asyncio.Future) -> None:
    """Fail `fut` with asyncio.TimeoutError unless it is settled already (a `call_later` callback)."""
    if not fut.done():
        fut.set_exception(asyncio.TimeoutError())


def _start(item: _Item) -> bool:
    """Mark a request as running; False if its caller gave up on it already (cancelled, timed out)."""
    if item.loop is None:
        return item.future.set_running_or_notify_cancel()
    return not item.future.done()   # read on the worker thread: a later cancel is caught on delivery


def _settle_all(items: list[_Item], exc: BaseException | None, results: list | None = None) -> None:
    """Resolve the futures of `items` with `results` (in order), else fail them all with `exc`."""
    _settle(items, [(True, results[i] if results is not None else None) if exc is None else (False, exc)
                    for i in range(len(items))])


def _settle(items: list[_Item], outcomes: list[tuple[bool, Any]]) -> None:
    """Resolve each item's future with its outcome, (True, result) or (False, error). The futures of an event
    loop are set on that loop by one callback per loop and batch."""
    by_loop: dict[Any, list] = {}
    for item, (ok, value) in zip(items, outcomes):
        if item.loop is not None:
            by_loop.setdefault(item.loop, []).append((item.future, ok, value))
            continue
        try:
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)
        except concurrent.futures.InvalidStateError:   # its caller cancelled it meanwhile
            pass
    for loop, triples in by_loop.items():
        try:
            loop.call_soon_threadsafe(_deliver, triples)
        except RuntimeError:   # the loop is closed: nobody waits for these any more
            pass


def _deliver(triples: list) -> None:
    """On the event loop: set every future that is still waiting."""
    for fut, ok, value in triples:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
