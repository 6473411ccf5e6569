"""Data-layer and model-layer checks of a window profile against a reference profile (pure).

Data layer (per feature): `null_rate_change`, `out_of_range` (values outside the reference's
[min, max]), `unseen_categories`; `data_checks` runs all three over every column.
Model layer (on the profiles' ``scores``): `score_drift` (PSI/KS/JS of the score histogram),
`mean_score_shift` (z-test on the mean from mergeable moments), `share_above` and `high_score_share`
(the share of scores above 0.9). Calibration needs labels: see `monitoring.calibration`.

Each check returns a `CheckResult` whose ``status`` is ``ok``, ``alert`` or ``unknown`` (the profile
cannot answer, e.g. unseen categories when the reference vocabulary was truncated).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
from scipy import special

from loopstack.monitoring.columns import MonitoringError, column_names
from loopstack.monitoring.drift import DriftReport, Thresholds, column_drift
from loopstack.monitoring.profiles import Profile, as_profile
from loopstack.monitoring.summaries import CategoricalSummary, NumericSummary, Summary, _qkey


@dataclass(frozen=True)
class CheckResult:
    """One check on one column: the measured value, the reference value, the tolerance, the verdict."""

    check: str
    column: str
    status: str            # "ok" | "alert" | "unknown"
    value: float | None
    reference: float | None
    threshold: float | None
    detail: str = ""
    p_value: float | None = None

    @property
    def alert(self) -> bool:
        return self.status == "alert"

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "column": self.column, "status": self.status, "value": _f(self.value),
                "reference": _f(self.reference), "threshold": _f(self.threshold), "p_value": _f(self.p_value),
                "detail": self.detail}


def _share(name: str, value: Any) -> float:
    """A check's tolerance on a share: a number in [0, 1] (NaN would never alert, a negative one always)."""
    v = _number(name, value)
    if not 0 <= v <= 1:
        raise MonitoringError(f"{name} = {value!r} must be a share in [0, 1] (e.g. 0.01 = 1 point)")
    return v


def _number(name: str, value: Any, *, finite: bool = True) -> float:
    try:
        v = math.nan if isinstance(value, (str, bytes, bool)) else float(value)
    except (TypeError, ValueError):
        v = math.nan
    if math.isnan(v) or (finite and math.isinf(v)):
        raise MonitoringError(f"{name} = {value!r} must be a{' finite' if finite else ''} number")
    return v


def _rate(num: int, den: int) -> float:
    return num / den if den else math.nan


def null_rate_change(column: str, reference: Summary, current: Summary, *, max_increase: float = 0.01) -> CheckResult:
    """Alert when the null rate rose by more than ``max_increase`` (absolute, e.g. 0.01 = 1 point)."""
    max_increase = _share("max_increase", max_increase)
    ref, cur = _rate(reference.null_count, reference.count), _rate(current.null_count, current.count)
    if math.isnan(cur) or math.isnan(ref):
        return CheckResult("null_rate", column, "unknown", _nan_none(cur), _nan_none(ref), max_increase, "no rows")
    status = "alert" if cur - ref > max_increase else "ok"
    return CheckResult("null_rate", column, status, cur, ref, max_increase,
                       f"null rate {ref:.2%} -> {cur:.2%} (+{max(cur - ref, 0):.2%} allowed {max_increase:.2%})")


def out_of_range(column: str, reference: NumericSummary, current: NumericSummary, *,
                 max_share: float = 0.01) -> CheckResult:
    """Alert when more than ``max_share`` of the current values lie outside the reference [min, max]."""
    max_share = _share("max_share", max_share)
    if not len(reference.edges) or current.n == 0:
        return CheckResult("out_of_range", column, "unknown", None, None, max_share,
                           "no reference range" if not len(reference.edges) else "no current values")
    if not np.array_equal(reference.edges, current.edges):
        raise MonitoringError(f"column {column!r}: current profile was not built against this reference; use "
                              "reference.empty().update(batch)")
    outside = current.underflow + current.overflow
    share = outside / current.n
    lo, hi = float(reference.edges[0]), float(reference.edges[-1])
    return CheckResult("out_of_range", column, "alert" if share > max_share else "ok", share, 0.0, max_share,
                       f"{outside} of {current.n} values outside [{lo:.4g}, {hi:.4g}] ({current.underflow} below, "
                       f"{current.overflow} above)")


def unseen_categories(column: str, reference: CategoricalSummary, current: CategoricalSummary, *,
                      max_share: float = 0.001) -> CheckResult:
    """Alert when more than ``max_share`` of current values are categories the reference never had."""
    max_share = _share("max_share", max_share)
    if not reference.complete:
        return CheckResult("unseen_categories", column, "unknown", None, None, max_share,
                           "reference vocabulary was truncated (raise max_categories to track unseen values)")
    if current.n == 0:
        return CheckResult("unseen_categories", column, "unknown", None, 0.0, max_share, "no current values")
    share = current.unseen_count / current.n
    top = ", ".join(f"{k!r}={v}" for k, v in sorted(current.unseen.items(), key=lambda kv: -kv[1])[:5])
    return CheckResult("unseen_categories", column, "alert" if share > max_share else "ok", share, 0.0, max_share,
                       f"{current.unseen_count} unseen values" + (f": {top}" if top else ""))


