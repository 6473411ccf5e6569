"""The HTTP feature server on the real SQLite online store: every endpoint through TestClient, and one
real server started with the CLI in a subprocess."""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import time
import warnings
from datetime import timedelta, timezone

import pytest

from loopstack import Entity, EventSource, FeatureView, Last, Project, Sum
from loopstack.errors import FeatureReferenceError
from loopstack.features.materialize import materialize, to_us
from loopstack.features.server import create_app, us_to_iso
from tests.features.stream._defs import SCHEMA, definitions, gen_events, make_project

with warnings.catch_warnings():  # starlette asks for httpx2; the httpx TestClient still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

WINS = ["wins:cnt_1h", "wins:sum_amt_2h", "wins:mean_amt_1h", "wins:last_label_1h", "wins:dist_2h"]
PLAIN = ["plain:last_n", "plain:last_label", "plain:last_big_n"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def served_project(tmp_path_factory):
    """A project with 300 events of authors 0..6 materialized into its SQLite online store."""
    p = make_project(tmp_path_factory.mktemp("server") / "proj")
    events = gen_events(300, seed=7)
    p.log.append("events", events)
    newest = max(e["ts"] for e in events)
    materialize(p, "2000-01-01", newest + timedelta(microseconds=1), progress=False)
    p.newest_us = to_us(newest)
    yield p
    p.close()


@pytest.fixture(scope="module")
def client(served_project):
    return TestClient(create_app(served_project, reload_interval=0))


def post(client, body: dict, **kw):
    return client.post("/get-online-features", json=body, **kw)


def as_columns(body: dict) -> dict[str, dict]:
    return {n: r for n, r in zip(body["metadata"]["feature_names"], body["results"])}


def test_values_equal_the_in_process_api(client, served_project):
    as_of = served_project.newest_us + 1
    feats, authors = WINS + PLAIN, [3, 0, 999, 5, 3]
    r = post(client, {"features": feats, "entities": {"author_id": authors}, "as_of": us_to_iso(as_of)})
    assert r.status_code == 200, r.text
    want = served_project.get_online_features(feats, [{"author_id": a} for a in authors], as_of=as_of)
    cols = as_columns(r.json())
    assert list(cols) == ["author_id"] + want.features
    assert cols["author_id"]["values"] == authors
    for name in want.features:
        assert cols[name]["values"] == [row[name] for row in want.rows], name
        assert cols[name]["event_timestamps"] == [us_to_iso(s[name]) for s in want.event_timestamps], name
    assert r.json()["found"] == want.found == [True, True, False, True, True]
    assert any(v is not None for v in cols["cnt_1h"]["values"])       # the store really holds state
    # the row-wise form gives the same answer
    r2 = post(client, {"features": feats, "entity_rows": [{"author_id": a} for a in authors],
                       "as_of": us_to_iso(as_of)})
    assert r2.json() == r.json()


def test_unknown_entities_read_as_an_empty_history_with_found_false(client):
    # as offline: a plain field of an entity without history is null, a windowed count is 0
    r = post(client, {"features": ["wins:cnt_1h", "plain:last_n"], "entities": {"author_id": [424242, 1]}})
    assert r.status_code == 200
    body = r.json()
    assert body["found"] == [False, True]
    cols = as_columns(body)
    assert cols["cnt_1h"]["values"][0] == 0 and cols["last_n"]["values"][0] is None
    for name in ("cnt_1h", "last_n"):
        assert cols[name]["statuses"][0] == "NOT_FOUND"
        assert cols[name]["event_timestamps"][0] is None


def test_statuses_tell_present_from_null_value(client, served_project):
    long_after = served_project.newest_us + 10 * 3_600_000_000     # past every window and the ttl
    r = post(client, {"features": ["plain:last_n", "wins:sum_n_1h"], "entities": {"author_id": [1]},
                      "as_of": us_to_iso(long_after)})
    col = as_columns(r.json())["last_n"]
    assert r.json()["found"] == [True] and col["values"] == [None] and col["statuses"] == ["NULL_VALUE"]
    now = served_project.newest_us + 1
    want = served_project.get_online_features(["plain:last_n"], [{"author_id": a} for a in range(7)], as_of=now)
    r = post(client, {"features": ["plain:last_n"], "entities": {"author_id": list(range(7))}, "as_of": us_to_iso(now)})
    assert as_columns(r.json())["last_n"]["statuses"] == ["NULL_VALUE" if row["last_n"] is None else "PRESENT"
                                                         for row in want.rows]
    assert "PRESENT" in as_columns(r.json())["last_n"]["statuses"]


def test_as_of_with_an_offset_is_the_same_instant(client, served_project):
    t = served_project.newest_us - 600_000_000
    utc = us_to_iso(t)
    from datetime import datetime
    plus2 = datetime.fromisoformat(utc).astimezone(timezone(timedelta(hours=2))).isoformat()
    q = {"features": WINS, "entities": {"author_id": [0, 1, 2]}}
    assert post(client, {**q, "as_of": utc}).json() == post(client, {**q, "as_of": plus2}).json()
    assert post(client, {**q, "as_of": utc}).json() != post(client, {**q, "as_of": us_to_iso(t - 7200_000_000)}).json()


def test_full_feature_names(client):
    r = post(client, {"features": ["wins:cnt_1h", "plain:last_label"], "entities": {"author_id": [1]},
                      "full_feature_names": True})
    assert r.json()["metadata"]["feature_names"] == ["author_id", "wins__cnt_1h", "plain__last_label"]


def test_unknown_features_are_404_naming_each(client):
    r = post(client, {"features": ["wins:cnt_1h", "wins:cnt_1hh", "nope:x"], "entities": {"author_id": [1]}})
    assert r.status_code == 404
    body = r.json()
    assert body["error"] == "unknown_feature"
    assert body["unknown_features"] == ["wins:cnt_1hh", "nope:x"]
    assert "cnt_1hh" in body["detail"] and "did you mean" in body["detail"]
    assert body["request_id"] == r.headers["x-request-id"]


@pytest.mark.parametrize("body, where", [
    (b"{not json", "json"),
    ({"entities": {"author_id": [1]}}, "features"),
    ({"features": [], "entities": {"author_id": [1]}}, "features"),
    ({"features": "wins:cnt_1h", "entities": {"author_id": [1]}}, "features"),
    ({"features": ["wins:cnt_1h"]}, "exactly one of 'entities'"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "entity_rows": [{"author_id": 1}]},
     "exactly one of 'entities'"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1, 2], "other": [1]}}, "same length"),
    ({"features": ["wins:cnt_1h"], "entities": {}}, "no join key"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": 1}}, "entities.author_id"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "as_of": "yesterday"}, "ISO 8601"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "as_of": "9999-12-31T23:00:00-05:00"},
     "out of range"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "as_of": "0001-01-01T00:00:00+05:00"},
     "out of range"),
    ({"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}, "entity": {"x": 1}}, "entity"),
])
def test_malformed_bodies_are_422_saying_what_is_wrong(client, body, where):
    if isinstance(body, bytes):
        r = client.post("/get-online-features", content=body, headers={"content-type": "application/json"})
    else:
        r = post(client, body)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid_request"
    assert where.lower() in r.json()["detail"].lower(), r.json()["detail"]


