"""B1, loopstack side: the same point-in-time join through loopstack's public API.

Runs in loopstack's virtualenv. Creates a throw-away project (``Project.init``), applies one
entity, three batch Parquet sources and three views, then times
``project.get_historical_features(entity_df, features)``. Prints one JSON line.

``--mode plain``: the B1 join, ``Last(col)`` (no window) for the 10 columns of each view, view b
with ``ttl="2d"`` -- the same answer Feast must give.
``--mode windowed``: loopstack only; per view Count, Sum, Mean, Max over 1h, 1d and 7d windows
(12 features per view, 36 in all), as of each label's timestamp.

Usage: b1_loopstack.py DATA_DIR --mode plain|windowed --out OUT.parquet
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b1_data import N_FLOAT, TTL, feature_names, load_meta  # noqa: E402

WINDOWS = ("1h", "1d", "7d")


def cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process so far: less sensitive than wall time to
    other jobs on a shared machine."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def definitions(meta: dict, mode: str):
    from loopstack import Count, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Sum

    user = Entity("user", join_key="user_id")
    objects: list = [user]
    refs: list[str] = []
    for v in meta["views"]:
        cols = feature_names(v)
        schema = [Field("user_id", "int64")] + [Field(c, "float64" if i < N_FLOAT else "int64", required=False)
                                               for i, c in enumerate(cols)]
        src = EventSource(f"src_{v}", timestamp="event_timestamp", schema=schema, path=meta["sources"][v])
        if mode == "plain":
            feats = [Last(c, name=c) for c in cols]
            view = FeatureView(f"view_{v}", entity=user, source=src, features=feats, ttl=TTL[v])
        else:
            feats = []
            for w in WINDOWS:
                feats += [Count(window=w, name=f"{v}_count_{w}"),
                          Sum(cols[N_FLOAT], window=w, name=f"{v}_sum_{cols[N_FLOAT]}_{w}"),
                          Mean(cols[0], window=w, name=f"{v}_mean_{cols[0]}_{w}"),
                          Max(cols[1], window=w, name=f"{v}_max_{cols[1]}_{w}")]
            view = FeatureView(f"win_{v}", entity=user, source=src, features=feats)
        objects += [src, view]
        refs += [f"{view.name}:{f.name}" for f in feats]
    return objects, refs


def engine_direct(entity_df, objects):
    """The same retrieval through the offline engine interface (used until Project's is importable)."""
    import pyarrow as pa

    from loopstack import FeatureView
    from loopstack.features.offline.base import SourceData, ViewRequest
    from loopstack.features.offline.duckdb import DuckDBEngine

    engine = DuckDBEngine()
    requests = [ViewRequest(o, tuple((f, f.name) for f in o.features),
                            SourceData(o.source.name, (o.source.path,), o.source.timestamp))
                for o in objects if isinstance(o, FeatureView)]
    table = engine.historical_features(pa.Table.from_pandas(entity_df, preserve_index=False), "event_timestamp",
                                       requests)
    engine.close()
    return table.to_pandas()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--mode", choices=["plain", "windowed"], default="plain")
    p.add_argument("--out", required=True)
    a = p.parse_args()

    t_start = time.perf_counter()
    import duckdb
    import pandas as pd

    import loopstack
    from loopstack import Project

    meta = load_meta(Path(a.data_dir))
    with tempfile.TemporaryDirectory(prefix="b1-loopstack-") as tmp:
        project = Project.init(Path(tmp) / "proj", name="b1", example=False)
        objects, refs = definitions(meta, a.mode)
        project.apply(objects)
        t_setup = time.perf_counter()

        entity_df = pd.read_parquet(meta["labels"])
        api = "Project.get_historical_features"
        if importlib.util.find_spec("loopstack.features.retrieval") is None:
            api = "DuckDBEngine.historical_features"  # Project's retrieval layer not merged yet
        c0, t0 = cpu_seconds(), time.perf_counter()
        if api.startswith("Project"):
            df = project.get_historical_features(entity_df, features=refs)
        else:
            df = engine_direct(entity_df, objects)
        t1 = time.perf_counter()
        cpu_join = cpu_seconds() - c0
        rss_join = peak_rss_bytes()
        project.close()

    df.to_parquet(a.out, index=False)
    print(json.dumps({
        "system": "loopstack" if a.mode == "plain" else "loopstack-windowed",
        "version": loopstack.__version__,
        "duckdb": duckdb.__version__,
        "rows": int(len(df)),
        "columns": int(df.shape[1]),
        "api": api,
        "join_seconds": t1 - t0,
        "join_cpu_seconds": cpu_join,
        "setup_seconds": t_setup - t_start,
        "total_seconds": time.perf_counter() - t_start,
        "peak_rss_join_bytes": rss_join,
    }))


if __name__ == "__main__":
    main()
