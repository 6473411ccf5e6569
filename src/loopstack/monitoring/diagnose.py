"""The on-call playbook as a pure decision: given the gathered facts, walk the steps in order and stop
at the first explanation (no I/O; `monitoring.gather` collects the facts at the edge).

1. recent deploy or alias move?      (registry audit)
2. feature pipeline lag?             (online store freshness of the views the model reads)
3. null / out-of-range / unseen spikes?  (data checks of the window against the reference)
4. score-distribution shift?          (score PSI band, mean-score shift)
5. which segment?                     (a variant or categorical value whose mean score moved most)
Nothing found: genuine drift is the remaining suspect (check upstream product changes first; never
retrain on a broken pipeline, which steps 1-3 rule out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STEPS = ("deploy", "feature_lag", "data_quality", "score_shift", "segment")
TITLES = {"deploy": "recent deploy or alias move?", "feature_lag": "feature pipeline lag?",
          "data_quality": "null / out-of-range / unseen-category spikes?",
          "score_shift": "score-distribution shift?", "segment": "which segment?"}
DEPLOY_ACTIONS = ("transition", "alias", "rollback", "replaced")


@dataclass
class Facts:
    """What the edge gathered about one model's recent window(s)."""

    model: str
    version: int | None = None
    window: str = ""                                   # human-readable window, for the report
    deploys: list[dict] = field(default_factory=list)  # audit rows: action, version, alias, to_state, at, reason
    freshness: dict[str, float | None] = field(default_factory=dict)  # view -> lag seconds (None: no data)
    max_lag_s: float = 3600.0
    data_checks: list[dict] = field(default_factory=list)   # CheckResult.to_dict() of the window
    score_band: str | None = None                      # PSI band of the score distribution
    score_psi: float | None = None
    mean_shift: float | None = None
    mean_shift_alert: bool = False
    reference_mean: float | None = None
    segments: dict[str, tuple[int, float]] = field(default_factory=dict)  # segment -> (n, mean score)
    min_segment_shift: float = 0.1


@dataclass(frozen=True)
class Step:
    name: str
    found: bool
    detail: str

    @property
    def title(self) -> str:
        return TITLES[self.name]


@dataclass(frozen=True)
class Diagnosis:
    """The steps walked (in order, up to the one that explained it) and the explanation."""

    model: str
    steps: tuple[Step, ...]
    explanation: str | None
    note: str | None = None          # why "nothing explains it" is not evidence of drift (nothing checked)

    @property
    def stopped_at(self) -> str | None:
        return self.steps[-1].name if self.steps and self.steps[-1].found else None

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "stopped_at": self.stopped_at, "explanation": self.explanation, "note": self.note,
                "steps": [{"step": s.name, "question": s.title, "found": s.found, "detail": s.detail}
                          for s in self.steps]}


def _deploy(f: Facts) -> Step:
    moves = [d for d in f.deploys if d.get("action") in DEPLOY_ACTIONS]
    if not moves:
        return Step("deploy", False, "no promotion, alias move or rollback in the lookback")
    last = moves[-1]
    what = (f"alias @{last.get('alias')} moved to v{last.get('version')}" if last.get("action") == "alias"
            else f"v{last.get('version')} {last.get('action')} -> {last.get('to_state')}")
    return Step("deploy", True, f"{len(moves)} change(s), latest: {what} at {last.get('at')} "
                                f"({last.get('reason') or 'no reason given'}); compare with the previous "
                                "version or roll back (`loopstack models rollback`)")


