"""Shared fixtures: real redis-server and PostgreSQL on loopback, started once per test session."""
from __future__ import annotations

from contextlib import contextmanager

import pytest

from tests.servers import postgres_server, redis_server


@pytest.fixture(scope="session")
def redis_url():
    """URL of a real redis-server on 127.0.0.1 (AOF, appendfsync always)."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def pg_url():
    """SQLAlchemy URL of a real PostgreSQL server on 127.0.0.1."""
    with postgres_server() as url:
        yield url


@pytest.fixture
def redis_client(redis_url):
    """A client on a flushed database, so tests never see each other's keys."""
    import redis
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.close()


META_BACKENDS = ["sqlite", "postgresql"]


@contextmanager
def _pg_database(request):
    """A new, empty database on the session's PostgreSQL server, dropped afterwards."""
    import uuid

    import sqlalchemy as sa
    base = request.getfixturevalue("pg_url")
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def _meta_database(request, folder):
    """A fresh metadata database URL for `request.param`: a SQLite file in `folder`, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{folder / 'meta.db'}"
        return
    with _pg_database(request) as url:
        yield url


@pytest.fixture(params=META_BACKENDS)
def meta_url(request, tmp_path):
    """A fresh, empty metadata database URL: a SQLite file, or a new database on the real PostgreSQL."""
    with _meta_database(request, tmp_path) as url:
        yield url


@pytest.fixture
def pg_meta_url(request):
    """A new, empty database on the real PostgreSQL (for tests that only make sense there)."""
    with _pg_database(request) as url:
        yield url


@pytest.fixture(scope="module", params=META_BACKENDS)
def module_meta_url(request, tmp_path_factory):
    """`meta_url` for module-scoped fixtures (one database shared by the tests of a module)."""
    with _meta_database(request, tmp_path_factory.mktemp("meta")) as url:
        yield url


@pytest.fixture(scope="session")
def kafka_url():
    """URL (kafka://127.0.0.1:port) of a real tansu Kafka-protocol broker on loopback."""
    from tests.servers import kafka_server
    with kafka_server() as url:
        yield url
