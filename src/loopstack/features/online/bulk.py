"""Bulk batch materialization of views without windowed features (plain latest-value fields only).

For plain fields only the newest event per entity matters: an entity's ``latest`` entry is the
maximum, by ``(ts, order)``, over every event ever applied (per plain slot: over the events its
filter matches). That maximum does not depend on the order events are applied in, so instead of
applying events one by one in time order, DuckDB aggregates the whole span per entity
(``arg_max`` by ``(ts, order, -file_index, -row)``: among equal ``(ts, order)`` the first event in
the engine's order wins, as when applying one by one), and each entity's result is merged once
with its stored entry. The state written is byte for byte what `OnlineFeatures.apply_events`
writes event by event, including the per-view ``applied`` counter (events that changed state).

Used by `materialize` for views whose plan has no windowed sigs; see `apply_plain_bulk`.
"""
from __future__ import annotations

import dataclasses
import json
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from loopstack.features.online.base import WriteBatch
from loopstack.features.online.bulk_text import fresh_texts
from loopstack.features.online.bulk_writer import OrderedWriter
from loopstack.features.online.state import (_INT_DTYPES, LATEST, ViewPlan, _norm, decode_latest, encode_latest,
                                             entity_hash, hash_key, meta_fields, meta_key)

if TYPE_CHECKING:
    from loopstack.features.materialize import _Reader
    from loopstack.features.online.service import OnlineFeatures


@dataclasses.dataclass
class BulkBatch:
    """What one written batch of entities did."""

    rows: int        # source events aggregated into these entities
    applied: int     # events that changed state (as counted event by event)
    entities: int
    max_ts: int | None


def _struct_key(ts: str, order: Sequence[str]) -> str:
    """An event's (ts, order) as a DuckDB struct (structs compare field by field)."""
    return "struct_pack(" + ", ".join([f"t := {ts}"] + [f"o{i} := {o}" for i, o in enumerate(order)]) + ")"


def _entry(d: dict | None) -> list | None:
    """A (ts, order) struct from DuckDB as [ts, [order...]]."""
    if d is None:
        return None
    v = list(d.values())
    return [v[0], v[1:]]


def _filter_sql(flt) -> str:  # noqa: ANN001 - Filter
    from loopstack.features.offline.duckdb import filter_sql
    return filter_sql(dataclasses.replace(flt, column="v_" + flt.column))


