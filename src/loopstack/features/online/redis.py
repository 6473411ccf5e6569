"""The online store on a real Redis server: one Redis hash per store hash.

Keys: ``<prefix>:oh:<hash>`` for hashes, one Redis hash ``<prefix>:op`` for the progress marks.
A write is one MULTI/EXEC pipeline (drops, HDELs, HSETs, marks): Redis runs it as one isolated
unit, and a command that fails to queue aborts all of it (EXECABORT). Redis does not roll back a
command that fails while *executing* (e.g. WRONGTYPE): that cannot happen here because batches
are validated before sending and every key under the prefix is a hash written by this class.
Durability is the server's: with ``appendonly yes`` + ``appendfsync always`` an acknowledged
batch is on disk (the test server runs so); with ``everysec`` up to a second can be lost.
"""
from __future__ import annotations

from typing import Iterable

from loopstack.errors import ConfigError
from loopstack.features.online.base import OnlineStore, WriteBatch, check_batch


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


class RedisOnlineStore(OnlineStore):
    """Hashes on Redis with MULTI/EXEC batches; reads pipelined in one round trip."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "loopstack") -> None:
        import redis
        self.url, self.prefix = url, prefix
        self._h = f"{prefix}:oh:"
        self._p = f"{prefix}:op"
        self.r = redis.Redis.from_url(url)
        try:
            self.r.ping()
        except redis.RedisError as exc:
            raise ConfigError(f"online store: cannot reach Redis at {url} ({exc}); start redis-server or fix "
                              "`online.url` in loopstack.yaml") from exc

    def read(self, hash_keys: Iterable[str], fields: Iterable[str] | None = None) -> dict[str, dict[str, bytes]]:
        """The fields of each hash (HGETALL/HMGET, one round trip, one MULTI snapshot); missing hashes absent."""
        keys = list(hash_keys)
        if not keys:
            return {}
        flds = None if fields is None else list(fields)
        if flds is not None and not flds:
            return {}
        h = self._h
        if len(keys) == 1:
            res = [self.r.hgetall(h + keys[0]) if flds is None else self.r.hmget(h + keys[0], flds)]
        else:
            pipe = self.r.pipeline(transaction=True)
            for k in keys:
                if flds is None:
                    pipe.hgetall(h + k)
                else:
                    pipe.hmget(h + k, flds)
            res = pipe.execute()
        out: dict[str, dict[str, bytes]] = {}
        for k, v in zip(keys, res):
            if flds is None:
                if v:
                    out[k] = {f.decode(): b for f, b in v.items()}
            else:
                d = {f: b for f, b in zip(flds, v) if b is not None}
                if d:
                    out[k] = d
        return out

    def write(self, batch: WriteBatch) -> None:
        """Drops, HDELs, HSETs and progress marks in one MULTI/EXEC transaction."""
        check_batch(batch)
        if not len(batch) and not batch.progress:
            return
        h = self._h
        pipe = self.r.pipeline(transaction=True)
        for k in batch.drop:
            pipe.delete(h + k)
        for k, fs in batch.deletes.items():
            if fs:
                pipe.hdel(h + k, *fs)
        for k, m in batch.puts.items():
            if m:
                pipe.hset(h + k, mapping={f: bytes(v) for f, v in m.items()})
        if batch.progress:
            pipe.hset(self._p, mapping=dict(batch.progress))
        pipe.execute()

    def progress(self, prefix: str = "") -> dict[str, str]:
        """Progress marks whose name starts with `prefix`."""
        marks = {k.decode(): v.decode() for k, v in self.r.hgetall(self._p).items()}
        return {k: v for k, v in marks.items() if k.startswith(prefix)}

    def scan(self, prefix: str, count: int | None = None) -> list[str]:
        """Hash keys starting with `prefix` (SCAN MATCH; at most `count` of them)."""
        out: dict[str, None] = {}
        n = len(self._h)
        for key in self.r.scan_iter(match=_glob_escape(self._h + prefix) + "*", count=1000):
            out[key[n:].decode()] = None  # SCAN may repeat a key
            if count is not None and len(out) >= count:
                break
        return list(out)

    def clear(self, prefix: str = "") -> int:
        """Drop every hash and progress mark starting with `prefix`; returns the number of hashes dropped."""
        keys = self.scan(prefix)
        for i in range(0, len(keys), 1000):
            self.r.unlink(*[self._h + k for k in keys[i:i + 1000]])
        marks = [k for k in self.progress(prefix)]
        if marks:
            self.r.hdel(self._p, *marks)
        return len(keys)

    def close(self) -> None:
        """Close the connection pool."""
        self.r.close()

    def __repr__(self) -> str:
        return f"RedisOnlineStore({self.url!r}, prefix={self.prefix!r})"


