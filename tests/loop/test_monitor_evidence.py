"""`MonitorEvidence` on a small generated scenario: a registered version (with its reference profile)
climbs shadow -> canary -> experiment while synthetic prediction records and late labels are logged;
the provider counts only the rung's own records since the version entered it, compares scores with
the offline reference, and reads the A/B per arm from labelled predictions."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from loopstack.log.base import TopicConfig
from loopstack.loop.core import PASS, ExperimentPlan, Goal, decide_experiment
from loopstack.loop.monitor_evidence import MonitorEvidence
from loopstack.monitoring.windows import append_labels
from loopstack.serving.prediction_log import SCHEMA, TOPIC
from tests.loop.helpers import make_project, pipeline


def _ref_scores(profile: dict, n: int, rng) -> np.ndarray:
    """Scores drawn from the reference score histogram (uniform within each bin)."""
    s = profile["scores"]
    edges, counts = np.asarray(s["bin_edges"]), np.asarray(s["counts"], dtype=float)
    idx = rng.choice(len(counts), size=n, p=counts / counts.sum())
    return rng.uniform(edges[idx], edges[idx + 1])


def _rec(i, kind, version, variant, score, latency, user=None, status="ok", ts=None):
    return {"request_id": f"r{i}", "ts": (ts or datetime.now(timezone.utc)).isoformat(), "model": "spam",
            "version": version, "variant": variant, "rung": "model", "kind": kind, "latency_ms": latency,
            "user_id": user, "status": status, "output": float(score)}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, module_meta_url):
    p = make_project(tmp_path_factory.mktemp("evidence") / "proj", module_meta_url)
    pl = pipeline(p)
    state = pl.drive(pl.start(), max_steps=4)          # dataset, train, gate, register
    assert state.step == "shadow" and state.version == 1
    p.log.create_topic(TopicConfig(TOPIC, 1, SCHEMA, key_field="model"))
    yield p, p.models.profile("models:/spam/1")
    p.close()


def test_shadow_and_canary_count_only_their_rung_since_entering_it(scenario):
    p, profile = scenario
    rng = np.random.default_rng(0)
    old = datetime.now(timezone.utc) - timedelta(hours=2)
    # before the version entered shadow: must not count
    p.log.append(TOPIC, [_rec(i, "shadow", 1, "production", 0.99, 500.0, ts=old) for i in range(50)])
    p.models.promote("models:/spam/1", "shadow", reason="test")
    scores = _ref_scores(profile, 400, rng)
    recs = [_rec(100 + i, "shadow", 1, "production", s, 10.0 + i % 10, status="error" if i < 4 else "ok")
            for i, s in enumerate(scores)]
    recs += [_rec(600 + i, "prediction", 0, "production", 0.5, 5.0) for i in range(100)]   # production answers
    p.log.append(TOPIC, recs)
    ev = MonitorEvidence(p).shadow("spam", 1)
    assert ev["requests"] == 400 and ev["error_rate"] == pytest.approx(0.01)
    assert 15 <= ev["p99_ms"] <= 25                       # not the 500 ms records from before shadow
    assert ev["score_psi"] is not None and ev["score_psi"] < 0.1

    p.models.promote("models:/spam/1", "canary", reason="test")
    ev = MonitorEvidence(p).canary("spam", 1)
    assert ev["requests"] == 0                            # shadow copies are not canary traffic
    shifted = np.clip(_ref_scores(profile, 300, rng) + 0.5, 0, 1)   # the score distribution moved
    p.log.append(TOPIC, [_rec(1000 + i, "prediction", 1, "canary", s, 12.0) for i, s in enumerate(shifted)])
    ev = MonitorEvidence(p).canary("spam", 1)
    assert ev["requests"] == 300 and ev["error_rate"] == 0
    assert ev["score_psi"] > 0.2


def test_experiment_reads_labelled_predictions_per_arm(scenario):
    p, _ = scenario
    p.models.promote("models:/spam/1", "experiment", reason="test")
    rng = np.random.default_rng(1)
    recs, labels = [], []
    later = datetime.now(timezone.utc) + timedelta(days=1)
    for i in range(2000):
        arm = "control" if i % 2 else "v1"
        spam = rng.random() < 0.2
        caught = rng.random() < (0.5 if arm == "control" else 0.9)
        fp = rng.random() < 0.02
        score = (0.9 if caught else 0.1) if spam else (0.8 if fp else 0.05)
        recs.append(_rec(5000 + i, "prediction", 0 if arm == "control" else 1, arm, score,
                         20.0 + rng.normal(0, 2), user=f"u{i // 2}-{arm}"))
        if i < 1800:                                      # the last 200 have no label yet
            labels.append({"request_id": f"r{5000 + i}", "label": int(spam),
                           "ts": (later if i < 1600 else later + timedelta(days=5)).isoformat()})
    recs.append(_rec(9999, "shadow", 1, "production", 0.9, 1.0))   # not an arm
    p.log.append(TOPIC, recs)
    append_labels(p.log, labels)

    ev = MonitorEvidence(p).experiment("spam", 0, 1)
    c, t = ev["control"], ev["treatment"]
    assert c["users"] == t["users"] == 1000 and c["requests"] == t["requests"] == 1000
    pos_c = sum(1 for i, lab in enumerate(labels) if i % 2 and lab["label"])
    assert c["metrics"]["spam_caught"]["n"] == pos_c
    assert c["metrics"]["spam_caught"]["n"] + c["metrics"]["false_positive_rate"]["n"] == 900
    rate = {a: ev[a]["metrics"]["spam_caught"]["successes"] / ev[a]["metrics"]["spam_caught"]["n"] for a in ev}
    assert 0.4 < rate["control"] < 0.6 and 0.8 < rate["treatment"] < 0.97
    assert ev["treatment"]["metrics"]["latency_ms"]["mean"] == pytest.approx(20.0, abs=0.5)
    assert ev["treatment"]["metrics"]["error_rate"] == {"successes": 0, "n": 1000}

    # at the loop's "now", labels that arrive later do not count yet
    now = later + timedelta(hours=1)
    early = MonitorEvidence(p, now=lambda: now).experiment("spam", 0, 1)
    m = early["control"]["metrics"]
    assert m["spam_caught"]["n"] + m["false_positive_rate"]["n"] == 800

    plan = ExperimentPlan(goal=Goal("spam_caught", tau=0.1), treatment_percent=50)
    decision, _ = decide_experiment(plan, ev, 3600.0)
    assert decision.outcome == PASS and "spam_caught" in decision.reason