class _Query:
    """The per-entity aggregate over the spans, and the exact applied count where it is needed."""

    def __init__(self, plan: ViewPlan, reader: "_Reader", spans: Sequence[tuple[int, int]],
                 ordered: bool = True) -> None:
        from loopstack.features.offline.duckdb import q
        n = self.n_order = reader.n_order
        self.order = [f"__o{i}" for i in range(n)]
        k = self.key = _struct_key("__ts", self.order)                   # the event's (ts, order)
        win = "row(" + ", ".join(["__ts", *self.order, "-__fi", "-__fr"]) + ")"  # ties: first in engine order
        unique = not reader.data.order_by  # files: order is (file_index, row), unique by construction
        # Files: (ts, file_index, row) packed in one HUGEINT (ts << 64 | file << 40 | row) compares the
        # same and aggregates ~2.5x faster than a struct; valid for < 2^23 files of < 2^40 rows
        # (checked per batch: `_check_packed`).
        self.packed = unique and n == 2
        kk = "((__ts::HUGEINT << 64) + (__o0::HUGEINT << 40) + __o1::HUGEINT)" if self.packed else k
        if self.packed:
            win = kk
        self.groups: list[Any] = []        # distinct filters of the plain slots (None: unfiltered)
        for _, flt in plan.plain:
            if flt not in self.groups:
                self.groups.append(flt)
        sel = ["__k", "count(*) AS __n", f"{'count(*)' if unique else f'count(DISTINCT {k})'} AS __nd",
               f"max({kk}) AS __seen", f"min({kk}) AS __min"]
        if self.packed:
            sel += ["max(__o0) AS __maxf", "max(__o1) AS __maxr"]
        for gi, flt in enumerate(self.groups):
            cols = [c for c, f in plan.plain if f == flt]
            fields = ["__ts := __ts"] + [f"__o{i} := __o{i}" for i in range(n)]
            fields += [f"c{j} := {q('v_' + c)}" for j, c in enumerate(cols)]
            cond = "" if flt is None else f" FILTER (WHERE {_filter_sql(flt)})"
            sel.append(f"arg_max(struct_pack({', '.join(fields)}), {win}){cond} AS __g{gi}")
        self.slot_fields: list[tuple[int, str]] = []  # per plain slot: (group, struct field of its value)
        for c, f in plan.plain:
            cols = [cc for cc, ff in plan.plain if ff == f]
            self.slot_fields.append((self.groups.index(f), f"c{cols.index(c)}"))
        self.events_sql = f"SELECT * FROM ({reader.base_sql}) WHERE {reader._where(spans)}"
        agg = f"SELECT {', '.join(sel)} FROM ({self.events_sql}) GROUP BY __k"
        if self.packed:  # unpack (ts, file, row) into the struct the rest reads
            unpack = ", ".join(f"struct_pack(t := ({c} >> 64)::BIGINT, o0 := (({c} - (({c} >> 64) << 64)) >> 40)"
                               f"::BIGINT, o1 := ({c} % 1099511627776::HUGEINT)::BIGINT) AS {c}"
                               for c in ("__seen", "__min"))
            agg = f"SELECT * REPLACE ({unpack}) FROM ({agg})"
        # entities in hash-key order: SQLite appends to its B-tree instead of inserting at random
        # (`ordered`; Redis gains nothing from it)
        self.sql = f"{agg} ORDER BY __k::VARCHAR" if ordered else agg
        self.con = reader.engine.con
        self.plan = plan

    def batches(self, batch_rows: int) -> Iterator:
        import pyarrow.compute as pc

        from loopstack.features.offline.duckdb_sql import record_batches
        rel = self.con.sql(self.sql)
        for rb in record_batches(rel, batch_rows):
            if self.packed and rb.num_rows and (pc.max(rb.column("__maxf")).as_py() >= 1 << 23
                                                or pc.max(rb.column("__maxr")).as_py() >= 1 << 40):
                raise ValueError("bulk materialization: more than 2^23 files or 2^40 rows in one file; "
                                 "run materialize(..., bulk=False)")
            yield rb

    def exact_applied(self, stored: dict[Any, tuple]) -> int:
        """Events that change state, counted as `apply_events` does (in (ts, order) order), for the
        entities whose stored entries interleave with the span's events (rare: overlapping or
        out-of-order runs). `stored`: key -> (seen, slot entries)."""
        import pyarrow as pa
        n, plan = self.n_order, self.plan
        cols: dict[str, list] = {"__k": list(stored)}

        def put(entry: list | None, name: str) -> None:
            cols.setdefault(f"{name}_t", []).append(None if entry is None else entry[0])
            for i in range(n):
                cols.setdefault(f"{name}_o{i}", []).append(None if entry is None else entry[1][i])
        for seen, entries in stored.values():
            put(seen, "s")
            for gi, flt in enumerate(self.groups):
                if flt is not None:  # a matching event changes a slot of the group if newer than its oldest entry
                    es = [entries[i] for i, (_, f) in enumerate(plan.plain) if f == flt]
                    put(None if any(e is None for e in es) else min(es, key=lambda e: (e[0], list(e[1]))), f"e{gi}")
        conds = [f"{self.key} > {_struct_key('st.s_t', [f'st.s_o{i}' for i in range(n)])}"]
        for gi, flt in enumerate(self.groups):
            if flt is not None:
                ek = _struct_key(f"st.e{gi}_t", [f"st.e{gi}_o{i}" for i in range(n)])
                conds.append(f"({_filter_sql(flt)} AND (st.e{gi}_t IS NULL OR {self.key} > {ek}))")
        cur = self.con.cursor()  # the aggregate is still streaming on the main connection
        try:
            cur.register("__bulk_stored", pa.table(cols))
            sql = (f"SELECT count(DISTINCT (ev.__k, {self.key})) FROM ({self.events_sql}) ev "
                   f"JOIN __bulk_stored st ON ev.__k = st.__k WHERE {' OR '.join(conds)}")
            return int(cur.sql(sql).fetchall()[0][0])
        finally:
            cur.close()


def _gt(a: list | None, b: list | None) -> bool:
    """(ts, order) of entry a > that of entry b (None is smallest)."""
    if a is None:
        return False
    return b is None or (a[0], list(a[1])) > (b[0], list(b[1]))


@dataclasses.dataclass
class _Meta:
    """The view's meta counters, carried from batch to batch in memory (each entity is in exactly one
    batch, so only the meta hash carries over; it is read once, when the run starts)."""

    max_ts: int | None
    applied: int
    too_late: int


