"""What the loop reads and how it tells time: the evidence-provider interface and injectable clocks.

`EvidenceProvider` is the seam between the loop and monitoring. The monitoring service implements
it from the prediction log and the labels; tests and the demo pass fakes or synthetic data.

- ``shadow(model, version)`` / ``canary(model, version)``: live numbers of one version since it
  entered the rung: ``{"requests": int, "error_rate": float, "p99_ms": float, "score_psi": float}``
  (``score_psi``: its score distribution against the version's offline reference profile, e.g. with
  ``monitoring.score_profile``). ``canary`` defaults to ``shadow``.
- ``experiment(model, control, treatment)``: cumulative per-arm numbers since the experiment began:
  ``{"control": {"users": n, "metrics": {"reports": {"successes": k}, "latency_ms": {"mean": m,
  "var": v}}}, "treatment": {...}}`` with the goal metric and every guardrail metric.
"""
from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping, Protocol, runtime_checkable


@runtime_checkable
class EvidenceSource(Protocol):
    def shadow(self, model: str, version: int) -> Mapping[str, Any]: ...

    def experiment(self, model: str, control: int | None, treatment: int) -> Mapping[str, Any]: ...


class EvidenceProvider:
    """Base class: override `shadow` and `experiment` (and `canary` if its numbers differ)."""

    def shadow(self, model: str, version: int) -> Mapping[str, Any]:
        raise NotImplementedError("an evidence provider must implement shadow(model, version)")

    def canary(self, model: str, version: int) -> Mapping[str, Any]:
        return self.shadow(model, version)

    def experiment(self, model: str, control: int | None, treatment: int) -> Mapping[str, Any]:
        raise NotImplementedError("an evidence provider must implement experiment(model, control, treatment)")


def live_evidence(provider: Any, step: str, model: str, version: int) -> Mapping[str, Any]:
    """`provider.canary` when it has one, else `provider.shadow` (duck-typed providers work too)."""
    fn = getattr(provider, step, None) if step == "canary" else None
    return dict((fn or provider.shadow)(model, version))


class SystemClock:
    """Wall-clock time and real sleeping."""

    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def sleep(self, seconds: float) -> None:
        time.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to: `sleep` advances it instantly (tests, simulations)."""

    def __init__(self, start: datetime | None = None) -> None:
        self.t = start or datetime(2026, 1, 1, tzinfo=timezone.utc)

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
