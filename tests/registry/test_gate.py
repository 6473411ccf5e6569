"""Validation gate: every check, both ways, and latency measured on a slow fake predict."""
from __future__ import annotations

import pytest
from rich.console import Console

from loopstack.registry.gate import GateDecision, ModelValidationGate
from tests.registry.helpers import SlowModel

GOOD = {"precision": 0.97, "recall": 0.88, "auc": 0.950}
PROD = {"precision": 0.96, "recall": 0.86, "auc": 0.945}
SLICES = {"US": {"recall": 0.90}, "DE": {"recall": 0.85}, "FR": {"recall": 0.86}}


def by_check(decision):
    return {r.check: r for r in decision.reasons}


def test_all_checks_pass(gate):
    d = gate.evaluate(GOOD, PROD, SLICES)
    assert d.passed and set(by_check(d)) == {"absolute:precision", "absolute:recall", "guarded:auc", "primary:auc",
                                              "slice_gap:recall"}
    assert all(r.passed for r in d.reasons)


def test_absolute_threshold_fails(gate):
    d = gate.evaluate({**GOOD, "recall": 0.84}, PROD, SLICES)
    r = by_check(d)["absolute:recall"]
    assert not d.passed and not r.passed and "0.8400" in r.detail and ">= 0.85" in r.detail
    assert [x.check for x in d.failed] == ["absolute:recall"]
    d = gate.evaluate({"recall": 0.9, "auc": 0.95}, PROD, SLICES)
    assert "no precision metric" in by_check(d)["absolute:precision"].detail and not d.passed


def test_guarded_regression_fails_even_when_primary_improves():
    g = ModelValidationGate(relative={"guarded": {"recall": 0.01}, "primary": ("auc", 0.002)})
    d = g.evaluate({"auc": 0.96, "recall": 0.84}, {"auc": 0.95, "recall": 0.86})
    assert by_check(d)["primary:auc"].passed and not by_check(d)["guarded:recall"].passed and not d.passed
    assert g.evaluate({"auc": 0.96, "recall": 0.851}, {"auc": 0.95, "recall": 0.86}).passed   # within epsilon


def test_primary_must_improve_by_delta(gate):
    d = gate.evaluate({**GOOD, "auc": 0.9465}, PROD, SLICES)   # +0.0015 < 0.002
    assert by_check(d)["guarded:auc"].passed and not by_check(d)["primary:auc"].passed and not d.passed
    assert gate.evaluate({**GOOD, "auc": 0.9471}, PROD, SLICES).passed


def test_lower_is_better_metric_direction():
    g = ModelValidationGate(absolute={"log_loss": 0.3}, relative={"guarded": {"log_loss": 0.01}})
    assert g.evaluate({"log_loss": 0.25}, {"log_loss": 0.255}).passed
    d = g.evaluate({"log_loss": 0.35}, {"log_loss": 0.30})
    assert not by_check(d)["absolute:log_loss"].passed and not by_check(d)["guarded:log_loss"].passed


def test_first_model_skips_relative_checks(gate):
    d = gate.evaluate(GOOD, None, SLICES)
    assert d.passed and "first model" in by_check(d)["primary:auc"].detail


def test_slice_gap(gate):
    d = gate.evaluate(GOOD, PROD, {"US": {"recall": 0.95}, "DE": {"recall": 0.80}})
    r = by_check(d)["slice_gap:recall"]
    assert not r.passed and "0.1500" in r.detail and "US" in r.detail and "DE" in r.detail
    nested = {"country": {"US": {"recall": 0.9}, "DE": {"recall": 0.88}},
              "device": {"ios": {"recall": 0.95}, "android": {"recall": 0.80}}}
    d = gate.evaluate(GOOD, PROD, nested)
    assert by_check(d)["slice_gap:recall:country"].passed and not by_check(d)["slice_gap:recall:device"].passed
    assert not gate.evaluate(GOOD, PROD, None).passed       # configured but not given: fails, not skipped


