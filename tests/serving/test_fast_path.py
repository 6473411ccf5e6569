"""The request fast path: hand validation accepts exactly what the pydantic models accept unchanged,
models fitted on the signature's columns are scored on arrays with identical scores, and the batcher
hands results back to the event loop (with timeouts) without a thread hop per request."""
from __future__ import annotations

import asyncio
import time
import warnings

import numpy as np
import pandas as pd
import pytest

from loopstack.serving import vector
from loopstack.serving.batcher import BatchConfig, DynamicBatcher
from loopstack.serving.schemas import PredictBatchRequest, PredictRequest, fast_predict, fast_predict_batch
from loopstack.signature import Signature

GOOD = [
    {},
    {"entities": {"author_id": 42, "k": "x"}, "fields": {"a": 1.5, "b": 2, "c": "s", "d": True, "e": None}},
    {"user_id": "u-1", "deadline_ms": 200},
    {"user_id": 7, "deadline_ms": 0.5, "fields": {}},
]
BAD = [
    [1, 2], "x", {"colour": "red"}, {"entities": {"author_id": [1]}}, {"entities": {"author_id": True}},
    {"entities": {"a": 1.5}}, {"fields": {"a": [1]}}, {"fields": {"a": {"b": 1}}}, {"fields": []},
    {"user_id": True}, {"user_id": 1.5}, {"deadline_ms": 0}, {"deadline_ms": -5}, {"deadline_ms": True},
    {"deadline_ms": "5"}, {"deadline_ms": 600_001},
]


@pytest.mark.parametrize("body", GOOD)
def test_fast_validation_accepts_what_pydantic_accepts_with_the_same_values(body):
    entities, fields, user_id, deadline = fast_predict(body)
    ref = PredictRequest.model_validate(body)
    assert (entities, fields, user_id, deadline) == (ref.entities, ref.fields, ref.user_id, ref.deadline_ms)


@pytest.mark.parametrize("body", BAD)
def test_anything_unusual_is_left_to_pydantic(body):
    assert fast_predict(body) is None   # pydantic then writes the 4xx (or accepts it after coercion)


def test_fast_batch_validation():
    body = {"instances": [{"fields": {"a": 1.0}}, {"entities": {"k": 1}, "user_id": "u"}], "user_id": 3}
    instances, user_id, deadline, floats = fast_predict_batch(body)
    ref = PredictBatchRequest.model_validate(body)
    assert [(i.entities, i.fields, i.user_id) for i in ref.instances] == instances and user_id == 3 and deadline is None
    assert floats is True    # every field value is a float: the vector builder need not check again
    for bad in ({"instances": []}, {"instances": [{"deadline_ms": 5}]}, {"instances": [1]}, {"x": 1}):
        assert fast_predict_batch(bad) is None


@pytest.mark.parametrize("body", [
    {"user_id": "\ud800"}, {"instances": [{"user_id": "a\udc00"}]}, {"instances": [{}], "user_id": "\ud800"},
    {"columns": ["a"], "rows": [[1]], "user_id": "\ud800"}])
def test_a_user_id_that_is_not_valid_unicode_is_refused_by_the_models(body):
    """Only Python's JSON reader makes such a string (orjson refuses the body): routing could not hash it."""
    import pydantic
    model = PredictBatchRequest if "instances" in body or "rows" in body else PredictRequest
    with pytest.raises(pydantic.ValidationError, match="lone surrogate"):
        model.model_validate(body)
    assert PredictRequest.model_validate({"user_id": "\U0001f600"}).user_id == "\U0001f600"


INSTANCES_GOOD = [{}, {"entities": {"author_id": 42, "k": "x"}, "fields": {"a": 1.5, "b": 2, "c": "s", "d": True,
                                                                         "e": None}}, {"user_id": 7}, {"user_id": "u"}]
INSTANCES_BAD = [[1], "x", {"colour": "red"}, {"deadline_ms": 5}, {"entities": {"author_id": [1]}},
                 {"entities": {"author_id": True}}, {"entities": {"a": 1.5}}, {"entities": {"a": None}},
                 {"entities": None}, {"fields": None}, {"fields": {"a": [1]}}, {"fields": {"a": {"b": 1}}},
                 {"fields": []}, {"user_id": True}, {"user_id": 1.5}]


@pytest.mark.parametrize("bad", INSTANCES_BAD)
def test_a_bad_instance_anywhere_in_a_batch_is_left_to_pydantic(bad):
    """Column-wise checks must still see every value of every instance: one bad one sends the whole body to
    pydantic (which rejects it, or coerces it into something else than the body said)."""
    for at in (0, 5, 31):
        items = [{"fields": {"a": float(i), "b": 1.0}} for i in range(32)]
        items[at] = bad
        assert fast_predict_batch({"instances": items}) is None


def test_fast_batch_equals_pydantic_and_says_when_every_field_is_a_float():
    items = [{"entities": {"author_id": i}, "fields": {"a": float(i), "b": 0.5}} for i in range(31)]
    for extra in INSTANCES_GOOD:
        got = fast_predict_batch({"instances": [*items, extra], "deadline_ms": 50})
        ref = PredictBatchRequest.model_validate({"instances": [*items, extra], "deadline_ms": 50})
        assert got[0] == [(i.entities, i.fields, i.user_id) for i in ref.instances] and got[2] == 50
        assert got[3] is all(type(v) is float for e in got[0] for v in e[1].values())


def _sig(cols: dict) -> Signature:
    return Signature.coerce({"inputs": [{"ref": c, "version": None, "dtype": t} for c, t in cols.items()],
                             "outputs": [{"name": "score", "dtype": "float64", "positive_class": 1}]})


def test_a_model_fitted_on_the_signature_columns_is_scored_on_an_array_with_identical_scores():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(0)
    X = pd.DataFrame({"a": rng.normal(size=200), "b": rng.integers(0, 5, 200)})
    model = LogisticRegression().fit(X, (X.a > 0).astype(int))
    sig = _sig({"a": "float64", "b": "int64"})
    rows = [[0.3, 2], [-1.0, 0], [2.0, 4]]
    want = model.predict_proba(vector.frame(sig, rows))[:, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")     # the array path must not warn about feature names
        first = vector.score_rows(model, sig, rows)
        again = vector.score_rows(model, sig, rows)
    assert vector._PLANS[(id(model), id(sig))][1] is True
    assert first == again == pytest.approx(list(want), abs=0, rel=0)


def test_models_without_the_signature_names_keep_the_frame():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(1)
    X = rng.normal(size=(100, 2))
    model = LogisticRegression().fit(X, (X[:, 0] > 0).astype(int))    # fitted on an array: no names
    sig = _sig({"a": "float64", "b": "float64"})
    vector.score_rows(model, sig, [[0.1, 0.2]])
    assert vector._PLANS[(id(model), id(sig))][1] is False


def test_async_results_come_back_per_batch_and_time_out():
    def slow(rows):
        time.sleep(0.05 if rows[0] == "slow" else 0)
        return [r * 2 if isinstance(r, int) else r for r in rows]

    async def run() -> tuple:
        b = DynamicBatcher(BatchConfig(max_batch_size=8, max_latency_ms=2), slow, name="t")
        try:
            got = await asyncio.gather(*(b.submit_async(i) for i in range(20)))
            with pytest.raises(asyncio.TimeoutError):
                await b.submit_async("slow", timeout=0.01)
            fut = b.submit_future(5)
            return got, await fut, b.stats()
        finally:
            b.close()
    got, one, stats = asyncio.run(run())
    assert got == [i * 2 for i in range(20)] and one == 10 and stats["requests"] == 22
