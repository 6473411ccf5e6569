"""The event log on Redis Streams: one stream per partition, consumer groups, XTRIM retention.

Keys (``P`` = prefix)::

    P:topics                 hash  topic -> TopicConfig JSON
    P:s:<topic>:<partition>  stream; offset n has the explicit ID ``0-(n+1)``; fields
                             t (append time µs), k (key as JSON), v (value JSON), c (cumulative bytes)
    P:m:<topic>              hash  end:<p> next offset, ts:<p> last append ts, cum:<p> bytes ever written
    P:g:<group>:<topic>      hash  partition -> committed next offset

Offsets are assigned inside a Lua script (atomic on the server), so concurrent producers get
consecutive offsets and monotonic timestamps (taken from the server clock). One ``append`` call is
one pipeline round trip. Consumer groups are also created natively (``XGROUP CREATE``) and
``commit`` moves their last-delivered ID (``XGROUP SETID``), so ``XINFO GROUPS`` shows them.

Durability: ``append`` returns when Redis replied, i.e. acknowledged = Redis's own persistence.
Run Redis with ``appendonly yes`` and ``appendfsync always`` for fsync-on-ack (the tests do).
"""
from __future__ import annotations

import itertools
import json
from typing import Any, Iterable, Iterator, Sequence

from loopstack.errors import LogError
from loopstack.redis_url import redis_from_url
from loopstack.timeutil import now_micros

from .base import DLQ_SUFFIX, AppendResult, Consumer, EventLog, Record, TopicConfig
from .validate import check_new_topic, check_recreate, check_topic_name, dlq_config, encode_value, prepare_batch

_APPEND = """
pcall(redis.replicate_commands)
local p = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = tonumber(redis.call('HGET', KEYS[2], 'ts:' .. p) or '0')
if now < last then now = last end
local off = tonumber(redis.call('HGET', KEYS[2], 'end:' .. p) or '0')
local cum = tonumber(redis.call('HGET', KEYS[2], 'cum:' .. p) or '0')
local first = off
local ts = string.format('%d', now)
for i = 2, #ARGV, 2 do
  cum = cum + #ARGV[i] + #ARGV[i + 1]
  redis.call('XADD', KEYS[1], string.format('0-%d', off + 1), 't', ts, 'k', ARGV[i], 'v', ARGV[i + 1],
             'c', string.format('%d', cum))
  off = off + 1
end
redis.call('HSET', KEYS[2], 'end:' .. p, string.format('%d', off), 'ts:' .. p, ts,
           'cum:' .. p, string.format('%d', cum))
return {first, ts}
"""

# first offset in [lo, hi) whose numeric field ARGV[3] is >= ARGV[4] (the field is monotonic)
_SEARCH = """
local function getf(off)
  local id = string.format('0-%d', off + 1)
  local r = redis.call('XRANGE', KEYS[1], id, id)
  local e = r[1][2]
  for i = 1, #e, 2 do if e[i] == ARGV[3] then return tonumber(e[i + 1]) end end
  return 0
end
local lo, hi, target = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[4])
while lo < hi do
  local mid = math.floor((lo + hi) / 2)
  if getf(mid) < target then lo = mid + 1 else hi = mid end
end
return lo
"""


