"""Box 3 on one machine: point-in-time features from Parquet/CSV files with DuckDB.

How each kind of feature is computed (semantics: see ``offline/base.py``):

- every event gets an order key ``c = ts * 2**64 + (seq + 2**63)`` (a HUGEINT), where ``seq`` is
  the source's tie-break order (file index * 2**40 + row number, or the ``order_by`` rank). An
  entity row at ``t`` probes with ``t * 2**64``, so ``event.c < row.c`` exactly when
  ``event.ts < t``, and the largest such ``c`` is the latest event, ties won by the later one.
- plain fields (``Last`` without a window): one ``ASOF LEFT JOIN`` on (key, c), then null where
  ``t - ts > ttl``. No dedup pass is needed: the order key is unique.
- windowed aggregations: entity probes (distinct key, t) are appended to the events and every
  aggregate is a window function ``PARTITION BY key ORDER BY ts RANGE BETWEEN w PRECEDING AND 1
  PRECEDING`` over integer microseconds, i.e. exactly ``t - w <= ts < t``; probes carry no values
  and are excluded with ``FILTER (WHERE is_event ...)``. DuckDB evaluates these frames with segment
  trees (no subtract-on-leave), so float sums are ordinary sums of the window's values; integer
  sums are exact (HUGEINT accumulators).

All times are handled as BIGINT microseconds since the epoch (UTC); the connection's TimeZone is
UTC so naive timestamps and strings without an offset are read as UTC.
"""
from __future__ import annotations

import glob as _glob
import os
import time
from collections import OrderedDict

import duckdb
import pyarrow as pa

from loopstack.errors import RetrievalError
from loopstack.features.definitions import Aggregation, Filter
from loopstack.features.offline.base import OfflineEngine, RetrievalStats, SourceData, ViewRequest
from loopstack.timeutil import to_micros

_TS_SHIFT = 18446744073709551616  # 2**64
_SEQ_OFFSET = 9223372036854775808  # 2**63
_ROW_BITS = 1099511627776  # 2**40: file_index * 2**40 + file_row_number
_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
              "UBIGINT")
_ARROW_TYPES = {"int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
                "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
                "timestamp": pa.timestamp("us", tz="UTC")}


def q(name: str) -> str:
    """Quote an identifier for DuckDB."""
    return '"' + name.replace('"', '""') + '"'


def _literal(value) -> str:
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, float)):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def filter_sql(f: Filter | None, prefix: str = "") -> str:
    """A Filter as a SQL predicate; NULL (no match) when the column is null."""
    if f is None:
        return "TRUE"
    op = "=" if f.op == "==" else f.op
    return f"({prefix}{q(f.column)} {op} {_literal(f.value)})"


