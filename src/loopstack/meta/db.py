"""The metadata database (SQLAlchemy Core): SQLite by default, PostgreSQL for teams.

The schema is versioned: ``schema_version`` holds the version applied, and ``MIGRATIONS`` lists the
steps from one version to the next, so later issues add tables by appending a step. Opening a
database written by a newer loopstack fails with a clear error instead of corrupting it.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from loopstack.errors import MetadataError
from loopstack.meta.tx import lock_key, run_transaction
from loopstack.meta.url import hide_password

metadata = sa.MetaData()

schema_version = sa.Table(
    "ls_schema_version", metadata,
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

definitions = sa.Table(
    "ls_definitions", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("spec_hash", sa.String(64), nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("removed", sa.Boolean, nullable=False, default=False),
    sa.UniqueConstraint("kind", "name", "version", name="uq_definition_version"),
)


def _v1(conn: Connection) -> None:
    definitions.create(conn, checkfirst=True)


def _v2(conn: Connection) -> None:
    from loopstack.training.schema import migrate_v2
    migrate_v2(conn)


def _v3(conn: Connection) -> None:
    from loopstack.registry.schema import migrate_v3
    migrate_v3(conn)


def _v4(conn: Connection) -> None:
    from loopstack.serving.policy_store import migrate_v4
    migrate_v4(conn)


def _loop_tables(conn: Connection) -> None:
    from loopstack.loop.schema import migrate_loop
    migrate_loop(conn)


def _monitoring_tables(conn: Connection) -> None:
    from loopstack.monitoring.schema import migrate_monitoring
    migrate_monitoring(conn)


# version n is reached by running MIGRATIONS[n-1]; append new steps, never edit old ones.
# Each box owns its tables (training/schema.py, registry/schema.py, serving/policy_store.py,
# monitoring/schema.py);
# this list only orders them.
MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _loop_tables, _monitoring_tables]
SCHEMA_VERSION = len(MIGRATIONS)
CONNECT_TIMEOUT_S = 10  # PostgreSQL: seconds a server gets to answer before opening the store fails


def _now() -> datetime:
    return datetime.now(timezone.utc)


class MetadataStore:
    """Connection to the metadata database; migrates it to the current schema on open."""

    def __init__(self, url: str) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"future": True}
        try:
            if url.startswith("sqlite"):
                kwargs["connect_args"] = {"timeout": 30}
            elif url.startswith("postgresql"):
                if "connect_timeout" not in sa.engine.make_url(url).query:  # libpq's default waits forever
                    kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
                # loopstack's writers serialize on explicit locks (model generation rows, advisory locks) and
                # re-read after taking them, which is correct under read committed. Pinned, so a server
                # default of serializable does not turn every wait for a hot model into an abort and retry.
                kwargs["isolation_level"] = "READ COMMITTED"
            self.engine: Engine = sa.create_engine(url, **kwargs)
            if url.startswith("sqlite"):
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            self.migrate()
        except (ImportError, sa.exc.ArgumentError) as exc:  # a driver that is not installed, e.g. +asyncpg
            raise MetadataError(
                f"cannot open the metadata store at {hide_password(url)}: {exc}. Check metadata.url in loopstack.yaml: "
                "loopstack talks to PostgreSQL through psycopg (postgresql+psycopg://user@host:5432/db)"
            ) from None
        except sa.exc.OperationalError as exc:
            raise MetadataError(
                f"cannot open the metadata store at {hide_password(url)}: {' '.join(str(exc.orig).split())}. "
                "Check metadata.url / metadata.path in loopstack.yaml and that the server is running "
                f"(a server gets {CONNECT_TIMEOUT_S} s to answer unless the URL sets ?connect_timeout=N)"
            ) from exc

    def migrate(self) -> int:
        """Bring the schema to SCHEMA_VERSION; returns the version found before.

        One transaction under a lock, so processes opening a fresh database at the same time
        migrate it once (PostgreSQL DDL is transactional; SQLite holds the write lock)."""
        return run_transaction(self.engine, self._migrate)

    def _migrate(self, conn: Connection) -> int:
        lock_key(conn, "loopstack:migrate")
        schema_version.create(conn, checkfirst=True)
        current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0
        if current > SCHEMA_VERSION:
            raise MetadataError(
                f"the metadata store {hide_password(self.url)} has schema version {current}, newer than this "
                f"loopstack understands ({SCHEMA_VERSION}); upgrade loopstack"
            )
        for v in range(current + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[v - 1](conn)
            conn.execute(schema_version.insert().values(version=v, applied_at=_now()))
        return current

    def transaction(self, fn: Callable[[Connection], Any], **kwargs: Any) -> Any:
        """``fn(conn)`` in one write transaction, re-run on deadlocks/serialization failures (meta.tx)."""
        return run_transaction(self.engine, fn, **kwargs)

    def version(self) -> int:
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0

    # -- definitions ---------------------------------------------------------------------------
    def definitions_version(self) -> int:
        """A number that grows with every stored definition change (the newest row id; 0 when empty)."""
        with self.engine.connect() as conn:
            return conn.execute(sa.select(sa.func.max(definitions.c.id))).scalar() or 0

    def latest_definitions(self, kind: str | None = None, include_removed: bool = False) -> list[dict]:
        """The newest version of each definition (optionally of one kind)."""
        d = definitions
        newest = (sa.select(d.c.kind, d.c.name, sa.func.max(d.c.version).label("v"))
                  .group_by(d.c.kind, d.c.name).subquery())
        q = sa.select(d).join(newest, sa.and_(d.c.kind == newest.c.kind, d.c.name == newest.c.name,
                                              d.c.version == newest.c.v))
        if kind:
            q = q.where(d.c.kind == kind)
        if not include_removed:
            q = q.where(d.c.removed.is_(False))
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q.order_by(d.c.kind, d.c.name))]

    def definition_versions(self, kind: str, name: str) -> list[dict]:
        """Every stored version of one definition, oldest first."""
        d = definitions
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(d).where(d.c.kind == kind, d.c.name == name).order_by(d.c.version))
            return [_row(r) for r in rows]

    def put_definitions(self, changes: list[tuple[str, str, dict | None, str | None]]) -> list[dict]:
        """Store new versions in one transaction: (kind, name, spec, hash) adds; spec None marks removed."""
        d = definitions

        def write(conn: Connection) -> list[dict]:
            # one writer at a time: versions stay gap-free and row ids grow in commit order, so
            # definitions_version() (the newest id) never misses a change committed out of order
            lock_key(conn, "loopstack:definitions")
            out = []
            for kind, name, spec, spec_hash in changes:
                last = conn.execute(sa.select(d).where(d.c.kind == kind, d.c.name == name)
                                    .order_by(d.c.version.desc()).limit(1)).first()
                version = (last.version + 1) if last else 1
                if spec is None:  # removal: a tombstone version keeps the last spec readable
                    if last is None:
                        continue
                    spec_text, spec_hash = last.spec, last.spec_hash
                else:
                    spec_text = json.dumps(spec, sort_keys=True, default=str)
                row = {"kind": kind, "name": name, "version": version, "spec": spec_text,
                       "spec_hash": spec_hash, "created_at": _now(), "removed": spec is None}
                conn.execute(d.insert().values(**row))
                out.append(_row(row))
            return out
        return run_transaction(self.engine, write)

    def close(self) -> None:
        self.engine.dispose()


def _row(r: Any) -> dict:
    m = dict(r._mapping) if hasattr(r, "_mapping") else dict(r)
    m["spec"] = json.loads(m["spec"]) if isinstance(m["spec"], str) else m["spec"]
    return m


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.close()

