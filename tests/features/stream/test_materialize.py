"""Batch materialization: equals the offline engine (DuckDB or Spark), independent of chunking, overlap-safe,
incremental."""
from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack import Entity, EventSource, FeatureView, Field, Last, Sum
from loopstack.features.materialize import (chunk_by_time, covered_through, materialize, materialize_incremental,
                                            materialized_intervals, merge_intervals, subtract_intervals)
from loopstack.features.parity import check_parity
from loopstack.errors import RetrievalError
from loopstack.timeutil import to_us
from loopstack.project import Project
from tests.features.stream._defs import assert_same_served, gen_events, make_project, served


@pytest.fixture(params=[("sqlite", "duckdb"), ("redis", "duckdb"), ("sqlite", "spark")],
                ids=["sqlite-duckdb", "redis-duckdb", "sqlite-spark"])
def backend_engine(request):
    """(online store, offline engine): materialization reads the source with the configured engine and
    parity compares with that engine's offline features."""
    return request.param


@pytest.fixture
def project(tmp_path, backend_engine, request):
    backend, engine = backend_engine
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    p = make_project(tmp_path / "proj", backend, url)
    if engine == "spark":
        p = with_engine(p, request)
    yield p
    p.close()


def with_engine(p: Project, request) -> Project:
    """The same project queried (and materialized) with Spark, on the shared test session."""
    request.getfixturevalue("spark")
    p.close()
    cfg = dataclasses.replace(p.config, offline=dataclasses.replace(p.config.offline, engine="spark"))
    return Project(p.root, config=cfg)


def exact_times(newest: datetime) -> list[int]:
    """Read times at which the online store is exact (>= newest event - allowed lateness of 30m)."""
    n = to_us(newest)
    return [n - 20 * 60_000_000, n + 1, n + 45 * 60_000_000, n + 2 * 3_600_000_000]


def with_online_path(p: Project, path: str) -> Project:
    """The same project with a second SQLite online store (a clean run to compare with)."""
    cfg = dataclasses.replace(p.config, online=dataclasses.replace(p.config.online, backend="sqlite", path=path))
    return Project(p.root, config=cfg)


# -- pure parts ------------------------------------------------------------------------------------
def test_interval_arithmetic():
    assert merge_intervals([(5, 7), (1, 3), (3, 4), (10, 10)]) == [(1, 4), (5, 7)]
    assert subtract_intervals((0, 10), [(2, 4), (6, 12)]) == [(0, 2), (4, 6)]
    assert subtract_intervals((0, 10), [(0, 10)]) == []
    assert subtract_intervals((0, 10), []) == [(0, 10)]
    assert covered_through([(0, 2)], [(4, 6), (8, 10)], 4) == [(0, 2), (4, 5)]
    assert covered_through([(0, 2)], [(4, 6), (8, 10)], None) == [(0, 2), (4, 6), (8, 10)]


def test_chunks_never_split_equal_timestamps():
    ts = [1, 1, 2, 2, 2, 2, 3, 4, 4, 4, 5]
    batches = [pa.RecordBatch.from_pydict({"__ts": ts[i:i + 3], "x": list(range(i, min(i + 3, len(ts))))})
               for i in range(0, len(ts), 3)]
    chunks = list(chunk_by_time(iter(batches), 3))
    got = [c["__ts"].to_pylist() for c, _ in chunks]
    assert sum(got, []) == ts                                  # nothing lost, order kept
    assert [last for _, last in chunks] == [False] * (len(chunks) - 1) + [True]
    for a, b in zip(got, got[1:]):
        assert a[-1] < b[0]                                    # a timestamp group is never split
    assert got[0] == [1, 1, 2, 2, 2, 2]                        # a chunk grows to finish its group


def test_times_parse_iso_naive_as_utc():
    assert to_us("1970-01-01T00:00:01") == 1_000_000
    assert to_us("1970-01-01T01:00:00+01:00") == 0
    assert to_us(datetime(1970, 1, 2)) == 86_400_000_000


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"])
def test_a_time_outside_the_utc_range_is_a_clear_error(text):
    with pytest.raises(RetrievalError, match="out of range"):
        to_us(text)


