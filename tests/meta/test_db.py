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
