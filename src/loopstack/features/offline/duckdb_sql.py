"""SQL and Arrow helpers of the DuckDB offline engine: quoting, filters, time casts, aggregate SQL,
result typing. Pure functions; the engine (duckdb.py) composes them."""
from __future__ import annotations

import glob as _glob
import os
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from loopstack.errors import RetrievalError
from loopstack.features.definitions import Aggregation, FeatureView, Filter
from loopstack.features.offline.base import SourceData, ViewRequest

_TS_SHIFT = 18446744073709551616  # 2**64
_SEQ_OFFSET = 9223372036854775808  # 2**63
_ROW_BITS = 1099511627776  # 2**40: file_index * 2**40 + file_row_number
# plain fields: semi-join the source to the rows' keys before the ASOF sort when
# distinct row keys * this <= source rows (measured: a win with few labels, a loss when they cover most keys)
_PRUNE_KEYS_RATIO = 32
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


def _source_rows(data: SourceData) -> int | None:
    """Number of events in a Parquet source, from the files' footers (None when unknown / not Parquet)."""
    if (data.format or "parquet").lower() != "parquet":
        return None
    total = 0
    for f in expand_paths(data.paths, "parquet"):
        if "://" in f:
            return None
        try:
            total += pq.ParquetFile(f).metadata.num_rows
        except (OSError, pa.ArrowInvalid):
            return None
    return total


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


def record_batches(rel, batch_rows: int):  # noqa: ANN001, ANN201 - a DuckDB relation -> RecordBatchReader
    """Stream a DuckDB relation's result as Arrow record batches of up to `batch_rows` rows (the newer
    `to_arrow_reader`, or `fetch_record_batch` of older DuckDB releases)."""
    return rel.to_arrow_reader(batch_rows) if hasattr(rel, "to_arrow_reader") else rel.fetch_record_batch(batch_rows)


_TEXT_CASTS = {"int8": "BIGINT", "int16": "BIGINT", "int32": "BIGINT", "int64": "BIGINT", "float32": "DOUBLE",
               "float64": "DOUBLE", "bool": "BOOLEAN", "timestamp": "TIMESTAMPTZ"}


def check_text_columns(con, src_sql: str, types: dict[str, str], view: FeatureView,  # noqa: ANN001 - DuckDB
                       columns: Sequence[str]) -> None:
    """RetrievalError naming the first value of a text column (e.g. a CSV cell) that does not read as the type
    declared for it (schema Field, entity dtype, event time): it would be stored as text or fail in an aggregate."""
    declared = {f.name: f.dtype for f in view.source.schema}
    declared.update({view.entity.join_key: view.entity.dtype, view.source.timestamp: "timestamp"})
    for c in dict.fromkeys(columns):
        cast = _TEXT_CASTS.get(declared.get(c, "string"))
        if cast is None or types.get(c, "").upper() != "VARCHAR":
            continue
        bad = con.sql(f"SELECT {q(c)} FROM ({src_sql}) WHERE {q(c)} IS NOT NULL AND TRY_CAST({q(c)} AS {cast}) "
                      "IS NULL LIMIT 1").fetchall()
        if bad:
            raise RetrievalError(
                f"source {view.source.name!r} of feature view {view.name!r}: column {c!r} holds {bad[0][0]!r}, "
                f"which does not read as {declared[c]} (the type declared for it); fix or remove that row in the "
                "source files, then run again")
