"""Pure parts of the monitor: rules, window state (merge, latency quantiles, labels), summary, diagnose."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from loopstack.config import parse_config
from loopstack.errors import ConfigError
from loopstack.monitoring.diagnose import Facts, diagnose
from loopstack.monitoring.profiles import Profile
from loopstack.monitoring.rules import evaluate, parse_rules
from loopstack.monitoring.summary import summarize
from loopstack.monitoring.window_state import WindowState, latency_bucket, latency_quantile, parse_score

HOUR = 3_600_000_000


def test_rules_parse_validate_and_fire():
    rules = parse_rules([{"metric": "psi", "feature": "*", "op": ">", "value": 0.2},
                         {"metric": "recall", "op": "<", "value": 0.85, "severity": "watch"}])
    fired = evaluate(rules, {"recall": 0.8}, {"a": {"psi": 0.3}, "b": {"psi": 0.05}, "c": {"psi": None}})
    assert [(f.rule.metric, f.feature) for f in fired] == [("psi", "a"), ("recall", None)]
    assert evaluate(rules, {"recall": None}, {}) == []          # unknown (incomplete) never fires
    for bad, msg in (({"metric": "psii", "value": 1}, "not known"), ({"metric": "psi", "op": "=>", "value": 1},
                     "op"), ({"metric": "recall", "feature": "x", "value": 1}, "not per feature"),
                     ({"metric": "psi"}, "numeric value"), ({"metric": "psi", "value": 1, "severity": "x"},
                                                            "severity")):
        with pytest.raises(ConfigError, match=msg):
            parse_rules([bad])


def test_monitoring_config_section_and_env_override():
    cfg = parse_config({"monitoring": {"window": "1d", "threshold": 0.7}},
                       env={"LOOPSTACK_MONITORING__RULES": '[{"metric": "p99_latency_ms", "op": ">", "value": 200}]',
                            "LOOPSTACK_MONITORING__WEBHOOK_URL": "http://127.0.0.1:1/x"})
    m = cfg.monitoring
    assert m.window == "1d" and m.threshold == 0.7 and m.webhook_url == "http://127.0.0.1:1/x"
    assert [r.metric for r in m.rules] == ["p99_latency_ms"]
    assert len(parse_config({}, env={}).monitoring.effective_rules()) > 3     # defaults
    with pytest.raises(ConfigError, match="monitoring.label_delay"):
        parse_config({"monitoring": {"label_delay": "soon"}}, env={})
    with pytest.raises(ConfigError, match="monitoring.threshold"):
        parse_config({"monitoring": {"threshold": "high"}}, env={})


@pytest.mark.parametrize("section, msg", [
    ({"window": "0h"}, "monitoring.window"), ({"window": "1500ms"}, "monitoring.window"),
    ({"threshold": "nan"}, "monitoring.threshold"), ({"threshold": "inf"}, "monitoring.threshold"),
    ({"min_samples": 0}, "monitoring.min_samples"), ({"min_samples": -5}, "monitoring.min_samples"),
    ({"rules": [{"metric": "psi", "op": ">", "value": "nan"}]}, "finite value"),
    ({"rules": [{"metric": "recall", "op": "<", "value": float("inf")}]}, "finite value")])
def test_monitoring_config_rejects_values_that_break_or_silence_the_monitor(section, msg):
    # a zero window divided by zero, 1500ms was truncated to 1 s windows, a NaN threshold crashed the
    # summaries, min_samples 0 computed drift on empty windows and a NaN rule never fired
    with pytest.raises(ConfigError, match=msg):
        parse_config({"monitoring": section}, env={})
    assert parse_config({"monitoring": {"window": "30s", "min_samples": 1}}, env={}).monitoring.window == "30s"


def test_latency_histogram_quantiles_within_ten_percent():
    rng = np.random.default_rng(1)
    lat = rng.gamma(2, 20, 20_000)
    hist: dict[int, int] = {}
    for x in lat:
        b = latency_bucket(float(x))
        hist[b] = hist.get(b, 0) + 1
    for q in (0.5, 0.99):
        exact = float(np.quantile(lat, q))
        assert exact <= latency_quantile(hist, q) <= exact * 1.1 + 1e-9


def _reference(rng):
    df = pd.DataFrame({"x": rng.normal(0, 1, 2000), "c": rng.choice(["a", "b"], 2000)})
    return Profile().fit(df, scores=rng.beta(2, 5, 2000))


def _records(rng, n, shift=0.0):
    xs = rng.normal(shift, 1, n)
    return [{"variant": "control", "rung": "model", "latency_ms": 5.0, "status": "ok", "output": float(s),
             "features": {"x": float(x), "c": "a" if x > 0 else "b"}} for x, s in zip(xs, rng.beta(2, 5, n))]


def test_window_state_merge_equals_one_pass_and_roundtrips():
    rng = np.random.default_rng(2)
    ref = _reference(rng)
    a, b = _records(rng, 300), _records(rng, 200)
    sa, sb, sab = WindowState(ref), WindowState(ref), WindowState(ref)
    for st, recs in ((sa, a), (sb, b), (sab, a + b)):
        st.add_predictions(recs, [parse_score(r["output"]) for r in recs], [["variant=control"]] * len(recs))
    sa.add_labels([0.9, 0.2], [1, 1], 0.5)
    sab.add_labels([0.9, 0.2], [1, 1], 0.5)
    merged = sa.merge(sb)
    assert merged.features.features["x"].counts.tolist() == sab.features.features["x"].counts.tolist()
    assert merged.score_moments.mean == pytest.approx(sab.score_moments.mean)
    assert merged.requests == 500 and merged.tp == 1 and merged.fn == 1
    assert np.array_equal(merged.score_hist, sab.score_hist)
    assert merged.features.n_rows == 500
    assert WindowState.from_dict(merged.to_dict()).to_dict() == merged.to_dict()
    assert parse_score([0.1, 0.9]) == 0.9 and parse_score({"score": 0.3}) == 0.3 and parse_score("x") is None


def test_summary_is_incomplete_until_label_delay_passes():
    rng = np.random.default_rng(3)
    ref = _reference(rng)
    st = WindowState(ref)
    recs = _records(rng, 400, shift=2.0)
    st.add_predictions(recs, [r["output"] for r in recs], [[]] * 400)
    st.add_labels([0.9] * 10, [1] * 10, 0.5)
    early = summarize("m", 1, 0, 3600, st, ref, now_us=HOUR + 23 * HOUR, label_delay_us=24 * HOUR)
    assert early.status == "incomplete" and early.metrics["recall"] is None
    late = summarize("m", 1, 0, 3600, st, ref, now_us=HOUR + 24 * HOUR, label_delay_us=24 * HOUR)
    assert late.complete and late.metrics["recall"] == 1.0
    assert late.features["x"]["drifted"] and late.features["x"]["psi"] > 0.2


def test_diagnose_walks_in_order_and_stops_at_first_explanation():
    healthy = dict(freshness={"v": 10.0}, data_checks=[{"status": "ok", "column": "x", "check": "null_rate"}],
                   score_band="stable", mean_shift=0.0, reference_mean=0.3)
    d = diagnose(Facts("m", **healthy))
    assert d.stopped_at is None and len(d.steps) == 5
    d = diagnose(Facts("m", **{**healthy, "deploys": [{"action": "alias", "alias": "x", "version": 2}],
                               "freshness": {"v": 1e6}}))
    assert d.stopped_at == "deploy" and len(d.steps) == 1           # lag is not even looked at
    d = diagnose(Facts("m", **{**healthy, "deploys": [{"action": "register", "version": 2}],
                               "freshness": {"v": 1e6}}))
    assert d.stopped_at == "feature_lag"                            # registering is not a deploy
    d = diagnose(Facts("m", **{**healthy, "data_checks": [{"status": "alert", "column": "x",
                                                           "check": "null_rate", "detail": "0% -> 30%"}],
                               "score_band": "act"}))
    assert d.stopped_at == "data_quality"
    d = diagnose(Facts("m", **{**healthy, "score_band": "act", "segments": {"variant=canary": (200, 0.7)}}))
    assert d.stopped_at == "score_shift" and "variant=canary" in d.explanation
    d = diagnose(Facts("m", **{**healthy, "segments": {"variant=canary": (200, 0.7), "variant=control": (900, 0.3)}}))
    assert d.stopped_at == "segment" and "variant=canary" in d.steps[-1].detail


def test_server_metrics_parse_and_deltas():
    from loopstack.monitoring.server_metrics import batch_delta, parse_server_metrics
    text = ('# TYPE loopstack_serving_queue_depth gauge\nloopstack_serving_queue_depth{model="spam",version="2"} 3\n'
            '# TYPE loopstack_serving_batch_size histogram\n'
            'loopstack_serving_batch_size_bucket{model="spam",version="2",le="+Inf"} 10\n'
            'loopstack_serving_batch_size_count{model="spam",version="2"} 10\n'
            'loopstack_serving_batch_size_sum{model="spam",version="2"} 45\n')
    assert parse_server_metrics(text) == {("spam", 2): {"queue_depth": 3.0, "batch_count": 10.0, "batch_sum": 45.0}}
    assert batch_delta(None, (10, 45)) == (0, 0)
    assert batch_delta((10, 45), (14, 85)) == (4, 40)
    assert batch_delta((10, 45), (2, 9)) == (2, 9)            # restarted server
    st = WindowState()
    st.add_server_sample(3.0, 4, 40)
    st.add_server_sample(1.0, 0, 0)
    s = summarize("m", 1, 0, 3600, st, None, now_us=0, label_delay_us=0)
    assert s.metrics["queue_depth_max"] == 3.0 and s.metrics["queue_depth_mean"] == 2.0
    assert s.metrics["mean_batch_size"] == 10.0


def test_diagnose_with_nothing_checked_does_not_point_at_drift():
    # no windows, or no reference profile: every step says "no", which used to read as "suspect genuine drift"
    d = diagnose(Facts("m"))
    assert d.explanation is None and "no monitoring windows for model 'm'" in d.note
    assert d.to_dict()["note"] == d.note
    d = diagnose(Facts("m", version=1, freshness={"v": 10.0}))
    assert d.explanation is None and "not evidence of drift" in d.note
    checked = diagnose(Facts("m", version=1, data_checks=[{"status": "ok", "column": "x", "check": "null_rate"}],
                             score_band="stable", mean_shift=0.0))
    assert checked.explanation is None and checked.note is None