def test_a_body_sent_without_json_content_type_gets_a_hint(client):
    r = client.post("/get-online-features", content=b'{"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}}',
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 422 and "content-type: application/json" in r.json()["detail"]


def test_bad_entities_are_422(client):
    r = post(client, {"features": ["wins:cnt_1h"], "entity_rows": [{"user_id": 1}]})
    assert r.status_code == 422 and r.json()["error"] == "invalid_entities"
    assert "author_id" in r.json()["detail"]


@pytest.mark.parametrize("raw", [b'{"features": ["wins:cnt_1h"], "entities": {"author_id": ["\\ud800"]}}',
                                 b'{"features": ["wins:cnt_1h"], "entity_rows": [{"author_id": "a\\udfff"}]}',
                                 b'{"features": ["wins:cnt_1h"], "entities": {"author_id": ["\xed\xa0\x80"]}}'])
def test_an_entity_key_with_a_lone_surrogate_is_422_not_500(client, raw):
    r = client.post("/get-online-features", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["error"] == "invalid_entities", r.text
    assert "not valid Unicode" in r.json()["detail"]


def test_unknown_paths_and_methods_answer_in_the_error_shape(client):
    r = client.get("/no-such-path", headers={"x-request-id": "rid-404"})
    assert r.status_code == 404
    assert r.json() == {"error": "not_found", "detail": "Not Found: GET /no-such-path", "request_id": "rid-404"}
    r = client.get("/get-online-features")
    assert r.status_code == 405 and r.json()["error"] == "invalid_request" and "allow" in r.headers
    assert r.json()["request_id"] == r.headers["x-request-id"]


def test_too_many_rows_are_refused(served_project):
    c = TestClient(create_app(served_project, reload_interval=0, max_rows=3))
    r = post(c, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1, 2, 3, 4]}})
    assert r.status_code == 422 and "limit is 3" in r.json()["detail"]
    assert post(c, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1, 2, 3]}}).status_code == 200


