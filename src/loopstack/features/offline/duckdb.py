"""Box 3 on one machine: point-in-time features from Parquet/CSV files with DuckDB.

How each kind of feature is computed (semantics: see ``offline/base.py``):

- plain fields (``Last`` without a window), three steps over BIGINT microseconds:
  1. a keys-only ``ASOF LEFT JOIN`` on (key, ts) with ``row.t > event.ts`` finds each row's matched
     event time (null when there is none or, with a ttl, when ``t - ts > ttl``). Only the key and time
     columns are sorted; events at or after the latest row time are skipped, and when the rows have
     few distinct keys relative to the source's size (Parquet footer row counts), the source is first
     semi-joined to those keys;
  2. the value columns are fetched for the matched (key, ts) pairs only (one scan, hash semi-join);
  3. they are joined back to the rows in input order. If a matched (key, ts) has several events (a
     tie), step 3 returns more rows than the entity table has -- detected for free -- and the fetched
     rows are first reduced to each pair's winner: the later one in ``order_by``, then file order.
  This replaced one ASOF join carrying every value column on a HUGEINT key ``ts * 2**64 + seq``
  (measurements: docs/benchmarks.md, B1).
- windowed aggregations: entity probes (distinct key, t) are appended to the events and every
  aggregate is a window function ``PARTITION BY key ORDER BY ts RANGE BETWEEN w PRECEDING AND 1
  PRECEDING`` over integer microseconds, i.e. exactly ``t - w <= ts < t``; probes carry no values
  and are excluded with ``FILTER (WHERE is_event ...)``. DuckDB evaluates these frames with segment
  trees (no subtract-on-leave), so float sums are ordinary sums of the window's values; integer
  sums are exact (HUGEINT accumulators). A windowed ``Last`` takes ``arg_max`` by the order key
  ``c = ts * 2**64 + (seq + 2**63)`` (a HUGEINT), where ``seq`` is the source's tie-break order
  (file index * 2**40 + row number, or the ``order_by`` rank).

All times are handled as BIGINT microseconds since the epoch (UTC); the connection's TimeZone is
UTC so naive timestamps and strings without an offset are read as UTC.
"""
from __future__ import annotations

import time
from collections import OrderedDict

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loopstack.errors import RetrievalError
from loopstack.features.definitions import Filter
from loopstack.features.offline.base import (OfflineEngine, RetrievalStats, SourceData, ViewRequest,
                                              check_source_columns, entity_join_key)
from loopstack.features.offline.duckdb_index import plain_from_index
from loopstack.features.offline.sorted_index import IndexStore
from loopstack.features.offline.duckdb_sql import (  # noqa: F401 - some are re-exported
    _TS_SHIFT, _SEQ_OFFSET, _ROW_BITS, _PRUNE_KEYS_RATIO, q, _literal, filter_sql, entity_micros, expand_paths,
    _source_rows, _fetch_table, _ts_expr, _agg_sql, _window_out, _check_rows, _finish, _empty_value)
from loopstack.timeutil import to_micros


