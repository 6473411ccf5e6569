"""B2 data: deterministic Parquet sources for the online-read benchmark (shared by both systems).

For N entities, in ``<root>/b2_n<N>/``:

- ``plain.parquet``: one row per entity ``user_id`` 0..N-1 (int64), ``event_timestamp``
  (timestamp[us, UTC], distinct, in the 30 days before ``T_END``) and ten features ``f0 .. f9``
  (f0-f6 float64, f7-f9 int64, ~5 % nulls). The "latest value" view both systems serve.
- ``events.parquet``: ``EVENTS_PER_ENTITY`` events per entity in the 3 days before ``T_END``
  (same columns), for loopstack's windowed view (Count/Sum/Mean/Max over 1h/1d/7d), which Feast's
  online store has no equivalent of. Rows in event-time order.
- ``meta.json``: sizes, seed, times.

Runs in both virtualenvs (only numpy and pyarrow).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

VERSION = 1
SEED = 20261124
N_FEATURES = 10
N_FLOAT = 7
NULL_RATE = 0.05
EVENTS_PER_ENTITY = 3
T_END_US = 1_793_491_200_000_000          # 2026-11-01T00:00:00Z
PLAIN_SPAN_US = 30 * 86_400 * 1_000_000
EVENTS_SPAN_US = 3 * 86_400 * 1_000_000
FEATURES = [f"f{i}" for i in range(N_FEATURES)]


def data_dir(root: Path, n: int) -> Path:
    return Path(root) / f"b2_n{n}"


def _frame(rng: np.random.Generator, users: np.ndarray, ts_us: np.ndarray) -> pa.Table:
    m = len(users)
    cols: dict[str, pa.Array] = {
        "user_id": pa.array(users, pa.int64()),
        "event_timestamp": pa.array(ts_us, pa.timestamp("us", tz="UTC")),
    }
    for i, f in enumerate(FEATURES):
        mask = rng.random(m) < NULL_RATE
        if i < N_FLOAT:
            cols[f] = pa.array(rng.normal(100.0 * i, 10.0 + i, m), pa.float64(), mask=mask)
        else:
            cols[f] = pa.array(rng.integers(0, 1000 * i, m), pa.int64(), mask=mask)
    return pa.table(cols)


def _distinct_times(rng: np.random.Generator, count: int, span: int) -> np.ndarray:
    out = np.unique(rng.integers(0, span, size=int(count * 1.02) + 16, dtype=np.int64))
    while len(out) < count:
        out = np.unique(np.concatenate([out, rng.integers(0, span, size=count, dtype=np.int64)]))
    rng.shuffle(out)
    return out[:count]


def ensure_data(root: Path, n: int, log=print) -> Path:
    d = data_dir(root, n)
    meta_f = d / "meta.json"
    if meta_f.exists() and json.loads(meta_f.read_text()).get("version") == VERSION:
        return d
    d.mkdir(parents=True, exist_ok=True)
    log(f"generating B2 data for {n:,} entities in {d}")
    rng = np.random.default_rng([SEED, n])
    users = np.arange(n, dtype=np.int64)
    ts = T_END_US - PLAIN_SPAN_US + _distinct_times(rng, n, PLAIN_SPAN_US)
    pq.write_table(_frame(rng, users, ts), d / "plain.parquet", row_group_size=256_000)
    m = n * EVENTS_PER_ENTITY
    ev_users = rng.integers(0, n, m, dtype=np.int64)
    ev_users[:n] = users  # every entity has at least one event
    ev_ts = T_END_US - EVENTS_SPAN_US + _distinct_times(rng, m, EVENTS_SPAN_US)
    order = np.argsort(ev_ts, kind="stable")
    pq.write_table(_frame(rng, ev_users[order], ev_ts[order]), d / "events.parquet", row_group_size=256_000)
    meta = {"version": VERSION, "n": n, "seed": SEED, "events": m, "t_end_us": T_END_US,
            "plain": str(d / "plain.parquet"), "events_path": str(d / "events.parquet")}
    tmp = d / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, meta_f)
    return d


def load_meta(d: Path) -> dict:
    d = Path(d).resolve()
    meta = json.loads((d / "meta.json").read_text())
    meta.update(plain=str(d / "plain.parquet"), events_path=str(d / "events.parquet"))  # absolute paths
    return meta


def request_keys(n_entities: int, n_requests: int, batch: int, seed: int) -> np.ndarray:
    """Random entity ids (fixed seed) for `n_requests` requests of `batch` entities each; ~1 % unknown."""
    rng = np.random.default_rng([SEED, seed, batch])
    hi = n_entities + max(1, n_entities // 100)
    return rng.integers(0, hi, size=(n_requests, batch), dtype=np.int64)


def summarize(ns: np.ndarray, wall: float, cpu_ns: np.ndarray | None = None) -> dict:
    """Wall-clock percentiles (the measurement), plus the process's CPU time per call (shows how much
    of the tail is the work itself and how much is the process waiting for a core on a busy machine)."""
    ms = ns / 1e6
    out = {"requests": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
           "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "max_ms": float(ms.max()),
           "rps": len(ms) / wall}
    if cpu_ns is not None:
        cpu = cpu_ns / 1e6
        out.update(cpu_p50_ms=float(np.percentile(cpu, 50)), cpu_p99_ms=float(np.percentile(cpu, 99)))
    return out