def test_health_and_freshness(client, served_project):
    h = client.get("/health")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["views"] == ["plain", "wins"]
    f = client.get("/freshness").json()
    assert set(f["views"]) == {"plain", "wins"}
    w = f["views"]["wins"]
    assert w["newest_event_ts"] == w["watermark"] == us_to_iso(served_project.newest_us)
    assert w["lag_seconds"] > 0 and w["events_applied"] > 0
    assert w["exact_from"] == us_to_iso(served_project.newest_us - 30 * 60_000_000)   # 30m allowed lateness


def test_metrics_count_requests_latency_and_errors(served_project):
    c = TestClient(create_app(served_project, reload_interval=0))
    for _ in range(3):
        post(c, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}})
    post(c, {"features": ["wins:nope"], "entities": {"author_id": [1]}})
    post(c, {"features": []})
    text = c.get("/metrics").text
    p = "loopstack_feature_server_"

    def value(line_start: str) -> float:
        m = re.search("^" + re.escape(line_start) + r" (\S+)$", text, re.M)
        assert m, f"{line_start} not in metrics:\n{text}"
        return float(m.group(1))
    assert value(f'{p}requests_total{{path="/get-online-features",method="POST",status="200"}}') == 3
    assert value(f'{p}requests_total{{path="/get-online-features",method="POST",status="404"}}') == 1
    assert value(f'{p}errors_total{{path="/get-online-features",error="unknown_feature"}}') == 1
    assert value(f'{p}errors_total{{path="/get-online-features",error="invalid_request"}}') == 1
    assert value(f'{p}request_duration_seconds_count{{path="/get-online-features"}}') == 5
    assert value(f'{p}request_duration_seconds_bucket{{path="/get-online-features",le="+Inf"}}') == 5
    assert value(f"{p}entity_rows_total") == 3
    assert value('loopstack_feature_freshness_lag_seconds{view="wins"}') > 0
    assert "# TYPE loopstack_feature_server_request_duration_seconds histogram" in text


def test_request_id_is_echoed_or_generated_and_logged(client, caplog):
    with caplog.at_level(logging.INFO, logger="loopstack.access"):
        r = post(client, {"features": ["wins:cnt_1h"], "entities": {"author_id": [1]}},
                 headers={"x-request-id": "req-42.a"})
        g = client.get("/health")
    assert r.headers["x-request-id"] == "req-42.a"
    assert re.fullmatch(r"[0-9a-f]{32}", g.headers["x-request-id"])
    assert client.get("/health", headers={"x-request-id": "bad id\twith spaces"}).headers["x-request-id"] != \
        "bad id\twith spaces"
    lines = [json.loads(rec.getMessage()) for rec in caplog.records if rec.name == "loopstack.access"]
    first = next(x for x in lines if x["request_id"] == "req-42.a")
    assert first["path"] == "/get-online-features" and first["status"] == 200 and first["rows"] == 1
    assert first["duration_ms"] > 0
    assert any(x["request_id"] == g.headers["x-request-id"] and x["path"] == "/health" for x in lines)


