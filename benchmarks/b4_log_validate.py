"""Prediction-log writer cost (its CPU per record, spent on the serving process's core).

Times `validate_record` on a `predictions` record as the server builds it, without and with a sampled
30-feature vector, and the writer's whole unit of work: `LocalLog.append` of a 500-record batch
(validate, encode, frame, write, fsync) into a fresh local log, as CPU per record.
Usage: python benchmarks/b4_log_validate.py [--n 20000]; compare code versions by running it with
PYTHONPATH pointing at another commit's src/ (git archive REV src | tar -x -C /tmp/REV).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20000)
    a = p.parse_args()
    from loopstack.log.validate import validate_record
    from loopstack.serving.prediction_log import SCHEMA
    rec = {"kind": "prediction", "request_id": "a1b2c3d4e5f6", "ts": int(time.time() * 1e6), "model": "spam",
           "version": 3, "variant": "control", "rung": "model", "status": "ok", "latency_ms": 1.234,
           "output": 0.731, "user_id": "u123", "bucket": 17, "shadow_version": None, "cached": False}
    with_features = dict(rec, features={f"f{i}": float(i) for i in range(30)})
    for name, r in (("metadata only", rec), ("with 30 features", with_features)):
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(a.n):
                validate_record(r, SCHEMA)
            best = min(best, (time.perf_counter() - t) / a.n)
        print(f"{name}: {best * 1e6:.2f} us per record (best of 5 x {a.n:,}; load {os.getloadavg()[0]:.2f})")
    print(f"append of 500-record batches: {append_cpu(rec, a.n) * 1e6:.2f} us CPU per record (best of 5)")


def append_cpu(rec: dict, n: int) -> float:
    """CPU seconds per record of `LocalLog.append` in batches of 500 (the prediction log's batch size), best
    of 5 rounds of `n` records, each record with its own request id and output as the server writes them."""
    from loopstack.log import open_log
    from loopstack.log.base import TopicConfig
    from loopstack.serving.prediction_log import SCHEMA, TOPIC
    with tempfile.TemporaryDirectory() as d:
        log = open_log("local", path=d)
        log.create_topic(TopicConfig(TOPIC, 1, SCHEMA, key_field="model"))
        best = float("inf")
        for _ in range(5):
            batches = [[dict(rec, request_id=f"{b:08x}:{i}", output=i / 500) for i in range(500)]
                       for b in range(max(1, n // 500))]
            t = time.thread_time()
            for batch in batches:
                log.append(TOPIC, batch)
            best = min(best, (time.thread_time() - t) / (500 * len(batches)))
        log.close()
        return best


if __name__ == "__main__":
    main()
