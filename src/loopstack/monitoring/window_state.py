"""`WindowState`: the mergeable summary of one (model, version, window) across the four layers (pure).

- system: requests, errors, fallbacks (rung != model), a latency histogram on fixed log-spaced
  buckets (10 % wide, so p50/p99 are within 10 %), rung, variant and batch-size counts, and from
  scrapes of the server's /metrics the queue depth (samples, sum, max) and batches run;
- data: a feature `Profile` of the sampled feature vectors, built on the reference's layout;
- model: the score distribution on the reference's score bins (shares above 0.5 and 0.9 exact) and
  on 20 fixed bins of [0, 1] for plots;
- product: labels joined as they arrive: confusion counts at the decision threshold, calibration
  bins, and per segment (variant, categorical features) score moments.

Every part adds up, so `merge` of two hours is the state of both and the order of updates does not
matter. `to_dict`/`from_dict` are strict JSON.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, Iterable, Mapping

import numpy as np

from loopstack.monitoring.calibration import CalibrationBins
from loopstack.monitoring.profiles import Profile
from loopstack.monitoring.summaries import NumericSummary

LAT_BASE_MS, LAT_RATIO, LAT_BUCKETS = 0.05, 1.1, 160      # 0.05 ms .. ~200 s
SCORE_HIST_BINS = 20
SCORE_THRESHOLDS = (0.5, 0.9)
SEGMENT_VALUES = 30                                          # per segment dimension, most frequent kept


def latency_bucket(ms: float) -> int:
    """Bucket b holds (BASE * RATIO^(b-1), BASE * RATIO^b]; bucket 0 everything <= BASE."""
    if not ms > LAT_BASE_MS:
        return 0
    return min(int(math.ceil(math.log(ms / LAT_BASE_MS, LAT_RATIO) - 1e-12)), LAT_BUCKETS - 1)


def latency_quantile(hist: Mapping[int, int], q: float) -> float | None:
    """The q-quantile of a latency histogram: the upper bound of the bucket holding it (<= 10 % high)."""
    n = sum(hist.values())
    if not n:
        return None
    rank, seen = q * n, 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return LAT_BASE_MS * LAT_RATIO ** b
    return LAT_BASE_MS * LAT_RATIO ** max(hist)


class WindowState:
    """Mergeable state of one window; ``reference`` (a Profile or None) fixes the data/score layout."""

    def __init__(self, reference: Profile | None = None, *, calibration_bins: int = 10) -> None:
        self.requests = self.errors = self.fallbacks = self.scored = 0
        self.latency: Counter = Counter()
        self.rungs: Counter = Counter()
        self.variants: Counter = Counter()
        self.batch_sizes: Counter = Counter()
        self.features: Profile | None = None
        self.scores: NumericSummary | None = None
        if reference is not None and reference.features:
            self.features = reference.empty()
            self.features.scores = None
        if reference is not None and reference.scores is not None and len(reference.scores.edges):
            self.scores = NumericSummary(reference.scores.edges, thresholds=SCORE_THRESHOLDS)
        self.score_hist = np.zeros(SCORE_HIST_BINS, dtype="int64")
        self.score_moments = NumericSummary([], thresholds=SCORE_THRESHOLDS)
        self.labelled = self.tp = self.fp = self.fn = self.tn = 0
        self.calibration = CalibrationBins.zeros(calibration_bins)
        self.segments: dict[str, list[float]] = {}   # "variant=canary" -> [n, sum, sum of squares]
        self.queue_depth = [0.0, 0.0, 0.0]           # from server scrapes: [samples, sum, max]
        self.batch_runs = self.batch_requests = 0    # from server scrapes: batches run, requests in them

    def add_server_sample(self, queue_depth: float | None, batches: int, requests: int) -> None:
        """One scrape of the server's /metrics: queue depth now, batches run since the last scrape."""
        if queue_depth is not None:
            q = self.queue_depth
            q[0], q[1], q[2] = q[0] + 1, q[1] + queue_depth, max(q[2], queue_depth)
        self.batch_runs += int(batches)
        self.batch_requests += int(requests)

    # -- updates ------------------------------------------------------------------------------
    def add_predictions(self, records: list[dict], scores: list[float | None],
                        segments: list[list[str]]) -> None:
        """Count prediction-log records (with their parsed scores and segment keys)."""
        for rec, score, segs in zip(records, scores, segments):
            self.requests += 1
            if rec.get("status") == "error" or rec.get("error"):
                self.errors += 1
            rung = str(rec.get("rung") or "model")
            self.rungs[rung] += 1
            if rung != "model":
                self.fallbacks += 1
            self.variants[str(rec.get("variant") or "-")] += 1
            lat = rec.get("latency_ms")
            if isinstance(lat, (int, float)) and math.isfinite(lat):
                self.latency[latency_bucket(float(lat))] += 1
            if isinstance(rec.get("batch_size"), int):
                self.batch_sizes[int(rec["batch_size"])] += 1
            if score is not None:
                for key in segs:
                    m = self.segments.setdefault(key, [0.0, 0.0, 0.0])
                    m[0] += 1
                    m[1] += score
                    m[2] += score * score
        s = np.asarray([x for x in scores if x is not None], dtype="float64")
        self.scored += len(s)
        if len(s):
            self.score_moments.update(s)
            if self.scores is not None:
                self.scores.update(s)
            self.score_hist += np.bincount(np.minimum((np.clip(s, 0, 1) * SCORE_HIST_BINS).astype("int64"),
                                                      SCORE_HIST_BINS - 1), minlength=SCORE_HIST_BINS)
        sampled = [r["features"] for r in records if isinstance(r.get("features"), Mapping)]
        if sampled and self.features is not None:
            cols = {c: np.asarray([f.get(c) for f in sampled], dtype=object) for c in self.features.features}
            for c, summary in self.features.features.items():
                if summary.kind == "numeric":
                    cols[c] = np.asarray([_num(v) for v in cols[c]], dtype="float64")
            self.features.update(cols)

    def add_labels(self, scores: Iterable[float], labels: Iterable[int], threshold: float) -> None:
        """Add labels that arrived for predictions of this window (their scores at prediction time)."""
        s = np.asarray(list(scores), dtype="float64")
        y = np.asarray(list(labels), dtype="int64")
        if not len(s):
            return
        flagged = s >= threshold
        self.labelled += len(s)
        self.tp += int(np.sum(flagged & (y == 1)))
        self.fp += int(np.sum(flagged & (y == 0)))
        self.fn += int(np.sum(~flagged & (y == 1)))
        self.tn += int(np.sum(~flagged & (y == 0)))
        self.calibration.update(np.clip(s, 0, 1), y)

    # -- merging ------------------------------------------------------------------------------
    def merge(self, other: WindowState) -> WindowState:
        """A new state of both windows (built against the same reference)."""
        out = WindowState.from_dict(self.to_dict())
        for k in ("requests", "errors", "fallbacks", "scored", "labelled", "tp", "fp", "fn", "tn", "batch_runs",
                  "batch_requests"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        q, o = self.queue_depth, other.queue_depth
        out.queue_depth = [q[0] + o[0], q[1] + o[1], max(q[2], o[2])]
        for k in ("latency", "rungs", "variants", "batch_sizes"):
            setattr(out, k, getattr(self, k) + getattr(other, k))
        if self.features is not None and other.features is not None:
            out.features = Profile.merge(self.features, other.features)
        elif other.features is not None:
            out.features = Profile.from_dict(other.features.to_dict())
        if self.scores is not None and other.scores is not None:
            out.scores = self.scores.merge(other.scores)
        elif other.scores is not None:
            out.scores = NumericSummary.from_dict(other.scores.to_dict())
        out.score_hist = self.score_hist + other.score_hist
        out.score_moments = self.score_moments.merge(other.score_moments)
        out.calibration = self.calibration + other.calibration
        out.segments = {k: list(v) for k, v in self.segments.items()}
        for k, v in other.segments.items():
            m = out.segments.setdefault(k, [0.0, 0.0, 0.0])
            for i in range(3):
                m[i] += v[i]
        return out

    @staticmethod
    def merge_all(states: list[WindowState]) -> WindowState:
        out = states[0]
        for s in states[1:]:
            out = out.merge(s)
        return out

    # -- derived ------------------------------------------------------------------------------
    def segment_means(self, min_n: int = 30) -> dict[str, tuple[int, float]]:
        """Segment -> (n, mean score) for segments with at least ``min_n`` scores."""
        return {k: (int(v[0]), v[1] / v[0]) for k, v in self.segments.items() if v[0] >= min_n}

    # -- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "fallbacks": self.fallbacks, "scored": self.scored,
                "latency": {str(k): v for k, v in self.latency.items()}, "rungs": dict(self.rungs),
                "variants": dict(self.variants), "batch_sizes": {str(k): v for k, v in self.batch_sizes.items()},
                "features": None if self.features is None else self.features.to_dict(),
                "scores": None if self.scores is None else self.scores.to_dict(),
                "score_hist": self.score_hist.tolist(), "score_moments": self.score_moments.to_dict(),
                "labelled": self.labelled, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn,
                "calibration": self.calibration.to_dict(), "segments": self.segments,
                "queue_depth": self.queue_depth, "batch_runs": self.batch_runs, "batch_requests": self.batch_requests}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WindowState:
        out = cls()
        for k in ("requests", "errors", "fallbacks", "scored", "labelled", "tp", "fp", "fn", "tn", "batch_runs",
                  "batch_requests"):
            setattr(out, k, int(d.get(k, 0)))
        out.queue_depth = [float(x) for x in (d.get("queue_depth") or [0.0, 0.0, 0.0])]
        out.latency = Counter({int(k): int(v) for k, v in (d.get("latency") or {}).items()})
        out.rungs, out.variants = Counter(d.get("rungs") or {}), Counter(d.get("variants") or {})
        out.batch_sizes = Counter({int(k): int(v) for k, v in (d.get("batch_sizes") or {}).items()})
        out.features = None if d.get("features") is None else Profile.from_dict(d["features"])
        out.scores = None if d.get("scores") is None else NumericSummary.from_dict(d["scores"])
        out.score_hist = np.asarray(d.get("score_hist") or [0] * SCORE_HIST_BINS, dtype="int64")
        if d.get("score_moments"):
            out.score_moments = NumericSummary.from_dict(d["score_moments"])
        if d.get("calibration"):
            out.calibration = CalibrationBins.from_dict(d["calibration"])
        out.segments = {str(k): [float(x) for x in v] for k, v in (d.get("segments") or {}).items()}
        return out


def parse_score(output: Any) -> float | None:
    """The positive-class score of a logged model output: a number, the last of a list, or a dict's
    ``score``/``probability``; None when there is none (errors, non-numeric outputs)."""
    if isinstance(output, bool) or output is None:
        return None
    if isinstance(output, (int, float)):
        return float(output) if math.isfinite(output) else None
    if isinstance(output, (list, tuple)) and output:
        return parse_score(output[-1])
    if isinstance(output, Mapping):
        for k in ("score", "probability", "proba", "prediction"):
            if k in output:
                return parse_score(output[k])
    return None


def segment_keys(rec: Mapping[str, Any], categorical: Iterable[str]) -> list[str]:
    """The segments a prediction belongs to: its variant, and each categorical feature value it logged."""
    out = [f"variant={rec.get('variant') or '-'}"]
    feats = rec.get("features")
    if isinstance(feats, Mapping):
        for c in categorical:
            if c in feats and feats[c] is not None:
                out.append(f"{c}={feats[c]}")
    return out


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