_COLUMN_BATCH = 25_000  # entities per batch when the store takes column writes (Redis): see `apply_plain_bulk`


def apply_plain_bulk(online: "OnlineFeatures", view: str, reader: "_Reader", spans: Sequence[tuple[int, int]],
                     batch_rows: int, marks: Callable[[BulkBatch, bool], dict[str, str]]) -> Iterator[BulkBatch]:
    """Aggregate the spans per entity in DuckDB and merge each entity once with its stored state,
    about `batch_rows` entities per atomic write (with the progress marks `marks(batch, is_last)`).

    A store with ``write_columns`` (Redis) gets new entities as Arrow columns, in batches of at most
    25,000 entities, written by one writer thread (in order, one batch queued) while the next batch
    is built; a batch is yielded once it is written."""
    plan = online.plan(view)
    if plan.sigs:
        raise ValueError(f"view {view!r} has windowed features: the bulk path is for plain fields only")
    columns = callable(getattr(online.store, "write_columns", None))
    query = _Query(plan, reader, spans, ordered=not columns)
    mk = meta_key(view)
    meta = online.store.read([mk]).get(mk, {})
    online._check(plan, meta)
    # A view without state when the run starts (no meta hash: state and meta are always written
    # together) has no stored entity to read.
    query.fresh = not meta
    state = _Meta(int(meta["max_ts"]) if "max_ts" in meta else None,
                  int(meta.get("applied", b"0")), int(meta.get("too_late", b"0")))
    if columns:
        batch_rows = min(batch_rows, _COLUMN_BATCH)
    writer = OrderedWriter(online.store) if columns else None
    try:
        pending = None
        for rb in query.batches(batch_rows):
            if rb.num_rows == 0:
                continue
            if pending is not None:
                yield from _submit(online, _prepare(online, query, pending, marks, False, state), writer)
            pending = rb
        if pending is not None:
            yield from _submit(online, _prepare(online, query, pending, marks, True, state), writer)
        if writer is not None:
            yield from writer.drain()
    finally:
        if writer is not None:
            writer.close()


def _submit(online: "OnlineFeatures", prepared: tuple, writer: "OrderedWriter | None") -> Iterator[BulkBatch]:
    """Write a prepared batch now (no writer), or hand it to the writer; yields the batches written."""
    if writer is None:
        online.store.write(prepared[1])
        yield prepared[0]
    else:
        yield from writer.put(*prepared)


