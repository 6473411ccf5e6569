"""The loop's pure core: every transition, the thresholds, the rollback on a guardrail breach, and
early stopping by the sequential test. No I/O: runs in milliseconds."""
from __future__ import annotations

import pytest

from loopstack.experiments.guardrails import Guardrail
from loopstack.loop import core
from loopstack.loop.core import (CANARY, DATASET, DONE, EXPERIMENT, FAIL, FAILED, GATE, PASS, PROMOTE, REGISTER,
                                 ROLLBACK, ROLLED_BACK, SHADOW, TRAIN, WAIT, Decision, ExperimentPlan, Goal,
                                 LiveChecks, LoopError, LoopPolicy, LoopState, advance, decide_experiment, decide_gate,
                                 decide_live, next_step)

HAPPY = [DATASET, TRAIN, GATE, REGISTER, SHADOW, CANARY, EXPERIMENT, PROMOTE, DONE]


def test_happy_path_visits_every_step_in_order():
    step, seen = DATASET, [DATASET]
    while step != DONE:
        step = next_step(step, PASS)
        seen.append(step)
    assert seen == HAPPY


@pytest.mark.parametrize("step", [DATASET, TRAIN, REGISTER, SHADOW, CANARY, EXPERIMENT, PROMOTE])
def test_fail_stops_the_run(step):
    assert next_step(step, FAIL) == FAILED


def test_failed_gate_still_registers_then_fails():
    assert next_step(GATE, FAIL) == REGISTER
    assert next_step(REGISTER, FAIL) == FAILED


def test_rollback_only_from_the_experiment():
    assert next_step(EXPERIMENT, ROLLBACK) == ROLLED_BACK
    for step in (SHADOW, CANARY, PROMOTE, DATASET):
        with pytest.raises(LoopError, match="no transition"):
            next_step(step, ROLLBACK)


def test_only_live_steps_wait():
    for step in core.LIVE:
        assert next_step(step, WAIT) == step
    with pytest.raises(LoopError, match="cannot wait"):
        next_step(TRAIN, WAIT)
    with pytest.raises(LoopError):
        next_step(DONE, PASS)


def test_every_transition_target_is_a_step_or_terminal():
    targets = set(core.TRANSITIONS.values())
    assert targets <= set(core.STEPS) | set(core.TERMINAL)
    assert {s for s, _ in core.TRANSITIONS} == set(core.STEPS)


def test_decide_gate():
    ok = decide_gate({"passed": True, "reasons": [["absolute:auc", True, "auc 0.9"]]})
    bad = decide_gate({"passed": False, "reasons": [["absolute:auc", False, "x"], ["guarded:auc", True, "y"]]})
    assert ok.outcome == PASS and bad.outcome == FAIL and "absolute:auc" in bad.reason and "guarded" not in bad.reason


GOOD = {"requests": 1000, "error_rate": 0.001, "p99_ms": 50.0, "score_psi": 0.05}
CHECKS = LiveChecks(min_requests=1000, max_minutes=60, max_error_rate=0.01, max_p99_ms=200, max_score_psi=0.2)


def test_live_waits_for_n_requests_or_t_minutes():
    few = {**GOOD, "requests": 999}
    assert decide_live(SHADOW, CHECKS, few, 59 * 60).outcome == WAIT
    assert decide_live(SHADOW, CHECKS, few, 60 * 60).outcome == PASS        # T minutes reached
    assert decide_live(SHADOW, CHECKS, GOOD, 10).outcome == PASS             # N requests reached
    none = decide_live(SHADOW, CHECKS, {**GOOD, "requests": 0}, 3600)
    assert none.outcome == FAIL and "no requests" in none.reason


@pytest.mark.parametrize("key,value,words", [("error_rate", 0.02, "error rate"), ("p99_ms", 250.0, "p99"),
                                             ("score_psi", 0.25, "PSI"), ("p99_ms", None, "p99")])
def test_live_thresholds(key, value, words):
    d = decide_live(CANARY, CHECKS, {**GOOD, key: value}, 10)
    assert d.outcome == FAIL and words in d.reason and d.reason.startswith("canary")


@pytest.mark.parametrize("requests", [-5, "abc", float("nan"), 150.7])
def test_live_requests_must_be_a_count(requests):
    # -5 requests passed the shadow step; "abc" and NaN were ValueError tracebacks
    ev = {"requests": requests, "error_rate": 0.0, "p99_ms": 10.0, "score_psi": 0.01}
    with pytest.raises(LoopError, match="shadow evidence: requests"):
        decide_live("shadow", LiveChecks(min_requests=100, max_minutes=60), ev, 4000)


