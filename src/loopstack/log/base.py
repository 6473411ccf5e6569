"""Box 1, the event log: the interface every backend (local, redis, kafka) implements.

Model (Kafka's): a topic has N partitions; a record goes to partition ``hash(key) % N`` so the
order per key holds; each partition numbers its records with consecutive offsets from 0. Consumer
groups commit the next offset to read per partition. Records that break the topic's schema go to
the dead-letter topic ``<topic>.dlq`` with the reason. ``append`` returns only once the accepted
records are durable.
"""
from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable, Iterator, Sequence

from loopstack.errors import LogError
from loopstack.features.definitions import Field

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Record:
    """One record read back from the log. `timestamp` is the append time, µs since the epoch (UTC)."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: str | None
    value: dict[str, Any]


@dataclass
class AppendResult:
    """What `append` did: how many records were accepted and rejected (sent to the dead-letter topic)."""

    accepted: int = 0
    rejected: int = 0
    offsets: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset) per accepted record
    reasons: dict[str, int] = field(default_factory=dict)         # rejection reason -> count

    def __iadd__(self, other: "AppendResult") -> "AppendResult":
        self.accepted += other.accepted
        self.rejected += other.rejected
        self.offsets.extend(other.offsets)
        for k, v in other.reasons.items():
            self.reasons[k] = self.reasons.get(k, 0) + v
        return self


@dataclass(frozen=True)
class TopicConfig:
    """A topic's shape: partitions, optional schema, retention (by age and/or bytes per partition)."""

    name: str
    partitions: int = 1
    schema: tuple[Field, ...] = ()
    key_field: str | None = None          # value field used as the key when append() gets no key
    retention_ms: int | None = None
    retention_bytes: int | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "partitions": self.partitions, "schema": [f.to_spec() for f in self.schema],
                "key_field": self.key_field, "retention_ms": self.retention_ms,
                "retention_bytes": self.retention_bytes}

    @classmethod
    def from_dict(cls, d: dict) -> "TopicConfig":
        return cls(d["name"], d.get("partitions", 1), tuple(Field.from_spec(f) for f in d.get("schema", [])),
                   d.get("key_field"), d.get("retention_ms"), d.get("retention_bytes"))


def partition_for(key: str | None, partitions: int, fallback: int = 0) -> int:
    """Stable key → partition routing (crc32, same in every process and backend). A key with a lone surrogate
    (a broken JSON escape) hashes its surrogatepass bytes; every other key hashes its UTF-8 bytes."""
    if key is None:
        return fallback % partitions
    return zlib.crc32(str(key).encode("utf-8", "surrogatepass")) % partitions


class Consumer(ABC):
    """A member of a consumer group reading assigned partitions of one topic from its positions.

    Positions start at the group's committed offsets (or earliest/latest per `start`). `poll` moves
    the position; `commit` stores it for the group, so a restart resumes after the last commit.
    """

    topic: str
    group: str

    @abstractmethod
    def poll(self, max_records: int = 500, timeout: float = 0.0) -> list[Record]: ...

    @abstractmethod
    def commit(self, offsets: dict[int, int] | None = None) -> None:
        """Commit the given next-offsets per partition (default: the current positions)."""

    @abstractmethod
    def position(self) -> dict[int, int]: ...

    @abstractmethod
    def seek(self, partition: int, offset: int) -> None: ...

    def close(self) -> None:
        return None


