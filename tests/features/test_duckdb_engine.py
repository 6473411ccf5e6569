"""Hand-written point-in-time cases for every offline engine (DuckDB, Spark), each one a rule of offline/base.py."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack.errors import RetrievalError
from loopstack.features.definitions import (
    Count, CountDistinct, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Min, Sum,
)
from loopstack.features.offline.base import SourceData, ViewRequest

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
AUTHOR = Entity("author", "author_id")


def ts(**kw) -> datetime:
    return T0 + timedelta(**kw)


@pytest.fixture
def engine(offline_engine):
    """Each test runs on DuckDB and on Spark (tests/features/conftest.py)."""
    return offline_engine


def view(features, ttl=None, schema=(), entity=AUTHOR, timestamp="created_at"):
    src = EventSource("comments", timestamp, list(schema), path="unused/")
    return FeatureView("author_stats", entity=entity, source=src, features=features, ttl=ttl)


def run(engine, v, entity_rows: dict, paths, fmt="parquet", order_by=(), timestamp="created_at"):
    entity = pa.table(entity_rows)
    req = ViewRequest(v, tuple((f, f.name) for f in v.features),
                      SourceData("comments", tuple(str(p) for p in paths), timestamp, order_by, fmt))
    return engine.historical_features(entity, "event_timestamp", [req])


def utc(values):
    return pa.array(values, pa.timestamp("us", tz="UTC"))


def write(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_spam_count_in_7_days_never_counts_the_comment_itself_or_later_ones(tmp_path, engine):
    # author 1 posts 4 comments; the 2nd and 3rd are spam. Label rows are the comments themselves.
    times = [ts(days=-10), ts(days=-3), ts(), ts(days=1)]
    write(tmp_path / "c.parquet", author_id=[1, 1, 1, 1], created_at=utc(times), is_spam=[0, 1, 1, 0])
    v = view([Count(window="7d", filter="is_spam == 1", name="spam_7d"), Count(window="7d", name="n_7d")])
    out = run(engine, v, {"author_id": [1, 1, 1, 1], "event_timestamp": utc(times)}, [tmp_path / "c.parquet"])
    # day -10: nothing before. day -3: the day -10 comment is exactly 7d old (counted, not spam).
    # day 0: the day -3 spam (the day-0 spam is *this* comment, not counted). day 1: day -3 and day 0.
    assert out["spam_7d"].to_pylist() == [0, 0, 1, 2]
    assert out["n_7d"].to_pylist() == [0, 1, 1, 2]


def test_strictly_before_and_ties_won_by_the_later_event(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[7, 7, 7], created_at=utc([ts(), ts(), ts(seconds=-1)]),
          score=[1.0, 2.0, 0.5])
    write(tmp_path / "b.parquet", author_id=[7], created_at=utc([ts(seconds=-1)]), score=[9.0])
    v = view([Last("score", name="score"), Last("score", window="1h", name="last_1h"),
              Count(window="1h", name="n")])
    out = run(engine, v, {"author_id": [7, 7, 7],
                          "event_timestamp": utc([ts(), ts(microseconds=1), ts(seconds=-1)])},
              [tmp_path / "b.parquet", tmp_path / "a.parquet"])  # file order is by name, not list order
    # at t=T0: events at T0 are excluded; of the two at T0-1s, b.parquet's (later file) wins
    # at T0+1µs: the two T0 events tie; a.parquet row 1 (2.0) is later than row 0 (1.0)
    assert out["score"].to_pylist() == [9.0, 2.0, None]
    assert out["last_1h"].to_pylist() == [9.0, 2.0, None]
    assert out["n"].to_pylist() == [2, 4, 0]


def test_order_by_column_breaks_ties_instead_of_file_order(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1, 1], created_at=utc([ts(), ts()]), v=[10, 20], offset=[5, 3])
    v = view([Last("v", name="v")])
    out = run(engine, v, {"author_id": [1], "event_timestamp": utc([ts(seconds=1)])}, [tmp_path / "a.parquet"],
              order_by=("offset",))
    assert out["v"].to_pylist() == [10]


def test_ttl_boundary_is_inclusive(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1], created_at=utc([ts()]), v=[42])
    v = view([Last("v", name="v")], ttl="1h")
    rows = [ts(hours=1), ts(hours=1, microseconds=1), ts(minutes=30)]
    out = run(engine, v, {"author_id": [1] * 3, "event_timestamp": utc(rows)}, [tmp_path / "a.parquet"])
    assert out["v"].to_pylist() == [42, None, 42]
    assert out["v"].type == pa.int64()


def test_window_lower_boundary_is_inclusive(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1, 1], created_at=utc([ts(), ts(days=1)]), v=[1, 2])
    v = view([Sum("v", window="1d", name="s")])
    rows = [ts(days=1), ts(days=1, microseconds=1), ts(days=2), ts(days=2, microseconds=1)]
    out = run(engine, v, {"author_id": [1] * 4, "event_timestamp": utc(rows)}, [tmp_path / "a.parquet"])
    # [t-1d, t): at day 1 the day-0 event is exactly 1d old (in), the day-1 event is at t (out)
    assert out["s"].to_pylist() == [1, 2, 2, 0]


def test_empty_windows_count_zero_mean_null(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1], created_at=utc([ts()]), x=[3.5], s=["u"])
    feats = [Count(window="1d", name="n"), Sum("x", window="1d", name="sx"), Mean("x", window="1d", name="mx"),
             Min("x", window="1d", name="lo"), Max("x", window="1d", name="hi"),
             Last("s", window="1d", name="ls"), CountDistinct("s", window="1d", name="ds")]
    out = run(engine, view(feats), {"author_id": [1, 2], "event_timestamp": utc([ts(days=5), ts(days=5)])},
              [tmp_path / "a.parquet"])
    got = out.to_pydict()
    assert (got["n"], got["sx"], got["ds"]) == ([0, 0], [0.0, 0.0], [0, 0])
    assert got["mx"] == got["lo"] == got["hi"] == got["ls"] == [None, None]
    assert out.schema.field("n").type == pa.int64() and out.schema.field("sx").type == pa.float64()
    assert out.schema.field("mx").type == pa.float64() and out.schema.field("ls").type == pa.string()


def test_nulls_ignored_by_aggregates_but_last_takes_the_latest_event(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1, 1, 1], created_at=utc([ts(), ts(seconds=1), ts(seconds=2)]),
          v=pa.array([4, None, None], pa.int64()))
    feats = [Count("v", window="1h", name="nv"), Count(window="1h", name="n"), Mean("v", window="1h", name="m"),
             Last("v", window="1h", name="lw"), Last("v", name="lp"), Sum("v", window="1h", name="s")]
    out = run(engine, view(feats), {"author_id": [1], "event_timestamp": utc([ts(minutes=1)])},
              [tmp_path / "a.parquet"]).to_pydict()
    assert (out["nv"], out["n"], out["m"], out["lw"], out["lp"], out["s"]) == ([1], [3], [4.0], [None], [None], [4])


def test_string_join_keys_and_output_order_with_duplicates(tmp_path, engine):
    user = Entity("user", "user_id", dtype="string")
    write(tmp_path / "a.parquet", user_id=["b", "a", "b"], created_at=utc([ts(), ts(), ts(seconds=5)]),
          amount=[1, 10, 100])
    v = view([Sum("amount", window="1d", name="total"), Last("amount", name="last")], entity=user)
    rows = {"user_id": ["b", "zz", "a", "b", "b", None],
            "event_timestamp": utc([ts(seconds=9), ts(seconds=9), ts(seconds=9), ts(seconds=1), ts(seconds=9),
                                    ts(seconds=9)]),
            "label": [0, 1, 2, 3, 4, 5]}
    out = run(engine, v, rows, [tmp_path / "a.parquet"])
    assert out.column_names == ["user_id", "event_timestamp", "label", "total", "last"]
    assert out["label"].to_pylist() == [0, 1, 2, 3, 4, 5]
    assert out["total"].to_pylist() == [101, 0, 10, 1, 101, 0]
    assert out["last"].to_pylist() == [100, None, 10, 1, 100, None]


def test_csv_source_with_naive_string_timestamps(tmp_path, engine):
    (tmp_path / "a.csv").write_text(
        "author_id,created_at,amount\n"
        "1,2024-05-01 12:00:00,2.5\n"
        "1,2024-05-01 12:00:00,7.5\n"  # tie: the later row wins
        "1,2024-05-01 13:00:00,1.0\n"
    )
    v = view([Last("amount", name="amount"), Mean("amount", window="1h", name="m")])
    out = run(engine, v, {"author_id": [1, 1, 1],
                          "event_timestamp": utc([ts(minutes=1), ts(hours=1), ts(hours=1, seconds=1)])},
              [tmp_path / "a.csv"], fmt="csv")
    assert out["amount"].to_pylist() == [7.5, 7.5, 1.0]
    assert out["m"].to_pylist() == [5.0, 5.0, 1.0]


def test_tz_naive_and_string_source_timestamps_are_utc(tmp_path, engine):
    naive = [datetime(2024, 5, 1, 12, 0)]
    write(tmp_path / "naive.parquet", author_id=[1], created_at=pa.array(naive, pa.timestamp("ns")), v=[1])
    write(tmp_path / "text.parquet", author_id=[1], created_at=["2024-05-01T12:00:00+02:00"], v=[2])
    v = view([Last("v", name="v")])
    out = run(engine, v, {"author_id": [1, 1], "event_timestamp": utc([ts(), ts(microseconds=1)])},
              [tmp_path / "naive.parquet"])
    assert out["v"].to_pylist() == [None, 1]  # 12:00 naive == 12:00 UTC, so strictly-before holds at +1µs
    out = run(engine, v, {"author_id": [1, 1], "event_timestamp": utc([ts(hours=-2), ts(hours=-2, microseconds=1)])},
              [tmp_path / "text.parquet"])
    assert out["v"].to_pylist() == [None, 2]  # 12:00+02:00 == 10:00 UTC


def test_timestamp_values_come_back_utc_aware(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1], created_at=utc([ts()]),
          seen_at=pa.array([datetime(2024, 4, 1, 8, 0)], pa.timestamp("ns")))
    v = view([Last("seen_at", name="seen"), Max("seen_at", window="1d", name="mx")])
    out = run(engine, v, {"author_id": [1], "event_timestamp": utc([ts(hours=1)])}, [tmp_path / "a.parquet"])
    assert out.schema.field("seen").type == pa.timestamp("us", tz="UTC")
    assert out["seen"].to_pylist() == [datetime(2024, 4, 1, 8, 0, tzinfo=timezone.utc)]
    assert out["mx"].to_pylist() == [datetime(2024, 4, 1, 8, 0, tzinfo=timezone.utc)]


def test_no_files_gives_empty_histories_with_declared_dtypes(tmp_path, engine):
    v = view([Last("v", name="v"), Count(window="1d", name="n"), Sum("v", window="1d", name="s")],
             schema=[Field("author_id", "int64"), Field("created_at", "timestamp"), Field("v", "int32")])
    out = run(engine, v, {"author_id": [1, 2], "event_timestamp": utc([ts(), ts()])},
              [str(tmp_path / "nothing" / "*.parquet")])
    assert out.to_pydict()["v"] == [None, None] and out["n"].to_pylist() == [0, 0] and out["s"].to_pylist() == [0, 0]
    assert out.schema.field("v").type == pa.int32() and out.schema.field("s").type == pa.int64()


def test_empty_entity_table_and_empty_file(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=pa.array([], pa.int64()), created_at=utc([]), v=pa.array([], pa.int64()))
    v = view([Last("v", name="v"), Count(window="1d", name="n")])
    out = run(engine, v, {"author_id": [1], "event_timestamp": utc([ts()])}, [tmp_path / "a.parquet"])
    assert out["v"].to_pylist() == [None] and out["n"].to_pylist() == [0]
    out = run(engine, v, {"author_id": pa.array([], pa.int64()), "event_timestamp": utc([])}, [tmp_path / "a.parquet"])
    assert out.num_rows == 0 and out.column_names == ["author_id", "event_timestamp", "v", "n"]


def test_missing_source_column_is_a_clear_error(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1], created_at=utc([ts()]), v=[1])
    v = view([Last("amount", name="amount")])
    with pytest.raises(RetrievalError, match=r"no column\(s\) \['amount'\]"):
        run(engine, v, {"author_id": [1], "event_timestamp": utc([ts()])}, [tmp_path / "a.parquet"])


def test_several_views_and_stats(tmp_path, engine):
    write(tmp_path / "a.parquet", author_id=[1, 2], created_at=utc([ts(), ts()]), v=[1, 2])
    v1 = view([Last("v", name="v")])
    v2 = FeatureView("other", entity=AUTHOR, source=v1.source, features=[Count(window="1d", name="n")])
    entity = pa.table({"author_id": [2, 1], "event_timestamp": utc([ts(seconds=1), ts(seconds=1)])})
    data = SourceData("comments", (str(tmp_path / "a.parquet"),), "created_at")
    out = engine.historical_features(entity, "event_timestamp", [
        ViewRequest(v1, ((v1.features[0], "author_stats__v"),), data),
        ViewRequest(v2, ((v2.features[0], "other__n"),), data)])
    assert out.column_names == ["author_id", "event_timestamp", "author_stats__v", "other__n"]
    assert out["author_stats__v"].to_pylist() == [2, 1] and out["other__n"].to_pylist() == [1, 1]
    stats = engine.last_stats()
    assert stats.rows == 2 and set(stats.per_view_seconds) == {"author_stats", "other"} and stats.seconds > 0
