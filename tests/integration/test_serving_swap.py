"""Hot swaps under continuous traffic over real HTTP: moving production fails no request; a version whose
artifact fails its sha256 check is refused and the old version keeps serving."""
from __future__ import annotations

import time

import pytest

from tests.integration.serving_env import (ConstantModel, Traffic, body, config, make_project, metric, register,
                                           serving)


def traffic_for(url: str, threads: int = 3) -> Traffic:
    """Clients recording (status, version) per answer; sticky users so versions can be followed."""
    return Traffic(url, lambda i, n: body(author=n % 12, user=f"u{i}-{n % 50}"),
                   lambda t, r: (r.status_code, r.json().get("version")), threads=threads)


def latest(traffic: Traffic) -> set:
    """The version each client saw last."""
    return {r[-1][1] for r in traffic.results if r}


def _wait(cond, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_moving_production_under_traffic_fails_no_request(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=40)
    register(p, ConstantModel(0.1))
    try:
        with serving(p, config(cache_entries=0)) as srv, traffic_for(srv.url) as traffic:
            _wait(lambda: len(traffic.all) > 30)
            for v, prob in ((2, 0.2), (3, 0.3)):
                assert register(p, ConstantModel(prob)) == v   # registered and promoted to production
                _wait(lambda v=v: latest(traffic) == {v})
                n = len(traffic.all)
                _wait(lambda n=n: len(traffic.all) > n + 30)
            handle = srv.app.state.fleet.handles["spam"]
            assert sorted(handle.snapshot.versions) == [2, 3]   # v3 answers, v2 is the fallback; v1 retired
        statuses = [s for s, _ in traffic.all]
        assert statuses.count(200) == len(statuses), [s for s in statuses if s != 200][:5]
        assert {v for _, v in traffic.all} == {1, 2, 3}
        for thread in traffic.results:   # per client, versions only move forward
            versions = [v for _, v in thread]
            assert versions == sorted(versions)
    finally:
        p.close()


@pytest.mark.slow
def test_a_corrupted_artifact_is_refused_and_the_old_version_keeps_serving(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=40)
    register(p, ConstantModel(0.1))
    try:
        with serving(p, config(cache_entries=0)) as srv, traffic_for(srv.url, threads=2) as traffic:
            mv = p.models.register("spam", ConstantModel(0.2), signature=srv.app.state.fleet.handles["spam"]
                                   .snapshot.versions[1].builder.signature.to_dict())
            original = p.artifacts.get_bytes(mv.artifact_path)
            p.artifacts.put_bytes(mv.artifact_path, original[:-8] + b"tampered")
            p.models.promote(mv.ref, "production", reason="test", override=True)
            handle = srv.app.state.fleet.handles["spam"]
            _wait(lambda: 2 in handle.refused)
            assert "sha256" in handle.refused[2]
            n = len(traffic.all)
            _wait(lambda: len(traffic.all) > n + 40)
            assert latest(traffic) == {1}
            status = srv.client.get("/v1/models/spam").json()
            assert "2" in status["refused"] and status["policy"]["production"] == 1 and status["ready"]
            assert metric(srv.client.get("/metrics").text, "loopstack_serving_refused_loads_total", version="2") == 1
            # restoring the artifact and any registry change gives the version another chance
            p.artifacts.put_bytes(mv.artifact_path, original)
            p.models.set_alias("spam", "fixed", 2, reason="artifact restored")
            _wait(lambda: latest(traffic) == {2})
        assert all(s == 200 for s, _ in traffic.all)
    finally:
        p.close()


def test_a_production_refused_at_start_is_not_replaced_by_the_canary(tmp_path):
    """The only production version fails its sha256 check at startup: the 5 % canary must not answer every
    user. The model is not ready, and /readyz and the 503 name the refused version."""
    p = make_project(tmp_path / "proj", n_comments=40)
    register(p, ConstantModel(0.1))
    register(p, ConstantModel(0.9), state="canary")
    mv = p.models.get("models:/spam/1")
    p.artifacts.put_bytes(mv.artifact_path, p.artifacts.get_bytes(mv.artifact_path)[:-8] + b"tampered")
    try:
        with serving(p, config(cache_entries=0), ready=False) as srv:
            handle = srv.app.state.fleet.handles["spam"]
            _wait(lambda: 1 in handle.refused and handle.snapshot.policy is not None)
            ready = srv.client.get("/readyz")
            assert ready.status_code == 503
            assert "refused: version 1" in ready.json()["models"]["spam"]["reason"]
            answers = [srv.predict(body(user=f"u{i}")) for i in range(20)] + [srv.predict(body())]
            assert {r.status_code for r in answers} == {503}
            assert all("refused: version 1" in r.json()["detail"] for r in answers)
    finally:
        p.close()


def test_a_serving_process_freezes_its_loaded_models_out_of_the_collector(tmp_path):
    """`loopstack serve` (server_gc): the collector is tuned before the first load, and each version loaded
    later (a hot swap) is frozen too, so no collection walks a model's objects."""
    import gc

    from loopstack.serving.app import create_app
    from tests.integration.serving_env import Server
    p = make_project(tmp_path / "proj", n_comments=40)
    register(p, ConstantModel(0.1))
    before = gc.get_threshold()
    srv = Server(create_app(p, config(cache_entries=0), server_gc=True))
    try:
        srv.start()
        assert gc.get_threshold()[0] >= 20_000
        handle = srv.app.state.fleet.handles["spam"]
        frozen = gc.get_freeze_count()
        assert frozen > 0
        assert register(p, ConstantModel(0.2)) == 2
        _wait(lambda: 2 in handle.snapshot.versions)
        _wait(lambda: gc.get_freeze_count() > frozen)   # the new version's objects were frozen after its load
        assert srv.predict(body(user="u1")).json()["version"] == 2
    finally:
        srv.stop()
        gc.unfreeze()
        gc.set_threshold(*before)
        p.close()
