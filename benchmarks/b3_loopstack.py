"""B3, loopstack side: `materialize(project, start, end)` of the B3 source into SQLite or Redis.

Runs in loopstack's virtualenv. Throw-away project (online backend from --online), one entity, one
batch Parquet source and one view:

``--mode plain``: ``Last(f)`` for the 10 columns (what Feast materializes: the latest value per
entity). ``--mode windowed`` (loopstack only): Count, Sum(f5), Mean(f0), Max(f1) over 1h, 1d and
7d windows (12 features), whose tiles are built from every event.

Prints one JSON line: rows read, seconds of `materialize`, rows/s, peak RSS, a probe read.

Usage: b3_loopstack.py DATA_DIR --online sqlite|redis [--redis-url URL] [--mode plain|windowed]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b3_data import N_FLOAT, feature_names  # noqa: E402

WINDOWS = ("1h", "1d", "7d")


def definitions(meta: dict, mode: str):
    from loopstack import Count, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Sum
    user = Entity("user", join_key="user_id")
    cols = feature_names()
    schema = [Field("user_id", "int64")] + [Field(c, "float64" if i < N_FLOAT else "int64", required=False)
                                           for i, c in enumerate(cols)]
    src = EventSource("src_b3", timestamp="event_timestamp", schema=schema, path=meta["path"])
    if mode == "plain":
        feats = [Last(c, name=c) for c in cols]
    else:
        feats = []
        for w in WINDOWS:
            feats += [Count(window=w, name=f"count_{w}"), Sum(cols[N_FLOAT], window=w, name=f"sum_{w}"),
                      Mean(cols[0], window=w, name=f"mean_{w}"), Max(cols[1], window=w, name=f"max_{w}")]
    view = FeatureView("b3_view", entity=user, source=src, features=feats)
    return [user, src, view], [f"b3_view:{f.name}" for f in feats]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--online", choices=["sqlite", "redis"], required=True)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    p.add_argument("--mode", choices=["plain", "windowed"], default="plain")
    p.add_argument("--chunk-rows", type=int, default=None)
    a = p.parse_args()
    meta = json.loads((Path(a.data_dir) / "meta.json").read_text())

    t_start = time.perf_counter()
    import loopstack
    from loopstack.features.materialize import materialize
    from loopstack.project import Project

    with tempfile.TemporaryDirectory(prefix="b3-loopstack-") as tmp:
        root = Path(tmp) / "proj"
        Project.init(root, name="b3", example=False)
        online = (f"online:\n  backend: redis\n  url: {a.redis_url}\n  prefix: b3{uuid.uuid4().hex[:8]}\n"
                  if a.online == "redis" else "online:\n  backend: sqlite\n  path: data/online.db\n")
        (root / "loopstack.yaml").write_text(f"name: b3\n{online}")
        project = Project(root)
        objects, refs = definitions(meta, a.mode)
        project.apply(objects)
        t_setup = time.perf_counter()
        kw = {} if a.chunk_rows is None else {"chunk_rows": a.chunk_rows}
        t0 = time.perf_counter()
        res = materialize(project, meta["start"], meta["end"], progress=False, **kw)
        t1 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        got = project.get_online_features(refs[:1] + refs[-1:], [{"user_id": 1}])
        if a.online == "redis":
            project.online_store.clear("")
        project.online_store.close()
    print(json.dumps({"system": f"loopstack-{a.mode}-{a.online}" if a.mode == "windowed" else f"loopstack-{a.online}",
                      "version": loopstack.__version__, "rows": res.rows, "entities": meta["entities"],
                      "chunks": res.views["b3_view"].chunks, "seconds": t1 - t0, "setup_seconds": t_setup - t_start,
                      "rows_per_second": res.rows / (t1 - t0), "peak_rss_bytes": rss,
                      "probe": got.rows[0]}, default=str))


if __name__ == "__main__":
    main()
