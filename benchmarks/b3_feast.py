"""B3, Feast side: `FeatureStore.materialize(start, end)` of one 10-feature view into Feast's
sqlite or redis online store. Runs in the Feast virtualenv (.bench/feast), never in loopstack's.

Throw-away repo: duckdb offline store over the generated Parquet file, one entity, one FeatureView
(the 10 columns, online=True, no ttl). Prints one JSON line: rows (source rows in range), seconds
of `materialize`, peak RSS.

Usage: b3_feast.py DATA_DIR --online sqlite|redis [--redis HOST:PORT]
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from b3_data import N_FLOAT, feature_names  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("data_dir")
    p.add_argument("--online", choices=["sqlite", "redis"], required=True)
    p.add_argument("--redis", default="127.0.0.1:6379")
    a = p.parse_args()
    meta = json.loads((Path(a.data_dir) / "meta.json").read_text())

    t_start = time.perf_counter()
    import feast
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource, ValueType
    from feast.types import Float64, Int64

    with tempfile.TemporaryDirectory(prefix="b3-feast-") as repo:
        rp = Path(repo)
        (rp / "data").mkdir()
        online = (f"online_store:\n  type: sqlite\n  path: {rp / 'data' / 'online.db'}\n" if a.online == "sqlite"
                  else f"online_store:\n  type: redis\n  connection_string: \"{a.redis}\"\n")
        (rp / "feature_store.yaml").write_text(
            f"project: b3\nprovider: local\nregistry: {rp / 'data' / 'registry.db'}\n{online}"
            "offline_store:\n  type: duckdb\nentity_key_serialization_version: 3\n")
        store = FeatureStore(repo_path=str(rp))
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.INT64)
        src = FileSource(name="src_b3", path=meta["path"], timestamp_field="event_timestamp")
        schema = [Field(name=f, dtype=Float64 if i < N_FLOAT else Int64) for i, f in enumerate(feature_names())]
        view = FeatureView(name="b3_view", entities=[user], ttl=timedelta(0), schema=schema, source=src,
                           online=True)
        store.apply([user, view])
        t_setup = time.perf_counter()
        start = datetime.fromisoformat(meta["start"])
        end = datetime.fromisoformat(meta["end"])
        t0 = time.perf_counter()
        store.materialize(start_date=start, end_date=end, feature_views=["b3_view"])
        t1 = time.perf_counter()
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        # sanity: one online read
        got = store.get_online_features(features=["b3_view:f0", "b3_view:f9"],
                                        entity_rows=[{"user_id": 1}]).to_dict()
    print(json.dumps({"system": f"feast-{a.online}", "version": feast.__version__, "rows": meta["n"],
                      "entities": meta["entities"], "seconds": t1 - t0, "setup_seconds": t_setup - t_start,
                      "rows_per_second": meta["n"] / (t1 - t0), "peak_rss_bytes": rss,
                      "probe": {k: v[0] for k, v in got.items()}}, default=str))


if __name__ == "__main__":
    main()