class RedisLog(EventLog):
    """Event log on Redis Streams (see module doc)."""

    def __init__(self, url: str, prefix: str = "loopstack") -> None:
        try:
            import redis
        except ImportError as exc:  # pragma: no cover - redis is in the dev/redis extras
            raise LogError("the redis backend needs the redis client: pip install 'loopstack[redis]'") from exc
        self.url, self.prefix = url, prefix
        self.r = redis_from_url(url, "event log", "log.url")
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise LogError(f"cannot reach Redis at {url}: {exc}; start redis-server or fix log.url") from exc
        self._append_script = self.r.register_script(_APPEND)
        self._search_script = self.r.register_script(_SEARCH)
        self._rr: dict[str, Iterator[int]] = {}

    def __repr__(self) -> str:
        return f"RedisLog({self.url!r}, prefix={self.prefix!r})"

    def _s(self, topic: str, p: int) -> str:
        return f"{self.prefix}:s:{topic}:{p}"

    def _m(self, topic: str) -> str:
        return f"{self.prefix}:m:{topic}"

    def _g(self, group: str, topic: str) -> str:
        return f"{self.prefix}:g:{group}:{topic}"

    # -- topics --------------------------------------------------------------------------------
    def create_topic(self, config: TopicConfig, exist_ok: bool = True) -> TopicConfig:
        """Create the topic (and ``<topic>.dlq``); same config again is a no-op, new partitions raise."""
        check_new_topic(config)
        key = f"{self.prefix}:topics"
        data = json.dumps(config.to_dict(), sort_keys=True)
        if not self.r.hsetnx(key, config.name, data):
            existing = self._load(config.name)
            assert existing is not None
            if check_recreate(existing, config, exist_ok):
                self.r.hset(key, config.name, data)
        if not config.name.endswith(DLQ_SUFFIX):
            self.create_topic(dlq_config(config.name), exist_ok=True)
        return config

    def _load(self, name: str) -> TopicConfig | None:
        raw = self.r.hget(f"{self.prefix}:topics", name)
        return None if raw is None else TopicConfig.from_dict(json.loads(raw))

    def topics(self) -> list[TopicConfig]:
        """All topics, dead-letter topics included, by name."""
        raw = self.r.hgetall(f"{self.prefix}:topics")
        return sorted((TopicConfig.from_dict(json.loads(v)) for v in raw.values()), key=lambda c: c.name)

    def topic(self, name: str) -> TopicConfig:
        """The config of `name`; unknown names raise LogError listing the known topics."""
        cfg = self._load(name)
        if cfg is None:
            raise self._unknown_topic(name, f"the redis log at {self.url} (prefix {self.prefix!r})")
        return cfg

    # -- writing -------------------------------------------------------------------------------
    def append(self, topic: str, records: "Iterable[dict] | Any", key: str | Sequence[str | None] | None = None,
               ) -> AppendResult:
        """Validate, route and append in one round trip; rejected records go to ``<topic>.dlq``."""
        cfg = self.topic(topic)
        rr = self._rr.setdefault(topic, itertools.count())
        prep = prepare_batch(cfg, records, key, rr)
        res = AppendResult(accepted=len(prep.accepted), rejected=len(prep.dead), reasons=dict(prep.reasons))
        by_p: dict[int, list[int]] = {}
        for i, (p, _k, _v) in enumerate(prep.accepted):
            by_p.setdefault(p, []).append(i)
        pipe = self.r.pipeline(transaction=False)
        order = sorted(by_p)
        for p in order:
            args: list[Any] = [p]
            for i in by_p[p]:
                _p, k, v = prep.accepted[i]
                args += [json.dumps(k), encode_value(v)]
            self._append_script(keys=[self._s(topic, p), self._m(topic)], args=args, client=pipe)
        if prep.dead:
            dlq = topic + DLQ_SUFFIX
            if self._load(dlq) is None:
                self.create_topic(dlq_config(topic))
            args = [0]
            for d in prep.dead:
                args += ["null", encode_value(d)]
            self._append_script(keys=[self._s(dlq, 0), self._m(dlq)], args=args, client=pipe)
        replies = pipe.execute()
        offsets: list[tuple[int, int]] = [(0, 0)] * len(prep.accepted)
        for p, reply in zip(order, replies):
            first = int(reply[0])
            for n, i in enumerate(by_p[p]):
                offsets[i] = (p, first + n)
        res.offsets = offsets
        return res

    # -- reading -------------------------------------------------------------------------------
    def read(self, topic: str, partition: int, offset: int = 0, max_records: int = 1000) -> list[Record]:
        """Up to `max_records` records of a partition from `offset` (below the start: from the start)."""
        self._check_partition(topic, partition)
        if max_records <= 0:
            return []
        rows = self.r.xrange(self._s(topic, partition), f"0-{max(0, offset) + 1}", "+", count=max_records)
        out = []
        for rid, f in rows:
            off = int(rid.split(b"-")[1]) - 1
            out.append(Record(topic, partition, off, int(f[b"t"]), json.loads(f[b"k"]), json.loads(f[b"v"])))
        return out

    def _ends(self, topic: str, n: int) -> dict[int, int]:
        vals = self.r.hmget(self._m(topic), [f"end:{p}" for p in range(n)])
        return {p: int(v or 0) for p, v in enumerate(vals)}

    def end_offsets(self, topic: str) -> dict[int, int]:
        """Next offset to be written, per partition."""
        return self._ends(topic, self.topic(topic).partitions)

    def start_offsets(self, topic: str) -> dict[int, int]:
        """First offset still retained, per partition."""
        n = self.topic(topic).partitions
        ends = self._ends(topic, n)
        pipe = self.r.pipeline(transaction=False)
        for p in range(n):
            pipe.xrange(self._s(topic, p), "-", "+", count=1)
        out = {}
        for p, rows in enumerate(pipe.execute()):
            out[p] = int(rows[0][0].split(b"-")[1]) - 1 if rows else ends[p]
        return out

    def _search(self, topic: str, p: int, lo: int, hi: int, field: str, target: int) -> int:
        return int(self._search_script(keys=[self._s(topic, p)], args=[lo, hi, field, target]))

    def offset_for_time(self, topic: str, partition: int, timestamp_us: int) -> int:
        """First offset whose append timestamp is >= `timestamp_us` (binary search on the server)."""
        self._check_partition(topic, partition)
        lo = self.start_offsets(topic)[partition]
        hi = self.end_offsets(topic)[partition]
        return self._search(topic, partition, lo, hi, "t", int(timestamp_us))

    # -- consumer groups -----------------------------------------------------------------------
    def consumer(self, topic: str, group: str, partitions: Sequence[int] | None = None,
                 start: str = "earliest") -> Consumer:
        """A consumer of `group`; also creates the native stream consumer group for redis tools."""
        check_topic_name(group, "consumer group")
        n = self.topic(topic).partitions
        committed = self.committed(topic, group)
        for p in (range(n) if partitions is None else partitions):
            self._check_partition(topic, p)
            self._ensure_group(topic, p, group,
                               f"0-{committed[p]}" if p in committed else ("0-0" if start == "earliest" else "$"))
        return super().consumer(topic, group, partitions, start)

    def _ensure_group(self, topic: str, partition: int, group: str, sid: str) -> None:
        """Create the native stream consumer group of one partition at `sid`, unless it exists."""
        try:
            self.r.xgroup_create(self._s(topic, partition), group, id=sid, mkstream=True)
        except Exception as exc:  # BUSYGROUP: it exists already
            if "BUSYGROUP" not in str(exc):
                raise

    def _store_commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        from redis.exceptions import ResponseError
        try:
            self._commit(topic, group, offsets)
        except ResponseError as exc:  # a partition no consumer of the group opened (`commit_offsets`)
            if "NOGROUP" not in str(exc) and "key to exist" not in str(exc):
                raise
            for p, o in offsets.items():
                self._ensure_group(topic, p, group, f"0-{int(o)}")
            self._commit(topic, group, offsets)

    def _commit(self, topic: str, group: str, offsets: dict[int, int]) -> None:
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self._g(group, topic), mapping={str(p): int(o) for p, o in offsets.items()})
        for p, o in offsets.items():
            pipe.execute_command("XGROUP", "SETID", self._s(topic, p), group, f"0-{int(o)}")
        pipe.execute()

    def committed(self, topic: str, group: str) -> dict[int, int]:
        """The group's committed next-offsets (partitions never committed are absent)."""
        self.topic(topic)
        return {int(p): int(o) for p, o in self.r.hgetall(self._g(group, topic)).items()}

    def groups(self, topic: str) -> list[str]:
        """Consumer groups that committed offsets for `topic`."""
        pre = f"{self.prefix}:g:"
        suf = f":{topic}"
        return sorted(k.decode()[len(pre):-len(suf)] for k in self.r.scan_iter(match=f"{pre}*{suf}"))

    # -- housekeeping --------------------------------------------------------------------------
    def apply_retention(self, topic: str, now_us: int | None = None) -> int:
        """XTRIM MINID each partition past retention_ms (by append ts) / retention_bytes (by payload bytes)."""
        cfg = self.topic(topic)
        if cfg.retention_ms is None and cfg.retention_bytes is None:
            return 0
        now = now_micros() if now_us is None else now_us
        starts, ends = self.start_offsets(topic), self.end_offsets(topic)
        dropped = 0
        for p in range(cfg.partitions):
            lo, hi = starts[p], ends[p]
            cut = lo
            if cfg.retention_ms is not None:
                cut = max(cut, self._search(topic, p, lo, hi, "t", now - cfg.retention_ms * 1000))
            if cfg.retention_bytes is not None and hi > lo and self._bytes(topic, p) > cfg.retention_bytes:
                # record o carries c_o = bytes written up to and including it; keeping from o+1 leaves
                # cum - c_o bytes, so cut after the first o with c_o >= cum - limit (newest always stays)
                cum = int(self.r.hget(self._m(topic), f"cum:{p}") or 0)
                o = self._search(topic, p, lo, hi, "c", cum - cfg.retention_bytes)
                cut = max(cut, min(o + 1, hi - 1))
            if cut > lo:
                self.r.xtrim(self._s(topic, p), minid=f"0-{cut + 1}", approximate=False)
                dropped += cut - lo
        return dropped

    def _bytes(self, topic: str, p: int) -> int:
        cum = int(self.r.hget(self._m(topic), f"cum:{p}") or 0)
        first = self.r.xrange(self._s(topic, p), "-", "+", count=1)
        if not first:
            return 0
        f = first[0][1]
        return cum - (int(f[b"c"]) - len(f[b"k"]) - len(f[b"v"]))

    def partition_bytes(self, topic: str) -> dict[int, int]:
        """Payload bytes retained per partition (key + value JSON)."""
        return {p: self._bytes(topic, p) for p in range(self.topic(topic).partitions)}

    def close(self) -> None:
        """Close the connection pool."""
        self.r.close()