def entity_micros(col: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray:
    """Entity timestamps as int64 µs since the epoch (UTC); naive values are taken as UTC."""
    t = col.type
    if pa.types.is_date(t):
        col = col.cast(pa.timestamp("us"))
        t = col.type
    if not pa.types.is_timestamp(t):
        raise RetrievalError(
            f"entity timestamps must be timestamps, got {t}; convert them (get_historical_features does)"
        )
    return col.cast(pa.timestamp("us", tz=t.tz), safe=False).cast(pa.int64())


def expand_paths(paths: tuple[str, ...] | list[str], fmt: str) -> list[str]:
    """Files behind the paths/globs/folders, deduplicated and sorted by name (the tie-break order)."""
    out: set[str] = set()
    ext = ".csv" if fmt == "csv" else ".parquet"
    for p in paths:
        p = str(p)
        if "://" in p:  # remote (fsspec/httpfs): let DuckDB expand it
            out.add(p)
            continue
        if os.path.isdir(p):
            p = os.path.join(p, "**", "*" + ext)
        out.update(x for x in _glob.glob(p, recursive=True) if os.path.isfile(x))
    return sorted(out)


class DuckDBEngine(OfflineEngine):
    """Point-in-time retrieval with DuckDB: ASOF joins for plain fields, RANGE windows for aggregates."""

    name = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None,
                 temp_dir: str | None = None) -> None:
        self.threads = threads
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir
        self._con: duckdb.DuckDBPyConnection | None = None
        self._stats = RetrievalStats()

    # -- connection -------------------------------------------------------------------------
    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            con = duckdb.connect(":memory:")
            con.execute("SET TimeZone = 'UTC'")
            if self.threads:
                con.execute(f"SET threads = {int(self.threads)}")
            if self.memory_limit:
                con.execute(f"SET memory_limit = {_literal(str(self.memory_limit))}")
            if self.temp_dir:
                con.execute(f"SET temp_directory = {_literal(str(self.temp_dir))}")
            self._con = con
        return self._con

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def last_stats(self) -> RetrievalStats:
        return self._stats

    def _arrow(self, sql: str, req: ViewRequest | None = None) -> pa.Table:
        try:
            return _fetch_table(self.con.sql(sql))
        except duckdb.Error as exc:
            where = f" for feature view {req.view.name!r} (source {req.data.name!r})" if req else ""
            raise RetrievalError(f"DuckDB could not compute features{where}: {exc}") from exc

    # -- main entry --------------------------------------------------------------------------
    def historical_features(self, entity_table: pa.Table, timestamp_column: str,
                            requests: list[ViewRequest]) -> pa.Table:
        started = time.perf_counter()
        self._stats = RetrievalStats(rows=entity_table.num_rows)
        if timestamp_column not in entity_table.column_names:
            raise RetrievalError(
                f"entity table has no timestamp column {timestamp_column!r}; it has {entity_table.column_names}"
            )
        n = entity_table.num_rows
        ts_us = entity_micros(entity_table[timestamp_column])
        rid = pa.array(range(n), type=pa.int64()) if n else pa.array([], type=pa.int64())
        out = entity_table
        for req in requests:
            t0 = time.perf_counter()
            key = req.view.entity.join_key
            if key not in entity_table.column_names:
                raise RetrievalError(
                    f"feature view {req.view.name!r} joins on {key!r}, which the entity table lacks; "
                    f"it has {entity_table.column_names}"
                )
            ent = pa.table({"__rid": rid, "__k": entity_table[key], "__ts": ts_us})
            cols = self._view(ent, req)
            for _, name in req.features:
                out = out.append_column(name, cols[name])
            self._stats.per_view_seconds[req.view.name] = time.perf_counter() - t0
        self._stats.seconds = time.perf_counter() - started
        return out

    # -- one view --------------------------------------------------------------------------
    def _view(self, ent: pa.Table, req: ViewRequest) -> dict[str, pa.ChunkedArray]:
        con = self.con
        n = ent.num_rows
        con.register("__ent", ent)
        try:
            src = self._source(req)
            if src is None:  # no files at all: every row has an empty history
                return {name: _empty_value(agg, req, n) for agg, name in req.features}
            src_sql, types = src
            key = req.view.entity.join_key
            feat_cols: set[str] = set()
            for agg, _ in req.features:
                feat_cols.update(c for c in (agg.column, agg.filter.column if agg.filter else None) if c)
            missing = sorted(c for c in feat_cols | {key, req.data.timestamp} if c not in types)
            if missing:
                raise RetrievalError(
                    f"source {req.data.name!r} of feature view {req.view.name!r} has no column(s) {missing}; "
                    f"its files {list(req.data.paths)} have {sorted(types)}"
                )
            value_cols = sorted(feat_cols)
            ts_expr = _ts_expr(q(req.data.timestamp), types[req.data.timestamp])
            seq_expr = self._seq_expr(req.data, types)
            ev_sql = (
                f"SELECT {q(key)} AS __k, {ts_expr} AS __ts, "
                f"({ts_expr})::HUGEINT * {_TS_SHIFT} + ({seq_expr})::HUGEINT + {_SEQ_OFFSET} AS __c"
                + "".join(f", {q(c)}" for c in value_cols)
                + f" FROM ({src_sql}) WHERE {q(key)} IS NOT NULL AND {q(req.data.timestamp)} IS NOT NULL"
            )
            result: dict[str, pa.ChunkedArray] = {}
            plain = [(a, nm) for a, nm in req.features if a.is_plain]
            windowed = [(a, nm) for a, nm in req.features if not a.is_plain]
            if plain:
                groups: OrderedDict[Filter | None, list] = OrderedDict()
                for a, nm in plain:
                    groups.setdefault(a.filter, []).append((a, nm))
                for flt, feats in groups.items():
                    result.update(self._plain(ev_sql, flt, feats, req, n))
            if windowed:
                result.update(self._windowed(ev_sql, value_cols, windowed, types, req, n))
            return {name: _finish(result[name], agg, req, types) for agg, name in req.features}
        finally:
            con.unregister("__ent")
            try:
                con.unregister("__csv")
            except Exception:  # noqa: BLE001 - not registered for parquet sources
                pass

    def _source(self, req: ViewRequest) -> tuple[str, dict[str, str]] | None:
        data: SourceData = req.data
        fmt = (data.format or "parquet").lower()
        files = expand_paths(data.paths, fmt)
        if not files:
            return None
        if fmt == "csv":
            tables = []
            for i, f in enumerate(files):
                t = _fetch_table(self.con.read_csv(f))
                tables.append(t.append_column("__file_index", pa.array([i] * t.num_rows, pa.int64()))
                               .append_column("__row", pa.array(range(t.num_rows), pa.int64())))
            tbl = pa.concat_tables(tables, promote_options="permissive")
            self.con.register("__csv", tbl)
            sql = "SELECT * FROM __csv"
        elif fmt == "parquet":
            lst = "[" + ", ".join(_literal(f) for f in files) + "]"
            sql = (f"SELECT *, file_index::BIGINT AS __file_index, file_row_number AS __row "
                   f"FROM read_parquet({lst}, file_row_number = true, union_by_name = true)")
        else:
            raise RetrievalError(f"source {data.name!r}: format {data.format!r} is not parquet or csv")
        types = {r[0]: r[1] for r in self.con.execute(f"DESCRIBE {sql}").fetchall()}
        return sql, types

    def _seq_expr(self, data: SourceData, types: dict[str, str]) -> str:
        file_order = f"(__file_index * {_ROW_BITS} + __row)"
        if not data.order_by:
            return file_order
        missing = [c for c in data.order_by if c not in types]
        if missing:
            raise RetrievalError(f"source {data.name!r}: order_by column(s) {missing} not found")
        if len(data.order_by) == 1 and types[data.order_by[0]].upper() in ("TINYINT", "SMALLINT", "INTEGER",
                                                                            "BIGINT"):
            return f"{q(data.order_by[0])}::BIGINT"
        order = ", ".join(q(c) for c in data.order_by)
        return f"row_number() OVER (ORDER BY {order}, __file_index, __row)"

    # -- plain fields: ASOF join ----------------------------------------------------------------
    def _plain(self, ev_sql: str, flt: Filter | None, feats: list, req: ViewRequest, n: int) -> dict:
        ttl = req.view.ttl_delta
        exprs = []
        for i, (agg, _) in enumerate(feats):
            v = f"v.{q(agg.column)}"
            if ttl is not None:
                v = f"CASE WHEN e.__ts - v.__ts <= {to_micros(ttl)} THEN {v} END"
            exprs.append(f"{v} AS __f{i}")
        sql = (
            f"SELECT {', '.join(exprs)} "
            f"FROM (SELECT __rid, __k, __ts, __ts::HUGEINT * {_TS_SHIFT} AS __c FROM __ent) e "
            f"ASOF LEFT JOIN (SELECT * FROM ({ev_sql}) WHERE {filter_sql(flt)}) v "
            f"ON e.__k = v.__k AND e.__c > v.__c ORDER BY e.__rid"
        )
        tbl = self._arrow(sql, req)
        _check_rows(tbl, n, req)
        return {name: tbl[f"__f{i}"] for i, (_, name) in enumerate(feats)}

    # -- windowed aggregations: RANGE window functions ----------------------------------------------
    def _windowed(self, ev_sql: str, value_cols: list[str], feats: list, types: dict[str, str],
                  req: ViewRequest, n: int) -> dict:
        windows: OrderedDict[int, str] = OrderedDict()
        aggs = []
        for i, (agg, _) in enumerate(feats):
            w = to_micros(agg.window_delta)
            wname = windows.setdefault(w, f"__w{len(windows)}")
            cond = f"__ev AND {filter_sql(agg.filter)}"
            aggs.append(f"{_agg_sql(agg, types)} FILTER (WHERE {cond}) OVER {wname} AS __f{i}")
        window_defs = ", ".join(
            f"{nm} AS (PARTITION BY __k ORDER BY __ts RANGE BETWEEN {w} PRECEDING AND 1 PRECEDING)"
            for w, nm in windows.items()
        )
        max_w = max(windows)
        sql = f"""
        WITH pr AS (SELECT DISTINCT __k, __ts FROM __ent WHERE __k IS NOT NULL AND __ts IS NOT NULL),
        bounds AS (SELECT min(__ts) AS lo, max(__ts) AS hi FROM pr),
        ev AS (SELECT ev.*, TRUE AS __ev FROM ({ev_sql}) ev, bounds
               WHERE ev.__ts < bounds.hi AND ev.__ts >= bounds.lo - {max_w}
                 AND ev.__k IN (SELECT __k FROM pr)),
        u AS (SELECT * FROM ev UNION ALL BY NAME SELECT __k, __ts, FALSE AS __ev FROM pr),
        a AS (SELECT __k, __ts, __ev, {', '.join(aggs)} FROM u WINDOW {window_defs})
        SELECT {', '.join(_window_out(agg, i, types) for i, (agg, _) in enumerate(feats))}
        FROM __ent e LEFT JOIN (SELECT * FROM a WHERE NOT __ev) a ON e.__k = a.__k AND e.__ts = a.__ts
        ORDER BY e.__rid
        """
        tbl = self._arrow(sql, req)
        _check_rows(tbl, n, req)
        return {name: tbl[f"__f{i}"] for i, (_, name) in enumerate(feats)}


