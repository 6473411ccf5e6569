"""Per-column drift between a reference and a current window: statistics, bands, reports, detector.

    detector = DataDriftDetector(methods=("psi", "ks", "chi2", "js")).fit(reference_df)
    report = detector.score(current_df)            # raw current data: exact KS
    report = score_profile(reference_profile, window_profile)   # profiles only: no raw data at all
    report.drifted_columns, report["url_count"].band, report.to_frame()

Methods (see `monitoring.stats` for the formulas): numeric columns take ``psi``, ``js``, ``ks``
(exact from raw values when both samples are at hand, otherwise the binned approximation, reported
as ``approximate=True``) and ``ks_binned``; categorical columns take ``psi``, ``js`` and ``chi2``.
A method that does not apply to a column's kind is skipped for that column.

Bands: ``stable`` / ``watch`` / ``act`` (``no_data`` when a side has no values). PSI and JS have two
thresholds (PSI < 0.1 stable, 0.1-0.2 watch, > 0.2 act); KS and chi-squared are tests, ``act`` when
p < alpha. A column is *drifted* when any method says ``act``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping

import numpy as np

from loopstack.monitoring.columns import MonitoringError, as_columns, column_names, to_float
from loopstack.monitoring.profiles import Profile, as_profile
from loopstack.monitoring.stats import chi2_test, js_distance, ks_2samp, ks_binned, psi
from loopstack.monitoring.summaries import CategoricalSummary, NumericSummary, Summary

BANDS = ("no_data", "stable", "watch", "act")
NUMERIC_METHODS = ("psi", "js", "ks", "ks_binned")
CATEGORICAL_METHODS = ("psi", "js", "chi2")
DEFAULT_METHODS = ("psi", "ks", "chi2", "js")


@dataclass(frozen=True)
class Thresholds:
    """Band thresholds. ``psi``/``js``: (watch, act) on the statistic; ``ks_alpha``/``chi2_alpha``: p-value.

    JS distance (base 2) relates to PSI for small shifts as JS ~ sqrt(PSI / (8 ln 2)), so the JS
    defaults (0.1, 0.2) sit near PSI 0.055 and 0.22.
    """

    psi: tuple[float, float] = (0.1, 0.2)
    js: tuple[float, float] = (0.1, 0.2)
    ks_alpha: float = 0.05
    chi2_alpha: float = 0.05

    def __post_init__(self) -> None:
        for name in ("psi", "js"):
            raw = getattr(self, name)
            try:
                pair = () if isinstance(raw, (str, bytes)) else tuple(float(v) for v in raw)
            except (TypeError, ValueError):
                pair = ()
            if len(pair) != 2 or not all(map(math.isfinite, pair)) or not 0 <= pair[0] <= pair[1]:
                raise MonitoringError(f"thresholds.{name} must be (watch, act): two finite numbers with "
                                      f"0 <= watch <= act, e.g. (0.1, 0.2); got {raw!r}")
            object.__setattr__(self, name, pair)
        for name in ("ks_alpha", "chi2_alpha"):
            raw = getattr(self, name)
            try:
                alpha = math.nan if isinstance(raw, (str, bytes, bool)) else float(raw)
            except (TypeError, ValueError):
                alpha = math.nan
            if not 0 < alpha < 1:
                raise MonitoringError(f"thresholds.{name} must be a p-value cutoff in (0, 1), e.g. 0.05; got {raw!r}")
            object.__setattr__(self, name, alpha)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | Thresholds | None) -> Thresholds:
        """From a config mapping: ``{"psi": {"watch": 0.1, "act": 0.2}, "ks_alpha": 0.01}`` or
        ``{"psi": [0.1, 0.2]}``; missing keys keep their defaults."""
        if config is None:
            return cls()
        if isinstance(config, Thresholds):
            return config
        if not isinstance(config, Mapping):
            raise MonitoringError(f"drift thresholds must be a mapping like {{'psi': {{'watch': 0.1, 'act': 0.2}}, "
                                  f"'ks_alpha': 0.05}}, got {config!r}")
        unknown = set(config) - {"psi", "js", "ks_alpha", "chi2_alpha"}
        if unknown:
            raise MonitoringError(f"unknown drift threshold keys {sorted(unknown)}; use psi, js, ks_alpha, "
                                  "chi2_alpha")
        kwargs: dict[str, Any] = {}
        for key, value in config.items():
            if key in ("psi", "js") and isinstance(value, Mapping):
                if set(value) != {"watch", "act"}:
                    raise MonitoringError(f"thresholds.{key} needs exactly the keys 'watch' and 'act', got "
                                          f"{sorted(map(str, value))}")
                value = (value["watch"], value["act"])
            kwargs[key] = value
        return cls(**kwargs)

    def band(self, method: str, statistic: float, p_value: float | None) -> str:
        """The band of one method's result."""
        if statistic is None or math.isnan(statistic):
            return "no_data"
        if method in ("psi", "js"):
            watch, act = getattr(self, method)
            return "act" if statistic > act else "watch" if statistic >= watch else "stable"
        alpha = self.chi2_alpha if method == "chi2" else self.ks_alpha
        if p_value is None or math.isnan(p_value):
            return "no_data"
        return "act" if p_value < alpha else "stable"


