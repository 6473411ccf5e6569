"""The DuckDB engine's use of sorted indexes (``sorted_index.py``) for plain fields without a filter.

``plain_from_index`` answers the same question as ``DuckDBEngine._plain`` -- the latest event
strictly before each row's time, ties won by the later event in ``order_by`` / file order, null when
older than the ttl -- from a clustered copy of the source that DuckDB sorts once (building it costs
about one ASOF join) and that is reused until the source's files change. Value columns are added to
the index the first time a query asks for them.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopstack.errors import RetrievalError
from loopstack.features.offline.base import ViewRequest
from loopstack.features.offline.duckdb_sql import _ROW_BITS, _INT_TYPES, _ts_expr, expand_paths, q
from loopstack.features.offline.sorted_index import IndexStore, SortedIndex, fingerprint, gather, row_numbers
from loopstack.timeutil import to_micros

_POS = f"(__file_index * {_ROW_BITS} + __row)"


def _where(req: ViewRequest, types: dict[str, str]) -> str:
    key, tcol = req.view.entity.join_key, req.data.timestamp
    where = f"{q(key)} IS NOT NULL AND {q(tcol)} IS NOT NULL"
    ob = req.data.order_by
    if len(ob) == 1 and types.get(ob[0], "").upper() in _INT_TYPES:
        where += f" AND {q(ob[0])} IS NOT NULL"  # as in _plain: events without an offset never match
    return where


def open_or_build(engine, req: ViewRequest, src_sql: str, types: dict[str, str],
                  store: IndexStore) -> SortedIndex | None:
    """The source's index, built now if missing or stale; None when the source cannot be indexed
    (remote files: no cheap way to notice that they changed)."""
    data = req.data
    files = expand_paths(data.paths, (data.format or "parquet").lower())
    key = req.view.entity.join_key
    digest = fingerprint(data, files, key)
    if digest is None:
        return None
    idx = store.get(data, digest)
    if idx is not None:
        return idx
    ts_expr = _ts_expr(q(data.timestamp), types[data.timestamp])
    seq = engine._seq_expr(data, types)
    # without order_by the tie order is the position itself: one column less to sort and return
    extra, order = ("", "__pos") if not data.order_by else (f", {seq} AS __seq", "__seq")
    tbl = engine._arrow(
        f"SELECT {q(key)} AS __k, {ts_expr} AS __ts, {_POS} AS __pos{extra} FROM ({src_sql}) "
        f"WHERE {_where(req, types)} ORDER BY __k, __ts, {order}", req)
    counts = engine._arrow(f"SELECT __file_index, count(*) AS n FROM ({src_sql}) GROUP BY 1", req)
    file_rows = dict(zip(counts["__file_index"].to_pylist(), counts["n"].to_pylist()))
    pos = tbl["__pos"].to_numpy()
    rows = row_numbers(pos, {int(k): int(v) for k, v in file_rows.items()})
    ts = tbl["__ts"].to_numpy()
    keys = tbl["__k"].combine_chunks()
    del tbl
    return store.write(data, digest, keys, ts, rows, {"source": data.name, "key": key,
                                                      "files": len(files), "scan_rows": int(sum(file_rows.values()))})


def _add_columns(engine, req: ViewRequest, src_sql: str, idx: SortedIndex, columns: list[str],
                 pool: ThreadPoolExecutor) -> None:
    """Add `columns` to the index: DuckDB reads each in scan order (on this thread), the pool puts it
    in index order and writes it (a random gather over the whole column: memory-bound, so in parallel)."""
    rows = idx.scan_rows()
    everything = np.ones(len(rows), dtype=bool)
    pending = []
    for column in columns:
        values = _read_parquet_column(req, column, idx.manifest["scan_rows"])
        if values is None:  # CSV, or files whose types differ: DuckDB reads (and unifies) it
            tbl = engine._arrow(f"SELECT {_POS} AS __pos, {q(column)} AS v FROM ({src_sql})", req)
            pos = tbl["__pos"].to_numpy()
            values = tbl["v"].combine_chunks()
            del tbl
            if len(pos) > 1 and not bool(np.all(pos[1:] > pos[:-1])):  # scan not in file order: put it back
                values = values.take(pa.array(np.argsort(pos, kind="stable")))
        if len(values) != idx.manifest["scan_rows"]:
            raise RetrievalError(f"source {req.data.name!r} changed while it was being indexed; run the query again")
        if len(pending) >= 2:  # bounded: at most two columns waiting in memory
            pending.pop(0).result()
        pending.append(pool.submit(lambda c=column, v=values: idx.add_column(c, gather(v, rows, everything))))
    for f in pending:
        f.result()


def _read_parquet_column(req: ViewRequest, column: str, rows: int) -> pa.Array | None:
    """One column of a Parquet source in scan order (files in name order, as DuckDB's file_index),
    read by Arrow directly: about 4x faster than a DuckDB scan for this. None when not applicable."""
    if (req.data.format or "parquet").lower() != "parquet":
        return None
    parts, missing = [], []
    try:
        for f in expand_paths(req.data.paths, "parquet"):
            pf = pq.ParquetFile(f)
            if column in pf.schema_arrow.names:
                parts.append(pf.read(columns=[column]).column(0).combine_chunks())
            else:
                parts.append(None)
                missing.append(pf.metadata.num_rows)
        types = {p.type for p in parts if p is not None}
        if len(types) != 1:
            return None
        (typ,) = types
        if pa.types.is_dictionary(typ):
            return None
        it = iter(missing)
        arr = pa.concat_arrays([p if p is not None else pa.nulls(next(it), typ) for p in parts])
    except (OSError, pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return None
    return arr if len(arr) == rows else None


def plain_from_index(engine, req: ViewRequest, src_sql: str, types: dict[str, str], feats: list,
                     ent: pa.Table, store: IndexStore) -> dict | None:
    """Unfiltered plain fields of one view from the source's sorted index; None if it has none."""
    idx = open_or_build(engine, req, src_sql, types, store)
    if idx is None:
        return None
    valid = pc.and_(pc.is_valid(ent["__k"]), pc.is_valid(ent["__ts"])).to_numpy(zero_copy_only=False)
    ent_ts = ent["__ts"].fill_null(0).to_numpy()
    ttl = None if req.view.ttl_delta is None else to_micros(req.view.ttl_delta)
    # numpy and Arrow release the GIL: the search runs on slices of the rows, the gathers a column
    # per thread, one thread per core
    workers = max(1, engine.threads or os.cpu_count() or 1)
    keys = ent["__k"].combine_chunks()
    n = len(ent_ts)
    cuts = [n * i // workers for i in range(workers + 1)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        missing = list(dict.fromkeys(agg.column for agg, _ in feats if agg.column not in idx.columns))
        if missing:
            _add_columns(engine, req, src_sql, idx, missing, pool)
        parts = list(pool.map(lambda ab: idx.latest_before(keys.slice(ab[0], ab[1] - ab[0]), ent_ts[ab[0]:ab[1]],
                                                           valid[ab[0]:ab[1]], ttl), zip(cuts, cuts[1:])))
        at = np.concatenate([p[0] for p in parts])
        found = np.concatenate([p[1] for p in parts])
        cols = list(pool.map(lambda agg: idx.take(agg.column, at, found), [agg for agg, _ in feats]))
    return {name: col for (_, name), col in zip(feats, cols)}