def _fetch_table(res) -> pa.Table:
    """A DuckDB result or relation as an Arrow table (DuckDB 1.x and 2.x spell this differently)."""
    for meth in ("to_arrow_table", "fetch_arrow_table"):
        if hasattr(res, meth):
            return getattr(res, meth)()
    out = res.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def _ts_expr(col: str, dtype: str) -> str:
    t = dtype.upper()
    if t.startswith("TIMESTAMP WITH TIME ZONE") or t == "TIMESTAMPTZ":
        return f"epoch_us({col})"
    if t.startswith("TIMESTAMP") or t == "DATE":
        return f"epoch_us(CAST({col} AS TIMESTAMP))"  # naive: taken as UTC
    if t in _INT_TYPES:
        return f"CAST({col} AS BIGINT)"  # already µs since the epoch (log offsets' timestamps)
    if t == "VARCHAR":
        return f"epoch_us(CAST({col} AS TIMESTAMPTZ))"  # strings without offset: UTC (session TZ)
    raise RetrievalError(f"event timestamp column {col} has type {dtype}, which is not a timestamp")


def _is_int(dtype: str) -> bool:
    return dtype.upper() in _INT_TYPES or dtype.upper() == "BOOLEAN"


def _agg_sql(agg: Aggregation, types: dict[str, str]) -> str:
    col = q(agg.column) if agg.column else None
    fn = agg.function
    if fn == "count":
        return f"count({col})" if col else "count(*)"
    ctype = types[agg.column]
    if fn == "sum":
        return f"sum({col}::BIGINT)" if _is_int(ctype) else f"sum({col}::DOUBLE)"
    if fn == "mean":
        return f"avg({col}::BIGINT)" if _is_int(ctype) else f"avg({col}::DOUBLE)"
    if fn in ("min", "max"):
        return f"{fn}({col})"
    if fn == "count_distinct":
        return f"count(DISTINCT {col})"
    if fn == "last":
        return f"arg_max({{'v': {col}}}, __c)"
    raise RetrievalError(f"aggregation {fn!r} is not supported by the DuckDB engine")


