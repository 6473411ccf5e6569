"""B2, loopstack side: load the online store, then time in-process online reads.

Runs in loopstack's virtualenv. The project folder (``--project``) holds one entity, two batch
Parquet sources and two views: ``plain`` (``Last(f)`` of the ten columns: the latest value, what
Feast serves) and ``windowed`` (Count/Sum/Mean/Max over 1h/1d/7d, ten features, loopstack only).
The online backend is chosen with the usual overrides (``LOOPSTACK_ONLINE__BACKEND``,
``LOOPSTACK_ONLINE__URL``), set by the driver.

``load``: ``loopstack.features.materialize.materialize(project, start, end)`` of both views (the
public batch path: DuckDB reads the sources, chunks go through ``OnlineFeatures.apply_events``).
``read``: for each case (view x API x batch size), a warm-up, then ``--requests`` sequential
requests with random entity ids, each timed with ``perf_counter_ns``. Every case draws its own ids
(``CASE_SEEDS``: a case never re-reads the pages an earlier case of the same process touched; Feast's
case uses the ``plain``/``service`` seed, so it gets the same ids as that case). APIs:
``project``: ``Project.get_online_features`` (what users call); ``service``: the
``OnlineFeatures`` instance held across calls (what the HTTP server calls); ``--project-first``
times ``project`` before ``service`` (the driver alternates it across repeats). Prints one JSON line.

Usage: b2_loopstack.py load|read --project DIR --data DIR [--requests N] [--requests-100 N] [--project-first]
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b2_data import FEATURES, N_FLOAT, T_END_US, load_meta, request_keys, summarize  # noqa: E402

WINDOWED = [("count", None, "1h"), ("count", None, "1d"), ("count", None, "7d"), ("sum", "f7", "1d"),
            ("sum", "f7", "7d"), ("mean", "f0", "1d"), ("mean", "f0", "7d"), ("max", "f1", "1h"),
            ("max", "f1", "1d"), ("max", "f1", "7d")]
# request-id seed of each (view, API) case (b2_data.request_keys also mixes in the batch size, so 1x10 and
# 100x10 differ too); b2_feast.py's one case uses CASE_SEEDS["plain", "service"] (the driver passes it)
CASE_SEEDS = {("plain", "service"): 11, ("plain", "project"): 12, ("windowed", "service"): 13,
              ("windowed", "project"): 14}


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def definitions(meta: dict):
    from loopstack import Count, Entity, EventSource, FeatureView, Field, Last, Max, Mean, Sum

    user = Entity("user", join_key="user_id")
    schema = [Field("user_id", "int64")] + [Field(f, "float64" if i < N_FLOAT else "int64", required=False)
                                           for i, f in enumerate(FEATURES)]
    plain_src = EventSource("plain_src", timestamp="event_timestamp", schema=schema, path=meta["plain"])
    ev_src = EventSource("events_src", timestamp="event_timestamp", schema=schema, path=meta["events_path"])
    plain = FeatureView("plain", entity=user, source=plain_src, features=[Last(f, name=f) for f in FEATURES])
    cls = {"count": Count, "sum": Sum, "mean": Mean, "max": Max}
    feats = [cls[fn](window=w, name=f"count_{w}") if col is None else cls[fn](col, window=w, name=f"{fn}_{col}_{w}")
             for fn, col, w in WINDOWED]
    windowed = FeatureView("windowed", entity=user, source=ev_src, features=feats)
    return [user, plain_src, ev_src, plain, windowed]


def refs(view: str) -> list[str]:
    if view == "plain":
        return [f"plain:{f}" for f in FEATURES]
    return [f"windowed:count_{w}" if col is None else f"windowed:{fn}_{col}_{w}" for fn, col, w in WINDOWED]


def time_calls(call, keys: np.ndarray, warmup: int) -> dict:
    rows = [[{"user_id": int(k)} for k in req] for req in keys]
    for r in rows[:warmup]:
        call(r)
    rows = rows[warmup:]
    out = np.empty(len(rows), dtype=np.int64)
    cpu = np.empty(len(rows), dtype=np.int64)
    gc.collect()
    gc.freeze()  # the harness's request lists and all loaded so far: same in both workers (B2 docs)
    pc, tc = time.perf_counter_ns, time.process_time_ns
    t0 = pc()
    for i, r in enumerate(rows):
        c, s = tc(), pc()
        call(r)
        out[i] = pc() - s
        cpu[i] = tc() - c
    return summarize(out, (pc() - t0) / 1e9, cpu)


def cmd_load(project, meta: dict) -> dict:
    from loopstack.features.materialize import materialize

    project.apply(definitions(meta))
    start, end = meta["t_end_us"] - 40 * 86_400_000_000, meta["t_end_us"]
    out = {}
    for view in ("plain", "windowed"):
        t0 = time.perf_counter()
        res = materialize(project, start, end, views=[view], progress=False, chunk_rows=200_000)
        secs = time.perf_counter() - t0
        out[view] = {"rows": res.rows, "seconds": secs, "rows_per_second": res.rows / secs if secs else None}
    return out


def cmd_read(project, meta: dict, a) -> dict:
    n = meta["n"]
    online = project.online  # the OnlineFeatures the project holds (views read from the registry once)
    cases = {}
    for view in ("plain", "windowed"):
        feats = refs(view)
        as_of = None if view == "plain" else T_END_US  # windows as of the data's end; plain: now (default)
        for api in (("project", "service") if a.project_first else ("service", "project")):
            fn = (online.get_online_features if api == "service" else project.get_online_features)
            for batch, nreq in ((1, a.requests), (100, a.requests_100)):
                if view == "windowed" and api == "project" and batch == 100:
                    continue
                warm = max(200, nreq // 10) if batch == 1 else max(20, nreq // 10)
                keys = request_keys(n, nreq + warm, batch, seed=CASE_SEEDS[view, api])
                cases[f"{view}|{api}|{batch}"] = time_calls(
                    lambda r, fn=fn, feats=feats, as_of=as_of: fn(feats, r, as_of), keys, warm)
    # answers for a fixed sample, compared with Feast's by the driver
    sample = [int(k) for k in request_keys(n, 1, 200, seed=7)[0]]
    resp = online.get_online_features(refs("plain"), [{"user_id": k} for k in sample])
    answers = {str(k): [row[f] for f in FEATURES] for k, row in zip(sample, resp.rows)}
    return {"cases": cases, "answers": answers, "order": list(cases)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["load", "read"])
    p.add_argument("--project", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--requests", type=int, default=10_000, help="timed requests for 1 entity x 10 features")
    p.add_argument("--requests-100", type=int, default=2_000, help="timed requests for 100 entities x 10 features")
    p.add_argument("--project-first", action="store_true",
                   help="time Project.get_online_features before OnlineFeatures (default: after)")
    a = p.parse_args()

    import loopstack
    from loopstack import Project

    meta = load_meta(Path(a.data))
    root = Path(a.project)
    project = Project.init(root, name="b2", example=False) if not (root / "loopstack.yaml").exists() else Project(root)
    t0 = time.perf_counter()
    res = cmd_load(project, meta) if a.mode == "load" else cmd_read(project, meta, a)
    res.update({"system": "loopstack", "backend": project.config.online.backend, "version": loopstack.__version__,
                "seconds": time.perf_counter() - t0, "peak_rss_bytes": peak_rss_bytes()})
    project.close()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
