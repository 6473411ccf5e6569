"""The event log on Kafka (any Kafka-protocol broker), with confluent-kafka (librdkafka).

Mapping (``P`` = prefix; topic names are namespaced so several projects can share a cluster)::

    P.<topic>             Kafka topic with the same partition count; offset n = Kafka offset n
    P.<topic>.dlq         its dead-letter topic (1 partition)
    __loopstack.P.topics  compacted topic: key = topic name, value = TopicConfig JSON (last one wins)
    consumer group G      Kafka consumer group G; commits are OffsetCommit / OffsetFetch on the
                          group coordinator *without joining the group* (no rebalance, no wait)

A record is key = the key (UTF-8, none for no key), value = the JSON value, header ``ls.ts`` =
append time in µs, Kafka timestamp = the same in ms. The producer picks the partition itself with
`partition_for` (crc32), not Kafka's murmur2 partitioner, so keys land where every other backend puts
them. One ``append`` call gets one timestamp, taken under a lock together with the produce calls, so
timestamps are monotonic per partition within a process (across producer processes they follow the
producers' clocks).

Durability: idempotent producer (``enable.idempotence``, ``acks=all``); ``append`` flushes and
returns only when the broker acknowledged every record (all in-sync replicas have it).

Broker quirks handled (tansu 0.6): ListOffsets(latest) can point inside the last batch and
ListOffsets(timestamp) ignores the timestamp, so end offsets come from a fetch's high watermark and
`offset_for_time` binary-searches the ``ls.ts`` headers. ``apply_retention`` uses DeleteRecords,
which tansu does not implement (it raises LogError there); topics also carry ``retention.ms`` /
``retention.bytes`` (``-1`` = keep forever) so the broker applies retention on its own.
"""
from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any, Iterable, Iterator, Sequence

from loopstack.errors import LogError
from loopstack.timeutil import now_micros

from .base import DLQ_SUFFIX, AppendResult, EventLog, Record, TopicConfig
from .kafka_client import TS_HEADER, Reader, Writer, client_config, decode, parse_kafka_url
from .validate import check_new_topic, check_recreate, check_topic_name, dlq_config, encode_value, prepare_batch

__all__ = ["KafkaLog", "TS_HEADER", "parse_kafka_url"]


def _broker_config(cfg: TopicConfig) -> dict[str, str]:
    """Kafka topic configs from a TopicConfig: -1 = unlimited (Kafka's default would be 7 days)."""
    return {"retention.ms": str(cfg.retention_ms if cfg.retention_ms is not None else -1),
            "retention.bytes": str(cfg.retention_bytes if cfg.retention_bytes is not None else -1)}


