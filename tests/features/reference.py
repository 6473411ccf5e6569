"""Brute-force reference of the point-in-time semantics (offline/base.py). The judge of every engine.

Deliberately naive: for every entity row it loops over every event. No DuckDB, no Arrow tricks.
Times are integer microseconds since the epoch (UTC); events are dicts in *order* (their list
position is the tie-break order unless `order` gives explicit order keys: higher wins).
"""
from __future__ import annotations

import math
from typing import Any

from loopstack.features.definitions import Aggregation, FeatureView
from loopstack.timeutil import to_micros


def _order_key(i: int, ts: int, order: list[Any] | None) -> tuple:
    return (ts, order[i] if order is not None else 0, i)


def reference_value(agg: Aggregation, view: FeatureView, key: Any, t: int | None,
                    events: list[dict], ts_col: str, order: list[Any] | None = None) -> Any:
    """The value of one feature for one entity row (join key value `key`, timestamp `t` in µs)."""
    join_key = view.entity.join_key
    before = []
    if key is not None and t is not None:
        for i, e in enumerate(events):
            ts = e[ts_col]
            if e[join_key] is None or ts is None or e[join_key] != key or not ts < t:
                continue
            if agg.filter is not None and not agg.filter.matches(e[agg.filter.column]):
                continue
            before.append((_order_key(i, ts, order), ts, e))
    fn = agg.function
    if agg.window is None:  # plain field: the latest event strictly before t, within ttl
        assert fn == "last"
        if not before:
            return None
        _, ts, e = max(before, key=lambda x: x[0])
        ttl = view.ttl_delta
        if ttl is not None and t - ts > to_micros(ttl):
            return None
        return e[agg.column]
    w = to_micros(agg.window_delta)
    inside = [(k, ts, e) for k, ts, e in before if t - w <= ts]
    if fn == "count":
        if agg.column is None:
            return len(inside)
        return sum(1 for _, _, e in inside if e[agg.column] is not None)
    if fn == "last":
        return max(inside, key=lambda x: x[0])[2][agg.column] if inside else None
    vals = [e[agg.column] for _, _, e in inside if e[agg.column] is not None]
    if fn == "count_distinct":
        return len(set(vals))
    if fn == "sum":
        if vals and isinstance(vals[0], float):
            return math.fsum(vals)
        return sum(int(v) for v in vals)
    if not vals:
        return None
    if fn == "mean":
        if isinstance(vals[0], float):
            return math.fsum(vals) / len(vals)
        return sum(int(v) for v in vals) / len(vals)
    if fn == "min":
        return min(vals)
    if fn == "max":
        return max(vals)
    raise ValueError(fn)


def sum_abs(agg: Aggregation, view: FeatureView, key: Any, t: int | None, events: list[dict],
            ts_col: str) -> tuple[int, float]:
    """(n, Σ|x|) of the values a float Sum/Mean adds up: the scale of its rounding error bound."""
    if agg.function not in ("sum", "mean") or agg.window is None or key is None or t is None:
        return 0, 0.0
    w = to_micros(agg.window_delta)
    vals = [e[agg.column] for e in events
            if e[view.entity.join_key] == key and e[ts_col] is not None and t - w <= e[ts_col] < t
            and e[agg.column] is not None and (agg.filter is None or agg.filter.matches(e[agg.filter.column]))]
    return len(vals), float(sum(abs(v) for v in vals))


def reference_features(rows: list[dict], ts_col: str, key_col: str, view: FeatureView,
                       features: list[tuple[Aggregation, str]], events: list[dict], event_ts_col: str,
                       order: list[Any] | None = None) -> dict[str, list[Any]]:
    """All requested features of one view for all rows: {output name: [value per row]}."""
    out: dict[str, list[Any]] = {name: [] for _, name in features}
    for r in rows:
        for agg, name in features:
            out[name].append(reference_value(agg, view, r[key_col], r[ts_col], events, event_ts_col, order))
    return out
