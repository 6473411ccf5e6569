"""B1 floor: what merely reading and sorting B1's sources costs on this machine, without any join.

Runs in loopstack's virtualenv, with DuckDB (the engine loopstack uses), in one fresh process:

- ``scan_all``: read every column the B1 join needs (user_id, event_timestamp and the 10 feature
  columns) of the three sources, decoding all of them (a cheap ``sum`` per column);
- ``sort_keys``: for each source, read (user_id, event_timestamp as BIGINT µs) and fully sort them,
  which a sort-based point-in-time join (ASOF) cannot avoid;
- ``floor`` = scan_all + sort_keys: a lower bound for a join that reads Parquet and sorts by key
  (it leaves out the join itself, the label side and the conversion to pandas).

Each is measured ``--repeat`` times; the median wall time and CPU time are printed as one JSON line
and, with ``--save``, merged into .bench/results/b1.json under ``floor``.

Usage: b1_floor.py [--m 10000000] [--repeat 3] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--m", type=int, default=10_000_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--save", action="store_true")
    a = p.parse_args()
    import duckdb
    import pyarrow.parquet as pq

    src_dir = HERE.parent / ".bench" / "data" / f"sources_m{a.m}"
    files = sorted(str(f) for f in src_dir.glob("src_*.parquet"))
    if not files:
        sys.exit(f"no sources in {src_dir}; run b1_pit_join.py first (it generates them)")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for f in files:  # warm the page cache, as b1_pit_join does before every run
        with open(f, "rb") as fh:
            while fh.read(1 << 24):
                pass

    def scan_all() -> None:
        for f in files:
            cols = pq.ParquetFile(f).schema_arrow.names
            aggs = ", ".join(f"sum(epoch_us({c}))" if c == "event_timestamp" else f"sum({c})" for c in cols)
            con.sql(f"SELECT {aggs} FROM read_parquet('{f}')").fetchall()

    def sort_keys() -> None:
        for f in files:
            con.sql(f"SELECT count(*) FROM (SELECT user_id, epoch_us(event_timestamp) AS ts FROM read_parquet('{f}') "
                    "ORDER BY user_id, ts OFFSET 0)").fetchall()

    out: dict = {"m": a.m, "sources": len(files), "repeat": a.repeat, "duckdb": duckdb.__version__,
                 "threads": con.execute("SELECT current_setting('threads')").fetchall()[0][0],
                 "load_before": os.getloadavg()}
    for name, fn in (("scan_all", scan_all), ("sort_keys", sort_keys)):
        walls, cpus = [], []
        for _ in range(a.repeat):
            c0, t0 = _cpu(), time.perf_counter()
            fn()
            walls.append(time.perf_counter() - t0)
            cpus.append(_cpu() - c0)
        out[name] = {"seconds": statistics.median(walls), "cpu_seconds": statistics.median(cpus),
                     "runs": walls}
    out["floor_seconds"] = out["scan_all"]["seconds"] + out["sort_keys"]["seconds"]
    out["load_after"] = os.getloadavg()
    print(json.dumps(out))
    if a.save:
        res_file = HERE.parent / ".bench" / "results" / "b1.json"
        results = json.loads(res_file.read_text()) if res_file.exists() else {"runs": {}, "comparisons": {}}
        results["floor"] = out
        res_file.parent.mkdir(parents=True, exist_ok=True)
        res_file.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
