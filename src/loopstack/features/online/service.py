"""The online feature service: applies events to an OnlineStore and reads features from it.

CONTRACT (stub written by the lead; implementation in progress). Everything that writes to the
online store (batch materialization, streaming) goes through `OnlineFeatures.apply_events`;
everything that reads (in-process API, HTTP feature server, parity check) goes through
`OnlineFeatures.get_online_features`. The feature math is in the pure core `online/state.py`.

Semantics are the offline engine's (see offline/base.py) evaluated as of `as_of` (default: now):
strictly-before, ttl on plain fields, windows ``[as_of - w, as_of)``, ties by `Event.order`.
Reads are exact for any ``as_of >= watermark - allowed_lateness`` of the view, where the watermark
is the newest event ts applied to the view (older tiles may have been evicted); plain fields are
exact for as_of after the entity's newest event (an entry at or after as_of reads as None).

Entity keys: join-key values as given (int or str); hashes are keyed by `state.canonical_key`, so
42 and "42" are different entities unless the entity's dtype says which is meant (an int entity
reads "42" as 42; a string entity reads 42 as "42").
"""
from __future__ import annotations

from dataclasses import dataclass, field
import difflib
import time
from datetime import date, datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import FeatureView
from loopstack.features.online.base import OnlineStore, WriteBatch
from loopstack.features.online.reading import read_entity, read_plain_columns
from loopstack.features.online.state import (LATEST, LATEST_VERSIONS, StateError, ViewPlan, apply_entity,
                                             canonical_key, decode_many, entity_hash, meta_fields, meta_key)
from loopstack.features.retrieval import resolve
from loopstack.timeutil import ensure_utc, now_micros, parse_duration, to_micros, to_us


@dataclass(frozen=True)
class Event:
    """One source event, normalised for the online path.

    `key`: the entity's join-key value as given (int or str); `ts`: event time, µs since the epoch
    UTC; `order`: tie-break among equal `ts` (higher wins) — for log topics
    ``(append_ts_us, partition, offset)``, for files ``(file_index, row_number)``: the same order the
    offline engine uses; `values`: the source columns.
    """

    key: Any
    ts: int
    order: tuple[int, ...]
    values: Mapping[str, Any]


@dataclass
class ApplyStats:
    """What one `apply_events` call did."""

    applied: int = 0          # events that changed state (redeliveries already held change nothing)
    too_late: list[Event] = field(default_factory=list)  # older than the horizon: not in any window state;
    #                           the caller side-outputs them (plain fields still took them if newer)
    watermark: int | None = None  # max event ts ever applied to the view (µs); reads exact from watermark - lateness
    horizon: int | None = None    # watermark - allowed lateness - longest window: events before it are too late
    skipped: int = 0          # events with a null key or timestamp (the offline engine ignores them too)


@dataclass
class OnlineResponse:
    """Rows of features in request order, with per-value event timestamps and per-row found flags."""

    features: list[str]                       # output column names, in order
    rows: list[dict[str, Any]]                # entity columns + feature values (None when unknown)
    event_timestamps: list[dict[str, int | None]]  # per row: feature -> event ts (µs) of its newest input
    found: list[bool]                         # False when the entity has no state in any requested view


@dataclass
class OnlineColumns:
    """`OnlineResponse` as columns: per feature, one value and one event timestamp per entity row."""

    features: list[str]                       # feature names, in order
    values: list[list[Any]]                   # per feature: values (None when unknown)
    event_timestamps: list[list[int | None]]  # per feature: event ts (µs) of its newest input
    found: list[bool]                         # per row: False when the entity has no state in any requested view


@dataclass(frozen=True)
class _ViewRead:
    view: str
    plan: ViewPlan
    join_key: str
    wanted: tuple[int, ...]     # indices into plan.features
    names: tuple[str, ...]      # output names, same order
    plain: bool                 # every wanted feature is a plain field (the columnar decode path)


_MISSING = object()   # an entity row without the join key
_INT_DTYPES = ("int8", "int16", "int32", "int64")