@dataclass(frozen=True)
class DriftResult:
    """One method on one column: statistic, p-value where the method is a test, band."""

    method: str
    statistic: float
    p_value: float | None
    band: str
    approximate: bool = False

    @property
    def drifted(self) -> bool:
        return self.band == "act"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "statistic": _json_float(self.statistic),
                "p_value": _json_float(self.p_value), "band": self.band, "approximate": self.approximate,
                "drifted": self.drifted}


@dataclass(frozen=True)
class DriftReport:
    """Drift of one column: every method's result, the worst band, and the flag."""

    column: str
    kind: str
    results: dict[str, DriftResult]
    n_reference: int
    n_current: int

    @property
    def band(self) -> str:
        return max((r.band for r in self.results.values()), key=BANDS.index, default="no_data")

    @property
    def drifted(self) -> bool:
        return any(r.drifted for r in self.results.values())

    def __getitem__(self, method: str) -> DriftResult:
        try:
            return self.results[method]
        except KeyError:
            raise MonitoringError(f"no {method!r} result for column {self.column!r}; it has "
                                  f"{list(self.results)}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "kind": self.kind, "n_reference": self.n_reference,
                "n_current": self.n_current, "band": self.band, "drifted": self.drifted,
                "results": {m: r.to_dict() for m, r in self.results.items()}}


@dataclass(frozen=True)
class DatasetDrift:
    """Drift reports of every scored column."""

    columns: dict[str, DriftReport] = field(default_factory=dict)

    def __getitem__(self, column: str) -> DriftReport:
        try:
            return self.columns[column]
        except KeyError:
            raise MonitoringError(f"column {column!r} was not scored; scored: {list(self.columns)}") from None

    def __iter__(self) -> Iterator[DriftReport]:
        return iter(self.columns.values())

    def __len__(self) -> int:
        return len(self.columns)

    @property
    def drifted_columns(self) -> list[str]:
        return [name for name, r in self.columns.items() if r.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted_columns) / len(self.columns) if self.columns else 0.0

    def flags(self, method: str | None = None) -> dict[str, bool]:
        """Column -> drifted (by any method, or by ``method`` only)."""
        if method is None:
            return {name: r.drifted for name, r in self.columns.items()}
        return {name: r.results[method].drifted for name, r in self.columns.items() if method in r.results}

    def to_dict(self) -> dict[str, Any]:
        return {"drifted_columns": self.drifted_columns, "share_drifted": self.share_drifted,
                "columns": {name: r.to_dict() for name, r in self.columns.items()}}

    def to_frame(self):  # -> pandas.DataFrame
        """One row per (column, method): statistic, p_value, band, drifted, approximate."""
        import pandas as pd
        rows = [{"column": name, "kind": r.kind, "method": m, "statistic": res.statistic, "p_value": res.p_value,
                 "band": res.band, "drifted": res.drifted, "approximate": res.approximate,
                 "n_reference": r.n_reference, "n_current": r.n_current}
                for name, r in self.columns.items() for m, res in r.results.items()]
        return pd.DataFrame(rows, columns=["column", "kind", "method", "statistic", "p_value", "band", "drifted",
                                           "approximate", "n_reference", "n_current"])


