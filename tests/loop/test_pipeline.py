"""The retrain pipeline end to end on a temp project: dataset -> train -> gate -> register -> shadow ->
canary -> experiment -> promote with holdback; a guardrail breach rolls back; the audit log shows each
step; a failed gate stops at registration."""
from __future__ import annotations

import pytest

from loopstack.loop.core import DONE, FAILED, ROLLED_BACK
from loopstack.loop.store import LoopStore
from loopstack.serving.policy_store import PolicyStore
from loopstack.serving.router import policy_from_states
from loopstack.loop.evidence import ManualClock
from loopstack.loop.pipeline import RetrainPipeline
from tests.loop.helpers import START, FakeEvidence, make_project, pipeline, spec

STEPS = ["dataset", "train", "gate", "register", "shadow", "canary", "experiment", "promote"]


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, module_meta_url):
    """Run 1 (first model, manual) promotes v1; run 2 (alert) A/B-tests v2 and promotes it with a holdback;
    run 3 breaches the latency guardrail and is rolled back."""
    p = make_project(tmp_path_factory.mktemp("loop") / "proj", module_meta_url)
    clock = ManualClock(START)
    runs = [pipeline(p, clock=clock).run()]
    runs.append(pipeline(p, clock=clock).run("alert", "score_psi: score distribution moved"))
    after_two = PolicyStore(p.meta).get("spam")
    runs.append(pipeline(p, evidence=FakeEvidence(latency=(50.0, 80.0)), clock=clock).run("schedule", "weekly"))
    yield p, runs, after_two
    p.close()


def test_first_run_promotes_without_an_experiment(scenario):
    p, (r1, _, _), _ = scenario
    assert r1.step == DONE and r1.version == 1 and r1.production_version is None
    assert [h["step"] for h in r1.history] == STEPS
    assert "first model" in r1.history[6]["reason"]


def test_second_run_stops_the_experiment_early_and_promotes_with_holdback(scenario):
    p, (_, r2, _), settings = scenario
    assert r2.step == DONE and r2.version == 2 and r2.production_version == 1 and r2.trigger == "alert"
    exp = r2.history[6]
    assert exp["outcome"] == "pass" and exp["evidence"]["stopped_early"] and exp["evidence"]["goal"]["significant"]
    assert settings == {"holdback_percent": 2.0}
    ds = p.dataset(r2.dataset_id).manifest
    assert ds["label_delay"] == "24h" and ds["cutoff"].startswith("2026-11-24")


def test_audit_log_shows_every_step(scenario):
    p, (_, r2, _), _ = scenario
    audit = p.models.audit("spam", 2)
    loop = [e for e in audit if e["action"] == "loop"]
    assert [e["evidence"]["step"] for e in loop] == STEPS
    assert all(e["evidence"]["loop_run"] == r2.run_id and e["actor"] == "loopstack-loop" for e in loop)
    moves = [(e["from_state"], e["to_state"]) for e in audit if e["action"] == "transition"]
    assert moves == [("candidate", "shadow"), ("shadow", "canary"), ("canary", "experiment"),
                     ("experiment", "production")]
    assert [e["action"] for e in audit][:2] == ["register", "gate"]
    promo = [e for e in audit if e["to_state"] == "production"][0]
    assert "goal improved" in promo["reason"] and promo["evidence"]["loop_run"] == r2.run_id


def test_guardrail_breach_rolls_back(scenario):
    p, (_, r2, r3), _ = scenario
    assert r3.step == ROLLED_BACK and r3.version == 3 and r3.production_version == 2
    assert "latency_ms" in r3.error and r3.history[-1]["outcome"] == "rollback"
    assert p.models.get("models:/spam/3").state == "archived"
    assert p.models.get("models:/spam@production").version == 2      # production kept / restored
    assert PolicyStore(p.meta).get("spam") == {"holdback_percent": 2.0}  # loop settings reset
    audit = p.models.audit("spam", 3)
    back = [e for e in audit if e["action"] == "transition" and e["to_state"] == "archived"]
    assert len(back) == 1 and back[0]["reason"].startswith(f"loop run {r3.run_id}: rollback: blocking guardrail")
    assert [e for e in audit if e["action"] == "loop"][-1]["evidence"]["outcome"] == "rollback"
    states = {v.version: v.state for v in p.models.versions("spam")}
    pol = policy_from_states("spam", states, [1, 2], PolicyStore(p.meta).get("spam"))
    assert pol.production == 2 and pol.holdback == 1 and not pol.experiment_active and pol.canary is None


def test_store_lists_runs(scenario):
    p, runs, _ = scenario
    store = LoopStore(p.meta)
    assert [s.run_id for s in store.runs("spam")] == [r.run_id for r in reversed(runs)]
    assert store.active("spam") is None


def test_failed_gate_registers_a_candidate_and_stops(tmp_path, meta_url):
    from loopstack.registry.gate import ModelValidationGate
    p = make_project(tmp_path / "proj", meta_url)
    s = spec(p)
    s.gate = ModelValidationGate(absolute={"roc_auc": 0.999})
    ev = FakeEvidence()
    state = RetrainPipeline(p, s, ev, clock=ManualClock(START)).run()
    assert state.step == FAILED and "candidate" in state.error
    mv = p.models.get("models:/spam/1")
    assert mv.state == "candidate" and mv.gate_passed is False and not ev.calls
    assert [e["action"] for e in p.models.audit("spam")][:2] == ["register", "gate"]
    p.close()


def test_shadow_failure_archives_and_restores_traffic_settings(tmp_path, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    PolicyStore(p.meta).update("spam", {"canary_percent": 10.0, "shadow_sample": 0.25})   # a human's settings
    state = pipeline(p, evidence=FakeEvidence(p99_ms=500.0)).run()
    assert state.step == FAILED and "p99" in state.error and state.history[-1]["step"] == "shadow"
    assert state.traffic_before == {"canary_percent": 10.0, "shadow_sample": 0.25}
    assert p.models.get("models:/spam/1").state == "archived"
    assert PolicyStore(p.meta).get("spam") == {"canary_percent": 10.0, "shadow_sample": 0.25}   # put back
    p.close()


def test_bad_spec_values_are_refused_when_the_spec_is_built():
    # features="author:spam" was split into letters and label_delay="soon" / latency_sample_rows=-5 were
    # found only when a run reached the dataset or gate step
    from loopstack.errors import LoopstackError
    from loopstack.loop.core import LoopError
    from loopstack.loop.spec import LoopSpec
    from tests.loop.helpers import policy

    def make(**kw):
        base = dict(model="spam", labels="labels.parquet", features=["author:spam"], estimator=lambda: None,
                    gate=None, policy=policy())
        return LoopSpec(**{**base, **kw})
    assert make(features="author:spam").features == ["author:spam"]
    for kw, match in (({"features": []}, "features is empty"), ({"model": ""}, "model"),
                      ({"estimator": "LogisticRegression"}, "callable"),
                      ({"latency_sample_rows": -5}, "latency_sample_rows"), ({"label_delay": "soon"}, "soon")):
        with pytest.raises(LoopstackError, match=match):
            make(**kw)
    with pytest.raises(LoopError):
        make(latency_sample_rows=0)
