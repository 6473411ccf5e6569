"""Write transactions that behave the same on SQLite and PostgreSQL under concurrency.

`run_transaction(engine, fn)` runs ``fn(conn)`` in one transaction and re-runs it from the start
when the database aborted it for a transient reason: a serialization failure (40001, e.g. under
``default_transaction_isolation = serializable``), a deadlock (40P01), a lock timeout (55P03) or a
busy SQLite file. On SQLite the transaction starts with ``BEGIN IMMEDIATE`` so a read-modify-write
holds the write lock from its first read (pysqlite would otherwise read outside any transaction).
`lock_key` serializes writers on one logical key (PostgreSQL advisory lock; SQLite already holds
the database write lock), `insert_ignore` / `upsert` are ``INSERT ... ON CONFLICT`` on both.
Every retry is counted per process (`retry_counts`), so tests can show that retries happened and
that none surfaced to the caller.
"""
from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loopstack.errors import MetadataError

T = TypeVar("T")
log = logging.getLogger("loopstack.meta")

TRANSIENT_SQLSTATES = {"40001": "serialization_failure", "40P01": "deadlock", "55P03": "lock_not_available"}
DEFAULT_ATTEMPTS = 12
_RETRIES: Counter = Counter()


def retry_counts() -> dict[str, int]:
    """Transactions re-run in this process since start (or the last reset), by reason."""
    return dict(_RETRIES)


def reset_retry_counts() -> None:
    _RETRIES.clear()


def transient_reason(exc: BaseException) -> str | None:
    """Why the database aborted a transaction that is safe to re-run (None: not transient)."""
    orig = getattr(exc, "orig", None)
    code = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if code in TRANSIENT_SQLSTATES:
        return TRANSIENT_SQLSTATES[code]
    if isinstance(exc, sa.exc.OperationalError) and "database is locked" in str(orig):
        return "sqlite_busy"
    return None


def run_transaction(engine: Engine, fn: Callable[[Connection], T], *, attempts: int = DEFAULT_ATTEMPTS,
                    retry_on: tuple[type[BaseException], ...] = ()) -> T:
    """``fn(conn)`` in one write transaction, re-run on transient aborts (and on `retry_on` errors,
    e.g. an IntegrityError from a concurrent insert of the same key); returns what `fn` returned.

    `fn` must keep its side effects inside the transaction: it may run more than once.
    """
    sqlite = engine.dialect.name == "sqlite"
    for attempt in range(1, attempts + 1):
        try:
            with engine.begin() as conn:
                if sqlite:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                return fn(conn)
        except sa.exc.DBAPIError as exc:
            reason = transient_reason(exc) or (type(exc).__name__ if retry_on and isinstance(exc, retry_on) else None)
            if reason is None:
                raise
            # SQLite reports busy only after waiting out its 30 s busy timeout: one more try, not twelve
            if attempt >= (min(attempts, 2) if reason == "sqlite_busy" else attempts):
                raise MetadataError(
                    f"the metadata database aborted this transaction {attempt} times ({reason}: "
                    f"{' '.join(str(exc.orig).split())[:200]}); the database is overloaded or a transaction holds "
                    "locks for too long. Retry later, or lower the number of concurrent writers") from exc
            _RETRIES[reason] += 1
            log.debug("metadata transaction aborted (%s), attempt %d of %d: re-running", reason, attempt, attempts)
            time.sleep(min(0.002 * 2 ** attempt, 0.25) * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")


def lock_key(conn: Connection, key: str) -> None:
    """Hold a lock on `key` until the transaction ends: writers of the same key run one at a time.

    PostgreSQL: a transaction-scoped advisory lock. SQLite: nothing to do, `run_transaction` began
    with BEGIN IMMEDIATE, which holds the write lock of the whole file.
    """
    if conn.dialect.name == "postgresql":
        k = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(k)))


def _insert(conn: Connection, table: sa.Table) -> Any:
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif conn.dialect.name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise MetadataError(f"metadata backend {conn.dialect.name!r} is not supported: use sqlite or postgresql")
    return insert(table)


def insert_ignore(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]] | Mapping[str, Any],
                  keys: Sequence[str]) -> int:
    """INSERT the rows whose `keys` are not stored yet (ON CONFLICT DO NOTHING); returns how many."""
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    if not rows:
        return 0
    return conn.execute(_insert(conn, table).on_conflict_do_nothing(index_elements=list(keys)), rows).rowcount


def upsert(conn: Connection, table: sa.Table, rows: Iterable[Mapping[str, Any]], keys: Sequence[str],
           update: Sequence[str], where: Callable[[Any], Any] | None = None) -> None:
    """INSERT rows, or UPDATE the `update` columns of the stored row with the same `keys`
    (only where ``where(excluded)`` holds, if given). Rows are written in key order, so two
    transactions upserting overlapping rows lock them in the same order (no deadlock); of rows
    given twice with the same keys the last one is written."""
    unique = {tuple(r[k] for k in keys): r for r in rows}   # one row per key: the last one given wins
    if not unique:
        return
    stmt = _insert(conn, table)
    stmt = stmt.on_conflict_do_update(index_elements=list(keys), set_={c: stmt.excluded[c] for c in update},
                                      where=None if where is None else where(stmt.excluded))
    conn.execute(stmt, [unique[k] for k in sorted(unique, key=lambda t: tuple(map(str, t)))])
