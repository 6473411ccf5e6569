"""Guardrail metrics: may the treatment ship without hurting what must not get worse? (pure)

A guardrail names a metric, which direction is good, and the largest degradation tolerated
(absolute, or relative to control). From a result's confidence interval of the difference (any
object with ``difference``/``ci`` and ``relative_difference``/``relative_ci``: a fixed-horizon
`TestResult` or an always-valid `SequentialResult`), the *harm* interval is the CI turned so that
positive means worse. Then:

- ``pass``          the whole harm interval is <= tolerance (non-inferiority shown);
- ``fail``          the whole harm interval is > tolerance (significantly worse than tolerated);
- ``inconclusive``  the interval straddles the tolerance: keep collecting data.

A *blocking* guardrail's fail stops the rollout even if the goal metric improved; an inconclusive
one holds it. *Informational* ones are reported but never decide. With ``tolerance=0`` a guardrail
can only pass when the treatment is significantly better, so give blocking guardrails a margin.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from loopstack.experiments.statistics import ExperimentError, _check_finite

STATUSES = ("pass", "inconclusive", "fail")


@dataclass(frozen=True)
class Guardrail:
    """``metric`` must not degrade by more than ``tolerance`` (relative to control if ``relative``)."""

    metric: str
    higher_is_better: bool = True
    tolerance: float = 0.0
    relative: bool = True
    blocking: bool = True

    def __post_init__(self) -> None:
        if _check_finite(self.tolerance, f"guardrail {self.metric!r}: tolerance") < 0:
            raise ExperimentError(f"guardrail {self.metric!r}: tolerance must be a finite number >= 0, "
                                  f"got {self.tolerance!r}")

    def evaluate(self, result: Any) -> GuardrailOutcome:
        """Decide from a result's (relative) confidence interval."""
        est = result.relative_difference if self.relative else result.difference
        lo, hi = result.relative_ci if self.relative else result.ci
        if any(v is None or math.isnan(v) for v in (est, lo, hi)):
            return GuardrailOutcome(self, "inconclusive", math.nan, (math.nan, math.nan),
                                    "no estimate (empty arm, or a zero control mean for a relative tolerance)")
        harm, harm_ci = (-est, (-hi, -lo)) if self.higher_is_better else (est, (lo, hi))
        if harm_ci[0] > self.tolerance:
            status = "fail"
        elif harm_ci[1] <= self.tolerance:
            status = "pass"
        else:
            status = "inconclusive"
        unit = "%" if self.relative else ""
        scale = 100 if self.relative else 1

        def fmt(v: float) -> str:
            return f"{v * scale:+.3g}{unit}"
        detail = (f"harm {fmt(harm)} (CI {fmt(harm_ci[0])} .. {fmt(harm_ci[1])}), tolerated "
                  f"{fmt(self.tolerance)}")
        return GuardrailOutcome(self, status, harm, harm_ci, detail)


@dataclass(frozen=True)
class GuardrailOutcome:
    guardrail: Guardrail
    status: str
    harm: float
    harm_ci: tuple[float, float]
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        def f(v: float) -> float | None:
            return None if v is None or not math.isfinite(v) else float(v)
        g = self.guardrail
        return {"metric": g.metric, "blocking": g.blocking, "status": self.status, "harm": f(self.harm),
                "harm_ci": [f(self.harm_ci[0]), f(self.harm_ci[1])], "tolerance": g.tolerance,
                "relative": g.relative, "higher_is_better": g.higher_is_better, "detail": self.detail}


@dataclass(frozen=True)
class GuardrailReport:
    """All outcomes and the decision: ``fail`` if a blocking guardrail failed, ``inconclusive`` if one
    is still open, else ``pass``."""

    outcomes: tuple[GuardrailOutcome, ...]

    @property
    def decision(self) -> str:
        blocking = [o.status for o in self.outcomes if o.guardrail.blocking]
        return "fail" if "fail" in blocking else "inconclusive" if "inconclusive" in blocking else "pass"

    @property
    def failed(self) -> list[str]:
        return [o.guardrail.metric for o in self.outcomes if o.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        return {"decision": self.decision, "outcomes": [o.to_dict() for o in self.outcomes]}


def evaluate_guardrails(guardrails: Iterable[Guardrail], results: Mapping[str, Any]) -> GuardrailReport:
    """Evaluate each guardrail on ``results[guardrail.metric]``; a blocking one without a result is an error."""
    outcomes = []
    for g in guardrails:
        if g.metric not in results:
            if g.blocking:
                raise ExperimentError(f"no result for blocking guardrail {g.metric!r}; results cover "
                                      f"{sorted(results)}: compute it or make the guardrail informational")
            continue
        outcomes.append(g.evaluate(results[g.metric]))
    return GuardrailReport(tuple(outcomes))
