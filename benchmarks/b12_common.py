"""B12 workload definition shared by both workers (standard library only: it is imported by the
loopstack worker in .venv and by the MLflow worker in .bench/mlflow).

Log task: 1 run, KEYS metric keys x STEPS steps, values from a seeded generator.
Search task: N runs, each with 3 params and 3 metrics (one point each), seeded; then the queries of
`queries()` (a filter on a metric and a param, ordered by a metric, max_results 100).
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import sys
from pathlib import Path

LRS = ("0.01", "0.05", "0.1", "0.2")
MAX_RESULTS = 100


def metric_value(k: int, step: int) -> float:
    return 1.0 / (step + 1) + k * 0.001 + (step % 7) * 1e-6


def run_spec(i: int) -> tuple[str, dict, dict]:
    """(run name, params, metrics) of search run i; the same in both systems."""
    rng = random.Random(1000 + i)
    params = {"lr": LRS[rng.randrange(4)], "depth": str(rng.randrange(3, 12)), "optimizer": rng.choice(["adam", "sgd"])}
    metrics = {"auc": rng.uniform(0.5, 1.0), "loss": rng.uniform(0.0, 2.0), "pr_auc": rng.uniform(0.1, 0.9)}
    return f"r{i:06d}", params, metrics


def queries(n: int) -> list[tuple[str, list[str]]]:
    """n (filter, order_by) pairs in the same language for both systems."""
    out = []
    for j in range(n):
        t = (0.6, 0.7, 0.8, 0.9)[j % 4]
        lr = LRS[(j // 4) % 4]
        out.append((f"metrics.auc > {t} and params.lr = '{lr}'", ["metrics.auc DESC"]))
    return out


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def emit(result: dict) -> None:
    result["peak_rss_self_bytes"] = peak_rss_bytes()
    print(json.dumps(result), flush=True)
    sys.stdout.flush()


def worker_parser() -> argparse.ArgumentParser:
    """The command line both B12 workers (loopstack, MLflow) accept: a task, a folder and the workload size."""
    p = argparse.ArgumentParser()
    p.add_argument("task", choices=["log", "create", "search"])
    p.add_argument("dir", type=Path)
    p.add_argument("--keys", type=int, default=10)
    p.add_argument("--steps", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=10_000)
    p.add_argument("--queries", type=int, default=16)
    return p
