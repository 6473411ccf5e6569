"""The prediction log: every prediction's metadata (and a sample of full feature vectors) appended to
the event-log topic ``predictions`` by a background writer, so the response path only enqueues a dict.

Records are accepted into a bounded queue. When it is full the producer blocks (up to
`block_timeout_s`, counted in ``blocked``) rather than dropping; only if the writer cannot keep up
for that long is a record refused (counted in ``dropped``, logged). Accepted records are never lost:
the writer retries a failing append with backoff, and `close` flushes everything; what still cannot
be appended at close is written to a JSON-lines spill file next to the project data.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import zlib
from collections import deque
from pathlib import Path
from typing import Any, Callable

from loopstack.features.definitions import Field
from loopstack.log.base import TopicConfig
from loopstack.threads import name_os_thread

log = logging.getLogger("loopstack.serving")
TOPIC = "predictions"
SCHEMA = (Field("request_id", "string"), Field("ts", "timestamp"), Field("model", "string"),
          Field("version", "int64", required=False), Field("variant", "string", required=False),
          Field("rung", "string", required=False), Field("kind", "string"),
          Field("latency_ms", "float64", required=False), Field("user_id", "string", required=False))


def sampled(request_id: str, rate: float) -> bool:
    """Deterministic per request id: the same request is sampled on every replica (a CRC-32 bucket:
    uniform enough for a sampling rate, and cheap enough to run for every instance of a batch)."""
    if rate >= 1:
        return True
    if rate <= 0:
        return False
    return zlib.crc32(request_id.encode()) % 1_000_000 < rate * 1_000_000


class PredictionLog:
    """Bounded queue + one writer thread appending batches to `topic` of `event_log`."""

    def __init__(self, event_log: Any, topic: str = TOPIC, max_queue: int = 10_000, batch_size: int = 500,
                 flush_interval_s: float = 0.2, block_timeout_s: float = 2.0, spill_path: str | Path | None = None,
                 partitions: int = 1) -> None:
        self.log, self.topic = event_log, topic
        self.batch_size, self.flush_interval_s, self.block_timeout_s = batch_size, flush_interval_s, block_timeout_s
        self.spill_path = Path(spill_path) if spill_path else None
        self.max_queue = max_queue
        self._q: deque[dict] = deque()     # append/popleft are atomic: producers never wake the writer
        self.counts = {"accepted": 0, "written": 0, "blocked": 0, "dropped": 0, "append_errors": 0, "spilled": 0}
        self._lock = threading.Lock()
        self._room = threading.Condition(self._lock)   # producers waiting for room (the slow path)
        self._waiting = 0
        self._deferred = 0                             # `defer` calls whose records are not queued yet
        self._deferred_records = 0
        self._wake = threading.Event()                 # set when a full batch is waiting, or on close
        self._stop = threading.Event()
        event_log.create_topic(TopicConfig(topic, partitions, SCHEMA, key_field="model"))
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- producing ---------------------------------------------------------------------------
    def _offer(self, record: dict) -> bool:
        """O(1), no thread wake-up unless a whole batch is waiting: the response path's cost."""
        q = self._q
        if len(q) >= self.max_queue:
            return False
        q.append(record)
        with self._lock:
            self.counts["accepted"] += 1
        if len(q) == self.batch_size:
            self._wake.set()
        return True

    def put(self, record: dict) -> bool:
        """Enqueue one record; blocks briefly when the queue is full. False: refused (and counted)."""
        if self._offer(record):
            return True
        deadline = time.monotonic() + self.block_timeout_s
        with self._room:
            self.counts["blocked"] += 1
            self._waiting += 1
            try:
                while len(self._q) >= self.max_queue:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.counts["dropped"] += 1
                        log.error("prediction log queue full for %.1fs: record %s refused", self.block_timeout_s,
                                  record.get("request_id"))
                        return False
                    self._room.wait(left)
                self._q.append(record)
                self.counts["accepted"] += 1
            finally:
                self._waiting -= 1
        return True

    async def put_async(self, record: dict) -> bool:
        """`put` for the event loop: the fast path inline, the blocking path on a thread."""
        if self._offer(record):
            return True
        import asyncio
        return await asyncio.to_thread(self.put, record)

    async def put_many_async(self, records: list[dict]) -> int:
        """Enqueue the records of one call: one lock and at most one wake-up while there is room; the rest
        (a full queue) take the blocking path of `put_async` one by one. Returns how many were accepted."""
        q = self._q
        room = self.max_queue - len(q)
        head, rest = (records, []) if room >= len(records) else (records[:max(room, 0)], records[max(room, 0):])
        if head:
            before = len(q)
            q.extend(head)
            with self._lock:
                self.counts["accepted"] += len(head)
            if before < self.batch_size <= len(q):
                self._wake.set()
        accepted = len(head)
        for rec in rest:
            accepted += await self.put_async(rec)
        return accepted

    def has_room(self, n: int) -> bool:
        """True when `n` more records fit in the queue now (records `defer`red but not queued yet count)."""
        return len(self._q) + self._deferred_records + n <= self.max_queue

    def defer(self, build: Callable[[], list[dict]], n: int) -> None:
        """Queue the records `build()` returns on the event loop's next turn, so the caller's answer is written
        before they are made (the response path pays for neither). Call after `has_room`; the records are
        always taken (the bound was checked then), and `flush` waits for them. `n`: at most how many."""
        with self._lock:
            self._deferred += 1
            self._deferred_records += n
        asyncio.get_running_loop().call_soon(self._queue_deferred, build, n)

    def _queue_deferred(self, build: Callable[[], list[dict]], n: int) -> None:
        try:
            recs = build()
        except Exception:  # noqa: BLE001 - a bug in building records must not stop the loop's callbacks
            log.exception("building prediction-log records failed")
            recs = []
        q = self._q
        before = len(q)
        q.extend(recs)
        with self._lock:
            self.counts["accepted"] += len(recs)
            self._deferred -= 1
            self._deferred_records -= n
        if before < self.batch_size <= len(q):
            self._wake.set()

    def depth(self) -> int:
        return len(self._q)

    def stats(self) -> dict:
        with self._lock:
            return {**self.counts, "queue_depth": len(self._q)}

    # -- writing -----------------------------------------------------------------------------
    def _take(self) -> list[dict]:
        """Up to batch_size records, waiting at most flush_interval_s for a batch to fill."""
        if len(self._q) < self.batch_size and not self._stop.is_set():
            self._wake.wait(self.flush_interval_s)
        self._wake.clear()
        batch: list[dict] = []
        q = self._q
        while q and len(batch) < self.batch_size:
            batch.append(q.popleft())
        if batch and self._waiting:
            with self._room:
                self._room.notify_all()
        return batch

    def _append(self, batch: list[dict], retries: int | None = None) -> bool:
        backoff, attempt = 0.05, 0
        while True:
            try:
                self.log.append(self.topic, batch)
                with self._lock:
                    self.counts["written"] += len(batch)
                return True
            except Exception as exc:  # noqa: BLE001 - keep the records, retry
                attempt += 1
                with self._lock:
                    self.counts["append_errors"] += 1
                log.warning("appending %d prediction records failed (%s: %s); retrying", len(batch),
                            type(exc).__name__, exc)
                if (retries is not None and attempt > retries) or (retries is None and self._stop.is_set()):
                    return False
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    def _run(self) -> None:
        name_os_thread()
        while not self._stop.is_set():
            batch = self._take()
            if batch and not self._append(batch):
                self._spill(batch)
        self._drain()

    def _drain(self) -> None:
        while True:
            batch = []
            while self._q and len(batch) < self.batch_size:
                batch.append(self._q.popleft())
            if not batch:
                return
            if self._waiting:
                with self._room:
                    self._room.notify_all()
            if not self._append(batch, retries=3):
                self._spill(batch)

    def _spill(self, batch: list[dict]) -> None:
        if self.spill_path is None:
            log.error("%d prediction records could not be appended and no spill file is set", len(batch))
            return
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spill_path.open("a") as fh:
            for rec in batch:
                fh.write(json.dumps(rec, default=str) + "\n")
        with self._lock:
            self.counts["spilled"] += len(batch)
        log.error("%d prediction records spilled to %s (the event log refused them)", len(batch), self.spill_path)

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until everything queued so far is written (or `timeout`)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                pending = self.counts["accepted"] - self.counts["written"] - self.counts["spilled"] + self._deferred
            if pending <= 0:
                return
            time.sleep(0.01)

    def close(self, timeout: float = 30.0) -> None:
        """Write every accepted record, then stop the writer."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)
