"""Kafka backend specifics, against the real tansu broker: what Kafka tools see, group commits without a
join, topic configs on the broker, the retention cut, and the errors a user can cause."""
from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from loopstack.config import parse_config
from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import TopicConfig, open_log, partition_for
from loopstack.log.kafka import TS_HEADER, KafkaLog, parse_kafka_url
from loopstack.log.validate import encode_value
from loopstack.project import Project

from .conftest import drop_kafka_topics


@pytest.fixture
def klog(kafka_url):
    prefix = f"n{uuid.uuid4().hex[:8]}"
    lg = KafkaLog(kafka_url, prefix=prefix)
    yield lg
    lg.close()
    drop_kafka_topics(kafka_url, prefix)


@pytest.fixture
def admin(kafka_url):
    return AdminClient({"bootstrap.servers": parse_kafka_url(kafka_url)[0]})


def _raw_consume(servers: str, topic: str, partition: int, n: int) -> list:
    c = Consumer({"bootstrap.servers": servers, "group.id": "raw", "enable.auto.commit": False})
    c.list_topics(topic, timeout=10)  # else the first fetch waits ~1 s for a metadata refresh
    c.assign([TopicPartition(topic, partition, 0)])
    out: list = []
    deadline = time.monotonic() + 10
    while len(out) < n and time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            out.append(m)
    c.close()
    return out


def test_records_are_plain_kafka_records(klog):
    klog.create_topic(TopicConfig("ev", 4))
    res = klog.append("ev", [{"i": i} for i in range(6)], key=[f"user{i}" for i in range(6)])
    p, off = res.offsets[5]
    assert p == partition_for("user5", 4)  # loopstack's crc32 routing, not Kafka's murmur2
    raw = {m.offset(): m for m in _raw_consume(klog.servers, f"{klog.prefix}.ev", p, off + 1)}
    m = raw[off]
    rec = klog.read("ev", p, off, 1)[0]
    assert m.key() == b"user5" and m.value() == encode_value({"i": 5}).encode()
    assert dict(m.headers())[TS_HEADER] == str(rec.timestamp).encode()
    assert m.timestamp()[1] == rec.timestamp // 1000  # Kafka's own timestamp: the same instant in ms


def test_durable_on_return_and_seen_by_another_process(kafka_url, klog):
    klog.create_topic(TopicConfig("ev", 2, (Field("n", "int64"),)))
    res = klog.append("ev", [{"n": i} for i in range(500)])
    other = KafkaLog(kafka_url, prefix=klog.prefix)  # fresh clients: nothing is served from klog's buffers
    try:
        assert sum(other.end_offsets("ev").values()) == 500
        assert {(r.partition, r.offset) for r in other.replay("ev")} == set(res.offsets)
        other.create_topic(TopicConfig("ev", 2, (Field("n", "string"),)))  # schema evolves elsewhere
        assert klog.append("ev", [{"n": 1}]).rejected == 1  # append re-reads the config topic
        assert [t.name for t in klog.topics()] == ["ev", "ev.dlq"]
    finally:
        other.close()


def test_group_commits_use_the_group_coordinator_without_joining(klog, admin):
    klog.create_topic(TopicConfig("ev", 3))
    klog.append("ev", [{"i": i} for i in range(30)])
    t0 = time.monotonic()
    c = klog.consumer("ev", "features")
    got = c.poll(100, timeout=2.0)
    c.commit()
    assert time.monotonic() - t0 < 5  # a group join takes ~20 s on tansu; there is none
    assert len(got) == 30
    fut = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions("features")])["features"]
    seen = {tp.partition: tp.offset for tp in fut.result(10).topic_partitions if tp.topic == f"{klog.prefix}.ev"}
    assert seen == c.position() == klog.committed("ev", "features")
    assert "features" in klog.groups("ev")


def test_topic_configs_reach_the_broker(klog, admin):
    def broker_cfg(name):
        res = ConfigResource("topic", f"{klog.prefix}.{name}")
        return {k: v.value for k, v in admin.describe_configs([res])[res].result(10).items()}

    klog.create_topic(TopicConfig("keep", 1))
    assert broker_cfg("keep")["retention.ms"] == "-1"  # never Kafka's 7-day default
    klog.create_topic(TopicConfig("keep", 1, retention_ms=60_000, retention_bytes=1 << 20))
    cfg = broker_cfg("keep")
    assert (cfg["retention.ms"], cfg["retention.bytes"]) == ("60000", str(1 << 20))
    meta = ConfigResource("topic", f"__loopstack.{klog.prefix}.topics")
    assert admin.describe_configs([meta])[meta].result(10)["cleanup.policy"].value == "compact"


