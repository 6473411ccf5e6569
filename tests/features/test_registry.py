"""Feature registry on SQLite and a real PostgreSQL: apply diffs, versions, old versions readable."""
from __future__ import annotations

import pytest

from loopstack import Entity, EventSource, FeatureView, Field, Sum
from loopstack.errors import DefinitionError
from loopstack.features.registry import FeatureRegistry
from loopstack.meta.db import MetadataStore

author = Entity("author", join_key="author_id")
comments = EventSource("comments", timestamp="ts", schema=[Field("author_id", "int64"), Field("is_spam", "int8")])


def view(window="7d", name="author_stats"):
    return FeatureView(name, entity=author, source=comments, features=[Sum("is_spam", window=window, name="spam")])


@pytest.fixture
def registry(meta_url):
    store = MetadataStore(meta_url)
    yield FeatureRegistry(store)
    store.close()


def test_first_apply_adds_view_with_its_entity_and_source(registry):
    diff = registry.apply([view()])
    assert diff.added == [("entity", "author", 1), ("source", "comments", 1), ("feature_view", "author_stats", 1)]
    assert set(registry.views()) == {"author_stats"}
    assert registry.views()["author_stats"] == view()


def test_reapply_same_is_no_change_and_change_makes_new_version(registry):
    registry.apply([view()])
    again = registry.apply([view()])
    assert again.is_empty and again.lines() == ["no changes"]
    changed = registry.apply([view(window="14d")])
    assert changed.changed == [("feature_view", "author_stats", 2)]
    assert changed.lines() == ["~ feature_view author_stats (v2)"]
    assert registry.views()["author_stats"].feature("spam").window == "14d"
    v1 = registry.view_version("author_stats", 1)
    assert v1["spec"]["features"][0]["window"] == "7d"  # the old version stays readable


def test_prune_marks_missing_definitions_removed_but_keeps_history(registry):
    registry.apply([view(), view(name="other")])
    diff = registry.apply([view()], prune=True)
    assert diff.removed == [("feature_view", "other", 2)]
    assert set(registry.views()) == {"author_stats"}
    assert [v["removed"] for v in registry.versions_of("feature_view", "other")] == [False, True]
    readd = registry.apply([view(), view(name="other")])
    assert readd.added == [("feature_view", "other", 3)]


def test_partial_apply_without_prune_removes_nothing(registry):
    registry.apply([view(), view(name="other")])
    assert registry.apply([view()]).removed == []
    assert set(registry.views()) == {"author_stats", "other"}


def test_two_different_definitions_with_one_name_are_refused(registry):
    other_author = Entity("author", join_key="user_id")
    with pytest.raises(DefinitionError, match="two different entity definitions are both named 'author'"):
        registry.apply([author, other_author])
    with pytest.raises(DefinitionError, match="pass Entity, EventSource"):
        registry.apply(["author"])


def test_unknown_version_lists_the_ones_that_exist(registry):
    registry.apply([view()])
    with pytest.raises(DefinitionError, match=r"has no version 5; versions are \[1\]"):
        registry.view_version("author_stats", 5)
    with pytest.raises(DefinitionError, match="no feature view named 'nope'"):
        registry.view_version("nope")
