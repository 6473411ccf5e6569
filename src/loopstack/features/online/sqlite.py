"""The embedded online store: one SQLite file in WAL mode (the default backend).

Layout: ``kv(hash, field, value)`` WITHOUT ROWID, primary key (hash, field), so one entity's hash
is one contiguous B-tree range; ``progress(name, value)`` holds the marks. Durability:
``synchronous=FULL`` -- in WAL mode that fsyncs the log on every commit, so a batch is on disk when
`write` returns (the contract; progress marks make streaming exactly-once only if they survive a
power cut). NORMAL would be faster per commit but may lose the last commits on power loss. One
writer and many readers, across threads and processes: readers never block (WAL snapshots),
writers wait for each other up to `timeout` (busy_timeout). Connections are per thread and per
process (a forked child opens its own). Serving reads (`lookup`) memory-map the file, see there.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable

from loopstack.errors import ConfigError
from loopstack.features.online.base import FORKS, OnlineStore, WriteBatch, check_batch

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (hash TEXT NOT NULL, field TEXT NOT NULL, value BLOB NOT NULL,
                               PRIMARY KEY (hash, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS progress (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
_MMAP_BYTES = 1 << 40  # `lookup` maps the file (SQLite caps it at its build's maximum, 2 GiB here)
_MAX_IN = 256  # more keys than this: one query over json_each(?) instead of ? placeholders
_MADV_POPULATE_READ = 22


def _upper(prefix: str) -> str:
    """The smallest string greater than every string starting with `prefix` (prefix non-empty)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def populate_map(path: str) -> int:
    """Map every page of this process's memory maps of the file `path` now (``MADV_POPULATE_READ``, Linux
    5.14+), so that a serving read never takes a page fault for a page it touches first. Bytes populated;
    0 where the kernel or platform cannot (then nothing changes)."""
    import ctypes
    import ctypes.util
    try:
        real = os.path.realpath(path)
        ranges = []
        with open("/proc/self/maps") as fh:
            for line in fh:
                parts = line.split(None, 5)
                if len(parts) == 6 and parts[5].rstrip("\n") == real:
                    start, end = parts[0].split("-")
                    ranges.append((int(start, 16), int(end, 16)))
        madvise = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).madvise
        madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    except (OSError, AttributeError):
        return 0
    done = 0
    for start, end in ranges:
        if madvise(start, end - start, _MADV_POPULATE_READ) == 0:
            done += end - start
    return done


