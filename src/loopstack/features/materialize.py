"""Batch materialization: load the online store from the offline store (Parquet lake / batch files).

For each view, the events with ``start <= ts < end`` are read with DuckDB in the offline engine's
order (event time, then the tie-break: ``(append_ts, partition, offset)`` for log topics,
``(file_index, row_number)`` for files — files in `expand_paths` order), in chunks of about
`chunk_rows` rows, and applied with ``project.online.apply_events``. Memory stays bounded: DuckDB
streams the sorted result (spilling to disk if it must) and only one or two chunks are in Python.

Idempotent and resumable. Every chunk is written together with two progress marks, in the same
atomic write as the state it produced:

- ``materialize:<view>:intervals`` — the event-time intervals (µs, half-open) already applied, as
  JSON ``[[start, end], ...]``. A chunk never splits a group of equal timestamps, so after a chunk
  whose last event is at ``T`` the interval ``[start, T + 1)`` is exactly what was applied.
- ``materialize:<view>:run:<start>:<end>`` — the run's chunks done, rows applied and how far it got.

A new run subtracts the applied intervals from ``[start, end)`` before reading, so a run killed at
any point and started again applies exactly the events the first attempt did not, and overlapping
runs never apply an event twice. `materialize_incremental` continues from each view's last applied
end (or its earliest event).
"""
from __future__ import annotations

import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import pyarrow as pa

from loopstack.errors import DefinitionError, RetrievalError
from loopstack.features.offline.base import check_source_columns
from loopstack.features.offline.duckdb_sql import check_text_columns, record_batches
from loopstack.features.definitions import FeatureView
from loopstack.features.retrieval import check_batch_files
from loopstack.timeutil import to_us, us_to_iso

if TYPE_CHECKING:
    from loopstack.project import Project

MARK_PREFIX = "materialize:"

Interval = tuple[int, int]


# -- interval arithmetic (pure) ---------------------------------------------------------------------
def merge_intervals(intervals: Sequence[Interval]) -> list[Interval]:
    """Sorted, non-overlapping, non-adjacent half-open intervals covering the same points."""
    out: list[list[int]] = []
    for s, e in sorted((int(s), int(e)) for s, e in intervals if e > s):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(s, e) for s, e in out]


def subtract_intervals(span: Interval, covered: Sequence[Interval]) -> list[Interval]:
    """The parts of `span` not in `covered`."""
    s, e = span
    out: list[Interval] = []
    cur = s
    for cs, ce in merge_intervals(covered):
        if ce <= cur or cs >= e:
            continue
        if cs > cur:
            out.append((cur, min(cs, e)))
        cur = max(cur, ce)
        if cur >= e:
            break
    if cur < e:
        out.append((cur, e))
    return out


def covered_through(prior: Sequence[Interval], spans: Sequence[Interval], last_ts: int | None) -> list[Interval]:
    """`prior` plus the parts of `spans` at or before `last_ts` (None: all of them)."""
    add = list(spans) if last_ts is None else [(s, min(e, last_ts + 1)) for s, e in spans if s <= last_ts]
    return merge_intervals(list(prior) + add)


# -- marks -------------------------------------------------------------------------------------------
def intervals_mark(view: str) -> str:
    return f"{MARK_PREFIX}{view}:intervals"


def run_mark(view: str, start: int, end: int) -> str:
    return f"{MARK_PREFIX}{view}:run:{start}:{end}"


def materialized_intervals(project: "Project", view: str) -> list[Interval]:
    """The event-time intervals (µs, half-open) already applied to the online store for `view`."""
    raw = project.online_store.progress(intervals_mark(view)).get(intervals_mark(view))
    return [(int(s), int(e)) for s, e in json.loads(raw)] if raw else []


# -- results -----------------------------------------------------------------------------------------
@dataclass
class ViewMaterialization:
    """What one view's run did."""

    view: str
    requested: Interval
    spans: list[Interval] = field(default_factory=list)   # the parts not applied before (what this run read)
    rows: int = 0
    applied: int = 0
    beyond_horizon: int = 0   # events older than the view's retention horizon: only plain fields needed them
    chunks: int = 0
    resumed_chunks: int = 0                                 # chunks an earlier, interrupted attempt did
    seconds: float = 0.0


@dataclass
class MaterializeResult:
    """Per view, what a `materialize` call did."""

    views: dict[str, ViewMaterialization] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views.values())

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


