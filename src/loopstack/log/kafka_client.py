"""librdkafka plumbing for the Kafka event log: the URL, a producer that waits for acks, a reader that
fetches by explicit assignment (never a group join), and record decoding. Used only by `kafka.py`."""
from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

from loopstack.errors import LogError

from .base import Record

TS_HEADER = "ls.ts"  # append time in µs (Kafka's own timestamp is only ms)


def parse_kafka_url(url: str) -> tuple[str, dict[str, str]]:
    """``kafka://host:port[,host:port][?librdkafka.option=value&...]`` (or bare ``host:port``) →
    (bootstrap servers, extra client config such as security.protocol / sasl.*)."""
    if "://" not in url:
        url = "kafka://" + url
    parts = urlsplit(url)
    if parts.scheme != "kafka" or not parts.netloc:
        raise LogError(f"the kafka event log needs url=kafka://host:port[,host:port] (bootstrap servers), "
                       f"got {url!r}; set log.url, e.g. kafka://127.0.0.1:9092")
    return parts.netloc, dict(parse_qsl(parts.query))


def client_config(servers: str, extra: dict[str, str]) -> dict[str, Any]:
    """Settings every client shares. retry.backoff.ms=10: a new idempotent producer gets its producer id
    at once instead of after librdkafka's default 100 ms-and-up backoff."""
    return {"bootstrap.servers": servers, "socket.nagle.disable": True, "client.id": "loopstack",
            "log.connection.close": False, "retry.backoff.ms": 10, **extra}


class Writer:
    """An idempotent producer (acks=all) whose `send` returns only when the broker acknowledged."""

    def __init__(self, servers: str, extra: dict[str, str], timeout: float) -> None:
        from confluent_kafka import Producer
        self.servers, self.timeout = servers, timeout
        self.producer = Producer({**client_config(servers, extra), "enable.idempotence": True, "acks": "all",
                                  "linger.ms": 2, "allow.auto.create.topics": False,
                                  "message.timeout.ms": int(timeout * 1000)})

    def enqueue(self, messages: list[tuple[str, int, bytes | None, bytes, int, list]]) -> dict[str, Any]:
        """Queue ``(topic, partition, key, value, timestamp_ms, headers)`` messages in this order; `wait`
        on the returned handle. Per partition, the broker stores them in queue order (idempotence)."""
        h: dict[str, Any] = {"offsets": [(0, 0)] * len(messages), "done": 0, "errors": [], "n": len(messages)}

        def delivered(i: int) -> Callable[[Any, Any], None]:
            def cb(err: Any, msg: Any) -> None:
                if err is not None:
                    h["errors"].append(err)
                else:
                    h["offsets"][i] = (msg.partition(), msg.offset())
                h["done"] += 1
            return cb

        for i, (kt, p, key, value, ts_ms, headers) in enumerate(messages):
            while True:
                try:
                    self.producer.produce(kt, value=value, key=key, partition=p, timestamp=ts_ms, headers=headers,
                                          on_delivery=delivered(i))
                    break
                except BufferError:  # local queue full: let deliveries drain
                    self.producer.poll(0.05)
        return h

    def wait(self, h: dict[str, Any]) -> list[tuple[int, int]]:
        """Flush until every message of `h` is acknowledged; (partition, offset) of each, or LogError."""
        deadline = time.monotonic() + self.timeout + 5
        self.producer.flush(self.timeout)
        while h["done"] < h["n"]:  # another thread's flush may be running our callbacks
            if time.monotonic() > deadline:
                raise LogError(f"the Kafka broker at {self.servers} did not acknowledge within {self.timeout}s")
            self.producer.poll(0.01)
        if h["errors"]:
            raise LogError(f"{len(h['errors'])} of {h['n']} records were not acknowledged by the Kafka broker at "
                           f"{self.servers} (first error: {h['errors'][0]}); they may or may not be stored, "
                           "retry the append")
        return h["offsets"]

    def close(self) -> None:
        self.producer.flush(self.timeout)


