"""Fixtures for the event-log tests: `log` runs each test against every backend."""
from __future__ import annotations

import uuid

import pytest

from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import TopicConfig, open_log

BACKENDS = ["local", "redis", "kafka"]

# Excluded where the test server cannot do it: the test still runs there, as a strict xfail that must
# raise LogError, so it turns red (and gets re-enabled) the day the broker learns the feature.
NO_DELETE_RECORDS = pytest.mark.broker_cannot(
    "kafka", reason="tansu 0.6 does not implement Kafka's DeleteRecords API (the broker panics 'not yet "
                    "implemented' and drops the connection), so KafkaLog.apply_retention cannot move the log start "
                    "offset there; the retention cut itself is tested in test_kafka_native.py")


def drop_kafka_topics(url: str, prefix: str) -> None:
    """Delete a test's Kafka topics (memory-only broker: keeps the session's broker small)."""
    from confluent_kafka.admin import AdminClient
    from loopstack.log.kafka import parse_kafka_url
    admin = AdminClient({"bootstrap.servers": parse_kafka_url(url)[0]})
    names = [t for t in admin.list_topics(timeout=10).topics if t.startswith(prefix + ".") or prefix + "." in t]
    if names:
        for fut in admin.delete_topics(names, operation_timeout=10).values():
            fut.result()


@pytest.fixture(params=BACKENDS)
def log(request, tmp_path):
    """A fresh event log: LocalLog in tmp_path, RedisLog on the session redis-server with a unique prefix,
    or KafkaLog on the session tansu broker with a unique topic prefix."""
    mark = request.node.get_closest_marker("broker_cannot")
    if mark is not None and request.param in mark.args:
        request.node.add_marker(pytest.mark.xfail(raises=LogError, strict=True, reason=mark.kwargs["reason"]))
    prefix = f"t{uuid.uuid4().hex[:10]}"
    if request.param == "local":
        lg = open_log("local", path=tmp_path / "log", segment_bytes=2048, index_interval=256)
    elif request.param == "redis":
        lg = open_log("redis", url=request.getfixturevalue("redis_url"), prefix=prefix)
    else:
        lg = open_log("kafka", url=request.getfixturevalue("kafka_url"), prefix=prefix)
    yield lg
    lg.close()
    if request.param == "kafka":
        drop_kafka_topics(request.getfixturevalue("kafka_url"), prefix)


EVENTS_SCHEMA = (Field("user", "string"), Field("n", "int64"), Field("amount", "float64", required=False),
                 Field("at", "timestamp", required=False))


@pytest.fixture
def events(log):
    """A 3-partition topic keyed by `user`, with a schema."""
    return log.create_topic(TopicConfig("events", 3, EVENTS_SCHEMA, key_field="user"))