# -- reading the source in order ----------------------------------------------------------------
def _value_columns(view: FeatureView) -> list[str]:
    cols: list[str] = []
    for f in view.features:
        for c in (f.column, f.filter.column if f.filter else None):
            if c and c not in cols:
                cols.append(c)
    return cols


def _value_expr(col: str, dtype: str) -> str:
    t = dtype.upper()
    if t.startswith("TIMESTAMP") and "TIME ZONE" not in t and t != "TIMESTAMPTZ":
        return f"CAST({col} AS TIMESTAMP)::TIMESTAMPTZ"  # naive: UTC, like the engine; aware datetimes out
    return col


class _Reader:
    """Builds the ordered, filtered SQL over a source and streams it in Arrow batches."""

    def __init__(self, project: "Project", view: FeatureView) -> None:
        from loopstack.features.offline.base import SourceData, ViewRequest
        from loopstack.features.offline.duckdb import DuckDBEngine
        cfg = project.config.offline
        tmp = project.lake_path.parent / ".duckdb_tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        self.engine = DuckDBEngine(threads=cfg.threads, memory_limit=cfg.memory_limit, temp_dir=str(tmp))
        self.view = view
        self.data: SourceData = project.source_data(view.source)
        self.value_cols = _value_columns(view)
        src = self.engine._source(ViewRequest(view, (), self.data))  # same files, same order as retrieval
        self.base_sql: str | None = None
        if src is not None:
            self.base_sql = self._base(*src)

    def _base(self, src_sql: str, types: dict[str, str]) -> str:
        from loopstack.features.offline.duckdb import _ts_expr, q
        key, ts = self.view.entity.join_key, self.data.timestamp
        check_source_columns(self.data.name, self.view.name, [key, ts, *self.value_cols], types)
        check_text_columns(self.engine.con, src_sql, types, self.view, [key, ts, *self.value_cols])
        order = []
        for c in self.data.order_by:
            if c not in types:
                raise RetrievalError(f"source {self.data.name!r}: order column {c!r} not found")
            t = types[c].upper()
            order.append(_ts_expr(q(c), types[c]) if t.startswith(("TIMESTAMP", "DATE")) else f"{q(c)}::BIGINT")
        if not order:  # files: (file_index, row_number), the engine's tie-break
            order = ["__file_index::BIGINT", "__row::BIGINT"]
        self.n_order = len(order)
        sel = ", ".join([f"{q(key)} AS __k", f"{_ts_expr(q(ts), types[ts])} AS __ts"]
                        + [f"{o} AS __o{i}" for i, o in enumerate(order)]
                        + ["__file_index::BIGINT AS __fi", "__row::BIGINT AS __fr"]
                        + [f"{_value_expr(q(c), types[c])} AS {q('v_' + c)}" for c in self.value_cols])
        return f"SELECT {sel} FROM ({src_sql}) WHERE {q(key)} IS NOT NULL AND {q(ts)} IS NOT NULL"

    @staticmethod
    def _where(spans: Sequence[Interval]) -> str:
        return " OR ".join(f"(__ts >= {s} AND __ts < {e})" for s, e in spans) or "FALSE"

    def count(self, spans: Sequence[Interval]) -> int:
        if self.base_sql is None or not spans:
            return 0
        sql = f"SELECT count(*) FROM ({self.base_sql}) WHERE {self._where(spans)}"
        return int(self.engine.con.sql(sql).fetchall()[0][0])

    def earliest(self) -> int | None:
        if self.base_sql is None:
            return None
        return self.engine.con.sql(f"SELECT min(__ts) FROM ({self.base_sql})").fetchall()[0][0]

    def batches(self, spans: Sequence[Interval], batch_rows: int) -> Iterator[pa.RecordBatch]:
        if self.base_sql is None or not spans:
            return
        order = ", ".join(["__ts"] + [f"__o{i}" for i in range(self.n_order)] + ["__fi", "__fr"])
        rel = self.engine.con.sql(f"SELECT * FROM ({self.base_sql}) WHERE {self._where(spans)} ORDER BY {order}")
        yield from record_batches(rel, batch_rows)

    def close(self) -> None:
        self.engine.close()