def _window_out(agg: Aggregation, i: int, types: dict[str, str]) -> str:
    c = f"a.__f{i}"
    fn = agg.function
    if fn in ("count", "count_distinct"):
        return f"coalesce({c}, 0)::BIGINT AS __f{i}"
    if fn == "sum":
        return f"coalesce({c}, 0)::{'BIGINT' if _is_int(types[agg.column]) else 'DOUBLE'} AS __f{i}"
    if fn == "mean":
        return f"{c}::DOUBLE AS __f{i}"
    if fn == "last":
        return f"{c}.v AS __f{i}"
    return f"{c} AS __f{i}"


def _check_rows(tbl: pa.Table, n: int, req: ViewRequest) -> None:
    if tbl.num_rows != n:  # pragma: no cover - would be an engine bug
        raise RetrievalError(f"internal error in view {req.view.name!r}: {tbl.num_rows} rows for {n} entity rows")


def _target_type(agg: Aggregation, req: ViewRequest, current: pa.DataType | None) -> pa.DataType:
    declared = agg.output_dtype(req.view.source)
    if agg.function in ("count", "count_distinct", "mean"):
        return _ARROW_TYPES[declared]
    if agg.function == "sum":
        if current is not None:
            return pa.float64() if pa.types.is_floating(current) else pa.int64()
        return _ARROW_TYPES[declared]
    if current is None:
        return _ARROW_TYPES[declared]
    if pa.types.is_timestamp(current):
        return pa.timestamp("us", tz="UTC")
    if pa.types.is_large_string(current) or pa.types.is_string_view(current):
        return pa.string()
    return current


def _finish(col: pa.ChunkedArray, agg: Aggregation, req: ViewRequest, types: dict[str, str]) -> pa.ChunkedArray:
    target = _target_type(agg, req, col.type)
    if col.type == target:
        return col
    if pa.types.is_timestamp(col.type) and col.type.tz is None and pa.types.is_timestamp(target):
        col = col.cast(pa.timestamp(col.type.unit, tz="UTC"))
    return col.cast(target, safe=False)


def _empty_value(agg: Aggregation, req: ViewRequest, n: int) -> pa.ChunkedArray:
    target = _target_type(agg, req, None)
    if agg.function in ("count", "count_distinct", "sum"):
        return pa.chunked_array([pa.array([0] * n, pa.int64()).cast(target)])
    return pa.chunked_array([pa.nulls(n, target)])
