"""Pure policy core of the online store: how one (view, entity) state is laid out, updated and read.

No I/O. A view's state for one entity is one hash (see ``online/base.py``) with these fields:

- ``"latest"``: in memory ``[1, seen, e0, e1, ...]``; ``seen = [ts, order]`` of the entity's newest
  event (so the entity is "found"), ``e_i = [ts, order, value]`` the newest event passing plain
  feature i's filter. An event replaces an entry only if its ``(ts, order)`` is greater. Stored as
  format 2, ``[2, seen, stamps, v0, v1, ...]`` (`encode_latest`): ``stamps[i]`` is 0 when entry i
  came from the newest event itself (the usual case: one timestamp per entity, not one per value),
  null when there is no entry, else its ``[ts, order]``. Format 1 (the in-memory list) still reads.
- ``"t:<start_us>"``: one *tile* per ``tile_us`` of event time, ``[1, partials, raw]``. ``partials``
  hold one partial aggregate per distinct (kind, column, filter) of the windowed features (count,
  sum, min, max, last-by-(ts, order), distinct values; each with the newest input ts), ``raw`` the
  tile's events as ``[ts, order, v...]`` (only the columns windowed features need).

A window ``[t - w, t)`` is read exactly: tiles lying fully inside contribute their partials; the
(at most two) edge tiles that straddle a window bound are re-aggregated from their raw events, so
the answer equals the offline semantics (``offline/base.py``) for every as_of, not approximately.
Tiles entirely older than the retention horizon ``max_ts - allowed_lateness - longest window`` are
deleted; no read at ``as_of >= max_ts - allowed_lateness`` can need them. Reading a state is in
``online/reading.py``.
"""
from __future__ import annotations

import hashlib
import json
import operator
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

from loopstack.features.aggregations import Filter
from loopstack.features.definitions import FeatureView
from loopstack.features.online.partials import (VERSION, Sig, StateError, _new, _update, decode,
                                                decode_many, encode, encode_tile, tile_partials, tile_raw)
from loopstack.timeutil import now_micros, to_micros

__all__ = ["LATEST", "META_PREFIX", "TILE", "VERSION", "EntityUpdate", "FeaturePlan", "Sig", "StateError",
           "ViewPlan", "apply_entity", "canonical_key", "choose_tile_us", "decode", "decode_many", "encode",
           "hash_key", "meta_key", "tile_partials", "encode_latest", "decode_latest", "unpack_latest"]
LATEST = "latest"
LATEST_VERSIONS = (1, 2)      # formats of the "latest" field this code reads (it writes 2)
TILE = "t:"
META_PREFIX = "__view|"
TILES_PER_MIN_WINDOW = 8      # the shortest window spans at least ~8 tiles (small edge tiles)
MAX_TILES_PER_WINDOW = 96     # ... unless the longest would then span more than ~96 (slow reads)
_S, _M, _H, _D = 1_000_000, 60_000_000, 3_600_000_000, 86_400_000_000
_NICE = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000,
         500_000, _S, 2 * _S, 5 * _S, 10 * _S, 15 * _S, 30 * _S, _M, 2 * _M, 5 * _M, 10 * _M, 15 * _M, 30 * _M,
         _H, 2 * _H, 3 * _H, 4 * _H, 6 * _H, 8 * _H, 12 * _H, _D]
_INT_DTYPES = ("int8", "int16", "int32", "int64")
_INT_RE = re.compile(r"-?(0|[1-9][0-9]*)\Z")
_KIND = {"count": "cnt", "sum": "sum", "mean": "sum", "min": "min", "max": "max", "last": "last",
         "count_distinct": "dist"}