def _lag(f: Facts) -> Step:
    if not f.freshness:
        return Step("feature_lag", False, "no online feature views to check")
    late = {v: s for v, s in f.freshness.items() if s is None or s > f.max_lag_s}
    if not late:
        worst = max(f.freshness.values(), default=0) or 0
        return Step("feature_lag", False, f"{len(f.freshness)} view(s) fresh (max lag {worst:.0f} s <= "
                                          f"{f.max_lag_s:.0f} s)")
    desc = ", ".join(f"{v}: " + ("no data" if s is None else f"{s / 60:.0f} min behind") for v, s in late.items())
    return Step("feature_lag", True, f"feature pipeline lagging ({desc}); serving reads stale features: fix the "
                                     "pipeline (`loopstack stream` / materialize), do not retrain")


def _data(f: Facts) -> Step:
    bad = [c for c in f.data_checks if c.get("status") == "alert"]
    if not f.data_checks:
        return Step("data_quality", False, "no feature samples checked (too few, or no reference profile)")
    if not bad:
        return Step("data_quality", False, f"{len(f.data_checks)} checks ok (null rates, ranges, categories)")
    desc = "; ".join(f"{c['column']}: {c['check']} {c.get('detail', '')}".strip() for c in bad[:5])
    return Step("data_quality", True, f"broken input data: {desc}. A pipeline or upstream schema problem, "
                                      "not drift: fix the source, never retrain on it")


def _score(f: Facts) -> Step:
    if f.score_band is None and f.mean_shift is None:
        return Step("score_shift", False, "no score reference to compare with")
    shifted = f.score_band == "act" or f.mean_shift_alert
    psi = "n/a" if f.score_psi is None else f"{f.score_psi:.3f}"
    shift = "n/a" if f.mean_shift is None else f"{f.mean_shift:+.3f}"
    detail = f"score PSI {psi} ({f.score_band}), mean score shift {shift}"
    if not shifted:
        return Step("score_shift", False, detail)
    seg = _worst_segment(f)
    where = f"; largest in segment {seg[0]} (mean {seg[2]:.3f}, n={seg[1]})" if seg else ""
    return Step("score_shift", True, f"the model's score distribution moved: {detail}{where}. Inputs look "
                                     "healthy, so suspect concept drift: check labels (recall) and retrain")


def _worst_segment(f: Facts) -> tuple[str, int, float] | None:
    if f.reference_mean is None or not f.segments:
        return None
    name, (n, mean) = max(f.segments.items(), key=lambda kv: abs(kv[1][1] - f.reference_mean))
    return (name, n, mean) if abs(mean - f.reference_mean) >= f.min_segment_shift else None


def _segment(f: Facts) -> Step:
    seg = _worst_segment(f)
    if seg is None:
        return Step("segment", False, "no segment's mean score moved by "
                                      f">= {f.min_segment_shift:g} from the reference")
    return Step("segment", True, f"segment {seg[0]} (n={seg[1]}) has mean score {seg[2]:.3f} vs "
                                 f"{f.reference_mean:.3f} in the reference: look at that variant/value first")


def diagnose(facts: Facts) -> Diagnosis:
    """Walk the playbook in order; stop at the first step that explains the change."""
    steps: list[Step] = []
    for check in (_deploy, _lag, _data, _score, _segment):
        step = check(facts)
        steps.append(step)
        if step.found:
            return Diagnosis(facts.model, tuple(steps), f"{step.title} yes: {step.detail}")
    return Diagnosis(facts.model, tuple(steps), None, _unchecked(facts))


def _unchecked(f: Facts) -> str | None:
    """Why the data and model steps saw nothing to check (None when they did check)."""
    if f.data_checks or f.score_band is not None or f.mean_shift is not None:
        return None
    if f.version is None:
        return (f"no monitoring windows for model {f.model!r}: nothing to diagnose; run `loopstack monitor run` "
                "after the server logged its predictions")
    return ("inputs and scores were not checked (no reference profile for the version, or fewer than "
            "monitoring.min_samples samples): this is not evidence of drift; register the version with a "
            "reference profile or wait for more traffic")


NO_EXPLANATION = ("nothing in the playbook explains it: check upstream product changes, then suspect genuine "
                  "drift (retrain through the gate)")