# -- against the offline engine ---------------------------------------------------------------------
def test_materialized_state_equals_offline_for_every_aggregation(project):
    events = gen_events(500, seed=1)
    project.log.append("events", events)
    end = max(e["ts"] for e in events) + timedelta(microseconds=1)
    res = materialize(project, "2000-01-01", end, chunk_rows=64, progress=False)
    assert res.views["wins"].rows == res.views["plain"].rows == 500
    # several atomic writes (chunks of time; on DuckDB batches of whole entities, >= 64 events each)
    assert res.views["wins"].chunks >= 3 and res.views["wins"].beyond_horizon == 0
    report = check_parity(project, sample=50)
    assert report.ok, report.table()
    assert all(f.checked > 0 for f in report.features.values()), {k: f.checked for k, f in report.features.items()}
    off = report.times["wins"]
    assert len(off) >= 4
    # the comparison is not vacuous: windows at the newest event hold data for most authors
    resp = project.online.get_online_features(["wins:cnt_2h", "plain:last_label"],
                                              [{"author_id": a} for a in range(7)], as_of=to_us(end))
    assert sum(r["cnt_2h"] for r in resp.rows) > 50


def test_chunk_size_does_not_change_the_state(tmp_path):
    p = make_project(tmp_path / "proj")
    events = gen_events(150, seed=2)
    p.log.append("events", events)
    end = max(e["ts"] for e in events) + timedelta(seconds=1)
    states = []
    for i, rows in enumerate([1, 7, 100_000]):
        q = with_online_path(p, f"data/online-{i}.db")
        res = materialize(q, "2000-01-01", end, chunk_rows=rows, progress=False)
        assert res.views["wins"].rows == 150 and res.views["wins"].chunks <= 150 // rows + 1
        states.append(served(q, exact_times(end)))
        q.close()
    assert states[0] == states[1] == states[2]
    assert sum(r[0] for r in states[0][1]) > 0  # counts at the newest event are not all zero


def test_overlapping_runs_apply_each_event_once(project, tmp_path):
    events = gen_events(400, seed=3)
    project.log.append("events", events)
    lo, hi = min(e["ts"] for e in events), max(e["ts"] for e in events) + timedelta(microseconds=1)
    mid1, mid2 = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
    r1 = materialize(project, lo, mid2, progress=False, chunk_rows=50)
    r2 = materialize(project, mid1, hi, progress=False, chunk_rows=50)       # overlaps [mid1, mid2)
    r3 = materialize(project, lo, hi, progress=False)                        # everything done already
    assert r2.views["wins"].spans == [(to_us(mid2), to_us(hi))]
    assert r1.views["wins"].rows + r2.views["wins"].rows == 400
    assert r3.views["wins"].rows == 0 and r3.views["wins"].spans == []
    assert materialized_intervals(project, "wins") == [(to_us(lo), to_us(hi))]
    clean = with_online_path(project, str(tmp_path / "clean.db"))
    materialize(clean, lo, hi, progress=False)
    assert_same_served(served(project, exact_times(hi)), served(clean, exact_times(hi)))
    clean.close()


def test_incremental_continues_where_the_last_run_ended(tmp_path):
    p = make_project(tmp_path / "proj")
    base = datetime.now(timezone.utc)
    first = gen_events(200, seed=4, base=base - timedelta(hours=1))
    p.log.append("events", first)
    r1 = materialize_incremental(p, base - timedelta(minutes=30), progress=False)
    earliest = min(e["ts"] for e in first)
    assert r1.views["wins"].spans == [(to_us(earliest), to_us(base - timedelta(minutes=30)))]
    later = [dict(e, ts=base - timedelta(minutes=20 - i % 15)) for i, e in enumerate(gen_events(50, seed=5))]
    p.log.append("events", later)
    r2 = materialize_incremental(p, base, progress=False)
    assert r2.views["wins"].spans == [(to_us(base - timedelta(minutes=30)), to_us(base))]
    assert r1.views["wins"].rows + r2.views["wins"].rows == 250
    assert materialize_incremental(p, base, progress=False).views["wins"].rows == 0
    clean = with_online_path(p, "data/clean.db")
    materialize(clean, earliest, base, progress=False)
    assert_same_served(served(p, exact_times(base)), served(clean, exact_times(base)))
    with pytest.raises(RetrievalError, match="is before start .*: swap them"):
        materialize(clean, base, earliest, progress=False)
    with pytest.raises(RetrievalError, match=r"start and end are both .*: the range \[start, end\) is empty"):
        materialize(clean, base, base, progress=False)   # reported every view as "(already materialized)"
    clean.close()
    p.close()


