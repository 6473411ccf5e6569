"""B5 worker, loopstack (runs in loopstack's own environment). Prints one JSON line.

    full    <dir>            DataDriftDetector(psi, ks, chi2, js).fit(reference).score(current): exact KS
    profile <dir> <out.json> one-time cost: profile the reference and store it (Profile.to_dict -> JSON)
    window  <dir> <in.json>  the check: load the stored profile, profile the 100k window, score_profile
                             (KS is then the binned approximation: no raw reference values exist)

Data are read into pandas DataFrames first (timed apart as `load_seconds`, the same for every system);
`seconds` is the drift work alone.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from b5_common import CATEGORICAL, COLUMNS, JS_ACT, KS_ALPHA, PSI_ACT, Timer, column_entry, emit, read_frame  # noqa: E402

with Timer() as IMPORT:   # untimed in the results, like the peers' imports; scipy.stats is imported lazily by
    import scipy.stats  # noqa: F401,E402  loopstack's KS p-value for n_eff <= 10k: a process start-up cost

    from loopstack.monitoring import DataDriftDetector, Profile, score_profile  # noqa: E402

METHODS = ("psi", "ks", "chi2", "js")
THRESHOLDS = {"psi": (0.1, PSI_ACT), "js": (JS_ACT / 2, JS_ACT), "ks_alpha": KS_ALPHA, "chi2_alpha": KS_ALPHA}
BINS = 10


def columns_of(drift) -> dict:
    out = {}
    for report in drift:
        out[report.column] = {m: column_entry(m, r.statistic, r.p_value, r.drifted, approximate=r.approximate)
                              for m, r in report.results.items()}
    return out


def full(d: str) -> dict:
    with Timer() as load:
        ref = read_frame(f"{d}/reference.parquet")
        cur = read_frame(f"{d}/current.parquet")
    with Timer() as fit:
        det = DataDriftDetector(COLUMNS, METHODS, THRESHOLDS, categorical=CATEGORICAL, bins=BINS).fit(ref)
    with Timer() as score:
        drift = det.score(cur)
    return {"task": "full", "load_seconds": load.seconds, "seconds": fit.seconds + score.seconds,
            "fit_seconds": fit.seconds, "score_seconds": score.seconds, "rows": [len(ref), len(cur)],
            "columns": columns_of(drift)}


def profile(d: str, out: str) -> dict:
    with Timer() as load:
        ref = read_frame(f"{d}/reference.parquet")
    with Timer() as fit:
        prof = Profile(columns=COLUMNS, categorical=CATEGORICAL, bins=BINS).fit(ref)
    with Timer() as store:
        with open(out, "w") as f:
            json.dump(prof.to_dict(), f)
    return {"task": "profile", "load_seconds": load.seconds, "seconds": fit.seconds + store.seconds,
            "fit_seconds": fit.seconds, "store_seconds": store.seconds, "profile_bytes": os.path.getsize(out),
            "rows": [len(ref)]}


def window(d: str, stored: str) -> dict:
    with Timer() as load:
        win = read_frame(f"{d}/window.parquet")
    with Timer() as t_read:
        with open(stored) as f:
            reference = Profile.from_dict(json.load(f))
    with Timer() as t_prof:
        current = reference.empty().update(win)
    with Timer() as t_score:
        drift = score_profile(reference, current, columns=COLUMNS, methods=METHODS, thresholds=THRESHOLDS)
    return {"task": "window", "load_seconds": load.seconds,
            "seconds": t_read.seconds + t_prof.seconds + t_score.seconds, "read_profile_seconds": t_read.seconds,
            "profile_window_seconds": t_prof.seconds, "compare_seconds": t_score.seconds,
            "rows": [reference.n_rows, len(win)], "columns": columns_of(drift)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["full", "profile", "window"])
    ap.add_argument("data")
    ap.add_argument("profile_json", nargs="?")
    a = ap.parse_args()
    if a.task == "full":
        res = full(a.data)
    elif a.task == "profile":
        res = profile(a.data, a.profile_json)
    else:
        res = window(a.data, a.profile_json)
    import loopstack
    res["system"], res["version"] = "loopstack", getattr(loopstack, "__version__", None)
    res["import_seconds"] = IMPORT.seconds
    emit(res)


if __name__ == "__main__":
    main()