class KafkaLog(EventLog):
    """Event log on Kafka topics (see module doc)."""

    def __init__(self, url: str, prefix: str = "loopstack", timeout: float = 30.0,
                 replication_factor: int = -1) -> None:
        try:
            import confluent_kafka  # noqa: F401
        except ImportError as exc:  # pragma: no cover - confluent-kafka is in the kafka/dev extras
            raise LogError("the kafka backend needs confluent-kafka: pip install 'loopstack[kafka]'") from exc
        from confluent_kafka.admin import AdminClient
        if prefix:
            check_topic_name(prefix)
        self.url, self.prefix, self.timeout, self.replication_factor = url, prefix, timeout, replication_factor
        self.servers, extra = parse_kafka_url(url)
        self._admin = AdminClient(client_config(self.servers, extra))
        self._check_reachable()
        self._writer = Writer(self.servers, extra, timeout)
        self._reader = Reader(self.servers, extra, timeout, group=f"{prefix or 'loopstack'}.reader")
        self._meta = f"__loopstack.{prefix}.topics" if prefix else "__loopstack.topics"
        self._configs: dict[str, TopicConfig] = {}
        self._meta_next = 0
        self._rr: dict[str, Iterator[int]] = {}
        self._last_ts: dict[str, int] = {}
        self._plock, self._mlock = threading.Lock(), threading.Lock()
        self._create_kafka_topic(self._meta, 1, {"cleanup.policy": "compact", "retention.ms": "-1"})

    def __repr__(self) -> str:
        return f"KafkaLog({self.url!r}, prefix={self.prefix!r})"

    def _check_reachable(self) -> None:
        try:
            self._admin.list_topics(timeout=min(self.timeout, 10.0))
        except Exception as exc:
            raise LogError(f"cannot reach a Kafka broker at {self.servers}: {exc}; start the broker or fix "
                           "log.url (kafka://host:port)") from exc

    def _k(self, topic: str) -> str:
        """The Kafka topic name of a loopstack topic."""
        return f"{self.prefix}.{topic}" if self.prefix else topic

    # -- topics --------------------------------------------------------------------------------
    def _create_kafka_topic(self, name: str, partitions: int, config: dict[str, str]) -> None:
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import NewTopic
        fut = self._admin.create_topics([NewTopic(name, partitions, self.replication_factor, config=config)],
                                        operation_timeout=self.timeout, request_timeout=self.timeout)[name]
        try:
            fut.result(timeout=self.timeout)
            return
        except Exception as exc:
            err = exc.args[0] if exc.args else None
            if not (hasattr(err, "code") and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise LogError(f"creating Kafka topic {name!r} on {self.servers} failed: {exc}") from exc
        have = len(self._admin.list_topics(name, timeout=self.timeout).topics[name].partitions)
        if have != partitions:
            raise LogError(f"Kafka topic {name!r} already exists with {have} partition(s), loopstack needs "
                           f"{partitions}; re-partitioning would break per-key order. Create a new topic "
                           "(e.g. with a '.v2' suffix) and replay into it")

    def create_topic(self, config: TopicConfig, exist_ok: bool = True) -> TopicConfig:
        """Create the topic (and ``<topic>.dlq``); same config again is a no-op, new partitions raise."""
        check_new_topic(config)
        self._refresh()
        existing = self._configs.get(config.name)
        if existing is not None:
            if check_recreate(existing, config, exist_ok):
                if (existing.retention_ms, existing.retention_bytes) != (config.retention_ms, config.retention_bytes):
                    self._alter_broker_config(config)
                self._write_meta(config)
        else:
            self._create_kafka_topic(self._k(config.name), config.partitions, _broker_config(config))
            self._write_meta(config)  # written last: marks the topic complete
        if not config.name.endswith(DLQ_SUFFIX):
            self.create_topic(dlq_config(config.name), exist_ok=True)
        return config

    def _alter_broker_config(self, config: TopicConfig) -> None:
        from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource
        entries = [ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET)
                   for k, v in _broker_config(config).items()]
        res = ConfigResource("topic", self._k(config.name), incremental_configs=entries)
        for fut in self._admin.incremental_alter_configs([res]).values():
            try:
                fut.result(timeout=self.timeout)
            except Exception as exc:
                raise LogError(f"updating retention of Kafka topic {self._k(config.name)!r} failed: {exc}") from exc

    def _write_meta(self, config: TopicConfig) -> None:
        data = json.dumps(config.to_dict(), sort_keys=True).encode()
        self._writer.wait(self._writer.enqueue([(self._meta, 0, config.name.encode(), data, now_micros() // 1000,
                                                 [])]))
        self._configs[config.name] = config

    def _refresh(self) -> None:
        """Apply topic configs written since the last refresh (by any process)."""
        with self._mlock:
            while True:
                msgs = self._reader.fetch(self._meta, 0, self._meta_next, 10_000)
                for m in msgs:
                    self._configs[m.key().decode()] = TopicConfig.from_dict(json.loads(m.value()))
                    self._meta_next = m.offset() + 1
                if len(msgs) < 10_000:
                    return

    def topics(self) -> list[TopicConfig]:
        """All topics, dead-letter topics included, by name."""
        self._refresh()
        return sorted(self._configs.values(), key=lambda c: c.name)

    def topic(self, name: str) -> TopicConfig:
        """The config of `name`; unknown names raise LogError listing the known topics."""
        cfg = self._configs.get(name)
        if cfg is None:
            self._refresh()
            cfg = self._configs.get(name)
            if cfg is None:
                raise self._unknown_topic(name, f"the kafka log at {self.servers} (prefix {self.prefix!r})")
        return cfg

    # -- writing -------------------------------------------------------------------------------
    def append(self, topic: str, records: "Iterable[dict] | Any", key: str | Sequence[str | None] | None = None,
               ) -> AppendResult:
        """Validate, route and append; returns when the broker acknowledged all (acks=all)."""
        self._refresh()  # another process may have evolved the schema
        cfg = self.topic(topic)
        rr = self._rr.setdefault(topic, itertools.count())
        prep = prepare_batch(cfg, records, key, rr)
        res = AppendResult(accepted=len(prep.accepted), rejected=len(prep.dead), reasons=dict(prep.reasons))
        if prep.dead and topic + DLQ_SUFFIX not in self._configs:
            self.create_topic(dlq_config(topic))
        kt, dlq = self._k(topic), self._k(topic + DLQ_SUFFIX)
        with self._plock:  # timestamp and queue order agree, so timestamps are monotonic per partition
            ts = max(now_micros(), self._last_ts.get(topic, 0))
            self._last_ts[topic] = ts
            hdr = [(TS_HEADER, str(ts).encode())]
            msgs = [(kt, p, None if k is None else k.encode("utf-8", "surrogatepass"), encode_value(v).encode(),
                     ts // 1000, hdr)
                    for p, k, v in prep.accepted]
            msgs += [(dlq, 0, None, encode_value(d).encode(), ts // 1000, hdr) for d in prep.dead]
            handle = self._writer.enqueue(msgs)
        try:
            res.offsets = self._writer.wait(handle)[:len(prep.accepted)]
        except LogError as exc:
            raise LogError(f"append to {topic!r}: {exc}") from exc
        return res

    # -- reading -------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        """Up to `max_records` records of a partition from `offset` (below the start: from the start)."""
        self._check_partition(topic, partition)
        if max_records <= 0:
            return []
        return [decode(topic, m) for m in self._reader.fetch(self._k(topic), partition, offset, max_records)]

    def _list_offsets(self, topic: str, spec: str) -> dict[int, int]:
        """ListOffsets (earliest / latest) for every partition of a topic, in one admin request."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec
        kt, n = self._k(topic), self.topic(topic).partitions
        deadline = time.monotonic() + self.timeout
        while True:
            futs = self._admin.list_offsets({TopicPartition(kt, p): getattr(OffsetSpec, spec)() for p in range(n)},
                                            request_timeout=self.timeout)
            try:
                return {tp.partition: f.result(timeout=self.timeout).offset
                        for tp, f in sorted(futs.items(), key=lambda kv: kv[0].partition)}
            except Exception as exc:  # e.g. "no leaders found" right after the broker dropped a connection
                if time.monotonic() > deadline:
                    raise LogError(f"ListOffsets({spec}) of {kt!r} on {self.servers} failed: {exc}") from exc
                time.sleep(0.05)

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition: the high watermark a fetch reports (ListOffsets latest
        alone is not enough: tansu answers it with an offset inside the last batch)."""
        return self._reader.high_watermarks(self._k(topic), self._list_offsets(topic, "latest"))

    def start_offsets(self, topic: str) -> dict[int, int]:
        """First offset still retained, per partition (ListOffsets earliest)."""
        return self._list_offsets(topic, "earliest")

    def offset_for_time(self, topic: str, partition: int, timestamp_us: int) -> int:
        """First offset whose append timestamp is >= `timestamp_us` (binary search on the µs headers)."""
        self._check_partition(topic, partition)
        lo, hi = self.start_offsets(topic)[partition], self.end_offsets(topic)[partition]
        kt = self._k(topic)
        while lo < hi:
            mid = (lo + hi) // 2
            msgs = self._reader.fetch(kt, partition, mid, 1)
            if not msgs:
                return lo
            if decode(topic, msgs[0]).timestamp < timestamp_us:
                lo = msgs[0].offset() + 1
            else:
                hi = mid
        return lo

    # -- consumer groups -----------------------------------------------------------------------
    def _group_request(self, call: str, group: str, tps: list) -> list:
        from confluent_kafka import ConsumerGroupTopicPartitions
        futs = getattr(self._admin, call)([ConsumerGroupTopicPartitions(group, tps)], request_timeout=self.timeout)
        try:
            return futs[group].result(timeout=self.timeout).topic_partitions
        except Exception as exc:
            raise LogError(f"consumer group {group!r} on {self.servers}: {call} failed: {exc} (is a Kafka consumer "
                           "with subscribe() using the same group? loopstack groups must not be shared)") from exc

    def _store_commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        from confluent_kafka import TopicPartition
        tps = [TopicPartition(self._k(topic), int(p), int(o)) for p, o in sorted(offsets.items())]
        if tps:
            self._group_request("alter_consumer_group_offsets", group, tps)

    def committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed next-offsets (partitions never committed are absent)."""
        from confluent_kafka import TopicPartition
        n = self.topic(topic).partitions
        tps = self._group_request("list_consumer_group_offsets", group,
                                  [TopicPartition(self._k(topic), p) for p in range(n)])
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def groups(self, topic: str) -> list[str]:
        """Consumer groups that committed offsets for `topic`."""
        listed = self._admin.list_consumer_groups(request_timeout=self.timeout).result(timeout=self.timeout)
        return sorted(g.group_id for g in listed.valid if self.committed(topic, g.group_id))

    # -- housekeeping --------------------------------------------------------------------------
    def _sizes(self, topic: str, p: int) -> list[tuple[int, int]]:
        """(offset, key + value bytes) of every retained record of a partition."""
        out: list[tuple[int, int]] = []
        off, end = self.start_offsets(topic)[p], self.end_offsets(topic)[p]
        while off < end:
            msgs = self._reader.fetch(self._k(topic), p, off, 10_000)
            if not msgs:
                break
            out += [(m.offset(), len(m.key() or b"") + len(m.value() or b"")) for m in msgs]
            off = msgs[-1].offset() + 1
        return out

    def partition_bytes(self, topic: str) -> dict[int, int]:
        """Payload bytes retained per partition (key + value)."""
        return {p: sum(s for _, s in self._sizes(topic, p)) for p in range(self.topic(topic).partitions)}

    def retention_plan(self, topic: str, now_us: int | None = None) -> dict[int, int]:
        """The start offset per partition after retention: records before now - retention_ms go, and the
        oldest while the payload bytes exceed retention_bytes (the newest record always stays)."""
        cfg = self.topic(topic)
        now = now_micros() if now_us is None else now_us
        starts, ends = self.start_offsets(topic), self.end_offsets(topic)
        plan = {}
        for p in range(cfg.partitions):
            cut = starts[p]
            if cfg.retention_ms is not None:
                cut = max(cut, self.offset_for_time(topic, p, now - cfg.retention_ms * 1000))
            if cfg.retention_bytes is not None and ends[p] > starts[p]:
                sizes = self._sizes(topic, p)
                left = sum(s for _, s in sizes)
                for off, s in sizes[:-1]:
                    if left <= cfg.retention_bytes:
                        break
                    left -= s
                    cut = max(cut, off + 1)
            plan[p] = cut
        return plan

    def apply_retention(self, topic: str, now_us: int | None = None) -> int:
        """Move each partition's start past expired records with Kafka's DeleteRecords; returns how many went."""
        self._refresh()
        cfg = self.topic(topic)
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return 0
        from confluent_kafka import TopicPartition
        starts = self.start_offsets(topic)
        cuts = {p: o for p, o in self.retention_plan(topic, now_us).items() if o > starts[p]}
        if not cuts:
            return 0
        futs = self._admin.delete_records([TopicPartition(self._k(topic), p, o) for p, o in cuts.items()],
                                          request_timeout=self.timeout, operation_timeout=self.timeout)
        for fut in futs.values():
            try:
                fut.result(timeout=self.timeout)
            except Exception as exc:
                raise LogError(
                    f"apply_retention({topic!r}): DeleteRecords failed on the Kafka broker at {self.servers}: {exc}. "
                    "The broker must implement DeleteRecords (Apache Kafka does, tansu 0.6 does not); otherwise "
                    "leave retention to the broker, which enforces the topic's retention.ms / retention.bytes") from exc
        return sum(o - starts[p] for p, o in cuts.items())

    def close(self) -> None:
        """Flush pending records and close the clients."""
        self._writer.close()
        self._reader.close()
