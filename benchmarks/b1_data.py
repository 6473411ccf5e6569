"""B1 data: a deterministic generator of feature sources and a label (entity) frame, as Parquet.

Layout for one size (N labels, M feature rows per source), in ``<root>/n<N>_m<M>/``:

- ``src_a.parquet``, ``src_b.parquet``, ``src_c.parquet``: M rows each, columns
  ``user_id`` (int64), ``event_timestamp`` (timestamp[us, UTC]) and ten features
  ``<v>_f0 .. <v>_f9`` (f0-f6 float64, f7-f9 int64), about 5 % nulls in every feature column.
  Rows are written in event-time order, as a log archive would be.
- ``labels.parquet``: N rows, ``row_id`` (int64, 0..N-1), ``user_id``, ``event_timestamp``.
- ``meta.json``: sizes, seed, time range, entity counts.

Choices that make Feast (``feature_ts <= label_ts``) and loopstack (``feature_ts < label_ts``)
give the same answer on this data:
- feature timestamps are on even microseconds, label timestamps on odd ones, so no label time
  equals any feature time, and no label is ever exactly ``ttl`` after an event (TTLs are whole
  seconds) -- although both systems agree that an event exactly ttl old is still valid;
- (user_id, event_timestamp) pairs are unique within every source (no ties to break), and unique
  within the labels.

Entities without history exist: sources draw users from ``[0, E)`` (view b skips every 7th user,
view c every 5th), labels draw from ``[0, 1.05 E)``. ``E = max(1000, M // 20)``: about 20 events
per user and source over the 60 days, so the 2-day TTL of view ``b`` expires a good share of rows.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VERSION = 1  # bump when the generated data changes, so cached data is regenerated
SEED = 20240101
VIEWS = ("a", "b", "c")
N_FEATURES = 10
N_FLOAT = 7  # f0..f6 float64, f7..f9 int64
NULL_RATE = 0.05
TTL = {"a": None, "b": "2d", "c": None}  # view b has a TTL
T0_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z in microseconds
SPAN_US = 60 * 86_400 * 1_000_000  # features over 60 days
LABEL_START_US = T0_US + 5 * 86_400 * 1_000_000  # labels from day 5 to day 65
LABEL_SPAN_US = 60 * 86_400 * 1_000_000


def feature_names(view: str) -> list[str]:
    return [f"{view}_f{i}" for i in range(N_FEATURES)]


def n_entities(m: int) -> int:
    return max(1000, m // 20)


def size_dir(root: Path, n: int, m: int) -> Path:
    return Path(root) / f"n{n}_m{m}"


def _unique_even_times(rng: np.random.Generator, count: int) -> np.ndarray:
    """`count` distinct even microsecond offsets in [0, SPAN_US)."""
    slots = SPAN_US // 2
    out = np.unique(rng.integers(0, slots, size=int(count * 1.02) + 16, dtype=np.int64))
    while len(out) < count:  # practically never: 1e7 draws out of 2.6e12 slots
        out = np.unique(np.concatenate([out, rng.integers(0, slots, size=count, dtype=np.int64)]))
    rng.shuffle(out)
    return out[:count] * 2


def _null_mask(rng: np.random.Generator, m: int) -> np.ndarray:
    return rng.random(m) < NULL_RATE


def make_source(view: str, m: int, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, ord(view), m])
    e = n_entities(m)
    if view == "a":
        users = np.arange(e, dtype=np.int64)
    elif view == "b":
        users = np.arange(e, dtype=np.int64)
        users = users[users % 7 != 0]
    else:
        users = np.arange(e, dtype=np.int64)
        users = users[users % 5 != 0]
    user_id = users[rng.integers(0, len(users), size=m)]
    ts = T0_US + _unique_even_times(rng, m)  # unique times => unique (user, ts) pairs
    order = np.argsort(ts, kind="stable")
    user_id, ts = user_id[order], ts[order]
    cols: dict[str, pa.Array] = {
        "user_id": pa.array(user_id, type=pa.int64()),
        "event_timestamp": pa.array(ts, type=pa.timestamp("us", tz="UTC")),
    }
    for i, name in enumerate(feature_names(view)):
        mask = _null_mask(rng, m)
        if i < N_FLOAT:
            vals = rng.normal(loc=i, scale=1.0 + i, size=m)
            cols[name] = pa.array(vals, type=pa.float64(), mask=mask)
        else:
            vals = rng.integers(-1000, 1_000_000, size=m, dtype=np.int64)
            cols[name] = pa.array(vals, type=pa.int64(), mask=mask)
    return pa.table(cols)


def make_labels(n: int, m: int, seed: int) -> pa.Table:
    rng = np.random.default_rng([seed, 0x1ABE1, n, m])
    e = n_entities(m)
    upper = int(e * 1.05)  # users >= e have no history in any view
    while True:
        user_id = rng.integers(0, upper, size=int(n * 1.01) + 16, dtype=np.int64)
        ts = LABEL_START_US + 2 * rng.integers(0, LABEL_SPAN_US // 2, size=len(user_id), dtype=np.int64) + 1
        pairs = np.unique(np.stack([user_id, ts], axis=1), axis=0)
        if len(pairs) >= n:
            break
    pairs = pairs[rng.permutation(len(pairs))[:n]]  # random order (not sorted): output must keep it
    return pa.table({
        "row_id": pa.array(np.arange(n, dtype=np.int64)),
        "user_id": pa.array(pairs[:, 0], type=pa.int64()),
        "event_timestamp": pa.array(pairs[:, 1], type=pa.timestamp("us", tz="UTC")),
    })


def ensure_data(root: Path, n: int, m: int, seed: int = SEED, log=print) -> Path:
    """Generate (once) the data for size (n, m); return its folder. Sources are shared across n."""
    root = Path(root)
    src_dir = root / f"sources_m{m}"
    lab_dir = size_dir(root, n, m)
    stamp = {"version": VERSION, "seed": seed}
    src_meta = src_dir / "meta.json"
    if not (src_meta.exists() and json.loads(src_meta.read_text()) == {**stamp, "m": m}):
        src_dir.mkdir(parents=True, exist_ok=True)
        for v in VIEWS:
            t = time.perf_counter()
            table = make_source(v, m, seed)
            tmp = src_dir / f".src_{v}.parquet.tmp"
            pq.write_table(table, tmp, row_group_size=1 << 20)
            os.replace(tmp, src_dir / f"src_{v}.parquet")
            log(f"generated src_{v} M={m:,} in {time.perf_counter() - t:.1f}s")
            del table
        src_meta.write_text(json.dumps({**stamp, "m": m}))
    lab_meta = lab_dir / "meta.json"
    meta = {**stamp, "n": n, "m": m, "entities": n_entities(m), "views": list(VIEWS),
            "ttl": TTL, "sources": {v: str(src_dir / f"src_{v}.parquet") for v in VIEWS},
            "labels": str(lab_dir / "labels.parquet")}
    if not (lab_meta.exists() and json.loads(lab_meta.read_text()) == meta):
        lab_dir.mkdir(parents=True, exist_ok=True)
        tmp = lab_dir / ".labels.parquet.tmp"
        pq.write_table(make_labels(n, m, seed), tmp)
        os.replace(tmp, lab_dir / "labels.parquet")
        lab_meta.write_text(json.dumps(meta, indent=1))
    return lab_dir


def load_meta(data_dir: Path) -> dict:
    return json.loads((Path(data_dir) / "meta.json").read_text())


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser(description="Generate B1 data")
    p.add_argument("--root", default=str(Path(__file__).resolve().parent.parent / ".bench" / "data"))
    p.add_argument("-n", type=int, default=10_000)
    p.add_argument("-m", type=int, default=100_000)
    a = p.parse_args()
    print(ensure_data(Path(a.root), a.n, a.m))