def _prepare(online: "OnlineFeatures", query: _Query, rb, marks: Callable[[BulkBatch, bool], dict[str, str]],  # noqa: ANN001
             last: bool, state: _Meta) -> tuple[BulkBatch, WriteBatch, tuple | None]:
    """One batch's write: (what it did, the WriteBatch, and for a store with ``write_columns`` the
    new entities as Arrow columns (keys, field, values), else None with them in the WriteBatch)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    plan = query.plan
    mk = meta_key(plan.name)
    columns = callable(getattr(online.store, "write_columns", None))
    kcol = rb.column("__k")
    if pa.types.is_integer(kcol.type) and plan.dtype in _INT_DTYPES and not kcol.null_count:
        # canonical_key of an int for an int entity is its decimal text
        hk_arr = pc.binary_join_element_wise(hash_key(plan.name, ""), pc.cast(kcol, pa.string()), "")
        hks: list[str | None] | None = None
    else:
        hks = [entity_hash(plan.name, k, plan.dtype) for k in kcol.to_pylist()]
        hk_arr = pa.array(hks, pa.string())
    valid = hk_arr.is_valid()
    data: dict = {}
    if not query.fresh:
        if hks is None:
            hks = hk_arr.to_pylist()
        data = online.store.read([h for h in hks if h is not None])
    if data:  # entities with a stored entry are merged in Python; the others take the span's text
        new_np = np.array([h is not None and (data.get(h) or {}).get(LATEST) is None for h in hks], dtype=bool)
        new = pa.array(new_np)
    else:
        new_np, new = None, valid
    n_new = pc.sum(pc.cast(new, pa.int64())).as_py() or 0
    entities = pc.sum(pc.cast(valid, pa.int64())).as_py() or 0
    seen_t = pc.struct_field(rb.column("__seen"), "t")
    top = pc.max(pc.filter(seen_t, valid)).as_py() if entities else None
    new_max = state.max_ts if top is None else top if state.max_ts is None else max(state.max_ts, top)
    applied = (pc.sum(pc.filter(rb.column("__nd"), new)).as_py() or 0) if n_new else 0
    texts = fresh_texts(query, rb) if n_new else None
    batch = WriteBatch()
    if new_np is not None and entities > n_new:
        applied += _merge(query, rb, hks, data, new_np, batch)
    cols = None
    if n_new:
        keys, vals = (hk_arr, texts) if new is valid and not hk_arr.null_count else (
            pc.filter(hk_arr, new), pc.filter(texts, new))
        if columns:
            cols = (keys, LATEST, vals)
        else:
            batch.puts.update(zip(keys.to_pylist(), ({LATEST: v} for v in vals.to_pylist())))
    if entities:
        state.max_ts, state.applied = new_max, state.applied + applied
        batch.puts[mk] = meta_fields(plan, new_max, state.applied, state.too_late)
    res = BulkBatch(pc.sum(rb.column("__n")).as_py() or 0, applied, entities, new_max)
    batch.progress = dict(marks(res, last))
    if not columns:
        batch.puts = dict(sorted(batch.puts.items()))  # key order: B-tree locality (SQLite)
    return res, batch, cols


def _merge(query: _Query, rb, hks: list, data: dict, new_np, batch: WriteBatch) -> int:  # noqa: ANN001
    """Merge the batch's entities that have a stored entry with it (puts into `batch` those that
    change); returns the events among them that changed state, counted as `apply_events` would."""
    ocols = [f"__o{i}" for i in range(query.n_order)]
    keys = rb.column("__k").to_pylist()
    nds = rb.column("__nd").to_pylist()
    groups = [rb.column(f"__g{gi}").to_pylist() for gi in range(len(query.groups))]
    seens, mins = rb.column("__seen").to_pylist(), rb.column("__min").to_pylist()
    applied = 0
    mixed: dict[Any, tuple] = {}
    for i, hk in enumerate(hks):
        if hk is None or new_np[i]:
            continue
        latest = decode_latest(data[hk][LATEST])
        old_seen, old_entries = latest[1], latest[2:]
        changed = False
        for s, (gi, fld) in enumerate(query.slot_fields):
            w = groups[gi][i]
            if w is None:
                continue
            e = latest[2 + s]
            wt, wo = w["__ts"], [w[o] for o in ocols]
            if e is None or (wt, wo) > (e[0], list(e[1])):
                latest[2 + s] = [wt, wo, _norm(w[fld])]
                changed = True
        top = _entry(seens[i])
        if _gt(top, latest[1]):
            latest[1] = top
            changed = True
        if changed:
            batch.puts[hk] = {LATEST: encode_latest(latest)}
        # events that changed state, counted as applying them one by one in (ts, order) order would
        if _gt(_entry(mins[i]), old_seen):
            applied += nds[i]              # every event is newer than anything stored
        elif changed:
            mixed[keys[i]] = (old_seen, old_entries)  # interleaved with the stored state: count exactly
    if mixed:
        applied += query.exact_applied(mixed)
    return applied


def materialize_view(online: "OnlineFeatures", view: Any, reader: "_Reader", res: Any,
                     prior: list[tuple[int, int]], rmark: str, imark: str, chunk_rows: int, progress: Any) -> None:
    """A view of plain fields only: DuckDB keeps the newest event per entity, merged once per entity
    (online/bulk.py). Order-independent, so a killed run is simply run again; the applied
    intervals are recorded with the last batch."""
    from loopstack.features.materialize import covered_through
    task = progress.add_task(view.name, total=reader.count(res.spans)) if progress is not None else None
    done = {"chunks": 0, "rows": 0}

    def marks(b: Any, last: bool) -> dict[str, str]:
        done["chunks"] += 1
        done["rows"] += b.rows
        out = {rmark: json.dumps({**done, "through": None, "done": last, "bulk": True})}
        if last:
            out[imark] = json.dumps(covered_through(prior, res.spans, None))
        return out

    for b in apply_plain_bulk(online, view.name, reader, res.spans, chunk_rows, marks):
        res.chunks += 1
        res.rows += b.rows
        res.applied += b.applied
        if task is not None:
            progress.advance(task, b.rows)
    if not res.chunks:  # no events in the spans: still record them as done
        from loopstack.features.online.base import WriteBatch
        online.store.write(WriteBatch(progress={imark: json.dumps(covered_through(prior, res.spans, None)),
                                                rmark: json.dumps({**done, "through": None, "done": True})}))