def test_existing_kafka_topic_with_other_partition_count_is_refused(klog, admin):
    admin.create_topics([NewTopic(f"{klog.prefix}.legacy", 2, -1)])[f"{klog.prefix}.legacy"].result(10)
    with pytest.raises(LogError, match="already exists with 2 partition.*needs 3"):
        klog.create_topic(TopicConfig("legacy", 3))


def test_retention_cut_matches_the_other_backends(klog):
    klog.create_topic(TopicConfig("aged", 1, retention_ms=1000))
    klog.append("aged", [{"i": i} for i in range(40)])
    time.sleep(0.01)
    new = klog.append("aged", [{"i": 40 + i} for i in range(10)])
    t_new = klog.read("aged", 0, new.offsets[0][1], 1)[0].timestamp
    assert klog.retention_plan("aged", now_us=t_new + 1_000_000 - 1) == {0: 40}  # everything older than 1 s
    assert klog.retention_plan("aged", now_us=t_new) == {0: 0}
    assert klog.apply_retention("aged", now_us=t_new) == 0  # nothing to delete: no broker call

    klog.create_topic(TopicConfig("big", 1, retention_bytes=1000))
    klog.append("big", [{"i": i, "pad": "y" * 40} for i in range(100)])
    sizes = [len(encode_value(r.value)) for r in klog.replay("big")]  # no keys: payload = value bytes
    assert klog.partition_bytes("big") == {0: sum(sizes)}
    cut = klog.retention_plan("big")[0]
    assert sum(sizes[cut:]) <= 1000 < sum(sizes[cut - 1:])  # drop the fewest oldest records


def test_apply_retention_says_what_the_broker_lacks(klog):
    klog.create_topic(TopicConfig("big", 1, retention_bytes=100))
    klog.append("big", [{"pad": "z" * 50} for _ in range(10)])
    with pytest.raises(LogError, match="DeleteRecords.*retention.ms / retention.bytes"):
        klog.apply_retention("big")
    assert klog.start_offsets("big") == {0: 0}  # nothing was half-deleted


def test_offset_for_time_has_microsecond_precision(klog):
    klog.create_topic(TopicConfig("t", 1))
    for i in range(6):
        klog.append("t", [{"i": i}] * 3)
    recs = list(klog.replay("t"))
    stamps = [r.timestamp for r in recs]
    assert stamps == sorted(stamps) and len(set(stamps)) == 6  # one timestamp per append call
    for k in (3, 9, 15):
        assert klog.offset_for_time("t", 0, stamps[k]) == k
        assert klog.offset_for_time("t", 0, stamps[k] - 1) == k  # the µs before it: still the same batch
    assert klog.offset_for_time("t", 0, stamps[-1] + 1) == 18


def test_records_from_other_producers_are_readable(klog):
    klog.create_topic(TopicConfig("ext", 1))
    p = Producer({"bootstrap.servers": klog.servers})
    p.produce(f"{klog.prefix}.ext", value=b"not json", partition=0, timestamp=1_700_000_000_123)
    p.flush(10)
    rec = klog.read("ext", 0)[0]
    assert rec.value == {"_raw": "not json"} and rec.key is None
    assert rec.timestamp == 1_700_000_000_123_000  # no loopstack header: Kafka's ms timestamp


def test_config_selects_kafka_and_bad_urls_are_explained(tmp_path, kafka_url):
    prefix = f"c{uuid.uuid4().hex[:8]}"
    cfg = parse_config({"log": {"backend": "kafka", "url": kafka_url, "prefix": prefix}}, env={})
    log = Project(tmp_path, config=cfg).log
    assert isinstance(log, KafkaLog) and log.prefix == prefix
    log.close()
    assert parse_kafka_url("kafka://a:9092,b:9092?security.protocol=SSL") == ("a:9092,b:9092",
                                                                             {"security.protocol": "SSL"})
    with pytest.raises(LogError, match="needs url=kafka://host:port.*got 'redis://"):
        open_log("kafka", url="redis://127.0.0.1:6379/0")
    with pytest.raises(LogError, match="needs url="):
        open_log("kafka")
    from tests.servers import free_port
    t0 = time.monotonic()
    with pytest.raises(LogError, match="cannot reach a Kafka broker"):
        open_log("kafka", url=f"kafka://127.0.0.1:{free_port()}", timeout=1.0)
    assert time.monotonic() - t0 < 5