@pytest.mark.parametrize("engine", ["duckdb", "spark"])
def test_file_source_orders_ties_by_file_then_row(tmp_path, engine, request):
    p = make_project(tmp_path / "proj")
    if engine == "spark":
        p = with_engine(p, request)
    t = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    folder = tmp_path / "files"
    folder.mkdir()
    for i, vals in enumerate([[1, 2], [3, 4]]):  # same timestamp everywhere: file 1's last row wins
        pq.write_table(pa.table({"author_id": [9, 9], "v": vals,
                                 "ts": pa.array([t, t], pa.timestamp("us", tz="UTC"))}), folder / f"part-{i}.parquet")
    author = Entity("author", "author_id")
    src = EventSource("files", "ts", [Field("author_id", "int64"), Field("v", "int64")], path=str(folder) + "/")
    view = FeatureView("fv", entity=author, source=src, features=[Last("v", name="last_v"),
                                                                  Sum("v", window="1h", name="sum_v")])
    p.apply([author, src, view])
    res = materialize(p, t, t + timedelta(seconds=1), views=["fv"], progress=False, chunk_rows=1)
    # time chunks (Spark) never split ties: one chunk; DuckDB's bulk path applies the one entity in pieces of 1
    assert res.views["fv"].rows == 4 and res.views["fv"].chunks == (1 if engine == "spark" else 4)
    resp = p.online.get_online_features(["fv:last_v", "fv:sum_v"], [{"author_id": 9}],
                                        as_of=to_us(t + timedelta(seconds=1)))
    assert resp.rows[0]["last_v"] == 4 and resp.rows[0]["sum_v"] == 10
    report = check_parity(p, views=["fv"], times=[t + timedelta(microseconds=1), t + timedelta(minutes=30)])
    assert report.ok and report.checked == 4
    p.close()


def test_a_view_named_twice_is_materialized_and_reported_once(tmp_path):
    """`-v wins -v wins` ran the view twice; the second (empty) pass overwrote the first one's result."""
    p = make_project(tmp_path / "proj")
    events = gen_events(120, seed=8)
    p.log.append("events", events)
    end = max(e["ts"] for e in events) + timedelta(seconds=1)
    res = materialize(p, "2000-01-01", end, views=["wins", "wins"], progress=False)
    assert list(res.views) == ["wins"] and res.views["wins"].rows == res.rows == 120
    once = check_parity(p, sample=50, views=["wins"])
    twice = check_parity(p, sample=50, views=["wins", "wins"])
    assert twice.checked == once.checked > 0     # each value compared once, not twice
    p.close()


def test_a_file_source_whose_file_is_missing_is_refused_not_marked_done(tmp_path):
    """A missing file read as "no events": the interval was marked materialized, so once the file appeared its
    events were skipped for good ("(already materialized)")."""
    p = make_project(tmp_path / "proj")
    t = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    author = Entity("author", "author_id")
    src = EventSource("files", "ts", [Field("author_id", "int64"), Field("v", "int64")], path="data/ev.parquet")
    p.apply([author, src, FeatureView("fv", entity=author, source=src, features=[Last("v", name="last_v")])])
    with pytest.raises(RetrievalError, match=r"path 'data/ev.parquet' matches no file \(looked for .*ev.parquet\)"):
        materialize(p, "2024-01-01", "2025-01-01", progress=False)
    assert materialized_intervals(p, "fv") == [] and materialized_intervals(p, "wins") == []   # nothing touched
    pq.write_table(pa.table({"author_id": [9], "v": [4], "ts": pa.array([t], pa.timestamp("us", tz="UTC"))}),
                   p.root / "data" / "ev.parquet")
    res = materialize(p, "2024-01-01", "2025-01-01", views=["fv"], progress=False)
    assert res.views["fv"].rows == 1
    assert p.online.get_online_features(["fv:last_v"], [{"author_id": 9}]).rows[0]["last_v"] == 4
    p.close()


@pytest.mark.parametrize("column, cell, shown", [("v", "x", "'x', which does not read as int64"),
                                                 ("ts", "soon", "'soon', which does not read as timestamp"),
                                                 ("author_id", "abc", "'abc', which does not read as int64")])
def test_a_csv_cell_that_is_not_its_declared_type_is_named(tmp_path, column, cell, shown):
    """'x' in an int64 CSV column crashed with TypeError inside Sum (and Last stored the text); a bad time or key
    crashed with a DuckDB conversion error."""
    p = make_project(tmp_path / "proj")
    author = Entity("author", "author_id")
    src = EventSource("files", "ts", [Field("author_id", "int64"), Field("v", "int64")], path="data/ev.csv")
    p.apply([author, src, FeatureView("fv", entity=author, source=src, features=[
        Last("v", name="last_v"), Sum("v", window="1d", name="sum_v")])])
    rows = [{"author_id": "1", "v": "5", "ts": "2024-05-01T10:00:00"},
            {"author_id": "1", "v": "6", "ts": "2024-05-01T11:00:00"}]
    rows[1][column] = cell
    (p.root / "data" / "ev.csv").write_text("author_id,v,ts\n" + "".join(",".join(r.values()) + "\n" for r in rows))
    with pytest.raises(RetrievalError, match=f"column {column!r} holds {shown}"):
        materialize(p, "2024-01-01", "2025-01-01", views=["fv"], progress=False)
    assert materialized_intervals(p, "fv") == []
    p.close()
