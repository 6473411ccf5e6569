"""Evaluation of a binary classifier on the temporal holdout: pure numpy metrics, curves, slices.

The metric core (`roc_auc`, `average_precision`, `precision_recall_at`, `threshold_for_precision`,
`log_loss`, `calibration`) takes plain arrays and has no I/O, so it is tested against
scikit-learn on the same arrays in milliseconds. `evaluate(model, dataset, ...)` scores the
dataset's eval part, computes everything (overall and per slice of any column) and, given a run,
logs the metrics plus ``evaluation.json`` and ``evaluation.html`` as run artifacts.
"""
from __future__ import annotations

import json
import math
import numbers
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from loopstack.training.scoring import EvaluationError, positive_scores, score_source

EPS = float(np.finfo(np.float64).eps)
PROB_TOL = 1e-9   # how far outside [0, 1] a probability may stray by float rounding


# -- array core ----------------------------------------------------------------------------------
def _arrays(y: Any, s: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        y = np.asarray(y, dtype=np.float64).ravel()
    except (ValueError, TypeError):
        values = pd.unique(pd.Series(np.asarray(y, dtype=object).ravel()))[:3]
        raise EvaluationError(f"labels must be binary 0/1 (or booleans) for this evaluation; got values like "
                              f"{[str(v) for v in values]}: map them to 0/1 when building the dataset") from None
    try:
        s = np.asarray(s, dtype=np.float64).ravel()
    except (ValueError, TypeError):
        raise EvaluationError("scores must be numbers (the model's probability of the positive class)") from None
    if y.shape != s.shape:
        raise EvaluationError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    if not np.isin(y, (0.0, 1.0)).all():
        raise EvaluationError("labels must be binary 0/1 (or booleans) for this evaluation")
    nan = int(np.isnan(s).sum())
    if nan:
        raise EvaluationError(f"the model gave NaN scores for {nan} of {s.size} rows; metrics would count them as "
                              "negatives: fill or drop the missing feature values, or fix the model/custom loop")
    return y.astype(np.int8), s


def check_probabilities(s: np.ndarray, what: str = "scores") -> np.ndarray:
    """`s` clipped to [0, 1] if all are probabilities (up to float rounding); EvaluationError naming `what` if not
    (log loss, Brier score and calibration of margins, logits or class labels would be meaningless)."""
    bad = (s < -PROB_TOL) | (s > 1 + PROB_TOL)
    if bad.any():
        raise EvaluationError(
            f"{what} must be probabilities in [0, 1] (of the positive class), but {int(bad.sum())} of {s.size} are "
            f"outside it (min {s.min():.4g}, max {s.max():.4g}): margins, logits or class labels such as 2 are not "
            "probabilities. Score with predict_proba (its positive-class column), or map the scores to [0, 1] "
            "(e.g. a sigmoid of margins); labels must be 0/1")
    return np.clip(s, 0.0, 1.0)


def check_options(threshold: float, precision_target: float, n_bins: int = 10) -> None:
    """Refuse a NaN threshold, a precision target outside (0, 1] or fewer than 1 calibration bin."""
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or math.isnan(threshold):
        raise EvaluationError(f"threshold must be a number (scores >= it count as positive), got {threshold!r}")
    if isinstance(precision_target, bool) or not isinstance(precision_target, numbers.Real) \
            or not 0 < precision_target <= 1:
        raise EvaluationError(f"precision_target must be in (0, 1], got {precision_target!r}")
    if isinstance(n_bins, bool) or not isinstance(n_bins, numbers.Integral) or n_bins < 1:
        raise EvaluationError(f"n_bins must be a whole number >= 1, got {n_bins!r}")


def roc_auc(y: Any, s: Any) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); None with one class."""
    y, s = _arrays(y, s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _cum_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds descending, true positives, false positives) at each distinct score."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), y.size - 1]  # last index of each distinct score
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    return s_sorted[last], tps, fps


def roc_curve(y: Any, s: Any) -> dict:
    """{'fpr', 'tpr', 'thresholds'} from (0, 0) at +inf to (1, 1)."""
    y, s = _arrays(y, s)
    thr, tps, fps = _cum_counts(y, s)
    p, n = max(tps[-1], 1.0), max(fps[-1], 1.0)
    return {"fpr": np.r_[0.0, fps / n].tolist(), "tpr": np.r_[0.0, tps / p].tolist(),
            "thresholds": np.r_[np.inf, thr].tolist()}


def pr_curve(y: Any, s: Any) -> dict:
    """{'precision', 'recall', 'thresholds'} with thresholds descending (recall non-decreasing)."""
    y, s = _arrays(y, s)
    thr, tps, fps = _cum_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.zeros_like(tps)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "thresholds": thr.tolist()}


def average_precision(y: Any, s: Any) -> float | None:
    """PR-AUC as average precision: sum over thresholds of (R_k - R_{k-1}) * P_k; None without positives."""
    y, s = _arrays(y, s)
    if y.sum() == 0:
        return None
    c = pr_curve(y, s)
    r = np.asarray(c["recall"])
    return float(np.sum(np.diff(np.r_[0.0, r]) * np.asarray(c["precision"])))


def precision_recall_at(y: Any, s: Any, threshold: float) -> dict:
    """Confusion counts, precision and recall when predicting positive for score >= threshold."""
    y, s = _arrays(y, s)
    pred = s >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    return {"threshold": float(threshold), "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}


def threshold_for_precision(y: Any, s: Any, target: float) -> dict:
    """The lowest score threshold whose precision is >= target (so the highest recall that meets it).

    Returns {'target', 'threshold', 'precision', 'recall', 'met'}; when no threshold reaches the
    target, 'met' is False and threshold/precision/recall are None.
    """
    y, s = _arrays(y, s)
    out = {"target": float(target), "threshold": None, "precision": None, "recall": None, "met": False}
    if y.size == 0 or y.sum() == 0:
        return out
    thr, tps, fps = _cum_counts(y, s)
    ok = np.flatnonzero(tps / (tps + fps) >= target)
    if ok.size == 0:
        return out
    i = int(ok[-1])  # thresholds descend: the last index that qualifies is the lowest threshold
    out.update(threshold=float(thr[i]), precision=float(tps[i] / (tps[i] + fps[i])),
               recall=float(tps[i] / tps[-1]), met=True)
    return out


def log_loss(y: Any, s: Any) -> float:
    """Mean binary cross-entropy of probabilities (EvaluationError outside [0, 1]), clipped to [eps, 1 - eps]."""
    y, s = _arrays(y, s)
    p = np.clip(check_probabilities(s), EPS, 1 - EPS)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def brier(y: Any, s: Any) -> float:
    """Mean squared error of probabilities (EvaluationError for scores outside [0, 1])."""
    y, s = _arrays(y, s)
    s = check_probabilities(s)
    return float(np.mean((s - y) ** 2))


def calibration(y: Any, s: Any, n_bins: int = 10) -> dict:
    """ECE and MCE with equal-width bins on [0, 1] (the last bin includes 1.0) + the reliability curve.

    ECE = sum over bins of (n_b / n) * |mean label_b - mean score_b|. The curve lists every bin
    (empty ones with count 0 and None means) so a plot shows where there is no data.
    """
    y, s = _arrays(y, s)
    s = check_probabilities(s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(s * n_bins).astype(int), 0, n_bins - 1)
    curve, ece, mce = [], 0.0, 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        if n:
            frac, conf = float(y[m].mean()), float(s[m].mean())
            gap = abs(frac - conf)
            ece += n / y.size * gap
            mce = max(mce, gap)
        else:
            frac = conf = None
        curve.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": n,
                      "mean_score": conf, "fraction_positive": frac})
    return {"ece": float(ece), "mce": float(mce), "n_bins": n_bins, "bins": curve}


def histogram(y: Any, s: Any, n_bins: int = 20) -> dict:
    """Score histograms per class on equal-width bins over [0, 1]."""
    y, s = _arrays(y, s)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    clipped = np.clip(s, 0.0, 1.0)
    return {"edges": edges.tolist(), "negative": np.histogram(clipped[y == 0], edges)[0].tolist(),
            "positive": np.histogram(clipped[y == 1], edges)[0].tolist()}


def core_metrics(y: Any, s: Any, threshold: float = 0.5, precision_target: float = 0.95,
                 n_bins: int = 10) -> dict:
    """Every scalar metric of one set of (labels, probability scores: EvaluationError outside [0, 1])."""
    y, s = _arrays(y, s)
    s = check_probabilities(s)
    at = precision_recall_at(y, s, threshold)
    tgt = threshold_for_precision(y, s, precision_target)
    out = {"count": int(y.size), "positives": int(y.sum()),
           "positive_rate": float(y.mean()) if y.size else None,
           "mean_score": float(s.mean()) if y.size else None,
           "roc_auc": roc_auc(y, s), "pr_auc": average_precision(y, s),
           "precision": at["precision"], "recall": at["recall"],
           "log_loss": log_loss(y, s) if y.size else None, "brier": brier(y, s) if y.size else None,
           "threshold_at_target": tgt["threshold"], "precision_at_target": tgt["precision"],
           "recall_at_target": tgt["recall"]}
    if y.size:
        out["ece"] = calibration(y, s, n_bins)["ece"]
    return out


# -- slices --------------------------------------------------------------------------------------
def slice_groups(values: pd.Series, max_categories: int = 20, quantiles: int = 5) -> pd.Series:
    """Group labels for one column: its values, or quantile bins for a many-valued numeric column."""
    v = values.reset_index(drop=True)
    numeric = pd.api.types.is_numeric_dtype(v) and not pd.api.types.is_bool_dtype(v)
    if numeric and v.nunique(dropna=True) > max_categories:
        v = pd.qcut(v, q=quantiles, duplicates="drop").astype(str)
    return v.astype(object).where(v.notna(), "null").map(str)


def slice_metrics(y: Any, s: Any, frame: pd.DataFrame, columns: Sequence[str], threshold: float = 0.5,
                  precision_target: float = 0.95, n_bins: int = 10) -> dict[str, list[dict]]:
    """{column: [{'value', 'count', 'positives', metrics...}, ...]} with the largest groups first."""
    y, s = _arrays(y, s)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise EvaluationError(f"slice column(s) {missing} are not in the evaluation frame; it has "
                              f"{list(frame.columns)}")
    if len(frame) != y.size:
        raise EvaluationError(f"the slice frame has {len(frame)} rows but there are {y.size} labels: pass the "
                              "frame the labels and scores came from (row-aligned)")
    out: dict[str, list[dict]] = {}
    for col in columns:
        groups = slice_groups(frame[col]).to_numpy()
        rows = []
        for value in pd.unique(groups):
            m = groups == value
            rows.append({"value": str(value), **core_metrics(y[m], s[m], threshold, precision_target, n_bins)})
        out[col] = sorted(rows, key=lambda r: (-r["count"], r["value"]))
    return out


# -- the evaluation object -----------------------------------------------------------------------
@dataclass
class Evaluation:
    """Everything measured on one part of a dataset: scalar metrics, curves, calibration, slices."""

    metrics: dict
    threshold: float
    precision_target: float
    roc: dict
    pr: dict
    calibration: dict
    histogram: dict
    slices: dict = field(default_factory=dict)
    at_threshold: dict = field(default_factory=dict)
    dataset: dict = field(default_factory=dict)
    part: str = "eval"

    def to_dict(self) -> dict:
        """Plain JSON-safe data (infinite thresholds and NaN become None)."""
        return _clean(dict(self.__dict__))

    def flat_metrics(self, include_slices: bool = True) -> dict[str, float]:
        """Numeric metrics as run metric keys: 'roc_auc', ..., 'slice.<column>.<value>.<metric>'."""
        out = {k: float(v) for k, v in self.metrics.items() if isinstance(v, (int, float)) and v is not None}
        if include_slices:
            for col, rows in self.slices.items():
                for r in rows:
                    key = f"slice.{_safe(col)}.{_safe(r['value'])}"
                    out.update({f"{key}.{k}": float(v) for k, v in r.items()
                                if k != "value" and isinstance(v, (int, float))})
        return {k: v for k, v in out.items() if math.isfinite(v)}

    def log_to(self, run: Any, report: bool = True) -> None:
        """Log the metrics, evaluation.json and (if `report`) the HTML report into a run."""
        run.log_metrics(self.flat_metrics())
        with tempfile.TemporaryDirectory() as tmp:
            p = Path(tmp) / "evaluation.json"
            p.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default, allow_nan=False))
            run.log_artifact(p)
            if report:
                run.log_artifact(self.write_report(Path(tmp) / "evaluation.html"))

    def report_html(self, title: str | None = None) -> str:
        from loopstack.training.eval_report import render
        return render(self, title)

    def write_report(self, path: str | Path, title: str | None = None) -> Path:
        """Write the HTML report to `path` (a clear error if it cannot be written)."""
        from loopstack.pages import write_page
        return write_page(path, self.report_html(title), "the evaluation report",
                          "give a path in an existing, writable folder")


def _safe(v: Any) -> str:
    return re.sub(r"[^\w\-.]", "_", str(v))[:80] or "_"


def _clean(o: Any) -> Any:
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    return str(o)


def evaluate_scores(y: Any, s: Any, frame: pd.DataFrame | None = None, *, threshold: float = 0.5,
                    precision_target: float = 0.95, slices: Sequence[str] | None = None,
                    n_bins: int = 10, source: str = "scores") -> Evaluation:
    """The full evaluation of (labels, probability scores); `frame` holds the slice columns, row-aligned.

    Scores outside [0, 1] are an EvaluationError naming `source` (where the scores came from)."""
    check_options(threshold, precision_target, n_bins)
    y, s = _arrays(y, s)
    if y.size == 0:
        raise EvaluationError("nothing to evaluate: the evaluation part has no rows (move the split so the "
                              "holdout has data)")
    s = check_probabilities(s, source)
    slices = [slices] if isinstance(slices, str) else list(slices or [])
    if slices and frame is None:
        raise EvaluationError("slices need the evaluation frame")
    cal = calibration(y, s, n_bins)
    return Evaluation(
        metrics=core_metrics(y, s, threshold, precision_target, n_bins), threshold=float(threshold),
        precision_target=float(precision_target), roc=roc_curve(y, s), pr=pr_curve(y, s), calibration=cal,
        histogram=histogram(y, s), at_threshold=precision_recall_at(y, s, threshold),
        slices=slice_metrics(y, s, frame, slices, threshold, precision_target, n_bins) if slices else {})


def evaluate(model: Any, dataset: Any, threshold: float = 0.5, precision_target: float = 0.95,
             slices: Sequence[str] | None = None, *, part: str = "eval", label: str | None = None,
             features: Sequence[str] | None = None, run: Any = None, positive_class: Any = 1,
             n_bins: int = 10, report: bool = True) -> Evaluation:
    """Score `dataset`'s `part` (the temporal holdout by default) with `model` and measure it.

    `slices`: columns of the part (features or any other column, e.g. 'new_account') to break the
    metrics down by. With `run`, metrics and the evaluation.json/.html artifacts are logged to it.
    """
    if part not in ("eval", "train"):
        raise EvaluationError(f"part must be 'eval' (the holdout) or 'train', got {part!r}")
    frame = dataset.eval if part == "eval" else dataset.train
    label = label or dataset.label_column
    features = list(features or dataset.feature_columns)
    missing = [c for c in [label, *features] if c not in frame.columns]
    if missing:
        raise EvaluationError(f"the {part} part lacks column(s) {missing}; it has {list(frame.columns)}")
    y = frame[label].to_numpy()
    ev = evaluate_scores(y, positive_scores(model, frame[features], positive_class), frame,
                         threshold=threshold, precision_target=precision_target, slices=slices, n_bins=n_bins,
                         source=f"the scores of {score_source(model)} on the {part} part")
    m = getattr(dataset, "manifest", {}) or {}
    ev.dataset = {k: m.get(k) for k in ("dataset_id", "name", "version", "content_hash")}
    ev.part = part
    if run is not None:
        ev.log_to(run, report=report)
    return ev
