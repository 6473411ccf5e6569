"""B5 worker, Evidently (runs in .bench/evidently). Prints one JSON line.

    full   <dir>   reference x current
    window <dir>   reference x the 100k new window (Evidently has no stored profile: it recomputes from
                   the raw reference every time)

Two reports, each a `DataDriftPreset` over the 25 columns with the method forced per column
(`per_column_method` / `per_column_threshold`), timed apart and summed:
  tests: numeric "ks" (p <= 0.05 drifts), categorical "chisquare" (p < 0.05 drifts)
  psi:   "psi" on every column (drifts if PSI >= 0.2)
Column types are given explicitly (`DataDefinition`), so integer columns stay numerical. The drift flag
is Evidently's own: the ValueDrift test of the column failed (`Report(..., include_tests=True)`).
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("DO_NOT_TRACK", "1")              # evidently's usage telemetry
os.environ.setdefault("ITERATIVE_DO_NOT_TRACK", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from b5_common import CATEGORICAL, CHI2_ALPHA, COLUMNS, KS_ALPHA, NUMERIC, PSI_ACT, Timer, column_entry, emit, read_frame  # noqa: E402

with Timer() as IMPORT:
    from evidently import DataDefinition, Dataset, Report  # noqa: E402
    from evidently.presets import DataDriftPreset  # noqa: E402

RUNS = {
    "tests": ({**{c: "ks" for c in NUMERIC}, **{c: "chisquare" for c in CATEGORICAL}},
              {**{c: KS_ALPHA for c in NUMERIC}, **{c: CHI2_ALPHA for c in CATEGORICAL}}),
    "psi": ({c: "psi" for c in COLUMNS}, {c: PSI_ACT for c in COLUMNS}),
}
NAME = {"ks": "ks", "chisquare": "chi2", "psi": "psi"}


def run_report(run: str, reference, current) -> tuple[float, dict]:
    methods, thresholds = RUNS[run]
    with Timer() as t:
        report = Report([DataDriftPreset(columns=COLUMNS, per_column_method=methods,
                                         per_column_threshold=thresholds)], include_tests=True)
        snapshot = report.run(current, reference)
        d = snapshot.dict()
    values = {m["config"]["column"]: m["value"] for m in d["metrics"]
              if m["config"].get("type", "").endswith("ValueDrift")}
    failed = {}
    for test in d.get("tests", []):
        params = test.get("metric_config", {}).get("params", {})
        if params.get("type", "").endswith("ValueDrift"):
            failed[params["column"]] = test["status"] == "FAIL"
    out = {}
    for c in COLUMNS:
        m = NAME[methods[c]]
        v = values.get(c)
        v = v.get("value") if isinstance(v, dict) else v
        if m == "psi":
            out[c] = {m: column_entry(m, v, None, failed.get(c))}
        else:   # Evidently reports only the p-value of KS / chi-squared
            out[c] = {m: column_entry(m, None, v, failed.get(c))}
    return t.seconds, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["full", "window"])
    ap.add_argument("data")
    a = ap.parse_args()
    warnings.simplefilter("ignore")      # chisquare's divide-by-zero on categories absent from the reference
    with Timer() as load:
        ref = read_frame(f"{a.data}/reference.parquet")
        cur = read_frame(f"{a.data}/{'current' if a.task == 'full' else 'window'}.parquet")
    with Timer() as wrap:
        dd = DataDefinition(numerical_columns=NUMERIC, categorical_columns=CATEGORICAL)
        reference = Dataset.from_pandas(ref, data_definition=dd)
        current = Dataset.from_pandas(cur, data_definition=dd)
    runs, columns = {}, {c: {} for c in COLUMNS}
    for run in RUNS:
        runs[run], cols = run_report(run, reference, current)
        for c, entries in cols.items():
            columns[c].update(entries)
    import evidently
    emit({"system": "evidently", "version": evidently.__version__, "task": a.task, "load_seconds": load.seconds,
          "import_seconds": IMPORT.seconds, "dataset_seconds": wrap.seconds,
          "seconds": wrap.seconds + sum(runs.values()), "run_seconds": runs, "rows": [len(ref), len(cur)],
          "columns": columns})


if __name__ == "__main__":
    main()
