"""OnlineFeatures on every backend: lookups, flags, errors, names, freshness, progress, Project wiring."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import Count, Entity, EventSource, FeatureView, Field, Last, Sum
from loopstack.features.online.service import Event, OnlineFeatures
from loopstack.features.online.state import StateError
from loopstack.timeutil import now_micros

T0 = 1_718_000_000_000_000
S = 1_000_000
AUTHOR = Entity("author", "author_id")
ITEM = Entity("item", "item_id", dtype="string")
COMMENTS = EventSource("comments", "ts", [Field("author_id", "int64"), Field("item_id", "string"),
                                          Field("is_spam", "int64"), Field("text", "string")])


def views(window: str = "1h") -> dict[str, FeatureView]:
    return {
        "author_stats": FeatureView("author_stats", entity=AUTHOR, source=COMMENTS, ttl="1d", features=[
            Field("text", "string"), Count(window=window, name="comments"),
            Sum("is_spam", window="1d", name="spam")]),
        "item_stats": FeatureView("item_stats", entity=ITEM, source=COMMENTS, features=[
            Count(window="1h", name="comments"), Last("text", name="last_text")]),
    }


@pytest.fixture
def online(store):
    of = OnlineFeatures(store, views())
    comments = [(1, "x", 0, "hi"), (1, "y", 1, "buy now"), (2, "x", 0, "nice")]
    for i, (a, item, spam, text) in enumerate(comments):
        vals = {"is_spam": spam, "text": text}
        of.apply_events("author_stats", [Event(a, T0 + i * S, (i,), vals)], {"stream:author_stats:0": str(i)})
        of.apply_events("item_stats", [Event(item, T0 + i * S, (i,), vals)])
    return of


def test_lookup_multi_view_with_flags_and_timestamps(online):
    res = online.get_online_features(["author_stats:text", "item_stats:last_text", "author_stats:spam"],
                                     [{"author_id": 1, "item_id": "x"}, {"author_id": 3, "item_id": "nope"},
                                      {"author_id": 2, "item_id": "y"}], as_of=T0 + 10 * S)
    assert res.features == ["text", "last_text", "spam"]
    assert res.rows == [{"author_id": 1, "item_id": "x", "text": "buy now", "last_text": "nice", "spam": 1},
                        # author 3 has no history: an empty window (spam 0), as offline
                        {"author_id": 3, "item_id": "nope", "text": None, "last_text": None, "spam": 0},
                        {"author_id": 2, "item_id": "y", "text": "nice", "last_text": "buy now", "spam": 0}]
    assert res.found == [True, False, True]
    assert res.event_timestamps[0] == {"text": T0 + S, "last_text": T0 + 2 * S, "spam": T0 + S}
    assert res.event_timestamps[1] == {"text": None, "last_text": None, "spam": None}


def test_keys_as_given_and_canonical(online):
    rows = [{"author_id": "1"}, {"author_id": 1.0}, {"author_id": "01"}, {"author_id": None}]
    res = online.get_online_features(["author_stats:comments"], rows, as_of=T0 + 10 * S)
    assert res.found == [True, True, False, False]  # "1" is author 1 (an int entity); "01" is not
    assert [r["author_id"] for r in res.rows] == ["1", 1.0, "01", None]  # the caller's values, untouched
    assert online.get_online_features(["item_stats:comments"], [{"item_id": "x"}], as_of=T0 + 10 * S).rows[0][
        "comments"] == 2


def test_unknown_features_and_views_are_named(online):
    with pytest.raises(FeatureReferenceError, match=r"view 'author_stats' has no feature 'spamm'.*did you mean 'spam'"):
        online.get_online_features(["author_stats:spamm"], [{"author_id": 1}])
    with pytest.raises(FeatureReferenceError, match=r"unknown feature view 'author_stat'.*did you mean 'author_stats'"):
        online.get_online_features(["author_stat:spam"], [{"author_id": 1}])
    with pytest.raises(FeatureReferenceError, match="malformed"):
        online.get_online_features(["spam"], [{"author_id": 1}])
    with pytest.raises(RetrievalError, match="entity row 0 has no 'author_id'"):
        online.get_online_features(["author_stats:spam"], [{"user": 1}])
    with pytest.raises(RetrievalError, match="non-integral"):
        online.get_online_features(["author_stats:spam"], [{"author_id": 1.5}])


def test_full_feature_names_and_collisions(online):
    refs = ["author_stats:comments", "item_stats:comments"]
    with pytest.raises(FeatureReferenceError, match="full_feature_names=True"):
        online.get_online_features(refs, [{"author_id": 1, "item_id": "x"}])
    res = online.get_online_features(refs + ["author_stats:comments"], [{"author_id": 1, "item_id": "x"}],
                                     as_of=T0 + 10 * S, full_feature_names=True)
    assert res.features == ["author_stats__comments", "item_stats__comments"]
    assert res.rows[0] == {"author_id": 1, "item_id": "x", "author_stats__comments": 2, "item_stats__comments": 2}


def test_as_of_default_now_and_datetime(online):
    assert online.get_online_features(["author_stats:comments"], [{"author_id": 1}]).rows[0]["comments"] == 0
    when = datetime.fromtimestamp((T0 + 10 * S) / 1e6, tz=timezone.utc)
    assert online.get_online_features(["author_stats:comments"], [{"author_id": 1}], as_of=when).rows[0][
        "comments"] == 2


def test_as_of_as_iso_text_or_a_date_reads_as_that_time(online):
    iso = datetime.fromtimestamp((T0 + 10 * S) / 1e6, tz=timezone.utc).isoformat()
    want = online.get_online_features(["author_stats:spam"], [{"author_id": 1}], as_of=T0 + 10 * S)
    got = online.get_online_features(["author_stats:spam"], [{"author_id": 1}], as_of=iso)
    assert got.rows == want.rows and got.event_timestamps == want.event_timestamps
    day = datetime.fromtimestamp(T0 / 1e6, tz=timezone.utc).date()
    cols = online.get_online_columns(["author_stats:spam"], {"author_id": [1]}, as_of=day)   # midnight UTC
    assert cols.values == [[0]] and cols.found == [True]
    with pytest.raises(RetrievalError, match="not ISO 8601"):
        online.get_online_features(["author_stats:spam"], [{"author_id": 1}], as_of="yesterday")
    with pytest.raises(RetrievalError, match="is not a time"):
        online.get_online_features(["author_stats:spam"], [{"author_id": 1}], as_of=[T0])


def test_misshapen_arguments_say_what_shape_is_expected(online):
    with pytest.raises(FeatureReferenceError, match=r"got the string 'author_stats:spam': write \['author_stats"):
        online.get_online_features("author_stats:spam", [{"author_id": 1}])
    with pytest.raises(RetrievalError, match="got one mapping"):
        online.get_online_features(["author_stats:spam"], {"author_id": 1})
    with pytest.raises(RetrievalError, match=r"entity row 1 is 2 \(int\), not a mapping"):
        online.get_online_features(["author_stats:spam"], [{"author_id": 1}, 2])
    for entities in ({"author_id": "12"}, {"author_id": 12}):   # a str is not 2 rows "1", "2"
        with pytest.raises(RetrievalError, match="a list of values"):
            online.get_online_columns(["author_stats:spam"], entities)


def test_freshness_and_progress(online, store):
    before = now_micros()
    fresh = online.freshness()
    assert fresh["author_stats"]["newest_event_ts"] == T0 + 2 * S == fresh["author_stats"]["watermark"]
    assert fresh["author_stats"]["events_applied"] == 3 and fresh["author_stats"]["too_late"] == 0
    assert fresh["author_stats"]["lag_seconds"] == pytest.approx((before - T0 - 2 * S) / 1e6, abs=60)
    assert fresh["author_stats"]["applied_at"] <= before
    assert store.progress("stream:") == {"stream:author_stats:0": "2"}
    empty = OnlineFeatures(store, {**views(), "other": FeatureView(
        "other", entity=AUTHOR, source=COMMENTS, features=[Field("text", "string")])}).freshness()["other"]
    assert empty["newest_event_ts"] is None and empty["lag_seconds"] is None


def test_too_late_events_are_returned_and_counted(store):
    v = views()["author_stats"]
    of = OnlineFeatures(store, {"author_stats": v}, {"author_stats": "10m"})
    of.apply_events("author_stats", [Event(1, T0 + 3 * 86_400 * S, (0,), {"is_spam": 1, "text": "new"})])
    old = Event(1, T0, (1,), {"is_spam": 1, "text": "ancient"})
    ok = Event(2, T0 + 2 * 86_400 * S, (2,), {"is_spam": 1, "text": "in time"})
    stats = of.apply_events("author_stats", [old, ok])
    assert stats.too_late == [old] and stats.applied == 1
    assert stats.horizon == T0 + 3 * 86_400 * S - 600 * S - 86_400 * S
    assert of.freshness()["author_stats"]["too_late"] == 1
    nulls = of.apply_events("author_stats", [Event(None, T0, (3,), {})])
    assert nulls.skipped == 1 and nulls.applied == 0


def test_changed_definition_is_refused_until_reset(online, store):
    assert OnlineFeatures(store, views(window="2h")).get_online_features(  # same tiles, sigs, retention: fine
        ["author_stats:comments"], [{"author_id": 1}], as_of=T0 + 10 * S).rows[0]["comments"] == 2
    changed = OnlineFeatures(store, views(window="2d"))  # longer retention: old state may miss evicted tiles
    with pytest.raises(StateError, match="different definition.*reset"):
        changed.get_online_features(["author_stats:comments"], [{"author_id": 1}])
    with pytest.raises(StateError):
        changed.apply_events("author_stats", [Event(1, T0, (9,), {})])
    assert changed.reset("author_stats") == 2
    changed.apply_events("author_stats", [Event(1, T0, (9,), {"text": "again"})])
    res = changed.get_online_features(["author_stats:text", "item_stats:last_text"],
                                      [{"author_id": 1, "item_id": "x"}], as_of=T0 + 10 * S)
    assert res.rows[0]["text"] == "again" and res.rows[0]["last_text"] == "nice"  # other views untouched


def test_project_wiring(tmp_path):
    from loopstack.project import Project
    project = Project.init(tmp_path / "p", example=False)
    try:
        v = views()["author_stats"]
        project.apply([AUTHOR, COMMENTS, v])
        project.online.apply_events("author_stats", [Event(7, T0, (0,), {"text": "hello", "is_spam": 0})])
        assert project.online is project.online  # cached while the definitions do not change
        res = project.get_online_features(["author_stats:text"], [{"author_id": 7}], as_of=T0 + 1)
        assert res.rows == [{"author_id": 7, "text": "hello"}] and res.found == [True]
        assert (tmp_path / "p" / "data" / "online.db").exists()
    finally:
        project.close()


def test_lateness_is_judged_against_the_watermark_before_the_batch(store):
    of = OnlineFeatures(store, views())
    day = 86_400 * S
    backfill = [Event(1, T0 + d * day, (d,), {"is_spam": 1, "text": f"d{d}"}) for d in range(10)]
    res = of.apply_events("author_stats", backfill)  # 10 days in one batch: old ones are not *late*
    assert res.too_late == [] and res.applied == 10
    late = Event(1, T0 + 2 * day, (99,), {"is_spam": 1, "text": "late"})  # behind the 1d window now
    res = of.apply_events("author_stats", [late])
    assert res.too_late == [late]
    on_time = Event(1, T0 + 9 * day + S, (100,), {"is_spam": 1, "text": "fresh"})
    assert of.apply_events("author_stats", [on_time]).too_late == []
    got = of.get_online_features(["author_stats:spam", "author_stats:text"], [{"author_id": 1}],
                                 as_of=T0 + 9 * day + 2 * S)
    assert got.rows[0]["spam"] == 2 and got.rows[0]["text"] == "fresh"  # days 9 and 9+1s inside the 1d window
