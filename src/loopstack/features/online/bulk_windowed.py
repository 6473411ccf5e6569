"""Batch materialization of views with windowed features, entity by entity.

Applying a span in time order (100,000-row chunks, one `apply_events` call each) rewrites an entity's
state once per chunk it appears in, builds tiles for events that a later chunk's horizon then deletes,
and leaves the tiles of entities no later chunk touches behind the final horizon. Here DuckDB sorts the
span by entity, and each entity's events, in the engine's order (ts, order, file, row), are applied
once with `state.apply_entity` against the horizon of the run's final watermark (into a view without
state or plain fields, DuckDB first folds each entity's events before that horizon into one row: see
`sorted_batches`). The state written is what one `apply_events` call with every event of the run gives
(tests/features/stream/test_bulk_windowed.py compares them byte for byte): the same tiles, latest
entries and meta counters.

Memory is bounded by the batch size: an entity with more events than a batch is applied in pieces, its
state kept in memory and written with its last piece. A killed run is resumable: each batch is written
atomically with a run mark that holds the last whole entity written and the watermark the run started
from, so running again skips the entities already written and counts late events against the same
horizon.
"""
from __future__ import annotations

import json
from itertools import repeat
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from loopstack.features.offline.duckdb_sql import record_batches
from loopstack.features.online.base import WriteBatch
from loopstack.features.online.state import apply_entity, entity_hash, meta_fields, meta_key

if TYPE_CHECKING:
    from loopstack.features.materialize import _Reader
    from loopstack.features.online.service import OnlineFeatures

Group = list   # [raw key, [(ts, order, values), ...] in the engine's order, folded stamps, folded rows, more]


def entity_groups(batches: Iterator[Any], n_order: int, value_cols: Sequence[str], batch_rows: int,
                  ) -> Iterator[list[Group]]:
    """Lists of whole entities, about `batch_rows` events each, from Arrow batches sorted by entity
    (an entity split across Arrow batches is carried over). An entity with more than `batch_rows` events
    comes in pieces: every piece but its last is flagged ``more`` and ends its list. A row with counts ``__n`` and
    ``__c`` stands for ``__c`` old events with ``__n`` distinct (ts, order) (`sorted_batches`): it is the
    newest of them, and the group's last two items count the others."""
    out: list[Group] = []
    rows = 0
    cur_key: Any = object()
    cur: list | None = None
    cols = list(value_cols)
    for rb in batches:
        if rb.num_rows == 0:
            continue
        n = rb.num_rows
        orders = zip(*[rb.column(f"__o{i}").to_pylist() for i in range(n_order)]) if n_order else repeat((), n)
        vals = zip(*[rb.column("v_" + c).to_pylist() for c in cols]) if cols else repeat((), n)
        folded = (zip(rb.column("__n").to_pylist(), rb.column("__c").to_pylist()) if "__n" in rb.schema.names
                  else repeat((None, None), n))
        for k, ts, o, v, (f, c) in zip(rb.column("__k").to_pylist(), rb.column("__ts").to_pylist(), orders, vals,
                                       folded):
            if k == cur_key and len(cur) >= batch_rows:   # one entity with more events than a batch: in pieces
                out[-1][4] = True                         # (every piece but the last is flagged)
                yield out
                cur = []
                out, rows = [[k, cur, 0, 0, False]], 0
            elif k != cur_key:
                if cur is not None and rows >= batch_rows:
                    yield out
                    out, rows = [], 0
                cur_key, cur = k, []
                out.append([k, cur, 0, 0, False])
            cur.append((ts, list(o), dict(zip(cols, v))))
            rows += 1
            if f is not None:
                out[-1][2] += f - 1
                out[-1][3] += c - 1
                rows += c - 1
    if out:
        yield out


def _key_sql(key: Any) -> str:
    return "'" + str(key).replace("'", "''") + "'"


