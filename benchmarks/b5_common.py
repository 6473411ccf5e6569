"""B5 shared bits for the data generator and the three workers (numpy/pandas/pyarrow only: every worker
runs in its own virtualenv and imports this file through PYTHONPATH=benchmarks).

The same methods and thresholds on every system:
- numeric columns:     KS two-sample test, drift if p < 0.05;  PSI, drift if PSI > 0.2
- categorical columns: chi-squared test,   drift if p < 0.05;  PSI, drift if PSI > 0.2
- Jensen-Shannon distance (base 2), drift if > 0.1: loopstack and NannyML only (Evidently's preset is
  run with KS/chi2 and PSI, the methods the comparison is about).
"""
from __future__ import annotations

import json
import resource
import sys
import time

KS_ALPHA = 0.05
CHI2_ALPHA = 0.05
PSI_ACT = 0.2
JS_ACT = 0.1

N_NUMERIC, N_CATEGORICAL = 20, 5
NUMERIC = [f"num_{i:02d}" for i in range(N_NUMERIC)]
CATEGORICAL = [f"cat_{i}" for i in range(N_CATEGORICAL)]
COLUMNS = NUMERIC + CATEGORICAL

# stat test per column kind: the "test" method (p-value) and the PSI method, as named in the results
TEST_METHOD = {**{c: "ks" for c in NUMERIC}, **{c: "chi2" for c in CATEGORICAL}}

# KS critical value factor c(alpha) of the two-sample test, D_crit = c * sqrt((n + m) / (n m)); used to turn
# NannyML's KS statistic (it reports no p-value) into the same p < 0.05 decision
KS_C_ALPHA_005 = 1.3581


def ks_critical(n: int, m: int, c: float = KS_C_ALPHA_005) -> float:
    return c * ((n + m) / (n * m)) ** 0.5


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def column_entry(method: str, statistic: float | None, p_value: float | None, drift: bool | None,
                 **extra) -> dict:
    def f(v):
        return None if v is None or v != v else float(v)
    return {"method": method, "statistic": f(statistic), "p_value": f(p_value),
            "drift": None if drift is None else bool(drift), **extra}


def emit(result: dict) -> None:
    """The worker's one JSON line on stdout (last line; anything else a library prints goes before it)."""
    result["peak_rss_self_bytes"] = peak_rss_bytes()
    sys.stdout.flush()
    print(json.dumps(result, default=float), flush=True)


class Timer:
    """`with Timer() as t: ...` then t.seconds (perf_counter)."""

    def __enter__(self) -> Timer:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0


def read_frame(path: str):
    """A Parquet file as a pandas DataFrame: what each worker hands its drift library (timed as 'load')."""
    import pandas as pd
    return pd.read_parquet(path)