# -- keys ----------------------------------------------------------------------------------------
def canonical_key(value: Any, dtype: str = "int64") -> str | None:
    """The hash-key form of a join-key value; None for a null key.

    Integers are written in decimal, strings as ``"s:" + value``, so 42 and "42" are different
    entities -- except where the entity's declared dtype says which one is meant: for an integer
    entity, a string that is a canonical integer literal ("42", not "042") *is* that integer (keys
    from JSON or a URL); for a string entity, an integer is its decimal string.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        value = int(value)
    elif isinstance(value, float):
        if value != value:
            return None
        if not value.is_integer():
            raise ValueError(f"entity key {value!r} is a non-integral float; give an int or a str")
        value = int(value)
    elif not isinstance(value, (int, str)):
        try:
            value = operator.index(value)  # numpy integers
        except TypeError:
            if hasattr(value, "item"):
                return canonical_key(value.item(), dtype)
            raise ValueError(f"entity key {value!r} ({type(value).__name__}) is not an int or a str") from None
    if isinstance(value, str):
        if dtype in _INT_DTYPES and _INT_RE.match(value):
            return value
        if not value.isascii() and not _encodable(value):
            raise ValueError(f"entity key {value!r} is not valid Unicode (it holds a lone surrogate, e.g. from a "
                             "JSON escape \\ud800); give the key as UTF-8 text")
        return "s:" + value
    return "s:" + str(value) if dtype == "string" else str(value)


def _encodable(text: str) -> bool:
    """Whether `text` can be stored (UTF-8): no lone surrogates, which JSON escapes can carry."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def hash_key(view: str, canon: str) -> str:
    """The hash holding one entity's state of one view."""
    return f"{view}|{canon}"


def entity_hash(view: str, key: Any, dtype: str) -> str | None:
    """The hash holding `key`'s state in `view`; None for a key no entity has (null, or not an int or str):
    applying skips its events, as the offline engine does."""
    try:
        c = canonical_key(key, dtype)
    except ValueError:
        return None
    return None if c is None else hash_key(view, c)


def meta_key(view: str) -> str:
    """The per-view hash with watermark, freshness and the state fingerprint."""
    return META_PREFIX + view