class SQLiteOnlineStore(OnlineStore):
    """Hashes in one SQLite file (WAL, synchronous=FULL); atomic batches in one transaction. `populate`: map
    the whole file into a serving reader at its first `lookup` (`online.populate`; see `lookup`). `cache_mb`:
    the page cache of each connection that reads and writes without the memory map (`online.cache_mb`;
    0: SQLite's default, 2 MiB). A write of many entities touches pages all over the file: with 2 MiB they
    are read from the OS and evicted again within one transaction: a windowed materialization of 100,000
    entities ran about 10 % faster with 256 MiB, and streaming no faster (docs/online-store.md). The cache
    fills only as pages are used."""

    name = "sqlite"
    unavailable = (sqlite3.OperationalError,)   # locked past busy_timeout, disk I/O error, file gone

    def __init__(self, path: str | Path, *, timeout: float = 30.0, mmap: int = _MMAP_BYTES,
                 populate: bool = True, cache_mb: int = 0) -> None:
        self.path = str(path)
        self.populate = populate
        self.cache_kib = int(cache_mb) * 1024
        self.populating: threading.Thread | None = None   # the thread of the last populate_map started
        self.timeout = timeout
        self.mmap = mmap if self.path != ":memory:" else 0   # (a second connection would be another database)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._sql: dict[tuple[int, int], str] = {}
        try:
            if self.path != ":memory:":
                Path(self.path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            con = self._con()
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    con.execute(stmt)
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise ConfigError(f"online store: cannot open the SQLite file {self.path} ({exc}); set "
                              "`online.path` in loopstack.yaml to a SQLite file (or a new one) in a folder you can "
                              "write to") from None

    def _con(self, mapped: bool = False) -> sqlite3.Connection:
        """This thread's connection; `mapped`: the one that memory-maps the file (for `lookup`)."""
        loc = self._local
        if getattr(loc, "forks", None) != FORKS[0]:   # new thread, or a forked child: connections of its own
            loc.con = loc.mcon = None
            loc.forks, loc.populated = FORKS[0], False
        con = loc.mcon if mapped else loc.con
        if con is None:
            con = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False)
            con.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = FULL")
            if mapped:
                con.execute(f"PRAGMA mmap_size = {int(self.mmap)}")
                loc.mcon = con
            else:
                if self.cache_kib:
                    con.execute(f"PRAGMA cache_size = -{self.cache_kib}")
                loc.con = con
            with self._lock:
                self._conns.append(con)
        return con

    def _select(self, n_keys: int, n_fields: int) -> str:
        sql = self._sql.get((n_keys, n_fields))
        if sql is None:
            where = ("hash IN (SELECT value FROM json_each(?))" if n_keys > _MAX_IN
                     else f"hash IN ({','.join('?' * n_keys)})")
            if n_fields:
                where += (" AND field IN (SELECT value FROM json_each(?))" if n_fields > _MAX_IN
                          else f" AND field IN ({','.join('?' * n_fields)})")
            sql = self._sql[(n_keys, n_fields)] = f"SELECT hash, field, value FROM kv WHERE {where}"
        return sql

    def read(self, hash_keys: Iterable[str], fields: Iterable[str] | None = None) -> dict[str, dict[str, bytes]]:
        """The fields of each hash in one query (all fields if `fields` is None); missing hashes absent."""
        return self._read(self._con(), hash_keys, fields)

    def lookup(self, hash_keys: Iterable[str]) -> dict[str, dict[str, bytes]]:
        """`read` of whole hashes for a serving read, on a connection that memory-maps the file (unless
        ``mmap=0``): no read() syscall and page copy per B-tree page, and a cold page comes in with the
        kernel's readahead (at a million entities, 4 KiB reads from disk made a fresh process ~5x slower).
        Batch jobs `read` unmapped, so scanning a big store does not count the file in their RSS.

        With `populate`, a thread's first `lookup` also starts a background thread (`populating`) that maps
        every page of the file into the process (`populate_map`, with the GIL released): a first touch of a
        page otherwise costs a page fault, which on this project's virtual machine put 0.1 ms into the p99
        of a fresh process (benchmarks/b2_first_touch.py). Reads go on meanwhile. It costs one pass over
        the file's pages (78 ms for the 1.1 GB B2 store in the page cache; from disk if the file is not
        cached), and the process's RSS then counts the file (shared page-cache pages, not private memory)."""
        con = self._con(mapped=bool(self.mmap))
        out = self._read(con, hash_keys, None)
        loc = self._local
        if self.populate and self.mmap and not getattr(loc, "populated", False):
            loc.populated = True
            self.populating = threading.Thread(target=populate_map, args=(self.path,), daemon=True,
                                               name="online-populate")
            self.populating.start()
        return out

    def _read(self, con: sqlite3.Connection, hash_keys: Iterable[str],
              fields: Iterable[str] | None) -> dict[str, dict[str, bytes]]:
        keys = list(hash_keys)
        if not keys:
            return {}
        flds = None if fields is None else list(fields)
        if flds is not None and not flds:
            return {}
        params: list = [json.dumps(keys)] if len(keys) > _MAX_IN else keys
        if flds:
            params = params + ([json.dumps(flds)] if len(flds) > _MAX_IN else flds)
        rows = con.execute(self._select(len(keys), len(flds or ())), params).fetchall()
        out: dict[str, dict[str, bytes]] = {}
        for h, f, v in rows:
            d = out.get(h)
            if d is None:
                d = out[h] = {}
            d[f] = v
        return out

    def write(self, batch: WriteBatch) -> None:
        """Drops, deletes, puts and progress marks in one IMMEDIATE transaction (rolled back on error)."""
        check_batch(batch)
        if not len(batch) and not batch.progress:
            return
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            if batch.drop:
                con.executemany("DELETE FROM kv WHERE hash = ?", [(h,) for h in batch.drop])
            if batch.deletes:
                con.executemany("DELETE FROM kv WHERE hash = ? AND field = ?",
                                [(h, f) for h, fs in batch.deletes.items() for f in fs])
            if batch.puts:
                con.executemany("INSERT OR REPLACE INTO kv (hash, field, value) VALUES (?, ?, ?)",
                                [(h, f, bytes(v)) for h, fs in batch.puts.items() for f, v in fs.items()])
            if batch.progress:
                con.executemany("INSERT OR REPLACE INTO progress (name, value) VALUES (?, ?)",
                                list(batch.progress.items()))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def progress(self, prefix: str = "") -> dict[str, str]:
        """Progress marks whose name starts with `prefix`."""
        con = self._con()
        if not prefix:
            return dict(con.execute("SELECT name, value FROM progress").fetchall())
        return dict(con.execute("SELECT name, value FROM progress WHERE name >= ? AND name < ?",
                                (prefix, _upper(prefix))).fetchall())

    def scan(self, prefix: str, count: int | None = None) -> list[str]:
        """Hash keys starting with `prefix` (at most `count` of them)."""
        sql, params = "SELECT DISTINCT hash FROM kv", []
        if prefix:
            sql, params = sql + " WHERE hash >= ? AND hash < ?", [prefix, _upper(prefix)]
        if count is not None:
            sql, params = sql + " LIMIT ?", params + [int(count)]
        return [r[0] for r in self._con().execute(sql, params).fetchall()]

    def clear(self, prefix: str = "") -> int:
        """Drop every hash and progress mark starting with `prefix`; returns the number of hashes dropped."""
        cond, params = ("WHERE hash >= ? AND hash < ?", (prefix, _upper(prefix))) if prefix else ("", ())
        con = self._con()
        con.execute("BEGIN IMMEDIATE")
        try:
            n = con.execute(f"SELECT count(DISTINCT hash) FROM kv {cond}", params).fetchone()[0]
            con.execute(f"DELETE FROM kv {cond}", params)
            con.execute(f"DELETE FROM progress {cond.replace('hash', 'name')}", params)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return n

    def close(self) -> None:
        """Close every connection this store opened (in any thread)."""
        with self._lock:
            conns, self._conns = self._conns, []
        for con in conns:
            try:
                con.close()
            except sqlite3.Error:
                pass
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"SQLiteOnlineStore({self.path!r})"