def open_reader(project: "Project", view: FeatureView):  # -> _Reader | SparkReader
    """The source reader of the configured offline engine (`offline.engine`): DuckDB or Spark."""
    if project.config.offline.engine == "spark":
        from loopstack.features.offline.spark_reader import SparkReader
        return SparkReader(project, view)
    return _Reader(project, view)


def chunk_by_time(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[tuple[pa.Table, bool]]:
    """Re-cut ts-ordered batches into chunks of about `chunk_rows` that never split equal timestamps.

    Yields (chunk, is_last). A chunk is longer than `chunk_rows` only when one timestamp has more rows.
    """
    import numpy as np
    pending: pa.Table | None = None
    for batch in batches:
        if batch.num_rows == 0:
            continue
        tb = pa.Table.from_batches([batch])
        pending = tb if pending is None else pa.concat_tables([pending, tb])
        while pending.num_rows > chunk_rows:
            ts = pending["__ts"].to_numpy()
            cut = int(np.searchsorted(ts, ts[chunk_rows - 1], side="right"))
            if cut >= pending.num_rows:
                break  # this timestamp may continue in the next batch
            yield pending.slice(0, cut), False
            pending = pending.slice(cut)
        if pending.num_rows:
            pending = pending.combine_chunks()
    if pending is not None and pending.num_rows:
        yield pending, True


def table_events(tbl: pa.Table, n_order: int, value_cols: Sequence[str]) -> list:
    """Rows of an ordered chunk as `service.Event`s."""
    from loopstack.features.online.service import Event
    keys = tbl["__k"].to_pylist()
    tss = tbl["__ts"].to_pylist()
    orders = list(zip(*[tbl[f"__o{i}"].to_pylist() for i in range(n_order)]))
    vals = [tbl["v_" + c].to_pylist() for c in value_cols]
    cols = list(value_cols)
    return [Event(keys[i], tss[i], tuple(orders[i]), dict(zip(cols, (v[i] for v in vals))))
            for i in range(tbl.num_rows)]


# -- the runs ----------------------------------------------------------------------------------------
def _select_views(project: "Project", views: Sequence[str] | None) -> list[FeatureView]:
    known = project.registry.views()
    if not known:
        raise DefinitionError("no feature views are applied: run `loopstack apply` first")
    if not views:
        return [known[n] for n in sorted(known)]
    views = list(dict.fromkeys(views))   # `-v a -v a`: once (a second pass would report the first one's work as done)
    unknown = [v for v in views if v not in known]
    if unknown:
        raise DefinitionError(f"unknown feature view(s) {unknown}; applied views are {sorted(known)}")
    return [known[v] for v in views]


def _write_marks(project: "Project", marks: dict[str, str]) -> None:
    from loopstack.features.online.base import WriteBatch
    project.online_store.write(WriteBatch(progress=marks))


def _materialize_view(project: "Project", view: FeatureView, start: int, end: int, chunk_rows: int,
                      progress: Any, reader: _Reader | None = None, bulk: bool = True) -> ViewMaterialization:
    t0 = time.perf_counter()
    res = ViewMaterialization(view.name, (start, end))
    rmark, imark = run_mark(view.name, start, end), intervals_mark(view.name)
    marks = project.online_store.progress(f"{MARK_PREFIX}{view.name}:")
    prior = [(int(s), int(e)) for s, e in json.loads(marks.get(imark, "[]"))]
    run_state = json.loads(marks[rmark]) if rmark in marks else {"chunks": 0, "rows": 0}
    res.resumed_chunks = 0 if run_state.get("done") else int(run_state.get("chunks", 0))
    res.spans = subtract_intervals((start, end), prior) if end > start else []
    if not res.spans:
        res.seconds = time.perf_counter() - t0
        return res
    online = project.online  # one OnlineFeatures for the whole run (the property reads the registry)
    own = reader is None
    reader = reader or open_reader(project, view)
    try:
        if bulk and reader.base_sql is not None:
            if online.plan(view.name).sigs:   # windowed: entity by entity (online/bulk_windowed.py)
                from loopstack.features.online.bulk_windowed import materialize_windowed
                materialize_windowed(online, view, reader, res, prior, rmark, imark, run_state, chunk_rows, progress)
            else:                             # plain fields only: one aggregate per entity (online/bulk.py)
                from loopstack.features.online.bulk import materialize_view
                materialize_view(online, view, reader, res, prior, rmark, imark, chunk_rows, progress)
            res.seconds = time.perf_counter() - t0
            return res
        total = reader.count(res.spans)
        task = progress.add_task(view.name, total=total) if progress is not None else None
        chunks, rows = res.resumed_chunks, int(run_state.get("rows", 0)) if res.resumed_chunks else 0
        wrote_last = False
        for tbl, last in chunk_by_time(reader.batches(res.spans, min(chunk_rows, 65_536)), chunk_rows):
            events = table_events(tbl, reader.n_order, reader.value_cols)
            last_ts = events[-1].ts
            chunks += 1
            rows += len(events)
            covered = covered_through(prior, res.spans, None if last else last_ts)
            state = {"chunks": chunks, "rows": rows, "through": last_ts, "done": last}
            stats = online.apply_events(view.name, events, progress={
                imark: json.dumps(covered), rmark: json.dumps(state)})
            res.chunks += 1
            res.rows += len(events)
            res.applied += stats.applied
            res.beyond_horizon += len(stats.too_late)
            wrote_last = last
            if task is not None:
                progress.advance(task, len(events))
        if not wrote_last:  # no events at all in the spans: still record them as done
            _write_marks(project, {imark: json.dumps(covered_through(prior, res.spans, None)),
                                   rmark: json.dumps({"chunks": chunks, "rows": rows, "through": None,
                                                      "done": True})})
    finally:
        if own:
            reader.close()
    res.seconds = time.perf_counter() - t0
    return res


def _progress_bar(enabled: bool):
    if not enabled:
        return None
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                               TimeElapsedColumn)
    from rich.text import Text

    class RowsPerSecond(ProgressColumn):
        def render(self, task) -> Text:  # noqa: ANN001 - rich's Task
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} rows/s" if speed else "- rows/s", style="cyan")

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), RowsPerSecond(),
                    TimeElapsedColumn())


