"""`meta.tx.run_transaction` against real aborts: a deadlock and a serialization failure provoked on
PostgreSQL are re-run and counted, never seen by the caller; SQLite read-modify-writes are atomic;
a database that keeps aborting gives a clear error after the last attempt."""
from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from loopstack.errors import MetadataError
from loopstack.meta.tx import reset_retry_counts, retry_counts, run_transaction

md = sa.MetaData()
counters = sa.Table("t_counters", md, sa.Column("k", sa.String(8), primary_key=True),
                    sa.Column("n", sa.Integer, nullable=False))


def _engine(url):
    engine = sa.create_engine(url, isolation_level="READ COMMITTED") if url.startswith("postgresql") \
        else sa.create_engine(url, connect_args={"timeout": 30})
    md.create_all(engine)
    with engine.begin() as conn:
        conn.execute(counters.insert(), [{"k": "a", "n": 0}, {"k": "b", "n": 0}])
    return engine


def _both(fns):
    out, errors = [None] * len(fns), []

    def run(i):
        try:
            out[i] = fns[i]()
        except Exception as exc:  # noqa: BLE001 - asserted on
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out, errors


def _bump(conn, k):
    conn.execute(sa.update(counters).where(counters.c.k == k).values(n=counters.c.n + 1))


def test_a_deadlock_is_rerun_and_both_writers_succeed(pg_meta_url):
    engine = _engine(pg_meta_url)
    reset_retry_counts()
    first_lock_taken = threading.Barrier(2)

    def writer(order):
        attempts = []

        def fn(conn):
            attempts.append(1)
            _bump(conn, order[0])
            if len(attempts) == 1:
                first_lock_taken.wait(10)       # both hold their first row: the second update deadlocks
            _bump(conn, order[1])
            return len(attempts)
        return lambda: run_transaction(engine, fn)
    out, errors = _both([writer("ab"), writer("ba")])
    assert errors == [] and sorted(out) == [1, 2]      # one went through, the victim ran twice
    assert retry_counts() == {"deadlock": 1}
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(counters.c.k, counters.c.n)).all()) == {"a": 2, "b": 2}
    engine.dispose()


def test_a_serialization_failure_is_rerun_and_no_update_is_lost(pg_meta_url):
    engine = _engine(pg_meta_url)
    reset_retry_counts()
    both_read = threading.Barrier(2)

    def writer():
        attempts = []

        def fn(conn):
            attempts.append(1)
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
            n = conn.execute(sa.select(counters.c.n).where(counters.c.k == "a")).scalar_one()
            if len(attempts) == 1:
                both_read.wait(10)              # both read 0; the second writer must not write 1 again
            conn.execute(sa.update(counters).where(counters.c.k == "a").values(n=n + 1))
        return lambda: run_transaction(engine, fn)
    _, errors = _both([writer(), writer()])
    assert errors == [] and retry_counts() == {"serialization_failure": 1}
    with engine.connect() as conn:
        assert conn.execute(sa.select(counters.c.n).where(counters.c.k == "a")).scalar_one() == 2
    engine.dispose()


def test_sqlite_read_modify_write_holds_the_write_lock_from_its_first_read(tmp_path):
    engine = _engine(f"sqlite:///{tmp_path / 'c.db'}")

    def increment(conn):
        n = conn.execute(sa.select(counters.c.n).where(counters.c.k == "a")).scalar_one()
        conn.execute(sa.update(counters).where(counters.c.k == "a").values(n=n + 1))

    def worker():
        for _ in range(25):
            run_transaction(engine, increment)
    _, errors = _both([worker] * 4)
    assert errors == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(counters.c.n).where(counters.c.k == "a")).scalar_one() == 100
    engine.dispose()


class _Aborted(Exception):
    sqlstate = "40001"


def test_a_database_that_keeps_aborting_gets_a_clear_error(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'x.db'}")
    reset_retry_counts()
    calls = []

    def always_aborted(conn):
        calls.append(1)
        raise sa.exc.OperationalError("UPDATE ...", {}, _Aborted("could not serialize access"))
    with pytest.raises(MetadataError, match="aborted this transaction 3 times .serialization_failure"):
        run_transaction(engine, always_aborted, attempts=3)
    assert len(calls) == 3 and retry_counts() == {"serialization_failure": 2}
    with pytest.raises(sa.exc.IntegrityError):   # not transient, not asked for: raised at once
        run_transaction(engine, lambda c: (_ for _ in ()).throw(sa.exc.IntegrityError("INSERT", {}, Exception())))
    engine.dispose()


def test_a_serializable_server_default_does_not_change_loopstacks_isolation(pg_meta_url):
    """Writers serialize on explicit locks, so MetadataStore pins read committed: with the database's
    default set to serializable, waiters on a hot model's row would otherwise abort again and again."""
    from loopstack.meta.db import MetadataStore
    admin = sa.create_engine(pg_meta_url, isolation_level="AUTOCOMMIT")
    name = sa.engine.make_url(pg_meta_url).database
    with admin.connect() as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET default_transaction_isolation TO \'serializable\''))
    admin.dispose()
    plain = sa.create_engine(pg_meta_url)          # a new session without the pin: the new default applies
    with plain.connect() as conn:
        assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "serializable"
    plain.dispose()
    store = MetadataStore(pg_meta_url)
    assert store.transaction(lambda c: c.execute(sa.text("SHOW transaction_isolation")).scalar()) == "read committed"
    with store.engine.connect() as conn:
        assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "read committed"
    store.close()
