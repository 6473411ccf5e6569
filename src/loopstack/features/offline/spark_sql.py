"""Helpers of the Spark offline engine: the session, reading a source like the DuckDB engine does
(same files, same file order, same row numbers, same column types), time columns as µs, filters and
aggregate expressions. Pure functions over PySpark Columns; the engine (spark.py) composes them."""
from __future__ import annotations

import os
from typing import Any, Mapping
from urllib.parse import unquote, urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from loopstack.errors import RetrievalError
from loopstack.features.definitions import Aggregation, Filter
from loopstack.features.offline.base import SourceData
from loopstack.features.offline.duckdb_sql import expand_paths

# The conf every session of this engine needs: times are UTC (naive timestamps and strings without
# an offset are read as UTC, as DuckDB's TimeZone = 'UTC' does).
REQUIRED_CONF = {"spark.sql.session.timeZone": "UTC"}
LOCAL_DEFAULTS = {"spark.sql.shuffle.partitions": "2", "spark.ui.enabled": "false",
                  "spark.driver.host": "127.0.0.1", "spark.driver.memory": "2g"}
_NANOS_AS_LONG = "spark.sql.legacy.parquet.nanosAsLong"
_CASE_MAX_FILES = 256  # up to this many files, a file's index is a CASE on its path; more: a broadcast join


def spark_session(master: str = "local[2]", conf: Mapping[str, Any] | None = None):  # -> SparkSession
    """The active SparkSession (reused: starting a JVM costs seconds), else a new one on `master`.

    Local masters get loopback-only defaults (no UI, driver on 127.0.0.1); `conf` overrides them.
    """
    from pyspark.sql import SparkSession
    active = SparkSession.getActiveSession()
    if active is None:
        from pyspark import SparkContext
        if SparkContext._active_spark_context is not None:  # noqa: SLF001 - a session exists, not active here
            active = SparkSession.builder.getOrCreate()
    if active is not None:
        for k, v in REQUIRED_CONF.items():
            active.conf.set(k, v)
        return active
    settings: dict[str, str] = {}
    if master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        settings.update(LOCAL_DEFAULTS)
    settings.update({str(k): str(v) for k, v in (conf or {}).items()})
    settings.update(REQUIRED_CONF)
    builder = SparkSession.builder.master(master).appName("loopstack-offline")
    for k, v in settings.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def col(name: str):
    """A column by its exact name (dots and backticks in names are not paths)."""
    from pyspark.sql import functions as F
    return F.col(bq(name))


def _is_int_type(dt) -> bool:  # noqa: ANN001 - a pyspark DataType
    from pyspark.sql import types as T
    return isinstance(dt, (T.ByteType, T.ShortType, T.IntegerType, T.LongType))


def is_int_like(dt) -> bool:  # noqa: ANN001
    """Integer or boolean: Sum stays an integer (BIGINT), as in the DuckDB engine."""
    from pyspark.sql import types as T
    return _is_int_type(dt) or isinstance(dt, T.BooleanType)


def is_offset_type(dt) -> bool:  # noqa: ANN001
    """A single order_by column of this type is a log offset: the order key itself."""
    return _is_int_type(dt)


def bq(name: str) -> str:
    """Quote an identifier for Spark SQL (backticks)."""
    return "`" + name.replace("`", "``") + "`"


def ns_to_us(name: str):
    """A Parquet TIMESTAMP(NANOS) column, read as BIGINT ns (nanosAsLong), as µs (floor), staying BIGINT."""
    from pyspark.sql import functions as F
    c = bq(name)
    return F.expr(f"({c} - pmod({c}, 1000)) div 1000")