def test_live_at_the_threshold_passes_and_psi_check_can_be_off():
    edge = {"requests": 1000, "error_rate": 0.01, "p99_ms": 200.0, "score_psi": 0.2}
    assert decide_live(SHADOW, CHECKS, edge, 0).outcome == PASS
    no_psi = LiveChecks(min_requests=1, max_score_psi=None)
    assert decide_live(SHADOW, no_psi, {**GOOD, "score_psi": None}, 0).outcome == PASS


PLAN = ExperimentPlan(goal=Goal("caught", tau=0.02), treatment_percent=50, max_minutes=600,
                      guardrails=(Guardrail("latency_ms", higher_is_better=False, tolerance=0.05),))


def evidence(n, rate_c=0.10, rate_t=0.12, lat_c=50.0, lat_t=50.0, n_t=None):
    def arm(users, rate, lat):
        return {"users": users, "metrics": {"caught": {"successes": round(rate * users)},
                                            "latency_ms": {"mean": lat, "var": 100.0}}}
    return {"control": arm(n, rate_c, lat_c), "treatment": arm(n if n_t is None else n_t, rate_t, lat_t)}


def looks(plan, seq, minutes_per_look=60):
    tests, out = {}, []
    for i, ev in enumerate(seq):
        d, tests = decide_experiment(plan, ev, (i + 1) * minutes_per_look * 60, tests)
        out.append(d)
        if d.outcome != WAIT:
            break
    return out, tests


def test_sequential_test_stops_early_when_the_goal_improves():
    out, tests = looks(PLAN, [evidence(2000 * k) for k in range(1, 9)])
    assert [d.outcome for d in out[:-1]] == [WAIT] * (len(out) - 1)
    last = out[-1]
    assert last.outcome == PASS and last.evidence["stopped_early"] and "stopped early" in last.reason
    assert len(out) < 8 and tests["caught"]["looks"] == len(out)
    assert last.evidence["guardrails"]["decision"] == "pass"


def test_blocking_guardrail_breach_rolls_back_even_if_the_goal_improves():
    out, _ = looks(PLAN, [evidence(2000 * k, lat_t=80.0) for k in range(1, 9)])
    assert out[-1].outcome == ROLLBACK and "latency_ms" in out[-1].reason


def test_goal_significantly_worse_fails():
    out, _ = looks(PLAN, [evidence(2000 * k, rate_t=0.07) for k in range(1, 9)])
    assert out[-1].outcome == FAIL and "worse" in out[-1].reason


def test_inconclusive_at_the_horizon_fails_and_waits_before():
    flat = [evidence(500 * k, rate_t=0.10) for k in range(1, 12)]
    out, _ = looks(PLAN, flat)
    assert all(d.outcome == WAIT for d in out[:-1])
    assert out[-1].outcome == FAIL and "horizon" in out[-1].reason and len(out) == 10


def test_min_minutes_holds_a_winner_back():
    plan = ExperimentPlan(goal=Goal("caught", tau=0.02), max_minutes=6000, min_minutes=1200)
    out, _ = looks(plan, [evidence(20000 * k) for k in range(1, 30)])
    assert out[0].outcome == WAIT and "min_minutes" in out[0].reason
    assert out[-1].outcome == PASS and len(out) == 20


def test_sample_ratio_mismatch_fails():
    d, _ = decide_experiment(PLAN, evidence(5000, n_t=4000), 60, {})
    assert d.outcome == FAIL and "sample-ratio mismatch" in d.reason


def test_counts_going_down_and_missing_metrics_are_errors():
    _, tests = decide_experiment(PLAN, evidence(5000), 60, {})
    with pytest.raises(LoopError, match="cumulative"):
        decide_experiment(PLAN, evidence(4000), 120, tests)
    ev = evidence(100)
    del ev["control"]["metrics"]["caught"]
    with pytest.raises(LoopError, match="no metric 'caught'"):
        decide_experiment(PLAN, ev, 60, {})


