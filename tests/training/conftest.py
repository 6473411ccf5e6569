"""Fixtures of box 4: a project with the spam comments applied and a labelled comment stream."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from loopstack import Count, Entity, EventSource, FeatureView, Field, Project, Sum
from loopstack.demo.data import generate_comments
from tests.meta.helpers import use_metadata

T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)
author = Entity("author", join_key="author_id")
comments = EventSource("comments", timestamp="ts",
                       schema=[Field("author_id", "int64"), Field("is_spam", "int8"), Field("n_urls", "int32")])
author_stats = FeatureView("author_stats", entity=author, source=comments, ttl="30d",
                           features=[Sum("is_spam", window="7d", name="spam_7d"),
                                     Count(window="7d", name="comments_7d")])
FEATURES = ["author_stats:spam_7d", "author_stats:comments_7d"]


@pytest.fixture(scope="module")
def comment_events():
    """1500 comments over 21 days (deterministic), as the demo generates them."""
    return [{"author_id": c["author_id"], "is_spam": c["is_spam"], "n_urls": c["n_urls"], "ts": c["ts"]}
            for c in generate_comments(n=1500, n_authors=60, days=21, spam_rate=0.05, seed=3, start=T0)]


def labels_for(events: list[dict], final_after: timedelta = timedelta(hours=6)) -> pd.DataFrame:
    """One label per comment: predicted at the comment's time, final `final_after` later."""
    return pd.DataFrame({"author_id": [e["author_id"] for e in events],
                         "event_timestamp": [e["ts"] for e in events],
                         "label": [e["is_spam"] for e in events],
                         "label_timestamp": [e["ts"] + final_after for e in events]})


@pytest.fixture
def project(tmp_path, comment_events, meta_url):
    """The spam project with its comments logged; metadata on SQLite and on PostgreSQL."""
    use_metadata(tmp_path / "proj", meta_url)
    p = Project.init(tmp_path / "proj", example=False)
    p.apply([author, comments, author_stats])
    res = p.log.append("comments", comment_events)
    assert res.rejected == 0
    yield p
    p.close()


@pytest.fixture
def pg_project(tmp_path, meta_url, monkeypatch):
    """A project whose metadata store is `meta_url` (SQLite file or a fresh PostgreSQL database)."""
    p = Project.init(tmp_path / "proj", example=False)
    monkeypatch.setenv("LOOPSTACK_METADATA__BACKEND", "postgresql" if meta_url.startswith("postgresql") else "sqlite")
    monkeypatch.setenv("LOOPSTACK_METADATA__URL", meta_url)
    p = Project(p.root)
    assert p.meta.url == meta_url
    yield p
    p.close()
