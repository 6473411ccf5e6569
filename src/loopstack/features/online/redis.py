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

import functools
import os
import socket
import threading
import time
from typing import Iterable

from loopstack.errors import ConfigError
from loopstack.features.online.base import FORKS, OnlineStore, WriteBatch, check_batch
from loopstack.redis_url import redis_from_url


def _pack(args: list[bytes]) -> bytes:
    """One command in the Redis protocol (RESP): ``*<n>`` then ``$<len> <bytes>`` per argument."""
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


_MULTI, _EXEC = _pack([b"MULTI"]), _pack([b"EXEC"])
_HGETALL = b"*2\r\n$7\r\nHGETALL\r\n$%d\r\n%b\r\n"   # one HGETALL <key>, packed by one %-format
try:
    import hiredis  # noqa: F401 - the C reply parser of `_read_replies`
    _HAS_HIREDIS = True
except ImportError:  # pragma: no cover - hiredis is a dependency of the redis extra
    _HAS_HIREDIS = False
_RAW_MIN = 256  # batches with this many field operations or more are packed by hand (`_transaction`)
SPIN_US = 200   # a serving read polls for Redis's reply this long before it sleeps in recv (see `_recv`)


def _recv(sock: socket.socket, spin_s: float) -> bytes:
    """The next bytes on `sock`: polled without blocking for up to `spin_s` seconds, then a blocking recv.
    A reply on loopback or a LAN usually comes within ~100 us; sleeping for it costs a wake-up, which on
    a virtual machine is often longer than the wait itself (measured in docs/online-store.md)."""
    if spin_s > 0 and type(sock) is socket.socket:   # (not TLS: its bytes are not the socket's)
        # a socket with a timeout (redis-py's default) is non-blocking underneath, and its recv polls
        # before reading, flags or not: read the descriptor directly then
        if sock.gettimeout() is None:
            poll = functools.partial(sock.recv, 1 << 20, socket.MSG_DONTWAIT)
        else:
            poll = functools.partial(os.read, sock.fileno(), 1 << 20)
        end = time.perf_counter() + spin_s
        while True:
            try:
                return poll()
            except (BlockingIOError, InterruptedError):
                if time.perf_counter() >= end:
                    break
    return sock.recv(1 << 20)


def _read_replies(conn, n: int, spin_s: float = 0.0) -> list | None:  # noqa: ANN001 - redis.Connection
    """`n` replies read straight off the connection's socket with hiredis's C reader (error replies
    come back as exception objects, not raised); None without hiredis or a plain socket. `spin_s`:
    poll for each chunk this long before blocking (`_recv`)."""
    try:
        import hiredis
    except ImportError:
        return None
    sock = getattr(conn, "_sock", None)
    if sock is None or not hasattr(sock, "recv"):
        return None
    reader = hiredis.Reader()
    out: list = []
    while len(out) < n:
        data = _recv(sock, spin_s)
        if not data:
            raise ConnectionError("Redis closed the connection before it replied")
        reader.feed(data)
        while len(out) < n:
            r = reader.gets()
            if r is False:
                break
            out.append(r)
    return out


def _glob_escape(s: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in s)