def ts_micros(name: str, dtype, ns_cols: set[str]):  # noqa: ANN001 - a pyspark DataType
    """An event-time column as BIGINT µs since the epoch (UTC), like duckdb_sql._ts_expr."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    c = col(name)
    if name in ns_cols:
        return ns_to_us(name)
    if isinstance(dtype, T.TimestampType):
        return F.unix_micros(c)
    if isinstance(dtype, (T.TimestampNTZType, T.DateType, T.StringType)):
        return F.unix_micros(c.cast("timestamp"))  # naive / no offset: session time zone = UTC
    if _is_int_type(dtype):
        return c.cast("bigint")  # already µs since the epoch
    raise RetrievalError(f"event timestamp column {name!r} has type {dtype.simpleString()}, which is not a timestamp")


def raw_ts_range(name: str, dtype, ns_cols: set[str], lo: int | None, hi: int | None):  # noqa: ANN001
    """``lo <= ts < hi`` (µs) on the raw event-time column, so Spark can push it into the Parquet scan
    (row-group skipping); None when the column's type has no such form. The engine also filters the
    derived µs column, so this only needs to be implied by the exact predicate."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    c = col(name)
    if name in ns_cols:
        return None
    if isinstance(dtype, T.TimestampType):
        conv = lambda v: F.timestamp_micros(F.lit(v))  # noqa: E731 - folded to a literal by the optimizer
    elif isinstance(dtype, T.TimestampNTZType):
        conv = lambda v: F.timestamp_micros(F.lit(v)).cast("timestamp_ntz")  # noqa: E731 - UTC session
    elif _is_int_type(dtype):
        conv = F.lit
    else:
        return None
    cond = F.lit(True)
    if lo is not None:
        cond = cond & (c >= conv(lo))
    if hi is not None:
        cond = cond & (c < conv(hi))
    return cond


def value_col(name: str, ns_cols: set[str]):
    """A value column as the engine returns it (nanosecond timestamps as µs timestamps)."""
    from pyspark.sql import functions as F
    if name in ns_cols:
        return F.timestamp_micros(ns_to_us(name))
    return col(name)


def filter_col(f: Filter | None):
    """A Filter as a Column predicate; null (no match) when the column is null, as in SQL."""
    from pyspark.sql import functions as F
    if f is None:
        return F.lit(True)
    import operator
    ops = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
           ">=": operator.ge}
    return ops[f.op](col(f.column), F.lit(f.value))


def when(cond, value):  # noqa: ANN001
    from pyspark.sql import functions as F
    return F.when(cond, value)


def window_agg(agg: Aggregation, cond, ord_col, types: dict, frame):  # noqa: ANN001
    """One windowed aggregate over `frame`, on the rows where `cond` holds (events passing the filter).

    Empty frames give null for Sum (coalesced later) and 0 for Count/CountDistinct."""
    from pyspark.sql import functions as F
    fn = agg.function
    if fn == "count":
        return F.count(when(cond, col(agg.column) if agg.column else F.lit(1))).over(frame)
    c = col(agg.column)
    dt = types[agg.column]
    if fn == "sum":
        return F.sum(when(cond, c.cast("bigint" if is_int_like(dt) else "double"))).over(frame)
    if fn == "mean":
        if is_int_like(dt):  # exact BIGINT sum / count, as DuckDB's avg over integers
            total = F.sum(when(cond, c.cast("bigint"))).over(frame).cast("double")
            return total / F.count(when(cond, c)).over(frame).cast("double")
        return F.avg(when(cond, c.cast("double"))).over(frame)
    if fn == "min":
        return F.min(when(cond, c)).over(frame)
    if fn == "max":
        return F.max(when(cond, c)).over(frame)
    if fn == "count_distinct":  # Spark has no DISTINCT window aggregates
        return F.size(F.collect_set(when(cond, c)).over(frame))
    if fn == "last":  # the latest event in the frame by (ts, tie order); its value even when null
        return F.max_by(c, when(cond, ord_col)).over(frame)
    raise RetrievalError(f"aggregation {fn!r} is not supported by the Spark engine")