def test_openapi_lists_endpoints_and_models(client):
    spec = client.get("/openapi.json").json()
    op = spec["paths"]["/get-online-features"]["post"]
    ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert ref.endswith("/GetOnlineFeaturesRequest")
    assert op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/GetOnlineFeaturesResponse")
    assert op["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    schemas = spec["components"]["schemas"]
    assert {"features", "entities", "entity_rows", "as_of"} <= set(schemas["GetOnlineFeaturesRequest"]["properties"])
    assert {"metadata", "results", "found"} <= set(schemas["GetOnlineFeaturesResponse"]["properties"])
    assert {"/health", "/freshness", "/metrics", "/reload"} <= set(spec["paths"])
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def extra_view() -> FeatureView:
    author, events = Entity("author", "author_id"), EventSource("events", "ts", SCHEMA, partitions=2)
    return FeatureView("extra", entity=author, source=events, features=[Sum("n", window="1h", name="n_1h"),
                                                                        Last("label", name="label")])


def test_reload_picks_up_apply(tmp_path):
    p = make_project(tmp_path / "proj")
    try:
        c = TestClient(create_app(p, reload_interval=0))
        q = {"features": ["extra:n_1h"], "entities": {"author_id": [1]}}
        assert post(c, q).status_code == 404
        assert c.post("/reload").json()["reloaded"] is False
        p.apply(definitions() + [extra_view()])
        assert post(c, q).status_code == 404                 # views were loaded once
        r = c.post("/reload").json()
        assert r["reloaded"] is True and "extra" in r["views"]
        assert post(c, q).status_code == 200
    finally:
        p.close()


def test_background_check_picks_up_apply(tmp_path):
    p = make_project(tmp_path / "proj")
    try:
        with TestClient(create_app(p, reload_interval=0.05)) as c:   # lifespan runs the checker
            q = {"features": ["extra:label"], "entities": {"author_id": [1]}}
            assert post(c, q).status_code == 404
            p.apply(definitions() + [extra_view()])
            deadline = time.monotonic() + 10
            while post(c, q).status_code != 200:
                assert time.monotonic() < deadline, "the server never picked up the new view"
                time.sleep(0.05)
    finally:
        p.close()


# -- the real server, started by the CLI -------------------------------------------------------------
SERVE = """
import typer
from loopstack.features.cli_serve import app as serve_app
root, features = typer.Typer(), typer.Typer()
features.registered_commands.extend(serve_app.registered_commands)   # how cli.py mounts it
root.add_typer(features, name="features")
root()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serves_real_http(served_project):
    import httpx
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "features", "serve", "-p", str(served_project.root),
                             "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.1)
        as_of = served_project.newest_us + 1
        feats = WINS + PLAIN
        with httpx.Client(base_url=url, timeout=10) as http:
            r = http.post("/get-online-features", headers={"x-request-id": "cli-1"},
                          json={"features": feats, "entities": {"author_id": [0, 1, 77]}, "as_of": us_to_iso(as_of)})
            assert r.status_code == 200 and r.headers["x-request-id"] == "cli-1"
            want = served_project.get_online_features(feats, [{"author_id": a} for a in (0, 1, 77)], as_of=as_of)
            cols = as_columns(r.json())
            assert [cols[n]["values"] for n in want.features] == [[row[n] for row in want.rows]
                                                                 for n in want.features]
            assert r.json()["found"] == [True, True, False]
            assert http.post("/get-online-features", json={"features": ["x:y"], "entities": {"author_id": [1]}}
                             ).status_code == 404
            assert 'status="200"} 1' in http.get("/metrics").text
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    access = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(x["request_id"] == "cli-1" and x["status"] == 200 for x in access), out
    assert f"127.0.0.1:{port}" in err


def test_an_on_demand_feature_asked_online_is_named_as_such(tmp_path):
    # 'spam_share_7d' (the example project's on-demand feature) was "malformed: write 'view:feature'"
    p = Project.init(tmp_path / "proj")              # the example definitions: views and on-demand features
    p.apply(p.load_definitions())
    try:
        with pytest.raises(FeatureReferenceError, match=r"'spam_share_7d' is an on-demand feature: it is computed "
                                                        r"from request data, not stored online"):
            p.get_online_features(["spam_share_7d"], [{"author_id": 1}])
        r = post(TestClient(create_app(p, reload_interval=0)),
                 {"features": ["author_stats:spam_7d", "spam_share_7d"], "entities": {"author_id": [1]}})
        assert r.status_code == 404 and r.json()["unknown_features"] == ["spam_share_7d"], r.text
        assert "'spam_share_7d' is an on-demand feature" in r.json()["detail"]
        with pytest.raises(FeatureReferenceError, match="malformed: write 'view:feature'"):   # a plain typo
            p.get_online_features(["spam_share_7dd"], [{"author_id": 1}])
    finally:
        p.close()