def _collision(clash: Any) -> FeatureReferenceError:
    return FeatureReferenceError(f"feature(s) {sorted(clash)} collide with entity row columns of the same name; "
                                 "rename them or pass full_feature_names=True")


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _micros(as_of: Any) -> int:
    """A read time as µs: int µs, a datetime (naive = UTC), or ISO 8601 text / a date (as `to_us` reads them)."""
    if isinstance(as_of, datetime):
        return to_micros(ensure_utc(as_of) - _EPOCH)
    if isinstance(as_of, (str, date)):
        return to_us(as_of)
    try:
        return int(as_of)
    except (TypeError, ValueError):
        raise RetrievalError(f"as_of {as_of!r} ({type(as_of).__name__}) is not a time: give µs since the epoch, "
                             "a datetime (naive = UTC) or ISO 8601 text") from None


def _refs(features: Sequence[str]) -> tuple[str, ...]:
    """The references as a tuple (the read plan's cache key); one bare string is a mistake, not a list of letters."""
    if isinstance(features, str):
        raise FeatureReferenceError(f"features must be a list of 'view:feature' references, got the string "
                                    f"{features!r}: write [{features!r}]")
    return tuple(features)


class OnlineFeatures:
    """Applies events to and reads features from one OnlineStore, for the given views.

    `allowed_lateness` overrides a view's ``allowed_lateness`` (timedelta or "10m"); `tile_us`
    overrides the tile size (µs) chosen from its windows. Both are part of the stored state's
    fingerprint: changing them (or a view's features) means rebuilding the view (`reset`, then
    materialize again). One writer per view at a time (apply_events reads, then writes).
    """

    def __init__(self, store: OnlineStore, views: Mapping[str, FeatureView],
                 allowed_lateness: Mapping[str, timedelta] | None = None, *,
                 tile_us: Mapping[str, int] | None = None, on_demand: Iterable[str] = ()) -> None:
        self.store = store
        self.views = dict(views)
        self.on_demand = frozenset(on_demand)   # on-demand feature names: named in the error if one is asked for
        self.allowed_lateness = dict(allowed_lateness or {})
        self.tile_us = dict(tile_us or {})
        self._plans: dict[str, ViewPlan] = {}
        self._reads: dict[tuple, tuple[list[str], list[_ViewRead]]] = {}

    def plan(self, view: str) -> ViewPlan:
        """The precomputed state plan of a view (tile size, partials, fingerprint)."""
        p = self._plans.get(view)
        if p is None:
            if view not in self.views:
                close = difflib.get_close_matches(view, list(self.views), n=3, cutoff=0.5)
                raise FeatureReferenceError(f"unknown feature view {view!r}"
                                            + (f"; did you mean {', '.join(map(repr, close))}?" if close else "")
                                            + f" (known views: {sorted(self.views)})")
            v = self.views[view]
            late = self.allowed_lateness.get(view)
            late_us = to_micros(parse_duration(late)) if late is not None else to_micros(v.lateness_delta)
            p = self._plans[view] = ViewPlan(v, late_us, self.tile_us.get(view))
        return p

    def _check(self, plan: ViewPlan, meta: Mapping[str, bytes] | None) -> None:
        fp = meta.get("fp") if meta else None
        if fp is not None and fp.decode() != plan.fingerprint:
            raise StateError(
                f"the online state of view {plan.name!r} was built from a different definition (features, "
                "windows, allowed_lateness or tile size changed); rebuild it: OnlineFeatures.reset("
                f"{plan.name!r}) (or `store.clear('{plan.name}|')`), then materialize the view again")

    # -- writing -----------------------------------------------------------------------------
    def apply_events(self, view: str, events: Sequence[Event], progress: Mapping[str, str] | None = None,
                     ) -> ApplyStats:
        """Apply events of one view and write the new state atomically with `progress` marks.

        Marks are how callers make delivery idempotent: a streaming consumer passes
        ``{"stream:<view>:<topic>:<partition>": "<last offset in this batch>"}``, and after a crash
        reads them back with ``store.progress(...)`` and skips events at or before them (the marks
        and the state they describe are written in one transaction, so they never disagree). As a
        second line of defence, a tile ignores an event whose (ts, order) it already holds.
        Events older than the view's retention horizon (watermark - allowed lateness - longest
        window) cannot change any read the store serves: they still update plain fields if newer,
        and are returned in `too_late` for the caller to side-output (views without windowed
        features have no horizon: every event is fully applied).
        """
        plan = self.plan(view)
        stats = ApplyStats()
        groups: dict[str, list[int]] = {}
        for i, e in enumerate(events):
            hk = entity_hash(view, e.key, plan.dtype)
            if hk is None or e.ts is None:
                stats.skipped += 1
                continue
            groups.setdefault(hk, []).append(i)
        mk = meta_key(view)
        data = self.store.read(list(groups) + [mk]) if groups else {}
        meta = data.get(mk, {})
        self._check(plan, meta)
        old_max = int(meta["max_ts"]) if "max_ts" in meta else None
        batch = WriteBatch(progress=dict(progress or {}))
        if groups:
            new_max = max(events[i].ts for idxs in groups.values() for i in idxs)
            new_max = new_max if old_max is None else max(old_max, new_max)
            horizon = plan.horizon(new_max)
            late_before = plan.horizon(old_max) if old_max is not None else None
            for hk, idxs in groups.items():
                evs = [(events[i].ts, list(events[i].order), events[i].values) for i in idxs]
                up = apply_entity(plan, data.get(hk, {}), evs, horizon)
                if up.puts:
                    batch.puts[hk] = up.puts
                if up.deletes:
                    batch.deletes[hk] = up.deletes
                stats.applied += up.applied
                # behind the new horizon, these took no tile; they are *late* only if they were already
                # behind the horizon as it stood before this batch (else the batch itself moved it past them)
                stats.too_late.extend(events[idxs[j]] for j in up.too_late
                                      if late_before is not None and events[idxs[j]].ts < late_before)
            count = {k: int(meta.get(k, b"0")) for k in ("applied", "too_late")}
            batch.puts[mk] = meta_fields(plan, new_max, count["applied"] + stats.applied,
                                         count["too_late"] + len(stats.too_late))
            stats.watermark, stats.horizon = new_max, horizon
        else:
            stats.watermark = old_max
            stats.horizon = plan.horizon(old_max)
        if len(batch) or batch.progress:
            self.store.write(batch)
        return stats

    def reset(self, view: str) -> int:
        """Drop a view's online state (every entity hash and its meta hash); returns hashes dropped."""
        n = self.store.clear(f"{view}|")
        self.store.write(WriteBatch(drop=[meta_key(view)]))
        return n

    # -- reading -----------------------------------------------------------------------------
    def _read_plan(self, features: tuple[str, ...], full: bool) -> tuple[list[str], list[_ViewRead]]:
        cached = self._reads.get((features, full))
        if cached is not None:
            return cached
        if isinstance(features, str) or not features:
            raise FeatureReferenceError(f"features must be a non-empty list of 'view:feature' references, "
                                        f"got {features!r}")
        names: list[str] = []
        by_name: dict[str, str] = {}
        per_view: dict[str, tuple[list[int], list[str]]] = {}
        for ref in dict.fromkeys(features):
            if ref in self.on_demand:
                raise FeatureReferenceError(
                    f"{ref!r} is an on-demand feature: it is computed from request data, not stored online, so "
                    "online reads cannot return it; read its inputs here ('view:feature') and let the model server "
                    "compute it (offline, get_historical_features computes it)")
            view, agg = resolve(ref, self.views)
            name = f"{view.name}__{agg.name}" if full else agg.name
            if name in by_name:
                raise FeatureReferenceError(
                    f"features {by_name[name]!r} and {ref!r} would both be named {name!r}; pass "
                    "full_feature_names=True so columns are named 'view__feature'")
            by_name[name] = ref
            names.append(name)
            plan = self.plan(view.name)
            idx, out = per_view.setdefault(view.name, ([], []))
            idx.append(plan.by_name[agg.name])
            out.append(name)
        reads = []
        for v, (i, o) in per_view.items():
            plan = self.plan(v)
            plain = all(plan.features[fi].window is None for fi in i)
            reads.append(_ViewRead(v, plan, self.views[v].entity.join_key, tuple(i), tuple(o), plain))
        if len(self._reads) > 1024:
            self._reads.clear()
        self._reads[(features, full)] = (names, reads)
        return names, reads

    def get_online_features(self, features: Sequence[str], entity_rows: Sequence[Mapping[str, Any]],
                            as_of: int | datetime | str | None = None, full_feature_names: bool = False
                            ) -> OnlineResponse:
        """Features ("view:feature") for each entity row, as of `as_of` (µs, datetime or ISO text; default now).

        Unknown features raise FeatureReferenceError naming them (with close matches); unknown
        entities give ``found=False`` and the values of an empty history: None for plain fields, an
        empty window for windowed ones (Count/CountDistinct/Sum 0, the others None), as offline. Rows
        keep their entity columns, then the features in request order (named `feature`, or
        `view__feature` with full_feature_names).
        """
        names, reads = self._read_plan(_refs(features), full_feature_names)
        t = time.time_ns() // 1000 if as_of is None else _micros(as_of)   # = now_micros(), 10x cheaper
        blank = dict.fromkeys(names)
        if isinstance(entity_rows, Mapping):
            raise RetrievalError(f"entity_rows must be a list of rows ({{join_key: value}}), got one mapping "
                                 f"{dict(entity_rows)!r}: wrap it in a list (or use get_online_columns)")
        for i, r in enumerate(entity_rows):
            try:
                clash = blank.keys() & r.keys()
            except AttributeError:
                raise RetrievalError(f"entity row {i} is {r!r} ({type(r).__name__}), not a mapping "
                                     "{join_key: value}") from None
            if clash:
                raise _collision(clash)
        cols = self._read_columns(names, reads, t, len(entity_rows),
                                  lambda jk: [r.get(jk, _MISSING) for r in entity_rows],
                                  lambda i: sorted(entity_rows[i]))
        rows = [{**r, **dict(zip(names, vals))} for r, vals in zip(entity_rows, zip(*cols.values))]
        stamps = [dict(zip(names, ts)) for ts in zip(*cols.event_timestamps)]
        return OnlineResponse(names, rows, stamps, cols.found)

    def get_online_columns(self, features: Sequence[str], entities: Mapping[str, Sequence[Any]],
                           as_of: int | datetime | str | None = None, full_feature_names: bool = False
                           ) -> OnlineColumns:
        """`get_online_features` for columnar entities (join key -> values, one per row): the same
        values, timestamps, found flags and errors, without building a dict per row."""
        names, reads = self._read_plan(_refs(features), full_feature_names)
        t = time.time_ns() // 1000 if as_of is None else _micros(as_of)   # = now_micros(), 10x cheaper
        bad = {k: v for k, v in entities.items() if isinstance(v, (str, bytes)) or not hasattr(v, "__len__")}
        if bad:
            raise RetrievalError(f"entities maps each join key to a list of values (one per row), got {bad!r}: "
                                 "write e.g. {'author_id': [1, 2]}")
        lengths = {k: len(v) for k, v in entities.items()}
        if len(set(lengths.values())) > 1:
            raise RetrievalError(f"every entity column must have the same length; got {lengths}")
        n = next(iter(lengths.values()), 0)
        clash = entities.keys() & set(names) if n else ()
        if clash:
            raise _collision(clash)
        return self._read_columns(names, reads, t, n, lambda jk: entities.get(jk, [_MISSING] * n),
                                  lambda i: sorted(entities))

    def _read_columns(self, names: list[str], reads: list[_ViewRead], t: int, n: int,
                      column: Callable[[str], Sequence[Any]], row_keys: Callable[[int], list[str]]) -> OnlineColumns:
        """The read itself: per view, one store read of the distinct entities, then whole columns."""
        values: dict[str, list] = {}
        stamps: dict[str, list] = {}
        found = [False] * n
        for vr in reads:
            keys = self._hash_keys(vr, column(vr.join_key), row_keys)
            mk = meta_key(vr.view)
            data = self.store.lookup([k for k in dict.fromkeys(keys) if k is not None] + [mk])
            self._check(vr.plan, data.get(mk))
            hashes = [data.get(hk) if hk is not None else None for hk in keys]
            for i, fields in enumerate(hashes):
                if fields:
                    found[i] = True
            if vr.plain:   # every wanted feature is a plain field: decode the "latest" docs in one go
                blobs = {hk: f[LATEST] for hk, f in zip(keys, hashes) if f and LATEST in f}
                docs = dict(zip(blobs, decode_many(list(blobs.values()), LATEST_VERSIONS)))
                vcols, scols = read_plain_columns(vr.plan, [docs.get(hk) for hk in keys], t, vr.wanted)
            else:
                done: dict[str, tuple[list, list]] = {}
                for hk, fields in zip(keys, hashes):
                    if fields and hk not in done:
                        done[hk] = read_entity(vr.plan, fields, t, vr.wanted)
                # an entity with no state reads as an empty window (Count/Sum 0, others None), exactly
                # what the offline join gives an entity without history: no skew for new entities
                empty = read_entity(vr.plan, {}, t, vr.wanted) if not all(hashes) else None
                got = [done.get(hk) if f else empty for hk, f in zip(keys, hashes)]
                vcols = [[g[0][j] if g else None for g in got] for j in range(len(vr.names))]
                scols = [[g[1][j] if g else None for g in got] for j in range(len(vr.names))]
            for name, vc, sc in zip(vr.names, vcols, scols):
                values[name], stamps[name] = vc, sc
        return OnlineColumns(names, [values[x] for x in names], [stamps[x] for x in names], found)

    @staticmethod
    def _hash_keys(vr: _ViewRead, vals: Sequence[Any], row_keys: Callable[[int], list[str]]) -> list[str | None]:
        """Hash keys of a join-key column (None for null keys); errors name the first bad row."""
        dtype, prefix = vr.plan.dtype, vr.view + "|"
        fast = dtype in _INT_DTYPES
        out: list[str | None] = []
        for i, v in enumerate(vals):
            if fast and type(v) is int:
                out.append(prefix + str(v))
                continue
            if v is _MISSING:
                raise RetrievalError(f"entity row {i} has no {vr.join_key!r}, the join key of feature view "
                                     f"{vr.view!r}; it has {row_keys(i)}")
            try:
                c = canonical_key(v, dtype)
            except ValueError as exc:
                raise RetrievalError(f"entity row {i}: {exc}") from exc
            out.append(None if c is None else prefix + c)
        return out

    def freshness(self) -> dict[str, dict[str, Any]]:
        """Per view: newest applied event ts (the watermark), when it was applied, and the lag in seconds.

        ``exact_from``: the earliest as_of reads are exact for (watermark - allowed lateness);
        ``lag_seconds``: now - newest applied event ts (None if the view has no state yet).
        """
        names = sorted(self.views)
        data = self.store.read([meta_key(v) for v in names]) if names else {}
        now = now_micros()
        out: dict[str, dict[str, Any]] = {}
        for v in names:
            m = data.get(meta_key(v), {})
            newest = int(m["max_ts"]) if "max_ts" in m else None
            late = self.plan(v).lateness
            out[v] = {"newest_event_ts": newest, "watermark": newest,
                      "exact_from": None if newest is None else newest - late,
                      "applied_at": int(m["applied_at"]) if "applied_at" in m else None,
                      "lag_seconds": None if newest is None else (now - newest) / 1e6,
                      "events_applied": int(m.get("applied", b"0")), "too_late": int(m.get("too_late", b"0"))}
        return out
