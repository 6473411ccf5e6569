"""Metadata store against SQLite and a real PostgreSQL: schema versioning and definition versions."""
from __future__ import annotations

import pytest
import sqlalchemy as sa

from loopstack.errors import MetadataError
from loopstack.meta import db
from loopstack.meta.db import MetadataStore


def test_fresh_store_is_at_current_schema_version(meta_url):
    store = MetadataStore(meta_url)
    assert store.version() == db.SCHEMA_VERSION
    assert store.migrate() == db.SCHEMA_VERSION  # re-opening migrates nothing
    store.close()


def test_migration_step_added_later_runs_once(meta_url, monkeypatch):
    MetadataStore(meta_url).close()
    calls = []
    extra = sa.Table("ls_test_extra", sa.MetaData(), sa.Column("x", sa.Integer))

    def v2(conn):
        calls.append(1)
        extra.create(conn)

    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS + [v2])
    monkeypatch.setattr(db, "SCHEMA_VERSION", len(db.MIGRATIONS))
    store = MetadataStore(meta_url)
    assert store.version() == db.SCHEMA_VERSION == len(db.MIGRATIONS)
    MetadataStore(meta_url).close()
    assert calls == [1]
    assert sa.inspect(store.engine).has_table("ls_test_extra")
    store.close()


def test_newer_schema_than_code_is_refused(meta_url):
    store = MetadataStore(meta_url)
    with store.engine.begin() as conn:
        conn.execute(db.schema_version.insert().values(version=99, applied_at=db._now()))
    store.close()
    with pytest.raises(MetadataError, match="schema version 99.*upgrade loopstack"):
        MetadataStore(meta_url)


def test_definition_versions_and_tombstones(meta_url):
    store = MetadataStore(meta_url)
    store.put_definitions([("entity", "author", {"a": 1}, "h1")])
    store.put_definitions([("entity", "author", {"a": 2}, "h2"), ("entity", "item", {"b": 1}, "h3")])
    store.put_definitions([("entity", "item", None, None)])
    versions = store.definition_versions("entity", "author")
    assert [v["version"] for v in versions] == [1, 2]
    assert versions[0]["spec"] == {"a": 1} and versions[1]["spec"] == {"a": 2}
    assert [r["name"] for r in store.latest_definitions("entity")] == ["author"]
    removed = store.latest_definitions("entity", include_removed=True)
    item = next(r for r in removed if r["name"] == "item")
    assert item["removed"] and item["version"] == 2 and item["spec"] == {"b": 1}
    store.close()


def test_unreachable_postgres_names_the_fix():
    with pytest.raises(MetadataError, match="cannot open the metadata store.*loopstack.yaml"):
        MetadataStore("postgresql+psycopg://nobody@127.0.0.1:1/none")


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never says a word (a hung or firewalled server)."""
    import socket
    srv = socket.create_server(("127.0.0.1", 0))
    yield srv.getsockname()[1]
    srv.close()


def test_postgres_that_never_answers_fails_instead_of_hanging(silent_server, monkeypatch):
    import threading
    monkeypatch.setattr(db, "CONNECT_TIMEOUT_S", 2, raising=False)
    outcome: list = []

    def open_store():
        try:
            MetadataStore(f"postgresql+psycopg://u@127.0.0.1:{silent_server}/db")
        except Exception as exc:  # noqa: BLE001 - the test looks at what it was
            outcome.append(exc)

    t = threading.Thread(target=open_store, daemon=True)
    t.start()
    t.join(120)  # only a guard, so the test fails (does not hang the run) without a timeout
    assert outcome and isinstance(outcome[0], MetadataError), "opening the store did not give up"
    assert "metadata.url" in str(outcome[0]) and "connect_timeout" in str(outcome[0])


def test_postgres_driver_that_is_not_installed_is_a_metadata_error():
    with pytest.raises(MetadataError, match=r"u:\*\*\*@h/db.*asyncpg.*metadata.url.*postgresql\+psycopg://"):
        MetadataStore("postgresql+asyncpg://u:pw@h/db")


def test_concurrent_definition_changes_get_gap_free_versions(meta_url):
    """Four threads apply changes to the same definition at once: versions 1..40, none rejected."""
    import threading
    store = MetadataStore(meta_url)
    errors: list = []
    barrier = threading.Barrier(4)

    def apply(t):
        barrier.wait()
        try:
            for i in range(10):
                store.put_definitions([("entity", "author", {"t": t, "i": i}, f"h{t}-{i}")])
        except Exception as exc:  # noqa: BLE001 - asserted on
            errors.append(exc)
    threads = [threading.Thread(target=apply, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert errors == []
    assert [v["version"] for v in store.definition_versions("entity", "author")] == list(range(1, 41))
    assert store.definitions_version() == 40
    store.close()


def test_processes_opening_a_fresh_database_together_migrate_it_once(meta_url):
    """Migration runs under a lock: four processes opening an empty database at once all succeed."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    with ctx.Pool(4) as pool:
        versions = pool.map(_open_and_report, [meta_url] * 4)
    assert sorted(v[1] for v in versions) == [db.SCHEMA_VERSION] * 4
    assert sorted(v[0] for v in versions) == [0, db.SCHEMA_VERSION, db.SCHEMA_VERSION, db.SCHEMA_VERSION]
    store = MetadataStore(meta_url)
    with store.engine.connect() as conn:
        rows = conn.execute(db.schema_version.select()).all()
    assert sorted(r.version for r in rows) == list(range(1, db.SCHEMA_VERSION + 1))
    store.close()


def _open_and_report(url: str) -> tuple[int, int]:
    """(schema version found when this process migrated, version after): one process finds 0."""
    found: list[int] = []
    real = MetadataStore.migrate

    def spy(self):
        found.append(real(self))
        return found[-1]
    MetadataStore.migrate = spy
    store = MetadataStore(url)
    v = store.version()
    store.close()
    return found[0], v
