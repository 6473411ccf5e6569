"""B1, Feast side: one point-in-time join with Feast's `file` (dask) or `duckdb` offline store.

Runs inside the Feast virtualenv (``.bench/feast/bin/python``), never in loopstack's. Builds a
throw-away Feast repo (feature_store.yaml, local registry, sqlite online store that is never
used), applies one entity and three FeatureViews over the generated Parquet files, then times
``get_historical_features(entity_df, features).to_df()``. Writes the joined frame as Parquet and
prints one JSON line with the timings and the peak RSS reached by the end of the join.

Usage: b1_feast.py DATA_DIR --store file|duckdb --out OUT.parquet
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b1_data import N_FLOAT, TTL, feature_names, load_meta  # noqa: E402


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far: less sensitive than wall time to
    other jobs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def _ttl(text: str | None) -> timedelta:
    if text is None:
        return timedelta(0)  # Feast: 0 means no TTL
    unit = {"s": "seconds", "h": "hours", "d": "days"}[text[-1]]
    return timedelta(**{unit: int(text[:-1])})


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--store", choices=["file", "duckdb"], required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()

    t_start = time.perf_counter()
    import feast
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    meta = load_meta(Path(a.data_dir))
    with tempfile.TemporaryDirectory(prefix="b1-feast-") as repo:
        repo_path = Path(repo)
        (repo_path / "data").mkdir()
        (repo_path / "feature_store.yaml").write_text(
            "project: b1\n"
            "provider: local\n"
            f"registry: {repo_path / 'data' / 'registry.db'}\n"
            "online_store:\n"
            "  type: sqlite\n"
            f"  path: {repo_path / 'data' / 'online.db'}\n"
            "offline_store:\n"
            f"  type: {a.store}\n"
            "entity_key_serialization_version: 3\n"
        )
        store = FeatureStore(repo_path=str(repo_path))
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
        views = []
        for v in meta["views"]:
            source = FileSource(name=f"src_{v}", path=meta["sources"][v], timestamp_field="event_timestamp")
            schema = [Field(name=f, dtype=Float64 if i < N_FLOAT else Int64)
                      for i, f in enumerate(feature_names(v))]
            views.append(FeatureView(name=f"view_{v}", entities=[user], ttl=_ttl(TTL[v]), schema=schema,
                                     source=source, online=False))
        store.apply([user, *views])
        features = [f"view_{v}:{f}" for v in meta["views"] for f in feature_names(v)]
        t_setup = time.perf_counter()

        entity_df = pd.read_parquet(meta["labels"])
        c0, t0 = cpu_seconds(), time.perf_counter()
        df = store.get_historical_features(entity_df=entity_df, features=features).to_df()
        t1 = time.perf_counter()
        cpu_join = cpu_seconds() - c0
        rss_join = peak_rss_bytes()

    df.to_parquet(a.out, index=False)
    print(json.dumps({
        "system": f"feast-{a.store}",
        "version": feast.__version__,
        "rows": int(len(df)),
        "columns": int(df.shape[1]),
        "join_seconds": t1 - t0,
        "join_cpu_seconds": cpu_join,
        "setup_seconds": t_setup - t_start,
        "total_seconds": time.perf_counter() - t_start,
        "peak_rss_join_bytes": rss_join,
    }))


if __name__ == "__main__":
    main()
