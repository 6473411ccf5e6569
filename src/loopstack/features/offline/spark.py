"""Box 3 past one machine: point-in-time features from the same Parquet lake with Spark (PySpark).

Same semantics as the DuckDB engine (``offline/base.py``; the test suites run against both). Per
feature view, one Spark query:

1. the source's events (key and time not null; times as BIGINT µs UTC; ``__fi``/``__row`` = file
   index and row number, the tie-break the DuckDB engine uses) are pruned to what any row can see
   (``ts`` below the latest row time; for views without plain fields also above the earliest row
   time minus the longest window) and, when the rows' keys are few relative to the source, semi-joined
   to those keys (broadcast);
2. the entity rows become probes (``__rid, __k, __ts``; no values) and are appended to the events;
3. one ``Window.partitionBy(__k).orderBy(__ts)`` pass computes every feature with RANGE frames over
   integer µs, so one shuffle and one sort serve them all:
   - plain fields: ``max_by(struct(ts, values...), order key)`` over ``RANGE BETWEEN UNBOUNDED
     PRECEDING AND 1 PRECEDING`` -- the latest event strictly before the row's time; the order key is
     ``struct(ts, order_by..., __fi, __row)`` (later wins), null for events without an integer log
     offset and for events the feature's filter rejects; the ttl is checked on the winner's ts;
   - windowed aggregates over ``RANGE BETWEEN w PRECEDING AND 1 PRECEDING`` (``t - w <= ts < t``),
     each on ``CASE WHEN <is event> AND <filter> THEN col END``; CountDistinct is
     ``size(collect_set(...))`` (Spark has no DISTINCT window aggregates), Last is ``max_by``;
4. only the probe rows are collected (Arrow), put back in input order by ``__rid`` and typed with the
   same rules as the DuckDB engine (``duckdb_sql._finish``).

Not pushed down to Spark: the entity table arrives as Arrow on the driver and the result goes back
there (that is the interface); ordering the result by row, filling defaults for rows without a key
and the output dtypes happen in Arrow on the driver.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopstack.errors import RetrievalError
from loopstack.features.offline.base import (OfflineEngine, RetrievalStats, ViewRequest, check_source_columns,
                                              entity_join_key)
from loopstack.features.offline.duckdb_sql import _PRUNE_KEYS_RATIO, _empty_value, _finish, _source_rows, \
    entity_micros
from loopstack.features.offline.spark_sql import (col, filter_col, is_offset_type, raw_ts_range, read_source,
                                                  spark_session, ts_micros, value_col, window_agg)
from loopstack.timeutil import to_micros

_ONE_PARTITION_ROWS = 200_000  # events + rows up to this: computed in one partition (no shuffle)
_ISIN_MAX_KEYS = 1000  # rows' distinct keys up to this: IN (...) list; more: a broadcast semi-join


class SparkEngine(OfflineEngine):
    """Point-in-time retrieval with Spark: one partitioned window pass per feature view."""

    name = "spark"

    def __init__(self, spark: Any = None, master: str = "local[2]", conf: Mapping[str, Any] | None = None) -> None:
        """`spark`: a SparkSession to use; else the active one, else a new one on `master` with `conf`."""
        self._spark = spark
        self.master = master
        self.conf = dict(conf or {})
        self._owns_session = False
        self._stats = RetrievalStats()
        self.phases: dict[str, float] = {}
        self.last_query = None  # the DataFrame of the last view computed

    @property
    def spark(self):  # -> SparkSession
        if self._spark is None:
            from pyspark import SparkContext
            existed = SparkContext._active_spark_context is not None  # noqa: SLF001
            self._spark = spark_session(self.master, self.conf)
            self._owns_session = not existed
        return self._spark

    def close(self) -> None:
        """Stop the session only if this engine started it (a shared session outlives the engine)."""
        if self._spark is not None and self._owns_session:
            self._spark.stop()
        self._spark = None
        self._owns_session = False

    def last_stats(self) -> RetrievalStats:
        return self._stats

    # -- main entry --------------------------------------------------------------------------
    def historical_features(self, entity_table: pa.Table, timestamp_column: str,
                            requests: list[ViewRequest]) -> pa.Table:
        started = time.perf_counter()
        self._stats = RetrievalStats(rows=entity_table.num_rows)
        self.phases = {}
        if timestamp_column not in entity_table.column_names:
            raise RetrievalError(
                f"entity table has no timestamp column {timestamp_column!r}; it has {entity_table.column_names}"
            )
        ts_us = entity_micros(entity_table[timestamp_column])
        out = entity_table
        for req in requests:
            t0 = time.perf_counter()
            key = entity_join_key(req.view, entity_table.column_names)
            cols = self._view(entity_table[key], ts_us, req)
            for _, name in req.features:
                out = out.append_column(name, cols[name])
            self._stats.per_view_seconds[req.view.name] = time.perf_counter() - t0
        self._stats.seconds = time.perf_counter() - started
        return out

    def _phase(self, name: str, since: float) -> float:
        now = time.perf_counter()
        self.phases[name] = self.phases.get(name, 0.0) + now - since
        return now

    # -- one view --------------------------------------------------------------------------
    def _view(self, keys: pa.ChunkedArray, ts_us: pa.ChunkedArray, req: ViewRequest) -> dict[str, pa.ChunkedArray]:
        from py4j.protocol import Py4JJavaError
        from pyspark.errors import PySparkException
        try:
            return self._compute(keys, ts_us, req)
        except (PySparkException, Py4JJavaError) as exc:
            raise RetrievalError(f"Spark could not compute features for feature view {req.view.name!r} "
                                 f"(source {req.data.name!r}): {exc}") from exc

    def _compute(self, keys: pa.ChunkedArray, ts_us: pa.ChunkedArray, req: ViewRequest) -> dict[str, pa.ChunkedArray]:
        from pyspark.sql import Window
        from pyspark.sql import functions as F

        n = len(keys)
        t = time.perf_counter()
        spark = self.spark
        src = read_source(spark, req.data)
        if src is None:  # no files at all: every row has an empty history
            return {name: _empty_value(agg, req, n) for agg, name in req.features}
        df, types, ns_cols = src
        key, tcol = req.view.entity.join_key, req.data.timestamp
        value_cols: list[str] = []
        for agg, _ in req.features:
            for c in (agg.column, agg.filter.column if agg.filter else None):
                if c and c not in value_cols:
                    value_cols.append(c)
        check_source_columns(req.data.name, req.view.name, sorted(set(value_cols) | {key, tcol}),
                             types, f"its files {list(req.data.paths)}", hide_internal=True)
        ord_fields, offset_col = self._order(req, types)
        valid = pc.and_(pc.is_valid(keys), pc.is_valid(ts_us))
        rid = pa.array(np.arange(n, dtype=np.int64))
        probes = pa.table({"__rid": pc.filter(rid, valid), "__k": pc.filter(keys, valid),
                           "__ts": pc.filter(ts_us, valid)})
        if probes.num_rows == 0:
            return {name: _empty_value(agg, req, n) for agg, name in req.features}
        plain = [(a, nm) for a, nm in req.features if a.is_plain]
        windowed = [(a, nm) for a, nm in req.features if not a.is_plain]
        t_lo, t_hi = pc.min(probes["__ts"]).as_py(), pc.max(probes["__ts"]).as_py()

        # 1. events, pruned
        key_type = types[key]
        ev = df.where(col(key).isNotNull() & col(tcol).isNotNull())
        lo = None if plain else t_lo - max(to_micros(a.window_delta) for a, _ in windowed)
        pushed = raw_ts_range(tcol, types[tcol], ns_cols, lo, t_hi)  # row-group skipping in the scan
        if pushed is not None:
            ev = ev.where(pushed)
        ev_ts = ts_micros(tcol, types[tcol], ns_cols)
        ev = ev.select(col(key).alias("__k"), ev_ts.alias("__ts"), F.lit(True).alias("__ev"),
                       F.struct(*[e.alias(f"o{i}") for i, e in enumerate([ev_ts] + ord_fields)]).alias("__ord"),
                       *([] if offset_col is None else [col(offset_col).isNotNull().alias("__has_off")]),
                       *[value_col(c, ns_cols).alias(c) for c in value_cols])
        ev = ev.where(F.col("__ts") < F.lit(t_hi))
        if lo is not None:
            ev = ev.where(F.col("__ts") >= F.lit(lo))
        n_keys = pc.count_distinct(probes["__k"]).as_py()
        rows = _source_rows(req.data)
        if windowed or (rows is not None and n_keys * _PRUNE_KEYS_RATIO <= rows):
            distinct = pc.unique(probes["__k"])
            if len(distinct) <= _ISIN_MAX_KEYS:  # a literal IN list (pushed into the Parquet scan)
                ev = ev.where(F.col("__k").isin(distinct.to_pylist()))
            else:
                keys_df = spark.createDataFrame(pa.table({"__k": distinct})).select(F.col("__k").cast(key_type))
                ev = ev.join(F.broadcast(keys_df), "__k", "left_semi")

        # 2. probes appended to the events
        pr = spark.createDataFrame(probes).select(
            F.col("__k").cast(key_type).alias("__k"), F.col("__ts"), F.lit(False).alias("__ev"),
            F.col("__rid"))
        ev = ev.withColumn("__rid", F.lit(None).cast("bigint"))
        u = ev.unionByName(pr, allowMissingColumns=True)
        if rows is not None and rows + probes.num_rows <= _ONE_PARTITION_ROWS:
            u = u.coalesce(1)  # small: one task, and the window needs no shuffle

        # 3. one window pass
        base = Window.partitionBy("__k").orderBy("__ts")
        is_ev = F.col("__ev")
        if offset_col is not None:  # events without a log offset never win (as in the DuckDB engine)
            is_ev = is_ev & F.coalesce(F.col("__has_off"), F.lit(False))
        sel = [F.col("__rid")]
        groups: OrderedDict[Any, list] = OrderedDict()
        for i, (a, _) in enumerate(plain):
            groups.setdefault(a.filter, []).append(i)
        upto = base.rangeBetween(Window.unboundedPreceding, -1)
        for gi, (flt, idx) in enumerate(groups.items()):
            vals = F.struct(F.col("__ts").alias("ts"), *[col(plain[i][0].column).alias(f"v{i}") for i in idx])
            sel.append(F.max_by(vals, F.when(is_ev & filter_col(flt), F.col("__ord"))).over(upto).alias(f"__g{gi}"))
        frames: dict[int, Any] = {}
        for i, (a, _) in enumerate(windowed):
            w = to_micros(a.window_delta)
            frames.setdefault(w, base.rangeBetween(-w, -1))
            cond = (is_ev if a.function == "last" else F.col("__ev")) & filter_col(a.filter)
            sel.append(window_agg(a, cond, F.col("__ord"), types, frames[w]).alias(f"__w{i}"))
        res_df = u.select(*sel, F.col("__ev"), F.col("__ts").alias("__t")).where(~F.col("__ev"))
        outs = [F.col("__rid")]
        for gi, idx in enumerate(groups.values()):
            g = F.col(f"__g{gi}")
            ok = g.isNotNull()
            if req.view.ttl_delta is not None:
                ok = ok & (F.col("__t") - g.getField("ts") <= F.lit(to_micros(req.view.ttl_delta)))
            outs += [F.when(ok, g.getField(f"v{i}")).alias(f"__p{i}") for i in idx]
        outs += [F.col(f"__w{i}") for i in range(len(windowed))]
        t = self._phase("plan", t)
        self.last_query = res_df.select(*outs)  # for inspection: engine.last_query.explain()
        res = self.last_query.toArrow()
        t = self._phase("spark", t)

        # 4. back in input order, typed
        res = res.sort_by("__rid")
        if res.num_rows != probes.num_rows:  # pragma: no cover - would be an engine bug
            raise RetrievalError(f"internal error in view {req.view.name!r}: {res.num_rows} rows for "
                                 f"{probes.num_rows} probes")
        take = None
        if probes.num_rows != n:  # rows without key or time: no history
            pos = np.full(n, -1, dtype=np.int64)
            pos[res["__rid"].to_numpy()] = np.arange(res.num_rows)
            take = pa.array(pos, mask=pos < 0)
        out: dict[str, pa.ChunkedArray] = {name: res[f"__p{i}"] for i, (_, name) in enumerate(plain)}
        out.update({name: res[f"__w{i}"] for i, (_, name) in enumerate(windowed)})
        for a, name in req.features:
            c = out[name] if take is None else out[name].take(take)
            if a.function in ("count", "count_distinct", "sum"):
                c = pc.fill_null(c, pa.scalar(0, c.type if not pa.types.is_null(c.type) else pa.int64()))
            out[name] = _finish(c, a, req, {})
        self._phase("arrow", t)
        return out

    def _order(self, req: ViewRequest, types: dict) -> tuple[list, str | None]:
        """The tie-break fields after ts (later wins) and, for a single integer order_by column (a log
        offset), its name: events without one never win, as in the DuckDB engine."""
        from pyspark.sql import functions as F
        ob = req.data.order_by
        missing = [c for c in ob if c not in types]
        if missing:
            raise RetrievalError(f"source {req.data.name!r}: order_by column(s) {missing} not found")
        tail = [F.col("__fi"), F.col("__row")]
        if not ob:
            return tail, None
        if len(ob) == 1 and is_offset_type(types[ob[0]]):
            return [col(ob[0]).cast("bigint")] + tail, ob[0]
        fields = []
        for c in ob:  # ascending with nulls last: (is null, value)
            fields += [col(c).isNull(), col(c)]
        return fields + tail, None
