"""Shared fixtures: real redis-server and PostgreSQL on loopback, started once per test session."""
from __future__ import annotations

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