# -- reading a source -------------------------------------------------------------------------------
def _local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def parquet_schemas(files: list[str]) -> list[pa.Schema] | None:
    """The Arrow schema of each file from its footer (cheap); None when some file is remote."""
    if not all(_local(f) for f in files):
        return None
    try:
        return [pq.read_schema(f) for f in files]
    except (OSError, pa.ArrowInvalid):
        return None


def _uri_path(uri: str) -> str:
    """A file URI as Spark reports it (``file:/a%20b/x.parquet``) -> the local path."""
    u = urlparse(uri)
    return unquote(u.path) if u.scheme in ("file", "") else uri


def read_source(spark, data: SourceData):  # noqa: ANN001 - -> (DataFrame, types, ns_cols) | None
    """The source's events with ``__fi`` (file index, files in `expand_paths` order) and ``__row``
    (row number in the file): the DuckDB engine's tie-break order. None when there are no files.

    Parquet: one scan of all files; a file's index comes from its path (``_metadata.file_path``), its
    row numbers from ``_metadata.row_index``. Files whose schemas differ are merged by name.
    CSV: each file read with schema inference, integers widened to BIGINT (DuckDB's sniffer does).
    """
    from pyspark.sql import functions as F
    fmt = (data.format or "parquet").lower()
    if fmt not in ("parquet", "csv"):
        raise RetrievalError(f"source {data.name!r}: format {data.format!r} is not parquet or csv")
    files = expand_paths(data.paths, fmt)
    if not files:
        return None
    ns_cols: set[str] = set()
    if fmt == "csv":
        df = None
        for i, f in enumerate(files):
            part = spark.read.option("header", True).option("inferSchema", True).csv(f)
            part = part.select(*[col(c).cast("bigint").alias(c) if _is_int_type(t) else col(c)
                                 for c, t in ((fl.name, fl.dataType) for fl in part.schema.fields)])
            part = part.withColumn("__fi", F.lit(i).cast("bigint")) \
                       .withColumn("__row", F.monotonically_increasing_id())
            df = part if df is None else df.unionByName(part, allowMissingColumns=True)
    else:
        schemas = parquet_schemas(files)
        if schemas is not None:
            for s in schemas:
                ns_cols.update(fl.name for fl in s if pa.types.is_timestamp(fl.type) and fl.type.unit == "ns")
        if ns_cols:  # Spark cannot read TIMESTAMP(NANOS) as a timestamp; read the ns as BIGINT, convert
            spark.conf.set(_NANOS_AS_LONG, "true")
        merge = schemas is None or any(not s.equals(schemas[0]) for s in schemas[1:])
        raw = spark.read.option("mergeSchema", str(merge).lower()).parquet(*files)
        index = {os.path.abspath(p): i for i, p in enumerate(files)}
        pairs = []
        for uri in raw.inputFiles():
            i = index.get(os.path.abspath(_uri_path(uri)) if _local(uri) else uri)
            if i is None:
                raise RetrievalError(f"source {data.name!r}: Spark listed {uri!r}, which is not one of its files")
            u = urlparse(uri)  # listed as file:///a, reported per row as file:/a: map both spellings
            pairs += [(v, i) for v in dict.fromkeys([uri, f"{u.scheme}:{u.path}" if u.scheme == "file" else uri])]
        df = raw.select("*", F.col("_metadata.file_path").alias("__path"),
                        F.col("_metadata.row_index").cast("bigint").alias("__row"))
        if len(pairs) <= _CASE_MAX_FILES:  # a CASE expression: no extra job
            fi = F.when(F.lit(False), F.lit(None))
            for uri, i in pairs:
                fi = fi.when(F.col("__path") == F.lit(uri), F.lit(i))
            df = df.withColumn("__fi", fi.cast("bigint")).drop("__path")
        else:  # many files: a broadcast join on the path
            fmap = spark.createDataFrame(pairs, "__path string, __fi bigint")
            df = df.join(F.broadcast(fmap), "__path").drop("__path")
    types = {fl.name: fl.dataType for fl in df.schema.fields}
    return df, types, ns_cols
