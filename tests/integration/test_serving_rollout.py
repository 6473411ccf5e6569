"""Rollouts over real HTTP: holdback, experiment, canary and shadow; sticky per user, logged with every
prediction, changed without a restart; the shadow copy never delays the answer."""
from __future__ import annotations

import time
from collections import Counter

import pytest
from typer.testing import CliRunner

from loopstack.cli import app as cli_app
from loopstack.serving.policy_store import PolicyStore
from loopstack.serving.router import route
from tests.integration.serving_env import (ConstantModel, SlowModel, body, config, make_project, metric, predictions,
                                           register, serving)

USERS = [f"user-{i}" for i in range(150)]


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    p = make_project(tmp_path_factory.mktemp("serving-rollout") / "proj", n_comments=50)
    register(p, ConstantModel(0.1))                      # v1: production, then the previous one
    register(p, ConstantModel(0.2))                      # v2: production
    register(p, ConstantModel(0.3), state="canary")      # v3
    register(p, ConstantModel(0.4), state="experiment")  # v4: variant "v4" against control (v2)
    PolicyStore(p.meta).update("spam", {"holdback_percent": 20, "canary_percent": 30, "experiment_percent": 40,
                                        "experiment_weights": "control=50,v4=50"})
    with serving(p, config(cache_entries=0)) as srv:
        yield p, srv
    p.close()


def test_assignments_follow_the_policy_and_are_sticky(rollout):
    p, srv = rollout
    policy = srv.app.state.fleet.handles["spam"].snapshot.policy
    assert (policy.production, policy.holdback, policy.canary, dict(policy.variants)) == (2, 1, 3,
                                                                                          {"control": 2, "v4": 4})
    seen: dict[str, set] = {}
    for rep in range(2):
        for u in USERS:
            out = srv.predict(body(author=3, user=u), headers={"x-request-id": f"{u}-{rep}"}).json()
            seen.setdefault(u, set()).add((out["variant"], out["version"]))
            want = route(policy, u, "x")
            assert (out["variant"], out["version"]) == (want.variant, want.version), u
            assert out["prediction"] == pytest.approx(out["version"] / 10)
    assert all(len(s) == 1 for s in seen.values()), "a user changed variant between requests"
    shares = Counter(next(iter(s))[0] for s in seen.values())
    assert set(shares) == {"holdback", "control", "v4", "canary", "production"}, shares
    assert 10 <= shares["holdback"] <= 50 and shares["production"] > 20, shares
    anonymous = srv.predict(body(author=3)).json()
    assert (anonymous["variant"], anonymous["version"]) == ("production", 2)
    srv.app.state.service.plog.flush()
    recs = {r["request_id"]: r for r in predictions(p) if r["kind"] == "prediction"}
    for u in USERS[:30]:
        rec = recs[f"{u}-0"]
        variant, version = next(iter(seen[u]))
        assert (rec["variant"], rec["version"], rec["user_id"]) == (variant, version, u)
        assert 0 <= rec["bucket"] < 10_000


def test_traffic_changes_apply_without_restart(rollout):
    p, srv = rollout
    res = CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--canary-percent", "100",
                                       "--holdback-percent", "0", "--experiment-percent", "0"])
    assert res.exit_code == 0, res.output
    assert "canary_percent" in res.output and "100" in res.output
    srv.wait_for(lambda: srv.app.state.fleet.handles["spam"].snapshot.policy.canary_percent == 100, 10, "new policy")
    outs = {srv.predict(body(author=3, user=u)).json()["variant"] for u in USERS[:40]}
    assert outs == {"canary"}
    res = CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--json"])
    assert '"canary_percent": 100.0' in res.output
    bad = CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--canary-percent", "140"])
    assert bad.exit_code != 0 and "canary_percent" in str(bad.exception or bad.output)
    # a fallback version that does not exist was stored (with a note) and never used
    before = CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--json"]).output
    bad = CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--fallback", "99"])
    assert bad.exit_code != 0 and "has no version 99" in str(bad.exception) and "versions: 1" in str(bad.exception)
    assert CliRunner().invoke(cli_app, ["models", "traffic", "spam", "-p", str(p.root), "--json"]).output == before


def test_shadow_gets_a_copy_after_the_answer_and_both_outputs_are_logged(tmp_path):
    p = make_project(tmp_path / "proj", n_comments=30)
    register(p, ConstantModel(0.1))
    register(p, SlowModel(ConstantModel(0.9), delay=0.8), state="shadow")
    try:
        with serving(p, config(cache_entries=0, model_budget_ms=5000)) as srv:   # the shadow's budget too
            assert srv.app.state.fleet.handles["spam"].snapshot.policy.shadow == 2
            srv.predict(body())   # warm-up
            for i in range(4):
                t = time.perf_counter()
                r = srv.predict(body(author=i), headers={"x-request-id": f"shadowed-{i}"})
                assert time.perf_counter() - t < 0.5, "the answer waited for the shadow"
                assert (r.json()["version"], r.json()["prediction"]) == (1, pytest.approx(0.1))
            plog = srv.app.state.service.plog

            def shadows() -> list:
                plog.flush()
                return [x for x in predictions(p) if x["kind"] == "shadow" and x["request_id"].startswith("shadowed")]
            srv.wait_for(lambda: len(shadows()) == 4, 20, "shadow records")
            for rec in shadows():
                assert rec["version"] == 2 and rec["output"] == pytest.approx(0.9)
                assert rec["production_version"] == 1 and rec["production_output"] == pytest.approx(0.1)
                assert rec["disagree"] is True and "features" in rec   # disagreements carry the full vector
            text = srv.client.get("/metrics").text
            assert metric(text, "loopstack_serving_shadow_requests_total", outcome="disagree") >= 4
    finally:
        p.close()


def test_readyz_says_why_a_model_cannot_answer(tmp_path):
    """With no version that can answer, /readyz was 503 with "error": null and no reason."""
    p = make_project(tmp_path / "proj", n_comments=10)
    register(p, ConstantModel(0.5), state="shadow")     # a shadow only: nothing answers users
    with serving(p, config(), ready=False) as srv:
        srv.wait_for(lambda: srv.app.state.fleet.handles["spam"].snapshot.policy is not None, what="first load")
        r = srv.client.get("/readyz")
        assert r.status_code == 503
        reason = r.json()["models"]["spam"]["reason"]
        assert "no production, canary or experiment version; promote one" in reason, reason
        p.models.promote("models:/spam/1", "production", reason="test", override=True)
        srv.wait_ready(30)
        assert srv.client.get("/readyz").json()["models"]["spam"]["reason"] is None
    p.close()
