"""Guardrails: pass / fail / inconclusive from the harm interval; blocking vs informational."""
from __future__ import annotations

import pytest

from loopstack.experiments import (ExperimentError, Guardrail, SequentialTest, evaluate_guardrails,
                                   two_proportion_ztest, welch_ttest)


def latency(mean_b: float, n: int = 5000):
    """p99-latency-like metric: control 200 ms (sd 40), treatment ``mean_b``."""
    return welch_ttest(n, 200.0, 1600.0, n, mean_b, 1600.0)


def test_lower_is_better_metric_with_a_relative_tolerance():
    g = Guardrail("latency_ms", higher_is_better=False, tolerance=0.02)      # at most 2 % slower
    assert g.evaluate(latency(200.0)).status == "pass"                       # CI of harm ~ +-0.8 %
    assert g.evaluate(latency(210.0)).status == "fail"                       # +5 %, CI well above 2 %
    assert g.evaluate(latency(204.0)).status == "inconclusive"               # +2 %: straddles the margin
    assert g.evaluate(latency(190.0)).status == "pass"                       # faster is fine


def test_higher_is_better_metric_with_an_absolute_tolerance():
    g = Guardrail("conversion", higher_is_better=True, tolerance=0.005, relative=False)
    better = two_proportion_ztest(5000, 50_000, 5200, 50_000)
    worse = two_proportion_ztest(5000, 50_000, 4500, 50_000)
    assert g.evaluate(better).status == "pass"
    outcome = g.evaluate(worse)
    assert outcome.status == "fail" and outcome.harm == pytest.approx(0.01)
    assert outcome.harm_ci[0] > 0.005 and "harm" in outcome.detail


def test_blocking_fail_stops_even_when_everything_else_passes():
    rails = [Guardrail("latency_ms", higher_is_better=False, tolerance=0.02),
             Guardrail("complaints", higher_is_better=False, tolerance=0.0, relative=False, blocking=False)]
    report = evaluate_guardrails(rails, {"latency_ms": latency(210.0),
                                         "complaints": two_proportion_ztest(100, 10_000, 100, 10_000)})
    assert report.decision == "fail" and report.failed == ["latency_ms"]
    ok = evaluate_guardrails(rails, {"latency_ms": latency(200.0),
                                     "complaints": two_proportion_ztest(100, 10_000, 160, 10_000)})
    assert ok.decision == "pass" and ok.failed == ["complaints"]             # informational: reported only
    waiting = evaluate_guardrails(rails[:1], {"latency_ms": latency(204.0)})
    assert waiting.decision == "inconclusive"
    assert waiting.to_dict()["outcomes"][0]["status"] == "inconclusive"


def test_works_with_always_valid_sequential_results():
    seq = SequentialTest(tau=5.0)
    result = seq.update(5000, 200.0, 1600.0, 5000, 215.0, 1600.0)
    g = Guardrail("latency_ms", higher_is_better=False, tolerance=2.0, relative=False)
    assert g.evaluate(result).status == "fail"


def test_missing_blocking_result_and_bad_tolerance_are_errors():
    with pytest.raises(ExperimentError, match="no result for blocking guardrail 'latency_ms'"):
        evaluate_guardrails([Guardrail("latency_ms")], {})
    assert evaluate_guardrails([Guardrail("x", blocking=False)], {}).decision == "pass"
    with pytest.raises(ExperimentError, match="tolerance"):
        Guardrail("x", tolerance=-1)
    for bad in ("0.1", True, None):   # a string was a TypeError from math.isfinite
        with pytest.raises(ExperimentError, match="tolerance must be a finite number"):
            Guardrail("x", tolerance=bad)
