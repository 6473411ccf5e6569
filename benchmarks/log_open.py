"""The cost of opening a long log partition: a new `LocalLog`'s first append to a topic whose active segment
already holds many records (what every process that starts on an existing log pays once: a stream consumer,
a server's prediction log, a CLI reader).

Fills a temporary local log with `--batches` appends of 500 prediction-log records (one partition, the
default segment size), then opens it again and times one 10-record append, counting `os.stat` calls (the
partition finds the active segment's end from its sparse index: the count must not grow with the index).

    python benchmarks/log_open.py                 # 300 x 500 records
    PYTHONPATH=/path/to/older/src python benchmarks/log_open.py    # the same against other code
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args()
    from loopstack.log.base import TopicConfig
    from loopstack.log.local import LocalLog
    from loopstack.serving.prediction_log import SCHEMA, TOPIC
    rec = {"kind": "prediction", "request_id": "r:1", "ts": 1765000000000000, "model": "m", "version": 1,
           "variant": "production", "rung": "model", "status": "ok", "latency_ms": 1.2, "output": 0.5,
           "user_id": None, "bucket": None, "shadow_version": None, "cached": False}
    with tempfile.TemporaryDirectory(prefix="log-open-") as d:
        log = LocalLog(d)
        log.create_topic(TopicConfig(TOPIC, 1, SCHEMA, key_field="model"))
        for i in range(a.batches):
            log.append(TOPIC, [dict(rec, request_id=f"r:{i}:{j}") for j in range(500)])
        real, calls = os.stat, [0]

        def counting(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
            calls[0] += 1
            return real(path, *args, **kwargs)

        times, counts = [], []
        for r in range(a.repeat):
            calls[0] = 0
            os.stat = counting
            try:
                t0 = time.perf_counter()
                LocalLog(d).append(TOPIC, [dict(rec, request_id=f"x:{r}:{j}") for j in range(10)])
                times.append((time.perf_counter() - t0) * 1e3)
            finally:
                os.stat = real
            counts.append(calls[0])
        times.sort()
        print(json.dumps({"records_in_segment": a.batches * 500, "first_append_ms_median": round(times[len(times) // 2], 2),
                          "first_append_ms": [round(t, 2) for t in times], "stat_calls": counts}))


if __name__ == "__main__":
    main()
