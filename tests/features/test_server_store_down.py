"""The feature server while its online store (a real redis-server) is down: 503s saying so, not 500s
that the docs reserve for bugs, and /metrics keeps answering."""
from __future__ import annotations

import warnings
from datetime import timedelta

from loopstack.features.materialize import materialize
from loopstack.features.server import create_app
from tests.features.stream._defs import gen_events, make_project
from tests.servers import redis_server

with warnings.catch_warnings():  # starlette asks for httpx2; the httpx TestClient still works
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

BODY = {"features": ["wins:cnt_1h", "plain:last_n"], "entities": {"author_id": [1, 2]}}


def test_a_store_that_goes_down_gets_503_store_unavailable_and_metrics_still_answer(tmp_path, monkeypatch):
    monkeypatch.delenv("LOOPSTACK_TEST_REDIS_URL", raising=False)   # a server of our own, to stop
    with redis_server() as url:
        p = make_project(tmp_path / "proj", "redis", url)
        events = gen_events(60, seed=5)
        p.log.append("events", events)
        materialize(p, "2000-01-01", max(e["ts"] for e in events) + timedelta(microseconds=1), progress=False)
        client = TestClient(create_app(p, reload_interval=0))
        assert client.post("/get-online-features", json=BODY).status_code == 200
    # redis-server is stopped now
    r = client.post("/get-online-features", json=BODY)
    assert r.status_code == 503 and r.json()["error"] == "store_unavailable", r.text
    assert "ConnectionError" in r.json()["detail"] and "retry" in r.json()["detail"]
    f = client.get("/freshness")
    assert f.status_code == 503 and f.json()["error"] == "store_unavailable" and f.json()["request_id"]
    m = client.get("/metrics")
    assert m.status_code == 200
    assert 'loopstack_feature_server_errors_total{path="/get-online-features",error="store_unavailable"} 1' in m.text
    assert client.get("/health").status_code == 503
    p.close()
