"""A rung that times out with all the request's time left means the deadline passed: 504 (or the baseline),
never 503, even when the event loop's timer fires before `time.monotonic()` reaches the deadline (uvloop's
cached clock does that under load; CI saw it as a flaky 503)."""
from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from loopstack.serving.answers import DeadlineError, Request, Unavailable
from loopstack.serving.config import ModelSpec, ServingConfig
from loopstack.serving.ladder import CircuitBreaker
from loopstack.serving.metrics import ServingMetrics
from loopstack.serving.predict import PredictService
from loopstack.serving.router import Assignment, TrafficPolicy

METRICS = ServingMetrics()


class EarlyTimer:
    """A batcher whose timeout fires at once: the loop's timer ran ahead of time.monotonic()."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def submit_async(self, vec, deadline=None, timeout=None):
        raise self.exc


def _ladder(exc: BaseException, deadline_s: float, baseline: float | None = None):
    svc = PredictService(None, ServingConfig(models=(ModelSpec("spam"),)), METRICS)
    lv = SimpleNamespace(version=1, breaker=CircuitBreaker(), batcher=EarlyTimer(exc),
                         builder=SimpleNamespace(columns=["a"]))
    snap = SimpleNamespace(policy=TrafficPolicy("spam", production=1, baseline=baseline), versions={1: lv})
    handle = SimpleNamespace(name="spam")
    req = Request({}, {}, None, "r-1")
    deadline = time.monotonic() + deadline_s
    return asyncio.run(svc._ladder(handle, snap, Assignment("production", 1, None, -1), lv, [0.0], req, deadline,
                                   []))


def test_a_timeout_that_had_all_the_time_left_is_a_deadline_error_even_if_the_clock_lags():
    with pytest.raises(DeadlineError, match="deadline"):
        _ladder(asyncio.TimeoutError(), deadline_s=5.0)   # the clock is far from the deadline: the timer fired early


def test_with_a_baseline_that_timeout_gets_the_baseline():
    ans = _ladder(asyncio.TimeoutError(), deadline_s=5.0, baseline=0.02)
    assert (ans.rung, ans.prediction, ans.version) == ("baseline", 0.02, None)
    assert "no answer within" in ans.failures[0]


def test_a_model_error_before_the_deadline_is_still_unavailable():
    with pytest.raises(Unavailable, match="could not answer: model .*boom"):
        _ladder(RuntimeError("boom"), deadline_s=5.0)
