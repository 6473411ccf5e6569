"""Batch materialization's source reader on Spark: the events of a view with ``start <= ts < end``, in the
offline engine's order, as Arrow batches (same columns and order as ``materialize._Reader`` on DuckDB).

Order: event time, then the tie-break -- the ``order_by`` columns (timestamps as µs, others as
BIGINT), or file index and row number for files. Memory stays bounded: above `slice_rows` events the
spans are cut at approximate quantiles of the event time into slices of about that many events; each
slice is sorted by Spark and collected on its own. A cut never splits equal timestamps (slices are
half-open time ranges), which ``materialize.chunk_by_time`` relies on.

The bulk per-entity aggregate of plain-only views (``online/bulk.py``) is DuckDB SQL; with Spark
those views are applied event by event, which writes the same state.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Sequence

import pyarrow as pa

from loopstack.errors import RetrievalError
from loopstack.features.definitions import FeatureView
from loopstack.features.offline.base import check_source_columns
from loopstack.features.offline.spark_sql import col, read_source, spark_session, ts_micros, value_col

if TYPE_CHECKING:
    from loopstack.project import Project


class SparkReader:
    """Streams a view's source events in engine order from Spark (the `_Reader` interface)."""

    base_sql = None  # no DuckDB SQL: materialize applies events one by one (same state as the bulk path)

    def __init__(self, project: "Project", view: FeatureView, slice_rows: int = 1_000_000) -> None:
        from loopstack.features.materialize import _value_columns
        engine = project.engine
        self.spark = engine.spark if getattr(engine, "name", "") == "spark" else spark_session()
        self.view = view
        self.data = project.source_data(view.source)
        self.value_cols = _value_columns(view)
        self.slice_rows = slice_rows
        self.n_order = 0
        self.df = None
        src = read_source(self.spark, self.data)
        if src is not None:
            self.df = self._base(*src)

    def _base(self, df, types: dict, ns_cols: set[str]):  # noqa: ANN001 - DataFrame in and out
        from pyspark.sql import functions as F
        from pyspark.sql import types as T
        key, ts = self.view.entity.join_key, self.data.timestamp
        check_source_columns(self.data.name, self.view.name, [key, ts, *self.value_cols],
                             types, hide_internal=True)
        order = []
        for c in self.data.order_by:
            if c not in types:
                raise RetrievalError(f"source {self.data.name!r}: order column {c!r} not found")
            timed = isinstance(types[c], (T.TimestampType, T.TimestampNTZType, T.DateType)) or c in ns_cols
            order.append(ts_micros(c, types[c], ns_cols) if timed else col(c).cast("bigint"))
        if not order:  # files: (file_index, row_number), the engine's tie-break
            order = [F.col("__fi"), F.col("__row")]
        self.n_order = len(order)
        values = []
        for c in self.value_cols:
            v = value_col(c, ns_cols)
            if isinstance(types[c], T.TimestampNTZType):
                v = v.cast("timestamp")  # naive: UTC (session time zone), like the engine
            values.append(v.alias("v_" + c))
        return (df.where(col(key).isNotNull() & col(ts).isNotNull())
                .select(col(key).alias("__k"), ts_micros(ts, types[ts], ns_cols).alias("__ts"),
                        *[o.alias(f"__o{i}") for i, o in enumerate(order)],
                        F.col("__fi").alias("__fi"), F.col("__row").alias("__fr"), *values))

    @staticmethod
    def _in(spans: Sequence[tuple[int, int]]):
        from pyspark.sql import functions as F
        cond = F.lit(False)
        for s, e in spans:
            cond = cond | ((F.col("__ts") >= F.lit(s)) & (F.col("__ts") < F.lit(e)))
        return cond

    def count(self, spans: Sequence[tuple[int, int]]) -> int:
        if self.df is None or not spans:
            return 0
        return int(self.df.where(self._in(spans)).count())

    def earliest(self) -> int | None:
        if self.df is None:
            return None
        from pyspark.sql import functions as F
        return self.df.agg(F.min("__ts")).collect()[0][0]

    def batches(self, spans: Sequence[tuple[int, int]], batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self.df is None or not spans:
            return
        events = self.df.where(self._in(spans))
        order = ["__ts"] + [f"__o{i}" for i in range(self.n_order)] + ["__fi", "__fr"]
        total = events.count()
        cuts: list[int] = []
        if total > self.slice_rows:
            k = -(-total // self.slice_rows)
            qs = events.approxQuantile("__ts", [i / k for i in range(1, k)], 0.001)
            cuts = sorted({int(x) for x in qs})
        bounds = [None, *cuts, None]
        from pyspark.sql import functions as F
        for lo, hi in zip(bounds, bounds[1:]):
            part = events
            if lo is not None:
                part = part.where(F.col("__ts") >= F.lit(lo))
            if hi is not None:
                part = part.where(F.col("__ts") < F.lit(hi))
            yield from part.orderBy(*order).toArrow().to_batches(batch_rows)

    def close(self) -> None:
        return None  # the session belongs to the project's engine (or whoever started it)
