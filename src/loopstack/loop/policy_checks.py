"""Range checks of the loop policy's numbers, run when a policy is built.

A bad number would otherwise surface hours into a run: a NaN threshold never trips (every check
passes), a NaN horizon never ends the experiment, a tau of 0 or a canary_percent of 150 fails the
run at the experiment or canary step, after shadow and canary traffic were spent on the candidate.
"""
from __future__ import annotations

import math
import numbers
from typing import Any


def check_range(owner: str, name: str, value: Any, lo: float, hi: float = math.inf, *, lo_open: bool = False,
                hi_open: bool = False, integer: bool = False) -> None:
    """LoopError unless `value` is a finite number (a whole one if `integer`) in the range lo..hi."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    ok = ok and math.isfinite(value) and (value > lo if lo_open else value >= lo) \
        and (value < hi if hi_open else value <= hi)
    if not ok:
        kind = "a whole number" if integer else "a finite number"
        rng = (f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open or math.isinf(hi) else ']'}")
        from loopstack.loop.core import LoopError
        raise LoopError(f"{owner}: {name} = {value!r} must be {kind} in {rng}")


def check_live(c: Any) -> None:
    """LiveChecks: counts, minutes and the thresholds shadow/canary are judged by."""
    check_range("LiveChecks", "min_requests", c.min_requests, 1, integer=True)
    check_range("LiveChecks", "max_minutes", c.max_minutes, 0, lo_open=True)
    check_range("LiveChecks", "max_error_rate", c.max_error_rate, 0, 1)
    check_range("LiveChecks", "max_p99_ms", c.max_p99_ms, 0, lo_open=True)
    if c.max_score_psi is not None:
        check_range("LiveChecks", "max_score_psi", c.max_score_psi, 0)


def check_goal(g: Any) -> None:
    """Goal: a metric name and the sequential test's tau, alpha and min_samples."""
    from loopstack.loop.core import LoopError
    if not isinstance(g.metric, str) or not g.metric:
        raise LoopError(f"Goal: metric must be the name of the goal metric, got {g.metric!r}")
    check_range("Goal", "tau", g.tau, 0, lo_open=True)
    check_range("Goal", "alpha", g.alpha, 0, 1, lo_open=True, hi_open=True)
    check_range("Goal", "min_samples", g.min_samples, 1, integer=True)


def check_plan(p: Any) -> None:
    """ExperimentPlan: traffic split, horizon, minimum duration, SRM alpha, guardrail taus."""
    check_range("ExperimentPlan", "treatment_percent", p.treatment_percent, 0, 100, lo_open=True, hi_open=True)
    check_range("ExperimentPlan", "max_minutes", p.max_minutes, 0, lo_open=True)
    check_range("ExperimentPlan", "min_minutes", p.min_minutes, 0, p.max_minutes)
    check_range("ExperimentPlan", "srm_alpha", p.srm_alpha, 0, 1, lo_open=True, hi_open=True)
    for metric, tau in dict(p.guardrail_tau).items():
        check_range("ExperimentPlan", f"guardrail_tau[{metric!r}]", tau, 0, lo_open=True)


def check_policy(p: Any) -> None:
    """LoopPolicy: the traffic each rung gets and the pause between looks."""
    check_range("LoopPolicy", "shadow_sample", p.shadow_sample, 0, 1, lo_open=True)
    check_range("LoopPolicy", "canary_percent", p.canary_percent, 0, 100, lo_open=True)
    check_range("LoopPolicy", "holdback_percent", p.holdback_percent, 0, 100, hi_open=True)
    check_range("LoopPolicy", "poll_seconds", p.poll_seconds, 0)