def sorted_batches(reader: "_Reader", spans: Sequence[tuple[int, int]], after: Any, batch_rows: int,
                   fold_before: int | None = None) -> Iterator[Any]:
    """The spans' events sorted by entity (as text: SQLite's B-tree then grows at its end), then in the
    engine's order; only entities after `after` (the last one a killed run wrote) when given.

    `fold_before`: the horizon, for a view with no plain fields and no stored state. An event before it
    takes no tile and only moves the entity's newest (ts, order) forward, once per distinct (ts, order),
    so DuckDB folds an entity's old events into one row, the newest, with their number of distinct
    (ts, order) in ``__n`` and of rows in ``__c``: old history costs no Python per event."""
    where = reader._where(spans)
    if after is not None:
        where = f"({where}) AND __k::VARCHAR > {_key_sql(after)}"
    n_order = reader.n_order
    ords = [f"__o{i}" for i in range(n_order)]
    order = ", ".join(["__k::VARCHAR", "__ts", *ords, "__fi", "__fr"])
    events = f"SELECT * FROM ({reader.base_sql}) WHERE {where}"
    if fold_before is None:
        sql = f"{events} ORDER BY {order}"
    else:
        stamp = "struct_pack(" + ", ".join(f"{c} := {c}" for c in ["__ts", *ords]) + ")"
        newest = ", ".join(f"(__m).{c} AS {c}" for c in ["__ts", *ords])
        sql = (f"WITH ev AS ({events}) "
               f"SELECT * FROM (SELECT *, NULL::BIGINT AS __n, NULL::BIGINT AS __c FROM ev "
               f"WHERE __ts >= {int(fold_before)} "
               f"UNION ALL BY NAME "
               f"SELECT __k, {newest}, __n, __c FROM (SELECT __k, max({stamp}) AS __m, "
               f"count(DISTINCT {stamp}) AS __n, count(*) AS __c "
               f"FROM ev WHERE __ts < {int(fold_before)} GROUP BY __k)) ORDER BY {order}")
    yield from record_batches(reader.engine.con.sql(sql), batch_rows)


def span_stats(reader: "_Reader", spans: Sequence[tuple[int, int]]) -> tuple[int, int | None]:
    """The spans' number of events (for the progress bar) and newest event time (None: no events), in one scan."""
    n, top = reader.engine.con.sql(f"SELECT count(*), max(__ts) FROM ({reader.base_sql}) "
                                   f"WHERE {reader._where(spans)}").fetchall()[0]
    return int(n), None if top is None else int(top)


def _late(too_late: list[int], evs: list, late_before: int | None) -> int:
    """How many of the events `apply_entity` left out of the tiles were behind the horizon before the run."""
    return 0 if late_before is None else sum(1 for j in too_late if evs[j][0] < late_before)