class DuckDBEngine(OfflineEngine):
    """Point-in-time retrieval with DuckDB: ASOF joins for plain fields, RANGE windows for aggregates."""

    name = "duckdb"

    def __init__(self, threads: int | None = None, memory_limit: str | None = None,
                 temp_dir: str | None = None, index_dir: str | None = None, index: str = "auto",
                 index_min_rows: int = 1_000_000) -> None:
        """`index_dir`: where sorted indexes of sources live (None: never index). `index`: "auto" uses
        one for sources of at least `index_min_rows` events (Parquet footers), "always", or "never"."""
        if index not in ("auto", "always", "never"):
            raise ValueError(f"index={index!r}: use 'auto', 'always' or 'never'")
        self.threads = threads
        self.memory_limit = memory_limit
        self.temp_dir = temp_dir
        self.index = index
        self.index_min_rows = index_min_rows
        self.indexes = IndexStore(index_dir) if index_dir and index != "never" else None
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

    def _exec(self, sql: str, req: ViewRequest | None = None) -> None:
        try:
            self.con.execute(sql)
        except duckdb.Error as exc:
            where = f" for feature view {req.view.name!r} (source {req.data.name!r})" if req else ""
            raise RetrievalError(f"DuckDB could not compute features{where}: {exc}") from exc

    def _ent_info(self, ent: pa.Table, req: ViewRequest) -> dict:
        """What the plain-field join can prune with: the latest row time, and whether the rows' keys are
        few enough, relative to the source's size, to filter the source by them before sorting."""
        valid = pc.and_(pc.is_valid(ent["__k"]), pc.is_valid(ent["__ts"]))
        ts = pc.filter(ent["__ts"], valid)
        t_max = pc.max(ts).as_py() if len(ts) else None
        rows = _source_rows(req.data)
        prune_keys = False
        if t_max is not None and rows is not None:
            prune_keys = pc.count_distinct(pc.filter(ent["__k"], valid)).as_py() * _PRUNE_KEYS_RATIO <= rows
        return {"t_max": t_max, "prune_keys": prune_keys}

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
        rid = pa.array(np.arange(n, dtype=np.int64))
        out = entity_table
        for req in requests:
            t0 = time.perf_counter()
            key = entity_join_key(req.view, entity_table.column_names)
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
            check_source_columns(req.data.name, req.view.name, sorted(feat_cols | {key, req.data.timestamp}), types,
                                 f"its files {list(req.data.paths)}")
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
                ent_info: dict | None = None
                for flt, feats in groups.items():
                    got = self._indexed(src_sql, types, feats, req, ent) if flt is None else None
                    if got is None:
                        ent_info = ent_info or self._ent_info(ent, req)
                        got = self._plain(src_sql, types, flt, feats, req, n, ent_info)
                    result.update(got)
            if windowed:
                result.update(self._windowed(ev_sql, value_cols, windowed, types, req, n))
            return {name: _finish(result[name], agg, req, types) for agg, name in req.features}
        finally:
            con.unregister("__ent")
            try:
                con.unregister("__csv")
            except Exception:  # noqa: BLE001 - not registered for parquet sources
                pass

    def _indexed(self, src_sql: str, types: dict[str, str], feats: list, req: ViewRequest,
                 ent: pa.Table) -> dict | None:
        """Plain fields from the source's sorted index, when indexing is on and the source is big enough."""
        if self.indexes is None or not ent.num_rows:
            return None
        if self.index == "auto" and (_source_rows(req.data) or 0) < self.index_min_rows:
            return None
        return plain_from_index(self, req, src_sql, types, feats, ent, self.indexes)

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

    # -- plain fields: keys-only ASOF join, then fetch the matched rows' values ------------------
    def _plain(self, src_sql: str, types: dict[str, str], flt: Filter | None, feats: list, req: ViewRequest,
               n: int, ent_info: dict) -> dict:
        """Latest event strictly before each row's time (ties: later in order_by / file order wins).

        1. ``ASOF LEFT JOIN`` on (key, BIGINT µs ts) with only those two columns: finds each row's
           matched event time (null when none, or when older than the ttl).
        2. Fetch the values of the matched (key, ts) pairs only: one scan of the source with a hash
           semi-join against the matched pairs.
        3. Join them back to the rows. If some matched (key, ts) has several events (a tie), the
           fetched rows are first reduced to the winner of each pair -- detected for free, because
           the final join then returns more rows than there are entity rows.
        """
        con = self.con
        data = req.data
        key, tcol = req.view.entity.join_key, data.timestamp
        ttl = req.view.ttl_delta
        if ent_info["t_max"] is None:  # no entity row has a usable key and time
            return {name: _empty_value(agg, req, n) for agg, name in feats}
        ts_expr = _ts_expr(q(tcol), types[tcol])
        where = f"{q(key)} IS NOT NULL AND {q(tcol)} IS NOT NULL AND {filter_sql(flt)}"
        tie_order = "__file_index DESC, __row DESC"
        order_cols: list[str] = []
        if data.order_by:
            missing = [c for c in data.order_by if c not in types]
            if missing:
                raise RetrievalError(f"source {data.name!r}: order_by column(s) {missing} not found")
            order_cols = list(data.order_by)
            if len(order_cols) == 1 and types[order_cols[0]].upper() in ("TINYINT", "SMALLINT", "INTEGER",
                                                                         "BIGINT"):
                # a single integer offset is the order key itself; events without one never match
                where += f" AND {q(order_cols[0])} IS NOT NULL"
                tie_order = f"{q(order_cols[0])} DESC, " + tie_order
            else:  # ascending order, nulls last, so the winner is the first in DESC NULLS FIRST
                tie_order = ", ".join(f"{q(c)} DESC NULLS FIRST" for c in order_cols) + ", " + tie_order
        # events at or after the latest row time can never match; with few distinct keys relative to
        # the source, also drop the events of keys no row asks for before sorting
        prune = f" AND {ts_expr} < {ent_info['t_max']}"
        if ent_info["prune_keys"]:
            prune += f" AND {q(key)} IN (SELECT __k FROM __ent)"
        matched_ts = "v.__ts"
        if ttl is not None:
            matched_ts = f"CASE WHEN e.__ts - v.__ts <= {to_micros(ttl)} THEN v.__ts END"
        value_cols = sorted({agg.column for agg, _ in feats})
        try:
            self._exec(
                f"CREATE OR REPLACE TEMP TABLE __m AS SELECT e.__rid, e.__k, {matched_ts} AS __ts "
                f"FROM __ent e ASOF LEFT JOIN (SELECT {q(key)} AS __k, {ts_expr} AS __ts FROM ({src_sql}) "
                f"WHERE {where}{prune}) v ON e.__k = v.__k AND e.__ts > v.__ts", req)
            extra = "".join(f", {q(c)} AS __o{i}" for i, c in enumerate(order_cols))
            self._exec(
                f"CREATE OR REPLACE TEMP TABLE __p AS SELECT ev.* FROM (SELECT {q(key)} AS __k, {ts_expr} AS __ts, "
                f"__file_index, __row{extra}" + "".join(f", {q(c)} AS __v{i}" for i, c in enumerate(value_cols))
                + f" FROM ({src_sql}) WHERE {where}{prune}) ev "
                f"SEMI JOIN (SELECT __k, __ts FROM __m WHERE __ts IS NOT NULL) m "
                f"ON ev.__k = m.__k AND ev.__ts = m.__ts", req)
            vidx = {c: i for i, c in enumerate(value_cols)}
            sel = ", ".join(f"p.__v{vidx[agg.column]} AS __f{i}" for i, (agg, _) in enumerate(feats))
            final = (f"SELECT {sel} FROM __m m LEFT JOIN __p p ON m.__k = p.__k AND m.__ts = p.__ts "
                     f"ORDER BY m.__rid")
            tbl = self._arrow(final, req)
            if tbl.num_rows != n:  # some matched (key, ts) has tied events: keep each pair's winner
                order_sql = tie_order
                for i, c in enumerate(order_cols):
                    order_sql = order_sql.replace(q(c), f"__o{i}")
                self._exec("CREATE OR REPLACE TEMP TABLE __p AS SELECT * FROM __p QUALIFY row_number() OVER "
                           f"(PARTITION BY __k, __ts ORDER BY {order_sql}) = 1", req)
                tbl = self._arrow(final, req)
        finally:
            con.execute("DROP TABLE IF EXISTS __m")
            con.execute("DROP TABLE IF EXISTS __p")
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