class RedisOnlineStore(OnlineStore):
    """Hashes on Redis with MULTI/EXEC batches; reads pipelined in one round trip. `spin_us`: how long a
    serving read polls for the reply before it sleeps in recv (`online.spin_us`; 0: never)."""

    name = "redis"

    def __init__(self, url: str, prefix: str = "loopstack", spin_us: int = SPIN_US) -> None:
        import redis
        if spin_us < 0:
            raise ConfigError(f"online store: spin_us={spin_us} is negative; set `online.spin_us` to 0 (never "
                              "poll) or more")
        self.url, self.prefix = url, prefix
        self._spin_s = spin_us / 1e6
        self._h = f"{prefix}:oh:"
        self._p = f"{prefix}:op"
        self.r = redis_from_url(url, "online store", "online.url")
        self.unavailable = (redis.ConnectionError, redis.TimeoutError)   # server down, restarting, too slow
        self._local = threading.local()
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
        if flds is None:
            raw = self._hgetall_raw(keys)
            if raw is not None:
                return raw
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

    def _raw_conn(self):  # noqa: ANN202 - redis.Connection
        """This thread's connection for `_hgetall_raw`, kept out of the pool (taking one from the pool
        and giving it back on every read costs more than the read at one key)."""
        loc = self._local
        conn = getattr(loc, "conn", None)
        if conn is None or loc.forks != FORKS[0]:
            conn = loc.conn = self.r.connection_pool.get_connection()
            loc.forks = FORKS[0]
        elif getattr(conn, "_sock", None) is None:
            conn.connect()
        return conn

    def _hgetall_raw(self, keys: list[str]) -> dict[str, dict[str, bytes]] | None:
        """`read` of whole hashes with the protocol packed here and the replies parsed by hiredis
        straight off the socket: HGETALL for one key, MULTI + one HGETALL per key + EXEC for many (one
        snapshot). Several times less client CPU than a redis-py pipeline. None when hiredis or a
        plain socket is not available (then the pipeline path reads)."""
        import redis
        h = self._h.encode()
        gets = [_HGETALL % (len(hk), hk) for hk in [h + k.encode() for k in keys]]   # = _pack([b"HGETALL", hk])
        cmds = gets if len(keys) == 1 else [_MULTI, *gets, _EXEC]
        for attempt in (0, 1):   # a read is idempotent: retry once on a new connection (e.g. idle timeout)
            conn = self._raw_conn()
            sock = getattr(conn, "_sock", None)
            if not _HAS_HIREDIS or not hasattr(sock, "recv") or str(getattr(conn, "protocol", 2)) not in "23":
                return None   # (checked before sending: nothing is left unread on the connection)
            try:
                conn.send_packed_command([b"".join(cmds)], check_health=False)
                replies = _read_replies(conn, len(cmds), self._spin_s)
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                conn.disconnect()
                if attempt:
                    raise
                continue
            except BaseException:
                conn.disconnect()
                raise
            if replies is None:
                return None
            res = replies if len(keys) == 1 else replies[-1]
            errors = [r for r in replies if isinstance(r, Exception)]
            if errors or not isinstance(res, list):
                raise redis.ResponseError(str(errors[0] if errors else f"unexpected reply {res!r}"))
            out: dict[str, dict[str, bytes]] = {}
            for k, got in zip(keys, res):
                if isinstance(got, Exception):
                    raise redis.ResponseError(str(got))
                if got:   # RESP3: a map; RESP2: a flat [field, value, ...] list
                    items = got.items() if isinstance(got, dict) else zip(got[::2], got[1::2])
                    out[k] = {f.decode(): v for f, v in items}
            return out
        return None  # pragma: no cover - the loop returns or raises

    def write(self, batch: WriteBatch) -> None:
        """Drops, HDELs, HSETs and progress marks in one MULTI/EXEC transaction (large batches: the
        protocol packed here and sent in one write, see `_transaction`)."""
        check_batch(batch)
        if not len(batch) and not batch.progress:
            return
        if len(batch) < _RAW_MIN:
            self._write_pipeline(batch)
            return
        self._transaction([_MULTI, *self._commands(batch), _EXEC])

    def write_columns(self, batch: WriteBatch, keys, field: str, values) -> None:  # noqa: ANN001 - Arrow arrays
        """`batch` and then ``HSET keys[i] field values[i]`` for every i, in one MULTI/EXEC (atomic, like
        `write`). `keys`: Arrow string array, `values`: Arrow binary/string array, same length, no
        nulls. Those commands are packed by Arrow, without a Python object per hash (bulk materialization)."""
        import pyarrow as pa
        import pyarrow.compute as pc
        check_batch(batch)
        if len(keys) != len(values) or keys.null_count or values.null_count:
            raise ValueError(f"write_columns: keys and values must be equal-length arrays without nulls "
                             f"(got {len(keys)} keys with {keys.null_count} nulls, {len(values)} values with "
                             f"{values.null_count} nulls)")
        if not len(keys):
            self.write(batch)
            return
        lb = pa.large_binary()

        def lit(b: bytes) -> pa.Scalar:
            return pa.scalar(b, lb)
        k, v = pc.cast(keys, lb), pc.cast(values, lb)
        h, fb = self._h.encode(), field.encode()
        klen = pc.cast(pc.cast(pc.add(pc.binary_length(k), len(h)), pa.string()), lb)
        vlen = pc.cast(pc.cast(pc.binary_length(v), pa.string()), lb)
        packed = pc.binary_join_element_wise(
            lit(b"*4\r\n$4\r\nHSET\r\n$"), klen, lit(b"\r\n" + h), k,
            lit(b"\r\n$%d\r\n%b\r\n$" % (len(fb), fb)), vlen, lit(b"\r\n"), v, lit(b"\r\n"), lit(b""))
        if isinstance(packed, pa.ChunkedArray):
            packed = packed.combine_chunks()
        import numpy as np
        bufs = packed.buffers()
        offs = np.frombuffer(bufs[1], dtype=np.int64)[packed.offset:packed.offset + len(packed) + 1]
        body = memoryview(bufs[2])[int(offs[0]):int(offs[-1])]
        self._transaction([_MULTI, *self._commands(batch)], body, len(packed), [_EXEC])

    def _commands(self, batch: WriteBatch) -> list[bytes]:
        """The batch's commands in the Redis protocol (without MULTI/EXEC)."""
        h = self._h.encode()
        cmds: list[bytes] = []
        for k in batch.drop:
            cmds.append(_pack([b"DEL", h + k.encode()]))
        for k, fs in batch.deletes.items():
            if fs:
                cmds.append(_pack([b"HDEL", h + k.encode(), *(f.encode() for f in fs)]))
        one = b"*4\r\n$4\r\nHSET\r\n$%d\r\n%b%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n"
        for k, m in batch.puts.items():
            if len(m) == 1:  # the common case (bulk materialization): one field, one format
                (f, v), = m.items()
                kb, fb, vb = k.encode(), f.encode(), bytes(v)
                cmds.append(one % (len(h) + len(kb), h, kb, len(fb), fb, len(vb), vb))
            elif m:
                args = [b"HSET", h + k.encode()]
                for f, v in m.items():
                    args += (f.encode(), bytes(v))
                cmds.append(_pack(args))
        if batch.progress:
            args = [b"HSET", self._p.encode()]
            for f, v in batch.progress.items():
                args += (f.encode(), v.encode())
            cmds.append(_pack(args))
        return cmds

    def _write_pipeline(self, batch: WriteBatch) -> None:
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

    def _transaction(self, cmds: list[bytes], body: bytes | memoryview = b"", n_body: int = 0,
                     tail: list[bytes] | tuple = ()) -> None:
        """Send MULTI, the packed commands (`cmds`, then `n_body` commands already packed in `body`,
        then `tail`, ending with EXEC) in one write; read the replies. A command that
        fails to queue makes EXEC fail (EXECABORT): nothing is applied, and the error is raised.

        Packing the protocol here (rather than one redis-py pipeline call per command) is what
        makes writing ~10^5 hashes per batch cheap (bulk materialization)."""
        import redis
        pool = self.r.connection_pool
        conn = pool.get_connection()
        try:
            n = len(cmds) + n_body + len(tail)
            conn.send_packed_command([b"".join(cmds), body, b"".join(tail)] if n_body else [b"".join(cmds)],
                                     check_health=False)
            replies = _read_replies(conn, n)
            if replies is None:  # no hiredis: redis-py's parser, one reply at a time
                replies = []
                for _ in range(n):
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            errors = [r for r in replies[:-1] if isinstance(r, Exception)]  # +OK, +QUEUED... or errors
            exec_reply = replies[-1]
            if errors or isinstance(exec_reply, Exception):
                err = (errors or [exec_reply])[0]
                raise err if isinstance(err, redis.ResponseError) else redis.ResponseError(str(err))
            for r in exec_reply or ():
                if isinstance(r, Exception):
                    raise r if isinstance(r, redis.ResponseError) else redis.ResponseError(str(r))
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

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


