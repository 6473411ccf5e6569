"""Faults over real HTTP: overload sheds load with 429 + Retry-After at bounded memory; deadlines go to
the baseline rung (or 504); a killed model worker opens the breaker, the fallback answers, the worker
is restarted and the model answers again."""
from __future__ import annotations

import asyncio
import os
import signal
import time

import orjson
import psutil
import pytest

from loopstack.serving.batcher import BatchConfig
from loopstack.serving.policy_store import PolicyStore
from tests.integration.serving_env import (ConstantModel, SlowModel, body, config, make_project, metric, predictions,
                                           Traffic, raw_posts, register, serving)


def _storm(port: int, clients: int, per_client: int) -> list[tuple[int, dict, bytes]]:
    bodies = [orjson.dumps(body(author=i % 12, n_urls=i % 4)) for i in range(clients * per_client)]
    return asyncio.run(raw_posts(port, "/v1/models/spam:predict", bodies, clients))


@pytest.mark.slow
def test_overload_answers_429_with_retry_after_and_memory_stays_bounded(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=40)
    register(p, SlowModel(ConstantModel(0.1), delay=0.04))   # capacity ~100 answers/s
    cfg = config(cache_entries=0, batch=BatchConfig(max_batch_size=4, max_latency_ms=1.0, max_queue=8))
    proc = psutil.Process()
    try:
        with serving(p, cfg) as srv:
            _storm(srv.port, 48, 10)   # warm-up
            batcher = srv.app.state.fleet.handles["spam"].snapshot.versions[1].batcher
            rejected_before = batcher.stats()["rejected"]
            rss = proc.memory_info().rss
            responses = []
            for _ in range(3):   # a bounded loop of overload rounds: memory must not grow with them
                responses += _storm(srv.port, 64, 20)
                assert srv.client.get("/healthz").status_code == 200
            grown = (proc.memory_info().rss - rss) / 2**20
            codes = [s for s, _, _ in responses]
            assert set(codes) <= {200, 429}, {c for c in codes if c not in (200, 429)}
            assert codes.count(429) > 5 * codes.count(200) > 0   # offered load well over 5x what is served
            headers, limited = next((h, orjson.loads(b)) for s, h, b in responses if s == 429)
            assert int(headers["retry-after"]) >= 1 and limited["error"] == "overloaded"
            assert "queue" in limited["detail"]
            assert grown < 60, f"RSS grew {grown:.0f} MiB over {len(codes)} overload requests"
            stats = batcher.stats()
            assert stats["rejected"] - rejected_before == codes.count(429) and stats["queue_depth"] <= 8
            text = srv.client.get("/metrics").text
            assert metric(text, "loopstack_serving_errors_total", error="overloaded") == stats["rejected"]
    finally:
        p.close()


@pytest.mark.slow
def test_deadline_gives_504_without_a_baseline_and_the_baseline_with_one(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=30)
    register(p, SlowModel(ConstantModel(0.1), delay=0.3))
    try:
        with serving(p, config(cache_entries=0)) as srv:
            r = srv.predict(body(deadline_ms=50))
            assert r.status_code == 504 and r.json()["error"] == "deadline_exceeded", r.text
            assert "baseline" in r.json()["detail"]
            PolicyStore(p.meta).update("spam", {"baseline": 0.02})
            srv.wait_for(lambda: srv.app.state.fleet.handles["spam"].snapshot.policy.baseline == 0.02, 10, "baseline")
            r = srv.predict(body(deadline_ms=50), headers={"x-request-id": "late-1"})
            assert r.status_code == 200, r.text
            assert (r.json()["rung"], r.json()["prediction"], r.json()["version"]) == ("baseline", 0.02, None)
            assert srv.predict(body(deadline_ms=2000)).json()["rung"] == "model"
            srv.app.state.service.plog.flush()
            rec = next(x for x in predictions(p) if x["request_id"] == "late-1")
            assert rec["rung"] == "baseline" and rec["failures"] and "features" in rec
    finally:
        p.close()


@pytest.mark.slow
def test_killing_the_model_worker_opens_the_breaker_fallback_answers_and_it_restarts(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=30)
    register(p, ConstantModel(0.1))     # v1: the previous production version = the fallback rung
    register(p, ConstantModel(0.2))     # v2: production
    cfg = config(runtime="process", cache_entries=0, breaker={"window_s": 5.0, "min_requests": 3,
                                                             "max_error_rate": 0.3, "open_s": 1.0,
                                                             "half_open_probes": 2})
    try:
        with serving(p, cfg) as srv:
            lv = srv.app.state.fleet.handles["spam"].snapshot.versions[2]
            pid = lv.runtime.pid
            clients = Traffic(srv.url, lambda i, n: body(author=n % 12, n_urls=(n + i) % 4),
                              lambda t, r: (t, r.status_code, r.json().get("rung"), r.json().get("version")),
                              limit=4000)
            with clients:
                srv.wait_for(lambda: len(clients.all) > 30, 20, "traffic")
                killed_at = time.monotonic()
                os.kill(pid, signal.SIGKILL)
                srv.wait_for(lambda: lv.runtime.restarts >= 1 and lv.runtime.alive, 60, "worker restart")
                srv.wait_for(lambda: any(t > killed_at and rung == "model" and v == 2 and
                                         lv.runtime.restarts >= 1 for t, _, rung, v in clients.all[-5:]),
                             30, "the model rung answering again")
            assert lv.runtime.pid != pid and lv.breaker.snapshot()["opened_count"] >= 1
            after = [x for x in clients.all if x[0] > killed_at]
            assert all(s == 200 for _, s, _, _ in clients.all), {s for _, s, _, _ in clients.all}
            assert any(rung == "fallback" and v == 1 for _, _, rung, v in after)
            text = srv.client.get("/metrics").text
            assert metric(text, "loopstack_serving_worker_restarts_total", version="2") >= 1
            assert metric(text, "loopstack_serving_rung_used_total", rung="fallback") >= 1
    finally:
        p.close()