def materialize_windowed(online: "OnlineFeatures", view: Any, reader: "_Reader", res: Any,
                         prior: list[tuple[int, int]], rmark: str, imark: str, run_state: dict, chunk_rows: int,
                         progress: Any) -> None:
    """Materialize `res.spans` of a view with windowed features entity by entity (see the module doc);
    fills `res` (rows, applied, beyond_horizon, chunks) as the time-ordered path does."""
    from loopstack.features.materialize import covered_through
    plan = online.plan(view.name)
    mk = meta_key(view.name)
    meta = online.store.read([mk]).get(mk, {})
    online._check(plan, meta)
    stored_max = int(meta["max_ts"]) if "max_ts" in meta else None
    resumed = bool(run_state.get("by_entity")) and not run_state.get("done")
    base_max = run_state.get("base_max") if resumed else stored_max   # the watermark before this run
    total, top = span_stats(reader, res.spans)
    new_max = max((t for t in (stored_max, top) if t is not None), default=None)
    horizon, late_before = plan.horizon(new_max), plan.horizon(base_max)
    counts = {"applied": int(meta.get("applied", b"0")), "too_late": int(meta.get("too_late", b"0"))}
    done = {"chunks": int(run_state.get("chunks", 0)) if resumed else 0,
            "rows": int(run_state.get("rows", 0)) if resumed else 0}
    after = run_state.get("after") if resumed else None
    fresh = not meta   # no state for this view yet: nothing to read back
    task = progress.add_task(view.name, total=total, completed=done["rows"]) if progress is not None else None

    split: dict[str, Any] = {}   # the entity that comes in pieces: its state is kept here until its last piece
    mark = {"after": after}        # the last whole entity written

    def write(groups: list[Group], last: bool) -> None:
        hks = [entity_hash(view.name, k, plan.dtype) for k, *_ in groups]
        data = {} if fresh else online.store.read([h for h in hks if h is not None])
        batch = WriteBatch()
        applied = late = rows = written = 0   # rows: read now; written: of the entities this write completes
        for hk, (key, evs, folded, folded_rows, more) in zip(hks, groups):
            n = len(evs) + folded_rows
            rows += n
            if not more:
                mark["after"] = key
            if hk is None:
                written += n
                continue
            piece = split.get("hk") == hk
            if not piece and not more:   # the common case: a whole entity
                up = apply_entity(plan, data.get(hk, {}), evs, horizon)
                if up.puts:
                    batch.puts[hk] = up.puts
                if up.deletes:
                    batch.deletes[hk] = up.deletes
                applied += up.applied + folded   # a folded event moves a fresh entity's newest (ts, order)
                late += _late(up.too_late, evs, late_before)
                written += n
                continue
            if not piece:
                stored = data.get(hk, {})
                split.update(hk=hk, stored=stored, fields=dict(stored), applied=0, late=0, rows=0)
            split["rows"] += n
            if evs:
                up = apply_entity(plan, split["fields"], evs, horizon)
                split["fields"].update(up.puts)
                for name in up.deletes:
                    split["fields"].pop(name, None)
                split["applied"] += up.applied + folded
                split["late"] += _late(up.too_late, evs, late_before)
            if not more:   # its last piece: write what changed against the stored state, and count it
                stored, fields = split["stored"], split["fields"]
                puts = {n: v for n, v in fields.items() if stored.get(n) != v}
                deletes = [n for n in stored if n not in fields]
                if puts:
                    batch.puts[hk] = puts
                if deletes:
                    batch.deletes[hk] = deletes
                applied += split["applied"]
                late += split["late"]
                written += split["rows"]
                split.clear()
        counts["applied"] += applied
        counts["too_late"] += late
        batch.puts[mk] = meta_fields(plan, new_max, counts["applied"], counts["too_late"])
        done["chunks"] += 1
        done["rows"] += written   # so a second attempt's progress starts where the written state ends
        after_key = None if last or mark["after"] is None else str(mark["after"])
        batch.progress[rmark] = json.dumps({**done, "through": None, "done": last, "by_entity": True,
                                            "after": after_key, "base_max": base_max})
        if last:
            batch.progress[imark] = json.dumps(covered_through(prior, res.spans, None))
        batch.puts = dict(sorted(batch.puts.items()))
        online.store.write(batch)
        res.chunks += 1
        res.rows += rows
        res.applied += applied
        res.beyond_horizon += late
        if task is not None:
            progress.advance(task, rows)

    pending = None
    fold = horizon if fresh and not plan.plain and not resumed else None
    stream = sorted_batches(reader, res.spans, after, min(chunk_rows, 65_536), fold)
    for groups in entity_groups(stream, reader.n_order, reader.value_cols, chunk_rows):
        if pending is not None:
            write(pending, False)
        pending = groups
    if pending is not None:
        write(pending, True)
    else:   # no events left in the spans: still record them as done
        online.store.write(WriteBatch(progress={
            imark: json.dumps(covered_through(prior, res.spans, None)),
            rmark: json.dumps({**done, "through": None, "done": True, "by_entity": True})}))
