"""B1 brute-force reference, to check loopstack's output independently of its engine (small sizes only).

``--mode plain``: pandas ``merge_asof`` (strictly before: ``allow_exact_matches=False``) per view,
then null where ``label_ts - ts > ttl``.
``--mode windowed``: a plain SQL range join (every label row x every event of its user in the
window, then GROUP BY) -- no window functions, no ASOF -- for the same 36 features as
``b1_loopstack.py --mode windowed``. Empty window: Count/Sum 0, Mean/Max null.

Usage: b1_reference.py DATA_DIR --mode plain|windowed --out OUT.parquet
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import duckdb
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b1_data import N_FLOAT, TTL, feature_names, load_meta  # noqa: E402
from b1_loopstack import WINDOWS  # noqa: E402

_US = {"h": 3_600_000_000, "d": 86_400_000_000}


def micros(d: str) -> int:
    return int(d[:-1]) * _US[d[-1]]


def plain(meta: dict) -> pd.DataFrame:
    labels = pd.read_parquet(meta["labels"])
    out = labels.copy()
    left = labels.sort_values("event_timestamp")
    for v in meta["views"]:
        src = pd.read_parquet(meta["sources"][v]).rename(columns={"event_timestamp": "_fts"})
        src = src.sort_values("_fts")
        j = pd.merge_asof(left, src, left_on="event_timestamp", right_on="_fts", by="user_id",
                          allow_exact_matches=False, direction="backward")
        if TTL[v]:
            expired = (j["event_timestamp"] - j["_fts"]) > pd.Timedelta(microseconds=micros(TTL[v]))
            for c in feature_names(v):
                j[c] = j[c].astype("float64" if j[c].dtype.kind == "f" else "Int64").mask(expired)
        j = j.set_index("row_id")
        for c in feature_names(v):
            out[c] = out["row_id"].map(j[c])
    return out


def windowed(meta: dict) -> pd.DataFrame:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"CREATE TABLE labels AS SELECT row_id, user_id, epoch_us(event_timestamp) AS t "
                f"FROM read_parquet('{meta['labels']}')")
    out = con.execute("SELECT row_id FROM labels ORDER BY row_id").df()
    for v in meta["views"]:
        cols = feature_names(v)
        con.execute(f"CREATE OR REPLACE TABLE ev AS SELECT user_id, epoch_us(event_timestamp) AS ts, * "
                    f"EXCLUDE (user_id, event_timestamp) FROM read_parquet('{meta['sources'][v]}')")
        for w in WINDOWS:
            us = micros(w)
            f7, f0, f1 = cols[N_FLOAT], cols[0], cols[1]
            df = con.execute(f"""
                SELECT l.row_id,
                       count(e.ts) AS "{v}_count_{w}",
                       coalesce(sum(e.{f7}), 0) AS "{v}_sum_{f7}_{w}",
                       avg(e.{f0}) AS "{v}_mean_{f0}_{w}",
                       max(e.{f1}) AS "{v}_max_{f1}_{w}"
                FROM labels l LEFT JOIN ev e
                  ON e.user_id = l.user_id AND e.ts >= l.t - {us} AND e.ts < l.t
                GROUP BY l.row_id ORDER BY l.row_id""").df()
            out = out.merge(df, on="row_id", how="left")
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--mode", choices=["plain", "windowed"], default="windowed")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    meta = load_meta(Path(a.data_dir))
    df = plain(meta) if a.mode == "plain" else windowed(meta)
    df.to_parquet(a.out, index=False)


if __name__ == "__main__":
    main()
