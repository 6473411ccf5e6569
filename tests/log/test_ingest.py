"""ingest_file: JSONL, CSV and Parquet with bad rows; nothing is dropped (every backend)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack.errors import LogError
from loopstack.features.definitions import Field
from loopstack.log import DLQ_SUFFIX, TopicConfig
from loopstack.log.ingest import coerce_cell, ingest_file

SCHEMA = (Field("user", "string"), Field("n", "int64"), Field("score", "float32", False),
          Field("spam", "bool", False), Field("at", "timestamp", False))


@pytest.fixture
def topic(log):
    return log.create_topic(TopicConfig("msgs", 2, SCHEMA, key_field="user"))


def _dlq(log):
    return [r.value for r in log.replay("msgs" + DLQ_SUFFIX)]


def test_jsonl_with_bad_rows(log, topic, tmp_path):
    f = tmp_path / "in.jsonl"
    good = [{"user": f"u{i}", "n": i, "at": "2024-01-01T00:00:00Z"} for i in range(25)]
    lines = [json.dumps(r) for r in good] + ["{not json", json.dumps({"user": "x", "n": "NaNa"}), "",
                                             json.dumps([1, 2])]
    f.write_text("\n".join(lines) + "\n")
    res = ingest_file(log, f, "msgs", chunk_size=7, progress=False)
    assert (res.accepted, res.rejected) == (25, 3)
    assert sum(log.end_offsets("msgs").values()) == 25
    assert res.reasons["field 'n': expected int64"] == 1
    assert any(k.startswith("line is not valid JSON") for k in res.reasons)
    dead = _dlq(log)
    assert len(dead) == 3
    assert any(d["record"] == "{not json" and "line 26" in d["reason"] for d in dead)
    ats = {r.value["at"] for r in log.replay("msgs")}
    assert ats == {"2024-01-01T00:00:00.000000+00:00"}


def test_csv_coerced_by_schema_and_bad_cells_to_dlq(log, topic, tmp_path):
    f = tmp_path / "in.csv"
    f.write_text("user,n,score,spam,at,extra\n"
                 "a,1,0.5,true,2024-02-03 04:05:06,x\n"
                 "b,2,,no,1706932800,7\n"
                 "c,three,1.0,yes,,\n"
                 "d,4,1.5,maybe,,\n"
                 ",5,1,1,,\n"
                 "e,6,1,1,,,surplus\n")
    res = ingest_file(log, f, "msgs", progress=False)
    assert (res.accepted, res.rejected) == (2, 4)
    vals = sorted((r.value for r in log.replay("msgs")), key=lambda v: v["n"])
    assert vals[0] == {"user": "a", "n": 1, "score": 0.5, "spam": True, "at": "2024-02-03T04:05:06.000000+00:00",
                       "extra": "x"}
    assert vals[1]["score"] is None and vals[1]["spam"] is False
    assert vals[1]["at"] == "2024-02-03T04:00:00.000000+00:00" and vals[1]["extra"] == 7
    reasons = " | ".join(d["reason"] for d in _dlq(log))
    assert "field 'n': expected int64: got 'three'" in reasons
    assert "field 'spam': expected bool: got 'maybe'" in reasons
    assert "field 'user' (string) is required but null" in reasons
    assert "more values than the header" in reasons


def test_parquet_with_bad_rows(log, topic, tmp_path):
    f = tmp_path / "in.parquet"
    t = pa.table({"user": ["a", "b", None, "d"] * 50, "n": pa.array([1, 2, 3, None] * 50, pa.int64()),
                  "at": pa.array([datetime(2024, 1, 1, tzinfo=timezone.utc)] * 200, pa.timestamp("us", "UTC"))})
    pq.write_table(t, f)
    res = ingest_file(log, f, "msgs", chunk_size=64, progress=False)
    assert (res.accepted, res.rejected) == (100, 100)
    assert res.reasons == {"field 'user' (string) is required but null": 50,
                           "field 'n' (int64) is required but null": 50}
    assert len(_dlq(log)) == 100
    df = pd.DataFrame([r.value for r in log.replay("msgs")])
    assert set(df["n"]) == {1, 2} and set(df["at"]) == {"2024-01-01T00:00:00.000000+00:00"}


def test_ingest_errors_and_progress(log, topic, tmp_path, capsys):
    with pytest.raises(LogError, match="no such file"):
        ingest_file(log, tmp_path / "missing.csv", "msgs")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(LogError, match="unknown file type '.xlsx'"):
        ingest_file(log, tmp_path / "x.xlsx", "msgs")
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps({"user": "a", "n": 1}) + "\n")
    with pytest.raises(LogError, match="unknown topic 'nope'"):
        ingest_file(log, f, "nope")
    assert ingest_file(log, f, "msgs", progress=True).accepted == 1


def test_coerce_cell():
    assert coerce_cell("int64", "42") == 42 and coerce_cell("int8", "3.0") == 3
    assert coerce_cell("int64", "4.5") == "4.5" and coerce_cell("float64", "x") == "x"
    assert coerce_cell("bool", "Yes") is True and coerce_cell("bool", "0") is False
    assert coerce_cell("timestamp", "1700000000") == 1700000000
    assert coerce_cell("timestamp", "2024-01-01") == "2024-01-01"
    assert coerce_cell("string", "007") == "007" and coerce_cell(None, "007") == 7
    assert coerce_cell("int64", "") is None and coerce_cell(None, "1e3") == 1000.0


def test_byte_order_mark_is_not_part_of_the_first_column(log, topic, tmp_path):
    """Excel and PowerShell start UTF-8 files with a BOM: the first header / line must still parse."""
    c = tmp_path / "bom.csv"
    c.write_bytes(b"\xef\xbb\xbfuser,n\nu1,1\nu2,2\n")
    j = tmp_path / "bom.jsonl"
    j.write_bytes(b"\xef\xbb\xbf" + json.dumps({"user": "u3", "n": 3}).encode() + b"\n")
    assert ingest_file(log, c, "msgs", progress=False).rejected == 0
    assert ingest_file(log, j, "msgs", progress=False).rejected == 0
    assert sorted(r.value["user"] for r in log.replay("msgs")) == ["u1", "u2", "u3"]
    assert "\ufeffuser" not in next(iter(log.replay("msgs"))).value and _dlq(log) == []


def test_unreadable_parquet_and_bad_chunk_size_are_errors(log, topic, tmp_path):
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    with pytest.raises(LogError, match="not a readable Parquet file"):
        ingest_file(log, empty, "msgs", progress=False)
    (tmp_path / "junk.parquet").write_text("user,n\na,1\n")
    with pytest.raises(LogError, match="not a readable Parquet file"):
        ingest_file(log, tmp_path / "junk.parquet", "msgs", progress=False)
    f = tmp_path / "ok.jsonl"
    f.write_text(json.dumps({"user": "a", "n": 1}) + "\n")
    with pytest.raises(LogError, match="chunk_size must be >= 1, got 0"):
        ingest_file(log, f, "msgs", chunk_size=0, progress=False)
    assert sum(log.end_offsets("msgs").values()) == 0


def test_lines_that_are_not_utf8_go_to_the_dlq_unaltered_elsewhere(log, topic, tmp_path):
    # they were decoded with replacement characters and appended: the data changed without a word
    j = tmp_path / "latin1.jsonl"
    j.write_bytes(json.dumps({"user": "ok", "n": 1}).encode() + b"\n" + b'{"user": "Ren\xe9", "n": 2}\n'
                  + json.dumps({"user": "Ren\u00e9", "n": 3}).encode() + b"\n")
    res = ingest_file(log, j, "msgs", progress=False)
    assert (res.accepted, res.rejected) == (2, 1)
    assert sorted(r.value["user"] for r in log.replay("msgs")) == ["Ren\u00e9", "ok"]
    (dead,) = _dlq(log)
    assert "line 2 is not valid UTF-8 (byte 0xe9" in dead["reason"] and "Ren" in dead["record"]
    c = tmp_path / "latin1.csv"   # a quoted cell spans lines 3-4; the bad byte is on line 4
    c.write_bytes(b'user,n\nalice,5\n"bob\nb\xe9b",6\ncarol,7\n')
    res = ingest_file(log, c, "msgs", progress=False)
    assert (res.accepted, res.rejected) == (2, 1)
    assert {"alice", "carol"} <= {r.value["user"] for r in log.replay("msgs")}
    assert "line 4 is not valid UTF-8" in _dlq(log)[-1]["reason"]
    h = tmp_path / "header.csv"
    h.write_bytes(b"us\xe9r,n\na,1\n")
    with pytest.raises(LogError, match="header line 1 is not valid UTF-8"):
        ingest_file(log, h, "msgs", progress=False)


def test_jsonl_lines_that_are_not_objects_go_to_the_dlq_as_written(log, topic, tmp_path):
    """An array / scalar line was dead-lettered without its line number, and NaN / Infinity lines were kept
    as null: the DLQ lost what the line said."""
    f = tmp_path / "mixed.jsonl"
    f.write_text('{"user": "a", "n": 1}\n[1, 2]\n5\nNaN\n"text"\nnull\ntrue\n-Infinity\n')
    res = ingest_file(log, f, "msgs", progress=False)
    assert (res.accepted, res.rejected) == (1, 7)
    dead = [r.value for r in log.replay("msgs.dlq")]
    assert [d["record"] for d in dead] == ["[1, 2]", "5", "NaN", '"text"', "null", "true", "-Infinity"]
    assert [d["reason"].split(",")[0] for d in dead] == [
        "line 2 is an array", "line 3 is a number", "line 4 is a number", "line 5 is a string", "line 6 is null",
        "line 7 is a bool", "line 8 is a number"]
    assert all("not a JSON object of field -> value" in d["reason"] for d in dead)
