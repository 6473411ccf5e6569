"""`Profile`: mergeable per-column summaries of a reference or of a live window (pure numpy/pandas).

    reference = Profile(bins=10).fit(training_df, scores=holdout_scores)   # layout + counts
    window = reference.empty()                                            # same bins, zero counts
    window.update(batch_1).update(batch_2, scores=batch_scores)           # incremental
    day = Profile.merge(morning, afternoon)                               # exact: counts add
    Profile.from_dict(json.loads(text))                                   # also reads registry profiles

`to_dict()` is a superset of the registry's reference profile format (`registry.profile`): the same
keys with the same meaning, plus ``underflow``/``overflow``/``m2`` for numerics and
``complete``/``unseen``/``unseen_count`` for categoricals. So a profile fitted here can be stored with
a model version, and a profile stored by `registry.build_profile` can be read here.

Bins come from the reference: ``bins`` quantile edges per numeric column (duplicates merged), plus
an underflow and an overflow bin for live values outside the reference's [min, max]. Categoricals
keep the ``max_categories`` most frequent reference categories and an "other" bucket. Nothing in a
window profile needs the reference data again.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np

from loopstack.monitoring.columns import (MonitoringError, as_columns, column_names, dtype_name, is_numeric, scores_1d,
                                          to_float, value_counts)
from loopstack.monitoring.summaries import (CategoricalSummary, NumericSummary, Summary, _qkey,
                                            summary_from_dict)
from loopstack.registry.profile import PROFILE_FORMAT, QUANTILES

SCORE_THRESHOLDS = (0.5, 0.9)


class Profile:
    """Per-column summaries (and optionally the model's scores) with a layout fixed by the reference.

    Config (constructor): ``columns`` to keep (default: all), ``categorical`` names forced categorical,
    ``bins`` per numeric column, ``score_bins`` for scores, ``max_categories`` per categorical,
    ``max_unseen`` named unseen categories kept per window, ``score_thresholds`` whose exceedances
    are counted exactly (the share of scores above 0.9).
    """

    def __init__(self, *, columns: Iterable[str] | None = None, categorical: Iterable[str] = (), bins: int = 10,
                 score_bins: int = 20, max_categories: int = 50, max_unseen: int = 20,
                 score_thresholds: Iterable[float] = SCORE_THRESHOLDS) -> None:
        for name, value in (("bins", bins), ("score_bins", score_bins), ("max_categories", max_categories)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise MonitoringError(f"{name} must be a positive integer, got {value!r}")
        if isinstance(max_unseen, bool) or not isinstance(max_unseen, (int, np.integer)) or max_unseen < 0:
            raise MonitoringError(f"max_unseen must be a whole number >= 0, got {max_unseen!r}")
        self.columns = None if columns is None else column_names(columns)
        self.categorical = set(column_names(categorical))
        self.bins, self.score_bins = bins, score_bins
        self.max_categories, self.max_unseen = max_categories, int(max_unseen)
        self.score_thresholds = _thresholds(score_thresholds)
        self.features: dict[str, Summary] = {}
        self.scores: NumericSummary | None = None
        self.sorted_values: dict[str, np.ndarray] = {}
        self.n_rows = 0
        self.fitted = False

    # -- reference ----------------------------------------------------------------------------
    def fit(self, data: Any, scores: Any = None, *, keep_values: bool = False) -> Profile:
        """Derive the layout (quantile edges, vocabularies) from reference data and count it; returns self.

        ``keep_values=True`` keeps each numeric column's sorted finite values in ``sorted_values``
        (in memory only, never serialised) for an exact KS test later.
        """
        cols = self._select(as_columns(data))
        unknown = sorted(self.categorical - set(cols))
        if unknown:
            raise MonitoringError(f"categorical columns {unknown} are not among the profiled columns {list(cols)}; "
                                  "fix `categorical=` (a misspelt name would leave the column profiled as numeric)")
        self.features, self.sorted_values = {}, {}
        for name, col in cols.items():
            if name in self.categorical or not is_numeric(col):
                self.features[name] = self._fit_categorical(col)
            else:
                self.features[name], values = _fit_numeric(to_float(col), self.bins, (), dtype_name(col))
                if keep_values:
                    self.sorted_values[name] = values
        self.n_rows = _n_rows(cols)
        self.scores = None
        if scores is not None:
            s = scores_1d(scores)
            _check_length(s, self.n_rows, cols)
            self.scores = _fit_numeric(s, self.score_bins, self.score_thresholds, "float64")[0]
        self.fitted = True
        return self

    def _fit_categorical(self, col: Any) -> CategoricalSummary:
        keys, counts, nulls, rows = value_counts(col)
        order = np.lexsort((np.asarray(keys, dtype=object).astype(str), -counts))   # by count, then name
        top = order[: self.max_categories]
        s = CategoricalSummary(keys[top], complete=len(keys) <= self.max_categories, max_unseen=self.max_unseen,
                               dtype=dtype_name(col))
        s.counts = counts[top].astype("int64")
        s.other_count = int(counts.sum() - s.counts.sum())
        s.count, s.null_count, s.n_unique = int(rows), int(nulls), int(len(keys))
        return s

    def _select(self, cols: dict[str, Any]) -> dict[str, Any]:
        if self.columns is None:
            return cols
        missing = [c for c in self.columns if c not in cols]
        if missing:
            raise MonitoringError(f"columns {missing} are not in the data (it has {list(cols)}); fix `columns=`")
        return {c: cols[c] for c in self.columns}

    # -- windows ------------------------------------------------------------------------------
    def empty(self) -> Profile:
        """A profile with this one's layout and zero counts: the start of a window against it."""
        self._require_fitted("empty()")
        out = self._like()
        out.features = {name: s.empty() for name, s in self.features.items()}
        out.scores = None if self.scores is None else self.scores.empty()
        return out

    def update(self, batch: Any, scores: Any = None) -> Profile:
        """Count a batch into the existing layout (columns not in the layout are ignored); returns self."""
        self._require_fitted("update()")
        cols = as_columns(batch)
        missing = [c for c in self.features if c not in cols]
        if missing:
            raise MonitoringError(f"batch lacks profiled columns {missing}; pass every column the reference "
                                  f"was fitted on ({list(self.features)})")
        for name, summary in self.features.items():
            col = cols[name]
            if isinstance(summary, NumericSummary):
                summary.update(to_float(col))
            else:
                summary.update_counts(*value_counts(col))
        rows = _n_rows({c: cols[c] for c in self.features}) if self.features else 0
        if scores is not None:
            if self.scores is None:
                raise MonitoringError("scores given, but the reference was fitted without scores: fit it with "
                                      "scores=holdout_scores to monitor the score distribution")
            s = scores_1d(scores)
            if self.features:
                _check_length(s, rows, cols)
            else:
                rows = len(s)
            self.scores.update(s)
        self.n_rows += rows
        return self

    @staticmethod
    def merge(a: Profile, b: Profile) -> Profile:
        """A new profile of both (same layout: both built from one reference with `empty()`)."""
        if list(a.features) != list(b.features):
            raise MonitoringError(f"cannot merge profiles of different columns {list(a.features)} and "
                                  f"{list(b.features)}: build both windows from the same reference")
        if (a.scores is None) != (b.scores is None):
            raise MonitoringError("cannot merge a profile with scores and one without: build both windows from "
                                  "the same reference with `reference.empty()`")
        out = a._like()
        try:
            out.features = {name: a.features[name].merge(b.features[name]) for name in a.features}  # type: ignore
        except (MonitoringError, AttributeError, TypeError) as e:
            raise MonitoringError(f"cannot merge: {e}") from None
        out.scores = None if a.scores is None else a.scores.merge(b.scores)  # type: ignore[arg-type]
        out.n_rows = a.n_rows + b.n_rows
        return out

    # -- access -------------------------------------------------------------------------------
    def __getitem__(self, column: str) -> Summary:
        try:
            return self.features[column]
        except KeyError:
            raise MonitoringError(f"no column {column!r} in this profile; it has {list(self.features)}") from None

    def __contains__(self, column: object) -> bool:
        return column in self.features

    def __repr__(self) -> str:
        kinds = ", ".join(f"{n}:{s.kind[0]}" for n, s in self.features.items())
        return f"Profile(n_rows={self.n_rows}, columns=[{kinds}], scores={self.scores is not None})"

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (strict: no NaN/inf), a superset of the registry profile format."""
        return {"format": PROFILE_FORMAT, "n_rows": self.n_rows,
                "features": {name: s.to_dict() for name, s in self.features.items()},
                "scores": None if self.scores is None else self.scores.to_dict(),
                "config": {"bins": self.bins, "score_bins": self.score_bins, "max_categories": self.max_categories,
                           "max_unseen": self.max_unseen, "score_thresholds": list(self.score_thresholds),
                           "categorical": sorted(self.categorical)}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Profile:
        """Read `to_dict` output or a profile stored by `registry.build_profile` (`Registry.profile(ref)`)."""
        if not isinstance(d, Mapping) or "features" not in d:
            raise MonitoringError("not a profile: expected a dict with 'features' (from Profile.to_dict or "
                                  "registry.build_profile)")
        if int(d.get("format", PROFILE_FORMAT)) > PROFILE_FORMAT:
            raise MonitoringError(f"profile format {d['format']} is newer than this loopstack understands "
                                  f"({PROFILE_FORMAT}); upgrade loopstack")
        cfg = dict(d.get("config") or {})
        out = cls(**{k: cfg[k] for k in ("bins", "score_bins", "max_categories", "max_unseen", "score_thresholds",
                                          "categorical") if k in cfg})
        out.features = {str(name): summary_from_dict(f) for name, f in d["features"].items()}
        out.scores = None if d.get("scores") is None else NumericSummary.from_dict(d["scores"])
        out.n_rows = int(d.get("n_rows", 0))
        out.fitted = True
        return out

    def _like(self) -> Profile:
        out = Profile(columns=self.columns, categorical=self.categorical, bins=self.bins, score_bins=self.score_bins,
                      max_categories=self.max_categories, max_unseen=self.max_unseen,
                      score_thresholds=self.score_thresholds)
        out.fitted = True
        return out

    def _require_fitted(self, what: str) -> None:
        if not self.fitted:
            raise MonitoringError(f"{what} needs a layout: call fit(reference) first (or Profile.from_dict)")


def as_profile(p: Profile | Mapping[str, Any]) -> Profile:
    """A `Profile` from itself or from its dict form (incl. registry reference profiles)."""
    if isinstance(p, Profile):
        return p
    return Profile.from_dict(p)


def _fit_numeric(x: np.ndarray, bins: int, thresholds: tuple[float, ...],
                 dtype: str) -> tuple[NumericSummary, np.ndarray]:
    valid = np.sort(x[np.isfinite(x)])     # one sort serves quantiles, edges, counts (and exact KS)
    if not len(valid):
        return NumericSummary([], thresholds=thresholds, dtype=dtype).update(x), valid
    qs = np.concatenate([np.linspace(0.0, 1.0, bins + 1), QUANTILES])
    values = quantiles_sorted(valid, qs)
    edges = np.unique(values[: bins + 1])          # same rule as registry.profile.numeric_profile
    s = NumericSummary(edges, thresholds=thresholds, dtype=dtype).update(valid, is_sorted=True)
    s.count += len(x) - len(valid)
    s.null_count += len(x) - len(valid)
    s.quantiles = {_qkey(q): float(v) for q, v in zip(QUANTILES, values[bins + 1:])}
    return s, valid


def quantiles_sorted(v: np.ndarray, qs: np.ndarray) -> np.ndarray:
    """`np.quantile(v, qs)` (method "linear") of an ascending array, without re-partitioning it."""
    pos = np.asarray(qs, dtype="float64") * (len(v) - 1)
    lo = np.floor(pos).astype("int64")
    hi = np.minimum(lo + 1, len(v) - 1)
    t = pos - lo
    a, b = v[lo], v[hi]
    return np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t)   # numpy's _lerp, bit for bit


def _thresholds(values: Iterable[float]) -> tuple[float, ...]:
    """Score thresholds whose exceedances are counted: finite numbers (a NaN one would count nothing)."""
    try:
        out = (math.nan,) if isinstance(values, (str, bytes)) else tuple(float(t) for t in values)
    except (TypeError, ValueError):
        out = (math.nan,)
    if not all(map(math.isfinite, out)):
        raise MonitoringError(f"score_thresholds must be finite numbers like (0.5, 0.9), got {values!r}")
    return out


def _n_rows(cols: Mapping[str, Any]) -> int:
    lengths = {len(c) for c in cols.values()}
    if len(lengths) > 1:
        raise MonitoringError(f"columns have different lengths {sorted(lengths)}: pass one aligned batch")
    return lengths.pop() if lengths else 0


def _check_length(scores: np.ndarray, rows: int, cols: Mapping[str, Any]) -> None:
    if cols and len(scores) != rows:
        raise MonitoringError(f"{len(scores)} scores for {rows} rows: pass one score per row")