def binned(reference: Summary, current: Summary) -> tuple[np.ndarray, np.ndarray]:
    """The two count vectors over the same bins: numeric [under, bins.., over], categorical [vocab.., other]."""
    if isinstance(reference, NumericSummary) and isinstance(current, NumericSummary):
        if not np.array_equal(reference.edges, current.edges):
            raise MonitoringError("current profile has other bin edges than the reference: build the window "
                                  "with `reference.empty().update(batch)`")
        return reference.counts.astype("float64"), current.counts.astype("float64")
    if isinstance(reference, CategoricalSummary) and isinstance(current, CategoricalSummary):
        pos = {c: i for i, c in enumerate(current.categories)}
        cur = np.array([current.counts[pos[c]] if c in pos else 0 for c in reference.categories], dtype="float64")
        ref = np.append(reference.counts.astype("float64"), reference.other_count)
        return ref, np.append(cur, current.n - cur.sum())
    raise MonitoringError(f"reference is {reference.kind} but current is {current.kind}: profile both with the "
                          "same column kinds")


def column_drift(column: str, reference: Summary, current: Summary, *, methods: Iterable[str] = DEFAULT_METHODS,
                 thresholds: Thresholds | Mapping[str, Any] | None = None,
                 reference_sorted: np.ndarray | None = None, current_values: np.ndarray | None = None) -> DriftReport:
    """Drift of one column from two summaries; exact KS if the raw values of both sides are given."""
    th = Thresholds.from_config(thresholds)
    ref_counts, cur_counts = binned(reference, current)
    applicable = NUMERIC_METHODS if reference.kind == "numeric" else CATEGORICAL_METHODS
    results: dict[str, DriftResult] = {}
    for method in _check_methods(methods):
        if method not in applicable:
            continue
        approximate = False
        if method == "psi":
            stat, p = psi(ref_counts, cur_counts), None
        elif method == "js":
            stat, p = js_distance(ref_counts, cur_counts), None
        elif method == "chi2":
            stat, p, _ = chi2_test(ref_counts, cur_counts)
        elif method == "ks" and reference_sorted is not None and current_values is not None:
            stat, p, _ = ks_2samp(reference_sorted, current_values, reference_sorted=True)
        else:   # "ks_binned", or "ks" with profiles only
            stat, p, _ = ks_binned(ref_counts, cur_counts)
            approximate = True
        results[method] = DriftResult(method, stat, p, th.band(method, stat, p), approximate)
    return DriftReport(column, reference.kind, results, reference.n, current.n)


def score_profile(reference: Profile | Mapping[str, Any], current: Profile | Mapping[str, Any], *,
                  columns: Iterable[str] | None = None, methods: Iterable[str] = DEFAULT_METHODS,
                  thresholds: Thresholds | Mapping[str, Any] | None = None) -> DatasetDrift:
    """Drift of a window profile against a reference profile, with no raw data (KS is the binned one)."""
    ref, cur = as_profile(reference), as_profile(current)
    names = list(ref.features) if columns is None else column_names(columns)
    th, ms = Thresholds.from_config(thresholds), _check_methods(methods)
    missing = [c for c in names if c not in ref.features or c not in cur.features]
    if missing:
        raise MonitoringError(f"columns {missing} are not in both profiles: reference has {list(ref.features)}, "
                              f"current has {list(cur.features)}")
    return DatasetDrift({c: column_drift(c, ref.features[c], cur.features[c], methods=ms, thresholds=th)
                         for c in names})


