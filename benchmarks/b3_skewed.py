"""B3, one hot entity: `materialize` of the 1e6-event B3 source with every event on one entity, into a
view of B3's windowed features plus one plain field (so nothing is folded: every event reaches Python).

Shows that the windowed bulk path's memory follows `chunk_rows`, not the biggest entity (an entity with
more events than a batch is applied in pieces). Prints one JSON line per run: seconds, rows/s, peak RSS.

    python benchmarks/b3_skewed.py                  # builds .bench/data/b3_hot from b3_1000000 if missing
    PYTHONPATH=<other src> python benchmarks/b3_skewed.py   # the same with another version of the code
"""
from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = HERE.parent / ".bench" / "data"


def hot_data() -> dict:
    """B3's 1e6 events with every user_id set to 1 (cached in .bench/data/b3_hot)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    import b3_data
    d = DATA / "b3_hot"
    if not (d / "meta.json").exists():
        src = Path(b3_data.generate(DATA, 1_000_000)["path"])
        t = pq.read_table(src)
        t = t.set_column(0, "user_id", pa.array(np.ones(t.num_rows, dtype=np.int64)))
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, d / "events.parquet")
        meta = json.loads((src.parent / "meta.json").read_text())
        meta.update(path=str((d / "events.parquet").resolve()), entities=1)
        (d / "meta.json").write_text(json.dumps(meta))
    return json.loads((d / "meta.json").read_text())


def main() -> None:
    from b3_loopstack import definitions

    from loopstack import FeatureView, Last
    from loopstack.features.materialize import materialize
    from loopstack.project import Project
    meta = hot_data()
    with tempfile.TemporaryDirectory(prefix="b3-skewed-") as tmp:
        root = Path(tmp) / "proj"
        Project.init(root, name="b3", example=False)
        (root / "loopstack.yaml").write_text("name: b3\nonline:\n  backend: sqlite\n  path: data/online.db\n")
        p = Project(root)
        objs, _ = definitions(meta, "windowed")
        v = objs[-1]
        objs[-1] = FeatureView(v.name, entity=v.entity, source=v.source,
                               features=[*v.features, Last("f2", name="last_f2")])   # a plain field: no folding
        p.apply(objs)
        t = time.perf_counter()
        res = materialize(p, meta["start"], meta["end"], progress=False)
        sec = time.perf_counter() - t
        p.online_store.close()
    print(json.dumps({"rows": res.rows, "seconds": round(sec, 2), "rows_per_second": round(res.rows / sec),
                      "chunks": res.views["b3_view"].chunks,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10}))


if __name__ == "__main__":
    main()