def materialize(project: "Project", start: Any, end: Any, views: Sequence[str] | None = None,
                progress: bool = True, chunk_rows: int = 100_000, bulk: bool = True) -> MaterializeResult:
    """Apply every event with ``start <= ts < end`` not applied before to the online store, per view.

    `start`/`end`: datetimes (naive = UTC), ISO 8601 strings or µs integers. Safe to re-run and to
    kill: see the module docstring. Returns, per view, the spans read, rows, chunks and the events
    beyond the retention horizon (older than the newest event - allowed lateness - longest window).
    """
    if chunk_rows < 1:
        raise RetrievalError(f"chunk_rows must be >= 1, got {chunk_rows}")
    s, e = to_us(start), to_us(end)
    if e <= s:
        raise RetrievalError(f"end {us_to_iso(e)} is before start {us_to_iso(s)}: swap them" if e < s else
                             f"start and end are both {us_to_iso(s)}: the range [start, end) is empty; give an "
                             "end after the start")
    selected = _select_views(project, views)
    for view in selected:   # before any view is touched: a missing file would be marked "done" for good
        if view.source.is_batch:
            check_batch_files(view, project.source_data(view.source), str(project.path(view.source.path)))
    t0 = time.perf_counter()
    out = MaterializeResult()
    with _progress_bar(progress) or nullcontext() as bar:
        for view in selected:
            out.views[view.name] = _materialize_view(project, view, s, e, chunk_rows, bar, bulk=bulk)
    out.seconds = time.perf_counter() - t0
    return out


def materialize_incremental(project: "Project", end: Any, views: Sequence[str] | None = None,
                            progress: bool = True, chunk_rows: int = 100_000, bulk: bool = True) -> MaterializeResult:
    """Materialize each view from where it was last materialized to (or its earliest event) up to `end`."""
    e = to_us(end)
    selected = _select_views(project, views)
    t0 = time.perf_counter()
    out = MaterializeResult()
    with _progress_bar(progress) or nullcontext() as bar:
        for view in selected:
            done = materialized_intervals(project, view.name)
            reader = open_reader(project, view)
            try:
                s = done[-1][1] if done else reader.earliest()
                if s is None or s >= e:  # no events, or already materialized through `end`
                    out.views[view.name] = ViewMaterialization(view.name, (e if s is None else s, e))
                    continue
                out.views[view.name] = _materialize_view(project, view, int(s), e, chunk_rows, bar, reader, bulk)
            finally:
                reader.close()
    out.seconds = time.perf_counter() - t0
    return out