class EventLog(ABC):
    """The event log interface. Backends: `local` (files), `redis` (Streams), later `kafka`."""

    # -- topics --------------------------------------------------------------------------------
    @abstractmethod
    def create_topic(self, config: TopicConfig, exist_ok: bool = True) -> TopicConfig:
        """Create a topic (and its dead-letter topic). Re-creating with the same config is a no-op;
        a different partition count raises (re-partitioning would break per-key order)."""

    @abstractmethod
    def topics(self) -> list[TopicConfig]: ...

    @abstractmethod
    def topic(self, name: str) -> TopicConfig:
        """The topic's config; an unknown topic raises LogError listing the known ones."""

    def _unknown_topic(self, name: str, where: str) -> LogError:
        """The error for a topic that does not exist, listing the known ones and how to create it."""
        known = [t.name for t in self.topics() if not t.name.endswith(DLQ_SUFFIX)]
        return LogError(
            f"unknown topic {name!r} in {where}; known topics: {', '.join(known) or '(none)'}. Create it with "
            f"log.create_topic(TopicConfig({name!r}, partitions=...)) or declare an EventSource")

    def _check_partition(self, topic: str, partition: int) -> int:
        """`partition` if the topic has it, else LogError naming the valid range."""
        n = self.topic(topic).partitions
        if not isinstance(partition, int) or isinstance(partition, bool) or not 0 <= partition < n:
            raise LogError(f"topic {topic!r} has partitions 0..{n - 1}; partition {partition!r} does not exist")
        return partition

    # -- writing -------------------------------------------------------------------------------
    @abstractmethod
    def append(self, topic: str, records: "Iterable[dict] | Any", key: str | Sequence[str | None] | None = None,
               ) -> AppendResult:
        """Validate, route and durably append records (dicts or a DataFrame). Non-conforming records go
        to ``<topic>.dlq`` as ``{"record": ..., "reason": ...}``. Returns after fsync."""

    # -- reading -------------------------------------------------------------------------------
    @abstractmethod
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        """Records of one partition from `offset` on (at most `max_records`)."""

    @abstractmethod
    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition."""

    @abstractmethod
    def start_offsets(self, topic: str) -> dict[int, int]:
        """First offset still retained, per partition."""

    @abstractmethod
    def offset_for_time(self, topic: str, partition: int, timestamp_us: int) -> int:
        """First offset whose append timestamp is >= `timestamp_us` (end offset if none)."""

    def replay(self, topic: str, from_offset: dict[int, int] | int | None = None,
               from_time: datetime | None = None, batch: int = 5000) -> Iterator[Record]:
        """Every retained record from an offset (per partition) or a time, partition by partition."""
        from loopstack.log.checks import as_int, check_count
        check_count(batch, f"replay of {topic!r}: batch")   # 0 used to end the replay at once, empty
        if from_offset is not None and not isinstance(from_offset, dict) and as_int(from_offset) is None:
            raise LogError(f"replay of {topic!r}: from_offset must be an offset (int), a dict partition -> offset "
                           f"or None, got {from_offset!r}")
        starts = self.start_offsets(topic)
        ends = self.end_offsets(topic)
        for p in sorted(ends):
            if from_time is not None:
                from loopstack.timeutil import ensure_utc, to_micros
                from datetime import timezone
                t_us = to_micros(ensure_utc(from_time) - datetime(1970, 1, 1, tzinfo=timezone.utc))
                off = self.offset_for_time(topic, p, t_us)
            elif isinstance(from_offset, dict):
                off = from_offset.get(p, starts[p])
            elif from_offset is not None:
                off = int(from_offset)
            else:
                off = starts[p]
            off = max(off, starts[p])
            while off < ends[p]:
                recs = self.read(topic, p, off, batch)
                if not recs:
                    break
                yield from recs
                off = recs[-1].offset + 1

    # -- consumer groups -----------------------------------------------------------------------
    def consumer(self, topic: str, group: str, partitions: Sequence[int] | None = None,
                 start: str = "earliest") -> Consumer:
        """A consumer of `group` assigned `partitions` (default: all). `start` = earliest|latest applies
        to partitions the group never committed. A `PollingConsumer` over this backend's commit store."""
        from loopstack.log.validate import check_topic_name
        check_topic_name(group, "consumer group")
        self.topic(topic)
        return PollingConsumer(self, topic, group, partitions, start,
                               lambda offs: self._store_commit(topic, group, offs))

    def commit_offsets(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        """Commit `group`'s next-offsets for several partitions in one write: what the `commit` of one
        consumer per partition does, at the cost of one commit (the local backend's is a file written with
        two fsyncs)."""
        from loopstack.log.validate import check_topic_name
        check_topic_name(group, "consumer group")
        offsets = self._check_commit(topic, offsets)
        if offsets:
            self._store_commit(topic, group, offsets)

    def _check_commit(self, topic: str, offsets: dict[int, int]) -> dict[int, int]:
        """Next-offsets to commit, each a whole number in 0..end offset of its partition: one past the end
        would make the group skip records appended later without ever reading them."""
        from loopstack.log.checks import check_offset
        out = {}
        for p, off in offsets.items():
            self._check_partition(topic, p)
            out[p] = check_offset(off, f"cannot commit offset {off!r} for partition {p} of {topic!r}")
        ends = self.end_offsets(topic) if out else {}
        for p, off in out.items():
            if off > ends[p]:
                raise LogError(f"cannot commit offset {off} for partition {p} of {topic!r}: it ends at offset "
                               f"{ends[p]} (the next record to be written), so the group would skip the "
                               f"{off - ends[p]} record(s) appended next; commit at most {ends[p]}")
        return out

    @abstractmethod
    def _store_commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        """Record the group's next-offsets for these partitions, atomically."""

    @abstractmethod
    def committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed next-offsets per partition (partitions never committed are absent)."""

    # -- housekeeping --------------------------------------------------------------------------
    @abstractmethod
    def apply_retention(self, topic: str, now_us: int | None = None) -> int:
        """Drop records older than retention_ms / beyond retention_bytes; returns how many went."""

    def close(self) -> None:
        return None


class PollingConsumer(Consumer):
    """A consumer built only on `EventLog.read` and a commit store; every backend uses it, so
    positions, commits and seeks behave identically everywhere."""

    def __init__(self, log: EventLog, topic: str, group: str, partitions: Sequence[int] | None,
                 start: str, store: Any) -> None:
        if start not in ("earliest", "latest"):
            from loopstack.errors import LogError
            raise LogError(f"consumer start={start!r} is not understood: use 'earliest' or 'latest'")
        self.log, self.topic, self.group, self._store = log, topic, group, store
        n = log.topic(topic).partitions
        parts = list(range(n)) if partitions is None else list(partitions)
        for p in parts:
            log._check_partition(topic, p)  # type: ignore[attr-defined]
        committed = log.committed(topic, group)
        starts, ends = log.start_offsets(topic), log.end_offsets(topic)
        self._pos = {p: committed.get(p, starts[p] if start == "earliest" else ends[p]) for p in parts}
        self._next_p = 0

    def poll(self, max_records: int = 500, timeout: float = 0.0) -> list[Record]:
        """Up to `max_records` records after the current positions (waits up to `timeout` s for some)."""
        import time
        deadline = time.monotonic() + timeout
        parts = sorted(self._pos)
        while True:
            out: list[Record] = []
            for k in range(len(parts)):  # rotate the first partition so none starves
                p = parts[(self._next_p + k) % len(parts)]
                if len(out) >= max_records:
                    break
                recs = self.log.read(self.topic, p, self._pos[p], max_records - len(out))
                if recs:
                    out.extend(recs)
                    self._pos[p] = recs[-1].offset + 1
            self._next_p += 1
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(0.02)

    def commit(self, offsets: dict[int, int] | None = None) -> None:
        """Store next-offsets for the group (default: the current positions)."""
        if offsets is None:
            offsets = dict(self._pos)   # positions come from reads (or a checked seek): never past the end
        else:
            for p in offsets:
                self._assigned(p)
            offsets = self.log._check_commit(self.topic, offsets)
        self._store(offsets)

    def position(self) -> dict[int, int]:
        """The next offset this consumer will read, per assigned partition."""
        return dict(self._pos)

    def seek(self, partition: int, offset: int) -> None:
        """Move the position of one assigned partition (not committed until `commit`)."""
        from loopstack.log.checks import check_offset
        self._assigned(partition)
        offset = check_offset(offset, f"cannot seek partition {partition} of {self.topic!r} to {offset!r}")
        end = self.log.end_offsets(self.topic)[partition]
        if offset > end:
            raise LogError(f"cannot seek partition {partition} of {self.topic!r} to {offset}: it ends at offset "
                           f"{end} (the next record to be written); seek to at most {end}, or the consumer "
                           "would skip the records appended next")
        self._pos[partition] = offset

    def _assigned(self, p: int) -> None:
        if p not in self._pos:
            from loopstack.errors import LogError
            raise LogError(f"partition {p} of {self.topic!r} is not assigned to this consumer "
                           f"(assigned: {sorted(self._pos)}); create a consumer with partitions=[{p}]")
