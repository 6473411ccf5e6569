"""Prediction-log records and metrics of one predict call: records built from a shared template for plain
model answers must be exactly what the per-instance rule gives (metadata for all, features for the sample,
errors and non-model rungs)."""
from __future__ import annotations

from loopstack.serving.answers import Answer, Request, Unavailable
from loopstack.serving.batcher import QueueFull
from loopstack.serving.metrics import ServingMetrics
from loopstack.serving.prediction_log import sampled
from loopstack.serving.records import records
from loopstack.serving.router import Assignment

COLS = ["a", "b"]


def reference(name: str, req: Request, ans, ts: int, lat_ms: float, rate: float) -> dict | None:
    """The rule of docs/serving.md, one instance at a time."""
    status = "ok"
    if isinstance(ans, BaseException):
        ans = getattr(ans, "answer", None)
        if ans is None:
            return None
        status = "error"
    a = ans.assignment
    rec = {"kind": "prediction", "request_id": ans.request_id, "ts": ts, "model": name, "version": ans.version,
           "variant": ans.variant, "rung": ans.rung, "status": status, "latency_ms": lat_ms,
           "output": ans.prediction, "user_id": req.user_id, "bucket": a.bucket if a else None,
           "shadow_version": a.shadow_version if a else None, "cached": ans.cached}
    if ans.failures:
        rec["failures"] = ans.failures
    if status == "error":
        rec["error"] = "; ".join(ans.failures)
    if status == "error" or ans.rung != "model" or sampled(ans.request_id, rate):
        rec["features"] = dict(zip(ans.columns, ans.vector or []))
    return rec


def test_records_equal_the_per_instance_rule_and_metrics_count_each_label_set():
    prod, canary = Assignment("production", 2, None, -1), Assignment("canary", 3, 4, 17)
    reqs, answers = [], []
    for i in range(300):
        rid = f"req:{i}"
        user = None if i < 200 else "u-1"
        a = prod if i < 200 else canary
        reqs.append(Request({}, {"a": float(i)}, user, rid))
        if i == 250:
            answers.append(Answer(0.0, 2, a.variant, "fallback", rid, False, (float(i), 1.0), a,
                                  ["model (v3): boom"], COLS))
        elif i == 251:
            err = Unavailable("every rung failed")
            err.answer = Answer(None, 3, a.variant, "model", rid, vector=(float(i), 1.0), assignment=a,  # type: ignore
                                failures=["model (v3): boom", "fallback (v2): boom"], columns=COLS)
            answers.append(err)
        elif i == 252:
            answers.append(QueueFull("full", 1.0))    # not a prediction: no record
        else:
            answers.append(Answer(i / 300, a.version, a.variant, "model", rid, i == 260, (float(i), 1.0), a, [],
                                  COLS))
    m = ServingMetrics()
    recs = records("spam", reqs, answers, 0.0123, 0.05, m)
    assert len(recs) == 299
    ts = recs[0]["ts"]
    want = [r for r in (reference("spam", q, a, ts, 12.3, 0.05) for q, a in zip(reqs, answers)) if r is not None]
    assert recs == want
    assert [list(r) for r in recs] == [list(r) for r in want]            # the same keys in the same order
    assert 0 < sum("features" in r for r in recs[:200]) < 40              # a 5 % sample of plain answers
    assert len({id(r) for r in recs}) == len(recs)                        # no record shared between instances

    def count(*labels: str) -> float:
        return m.requests.labels("spam", *labels)._value.get()
    assert count("2", "production", "model", "ok") == 200
    assert count("3", "canary", "model", "ok") == 97 and count("2", "canary", "fallback", "ok") == 1
    assert m.rungs.labels("spam", "model")._value.get() == 297