class DataDriftDetector:
    """Estimator: ``DataDriftDetector(columns, methods, thresholds).fit(reference).score(current)``.

    ``fit`` takes reference data (DataFrame/Arrow/mapping) or a stored profile (`Profile`, its dict, or
    a registry profile). With data and ``exact_ks`` the sorted numeric reference values are kept in
    memory so ``score(current_data)`` runs the exact KS; with a profile, KS is the binned approximation.
    ``score`` takes current data or a window profile built from ``detector.reference_.empty()``.
    """

    def __init__(self, columns: Iterable[str] | None = None, methods: Iterable[str] = DEFAULT_METHODS,
                 thresholds: Thresholds | Mapping[str, Any] | None = None, *, categorical: Iterable[str] = (),
                 bins: int = 10, max_categories: int = 50, exact_ks: bool = True) -> None:
        self.columns = None if columns is None else column_names(columns)
        self.methods = _check_methods(methods)
        self.thresholds = Thresholds.from_config(thresholds)
        self.categorical = tuple(column_names(categorical))
        self.bins, self.max_categories, self.exact_ks = bins, max_categories, exact_ks
        self.reference_: Profile | None = None
        self._sorted: dict[str, np.ndarray] = {}

    def fit(self, reference: Any, scores: Any = None) -> DataDriftDetector:
        """Profile the reference (or adopt a stored profile); returns self."""
        self._sorted = {}
        if isinstance(reference, Profile) or (isinstance(reference, Mapping) and "features" in reference):
            self.reference_ = as_profile(reference)
            return self
        prof = Profile(columns=self.columns, categorical=self.categorical, bins=self.bins,
                       max_categories=self.max_categories)
        keep = self.exact_ks and "ks" in self.methods
        self.reference_ = prof.fit(reference, scores, keep_values=keep)
        self._sorted = prof.sorted_values if keep else {}
        prof.sorted_values = {}
        return self

    def score(self, current: Any, scores: Any = None) -> DatasetDrift:
        """Drift of current data (or a window profile) against the fitted reference."""
        if self.reference_ is None:
            raise MonitoringError("DataDriftDetector is not fitted: call fit(reference) first")
        names = list(self.reference_.features) if self.columns is None else self.columns
        if isinstance(current, Profile) or (isinstance(current, Mapping) and "features" in current):
            return score_profile(self.reference_, current, columns=names, methods=self.methods,
                                 thresholds=self.thresholds)
        window = self.reference_.empty().update(current, scores)
        raw = as_columns(current) if self._sorted else {}
        out = {}
        for c in names:
            values = to_float(raw[c]) if c in self._sorted else None
            out[c] = column_drift(c, self.reference_.features[c], window.features[c], methods=self.methods,
                                  thresholds=self.thresholds, reference_sorted=self._sorted.get(c),
                                  current_values=values)
        return DatasetDrift(out)

    def with_thresholds(self, thresholds: Thresholds | Mapping[str, Any]) -> DataDriftDetector:
        """A copy with other thresholds (the fitted reference is shared)."""
        other = DataDriftDetector(self.columns, self.methods, thresholds, categorical=self.categorical,
                                  bins=self.bins, max_categories=self.max_categories, exact_ks=self.exact_ks)
        other.reference_, other._sorted = self.reference_, self._sorted
        return other


def _check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    ms = (methods,) if isinstance(methods, str) else tuple(methods)
    unknown = [m for m in ms if m not in set(NUMERIC_METHODS) | set(CATEGORICAL_METHODS)]
    if unknown or not ms:
        raise MonitoringError(f"unknown drift methods {unknown or ms!r}; choose from psi, js, ks, ks_binned, chi2")
    return ms


def _json_float(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


__all__ = ["BANDS", "DEFAULT_METHODS", "DataDriftDetector", "DatasetDrift", "DriftReport", "DriftResult",
           "Thresholds", "binned", "column_drift", "score_profile"]