class Reader:
    """One consumer that reads by assigning partitions at explicit offsets (no group join, no commits);
    thread-safe (one read at a time) and unassigned between reads, so it never fetches in the background."""

    def __init__(self, servers: str, extra: dict[str, str], timeout: float, group: str) -> None:
        from confluent_kafka import Consumer
        self.servers, self.timeout = servers, timeout
        self.c = Consumer({**client_config(servers, extra), "group.id": group, "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "enable.partition.eof": True,
                           "allow.auto.create.topics": False, "fetch.wait.max.ms": 5,
                           "fetch.error.backoff.ms": 10, "fetch.queue.backoff.ms": 1,
                           "queued.max.messages.kbytes": 16384})
        self._known: set[str] = set()
        self._lock = threading.RLock()

    def _assign(self, tps: list) -> None:
        """Assign; first ask for the topic's metadata, else librdkafka waits ~1 s for its periodic refresh
        before it knows the partition leaders of a topic it has not seen."""
        for kt in {tp.topic for tp in tps} - self._known:
            self.c.list_topics(kt, timeout=self.timeout)
            self._known.add(kt)
        self.c.assign(tps)

    def _error(self, what: str, err: Any) -> LogError:
        return LogError(f"{what} from the Kafka broker at {self.servers} failed: {err}")

    def fetch(self, kt: str, p: int, offset: int, max_records: int) -> list:
        """Raw messages of one partition from `offset` (at most `max_records`); [] at or past the end."""
        from confluent_kafka import KafkaError, TopicPartition
        out: list = []
        with self._lock:
            tp = TopicPartition(kt, p, max(0, offset))
            self._assign([tp])
            deadline = time.monotonic() + self.timeout
            try:
                while len(out) < max_records:
                    m = self.c.poll(0.1)
                    if m is None:
                        hi = self.c.get_watermark_offsets(tp, cached=True)[1]
                        if 0 <= hi <= offset:  # past the end: the broker may send no EOF
                            break
                        if time.monotonic() > deadline:
                            raise self._error(f"reading {kt!r}/{p}", f"timed out after {self.timeout}s")
                        continue
                    want = max_records - len(out)
                    batch = [m] + (self.c.consume(min(want - 1, 10_000), timeout=0) if want > 1 else [])
                    for m in batch:
                        if m.error() is not None:
                            if m.error().code() == KafkaError._PARTITION_EOF:
                                return out
                            raise self._error(f"reading {kt!r}/{p}", m.error())
                        if len(out) < max_records:
                            out.append(m)
            finally:
                self.c.unassign()
        return out

    def high_watermarks(self, kt: str, guesses: dict[int, int]) -> dict[int, int]:
        """The true end offset per partition: fetch from each guess (ListOffsets latest, which tansu answers
        with an offset inside the last batch) to the end-of-partition event."""
        from confluent_kafka import KafkaError, TopicPartition
        ends: dict[int, int] = {}
        with self._lock:
            tps = [TopicPartition(kt, p, max(0, o)) for p, o in guesses.items()]
            self._assign(tps)
            deadline = time.monotonic() + self.timeout
            try:
                while len(ends) < len(tps):
                    m = self.c.poll(0.1)
                    if m is not None and m.error() is not None:
                        if m.error().code() != KafkaError._PARTITION_EOF:
                            raise self._error(f"reading the end of {kt!r}", m.error())
                        ends[m.partition()] = m.offset()
                    elif m is None:
                        for tp in tps:  # a guess past the end gets no EOF: take the fetch's high watermark
                            hi = self.c.get_watermark_offsets(tp, cached=True)[1]
                            if tp.partition not in ends and 0 <= hi <= tp.offset:
                                ends[tp.partition] = hi
                        if time.monotonic() > deadline:
                            raise self._error(f"reading the end of {kt!r}", f"timed out after {self.timeout}s")
            finally:
                self.c.unassign()
        return dict(sorted(ends.items()))

    def close(self) -> None:
        self.c.close()


def decode(topic: str, m: Any) -> Record:
    """A fetched message as a Record; messages from other producers (no µs header, not a JSON object)
    get Kafka's ms timestamp and ``{"_raw": value}``."""
    ts = None
    for hk, hv in m.headers() or ():
        if hk == TS_HEADER:
            ts = int(hv)
    if ts is None:
        ts = m.timestamp()[1] * 1000
    raw = m.value()
    try:
        value = json.loads(raw) if raw is not None else None
    except ValueError:
        value = raw.decode("utf-8", errors="replace")
    if not isinstance(value, dict):
        value = {"_raw": value}
    k = m.key()   # surrogatepass: KafkaLog writes a key with a lone surrogate that way
    key = None if k is None else k.decode("utf-8", "surrogatepass")
    return Record(topic, m.partition(), m.offset(), ts, key, value)
