"""B3 data: one Parquet batch source of N events, N/10 entities, 10 feature columns (cached).

``.bench/data/b3_<N>/events.parquet``: columns user_id (int64), event_timestamp (UTC, µs, spread
over 30 days, not sorted), f0..f4 (float64, 5 % nulls), f5..f9 (int64). Written in row groups of
1M rows, so generating 1e7 rows stays within a few hundred MB.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

N_FEATURES, N_FLOAT = 10, 5
START = datetime(2026, 1, 1, tzinfo=timezone.utc)
DAYS = 30
ROW_GROUP = 1_000_000


def feature_names() -> list[str]:
    return [f"f{i}" for i in range(N_FEATURES)]


def data_dir(root: Path, n: int) -> Path:
    return root / f"b3_{n}"


def generate(root: Path, n: int, seed: int = 3) -> dict:
    d = data_dir(root, n)
    meta_path = d / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    d.mkdir(parents=True, exist_ok=True)
    path = d / "events.parquet"
    rng = np.random.default_rng(seed)
    n_entities = max(1, n // 10)
    start_us = int(START.timestamp() * 1_000_000)
    span_us = DAYS * 86_400 * 1_000_000
    schema = pa.schema([("user_id", pa.int64()), ("event_timestamp", pa.timestamp("us", tz="UTC"))]
                       + [(c, pa.float64() if i < N_FLOAT else pa.int64()) for i, c in enumerate(feature_names())])
    with pq.ParquetWriter(str(path) + ".tmp", schema) as w:
        for lo in range(0, n, ROW_GROUP):
            m = min(ROW_GROUP, n - lo)
            cols = [pa.array(rng.integers(0, n_entities, m), pa.int64()),
                    pa.array(start_us + rng.integers(0, span_us, m), pa.timestamp("us", tz="UTC"))]
            for i in range(N_FEATURES):
                if i < N_FLOAT:
                    v = rng.normal(0, 1, m)
                    cols.append(pa.array(v, pa.float64(), mask=rng.random(m) < 0.05))
                else:
                    cols.append(pa.array(rng.integers(0, 1000, m), pa.int64()))
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=ROW_GROUP)
    Path(str(path) + ".tmp").rename(path)
    meta = {"n": n, "entities": n_entities, "path": str(path.resolve()), "start": START.isoformat(),
            "end": datetime.fromtimestamp(START.timestamp() + DAYS * 86_400 + 1, timezone.utc).isoformat()}
    meta_path.write_text(json.dumps(meta))
    return meta


if __name__ == "__main__":
    import sys
    for a in sys.argv[1:]:
        print(generate(Path(".bench/data"), int(float(a))))