def choose_tile_us(windows: Sequence[int]) -> int:
    """Tile size (µs) for a view's windows: ~min/8, but so the longest window spans <= 96 tiles.

    Smaller tiles mean fewer raw events to re-aggregate at the two window edges; larger tiles mean
    fewer tiles to decode per read and per hash. The result is rounded down to a "nice" size (1, 2,
    5 x 10^k µs, whole seconds/minutes/hours, or whole days) so tiles align with clock boundaries.
    """
    ws = [w for w in windows if w > 0]
    if not ws:
        return 0
    fine, coarse = max(min(ws) // TILES_PER_MIN_WINDOW, 1), -(-max(ws) // MAX_TILES_PER_WINDOW)
    if fine >= coarse:  # round down: keep >= 8 tiles in the shortest window
        return fine // _D * _D if fine >= _D else max(n for n in _NICE if n <= fine)
    # round up: keep the longest window within ~96 tiles
    return -(-coarse // _D) * _D if coarse > _D else min(n for n in _NICE if n >= coarse)


# -- the plan: one per view, precomputed ------------------------------------------------------------
@dataclass(frozen=True)
class FeaturePlan:
    """How to produce one feature: plain slot or (sig, window) pair, and its output rule."""

    name: str
    function: str
    window: int | None   # µs; None for plain fields
    slot: int            # plain: entry index in "latest"; windowed: index into ViewPlan.pairs
    int_sum: bool | None  # Sum: int output (True), float (False), by value (None: column not declared)


class ViewPlan:
    """Everything about a view the core needs, computed once: columns, sigs, windows, tile size."""

    def __init__(self, view: FeatureView, lateness_us: int = 0, tile_us: int | None = None) -> None:
        self.name = view.name
        self.dtype = view.entity.dtype
        self.ttl = to_micros(view.ttl_delta) if view.ttl_delta is not None else None
        self.lateness = lateness_us
        windowed = [f for f in view.features if not f.is_plain]
        cols = sorted({c for f in windowed for c in (f.column, f.filter.column if f.filter else None) if c})
        self.columns = cols
        index = {c: 2 + i for i, c in enumerate(cols)}
        self.plain: list[tuple[str, Filter | None]] = []
        self.sigs: list[Sig] = []
        self.pairs: list[tuple[int, int]] = []
        feats = []
        for f in view.features:
            if f.is_plain:
                entry = (f.column, f.filter)
                if entry not in self.plain:
                    self.plain.append(entry)
                feats.append(FeaturePlan(f.name, "plain", None, self.plain.index(entry), None))
                continue
            kind = _KIND[f.function]
            if kind == "cnt" and f.column is not None:
                kind = "cntv"
            sig = Sig(kind, index[f.column] if f.column else -1, f.filter,
                      index[f.filter.column] if f.filter else -1)
            if sig not in self.sigs:
                self.sigs.append(sig)
            w = to_micros(f.window_delta)
            pair = (self.sigs.index(sig), w)
            if pair not in self.pairs:
                self.pairs.append(pair)
            int_sum = None
            if f.function == "sum":
                fld = view.source.field(f.column)
                int_sum = None if fld is None else fld.dtype.startswith(("int", "bool"))
            feats.append(FeaturePlan(f.name, f.function, w, self.pairs.index(pair), int_sum))
        self.features = feats
        self.by_name = {fp.name: i for i, fp in enumerate(feats)}
        self.max_window = max((w for _, w in self.pairs), default=0)
        self.tile = (tile_us or choose_tile_us([w for _, w in self.pairs])) if self.sigs else 0
        self.retention = lateness_us + self.max_window
        self.groups: dict[tuple, dict[int, list[int]]] = {}  # read cache: wanted features -> window groups
        spec = [VERSION, self.tile, self.retention if self.sigs else None, cols,
                [[s.kind, s.col, s.filt.to_spec() if s.filt else None, s.fcol] for s in self.sigs],
                [[c, flt.to_spec() if flt else None] for c, flt in self.plain]]
        self.fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def horizon(self, max_ts: int | None) -> int | None:
        """Events older than this can no longer change a read the store serves (None: no tiles)."""
        if not self.sigs or max_ts is None:
            return None
        return max_ts - self.retention


def meta_fields(plan: "ViewPlan", max_ts: int | None, applied: int, too_late: int) -> dict[str, bytes]:
    """The view's meta hash as every write of applied events leaves it: fingerprint, tile, watermark,
    lateness, when, and the running counts of events applied and too late."""
    return {"fp": plan.fingerprint.encode(), "tile": str(plan.tile).encode(), "max_ts": str(max_ts).encode(),
            "lateness": str(plan.lateness).encode(), "applied_at": str(now_micros()).encode(),
            "applied": str(applied).encode(), "too_late": str(too_late).encode()}


def _finish(fp: FeaturePlan, acc: list) -> Any:
    fn = fp.function
    if fn == "count":
        return acc[1]
    if fn == "count_distinct":
        return len(acc[1])
    if fn == "sum":
        if fp.int_sum is True:
            return int(acc[2])
        return float(acc[2]) if fp.int_sum is False else acc[2]
    if fn == "mean":
        return acc[2] / acc[1] if acc[1] else None
    return acc[2] if fn == "last" else acc[1]


def _norm(v: Any) -> Any:
    """Naive datetimes are UTC (as offline); everything else as given."""
    return v.replace(tzinfo=timezone.utc) if isinstance(v, datetime) and v.tzinfo is None else v


# -- the "latest" field ----------------------------------------------------------------------------
def encode_latest(latest: list) -> bytes:
    """The stored (format 2) bytes of an in-memory ``[1, seen, e0, ...]`` latest list."""
    seen = latest[1]
    st, sk = (seen[0], list(seen[1])) if seen is not None else (None, None)
    stamps, values = [], []
    for e in latest[2:]:
        if e is None:
            stamps.append(None)
            values.append(None)
        else:
            stamps.append(0 if e[0] == st and list(e[1]) == sk else [e[0], e[1]])
            values.append(e[2])
    return encode([2, seen, stamps, *values])


def unpack_latest(doc: list) -> list:
    """A decoded stored latest doc (format 1 or 2) as the in-memory ``[1, seen, e0, ...]`` list."""
    if doc[0] == 1:
        return doc
    seen, out = doc[1], [1, doc[1]]
    for stamp, v in zip(doc[2], doc[3:]):
        out.append(None if stamp is None else [seen[0], seen[1], v] if stamp == 0 else [stamp[0], stamp[1], v])
    return out


def decode_latest(blob: bytes) -> list:
    """Inverse of `encode_latest` (format-1 blobs too); StateError for an unknown format."""
    return unpack_latest(decode(blob, LATEST_VERSIONS))


# -- apply -----------------------------------------------------------------------------------------
@dataclass
class EntityUpdate:
    """What applying events to one entity's hash changes: fields to put and delete, and counts."""

    puts: dict[str, bytes]
    deletes: list[str]
    applied: int
    too_late: list[int]      # indices into the events given


def apply_entity(plan: ViewPlan, fields: Mapping[str, bytes], events: Sequence[tuple[int, list, Mapping]],
                 horizon: int | None) -> EntityUpdate:
    """Apply (ts, order, values) events of one entity to its stored `fields` (O(1) fields each).

    Plain entries take an event if its (ts, order) is greater. Tiles take events with
    ts >= `horizon`; an event whose (ts, order) the tile already holds is a redelivery and skipped
    (when order is non-empty). Tiles ending at or before the horizon are deleted.
    """
    blob = fields.get(LATEST)
    latest = decode_latest(blob) if blob else [VERSION, None] + [None] * len(plan.plain)
    latest_changed = blob is None
    tiles: dict[int, tuple[list, set]] = {}
    applied, too_late = 0, []
    T = plan.tile
    for i, (ts, order, values) in enumerate(events):
        changed = False
        seen = latest[1]
        if seen is None or (ts, order) > (seen[0], seen[1]):
            latest[1] = [ts, order]
            changed = True
        for slot, (col, flt) in enumerate(plan.plain):
            if flt is not None and not flt.matches(values.get(flt.column)):
                continue
            e = latest[2 + slot]
            if e is None or (ts, order) > (e[0], e[1]):
                latest[2 + slot] = [ts, order, _norm(values.get(col))]
                changed = True
        latest_changed |= changed
        if plan.sigs:
            if horizon is not None and ts < horizon:
                too_late.append(i)
            else:
                start = ts // T * T
                if start not in tiles:
                    tb = fields.get(f"{TILE}{start}")
                    if tb:
                        tile = [tile_partials(tb), tile_raw(tb)]
                        for s, p in zip(plan.sigs, tile[0]):
                            if s.kind == "dist":
                                p[1] = set(p[1])
                    else:
                        tile = [[_new(s) for s in plan.sigs], []]
                    tiles[start] = (tile, {(r[0], tuple(r[1])) for r in tile[1]})
                tile, keys = tiles[start]
                ident = (ts, tuple(order))
                if not order or ident not in keys:
                    keys.add(ident)
                    row = [ts, order] + [_norm(values.get(c)) for c in plan.columns]
                    tile[1].append(row)
                    for s, p in zip(plan.sigs, tile[0]):
                        _update(s, p, row)
                    changed = True
        applied += changed
    puts = {f"{TILE}{s}": encode_tile(t[0], t[1]) for s, (t, _) in tiles.items()}
    if latest_changed:
        puts[LATEST] = encode_latest(latest)
    deletes = []
    if plan.sigs and horizon is not None:
        for name in fields:
            if name.startswith(TILE) and int(name[2:]) + T <= horizon and name not in puts:
                deletes.append(name)
    return EntityUpdate(puts, deletes, applied, too_late)
