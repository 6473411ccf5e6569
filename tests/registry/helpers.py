"""Picklable fake models and a standard signature for registry tests."""
from __future__ import annotations

import time

import numpy as np

SIGNATURE = {
    "inputs": [{"ref": "author_stats:spam_7d", "version": 3, "dtype": "float64"},
               {"ref": "comment:url_count", "version": 1, "dtype": "int64"},
               {"ref": "comment:country", "version": 2, "dtype": "string"}],
    "outputs": [{"name": "spam_score", "dtype": "float64"}],
}


class ThresholdModel:
    """A sklearn-like model: predict_proba from a weighted sum."""

    def __init__(self, weight: float = 0.5) -> None:
        self.weight = weight

    def predict_proba(self, x):
        x = np.asarray(x, dtype="float64")
        p = 1 / (1 + np.exp(-self.weight * x.sum(axis=1)))
        return np.stack([1 - p, p], axis=1)


class SlowModel:
    """Sleeps per call: fixed cost plus a per-row cost (for latency-budget tests)."""

    def __init__(self, fixed_ms: float, per_row_ms: float = 0.0) -> None:
        self.fixed_ms, self.per_row_ms = fixed_ms, per_row_ms

    def predict(self, x):
        time.sleep((self.fixed_ms + self.per_row_ms * len(x)) / 1000.0)
        return np.zeros(len(x))
