"""Prediction-log record validation cost (the log writer's CPU per record, on the serving process's core).

Times `validate_record` on a `predictions` record as the server builds it, without and with a sampled
30-feature vector. Usage: python benchmarks/b4_log_validate.py [--n 20000]
"""
from __future__ import annotations

import argparse
import os
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


if __name__ == "__main__":
    main()