def test_latency_budget_measured_on_slow_predict():
    # sleep() never returns early, so the slow batch-32 call (>= 98 ms) always breaks its 50 ms budget;
    # the passing side has a generous 500 ms budget so a loaded machine cannot fail it
    g = ModelValidationGate(latency_budget_ms={"p99_batch1": 500, "p99_batch32": 50}, latency_repeats=10,
                            latency_warmup=1)
    sample = [[1.0, 2.0]] * 5                      # fewer rows than 32: tiled
    seen = []
    fast = g.evaluate({}, predict_fn=lambda x: seen.append(len(x)), sample=sample)
    assert set(seen) == {1, 32} and seen.count(32) == 11 and fast.measured["latency_ms"]["p99_batch32"] < 50
    slow = g.evaluate({}, predict_fn=SlowModel(fixed_ms=2, per_row_ms=3).predict, sample=sample)
    r = by_check(slow)
    assert r["latency:p99_batch1"].passed and not r["latency:p99_batch32"].passed   # ~5 ms vs ~98 ms
    assert slow.measured["latency_ms"]["p99_batch32"] >= 98 and not slow.passed
    assert "budget 50 ms" in r["latency:p99_batch32"].detail
    assert not g.evaluate({}).passed               # no predict_fn: not measured, fails
    with pytest.raises(ValueError, match="p99_batch1"):
        ModelValidationGate(latency_budget_ms={"p99": 10})


def test_decision_round_trip_and_rich_table(gate):
    d = gate.evaluate({**GOOD, "recall": 0.5}, PROD, SLICES)
    back = GateDecision.from_dict(d.to_dict())
    assert back.passed == d.passed and back.reasons == d.reasons
    console = Console(record=True, width=160)
    console.print(d.table("models:/spam/2"))
    text = console.export_text()
    assert "FAILED" in text and "absolute:recall" in text and "FAIL" in text and "slice_gap:recall" in text


def test_gate_decision_stored_and_blocks_promotion(reg, gate):
    from loopstack.registry import TransitionError
    from tests.registry.conftest import register
    register(reg, "spam", 1, gate=False)
    d = gate.evaluate({**GOOD, "precision": 0.9}, PROD, SLICES)
    reg.record_gate("models:/spam/1", d)
    stored = reg.get("models:/spam/1")
    assert stored.gate_passed is False and GateDecision.from_dict(stored.gate).reasons == d.reasons
    with pytest.raises(TransitionError, match="gate failed"):
        reg.promote("models:/spam/1", "shadow", reason="x")
    reg.record_gate("models:/spam/1", gate.evaluate(GOOD, PROD, SLICES))
    assert reg.promote("models:/spam/1", "shadow", reason="gate passed").state == "shadow"


@pytest.mark.parametrize("kwargs,match", [
    ({"absolute": {"auc": "0.9"}}, r"absolute\['auc'\] = '0.9' must be a finite number"),   # TypeError at evaluate
    ({"absolute": {"auc": float("nan")}}, r"absolute\['auc'\] = nan"),                     # failed every time
    ({"relative": {"guarded": {"auc": -0.01}}}, r"guarded'\]\['auc'\] = -0.01 must be a finite number >= 0"),
    ({"relative": {"primary": ("auc", "x")}}, "must be a finite number"),
    ({"max_slice_gap": {"recall": "x"}}, r"max_slice_gap\['recall'\]"),
    ({"latency_budget_ms": {"p99_batch1": "5"}}, r"latency_budget_ms\['p99_batch1'\]"),
    ({"latency_budget_ms": {"p99_batch0": 5}}, "batch size of at least 1"),                # passed on empty batches
    ({"latency_budget_ms": {"p150_batch1": 5}}, r"percentile in \(0, 100\]"),              # ValueError from numpy
    ({"latency_budget_ms": {"p99_batch1": 5}, "latency_repeats": 0}, "latency_repeats must be >= 1"),  # IndexError
])
def test_gate_configuration_is_checked_when_built(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelValidationGate(**kwargs)


def test_latency_on_an_empty_sample_is_not_measured():
    """Predicting on zero rows took no time, so an empty sample passed every latency budget."""
    g = ModelValidationGate(latency_budget_ms={"p99_batch1": 5}, latency_repeats=3, latency_warmup=0)
    d = g.evaluate({}, predict_fn=lambda x: [0] * len(x), sample=[])
    assert not d.passed and "sample has no rows" in d.reasons[0].detail


def test_slice_metrics_without_per_slice_dicts_are_named():
    g = ModelValidationGate(max_slice_gap={"recall": 0.1})
    with pytest.raises(ValueError, match="slice_metrics entry 'US' is 0.9, not a dict of metrics"):
        g.evaluate({}, slice_metrics={"US": 0.9, "DE": 0.8})
