"""Pure policy core of the online store, read side: a (view, entity) state as of a time, exactly.

The state layout and the write side are in ``online/state.py``: plain features come from the ``"latest"``
entry, windowed ones from the tiles' partials plus the raw events of the (at most two) edge tiles.
"""
from __future__ import annotations

import operator
from typing import Any, Mapping, Sequence

from loopstack.features.online.partials import _combine, _new, _update, tile_raw, tiles_partials
from loopstack.features.online.state import LATEST, TILE, VERSION, ViewPlan, _finish, decode_latest, unpack_latest

__all__ = ["read_entity", "read_plain_columns"]


def read_entity(plan: ViewPlan, fields: Mapping[str, bytes], t: int, wanted: Sequence[int],
                ) -> tuple[list[Any], list[int | None]]:
    """Values and event timestamps of features `wanted` (indices into plan.features) as of `t` µs.

    Plain fields: the newest entry if ``ts < t`` and within ttl (an entry at or after `t` is not
    visible: online reads are for as_of after the entity's newest event). Windows ``[t - w, t)``:
    exact, from tile partials plus raw events of the edge tiles.
    """
    feats = plan.features
    latest = None
    accs: dict[int, list] | None = None
    values: list[Any] = []
    stamps: list[int | None] = []
    for fi in wanted:
        fp = feats[fi]
        if fp.window is None:
            if latest is None:
                blob = fields.get(LATEST)
                latest = decode_latest(blob) if blob else [VERSION, None] + [None] * len(plan.plain)
            e = latest[2 + fp.slot]
            if e is None or e[0] >= t or (plan.ttl is not None and t - e[0] > plan.ttl):
                values.append(None)
                stamps.append(None)
            else:
                values.append(e[2])
                stamps.append(e[0])
            continue
        if accs is None:
            accs = _windows(plan, fields, t, wanted)
        acc = accs[fp.slot]
        values.append(_finish(fp, acc))
        stamps.append(acc[0])
    return values, stamps


def read_plain_columns(plan: ViewPlan, latest: Sequence[list | None], t: int, wanted: Sequence[int],
                       ) -> tuple[list[list[Any]], list[list[int | None]]]:
    """`read_entity` of plain features `wanted` for many entities at once, as columns.

    `latest`: each entity's decoded stored ``"latest"`` doc, format 1 or 2 (None: no state). Returns
    one list of values and one of event timestamps per wanted feature, one entry per entity (same rules
    as `read_entity`: an entry at or after `t`, or older than the ttl, reads as None)."""
    ttl = plan.ttl
    lo = float("-inf") if ttl is None else t - ttl   # t - ts > ttl  <=>  ts < t - ttl
    slots = [plan.features[fi].slot for fi in wanted]
    if not latest:
        return [[] for _ in slots], [[] for _ in slots]
    k = len(plan.plain)
    if ttl is None and all(d is None or (d[0] == 2 and d[1] is not None and d[1][0] < t and d[2].count(0) == k)
                           for d in latest):
        # the usual read (format 2, as of now, no ttl, every entry from the entity's newest event): each
        # value is at a fixed place in its doc and every stamp is the newest event's
        get = operator.itemgetter(*[3 + s for s in slots]) if len(slots) > 1 else (lambda d, i=3 + slots[0]: (d[i],))
        ntup = (None,) * len(slots)
        vals = [list(c) for c in zip(*[get(d) if d is not None else ntup for d in latest])]
        ts = [d[1][0] if d is not None else None for d in latest]
        return vals, [ts if j == 0 else list(ts) for j in range(len(slots))]
    latest = [unpack_latest(d) if d is not None and d[0] == 2 else d for d in latest]
    idxs = [2 + s for s in slots]
    if ttl is None and all(d is None or (d[1] is not None and d[1][0] < t) for d in latest):
        # the usual read (as of now, no ttl): every entry is older than the entity's newest event (``seen``),
        # so before t: visible iff it exists. Entries picked in C; then by column, or by row if fewer rows
        ntup = (None,) * len(idxs)
        get = operator.itemgetter(*idxs) if len(idxs) > 1 else (lambda d, i=idxs[0]: (d[i],))
        ents = [get(d) if d is not None else ntup for d in latest]
        by_row = len(ents) < len(idxs)
        cols = ents if by_row else list(zip(*ents))
        vals = [[e[2] if e is not None else None for e in c] for c in cols]
        stamps = [[e[0] if e is not None else None for e in c] for c in cols]
        return ([list(c) for c in zip(*vals)], [list(c) for c in zip(*stamps)]) if by_row else (vals, stamps)
    nones = [None] * len(idxs)
    row_values, row_stamps = [], []
    for doc in latest:   # row by row, then transposed in C: faster than a pass per feature
        if doc is None:
            row_values.append(nones)
            row_stamps.append(nones)
            continue
        vs, ss = [], []
        for i in idxs:
            e = doc[i]
            if e is not None and lo <= e[0] < t:
                vs.append(e[2])
                ss.append(e[0])
            else:
                vs.append(None)
                ss.append(None)
        row_values.append(vs)
        row_stamps.append(ss)
    return [list(c) for c in zip(*row_values)], [list(c) for c in zip(*row_stamps)]


def _groups(plan: ViewPlan, wanted: Sequence[int]) -> dict[int, list[int]]:
    key = tuple(wanted)
    g = plan.groups.get(key)
    if g is None:
        g = {}
        for fi in wanted:
            fp = plan.features[fi]
            if fp.window is not None and fp.slot not in g.setdefault(fp.window, []):
                g[fp.window].append(fp.slot)
        plan.groups[key] = g
    return g


def _windows(plan: ViewPlan, fields: Mapping[str, bytes], t: int, wanted: Sequence[int]) -> dict[int, list]:
    """Accumulators of every (sig, window) pair `wanted` needs, as of t: partials + edge rows."""
    by_w = _groups(plan, wanted)
    T = plan.tile
    lo_all = t - max(by_w)
    found = []
    for name, blob in fields.items():
        if name[:2] == TILE:
            start = int(name[2:])
            if start < t and start + T > lo_all:
                found.append((start, blob))
    # in time order, whatever order the store keeps fields in (Redis: the order they were written), so a
    # float sum is the same number for the same state on every backend (starts are unique: no blob compared)
    found.sort()
    starts, blobs = [s for s, _ in found], [b for _, b in found]
    parts = tiles_partials(blobs)
    raws: dict[int, list] = {}
    out: dict[int, list] = {}
    for w, slots in by_w.items():
        lo = t - w
        inner, edge = [], []
        for i, start in enumerate(starts):
            if start >= lo and start + T <= t:
                inner.append(parts[i])
            elif start + T > lo:
                raw = raws.get(i)
                if raw is None:
                    raw = raws[i] = tile_raw(blobs[i])
                edge.extend(r for r in raw if lo <= r[0] < t)
        for slot in slots:
            si = plan.pairs[slot][0]
            sig = plan.sigs[si]
            acc = _new(sig)
            _combine(sig, acc, [p[si] for p in inner])
            for r in edge:
                _update(sig, acc, r)
            out[slot] = acc
    return out
