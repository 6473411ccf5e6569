"""Vector assembly: signature order, online + on-demand + raw inputs, naming, clear 4xx errors, dtypes."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from loopstack import Count, Entity, EventSource, FeatureView, Field, OnDemandFeature, Sum
from loopstack.serving.vector import FeatureUnavailable, InputError, VectorBuilder, coerce, frame, score_rows
from loopstack.signature import Signature

author = Entity("author", join_key="author_id")
comments = EventSource("comments", timestamp="ts", schema=[Field("author_id", "int64"), Field("is_spam", "int8")])
stats = FeatureView("author_stats", entity=author, source=comments,
                    features=[Sum("is_spam", window="7d", name="spam_7d"), Count(window="7d", name="comments_7d")])
share = OnDemandFeature("share", lambda r: (r.get("spam_7d") or 0) / (r.get("comments_7d") or 1),
                        inputs=["author_stats:spam_7d", "author_stats:comments_7d"])
length = OnDemandFeature("length", lambda r: float(len(r["text"])), inputs=["text"])
VIEWS, ON_DEMAND = {"author_stats": stats}, {"share": share, "length": length}


class FakeOnline:
    """Answers like OnlineFeatures.get_online_features with full names; author 9 is unknown."""

    def __init__(self) -> None:
        self.calls = 0

    def get_online_features(self, features, rows, full_feature_names=False):
        self.calls += 1
        assert full_feature_names
        data = {1: {"spam_7d": 2, "comments_7d": 4}, 2: {"spam_7d": 0, "comments_7d": 10}}
        out = []
        for r in rows:
            d = data.get(r["author_id"], {})
            out.append({**r, **{f.replace(":", "__"): d.get(f.split(":")[1]) for f in features}})
        return SimpleNamespace(rows=out)


def sig(columns: dict, full: bool = False) -> Signature:
    inputs = []
    for ref, dtype in columns.items():
        col = ref.replace(":", "__") if full else ref.split(":")[-1]
        inputs.append({"ref": ref, "version": 1, "column": col, "dtype": dtype})
    return Signature.coerce({"inputs": inputs})


def test_vectors_follow_the_signature_order_with_one_online_read():
    s = sig({"length": "float64", "author_stats:comments_7d": "float64", "share": "float64", "n_urls": "float64"})
    b = VectorBuilder(s, VIEWS, ON_DEMAND)
    assert b.view_refs == ["author_stats:comments_7d", "author_stats:spam_7d"]   # spam_7d only for `share`
    assert set(b.fields) == {"text", "n_urls"}
    online = FakeOnline()
    vecs = b.build(online, [({"author_id": 1}, {"text": "abc", "n_urls": 2}),
                            ({"author_id": 9}, {"text": "", "n_urls": 0})])
    assert vecs == [[3.0, 4, 0.5, 2.0], [0.0, None, 0.0, 0.0]] and online.calls == 1


def test_on_demand_sees_the_names_training_used():
    s = sig({"author_stats:spam_7d": "float64", "share": "float64"}, full=True)
    b = VectorBuilder(s, VIEWS, ON_DEMAND)
    assert b.full_names
    # trained with full_feature_names=True the function saw 'author_stats__spam_7d', not 'spam_7d': same here
    assert b.build(FakeOnline(), [({"author_id": 1}, {})]) == [[2, 0.0]]


@pytest.mark.parametrize("entities,fields,words", [
    ({}, {"text": "a"}, "missing entity key 'author_id'"),
    ({"author_id": 1}, {}, "missing request field 'text' (input of on-demand feature 'length')"),
    ({"author_id": 1}, {"text": 5}, "on-demand feature 'length' failed"),
])
def test_input_errors_name_what_is_missing_or_wrong(entities, fields, words):
    b = VectorBuilder(sig({"length": "float64", "author_stats:spam_7d": "float64"}), VIEWS, ON_DEMAND)
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace(")", r"\)")):
        b.build(FakeOnline(), [(entities, fields)])


def test_features_that_are_not_applied_refuse_the_version():
    with pytest.raises(FeatureUnavailable, match="author_stats:nope"):
        VectorBuilder(sig({"author_stats:nope": "float64"}), VIEWS, ON_DEMAND)


def test_coerce_checks_types_against_the_signature():
    assert coerce(3, "float64", "x") == 3.0 and coerce(2.0, "int64", "x") == 2 and coerce(None, "int64", "x") is None
    assert coerce(True, "bool", "x") is True and coerce("a", "object", "x") == "a"
    for value, dtype in (("3", "float64"), (2.5, "int64"), (3, "str")):
        with pytest.raises(InputError, match="field 'x'"):
            coerce(value, dtype, "field 'x'")



def test_coerce_takes_only_true_false_1_or_0_for_a_bool_input():
    """bool(0.5), bool(7) and bool(nan) are all True: the model would get an answer the client did not send."""
    assert [coerce(v, "bool", "x") for v in (True, False, 1, 0, 1.0, 0.0, None)] == [True, False, True, False,
                                                                                    True, False, None]
    assert coerce(float("nan"), "bool", "x") is None   # a missing value, as for a float input
    for value in (0.5, 2, -1, 7.0):
        with pytest.raises(InputError, match=r"field 'x' must be true or false \(or 1 or 0"):
            coerce(value, "bool", "field 'x'")


def test_coerce_refuses_numbers_the_input_type_cannot_hold():
    """Overflow or infinity would fail the whole batch (or the request with a 500): a 422 names the input."""
    for value, dtype in ((10**400, "float64"), (float("inf"), "float64"), (float("-inf"), "int64"),
                         (2**70, "int64"), (300, "uint8"), (-1, "uint8")):
        with pytest.raises(InputError, match=f"field 'x' must be a finite number that {dtype} can hold"):
            coerce(value, dtype, "field 'x'")
    assert np.isnan(coerce(float("nan"), "float64", "x"))   # a missing value, as null is
    assert coerce(2**62, "int64", "x") == 2**62 and coerce(10**300, "float64", "x") == 1e300

def test_frame_has_the_signature_dtypes_and_missing_ints_become_nan():
    s = sig({"a": "float64", "b": "int64", "c": "object"})
    df = frame(s, [[1, 2, "x"], [None, 3, "y"]])
    assert [str(t) for t in df.dtypes] == ["float64", "int64", "object"] and np.isnan(df.a[1])
    df = frame(s, [[1.0, None, "x"]])
    assert str(df.b.dtype) == "float64" and np.isnan(df.b[0])
    assert list(frame(sig({"a": "float64", "b": "float64"}), [[1, None]]).iloc[0].isna()) == [False, True]


def test_score_rows_uses_the_positive_class_probability():
    class M:
        classes_ = np.array([0, 1])

        def predict_proba(self, X):
            assert list(X.columns) == ["a", "b"]
            return np.column_stack([1 - X.a.to_numpy() / 10, X.a.to_numpy() / 10])
    assert score_rows(M(), sig({"a": "float64", "b": "float64"}), [[1, 0], [5, None]]) == pytest.approx([0.1, 0.5])


def test_all_float_field_vectors_are_built_for_the_batch_at_once_with_the_same_values_and_errors():
    """The batch fast path (every input a float field) gives what the per-value path gives, and falls back
    to it, with the same messages naming the instance, whenever a value needs converting or checking."""
    from loopstack.serving.predict import _Where
    b = VectorBuilder(sig({"a": "float64", "b": "float64", "c": "float64"}), {}, {})
    rows = [({}, {"c": 0.5 * i, "a": float(i), "b": -1.0, "unused": "x"}) for i in range(32)]
    fast = b.build(None, rows, _Where(range(32)))
    assert [list(v) for v in fast] == [[float(i), -1.0, 0.5 * i] for i in range(32)]
    assert b.build(None, rows, _Where(range(32)), floats=True) == fast
    mixed = [*rows[:5], ({}, {"a": 3, "b": True, "c": None})]    # an int, a bool, a null: converted one by one
    assert [list(v) for v in b.build(None, mixed, _Where(range(6)))][5] == [3.0, 1.0, None]
    with pytest.raises(InputError, match=r"^instance 2: field 'b' must be a number .*got '1'"):
        b.build(None, [*rows[:2], ({}, {"a": 1.0, "b": "1", "c": 2.0})], _Where(range(3)))
    with pytest.raises(InputError, match=r"^instance 4: missing request field 'c' \(model input 'c'"):
        b.build(None, [*rows[:4], ({}, {"a": 1.0, "b": 2.0})], _Where(range(5)), floats=True)
    one = VectorBuilder(sig({"a": "float64"}), {}, {})       # one input: still one value per vector
    assert [list(v) for v in one.build(None, [({}, {"a": 2.5}), ({}, {"a": 1.0})])] == [[2.5], [1.0]]
    assert _Where([3, 7])[1] == "instance 7: " and list(_Where([0])) == ["instance 0: "]
