"""One behaviour, every backend: the EventLog contract run against LocalLog, RedisLog and KafkaLog."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest

from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import DLQ_SUFFIX, TopicConfig, partition_for

from .conftest import NO_DELETE_RECORDS


def _rows(n, users=("alice", "bob", "carol", "dave", "erin"), start=0):
    return [{"user": users[i % len(users)], "n": start + i} for i in range(n)]


def test_per_key_routing_and_order(log, events):
    res = log.append("events", _rows(100))
    assert res.accepted == 100 and res.rejected == 0
    for (p, _off), row in zip(res.offsets, _rows(100)):
        assert p == partition_for(row["user"], 3)
    seen: dict[str, list[int]] = {}
    for rec in log.replay("events"):
        assert rec.key == rec.value["user"]
        assert rec.partition == partition_for(rec.key, 3)
        seen.setdefault(rec.key, []).append(rec.value["n"])
    assert sorted(seen) == ["alice", "bob", "carol", "dave", "erin"]
    for ns in seen.values():
        assert ns == sorted(ns) and len(ns) == 20


def test_offsets_are_consecutive_per_partition_across_calls(log, events):
    r1 = log.append("events", _rows(30))
    r2 = log.append("events", _rows(30, start=30))
    per: dict[int, list[int]] = {}
    for p, off in r1.offsets + r2.offsets:
        per.setdefault(p, []).append(off)
    ends = log.end_offsets("events")
    for p, offs in per.items():
        assert offs == list(range(len(offs)))
        assert ends[p] == len(offs)
    assert sum(ends.values()) == 60
    assert log.start_offsets("events") == {0: 0, 1: 0, 2: 0}


def test_explicit_keys_single_list_and_round_robin(log):
    log.create_topic(TopicConfig("k", 4))
    one = log.append("k", [{"i": i} for i in range(5)], key="same")
    assert {p for p, _ in one.offsets} == {partition_for("same", 4)}
    keys = [f"key{i}" for i in range(8)]
    many = log.append("k", [{"i": i} for i in range(8)], key=keys)
    assert [p for p, _ in many.offsets] == [partition_for(k, 4) for k in keys]
    rr = log.append("k", [{"i": i} for i in range(8)])
    assert sorted(p for p, _ in rr.offsets) == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(LogError, match="3 keys for 2 records"):
        log.append("k", [{"i": 1}, {"i": 2}], key=["a", "b", "c"])


def test_read_from_offset(log):
    log.create_topic(TopicConfig("one", 1))
    log.append("one", [{"i": i} for i in range(50)], key="x")
    recs = log.read("one", 0, 10, 5)
    assert [r.offset for r in recs] == [10, 11, 12, 13, 14]
    assert [r.value["i"] for r in recs] == [10, 11, 12, 13, 14]
    assert all(r.key == "x" and r.topic == "one" and r.partition == 0 for r in recs)
    assert log.read("one", 0, 50) == []
    assert [r.offset for r in log.read("one", 0, 45, 100)] == [45, 46, 47, 48, 49]
    with pytest.raises(LogError, match="partitions 0..0"):
        log.read("one", 3, 0)


def test_replay_from_offset_and_from_time(log):
    log.create_topic(TopicConfig("one", 2))
    log.append("one", [{"b": 1, "i": i} for i in range(20)])
    time.sleep(0.01)
    second = log.append("one", [{"b": 2, "i": i} for i in range(20)])
    p, off = second.offsets[0]
    ts2 = log.read("one", p, off, 1)[0].timestamp
    stamps = [r.timestamp for r in log.replay("one")]
    assert len(stamps) == 40
    from_time = list(log.replay("one", from_time=datetime.fromtimestamp(ts2 / 1e6, timezone.utc)))
    assert sorted(r.value["i"] for r in from_time) == list(range(20))
    assert all(r.value["b"] == 2 for r in from_time)
    assert log.offset_for_time("one", p, ts2) == off
    assert log.offset_for_time("one", p, ts2 + 1) == log.end_offsets("one")[p]
    assert log.offset_for_time("one", p, 0) == 0
    from_off = list(log.replay("one", from_offset={0: 10, 1: 10}))
    assert len(from_off) == 20 and all(r.offset >= 10 for r in from_off)
    assert len(list(log.replay("one", from_offset=15))) == 10


def test_timestamps_are_monotonic_per_partition(log):
    log.create_topic(TopicConfig("one", 1))
    for i in range(5):
        log.append("one", [{"i": i}])
    ts = [r.timestamp for r in log.replay("one")]
    assert ts == sorted(ts) and abs(ts[-1] / 1e6 - time.time()) < 60


def test_consumer_group_commit_and_resume(log, events):
    log.append("events", _rows(60))
    c = log.consumer("events", "g1")
    first = c.poll(max_records=25)
    assert len(first) == 25
    c.commit()
    committed = log.committed("events", "g1")
    assert sum(committed.values()) == 25 and committed == c.position()
    c.poll(max_records=10)  # read but not committed
    c.close()
    c2 = log.consumer("events", "g1")
    assert c2.position() == {p: committed.get(p, 0) for p in range(3)}
    rest = []
    while batch := c2.poll(max_records=7):
        rest.extend(batch)
    assert len(rest) == 35
    got = {(r.partition, r.offset) for r in first + rest}
    assert len(got) == 60
    assert c2.poll(timeout=0.1) == []
    log.append("events", _rows(1))
    assert len(c2.poll(timeout=1.0)) == 1


def test_commit_offsets_commits_several_partitions_at_once(log, events):
    """`commit_offsets` (one write for the partitions a consumer per partition would commit one by one)
    merges into what the group committed, and a new consumer of the group resumes there."""
    log.append("events", _rows(60))
    ends = log.end_offsets("events")
    log.consumer("events", "many", partitions=[0]).commit({0: 1})
    log.commit_offsets("events", "many", {1: ends[1], 2: 2})
    assert log.committed("events", "many") == {0: 1, 1: ends[1], 2: 2}
    assert log.consumer("events", "many").position() == {0: 1, 1: ends[1], 2: 2}
    with pytest.raises(LogError, match="partition"):
        log.commit_offsets("events", "many", {3: 0})
    with pytest.raises(LogError, match=">= 0"):
        log.commit_offsets("events", "many", {0: -1})
    assert log.committed("events", "many") == {0: 1, 1: ends[1], 2: 2}


def test_two_groups_are_independent_and_latest_start(log, events):
    log.append("events", _rows(30))
    a = log.consumer("events", "a")
    assert len(a.poll(100)) == 30
    a.commit()
    b = log.consumer("events", "b")
    assert len(b.poll(5)) == 5
    b.commit()
    assert sum(log.committed("events", "a").values()) == 30
    assert sum(log.committed("events", "b").values()) == 5
    assert log.committed("events", "never") == {}
    late = log.consumer("events", "late", start="latest")
    assert late.poll() == []
    log.append("events", _rows(3, start=100))
    assert sorted(r.value["n"] for r in late.poll(timeout=1.0)) == [100, 101, 102]


def test_seek_and_partial_assignment(log, events):
    log.append("events", _rows(40))
    p = partition_for("alice", 3)
    c = log.consumer("events", "s", partitions=[p])
    recs = c.poll(1000)
    assert recs and {r.partition for r in recs} == {p}
    c.seek(p, 2)
    again = c.poll(1)
    assert again[0].offset == 2 and again[0].value == recs[2].value
    assert log.committed("events", "s") == {}
    c.commit({p: 3})
    assert log.committed("events", "s") == {p: 3}
    other = (p + 1) % 3
    with pytest.raises(LogError, match="not assigned"):
        c.seek(other, 0)
    with pytest.raises(LogError, match="not assigned"):
        c.commit({other: 1})


def test_schema_rejections_go_to_dlq_with_reasons(log, events):
    rows = _rows(4) + [
        {"user": "x", "n": "seven"},
        {"user": "y", "n": True},
        {"n": 3},
        {"user": "z", "n": 2 ** 70},
        {"user": "w", "n": 1, "at": "not a time"},
        "just a string",
    ]
    res = log.append("events", rows)
    assert res.accepted == 4 and res.rejected == 6 and len(res.offsets) == 4
    assert sum(res.reasons.values()) == 6
    assert res.reasons["field 'n': expected int64"] == 1
    assert any("required but missing" in r for r in res.reasons)
    assert any("out of range" in r for r in res.reasons)
    dead = log.read("events" + DLQ_SUFFIX, 0, 0, 100)
    assert len(dead) == 6
    by_reason = {d.value["reason"]: d.value for d in dead}
    bad = next(v for r, v in by_reason.items() if "'seven'" in r)
    assert "field 'n'" in bad["reason"] and "int64" in bad["reason"]
    assert bad["record"] == {"user": "x", "n": "seven"} and bad["topic"] == "events"
    assert any("bools are not accepted" in r for r in by_reason)
    assert any(v["record"] == "just a string" for v in by_reason.values())
    assert sum(log.end_offsets("events").values()) == 4


def test_normalisation_and_extra_fields(log, events):
    res = log.append("events", [{"user": "a", "n": 5.0, "amount": 3, "at": datetime(2024, 5, 1, 12, 30),
                                 "extra": {"deep": [1, 2]}}])
    assert res.accepted == 1
    p, off = res.offsets[0]
    v = log.read("events", p, off, 1)[0].value
    assert v == {"user": "a", "n": 5, "amount": 3.0, "at": "2024-05-01T12:30:00.000000+00:00",
                 "extra": {"deep": [1, 2]}}
    assert isinstance(v["n"], int) and isinstance(v["amount"], float)


def test_dataframe_input(log, events):
    df = pd.DataFrame({
        "user": ["a", "b", None, "d"],
        "n": [1, 2, 3, 4],
        "amount": [1.5, np.nan, 2.0, 3.0],
        "at": pd.to_datetime(["2024-01-01 00:00:01", None, "2024-01-02 00:00:00", "2024-01-03 00:00:00"]),
    })
    res = log.append("events", df)
    assert res.accepted == 3 and res.rejected == 1
    assert list(res.reasons) == ["field 'user' (string) is required but null"]
    vals = sorted((r.value for r in log.replay("events")), key=lambda v: v["n"])
    assert vals[0] == {"user": "a", "n": 1, "amount": 1.5, "at": "2024-01-01T00:00:01.000000+00:00"}
    assert vals[1]["amount"] is None and vals[1]["at"] is None
    assert [type(v["n"]) for v in vals] == [int, int, int]


@NO_DELETE_RECORDS
def test_retention_by_age(log):
    log.create_topic(TopicConfig("aged", 1, retention_ms=1000))
    old = log.append("aged", [{"i": i, "pad": "x" * 40} for i in range(200)])
    time.sleep(0.01)
    new = log.append("aged", [{"i": 200 + i, "pad": "x" * 40} for i in range(50)])
    t_new = log.read("aged", 0, new.offsets[0][1], 1)[0].timestamp
    assert log.apply_retention("aged", now_us=t_new) == 0  # nothing is 1 s old yet
    dropped = log.apply_retention("aged", now_us=t_new + 1_000_000 - 1)
    start = log.start_offsets("aged")[0]
    assert 0 < dropped == start <= len(old.offsets)
    assert log.end_offsets("aged")[0] == 250
    kept = [r.value["i"] for r in log.replay("aged")]
    assert kept == list(range(start, 250))
    assert log.read("aged", 0, 0, 1)[0].offset == start  # below the start reads from the start
    assert log.offset_for_time("aged", 0, 0) == start


@NO_DELETE_RECORDS
def test_retention_by_size(log):
    log.create_topic(TopicConfig("big", 1, retention_bytes=4096))
    log.append("big", [{"i": i, "pad": "y" * 60} for i in range(300)])
    before = log.partition_bytes("big")[0]
    dropped = log.apply_retention("big")
    after = log.partition_bytes("big")[0]
    start = log.start_offsets("big")[0]
    assert before > 4096 >= after > 1024
    assert dropped == start > 0
    assert [r.value["i"] for r in log.replay("big")] == list(range(start, 300))
    assert log.apply_retention("big") == 0
    r = log.append("big", [{"i": 300}])
    assert r.offsets == [(0, 300)]


def test_topic_recreate_and_errors(log, events):
    assert log.create_topic(TopicConfig("events", 3, events.schema, key_field="user")) == events
    with pytest.raises(LogError, match="already exists with 3 partition.*re-creating it with 5"):
        log.create_topic(TopicConfig("events", 5))
    with pytest.raises(LogError, match="exist_ok"):
        log.create_topic(events, exist_ok=False)
    assert log.topic("events").partitions == 3
    names = [t.name for t in log.topics()]
    assert "events" in names and "events.dlq" in names
    assert log.topic("events.dlq").partitions == 1 and log.topic("events.dlq").schema == ()
    with pytest.raises(LogError, match="invalid"):
        log.create_topic(TopicConfig("../evil", 1))


def test_unknown_topic_error_lists_known_topics(log, events):
    log.create_topic(TopicConfig("clicks", 1))
    with pytest.raises(LogError) as exc:
        log.append("evnets", [{"user": "a", "n": 1}])
    msg = str(exc.value)
    assert "unknown topic 'evnets'" in msg and "clicks, events" in msg and "create_topic" in msg
    with pytest.raises(LogError, match="unknown topic 'nope'"):
        log.read("nope", 0)
    with pytest.raises(LogError, match="unknown topic"):
        log.consumer("nope", "g")


def test_concurrent_appends_from_threads_get_consecutive_offsets(log):
    log.create_topic(TopicConfig("c", 1))
    results = []

    def work(t):
        for i in range(20):
            results.extend(log.append("c", [{"t": t, "i": i}, {"t": t, "i": i}]).offsets)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    [th.start() for th in threads]
    [th.join() for th in threads]
    assert sorted(o for _, o in results) == list(range(160))
    per_t: dict[int, list[int]] = {}
    for r in log.replay("c"):
        per_t.setdefault(r.value["t"], []).append(r.value["i"])
    assert all(v == sorted(v) and len(v) == 40 for v in per_t.values())


def test_large_batch_and_schema_evolution(log):
    log.create_topic(TopicConfig("bulk", 2))
    res = log.append("bulk", [{"i": i} for i in range(10_000)])
    assert res.accepted == 10_000 and sum(log.end_offsets("bulk").values()) == 10_000
    assert sum(1 for _ in log.replay("bulk")) == 10_000
    log.create_topic(TopicConfig("bulk", 2, (Field("i", "int32"),)))
    assert log.append("bulk", [{"i": "x"}]).rejected == 1
