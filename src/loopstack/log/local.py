"""The embedded event log: partitioned, append-only segment files with fsync on acknowledge.

Layout under ``root``::

    <topic>/topic.json                 the TopicConfig (atomic write: tmp + fsync + rename)
    <topic>/.lock                      flock taken by every append / retention (multi-process safe)
    <topic>/<partition>/<base>.seg     frames, see segments.py
    <topic>/<partition>/<base>.idx     sparse offset/time index
    _groups/<group>/<topic>.json       committed next-offsets of a consumer group (atomic write)

``append`` writes every record of the call, fsyncs each touched partition once (group commit) and
only then returns. A crash (kill -9) can leave at most a torn frame at the end of a partition; it is
never returned by reads (CRC + length checks) and is cut off by the next append to that partition.
"""
from __future__ import annotations

import fcntl
import itertools
import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from loopstack.errors import LogError
from loopstack.timeutil import now_micros

from .base import DLQ_SUFFIX, AppendResult, EventLog, Record, TopicConfig
from . import segments
from .segments import Partition, _fsync_dir, check_frame_sizes
from .validate import check_new_topic, check_recreate, dlq_config, encode_value, prepare_batch

DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024
DEFAULT_INDEX_INTERVAL = 4096


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON so readers see the old or the new file, never a partial one (tmp + fsync + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


@contextmanager
def _flock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


class LocalLog(EventLog):
    """Event log in local files (see module doc). Safe to share between processes and threads."""

    def __init__(self, root: Path | str, segment_bytes: int = DEFAULT_SEGMENT_BYTES,
                 index_interval: int = DEFAULT_INDEX_INTERVAL) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.segment_bytes = segment_bytes
        self.index_interval = index_interval
        self._configs: dict[str, TopicConfig] = {}
        self._parts: dict[tuple[str, int], Partition] = {}
        self._rr: dict[str, Iterator[int]] = {}
        self._mutex = threading.RLock()

    def __repr__(self) -> str:
        return f"LocalLog({str(self.root)!r})"

    # -- topics --------------------------------------------------------------------------------
    def create_topic(self, config: TopicConfig, exist_ok: bool = True) -> TopicConfig:
        """Create the topic (and ``<topic>.dlq``); same config again is a no-op, new partitions raise."""
        check_new_topic(config)
        tdir = self.root / config.name
        with self._mutex, _flock(self.root / ".topics.lock"):
            existing = self._load_config(config.name)
            if existing is not None:
                if check_recreate(existing, config, exist_ok):
                    atomic_write_json(tdir / "topic.json", config.to_dict())
            else:
                for p in range(config.partitions):
                    pdir = tdir / str(p)
                    pdir.mkdir(parents=True, exist_ok=True)
                    if not any(n.endswith(".seg") for n in os.listdir(pdir)):
                        (pdir / f"{0:020d}.seg").touch()
                        _fsync_dir(pdir)
                _fsync_dir(tdir)
                atomic_write_json(tdir / "topic.json", config.to_dict())  # written last: marks it complete
                _fsync_dir(self.root)
            self._configs[config.name] = config
        if not config.name.endswith(DLQ_SUFFIX):
            self.create_topic(dlq_config(config.name), exist_ok=True)
        return config

    def _load_config(self, name: str) -> TopicConfig | None:
        try:
            return TopicConfig.from_dict(json.loads((self.root / name / "topic.json").read_text()))
        except FileNotFoundError:
            return None

    def topics(self) -> list[TopicConfig]:
        """All topics, dead-letter topics included, by name."""
        out = []
        for d in sorted(self.root.iterdir()):
            if d.is_dir() and (cfg := self._load_config(d.name)) is not None:
                out.append(cfg)
        return out

    def topic(self, name: str) -> TopicConfig:
        """The config of `name`; unknown names raise LogError listing the known topics."""
        cfg = self._configs.get(name)
        if cfg is None:
            cfg = self._load_config(name) if isinstance(name, str) and "/" not in name else None
            if cfg is None:
                raise self._unknown_topic(name, f"the local log at {self.root}")
            self._configs[name] = cfg
        return cfg

    def _part(self, topic: str, p: int) -> Partition:
        part = self._parts.get((topic, p))
        if part is None:
            part = Partition(self.root / topic / str(p), self.segment_bytes, self.index_interval)
            self._parts[(topic, p)] = part
        return part

    # -- writing -------------------------------------------------------------------------------
    def append(self, topic: str, records: "Iterable[dict] | Any", key: str | Sequence[str | None] | None = None,
               ) -> AppendResult:
        """Validate, route and durably append; rejected records go to ``<topic>.dlq``. Returns after fsync."""
        cfg = self._load_config(topic) if topic in self._configs else None
        cfg = cfg or self.topic(topic)  # re-read: another process may have evolved the schema
        with self._mutex:
            rr = self._rr.setdefault(topic, itertools.count())
            prep = prepare_batch(cfg, records, key, rr)
        res = AppendResult(accepted=len(prep.accepted), rejected=len(prep.dead), reasons=dict(prep.reasons))
        by_p: dict[int, list[int]] = {}
        for i, (p, _k, _v) in enumerate(prep.accepted):
            by_p.setdefault(p, []).append(i)
        offsets: list[tuple[int, int]] = [(0, 0)] * len(prep.accepted)
        items_by_p = {p: [(prep.accepted[i][1], encode_value(prep.accepted[i][2])) for i in idxs]
                      for p, idxs in by_p.items()}
        dead = [(None, encode_value(d)) for d in prep.dead]
        big, big_dead = check_frame_sizes(items_by_p), check_frame_sizes({0: dead})
        if big or big_dead:   # before anything is written: all or nothing
            size = (big or big_dead)[2]  # type: ignore[index]
            which = "a record" if big else "the dead letter of a rejected record"
            raise LogError(f"append to {topic!r}: {which} is {size} bytes of JSON; the local log stores records of "
                           f"up to {segments.MAX_RECORD_BYTES} bytes. Nothing was written: keep the large part "
                           "elsewhere (e.g. an artifact path) and log a reference to it")
        if by_p:
            with self._mutex, _flock(self.root / topic / ".lock"):
                now = now_micros()
                for p, idxs in sorted(by_p.items()):
                    part = self._part(topic, p)
                    part.refresh(repair=True)
                    first, _ts = part.append(items_by_p[p], now)
                    for n, i in enumerate(idxs):
                        offsets[i] = (p, first + n)
        res.offsets = offsets
        if dead:
            self._dead_letters(topic, dead)
        return res

    def _dead_letters(self, topic: str, dead: list[tuple[None, str]]) -> None:
        dlq = topic + DLQ_SUFFIX
        if self._load_config(dlq) is None:
            self.create_topic(dlq_config(topic))
        with self._mutex, _flock(self.root / dlq / ".lock"):
            part = self._part(dlq, 0)
            part.refresh(repair=True)
            part.append(dead, now_micros())

    # -- reading -------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        """Up to `max_records` records of a partition from `offset` (below the start: from the start)."""
        self._check_partition(topic, partition)
        if max_records <= 0:
            return []
        with self._mutex:
            part = self._part(topic, partition)
            for _attempt in range(3):
                try:
                    out = []
                    for off, payload in part.read(max(0, offset), max_records):
                        d = json.loads(payload)
                        out.append(Record(topic, partition, off, d["ts"], d["key"], d["value"]))
                    return out
                except FileNotFoundError:  # retention in another process removed a segment: re-list
                    part.refresh(False)
            raise LogError(f"reading {topic!r}/{partition} at {offset} kept racing with retention; retry")

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition."""
        out = {}
        with self._mutex:
            for p in range(self.topic(topic).partitions):
                part = self._part(topic, p)
                part.refresh(False)
                out[p] = part.next
        return out

    def start_offsets(self, topic: str) -> dict[int, int]:
        """First offset still retained, per partition."""
        out = {}
        with self._mutex:
            for p in range(self.topic(topic).partitions):
                part = self._part(topic, p)
                part.refresh(False)
                out[p] = part.bases[0] if part.bases else 0
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp_us: int) -> int:
        """First offset whose append timestamp is >= `timestamp_us` (end offset if none)."""
        self._check_partition(topic, partition)
        with self._mutex:
            return self._part(topic, partition).offset_for_time(int(timestamp_us))

    def partition_bytes(self, topic: str) -> dict[int, int]:
        """Bytes on disk per partition (segments only)."""
        out = {}
        for p in range(self.topic(topic).partitions):
            d = self.root / topic / str(p)
            out[p] = sum(f.stat().st_size for f in d.glob("*.seg"))
        return out

    # -- consumer groups -----------------------------------------------------------------------
    def _group_file(self, topic: str, group: str) -> Path:
        return self.root / "_groups" / group / f"{topic}.json"

    def _store_commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        path = self._group_file(topic, group)
        with self._mutex, _flock(path.parent / ".lock"):
            cur = self.committed(topic, group)
            cur.update({int(p): int(o) for p, o in offsets.items()})
            atomic_write_json(path, {str(p): o for p, o in sorted(cur.items())})

    def committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed next-offsets (partitions never committed are absent)."""
        self.topic(topic)
        try:
            data = json.loads(self._group_file(topic, group).read_text())
        except FileNotFoundError:
            return {}
        return {int(p): int(o) for p, o in data.items()}

    def groups(self, topic: str) -> list[str]:
        """Consumer groups that committed offsets for `topic`."""
        gdir = self.root / "_groups"
        return sorted(g.name for g in gdir.iterdir() if (g / f"{topic}.json").exists()) if gdir.exists() else []

    # -- housekeeping --------------------------------------------------------------------------
    def apply_retention(self, topic: str, now_us: int | None = None) -> int:
        """Delete whole closed segments past retention_ms (by their newest record) / retention_bytes."""
        cfg = self._load_config(topic) or self.topic(topic)
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return 0
        now = now_micros() if now_us is None else now_us
        cutoff = None if cfg.retention_ms is None else now - cfg.retention_ms * 1000
        dropped = 0
        with self._mutex, _flock(self.root / topic / ".lock"):
            for p in range(cfg.partitions):
                dropped += self._part(topic, p).retain(cutoff, cfg.retention_bytes)
        return dropped