def data_checks(reference: Profile | Mapping[str, Any], current: Profile | Mapping[str, Any], *,
                columns: Iterable[str] | None = None, max_null_increase: float = 0.01,
                max_out_of_range: float = 0.01, max_unseen: float = 0.001) -> list[CheckResult]:
    """Null-rate, range and unseen-category checks for every column (numeric: range; categorical: unseen)."""
    max_null_increase = _share("max_null_increase", max_null_increase)
    max_out_of_range, max_unseen = _share("max_out_of_range", max_out_of_range), _share("max_unseen", max_unseen)
    ref, cur = as_profile(reference), as_profile(current)
    out: list[CheckResult] = []
    for c in (list(ref.features) if columns is None else column_names(columns)):
        r, k = ref[c], cur[c]
        out.append(null_rate_change(c, r, k, max_increase=max_null_increase))
        if isinstance(r, NumericSummary) and isinstance(k, NumericSummary):
            out.append(out_of_range(c, r, k, max_share=max_out_of_range))
        elif isinstance(r, CategoricalSummary) and isinstance(k, CategoricalSummary):
            out.append(unseen_categories(c, r, k, max_share=max_unseen))
    return out


# -- model layer ----------------------------------------------------------------------------------
def _scores(p: Profile, which: str) -> NumericSummary:
    if p.scores is None:
        raise MonitoringError(f"the {which} profile has no scores: fit the reference with scores=holdout_scores "
                              "and update windows with scores=...")
    return p.scores


def score_drift(reference: Profile | Mapping[str, Any], current: Profile | Mapping[str, Any], *,
                methods: Iterable[str] = ("psi", "ks", "js"),
                thresholds: Thresholds | Mapping[str, Any] | None = None) -> DriftReport:
    """Drift of the score distribution (binned: KS is the approximation from the score histogram)."""
    ref, cur = as_profile(reference), as_profile(current)
    return column_drift("score", _scores(ref, "reference"), _scores(cur, "current"), methods=methods,
                        thresholds=thresholds)


def mean_score_shift(reference: Profile | Mapping[str, Any], current: Profile | Mapping[str, Any], *,
                     max_shift: float = 0.05, alpha: float = 0.01) -> CheckResult:
    """Alert when the mean score moved by more than ``max_shift`` (absolute) *and* significantly.

    The z-test uses each side's mean and variance from the mergeable moments (Welch, normal
    approximation: windows hold thousands of scores). A tiny but significant shift is not an alert.
    """
    max_shift = _number("max_shift", max_shift)
    alpha = _number("alpha", alpha)
    if max_shift < 0 or not 0 < alpha < 1:
        raise MonitoringError(f"mean_score_shift needs max_shift >= 0 and alpha in (0, 1), got max_shift="
                              f"{max_shift!r}, alpha={alpha!r}")
    r, c = _scores(as_profile(reference), "reference"), _scores(as_profile(current), "current")
    if r.n < 2 or c.n < 2:
        return CheckResult("mean_score_shift", "score", "unknown", _mean(c), _mean(r), max_shift, "too few scores")
    diff = c.mean - r.mean
    se = math.sqrt(r.variance / r.n + c.variance / c.n)
    p = float(2 * special.ndtr(-abs(diff) / se)) if se > 0 else (0.0 if diff else 1.0)
    status = "alert" if abs(diff) > max_shift and p < alpha else "ok"
    return CheckResult("mean_score_shift", "score", status, c.mean, r.mean, max_shift,
                       f"mean score {r.mean:.4f} -> {c.mean:.4f} ({diff:+.4f}, p={p:.3g})", p)


def share_above(summary: NumericSummary, threshold: float = 0.9) -> float:
    """Share of non-null values above ``threshold``: exact if it was tracked (``score_thresholds``),
    otherwise interpolated linearly inside the reference bin that contains it."""
    threshold = _number("threshold", threshold, finite=False)
    if summary.n == 0:
        return math.nan
    if threshold in summary.thresholds:
        return float(summary.above[summary.thresholds.index(threshold)]) / summary.n
    e, counts = summary.edges, summary.counts
    if not len(e):
        return math.nan
    if threshold < summary.min:
        return 1.0
    if threshold >= summary.max:
        return 0.0
    if threshold < e[0]:
        return math.nan                       # inside the underflow bin: its spread is unknown
    if threshold >= e[-1]:
        return float(counts[-1]) / summary.n if threshold == e[-1] else math.nan
    i = int(np.searchsorted(e, threshold, side="right"))     # threshold in [e[i-1], e[i])
    width = e[i] - e[i - 1]
    frac_above = (e[i] - threshold) / width if width > 0 else 0.0
    above = counts[i] * frac_above + counts[i + 1:].sum()
    return float(above) / summary.n


def high_score_share(reference: Profile | Mapping[str, Any], current: Profile | Mapping[str, Any], *,
                     threshold: float = 0.9, max_change: float = 0.05) -> CheckResult:
    """Alert when the share of scores above ``threshold`` changed by more than ``max_change`` (absolute)."""
    threshold, max_change = _number("threshold", threshold, finite=False), _share("max_change", max_change)
    r, c = _scores(as_profile(reference), "reference"), _scores(as_profile(current), "current")
    ref, cur = share_above(r, threshold), share_above(c, threshold)
    if math.isnan(ref) or math.isnan(cur):
        return CheckResult("high_score_share", "score", "unknown", _nan_none(cur), _nan_none(ref), max_change,
                           "too few scores or threshold outside the tracked range")
    status = "alert" if abs(cur - ref) > max_change else "ok"
    exact = threshold in c.thresholds and threshold in r.thresholds
    return CheckResult("high_score_share", "score", status, cur, ref, max_change,
                       f"share of scores > {_qkey(threshold)}: {ref:.2%} -> {cur:.2%}"
                       + ("" if exact else " (interpolated from bins)"))


def _mean(s: NumericSummary) -> float | None:
    return s.mean if s.n else None


def _nan_none(v: float) -> float | None:
    return None if math.isnan(v) else v


def _f(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)
