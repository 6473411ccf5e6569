"""`summarize`: the numbers of one window across the four layers, from its state and the reference (pure).

The product layer is label-delay aware: a window [start, end) is *complete* once ``now >= end +
label_delay``; before that precision/recall/ECE are ``None`` and the window says ``incomplete`` (with
the labels that arrived so far), so a half-labelled window is never read as a recall drop.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopstack.monitoring.calibration import calibration_curve, expected_calibration_error
from loopstack.monitoring.checks import data_checks, high_score_share, mean_score_shift, share_above
from loopstack.monitoring.drift import DatasetDrift, Thresholds, column_drift, score_profile
from loopstack.monitoring.profiles import Profile
from loopstack.monitoring.window_state import SCORE_HIST_BINS, WindowState, latency_quantile


@dataclass
class WindowSummary:
    """What a window says: ``metrics`` (system/model/product, metric -> value or None), ``features``
    (feature -> metric -> value), the data checks and drift report, and the product ``status``."""

    model: str
    version: int
    start_us: int
    width_s: int
    status: str                                    # "complete" | "incomplete" (labels not yet final)
    metrics: dict[str, Any] = field(default_factory=dict)
    features: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drift: DatasetDrift | None = None
    state: WindowState | None = None

    @property
    def end_us(self) -> int:
        return self.start_us + self.width_s * 1_000_000

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "version": self.version, "start_us": self.start_us, "width_s": self.width_s,
                "status": self.status, "metrics": self.metrics, "features": self.features, "checks": self.checks,
                "notes": self.notes}


def summarize(model: str, version: int, start_us: int, width_s: int, state: WindowState,
              reference: Profile | None, *, now_us: int, label_delay_us: int, threshold: float = 0.5,
              min_samples: int = 100, thresholds: Thresholds | None = None) -> WindowSummary:
    """The summary of one window (see module doc)."""
    th = thresholds or Thresholds()
    end_us = start_us + width_s * 1_000_000
    complete = now_us >= end_us + label_delay_us
    out = WindowSummary(model, version, start_us, width_s, "complete" if complete else "incomplete", state=state)
    m = out.metrics
    # system
    n = state.requests
    m["requests"], m["errors"] = n, state.errors
    m["error_rate"] = state.errors / n if n else None
    m["fallback_rate"] = state.fallbacks / n if n else None
    m["p50_latency_ms"] = latency_quantile(state.latency, 0.5)
    m["p99_latency_ms"] = latency_quantile(state.latency, 0.99)
    bs = state.batch_sizes
    runs = sum(bs.values()) + state.batch_runs
    m["mean_batch_size"] = (sum(k * v for k, v in bs.items()) + state.batch_requests) / runs if runs else None
    q = state.queue_depth
    m["queue_depth_mean"] = q[1] / q[0] if q[0] else None
    m["queue_depth_max"] = q[2] if q[0] else None
    # data
    if reference is None:
        out.notes.append("no reference profile for this version: data and score drift are not computed")
    elif state.features is not None:
        n_feat = state.features.n_rows
        m["feature_samples"] = n_feat
        if n_feat >= min_samples:
            names = [c for c in reference.features if c in state.features.features]
            out.drift = score_profile(reference, state.features, columns=names, thresholds=th)
            checks = data_checks(reference, state.features, columns=names)
            out.checks = [c.to_dict() for c in checks]
            for c in names:
                r = out.drift[c]
                f = out.features.setdefault(c, {})
                f["band"] = r.band
                f["drifted"] = r.drifted
                for meth, key in (("psi", "psi"), ("js", "js"), ("ks", "ks")):
                    if meth in r.results:
                        f[key] = _f(r.results[meth].statistic)
                if "ks" in r.results:
                    f["ks_p"] = _f(r.results["ks"].p_value)
                if "chi2" in r.results:
                    f["chi2_p"] = _f(r.results["chi2"].p_value)
            for c in checks:
                f = out.features.setdefault(c.column, {})
                if c.check == "null_rate":
                    f["null_rate"] = c.value
                    f["null_rate_increase"] = None if c.value is None or c.reference is None \
                        else c.value - c.reference
                elif c.check == "out_of_range":
                    f["out_of_range"] = c.value
                elif c.check == "unseen_categories":
                    f["unseen"] = c.value
        elif n_feat:
            out.notes.append(f"{n_feat} feature samples (< min_samples {min_samples}): no feature drift numbers")
    # model
    sm = state.score_moments
    m["scored"] = state.scored
    m["mean_score"] = sm.mean if sm.n else None
    m["high_score_share"] = share_above(sm, 0.9) if sm.n else None
    if reference is not None and reference.scores is not None and state.scores is not None \
            and state.scores.n >= min_samples:
        r = column_drift("score", reference.scores, state.scores, methods=("psi", "ks", "js"), thresholds=th)
        m["score_psi"] = _f(r["psi"].statistic)
        m["score_js"] = _f(r["js"].statistic)
        m["score_ks"] = _f(r["ks"].statistic)
        m["score_band"] = r.band
        ref_p, cur_p = Profile(), Profile()
        ref_p.scores, cur_p.scores, ref_p.fitted, cur_p.fitted = reference.scores, state.scores, True, True
        shift = mean_score_shift(ref_p, cur_p)
        m["reference_mean_score"] = shift.reference
        m["mean_score_shift"] = None if shift.value is None or shift.reference is None \
            else shift.value - shift.reference
        m["mean_score_shift_alert"] = shift.alert
        hs = high_score_share(ref_p, cur_p)
        m["high_score_share_change"] = None if hs.value is None or hs.reference is None else hs.value - hs.reference
    # product
    m["flagged_rate"] = _flagged_rate(state.score_hist, threshold)
    m["labelled"] = state.labelled
    m["label_coverage"] = state.labelled / state.scored if state.scored else None
    m["product_status"] = out.status
    if complete and state.labelled:
        pos = state.tp + state.fn
        m["precision"] = state.tp / (state.tp + state.fp) if state.tp + state.fp else None
        m["recall"] = state.tp / pos if pos else None
        m["positive_rate"] = pos / state.labelled
        m["ece"] = _f(expected_calibration_error(state.calibration))
    else:
        for k in ("precision", "recall", "positive_rate", "ece"):
            m[k] = None
        if not complete:
            out.notes.append(f"labels not final until {label_delay_us / 3.6e9:g} h after the window ends: product "
                             f"metrics incomplete ({state.labelled} of {state.scored} labelled so far)")
    return out


def curve(state: WindowState) -> dict[str, list]:
    """Reliability-diagram data of the labelled predictions of a window."""
    return calibration_curve(state.calibration)


def _flagged_rate(hist: np.ndarray, threshold: float) -> float | None:
    n = int(hist.sum())
    if not n:
        return None
    pos = min(max(threshold, 0.0), 1.0) * SCORE_HIST_BINS
    i = int(pos)
    above = float(hist[i + 1:].sum()) if i < SCORE_HIST_BINS else 0.0
    if i < SCORE_HIST_BINS:
        above += float(hist[i]) * (1 - (pos - i))
    return above / n


def _f(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)
