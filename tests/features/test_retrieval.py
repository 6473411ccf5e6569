"""get_historical_features: every validation error a user can hit, and the shape of the output."""
from __future__ import annotations

import warnings
from datetime import datetime, timedelta, timezone

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import (
    Count, Entity, EventSource, FeatureView, Field, Last, Mean, OnDemandFeature,
)
from loopstack.features.offline.base import SourceData
from loopstack.features.retrieval import get_historical_features

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
AUTHOR = Entity("author", "author_id")
SCHEMA = [Field("author_id", "int64"), Field("created_at", "timestamp"), Field("is_spam", "int64"),
          Field("length", "float64"), Field("score", "int64")]


@pytest.fixture
def engine(offline_engine):
    """Each test runs on DuckDB and on Spark (tests/features/conftest.py)."""
    return offline_engine


@pytest.fixture
def setup(tmp_path):
    times = [T0 - timedelta(days=2), T0 - timedelta(days=1), T0]
    pq.write_table(pa.table({
        "author_id": [1, 1, 2], "created_at": pa.array(times, pa.timestamp("us", tz="UTC")),
        "is_spam": [1, 0, 1], "length": [10.0, 30.0, 5.0], "score": pa.array([3, None, 7], pa.int64()),
    }), tmp_path / "comments.parquet")
    comments = EventSource("comments", "created_at", SCHEMA, path=str(tmp_path) + "/")
    empty = EventSource("empty_topic", "created_at", SCHEMA)  # a topic nobody appended to
    views = {
        "author_stats": FeatureView("author_stats", entity=AUTHOR, source=comments, features=[
            Count(window="7d", filter="is_spam == 1", name="spam_7d"), Mean("length", window="7d", name="length"),
            Last("score", name="score")]),
        "author_recent": FeatureView("author_recent", entity=AUTHOR, source=comments, ttl="1h",
                                     features=[Last("length", name="length")]),
        "dead": FeatureView("dead", entity=AUTHOR, source=empty, features=[Last("score", name="score")]),
    }

    def source_data(src: EventSource) -> SourceData:
        folder = tmp_path if src.name == "comments" else tmp_path / "lake" / src.name
        return SourceData(src.name, (str(folder) + "/",), src.timestamp)

    return views, source_data


def entity_df(ts=None):
    return pd.DataFrame({
        "comment_id": [100, 101, 102],
        "author_id": [1, 2, 1],
        "event_timestamp": ts if ts is not None else [T0 + timedelta(hours=1), T0, T0 - timedelta(days=1)],
    }, index=[7, 8, 9])


def call(setup, engine, features, df=None, **kw):
    views, source_data = setup
    return get_historical_features(entity_df() if df is None else df, features, views, source_data, engine, **kw)


def test_output_keeps_rows_columns_order_and_dtypes(setup, engine):
    out = call(setup, engine, ["author_stats:spam_7d", "author_stats:score", "author_recent:length"],
               full_feature_names=True)
    assert list(out.columns) == ["comment_id", "author_id", "event_timestamp", "author_stats__spam_7d",
                                 "author_stats__score", "author_recent__length"]
    assert list(out.index) == [7, 8, 9] and out["comment_id"].tolist() == [100, 101, 102]
    assert out["author_stats__spam_7d"].tolist() == [1, 0, 1]  # T0's spam by author 2 is not before T0
    assert str(out["author_stats__spam_7d"].dtype) == "int64"
    assert out["author_stats__score"].isna().tolist() == [True, True, False]
    assert str(out["author_stats__score"].dtype) == "Int64" and out["author_stats__score"].tolist()[2] == 3
    assert out["author_recent__length"].isna().tolist() == [True, True, True]  # all older than the 1h ttl
    assert str(out["event_timestamp"].dtype) == "datetime64[us, UTC]"


