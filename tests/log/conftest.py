"""Fixtures for the event-log tests: `log` runs each test against every backend."""
from __future__ import annotations

import uuid

import pytest

from loopstack.features.definitions import Field
from loopstack.log import TopicConfig, open_log

BACKENDS = ["local", "redis"]


@pytest.fixture(params=BACKENDS)
def log(request, tmp_path):
    """A fresh event log: LocalLog in tmp_path, or RedisLog on the session redis-server with a unique prefix."""
    if request.param == "local":
        lg = open_log("local", path=tmp_path / "log", segment_bytes=2048, index_interval=256)
    else:
        url = request.getfixturevalue("redis_url")
        lg = open_log("redis", url=url, prefix=f"t{uuid.uuid4().hex[:10]}")
    yield lg
    lg.close()


EVENTS_SCHEMA = (Field("user", "string"), Field("n", "int64"), Field("amount", "float64", required=False),
                 Field("at", "timestamp", required=False))


@pytest.fixture
def events(log):
    """A 3-partition topic keyed by `user`, with a schema."""
    return log.create_topic(TopicConfig("events", 3, EVENTS_SCHEMA, key_field="user"))
