"""What one predict call leaves behind: its metrics (counted per label set) and its prediction-log records
(docs/serving.md, "Prediction log": metadata for every prediction, the feature vector for a sample and for
every error or non-model answer)."""
from __future__ import annotations

import time
from typing import Any, Sequence

from loopstack.serving.prediction_log import sampled


def _record(name: str, user_id: str | None, ans: Any, status: str, ts: int, lat_ms: float) -> dict:
    """The metadata of one prediction (every prediction gets one)."""
    a = ans.assignment
    return {"kind": "prediction", "request_id": ans.request_id, "ts": ts, "model": name,
            "version": ans.version, "variant": ans.variant, "rung": ans.rung, "status": status,
            "latency_ms": lat_ms, "output": ans.prediction,
            "user_id": None if user_id is None else str(user_id), "bucket": a.bucket if a else None,
            "shadow_version": a.shadow_version if a else None, "cached": ans.cached}


def records(name: str, requests: Sequence[Any], answers: list, latency: float, feature_sample: float,
            metrics: Any) -> list[dict]:
    """Count the answers of one call in `metrics` (per label set, not per instance) and return their
    prediction-log records. `answers[i]` answers `requests[i]`: an Answer, or the exception it failed with
    (an exception carrying `.answer` — every rung failed — is logged as an error with its vector; others,
    like 4xx input errors and 429s, are not predictions and get no record).

    The records of plain model answers (no failure on the way) that share assignment, version, cache flag
    and user are copies of one template with their own request id and output: per instance, one dict copy
    and the CRC-32 of its id for the feature sample (`feature_sample`, by request id)."""
    counts: dict[tuple, int] = {}
    recs = []
    ts = int(time.time() * 1e6)
    lat_ms = round(latency * 1000, 3)
    rate = feature_sample
    bases: dict[tuple, list] = {}   # (assignment, version, variant, cached, user) -> [record template, count]
    for req, ans in zip(requests, answers):
        failed = isinstance(ans, BaseException)
        if not failed and ans.rung == "model" and not ans.failures:
            key = (id(ans.assignment), ans.version, ans.variant, ans.cached, req.user_id)
            base = bases.get(key)
            if base is None:
                base = bases[key] = [_record(name, req.user_id, ans, "ok", ts, lat_ms), 0]
            base[1] += 1
            recs.append(_copy(base[0], ans.request_id, ans.prediction, ans.columns, ans.vector, rate))
            continue
        error = None
        if failed:
            ans = getattr(ans, "answer", None)
            if ans is None:
                continue
            error = "; ".join(ans.failures)
        else:
            key = (ans.version, ans.variant, ans.rung)
            counts[key] = counts.get(key, 0) + 1
        rec = _record(name, req.user_id, ans, "ok" if error is None else "error", ts, lat_ms)
        if ans.failures:
            rec["failures"] = ans.failures
        if error is not None:
            rec["error"] = error
        if error is not None or ans.rung != "model" or sampled(ans.request_id, rate):
            rec["features"] = dict(zip(ans.columns, ans.vector or []))
        recs.append(rec)
    for (_, version, variant, _, _), (_, n) in bases.items():
        counts[(version, variant, "model")] = counts.get((version, variant, "model"), 0) + n
    _count(metrics, name, counts, latency)
    return recs


def block_records(name: str, user_id: str | None, first: Any, request_ids: Sequence[str], outputs: Sequence[Any],
                  vectors: Sequence[Any], latency: float, feature_sample: float, metrics: Any) -> list[dict]:
    """`records` of a block: plain model answers that share one assignment, version and user (`first`: the
    Answer of the first instance), without an Answer per instance. Same records, same counts."""
    base = _record(name, user_id, first, "ok", int(time.time() * 1e6), round(latency * 1000, 3))
    cols = first.columns
    recs = [_copy(base, rid, out, cols, vec, feature_sample) for rid, out, vec in zip(request_ids, outputs, vectors)]
    _count(metrics, name, {(first.version, first.variant, "model"): len(recs)}, latency)
    return recs


def _copy(base: dict, request_id: str, output: Any, columns: Sequence[str], vector: Any, rate: float) -> dict:
    """One instance's record from its template: its own id and output, and its vector when sampled."""
    rec = base.copy()
    rec["request_id"] = request_id
    rec["output"] = output
    if rate > 0 and sampled(request_id, rate):
        rec["features"] = dict(zip(columns, vector or []))
    return rec


def _count(metrics: Any, name: str, counts: dict[tuple, int], latency: float) -> None:
    """Count answers per (version, variant, rung) label set; one latency observation per call and variant."""
    m = metrics
    for (version, variant, rung), n in counts.items():
        m.child(m.requests, name, str(version), variant, rung, "ok").inc(n)
        m.child(m.rungs, name, rung).inc(n)
    for variant in {variant for _, variant, _ in counts}:
        m.child(m.latency, name, variant).observe(latency)
