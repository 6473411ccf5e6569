"""B2, Feast side: materialize Feast's online store, then time in-process online reads.

Runs inside the Feast virtualenv (``.bench/feast/bin/python``). ``--repo`` is a Feast repo folder
this script creates (feature_store.yaml, local registry): one entity ``user`` (join key
``user_id``) and one FeatureView ``plain`` of the ten columns (no TTL) over ``plain.parquet``.
``--online sqlite`` uses Feast's sqlite online store (a file in the repo), ``--online redis``
its redis online store at ``--redis`` (``host:port,db=N``). The duckdb offline store reads the
Parquet file for ``materialize``.

``load``: ``store.materialize(start, end)``. ``read``: a warm-up, then ``--requests`` sequential
``store.get_online_features(features, entity_rows).to_dict()`` calls with random entity ids
(``--seed``; the driver passes the seed of loopstack's ``plain``/``service`` case, so both systems
read the same ids in that case), each timed. Prints one JSON line.

Usage: b2_feast.py load|read --repo DIR --data DIR --online sqlite|redis [--redis HOST:PORT,db=1] [--seed S]
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b2_data import FEATURES, N_FLOAT, load_meta, request_keys, summarize  # noqa: E402

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def write_repo(repo: Path, online: str, redis: str | None) -> None:
    (repo / "data").mkdir(parents=True, exist_ok=True)
    store = (f"online_store:\n  type: sqlite\n  path: {repo / 'data' / 'online.db'}\n" if online == "sqlite"
             else f"online_store:\n  type: redis\n  connection_string: \"{redis}\"\n")
    (repo / "feature_store.yaml").write_text(
        "project: b2\nprovider: local\n"
        f"registry: {repo / 'data' / 'registry.db'}\n" + store +
        "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n")


def objects(meta: dict):
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
    src = FileSource(name="plain_src", path=meta["plain"], timestamp_field="event_timestamp")
    schema = [Field(name=f, dtype=Float64 if i < N_FLOAT else Int64) for i, f in enumerate(FEATURES)]
    view = FeatureView(name="plain", entities=[user], ttl=timedelta(0), schema=schema, source=src, online=True)
    return [user, view]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "read"])
    p.add_argument("--repo", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--online", choices=["sqlite", "redis"], required=True)
    p.add_argument("--redis", default=None, help="Feast connection string, e.g. 127.0.0.1:6379,db=1")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--requests-100", type=int, default=2_000)
    p.add_argument("--seed", type=int, default=11,
                   help="request-id seed (b2_loopstack.CASE_SEEDS['plain', 'service'] = 11: the same ids)")
    a = p.parse_args()

    import feast
    from feast import FeatureStore

    meta = load_meta(Path(a.data))
    repo = Path(a.repo).resolve()
    if a.mode == "load":
        write_repo(repo, a.online, a.redis)
    store = FeatureStore(repo_path=str(repo))
    refs = [f"plain:{f}" for f in FEATURES]
    t0 = time.perf_counter()
    out: dict = {}
    if a.mode == "load":
        store.apply(objects(meta))
        end = _EPOCH + timedelta(microseconds=meta["t_end_us"])
        t1 = time.perf_counter()
        store.materialize(start_date=end - timedelta(days=40), end_date=end)
        secs = time.perf_counter() - t1
        out["plain"] = {"rows": meta["n"], "seconds": secs, "rows_per_second": meta["n"] / secs}
    else:
        n = meta["n"]
        cases = {}
        for batch, nreq in ((1, a.requests), (100, a.requests_100)):
            warm = max(200, nreq // 10) if batch == 1 else max(20, nreq // 10)
            keys = request_keys(n, nreq + warm, batch, seed=a.seed)
            rows = [[{"user_id": int(k)} for k in req] for req in keys]
            for r in rows[:warm]:
                store.get_online_features(features=refs, entity_rows=r).to_dict()
            rows = rows[warm:]
            lat = np.empty(len(rows), dtype=np.int64)
            cpu = np.empty(len(rows), dtype=np.int64)
            gc.collect()
            gc.freeze()  # the harness's request lists and all loaded so far: same in both workers (B2 docs)
            pc, tc = time.perf_counter_ns, time.process_time_ns
            w0 = pc()
            for i, r in enumerate(rows):
                c, s = tc(), pc()
                store.get_online_features(features=refs, entity_rows=r).to_dict()
                lat[i] = pc() - s
                cpu[i] = tc() - c
            cases[f"plain|feast|{batch}"] = summarize(lat, (pc() - w0) / 1e9, cpu)
        sample = [int(k) for k in request_keys(n, 1, 200, seed=7)[0]]
        d = store.get_online_features(features=refs, entity_rows=[{"user_id": k} for k in sample]).to_dict()
        out["cases"] = cases
        out["answers"] = {str(k): [d[f][i] for f in FEATURES] for i, k in enumerate(sample)}
    out.update({"system": "feast", "backend": a.online, "version": feast.__version__,
                "seconds": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes()})
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
