"""The model server over real HTTP on loopback: predictions (single and batch), the vector it assembles
(equal to what offline retrieval computes for training), bad input, metrics, health, prediction log."""
from __future__ import annotations

from datetime import datetime, timezone

import threading
import time

import httpx
import pandas as pd
import pytest

from loopstack.serving.config import ModelSpec
from tests.integration.serving_env import (COLUMNS, SIGNATURE, ConstantModel, SlowModel, body, config, fit_model,
                                           make_project, metric, predictions, register, serving)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("serving-api") / "proj")
    model = fit_model(0)
    register(p, model)
    ham = p.models.register("ham", SlowModel(ConstantModel(0.7), delay=1.0), signature=SIGNATURE)
    p.models.promote(ham.ref, "production", reason="test", override=True)
    cfg = config(feature_sample=1.0, model_budget_ms=10_000, models=(ModelSpec("spam"), ModelSpec("ham")))
    with serving(p, cfg) as srv:
        srv.model = model
        yield p, srv
    p.close()


def _logged(p, srv, rid: str) -> dict:
    srv.app.state.service.plog.flush()
    recs = [r for r in predictions(p) if r["request_id"] == rid and r["kind"] == "prediction"]
    assert len(recs) == 1, recs
    return recs[0]


def test_predict_answers_with_version_variant_and_request_id(env):
    p, srv = env
    r = srv.predict(body(author=1), headers={"x-request-id": "req-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["model"] == "spam" and out["version"] == 1 and out["variant"] == "production"
    assert out["rung"] == "model" and out["request_id"] == "req-1" == r.headers["x-request-id"]
    assert 0.0 <= out["prediction"] <= 1.0


def test_vector_equals_the_training_path_and_the_model_output(env):
    """The served vector is what get_historical_features computes (same on-demand code) at request time."""
    p, srv = env
    fields = {"text": "cheap prize here", "n_urls": 3, "new_account": 1}
    r = srv.predict({"entities": {"author_id": 2}, "fields": fields}, headers={"x-request-id": "req-vec"})
    assert r.status_code == 200, r.text
    rec = _logged(p, srv, "req-vec")
    served = [rec["features"][c] for c in COLUMNS]
    entity_df = pd.DataFrame({"author_id": [2], "event_timestamp": [datetime.now(timezone.utc)], **{
        k: [v] for k, v in fields.items()}})
    offline = p.get_historical_features(entity_df, ["author_stats:spam_7d", "author_stats:comments_7d",
                                                    "spam_share_7d", "url_count", "text_length"])
    want = [float(offline[c].iloc[0]) for c in COLUMNS[:-1]] + [1.0]
    assert served == pytest.approx(want)
    assert served[0] > 0   # author 2 is a spammer: the online store really answered
    direct = srv.model.predict_proba(pd.DataFrame([want], columns=COLUMNS))[:, 1][0]
    assert r.json()["prediction"] == pytest.approx(direct)


def test_batch_predict_equals_single_predictions(env):
    _, srv = env
    rows = [body(author=a, n_urls=a % 3) for a in (1, 5, 9)]
    r = srv.client.post("/v1/models/spam:predict_batch", json={"instances": rows},
                        headers={"x-request-id": "batch-1"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert [x["request_id"] for x in out["predictions"]] == ["batch-1:0", "batch-1:1", "batch-1:2"]
    singles = [srv.predict(b).json()["prediction"] for b in rows]
    assert [x["prediction"] for x in out["predictions"]] == pytest.approx(singles)


def test_the_columns_and_rows_form_answers_as_the_instances_form(env):
    """Each row is an instance whose columns are its entity keys and request fields (online features by
    author, an on-demand feature from the text); the answers, request ids and errors match."""
    _, srv = env
    rows = [body(author=a, n_urls=a % 3, text="win " * a) for a in (1, 5, 9, 424242)]
    columns = ["text", "author_id", "n_urls", "new_account"]
    split = {"columns": columns, "rows": [[b["fields"]["text"], b["entities"]["author_id"], b["fields"]["n_urls"],
                                           b["fields"]["new_account"]] for b in rows], "user_id": "u-1"}
    r = srv.client.post("/v1/models/spam:predict_batch", json=split, headers={"x-request-id": "rows-1"})
    assert r.status_code == 200, r.text
    got = r.json()["predictions"]
    want = srv.client.post("/v1/models/spam:predict_batch", json={"instances": rows, "user_id": "u-1"}).json()
    assert [x["request_id"] for x in got] == [f"rows-1:{i}" for i in range(4)]
    assert [x["prediction"] for x in got] == pytest.approx([x["prediction"] for x in want["predictions"]])
    assert {x["rung"] for x in got} == {"model"}
    for bad, words in (({"columns": ["text", "n_urls", "new_account"], "rows": [["a", 0, 0]]},
                        ["missing entity key 'author_id'", "add a column 'author_id'"]),
                       ({"columns": columns, "rows": [["a", 1, 0, 0], ["b", 1, 0]]}, ["row 1 has 3 values"]),
                       ({"columns": columns, "rows": [["a", 1, 0, 0], ["b", 1.0, 0, 0]]},
                        ["instance 1", "entity key 'author_id' must be an integer or a string"]),
                       ({"columns": columns, "rows": [["a", 1, 0, 0]], "instances": [body()]}, ["not both"]),
                       ({"columns": columns, "rows": [["a", 1, 0, 0]] * 1001}, ["limit is 1000"])):
        r = srv.client.post("/v1/models/spam:predict_batch", json=bad)
        assert r.status_code == 422, r.text
        for w in words:
            assert w in r.json()["detail"], r.json()["detail"]


def test_unknown_entities_still_get_an_answer(env):
    _, srv = env
    r = srv.predict(body(author=424242))
    assert r.status_code == 200 and r.json()["rung"] == "model"


@pytest.mark.parametrize("payload,status,code,words", [
    (b'{"entities": {"author_id": 1', 400, "invalid_json", ["not valid JSON"]),
    (b'{"entities": {"author_id": 1}} x', 400, "invalid_json", ["not valid JSON: Extra data at character 31"]),
    (b'{"fields": {"text": "\xff"}}', 400, "invalid_json", ["not UTF-8", "send JSON encoded as UTF-8"]),
    (b'{"fields": {"n_urls": %s}}' % (b"9" * 5000), 400, "invalid_json", ["too many digits"]),
    (b'{"fields": {"x": %s}}' % (b"[" * 5000 + b"]" * 5000), 400, "invalid_json",
     ["nests arrays or objects too deeply"]),
    ({"entities": {"author_id": [1]}, "fields": {}}, 422, "invalid_request", ["entities.author_id"]),
    ({"entities": {}, "fields": {"text": "a", "n_urls": 0, "new_account": 0}}, 422, "invalid_input",
     ["missing entity key 'author_id'"]),
    ({"entities": {"author_id": 1}, "fields": {"n_urls": 0, "new_account": 0}}, 422, "invalid_input",
     ["missing request field 'text'", "text_length"]),
    ({"entities": {"author_id": 1}, "fields": {"text": "a", "n_urls": 0, "new_account": "yes"}}, 422,
     "invalid_input", ["field 'new_account'", "number"]),
    ({"entities": {"author_id": 1}, "fields": {"text": 7, "n_urls": 0, "new_account": 0}}, 422, "invalid_input",
     ["text_length"]),
    ({"entities": {"author_id": 1}, "colour": "red"}, 422, "invalid_request", ["colour"]),
    ({"entities": {"author_id": 1}, "deadline_ms": -5}, 422, "invalid_request", ["deadline_ms"]),
    # a string or a bool as the deadline was read as a number ("100" -> 100 ms, true -> 1 ms)
    ({"entities": {"author_id": 1}, "deadline_ms": "100"}, 422, "invalid_request", ["deadline_ms", "number"]),
    ({"entities": {"author_id": 1}, "deadline_ms": True}, 422, "invalid_request", ["deadline_ms", "number"]),
    ([1, 2], 422, "invalid_request", ["body"]),
    # a user id with a lone surrogate (Python's JSON reader takes the escape) made routing's hash a 500
    (b'{"entities": {"author_id": 1}, "fields": {"text": "a", "n_urls": 0, "new_account": 0}, '
     b'"user_id": "\\ud800"}', 422, "invalid_request", ["body.user_id", "lone surrogate", "UTF-8"]),
])
def test_bad_input_is_a_4xx_that_names_the_problem(env, payload, status, code, words):
    _, srv = env
    if isinstance(payload, bytes):
        r = srv.client.post("/v1/models/spam:predict", content=payload, headers={"content-type": "application/json"})
    else:
        r = srv.predict(payload)
    assert r.status_code == status, r.text
    out = r.json()
    assert out["error"] == code and out["request_id"]
    for w in words:
        assert w in out["detail"], out["detail"]


def test_unknown_model_and_batch_limits(env):
    _, srv = env
    r = srv.client.post("/v1/models/nope:predict", json=body())
    assert r.status_code == 404 and r.json()["error"] == "unknown_model" and "spam" in r.json()["detail"]
    assert metric(srv.client.get("/metrics").text, "loopstack_serving_errors_total", model="other") >= 1
    r = srv.client.post("/v1/models/spam:predict_batch", json={"instances": []})
    assert r.status_code == 422 and "instances" in r.json()["detail"]
    r = srv.client.post("/v1/models/spam:predict_batch", json={"instances": [body()] * 1001})
    assert r.status_code == 422 and "limit is 1000" in r.json()["detail"]
    r = srv.client.post("/v1/models/spam:predict_batch", json={"instances": [body(), {"entities": {}}]})
    assert r.status_code == 422 and "instance 1" in r.json()["detail"]
    assert srv.client.get("/v1/nothing").status_code == 404



@pytest.mark.parametrize("method,path,allow", [("GET", "/v1/models/spam:predict", "POST"),
                                               ("GET", "/v1/models/spam:predict_batch", "POST"),
                                               ("PUT", "/v1/models/spam:predict", "POST"),
                                               ("POST", "/v1/models/spam:predictt", "GET")])
def test_a_wrong_method_is_a_405_that_says_which_one(env, method, path, allow):
    """A GET of a prediction path was a 404 "model 'spam:predict' is not served here"."""
    _, srv = env
    r = srv.client.request(method, path, json=body())
    assert r.status_code == 405 and r.headers["allow"] == allow, r.text
    detail = r.json()["detail"]
    assert f"{method} is not allowed on {path} (allowed: {allow})" in detail
    assert "POST /v1/models/NAME:predict" in detail



def test_the_openapi_spec_lists_every_error_the_server_sends(env):
    """413 payload_too_large was sent but missing from the spec's error codes."""
    _, srv = env
    spec = srv.client.get("/openapi.json").json()
    assert "payload_too_large" in spec["components"]["schemas"]["ErrorResponse"]["properties"]["error"]["enum"]
    responses = spec["paths"]["/v1/models/{name}:predict"]["post"]["responses"]
    assert {"405", "413"} <= set(responses)

def test_result_cache_hits_for_the_same_inputs(env):
    _, srv = env
    b = body(author=7, text="same text", n_urls=1)
    first, second = srv.predict(b).json(), srv.predict(b).json()
    assert second["cached"] and first["prediction"] == second["prediction"]
    assert metric(srv.client.get("/metrics").text, "loopstack_serving_cache_lookups_total", result="hit") >= 1


def test_health_readiness_openapi_and_metrics(env):
    _, srv = env
    assert srv.client.get("/healthz").json()["status"] == "ok"
    ready = srv.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"]["spam"]["versions"] == [1]
    spec = srv.client.get("/openapi.json").json()
    assert "/v1/models/{name}:predict" in spec["paths"] and "/v1/models/{name}:predict_batch" in spec["paths"]
    for _ in range(3):
        srv.predict(body(author=3))
    text = srv.client.get("/metrics").text
    assert metric(text, "loopstack_serving_requests_total", model="spam", variant="production", rung="model") >= 3
    assert metric(text, "loopstack_serving_request_duration_seconds_count", model="spam") >= 3
    assert metric(text, "loopstack_serving_batch_size_count", model="spam", version="1") >= 1
    assert metric(text, "loopstack_serving_batches_fired_total", model="spam") >= 1
    for name in ("loopstack_serving_queue_depth", "loopstack_serving_breaker_state", "loopstack_serving_cache_hit_rate",
                 "loopstack_serving_errors_total", "loopstack_serving_rung_used_total",
                 "loopstack_serving_prediction_log_written_total"):
        assert name in text, name
    models = srv.client.get("/v1/models/spam").json()
    assert models["policy"]["production"] == 1 and models["versions"][0]["roles"] == ["production"]


def test_prediction_log_has_metadata_and_sampled_features(env):
    p, srv = env
    r = srv.predict(body(author=4, user="user-9"), headers={"x-request-id": "req-log"})
    rec = _logged(p, srv, "req-log")
    assert rec["model"] == "spam" and rec["version"] == 1 and rec["variant"] == "production"
    assert rec["rung"] == "model" and rec["user_id"] == "user-9" and rec["status"] == "ok"
    assert rec["output"] == pytest.approx(r.json()["prediction"]) and rec["latency_ms"] > 0
    assert set(rec["features"]) == set(COLUMNS) and rec["ts"].startswith(str(datetime.now(timezone.utc).year))


def test_each_model_has_its_own_queue_so_a_slow_one_cannot_starve_another(env):
    _, srv = env
    results = []

    def slow_call() -> None:
        results.append(httpx.post(f"{srv.url}/v1/models/ham:predict", json=body(deadline_ms=10_000),
                                  timeout=30).json())
    threads = [threading.Thread(target=slow_call) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    t0 = time.perf_counter()
    for author in range(5):
        assert srv.predict(body(author=author)).json()["model"] == "spam"
    assert time.perf_counter() - t0 < 0.7, "spam waited behind ham"
    for t in threads:
        t.join(30)
    assert [r["prediction"] for r in results] == pytest.approx([0.7] * 3)
    assert srv.client.get("/readyz").json()["models"]["ham"]["ready"]


def test_an_internal_error_on_the_standard_route_keeps_the_connection_open(env, monkeypatch):
    # the 500 went out through Starlette's error middleware, which re-raises: uvicorn then closed the keep-alive
    # connection, so a client's next request on it failed
    import json
    import socket

    from loopstack.serving import app as app_module
    _, srv = env
    monkeypatch.setattr(app_module, "fast_predict", lambda obj: None)   # every body takes the standard route

    async def broken(*a, **kw):
        raise RuntimeError("the vector builder broke")
    monkeypatch.setattr(srv.app.state.service, "predict", broken)
    payload = json.dumps(body()).encode()
    req = (b"POST /v1/models/spam:predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload))
    with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
        f = s.makefile("rb")
        for _ in range(2):   # the same connection twice
            s.sendall(req)
            status = f.readline()
            headers = {}
            while (line := f.readline()) not in (b"\r\n", b""):
                k, v = line.decode().split(":", 1)
                headers[k.strip().lower()] = v.strip()
            out = json.loads(f.read(int(headers["content-length"])))
            assert b" 500 " in status and out["error"] == "internal" and "vector builder broke" in out["detail"]
            assert headers.get("connection", "").lower() != "close"
