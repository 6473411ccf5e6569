"""Feature definitions: validation errors, spec round trips, version hashes."""
from __future__ import annotations

import pytest

from loopstack import Count, CountDistinct, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Min, Sum
from loopstack.errors import DefinitionError
from loopstack.features.definitions import Aggregation, Filter
from loopstack.timeutil import parse_duration

author = Entity("author", join_key="author_id")
comments = EventSource("comments", timestamp="ts",
                       schema=[Field("author_id", "int64"), Field("is_spam", "int8"), Field("text", "string")])


def test_public_api_example_from_the_issue_builds():
    view = FeatureView("author_stats", entity=author, source=comments, ttl="30d",
                       features=[Sum("is_spam", window="7d", name="spam_7d"), Count(window="1h", name="comments_1h"),
                                 Last("text", name="last_text")])
    assert [f.name for f in view.features] == ["spam_7d", "comments_1h", "last_text"]
    assert view.feature("last_text").is_plain and not view.feature("spam_7d").is_plain
    assert comments.topic == "comments" and not comments.is_batch


def test_spec_round_trip_keeps_every_detail():
    view = FeatureView("v", entity=author, source=comments, ttl="2h", allowed_lateness="5m", features=[
        Count(window="10m"), Sum("is_spam", window="7d"), Mean("is_spam", window="1h", filter="is_spam >= 0"),
        Min("is_spam", window="30d"), Max("is_spam", window="1d"), Last("text", window="1h", name="lt"),
        CountDistinct("text", window="7d", filter="text != 'x'"), Field("is_spam", "int8")])
    again = FeatureView.from_spec(view.to_spec(), {"author": author}, {"comments": comments})
    assert again == view and again.spec_hash == view.spec_hash
    assert [f.name for f in view.features][:2] == ["count_10m", "sum_is_spam_7d"]


def test_changing_a_window_changes_the_hash():
    a = FeatureView("v", entity=author, source=comments, features=[Count(window="1h")])
    b = FeatureView("v", entity=author, source=comments, features=[Count(window="2h", name="count_1h")])
    assert a.spec_hash != b.spec_hash


@pytest.mark.parametrize("make, message", [
    (lambda: Sum("is_spam"), r"needs a window"),
    (lambda: Sum(window="1h"), r"needs a column"),
    (lambda: Count(window="7 days"), r"duration '7 days' is not understood"),
    (lambda: Count(window="1h", filter="is_spam ~ 1"), r"filter 'is_spam ~ 1' is not understood"),
    (lambda: Field("x", "int"), r"dtype 'int'; allowed dtypes are int8"),
    (lambda: Entity("bad name", join_key="id"), r"name 'bad name' is invalid"),
    (lambda: Entity("user", join_key="user_id", dtype="str"), r"dtype 'str' is not a join-key type; use one of"),
    (lambda: Entity("user", join_key="user_id", dtype="Int64"), r"dtype 'Int64' is not a join-key type"),
    (lambda: Entity("user", join_key="user_id", dtype="float64"), r"dtype 'float64' is not a join-key type"),
    (lambda: FeatureView("v", entity=author, source=comments, features=[Sum("amount", window="1h")]),
     r"uses column 'amount', which source 'comments' does not have"),
    (lambda: FeatureView("v", entity=Entity("item", join_key="item_id"), source=comments,
                         features=[Count(window="1h")]), r"no column 'item_id'"),
    (lambda: FeatureView("v", entity=author, source=comments, features=[Count(window="1h"), Count(window="1h")]),
     r"defines feature\(s\) \['count_1h'\] twice"),
    (lambda: FeatureView("v", entity=author, source=comments, features=[]), r"has no features"),
    (lambda: EventSource("s", timestamp="ts", topic="t", path="x.parquet"), r"either topic= or path="),
    (lambda: EventSource("s", timestamp="ts", path="x.json"), r"must be a .parquet or .csv"),
])
def test_bad_definitions_say_what_is_wrong(make, message):
    with pytest.raises(DefinitionError, match=message):
        make()


def test_filter_parsing_and_null_semantics():
    f = Filter.parse("label == 'spam'")
    assert (f.column, f.op, f.value) == ("label", "==", "spam")
    assert f.matches("spam") and not f.matches("ham") and not f.matches(None)
    assert Filter.parse("n >= 2.5").value == 2.5 and Filter.parse("flag == true").value is True
    assert not Filter.parse("n > 1").matches("text")  # incomparable types never match


def test_durations():
    assert parse_duration("10m").total_seconds() == 600
    assert parse_duration("7d").days == 7 and parse_duration("500ms").total_seconds() == 0.5
    assert Aggregation.from_spec(Count(window="1h").to_spec()) == Count(window="1h")


@pytest.mark.parametrize("name, words", [("defs", "is a folder"), ("defs.yaml", "is not a .py file"),
                                         ("nope.py", r"not found \(check the --file path\)")])
def test_a_definitions_file_that_is_not_a_python_file_is_a_clear_error(tmp_path, name, words):
    """`loopstack apply -f <folder or .yaml>` crashed: AttributeError: 'NoneType' object has no attribute 'loader'."""
    from loopstack.project import Project
    p = Project.init(tmp_path / "proj", example=False)
    (tmp_path / "defs").mkdir()
    (tmp_path / "defs.yaml").write_text("entities: []\n")
    with pytest.raises(DefinitionError, match=words) as info:
        p.load_definitions(tmp_path / name)
    assert str(tmp_path / name) in str(info.value)
    p.close()
