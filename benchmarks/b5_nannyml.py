"""B5 worker, NannyML (runs in .bench/nannyml). Prints one JSON line.

    full   <dir>   UnivariateDriftCalculator.fit(reference).calculate(current)
    window <dir>   the same against the 100k new window (NannyML refits on the raw reference)

Methods: numeric "kolmogorov_smirnov" + "jensen_shannon", categorical "chi2" + "jensen_shannon"; NannyML
has no PSI. Chunking: NannyML splits both data sets into chunks and scores every chunk against the whole
reference (reference chunks too, for its default thresholds); `chunk_number=1` makes the analysis data
one chunk, so each column gets one comparison like the other systems (the reference, also one chunk,
is still scored against itself: that cost is NannyML's and is included).

Thresholds: KS reports no p-value, only D, and by default alerts on mean +- 3 std of the reference
chunks; here a `ConstantThreshold` at the two-sample critical value D_crit(alpha=0.05) for the two
sizes gives the same p < 0.05 decision. KS runs NannyML's default `calculation_method="auto"`, which
for references of 10k rows or more is its *estimated* D (10k equal-width bins of the reference range,
not exact). chi2 alerts on p < 0.05 (fixed in NannyML: `chi2_contingency`, the homogeneity test). JS
distance (base 2): `ConstantThreshold(upper=0.1)`; continuous JS bins with numpy's "doane" rule.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

os.environ.setdefault("NML_DISABLE_USAGE_LOGGING", "1")   # NannyML's usage telemetry (segment.io)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from b5_common import CATEGORICAL, COLUMNS, JS_ACT, NUMERIC, Timer, column_entry, emit, ks_critical, read_frame  # noqa: E402

with Timer() as IMPORT:
    import nannyml as nml  # noqa: E402
    from nannyml.thresholds import ConstantThreshold  # noqa: E402

NAME = {"kolmogorov_smirnov": "ks", "chi2": "chi2", "jensen_shannon": "js"}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["full", "window"])
    ap.add_argument("data")
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    with Timer() as load:
        ref = read_frame(f"{a.data}/reference.parquet")
        cur = read_frame(f"{a.data}/{'current' if a.task == 'full' else 'window'}.parquet")
    d_crit = ks_critical(len(ref), len(cur))
    with Timer() as t_fit:
        calc = nml.UnivariateDriftCalculator(
            column_names=COLUMNS, treat_as_numerical=NUMERIC, treat_as_categorical=CATEGORICAL,
            continuous_methods=["kolmogorov_smirnov", "jensen_shannon"], categorical_methods=["chi2", "jensen_shannon"],
            chunk_number=1,
            thresholds={"kolmogorov_smirnov": ConstantThreshold(upper=d_crit),
                        "jensen_shannon": ConstantThreshold(upper=JS_ACT)})
        calc.fit(ref)
    with Timer() as t_calc:
        res = calc.calculate(cur)
        df = res.filter(period="analysis").to_df()
    assert len(df) == 1, f"expected one analysis chunk, got {len(df)}"
    row = df.iloc[0]
    columns: dict = {c: {} for c in COLUMNS}
    for col, method, field in df.columns:
        if col in columns and field == "value":
            m = NAME[method]
            alert = row[(col, method, "alert")]
            columns[col][m] = column_entry(m, row[(col, method, "value")], None, None if alert is None else bool(alert))
    emit({"system": "nannyml", "version": nml.__version__, "task": a.task, "load_seconds": load.seconds,
          "import_seconds": IMPORT.seconds, "seconds": t_fit.seconds + t_calc.seconds, "fit_seconds": t_fit.seconds,
          "calculate_seconds": t_calc.seconds, "ks_d_crit": d_crit, "rows": [len(ref), len(cur)], "columns": columns})


if __name__ == "__main__":
    main()
