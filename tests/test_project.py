"""End to end through the public API: init → apply → log.append → get_historical_features."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import os
import uuid

import pandas as pd
import pytest

from loopstack import (Count, Entity, EventSource, FeatureView, Field, Last, OnDemandFeature, Project,
                       RetrievalError, Sum)

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)

author = Entity("author", join_key="author_id")
comments = EventSource("comments", timestamp="ts",
                       schema=[Field("author_id", "int64"), Field("is_spam", "int8"), Field("text", "string")])
author_stats = FeatureView("author_stats", entity=author, source=comments, ttl="30d",
                           features=[Sum("is_spam", window="7d", name="spam_7d"),
                                     Count(window="1h", name="comments_1h"),
                                     Last("text", name="last_text")])


@pytest.fixture
def project(tmp_path):
    p = Project.init(tmp_path / "proj", example=False)
    p.apply([author, comments, author_stats])
    yield p
    p.close()


def test_issue_example_end_to_end_never_counts_later_spam(project):
    recs = [{"author_id": 1, "is_spam": 1, "text": f"spam {i}", "ts": T0 + timedelta(days=i)} for i in range(10)]
    recs += [{"author_id": 2, "is_spam": 0, "text": "hello", "ts": T0 + timedelta(hours=1)}]
    res = project.log.append("comments", recs)
    assert (res.accepted, res.rejected) == (11, 0)
    when = [T0 + timedelta(days=5), T0 + timedelta(days=5, microseconds=1), T0 + timedelta(days=100), T0]
    entity_df = pd.DataFrame({"author_id": [1, 1, 1, 3], "event_timestamp": when, "label": [1, 1, 0, 0]})
    out = project.get_historical_features(entity_df, ["author_stats:spam_7d", "author_stats:last_text",
                                                      "author_stats:comments_1h"])
    assert list(out.columns) == ["author_id", "event_timestamp", "label", "spam_7d", "last_text", "comments_1h"]
    # strictly before day 5: spam on days 0..4 (5 events), the day-5 comment is not counted
    assert out.spam_7d.tolist() == [5, 6, 0, 0]
    assert out.last_text.tolist()[:2] == ["spam 4", "spam 5"]
    assert pd.isna(out.last_text[2])          # latest is 91 days old: beyond the 30d ttl
    assert pd.isna(out.last_text[3])          # author 3 has no history
    assert out.label.tolist() == [1, 1, 0, 0]  # input columns and order kept


def test_appends_after_a_query_are_seen_by_the_next_query(project):
    project.log.append("comments", [{"author_id": 1, "is_spam": 1, "text": "a", "ts": T0}])
    q = pd.DataFrame({"author_id": [1], "event_timestamp": [T0 + timedelta(days=1)]})
    assert project.get_historical_features(q, ["author_stats:spam_7d"]).spam_7d.tolist() == [1]
    project.log.append("comments", [{"author_id": 1, "is_spam": 1, "text": "b", "ts": T0 + timedelta(hours=2)}])
    assert project.get_historical_features(q, ["author_stats:spam_7d"]).spam_7d.tolist() == [2]


def test_bad_records_are_dead_lettered_not_lost(project):
    res = project.log.append("comments", [{"author_id": "x", "is_spam": 1, "text": "a", "ts": T0},
                                          {"author_id": 1, "is_spam": 0, "text": "ok", "ts": T0}])
    assert (res.accepted, res.rejected) == (1, 1)
    dlq = list(project.log.replay("comments.dlq"))
    assert len(dlq) == 1 and "author_id" in dlq[0].value["reason"]


def test_on_demand_feature_uses_retrieved_features(project):
    share = OnDemandFeature("spam_x2", lambda row: float(row["spam_7d"]) * 2, inputs=["author_stats:spam_7d"])
    project.apply([share])
    project.log.append("comments", [{"author_id": 1, "is_spam": 1, "text": "a", "ts": T0}])
    q = pd.DataFrame({"author_id": [1], "event_timestamp": [T0 + timedelta(days=1)]})
    out = project.get_historical_features(q, ["author_stats:spam_7d", "spam_x2"])
    assert out.spam_x2.tolist() == [2.0]
    plain = project.get_historical_features(q, ["author_stats:spam_7d"])
    assert list(plain.columns) == ["author_id", "event_timestamp", "spam_7d"]  # on-demand only when named


def test_unknown_feature_lists_close_matches(project):
    project.log.append("comments", [{"author_id": 1, "is_spam": 1, "text": "a", "ts": T0}])
    q = pd.DataFrame({"author_id": [1], "event_timestamp": [T0]})
    with pytest.raises(Exception, match="spam_7d"):
        project.get_historical_features(q, ["author_stats:spam_7"])
    with pytest.raises(RetrievalError, match="event_timestamp"):
        project.get_historical_features(pd.DataFrame({"author_id": [1]}), ["author_stats:spam_7d"])


def test_postgres_metadata_and_redis_log_by_configuration(tmp_path, meta_url, redis_url, monkeypatch):
    monkeypatch.setenv("LOOPSTACK_LOG__BACKEND", "redis")
    monkeypatch.setenv("LOOPSTACK_LOG__URL", redis_url)
    monkeypatch.setenv("LOOPSTACK_LOG__PREFIX", f"t{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("LOOPSTACK_METADATA__BACKEND", "postgresql" if meta_url.startswith("postgres") else "sqlite")
    monkeypatch.setenv("LOOPSTACK_METADATA__URL", meta_url)
    p = Project.init(tmp_path / "proj", example=False)
    assert type(p.log).__name__ == "RedisLog" and p.meta.url == meta_url
    assert p.log.prefix == os.environ["LOOPSTACK_LOG__PREFIX"]
    p.apply([author_stats])
    p.log.append("comments", [{"author_id": 1, "is_spam": 1, "text": "a", "ts": T0}])
    q = pd.DataFrame({"author_id": [1], "event_timestamp": [T0 + timedelta(seconds=1)]})
    assert p.get_historical_features(q, ["author_stats:spam_7d"]).spam_7d.tolist() == [1]
    p.close()


def test_a_metadata_path_whose_folder_cannot_be_made_is_a_config_error(tmp_path, monkeypatch):
    from loopstack.errors import ConfigError
    root = tmp_path / "p"
    Project.init(root, name="p").close()
    (tmp_path / "plain-file").write_text("x")
    monkeypatch.setenv("LOOPSTACK_METADATA__PATH", str(tmp_path / "plain-file" / "sub" / "meta.db"))
    p = Project(root)
    try:
        with pytest.raises(ConfigError, match="metadata.path"):
            _ = p.meta
    finally:
        p.close()


@pytest.mark.parametrize("folder", ["null", "a: b", "#1", "[x", "017", "yes", "café", "it's \"q\""])
def test_init_keeps_any_folder_name_as_the_project_name(tmp_path, folder):
    p = Project.init(tmp_path / folder, example=False)
    assert p.config.name == folder
    p.close()


def test_init_name_cannot_inject_config_keys(tmp_path):
    p = Project.init(tmp_path / "p", name="x\nlog: {backend: redis}", example=False)
    assert p.config.name == "x\nlog: {backend: redis}" and p.config.log.backend == "local"
    p.close()


def test_init_where_data_is_a_file_is_a_config_error(tmp_path):
    from loopstack.errors import ConfigError
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "data").write_text("not a folder")
    with pytest.raises(ConfigError, match=r"cannot create the project in .*p: File exists \(.*data\)"):
        Project.init(tmp_path / "p", example=False)


def test_opening_a_subfolder_or_a_file_of_a_project_points_at_the_project(tmp_path):
    from loopstack.errors import ConfigError
    Project.init(tmp_path / "p", example=False).close()
    (tmp_path / "p" / "notebooks").mkdir()
    with pytest.raises(ConfigError, match=rf"inside the project {tmp_path / 'p'}: run from there or pass -p"):
        Project(tmp_path / "p" / "notebooks")
    with pytest.raises(ConfigError, match=r"loopstack.yaml is a file, not a project folder"):
        Project(tmp_path / "p" / "loopstack.yaml")


@pytest.mark.parametrize("key, attr", [("ARTIFACTS__PATH", "artifacts"), ("LOG__PATH", "log")])
def test_a_store_folder_that_cannot_be_made_is_a_config_error_naming_the_key(tmp_path, monkeypatch, key, attr):
    from loopstack.errors import ConfigError
    root = tmp_path / "p"
    Project.init(root, example=False).close()
    (tmp_path / "plain-file").write_text("x")
    monkeypatch.setenv(f"LOOPSTACK_{key}", str(tmp_path / "plain-file" / "sub"))
    p = Project(root)
    try:
        setting = key.lower().replace("__", ".")
        with pytest.raises(ConfigError, match=rf"plain-file/sub \(Not a directory\); set `{setting}`"):
            getattr(p, attr)
    finally:
        p.close()
