"""Circuit breaker (fake clock) and the degradation ladder."""
from __future__ import annotations

import pytest

from loopstack.serving import CircuitBreaker, Rung, ServingConfigError, plan_rungs


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def breaker(**kw):
    clock = FakeClock()
    kw = {"window_s": 10.0, "min_requests": 10, "max_error_rate": 0.5, "open_s": 5.0, "half_open_probes": 2,
          "clock": clock, **kw}
    return CircuitBreaker(**kw), clock


def feed(b, n, ok=True, latency=0.01):
    for _ in range(n):
        b.record(ok, latency)


def test_needs_min_requests_before_tripping():
    b, _ = breaker()
    feed(b, 9, ok=False)
    assert b.state == "closed" and b.allow()
    feed(b, 1, ok=False)
    assert b.state == "open" and not b.allow()
    snap = b.snapshot()
    assert snap["opened_count"] == 1 and "error rate" in snap["last_trip_reason"]


def test_error_rate_must_exceed_the_limit():
    b, _ = breaker()
    for _ in range(10):
        b.record(True, 0.01)
        b.record(False, 0.01)
    assert b.state == "closed"          # 50 % is not more than 50 %
    b.record(False, 0.01)
    assert b.state == "open"


def test_old_errors_leave_the_window():
    b, clock = breaker()
    feed(b, 9, ok=False)
    clock.t += 11                        # a full window later the errors are gone
    feed(b, 5, ok=False)
    feed(b, 5, ok=True)
    assert b.state == "closed" and b.snapshot()["requests"] == 10


def test_open_then_half_open_probes_close_it():
    b, clock = breaker()
    feed(b, 10, ok=False)
    clock.t += 4.9
    assert b.state == "open" and not b.available()
    clock.t += 0.2
    assert b.state == "half_open" and b.available()
    assert b.allow() and b.allow() and not b.allow()   # two probes only
    b.record(True, 0.01)
    assert b.state == "half_open"
    b.record(True, 0.01)
    assert b.state == "closed"
    feed(b, 9, ok=False)                 # the window was reset on closing
    assert b.state == "closed"


def test_failed_probe_reopens():
    b, clock = breaker()
    feed(b, 10, ok=False)
    clock.t += 5
    assert b.allow()
    b.record(False, 0.01)
    assert b.state == "open" and b.snapshot()["opened_count"] == 2
    clock.t += 5
    assert b.state == "half_open"


def test_lost_probes_are_forgotten():
    b, clock = breaker()
    feed(b, 10, ok=False)
    clock.t += 5
    assert b.allow() and b.allow() and not b.allow()
    clock.t += 5                         # the probes never reported back
    assert b.allow()


def test_latency_quantile_trips():
    b, _ = breaker(max_latency_s=0.1, latency_quantile=0.9, max_error_rate=1.0)
    feed(b, 18, latency=0.01)
    feed(b, 1, latency=2.0)
    assert b.state == "closed"           # 1 slow of 19: p90 still fast
    feed(b, 2, latency=2.0)
    assert b.state == "open"
    snap = b.snapshot()
    assert "latency" in snap["last_trip_reason"] and snap["p_latency"] > 0.1


def test_slow_probe_counts_as_failure():
    b, clock = breaker(max_latency_s=0.1)
    feed(b, 10, ok=False)
    clock.t += 5
    assert b.allow()
    b.record(True, 0.5)
    assert b.state == "open"


def test_snapshot_reports_window_numbers():
    b, _ = breaker(latency_quantile=0.5)
    feed(b, 3, ok=True, latency=0.01)
    feed(b, 1, ok=False, latency=0.01)
    snap = b.snapshot()
    assert snap["requests"] == 4 and snap["errors"] == 1 and snap["error_rate"] == 0.25
    assert 0.01 <= snap["p_latency"] < 0.013


@pytest.mark.parametrize("kwargs,key", [
    ({"window_s": 0}, "window_s"), ({"min_requests": 0}, "min_requests"), ({"max_error_rate": 1.5}, "max_error_rate"),
    ({"max_latency_s": -1}, "max_latency_s"), ({"latency_quantile": 0}, "latency_quantile"),
    ({"half_open_probes": 0}, "half_open_probes"), ({"open_s": -1}, "open_s"),
])
def test_bad_breaker_settings(kwargs, key):
    with pytest.raises(ServingConfigError, match=key):
        CircuitBreaker(**kwargs)


def test_plan_rungs_skips_open_breakers_and_keeps_the_baseline():
    rungs = [Rung("model", 0.05), Rung("fallback", 0.05), Rung("baseline", 0.001)]
    model, clock = breaker()
    fallback, _ = breaker()
    assert plan_rungs(rungs, {"model": model, "fallback": fallback}) == rungs
    feed(model, 10, ok=False)
    assert [r.name for r in plan_rungs(rungs, {"model": model, "fallback": fallback})] == ["fallback", "baseline"]
    baseline_breaker, _ = breaker()
    feed(baseline_breaker, 10, ok=False)
    feed(fallback, 10, ok=False)
    assert [r.name for r in plan_rungs(rungs, {"model": model, "fallback": fallback,
                                               "baseline": baseline_breaker})] == ["baseline"]
    clock.t += 5                          # planning does not use up half-open probes
    for _ in range(5):
        assert plan_rungs(rungs, {"model": model})[0].name == "model"
    assert model.allow()


def test_rung_validation():
    with pytest.raises(ServingConfigError, match="budget_s=-1"):
        Rung("model", -1)
    with pytest.raises(ServingConfigError, match="name"):
        Rung("", 1)
