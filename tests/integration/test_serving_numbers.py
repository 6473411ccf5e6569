"""Numbers a model cannot take (NaN, Infinity, 1e400, integers past float64) are the client's 4xx, refused before
the batcher: they never fail the batch other users' requests share, and never count against the breaker."""
from __future__ import annotations

import threading

import httpx
import pytest

from loopstack.serving.batcher import BatchConfig
from tests.integration.serving_env import body, config, fit_model, make_project, metric, register, serving

PREDICT, BATCH = "/v1/models/spam:predict", "/v1/models/spam:predict_batch"
HUGE = b"1" + b"0" * 400   # an integer no float64 holds (json reads it as an int; orjson refuses it)
ROWS = b'{"columns": ["author_id", "text", "n_urls", "new_account"], "rows": [[1, "x", 1, %s]]}'


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("serving-numbers") / "proj", n_comments=60)
    register(p, fit_model(0))
    cfg = config(cache_entries=0, batch=BatchConfig(max_batch_size=16, max_latency_ms=300.0))
    with serving(p, cfg) as srv:
        yield srv
    p.close()


def _post(srv, path: str, raw: bytes) -> httpx.Response:
    return httpx.post(srv.url + path, content=raw, headers={"content-type": "application/json"}, timeout=30)


def _one(new_account: bytes) -> bytes:
    return b'{"entities": {"author_id": 1}, "fields": {"text": "x", "n_urls": 1, "new_account": %s}}' % new_account


@pytest.mark.parametrize("path,raw", [
    (PREDICT, _one(b"Infinity")), (PREDICT, _one(b"-Infinity")), (PREDICT, _one(b"NaN")), (PREDICT, _one(b"1e400")),
    (BATCH, b'{"instances": [%s]}' % _one(b"Infinity")), (BATCH, ROWS % b"Infinity"), (BATCH, ROWS % b"NaN"),
])
def test_non_finite_numbers_are_a_422_that_says_what_to_send(env, path, raw):
    r = _post(env, path, raw)
    assert r.status_code == 422, r.text
    out = r.json()
    assert out["error"] == "invalid_request" and "finite number" in out["detail"] and "null" in out["detail"]
    assert ".str:" not in out["detail"]   # named once, not as every type of the union it failed


@pytest.mark.parametrize("path,raw", [(PREDICT, _one(HUGE)), (BATCH, ROWS % HUGE)])
def test_an_integer_past_float64_is_a_422_not_a_500(env, path, raw):
    r = _post(env, path, raw)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input" and "new_account" in r.json()["detail"]
    assert "float64" in r.json()["detail"]


def test_a_bad_number_does_not_fail_the_requests_batched_with_it(env):
    results: dict[int, int] = {}

    def call(i: int) -> None:
        r = _post(env, PREDICT, _one(b"Infinity")) if i == 0 else httpx.post(
            env.url + PREDICT, json=body(author=i, n_urls=i), timeout=30)
        results[i] = r.status_code
    threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {0: 422, 1: 200, 2: 200, 3: 200, 4: 200}
    text = env.client.get("/metrics").text
    assert metric(text, "loopstack_serving_rung_failures_total", model="spam") == 0
    assert metric(text, "loopstack_serving_errors_total", model="spam", error="unavailable") == 0


class NoMissing:
    """A model that raises on a missing value (as many do): a row it cannot score, with a valid request."""

    def __init__(self, model) -> None:
        self.model, self.classes_ = model, model.classes_

    def predict_proba(self, X):
        import numpy as np
        if np.isnan(np.asarray(X, dtype=float)).any():
            raise ValueError("Input X contains NaN")
        return self.model.predict_proba(X)


def test_a_row_the_model_raises_on_fails_alone_not_the_batch_it_shared(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=60)
    register(p, NoMissing(fit_model(0)))
    cfg = config(cache_entries=0, batch=BatchConfig(max_batch_size=16, max_latency_ms=300.0))
    results: dict[int, int] = {}
    try:
        with serving(p, cfg) as srv:
            def call(i: int) -> None:   # request 0 sends null (a missing value: NaN for the model)
                results[i] = httpx.post(srv.url + PREDICT, json=body(author=i, n_urls=i, new_account=None if i == 0
                                                                        else 1), timeout=30).status_code
            threads = [threading.Thread(target=call, args=(i,)) for i in range(5)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            stats = srv.app.state.fleet.handles["spam"].snapshot.versions[1].batcher.stats()
        assert results[0] >= 500 and [results[i] for i in range(1, 5)] == [200] * 4, results
        assert max(stats["batch_sizes"]) == 5   # they did share one batch, which was then split
    finally:
        p.close()


@pytest.mark.parametrize("path,raw", [
    (BATCH, b'{"columns": ["author_id", "text", "n_urls", "new_account"], "rows": [[%s, "x", 1, 0]]}' % HUGE[:31]),
    (BATCH, b'{"instances": [{"entities": {"author_id": %s}, "fields": {"text": "x", "n_urls": 1, "new_account": 0}}]}'
     % HUGE[:31]),
    (PREDICT, b'{"entities": {"author_id": %s}, "fields": {"text": "x", "n_urls": 1, "new_account": 0}}' % HUGE[:31]),
])
def test_an_entity_key_past_64_bits_is_a_422_in_every_body_form(env, path, raw):
    # the rows form said "must be an integer or a string, got 1e+30" (orjson reads it as a float); the other
    # forms answered 200 for an entity no 64-bit key can name
    r = _post(env, path, raw)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_input" and "author_id" in r.json()["detail"]
    assert "too large for a key" in r.json()["detail"] and "1e+30" in r.json()["detail"]
