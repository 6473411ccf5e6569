"""Scoring a trained model: the positive class's probability (or the model's own output), and where it came from.

Kept apart from the metrics (`evaluation`) so that serving, which scores every request, imports only this.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from loopstack.errors import LoopstackError


class EvaluationError(LoopstackError):
    """Evaluation cannot run as asked (no rows, unknown slice column, model cannot score, ...)."""


def positive_scores(model: Any, X: pd.DataFrame, positive_class: Any = 1) -> np.ndarray:
    """Probability of the positive class (predict_proba), else the model's predict output."""
    if hasattr(model, "predict_proba"):
        proba = np.asarray(model.predict_proba(X))
        if proba.ndim == 1:
            return proba.astype(np.float64)
        classes = list(getattr(model, "classes_", range(proba.shape[1])))
        col = classes.index(positive_class) if positive_class in classes else proba.shape[1] - 1
        return proba[:, col].astype(np.float64)
    if hasattr(model, "predict"):
        return np.asarray(model.predict(X), dtype=np.float64).ravel()
    if callable(model):
        return np.asarray(model(X), dtype=np.float64).ravel()
    raise EvaluationError(f"cannot score with a {type(model).__name__}: it has neither predict_proba nor predict "
                          "(a custom loop must return an object with one of them)")


def score_source(model: Any) -> str:
    """Which call `positive_scores` takes a model's scores from, e.g. 'LGBMClassifier.predict_proba'."""
    kind = type(model).__name__
    method = next((m for m in ("predict_proba", "predict") if hasattr(model, m)), None)
    return f"{kind}.{method}" if method else f"{getattr(model, '__name__', kind)}(X)"
