"""Mergeable per-column summaries: numeric (moments + reference-binned histogram) and categorical.

A summary has a *layout* fixed by the reference (bin edges, category vocabulary) and *counts* that
grow with `update(values)` and add up with `merge`. Two summaries with the same layout merge exactly
(counts add; mean/variance combine with Chan et al.'s parallel formula), so a window profile built
batch by batch equals the one built from the concatenated batches.

Numeric bins follow `registry.profile`: edges e0..eB are quantiles of the reference (e0 = min,
eB = max); bin i holds e[i-1] <= x < e[i], the last real bin is closed (x <= eB). Two extra bins
count values outside the reference range: ``counts = [underflow, bin1..binB, overflow]``. The
registry format folds the outer ones into the first/last bin ("open-ended outer bins"); `to_dict`
writes that folded ``counts`` plus ``underflow``/``overflow``, so both readers understand it.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from loopstack.monitoring.columns import MonitoringError


def _qkey(q: float) -> str:
    return f"{q:g}"


class NumericSummary:
    """count/nulls, min/max, mean and M2 (Welford/Chan), histogram on fixed edges, counts above thresholds."""

    kind = "numeric"

    def __init__(self, edges: Iterable[float], *, thresholds: Iterable[float] = (), dtype: str = "float64") -> None:
        self.edges = np.asarray(list(edges), dtype="float64")
        if len(self.edges) == 1:
            self.edges = np.array([self.edges[0], self.edges[0]])
        if len(self.edges) and np.any(np.diff(self.edges) < 0):
            raise MonitoringError(f"bin edges must be sorted ascending, got {self.edges.tolist()}")
        self.thresholds = tuple(float(t) for t in thresholds)
        self.dtype = dtype
        self.counts = np.zeros(len(self.edges) + 1 if len(self.edges) else 0, dtype="int64")
        self.above = np.zeros(len(self.thresholds), dtype="int64")
        self.count = 0
        self.null_count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.quantiles: dict[str, float] | None = None   # reference only (not mergeable)
        if len(self.edges):
            search = self.edges.copy()
            search[-1] = np.nextafter(search[-1], np.inf)   # the last real bin includes eB itself
            self._search = search

    # -- layout -------------------------------------------------------------------------------
    @property
    def n(self) -> int:
        """Non-null (finite) values counted."""
        return self.count - self.null_count

    @property
    def n_bins(self) -> int:
        return max(len(self.edges) - 1, 0)

    def empty(self) -> NumericSummary:
        """A zero-count summary with this layout (a window against this reference)."""
        return NumericSummary(self.edges, thresholds=self.thresholds, dtype=self.dtype)

    def same_layout(self, other: NumericSummary) -> bool:
        return (isinstance(other, NumericSummary) and np.array_equal(self.edges, other.edges)
                and self.thresholds == other.thresholds)

    # -- counting -----------------------------------------------------------------------------
    def update(self, x: np.ndarray, *, is_sorted: bool = False) -> NumericSummary:
        """Count a float64 array (NaN/inf are nulls) into this summary; returns self.

        ``is_sorted=True`` promises `x` is finite and ascending (the reference fit sorts anyway):
        the histogram then costs a binary search per edge instead of a pass per value.
        """
        if is_sorted:
            v, n_ok = x, len(x)
        else:
            ok = np.isfinite(x)
            n_ok = int(np.count_nonzero(ok))
            v = x if n_ok == len(x) else x[ok]
        n_before = self.n
        self.count += int(len(x))
        self.null_count += int(len(x)) - n_ok
        if n_ok == 0:
            return self
        mean_b = float(v.mean())
        d = v - mean_b
        self._merge_moments(n_before, n_ok, mean_b, float(np.dot(d, d)), float(v.min()), float(v.max()))
        if len(self.edges):
            self.counts += _histogram(v, self._search, is_sorted)
        for i, t in enumerate(self.thresholds):
            self.above[i] += int(np.count_nonzero(v > t))
        return self

    def merge(self, other: NumericSummary) -> NumericSummary:
        """A new summary of both (same layout required): counts add, moments combine exactly."""
        if not self.same_layout(other):
            raise MonitoringError("cannot merge numeric summaries with different bin edges or thresholds: build "
                                  "every window from the same reference with `reference.empty()`")
        out = self.empty()
        out.count, out.null_count = self.count, self.null_count
        out.mean, out.m2, out.min, out.max = self.mean, self.m2, self.min, self.max
        out.counts, out.above = self.counts.copy(), self.above.copy()
        out.count += other.count
        out.null_count += other.null_count
        out._merge_moments(self.n, other.n, other.mean, other.m2, other.min, other.max)
        out.counts += other.counts
        out.above += other.above
        return out

    def _merge_moments(self, n_a: int, n_b: int, mean_b: float, m2_b: float, lo: float, hi: float) -> None:
        # Chan, Golub & LeVeque: exact combination of (n, mean, M2) of two disjoint parts.
        if n_b == 0:
            return
        if n_a == 0:
            self.mean, self.m2, self.min, self.max = mean_b, m2_b, lo, hi
            return
        n = n_a + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta * delta * n_a * n_b / n
        self.min, self.max = min(self.min, lo), max(self.max, hi)

    # -- derived ------------------------------------------------------------------------------
    @property
    def variance(self) -> float:
        """Sample variance (ddof=1) of the non-null values; NaN with fewer than two."""
        return self.m2 / (self.n - 1) if self.n > 1 else math.nan

    @property
    def std(self) -> float:
        """Population standard deviation (ddof=0), as stored by the registry profile."""
        return math.sqrt(self.m2 / self.n) if self.n else math.nan

    @property
    def underflow(self) -> int:
        return int(self.counts[0]) if len(self.counts) else 0

    @property
    def overflow(self) -> int:
        return int(self.counts[-1]) if len(self.counts) else 0

    def folded_counts(self) -> np.ndarray:
        """Registry-style counts: B bins whose outer ones also hold out-of-range values."""
        if not len(self.counts):
            return self.counts.copy()
        out = self.counts[1:-1].copy()
        out[0] += self.counts[0]
        out[-1] += self.counts[-1]
        return out

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        n = self.n
        d: dict[str, Any] = {
            "kind": "numeric", "dtype": self.dtype, "count": self.count, "null_count": self.null_count,
            "null_rate": self.null_count / self.count if self.count else 0.0,
            "min": self.min if n else None, "max": self.max if n else None,
            "mean": self.mean if n else None, "std": self.std if n else None,
            "quantiles": dict(self.quantiles or {}),
            "bin_edges": self.edges.tolist(), "counts": self.folded_counts().tolist(),
            "underflow": self.underflow, "overflow": self.overflow, "m2": self.m2,
        }
        if self.thresholds:
            d["above"] = {_qkey(t): int(c) for t, c in zip(self.thresholds, self.above)}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> NumericSummary:
        """Read `to_dict` output or a `registry.profile` numeric profile (no underflow/overflow/m2 keys)."""
        above = {float(k): int(v) for k, v in (d.get("above") or {}).items()}
        s = cls(d.get("bin_edges") or [], thresholds=sorted(above), dtype=str(d.get("dtype", "float64")))
        s.count, s.null_count = int(d["count"]), int(d["null_count"])
        n = s.n
        if n:
            s.mean, s.min, s.max = float(d["mean"]), float(d["min"]), float(d["max"])
            s.m2 = float(d["m2"]) if d.get("m2") is not None else float(d["std"]) ** 2 * n
        folded = np.asarray(d.get("counts") or [], dtype="int64")
        if len(s.edges):
            if len(folded) != s.n_bins:
                raise MonitoringError(f"profile has {len(folded)} counts for {s.n_bins} bins: it is corrupt, "
                                      "rebuild it from the reference data")
            under, over = int(d.get("underflow", 0)), int(d.get("overflow", 0))
            s.counts = np.concatenate([[under], folded, [over]]).astype("int64")
            s.counts[1] -= under
            s.counts[-2] -= over
        s.above = np.asarray([above[t] for t in s.thresholds], dtype="int64")
        s.quantiles = {str(k): float(v) for k, v in (d.get("quantiles") or {}).items()} or None
        return s


def _histogram(v: np.ndarray, search_edges: np.ndarray, is_sorted: bool) -> np.ndarray:
    """Counts of [v < s0, s0 <= v < s1, ..., v >= sB]: the underflow, B bins and overflow."""
    if is_sorted:
        below = np.searchsorted(v, search_edges, side="left")
    elif len(search_edges) <= 40:   # one vectorised comparison per edge beats a binary search per value
        below = np.fromiter((np.count_nonzero(v < e) for e in search_edges), dtype="int64",
                            count=len(search_edges))
    else:
        return np.bincount(np.searchsorted(search_edges, v, side="right"), minlength=len(search_edges) + 1)
    return np.diff(np.concatenate([[0], below, [len(v)]])).astype("int64")


class CategoricalSummary:
    """Counts over a fixed vocabulary + "other"; a bounded list of categories never seen in the reference.

    ``complete`` says whether the vocabulary lists every category of the reference; only then can a
    window tell "never seen" from "seen, but in the reference's other bucket", so ``unseen`` and
    ``unseen_count`` stay empty when it is False. ``unseen`` names at most ``max_unseen`` categories
    (the most frequent, exact while fewer than ``max_unseen`` distinct ones arrive); ``unseen_count``
    is always exact.
    """

    kind = "categorical"

    def __init__(self, categories: Iterable[str], *, complete: bool = True, max_unseen: int = 20,
                 dtype: str = "object") -> None:
        self.categories = [str(c) for c in categories]
        self._index = pd.Index(self.categories)
        if not self._index.is_unique:
            raise MonitoringError(f"category vocabulary has duplicates: {self.categories}")
        self.complete = bool(complete)
        self.max_unseen = int(max_unseen)
        self.dtype = dtype
        self.counts = np.zeros(len(self.categories), dtype="int64")
        self.other_count = 0
        self.unseen: dict[str, int] = {}
        self.unseen_count = 0
        self.count = 0
        self.null_count = 0
        self.n_unique: int | None = None   # exact for a fitted reference; None for windows

    @property
    def n(self) -> int:
        return self.count - self.null_count

    def empty(self) -> CategoricalSummary:
        return CategoricalSummary(self.categories, complete=self.complete, max_unseen=self.max_unseen,
                                  dtype=self.dtype)

    def same_layout(self, other: CategoricalSummary) -> bool:
        return (isinstance(other, CategoricalSummary) and self.categories == other.categories
                and self.complete == other.complete)

    def update_counts(self, keys: pd.Index, counts: np.ndarray, nulls: int, rows: int) -> CategoricalSummary:
        """Add value counts (from `columns.value_counts`); returns self."""
        self.count += int(rows)
        self.null_count += int(nulls)
        if not len(keys):
            return self
        pos = self._index.get_indexer(keys)
        known = pos >= 0
        if known.any():
            self.counts += np.bincount(pos[known], weights=counts[known],
                                       minlength=len(self.categories)).astype("int64")
        if not known.all():
            out_counts = counts[~known]
            total = int(out_counts.sum())
            self.other_count += total
            if self.complete:
                self.unseen_count += total
                self._add_unseen(dict(zip(keys[~known].tolist(), out_counts.tolist())))
        return self

    def _add_unseen(self, new: Mapping[str, int]) -> None:
        merged = dict(self.unseen)
        for k, v in new.items():
            merged[k] = merged.get(k, 0) + int(v)
        if len(merged) > self.max_unseen:
            merged = dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0]))[: self.max_unseen])
        self.unseen = merged

    def merge(self, other: CategoricalSummary) -> CategoricalSummary:
        if not self.same_layout(other):
            raise MonitoringError("cannot merge categorical summaries with different vocabularies: build every "
                                  "window from the same reference with `reference.empty()`")
        out = self.empty()
        out.count, out.null_count = self.count + other.count, self.null_count + other.null_count
        out.counts = self.counts + other.counts
        out.other_count = self.other_count + other.other_count
        out.unseen_count = self.unseen_count + other.unseen_count
        out.unseen = dict(self.unseen)
        out._add_unseen(other.unseen)
        return out

    def frequencies(self) -> dict[str, float]:
        n = self.n
        return {c: (int(k) / n if n else 0.0) for c, k in zip(self.categories, self.counts)}

    def to_dict(self) -> dict[str, Any]:
        n = self.n
        n_unique = self.n_unique if self.n_unique is not None else int(np.count_nonzero(self.counts)) + len(
            self.unseen)
        return {
            "kind": "categorical", "dtype": self.dtype, "count": self.count, "null_count": self.null_count,
            "null_rate": self.null_count / self.count if self.count else 0.0, "n_unique": n_unique,
            "counts": {c: int(k) for c, k in zip(self.categories, self.counts)},
            "frequencies": self.frequencies(), "other_count": self.other_count,
            "other_frequency": self.other_count / n if n else 0.0,
            "n_unique_exact": self.n_unique is not None,
            "complete": self.complete, "unseen": dict(self.unseen), "unseen_count": self.unseen_count,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, max_unseen: int = 20) -> CategoricalSummary:
        """Read `to_dict` output or a `registry.profile` categorical profile (complete iff no other bucket)."""
        counts = d.get("counts") or {}
        complete = bool(d["complete"]) if "complete" in d else int(d.get("other_count", 0)) == 0
        s = cls(list(counts), complete=complete, max_unseen=max(max_unseen, len(d.get("unseen") or {})),
                dtype=str(d.get("dtype", "object")))
        s.counts = np.asarray([int(v) for v in counts.values()], dtype="int64")
        s.count, s.null_count = int(d["count"]), int(d["null_count"])
        s.other_count = int(d.get("other_count", 0))
        s.unseen = {str(k): int(v) for k, v in (d.get("unseen") or {}).items()}
        s.unseen_count = int(d.get("unseen_count", 0))
        exact = d.get("n_unique_exact", True) and d.get("n_unique") is not None   # registry profiles: exact
        s.n_unique = int(d["n_unique"]) if exact else None
        return s


Summary = NumericSummary | CategoricalSummary


def summary_from_dict(d: Mapping[str, Any]) -> Summary:
    if d.get("kind") == "numeric":
        return NumericSummary.from_dict(d)
    if d.get("kind") == "categorical":
        return CategoricalSummary.from_dict(d)
    raise MonitoringError(f"unknown column profile kind {d.get('kind')!r}: expected 'numeric' or 'categorical'")