def test_arrow_in_arrow_out(setup, engine):
    table = pa.Table.from_pandas(entity_df(), preserve_index=False)
    out = call(setup, engine, ["author_stats:length"], df=table, output="arrow")
    assert isinstance(out, pa.Table)
    assert out.column_names == ["comment_id", "author_id", "event_timestamp", "length"]
    assert out["length"].to_pylist() == [20.0, None, 10.0]
    assert out.schema.field("event_timestamp").type == pa.timestamp("us", tz="UTC")


def test_missing_timestamp_column_names_the_columns(setup, engine):
    df = entity_df().rename(columns={"event_timestamp": "ts"})
    msg = r"no timestamp column 'event_timestamp'.*\['comment_id', 'author_id', 'ts'\]"
    with pytest.raises(RetrievalError, match=msg):
        call(setup, engine, ["author_stats:spam_7d"], df=df)


def test_missing_join_key(setup, engine):
    df = entity_df().drop(columns=["author_id"])
    with pytest.raises(RetrievalError, match=r"keyed by 'author_id'.*no 'author_id' column"):
        call(setup, engine, ["author_stats:spam_7d"], df=df)


def test_naive_datetimes_are_utc_with_one_warning(setup, engine):
    naive = [datetime(2024, 5, 1, 13, 0), datetime(2024, 5, 1, 12, 0), datetime(2024, 4, 30, 12, 0)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(setup, engine, ["author_stats:spam_7d", "author_stats:length"], df=entity_df(naive))
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "interpreted as UTC" in msgs[0]
    aware = call(setup, engine, ["author_stats:spam_7d", "author_stats:length"])
    pd.testing.assert_frame_equal(out, aware)


def test_string_timestamps_are_parsed(setup, engine):
    strings = ["2024-05-01T15:00:00+02:00", "2024-05-01T12:00:00Z", "2024-04-30T12:00:00Z"]
    out = call(setup, engine, ["author_stats:length"], df=entity_df(strings))
    assert out["event_timestamp"].tolist()[0] == pd.Timestamp("2024-05-01 13:00", tz="UTC")
    assert out["length"].tolist()[0] == 20.0 and pd.isna(out["length"].tolist()[1])
    with pytest.raises(RetrievalError, match="not ISO 8601"):
        call(setup, engine, ["author_stats:length"], df=entity_df(["yesterday", "x", "y"]))


def test_naive_strings_mixed_with_zoned_ones_warn(setup, engine):
    # utc=True parsing took the naive one as UTC without a word
    mixed = ["2024-05-01T15:00:00+02:00", "2024-05-01T12:00:00", "2024-04-30T12:00:00Z"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = call(setup, engine, ["author_stats:length"], df=entity_df(mixed))
    msgs = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1 and "interpreted as UTC" in msgs[0]
    assert out["event_timestamp"].tolist()[1] == pd.Timestamp("2024-05-01 12:00", tz="UTC")
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # several offsets, each given: nothing to warn about
        call(setup, engine, ["author_stats:length"], df=entity_df(["2024-05-01T15:00:00+02:00",
                                                                   "2024-05-01T12:00:00Z", "2024-04-30T12:00Z"]))


def test_entity_keys_of_the_wrong_kind_are_a_clear_error(setup, engine):
    # string keys against the int64 entity failed inside the engine with a cast error
    df = entity_df().astype({"author_id": str})
    with pytest.raises(RetrievalError, match=r"column 'author_id' holds string values, but entity 'author'.*"
                                             r"keyed by int64.*astype\('int64'\)"):
        call(setup, engine, ["author_stats:length"], df=df)
    floats = entity_df().astype({"author_id": float})   # e.g. an int column that once held NaN
    lens = call(setup, engine, ["author_stats:length"], df=floats)["length"]
    assert lens.isna().tolist() == [False, True, False] and lens[[7, 9]].tolist() == [20.0, 10.0]
    floats.loc[floats.index[1], "author_id"] = float("nan")   # NaN: no key, as a null
    assert call(setup, engine, ["author_stats:length"], df=floats)["length"].isna().tolist() == [False, True, False]
    floats.loc[floats.index[1], "author_id"] = 7.5           # matched no author: empty features, without a word
    with pytest.raises(RetrievalError, match=r"column 'author_id' holds 1 fractional value\(s\), e.g. 7.5, but "
                                             r"entity 'author'.*keyed by int64"):
        call(setup, engine, ["author_stats:length"], df=floats)


def test_null_or_non_time_timestamps_rejected(setup, engine):
    with pytest.raises(RetrievalError, match="1 null value"):
        call(setup, engine, ["author_stats:length"], df=entity_df([T0, None, T0]))
    with pytest.raises(RetrievalError, match="not times"):
        call(setup, engine, ["author_stats:length"], df=entity_df([1, 2, 3]))


@pytest.mark.parametrize("ref", ["author_stats", "author_stats:spam_7d:x", ":spam_7d", "author_stats:"])
def test_malformed_reference(setup, engine, ref):
    with pytest.raises(FeatureReferenceError, match=r"malformed: write 'view:feature'"):
        call(setup, engine, [ref])


def test_unknown_view_suggests_close_match(setup, engine):
    with pytest.raises(FeatureReferenceError, match=r"unknown feature view 'author_stat'; did you mean 'author_stats'"):
        call(setup, engine, ["author_stat:spam_7d"])


def test_unknown_feature_suggests_close_match(setup, engine):
    with pytest.raises(FeatureReferenceError, match=r"no feature 'spam7d'; did you mean 'spam_7d'"):
        call(setup, engine, ["author_stats:spam7d"])


def test_name_collision_needs_full_feature_names(setup, engine):
    msg = r"full_feature_names=True.*author_stats__length, author_recent__length"
    with pytest.raises(FeatureReferenceError, match=msg):
        call(setup, engine, ["author_stats:length", "author_recent:length"])
    out = call(setup, engine, ["author_stats:length", "author_recent:length"], full_feature_names=True)
    assert {"author_stats__length", "author_recent__length"} <= set(out.columns)


def test_feature_name_colliding_with_entity_column(setup, engine):
    df = entity_df().assign(score=[0, 0, 0])
    with pytest.raises(FeatureReferenceError, match="already has"):
        call(setup, engine, ["author_stats:score"], df=df)


def test_view_without_history_says_where_to_look(setup, engine):
    with pytest.raises(RetrievalError, match=r"feature view 'dead' has no history: source 'empty_topic' has no "
                                             r"events; append to topic 'empty_topic'"):
        call(setup, engine, ["dead:score"])


def test_batch_source_without_history_points_at_path(tmp_path, engine):
    src = EventSource("batch", "created_at", SCHEMA, path=str(tmp_path / "missing") + "/")
    views = {"b": FeatureView("b", entity=AUTHOR, source=src, features=[Last("score", name="score")])}
    with pytest.raises(RetrievalError, match=r"has no history: source 'batch' has no events; check path"):
        get_historical_features(entity_df(), ["b:score"], views,
                                lambda s: SourceData(s.name, (s.path,), s.timestamp), engine)


def test_on_demand_features_use_request_columns_and_retrieved_features(setup, engine):
    odfv = OnDemandFeature("spam_per_id", lambda r: r["author_stats:spam_7d"] / r["comment_id"],
                           inputs=["author_stats:spam_7d", "comment_id"])
    out = call(setup, engine, ["author_stats:length", "spam_per_id"], on_demand={"spam_per_id": odfv})
    assert list(out.columns) == ["comment_id", "author_id", "event_timestamp", "length", "spam_per_id"]
    assert out["spam_per_id"].tolist() == [1 / 100, 0 / 101, 1 / 102]
    with pytest.raises(FeatureReferenceError, match="did you mean 'spam_per_id'"):
        call(setup, engine, ["spam_per_idd"], on_demand={"spam_per_id": odfv})
    bad = OnDemandFeature("bad", lambda r: 1 / 0, inputs=["comment_id"])
    with pytest.raises(RetrievalError, match="on-demand feature 'bad' failed on row 0"):
        call(setup, engine, ["bad"], on_demand={"bad": bad})
