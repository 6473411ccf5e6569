"""archive_topic: Parquet lake layout, column types, incremental and crash-idempotent (every backend)."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import TopicConfig
from loopstack.log import archive as archive_mod
from loopstack.log.archive import STATE_FILE, archive_topic, read_archive

from .conftest import NO_DELETE_RECORDS

SCHEMA = (Field("user", "string"), Field("n", "int32"), Field("score", "float64", False),
          Field("ok", "bool", False), Field("at", "timestamp"))
T0 = datetime(2024, 3, 1, 22, 30, tzinfo=timezone.utc)


def _rows(k, start=0):
    return [{"user": f"u{i % 4}", "n": start + i, "score": i / 2, "ok": i % 2 == 0,
             "at": T0 + timedelta(minutes=20 * (start + i))} for i in range(k)]


@pytest.fixture
def clicks(log):
    return log.create_topic(TopicConfig("clicks", 2, SCHEMA, key_field="user"))


def test_layout_by_event_time_and_column_types(log, clicks, tmp_path):
    log.append("clicks", _rows(12))  # 22:30 .. 02:10 next day → 5 hours over 2 dates
    res = archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at")
    assert res.rows == 12
    tdir = tmp_path / "lake" / "clicks"
    dirs = sorted(str(p.parent.relative_to(tdir)) for p in tdir.rglob("*.parquet"))
    assert set(dirs) == {"date=2024-03-01/hour=22", "date=2024-03-01/hour=23", "date=2024-03-02/hour=00",
                         "date=2024-03-02/hour=01", "date=2024-03-02/hour=02"}
    for f in tdir.rglob("*.parquet"):
        t = pq.read_table(f)
        hour = int(f.parent.name.split("=")[1])
        assert all(ts.hour == hour for ts in t.column("at").to_pylist())
        assert f.name == f"part-{t.column('_partition')[0].as_py()}-{min(t.column('_offset').to_pylist())}.parquet"
    table = read_archive(tmp_path / "lake", "clicks")
    s = table.schema
    assert s.field("user").type == pa.string() and s.field("n").type == pa.int32()
    assert s.field("score").type == pa.float64() and s.field("ok").type == pa.bool_()
    assert s.field("at").type == pa.timestamp("us", tz="UTC")
    assert s.field("_partition").type == pa.int32() and s.field("_offset").type == pa.int64()
    assert s.field("_append_ts").type == pa.timestamp("us", tz="UTC")
    assert sorted(table.column("n").to_pylist()) == list(range(12))
    assert min(table.column("at").to_pylist()) == T0
    state = json.loads((tdir / STATE_FILE).read_text())["next"]
    assert {int(p): o for p, o in state.items()} == log.end_offsets("clicks")


def test_layout_by_append_time_and_schemaless(log, tmp_path):
    log.create_topic(TopicConfig("raw", 1))
    log.append("raw", [{"a": 1, "b": "x"}, {"a": 2, "c": [1, 2]}, {"a": "mixed"}])
    archive_topic(log, "raw", tmp_path / "lake")
    now = datetime.now(timezone.utc)
    files = list((tmp_path / "lake" / "raw").rglob("*.parquet"))
    assert len(files) == 1
    assert files[0].parent.parent.name in (f"date={now:%Y-%m-%d}", f"date={now - timedelta(hours=1):%Y-%m-%d}")
    t = read_archive(tmp_path / "lake", "raw")
    assert t.num_rows == 3 and t.column("_offset").to_pylist() == [0, 1, 2]
    assert t.column("a").to_pylist() == ["1", "2", '"mixed"']  # mixed types are kept as JSON text
    assert t.column("b").to_pylist() == ["x", None, None]


def test_incremental_runs_do_not_duplicate(log, clicks, tmp_path):
    log.append("clicks", _rows(10))
    r1 = archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at")
    assert r1.rows == 10
    assert archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at").rows == 0
    log.append("clicks", _rows(7, start=10))
    r2 = archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at", chunk_rows=3)
    assert r2.rows == 7
    t = read_archive(tmp_path / "lake", "clicks")
    assert sorted(t.column("n").to_pylist()) == list(range(17))
    keys = list(zip(t.column("_partition").to_pylist(), t.column("_offset").to_pylist()))
    assert len(set(keys)) == 17


def test_crash_between_files_and_state_is_idempotent(log, clicks, tmp_path, monkeypatch):
    log.append("clicks", _rows(20))
    real = archive_mod._save_state

    def crash(*a, **k):
        raise RuntimeError("killed before the state was written")

    monkeypatch.setattr(archive_mod, "_save_state", crash)
    with pytest.raises(RuntimeError):
        archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at", chunk_rows=8)
    written = {p.name for p in (tmp_path / "lake" / "clicks").rglob("*.parquet")}
    assert written and not (tmp_path / "lake" / "clicks" / STATE_FILE).exists()
    log.append("clicks", _rows(5, start=20))  # more records arrive before the rerun
    monkeypatch.setattr(archive_mod, "_save_state", real)
    res = archive_topic(log, "clicks", tmp_path / "lake", timestamp_field="at", chunk_rows=8)
    assert res.rows == 25
    t = read_archive(tmp_path / "lake", "clicks")
    assert sorted(t.column("n").to_pylist()) == list(range(25))
    assert written <= {p.name for p in (tmp_path / "lake" / "clicks").rglob("*.parquet")}


@NO_DELETE_RECORDS
def test_retention_gap_and_bad_timestamp_field(log, tmp_path):
    log.create_topic(TopicConfig("r", 1, (Field("x", "int64"),), retention_bytes=1500))
    log.append("r", [{"x": i, "pad": "p" * 50} for i in range(100)])
    dropped = log.apply_retention("r")
    assert dropped > 0
    res = archive_topic(log, "r", tmp_path / "lake")
    assert res.rows == 100 - dropped
    assert read_archive(tmp_path / "lake", "r").column("_offset").to_pylist()[0] == dropped
    with pytest.raises(LogError, match="timestamp_field 'when' is not in the topic schema"):
        archive_topic(log, "r", tmp_path / "lake", timestamp_field="when")