@pytest.mark.parametrize("arm, metric, value, words", [
    ("treatment", "caught", {"mean": float("inf"), "var": 1.0}, "mean = inf"),      # promoted before
    ("treatment", "latency_ms", {"mean": 50.0, "var": -5.0}, "var = -5.0"),          # guardrail passed before
    ("treatment", "latency_ms", {"mean": float("nan"), "var": 100.0}, "mean = nan"),
    ("treatment", "latency_ms", {"mean": None, "var": 100.0}, "mean = None"),        # TypeError before
    ("control", "caught", {"successes": 99999}, "between 0 and n = 5000"),           # a proportion of 20
    ("control", "caught", {"successes": -1}, "between 0 and n"),
    ("treatment", "caught", {"successes": float("nan")}, "successes = nan"),
])
def test_invalid_experiment_evidence_is_an_error_not_a_result(arm, metric, value, words):
    ev = evidence(5000)
    ev[arm]["metrics"][metric] = value
    with pytest.raises(LoopError, match=f"{arm} arm, metric '{metric}'.*{words}"):
        decide_experiment(PLAN, ev, 60, {})


@pytest.mark.parametrize("users", ["abc", -5, 2.5])
def test_arm_users_must_be_a_count(users):
    ev = evidence(5000)
    ev["treatment"]["users"] = users              # "abc" was a ValueError traceback
    with pytest.raises(LoopError, match="treatment arm: users"):
        decide_experiment(PLAN, ev, 60, {})


def test_empty_arm_waits():
    d, _ = decide_experiment(PLAN, {"control": {"users": 0}, "treatment": {"users": 0}}, 60, {})
    assert d.outcome == WAIT


def test_state_round_trip_and_advance():
    s = LoopState(run_id="r1", model="spam", started_at="t0")
    assert LoopState.from_dict(s.to_dict()) == s
    s2 = advance(s, Decision(PASS, "built", {"dataset_id": "d1"}), "t1")
    assert s2.step == TRAIN and s2.history[-1]["evidence"] == {"dataset_id": "d1"} and s.step == DATASET
    s3 = advance(LoopState("r", "m", step=SHADOW, step_started_at="t"), Decision(WAIT, "more", {}), "t2")
    assert s3.step == SHADOW and s3.looks == 1 and s3.step_started_at == "t" and not s3.history
    s4 = advance(LoopState("r", "m", step=EXPERIMENT), Decision(ROLLBACK, "latency", {}), "t3")
    assert s4.finished and s4.step == ROLLED_BACK and s4.error == "latency"
    assert any("rolled_back" in line for line in core.summary(s4))


def test_plan_validation():
    with pytest.raises(LoopError):
        ExperimentPlan(goal=Goal("x", tau=1), treatment_percent=100)
    with pytest.raises(LoopError):
        LiveChecks(min_requests=0)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("build, name", [
    (lambda: LiveChecks(max_error_rate=NAN), "max_error_rate"),       # every error rate passed
    (lambda: LiveChecks(max_p99_ms=NAN), "max_p99_ms"),               # every latency passed
    (lambda: LiveChecks(max_score_psi=NAN), "max_score_psi"),
    (lambda: LiveChecks(max_error_rate=-0.1), "max_error_rate"),      # every rung failed
    (lambda: LiveChecks(min_requests=2.5), "min_requests"),
    (lambda: LiveChecks(max_minutes=INF), "max_minutes"),
    (lambda: Goal("caught", tau=0), "tau"),                           # failed at the experiment, hours in
    (lambda: Goal("caught", tau=INF), "tau"),
    (lambda: Goal("caught", tau=0.02, alpha=1.5), "alpha"),
    (lambda: Goal("caught", tau=0.02, min_samples=0), "min_samples"),
    (lambda: Goal("", tau=0.02), "metric"),
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), max_minutes=NAN), "max_minutes"),   # never reached
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), max_minutes=-60), "max_minutes"),
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), min_minutes=NAN), "min_minutes"),   # ignored
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), max_minutes=60, min_minutes=120), "min_minutes"),
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), srm_alpha=0), "srm_alpha"),
    (lambda: ExperimentPlan(goal=Goal("x", tau=1), guardrail_tau={"latency_ms": -1}), "guardrail_tau"),
    (lambda: LoopPolicy(experiment=PLAN, canary_percent=150), "canary_percent"),  # refused at the canary
    (lambda: LoopPolicy(experiment=PLAN, shadow_sample=0), "shadow_sample"),
    (lambda: LoopPolicy(experiment=PLAN, holdback_percent=NAN), "holdback_percent"),
    (lambda: LoopPolicy(experiment=PLAN, poll_seconds=-1), "poll_seconds"),
])
def test_bad_policy_numbers_are_refused_when_the_policy_is_built(build, name):
    with pytest.raises(LoopError, match=f"{name}.* must be"):
        build()
