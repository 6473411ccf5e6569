"""Calibration once labels arrive: mergeable per-bin sums, expected calibration error, curve data.

Scores in [0, 1] fall into ``bins`` equal-width bins ([i/B, (i+1)/B), the last one closed). Per bin
we keep the count, the sum of scores and the sum of labels, so windows merge by addition and late
labels can be added batch by batch.

- mean predicted (confidence) of bin b: sum_score_b / n_b; observed rate (accuracy): sum_label_b / n_b
- ECE = sum_b (n_b / N) * |observed_b - predicted_b|  (Naeini et al. 2015; Guo et al. 2017), in [0, 1];
  0 for a perfectly calibrated model. It depends on the binning, so compare ECEs with the same bins.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from loopstack.monitoring.columns import MonitoringError


@dataclass
class CalibrationBins:
    """count, sum of scores and sum of labels per equal-width score bin; ``a + b`` merges."""

    count: np.ndarray
    sum_score: np.ndarray
    sum_label: np.ndarray

    @classmethod
    def zeros(cls, bins: int = 10) -> CalibrationBins:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise MonitoringError(f"bins must be a positive integer, got {bins!r}")
        return cls(np.zeros(bins, dtype="int64"), np.zeros(bins), np.zeros(bins))

    @classmethod
    def from_arrays(cls, scores: Any, labels: Any, bins: int = 10) -> CalibrationBins:
        return cls.zeros(bins).update(scores, labels)

    @property
    def n_bins(self) -> int:
        return len(self.count)

    @property
    def edges(self) -> np.ndarray:
        return np.linspace(0.0, 1.0, self.n_bins + 1)

    def update(self, scores: Any, labels: Any) -> CalibrationBins:
        """Add scores in [0, 1] and their 0/1 labels; returns self."""
        s = np.asarray(scores, dtype="float64").ravel()
        y = np.asarray(labels, dtype="float64").ravel()
        if s.shape != y.shape:
            raise MonitoringError(f"{len(s)} scores but {len(y)} labels: pass one label per score")
        if len(s) and (np.nanmin(s) < 0 or np.nanmax(s) > 1 or np.isnan(s).any()):
            raise MonitoringError("scores must be probabilities in [0, 1] without NaN")
        if len(y) and not np.isin(y, (0.0, 1.0)).all():
            raise MonitoringError("labels must be 0/1 (or booleans)")
        idx = np.minimum((s * self.n_bins).astype("int64"), self.n_bins - 1)
        self.count += np.bincount(idx, minlength=self.n_bins)
        self.sum_score += np.bincount(idx, weights=s, minlength=self.n_bins)
        self.sum_label += np.bincount(idx, weights=y, minlength=self.n_bins)
        return self

    def __add__(self, other: CalibrationBins) -> CalibrationBins:
        if self.n_bins != other.n_bins:
            raise MonitoringError(f"cannot merge calibration bins of {self.n_bins} and {other.n_bins} bins")
        return CalibrationBins(self.count + other.count, self.sum_score + other.sum_score,
                               self.sum_label + other.sum_label)

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count.tolist(), "sum_score": self.sum_score.tolist(),
                "sum_label": self.sum_label.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationBins:
        return cls(np.asarray(d["count"], dtype="int64"), np.asarray(d["sum_score"], dtype="float64"),
                   np.asarray(d["sum_label"], dtype="float64"))


def _bins(scores_or_bins: Any, labels: Any, bins: int) -> CalibrationBins:
    if isinstance(scores_or_bins, CalibrationBins):
        return scores_or_bins
    if labels is None:
        raise MonitoringError("labels are required with raw scores (or pass CalibrationBins)")
    return CalibrationBins.from_arrays(scores_or_bins, labels, bins)


def expected_calibration_error(scores_or_bins: Any, labels: Any = None, *, bins: int = 10) -> float:
    """ECE over equal-width bins from raw (scores, labels) or from `CalibrationBins`; NaN if empty."""
    b = _bins(scores_or_bins, labels, bins)
    n = int(b.count.sum())
    if n == 0:
        return float("nan")
    nz = b.count > 0
    gap = np.abs(b.sum_label[nz] - b.sum_score[nz])          # n_b * |observed_b - predicted_b|
    return float(gap.sum() / n)


def calibration_curve(scores_or_bins: Any, labels: Any = None, *, bins: int = 10) -> dict[str, list]:
    """Reliability-diagram data for non-empty bins: bin bounds, mean predicted, observed rate, count."""
    b = _bins(scores_or_bins, labels, bins)
    e = b.edges
    nz = np.flatnonzero(b.count > 0)
    return {"bin_lower": e[nz].tolist(), "bin_upper": e[nz + 1].tolist(),
            "mean_predicted": (b.sum_score[nz] / b.count[nz]).tolist(),
            "observed_rate": (b.sum_label[nz] / b.count[nz]).tolist(), "count": b.count[nz].tolist()}
