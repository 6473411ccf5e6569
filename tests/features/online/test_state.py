"""Unit tests of the pure online-state core (no store, no I/O): tiles, edges, eviction, ttl, ties."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from loopstack.features.definitions import (Count, CountDistinct, Entity, EventSource, FeatureView, Field, Last, Max,
                                            Mean, Min, Sum)
from loopstack.features.online.reading import read_entity
from loopstack.features.online.state import (LATEST, StateError, ViewPlan, apply_entity, canonical_key,
                                             choose_tile_us, encode, tile_partials)

ENTITY = Entity("user", "uid")
SOURCE = EventSource("ev", "ts", [Field("uid", "int64"), Field("x", "int64"), Field("f", "float64"),
                                  Field("s", "string"), Field("when", "timestamp")])


def view(*features, ttl=None, lateness=None) -> FeatureView:
    return FeatureView("v", entity=ENTITY, source=SOURCE, features=features, ttl=ttl, allowed_lateness=lateness)


class Entity1:
    """One entity's hash, kept in a dict the way a store would."""

    def __init__(self, plan: ViewPlan) -> None:
        self.plan, self.fields = plan, {}

    def apply(self, events, horizon=None):
        up = apply_entity(self.plan, self.fields, [(ts, list(o), vals) for ts, o, vals in events], horizon)
        for f in up.deletes:
            self.fields.pop(f)
        self.fields.update(up.puts)
        return up

    def read(self, t, names=None):
        names = names or [f.name for f in self.plan.features]
        vals, stamps = read_entity(self.plan, self.fields, t, [self.plan.by_name[n] for n in names])
        return dict(zip(names, vals)), dict(zip(names, stamps))

    def tiles(self):
        return sorted(int(k[2:]) for k in self.fields if k.startswith("t:"))


def test_canonical_keys():
    assert canonical_key(42) == "42" == canonical_key("42") == canonical_key(42.0) == canonical_key(True * 42)
    assert canonical_key("042") == "s:042" and canonical_key("abc") == "s:abc"  # not integers: stay strings
    assert canonical_key(42, "string") == "s:42" == canonical_key("42", "string")
    assert canonical_key(None) is None and canonical_key(float("nan")) is None
    with pytest.raises(ValueError, match="non-integral"):
        canonical_key(1.5)
    with pytest.raises(ValueError, match="not an int or a str"):
        canonical_key(object())


def test_tile_size_choice():
    h, d = 3_600_000_000, 86_400_000_000
    assert choose_tile_us([h]) == 5 * 60_000_000          # 1h / 8 = 7.5 min -> 5 min
    assert choose_tile_us([h, 7 * d]) == 2 * h             # 7d / 96 = 1.75 h -> up to 2 h (84 tiles)
    assert choose_tile_us([h, 30 * d]) == 8 * h            # 30d / 96 = 7.5 h -> up to 8 h (90 tiles)
    assert choose_tile_us([10]) == 1 and choose_tile_us([1]) == 1 and choose_tile_us([3, 3000]) == 50
    assert choose_tile_us([365 * d]) == 45 * d             # 365d / 8, whole days
    assert choose_tile_us([d, 1000 * d]) == 11 * d          # 1000d / 96 = 10.4 d -> 11 d
    assert choose_tile_us([]) == 0


def test_edges_resolved_exactly_from_raw_events():
    p = ViewPlan(view(Count(window="10us", name="c"), Sum("x", window="10us", name="s")), tile_us=4)
    e = Entity1(p)
    e.apply([(ts, (ts,), {"x": ts}) for ts in range(0, 20)])
    assert e.tiles() == [0, 4, 8, 12, 16]
    for t in range(0, 22):
        inside = [ts for ts in range(20) if t - 10 <= ts < t]
        vals, stamps = e.read(t)
        assert vals == {"c": len(inside), "s": sum(inside)}, t
        assert stamps["c"] == (max(inside) if inside else None)


def test_interior_tiles_use_partials():
    p = ViewPlan(view(Count(window="12us", name="c")), tile_us=4)
    e = Entity1(p)
    e.apply([(ts, (ts,), {}) for ts in range(0, 12)])
    # corrupt the raw half of the interior tile: an aligned read must not look at it
    blob = e.fields["t:4"]
    e.fields["t:4"] = blob[:blob.index(b"\n") + 1] + b"[]"
    assert e.read(12)[0]["c"] == 12           # [0, 12): all three tiles are interior
    assert e.read(13)[0]["c"] == 11           # [1, 13): t:0 is an edge (raw), t:4 and t:8 interior
    assert e.read(6)[0]["c"] == 4             # t:4 is now an edge tile: its (emptied) raw events are used


def test_window_bounds_are_inclusive_start_exclusive_end():
    p = ViewPlan(view(Count(window="5us", name="c")), tile_us=3)
    e = Entity1(p)
    e.apply([(10, (0,), {})])
    assert [e.read(t)[0]["c"] for t in (10, 11, 15, 16)] == [0, 1, 1, 0]


def test_every_aggregation_with_filters_and_nulls():
    feats = [Count(window="1s", name="n"), Count("x", window="1s", name="nx"), Sum("x", window="1s", name="sx"),
             Sum("f", window="1s", name="sf"), Mean("f", window="1s", name="mf"), Min("s", window="1s", name="mn"),
             Max("x", window="1s", name="mx"), Last("s", window="1s", name="ls"),
             CountDistinct("s", window="1s", name="ds"), Count(window="1s", filter="x > 1", name="big"),
             Sum("x", window="1s", filter="s == 'a'", name="sa")]
    p = ViewPlan(view(*feats), tile_us=100)
    e = Entity1(p)
    rows = [(5, {"x": 1, "f": 0.5, "s": "b"}), (150, {"x": None, "f": None, "s": "a"}),
            (160, {"x": 3, "f": 1.25, "s": None}), (250, {"x": 2, "f": None, "s": "a"})]
    e.apply([(ts, (i,), vals) for i, (ts, vals) in enumerate(rows)])
    vals, stamps = e.read(300)
    assert vals == {"n": 4, "nx": 3, "sx": 6, "sf": 1.75, "mf": 0.875, "mn": "a", "mx": 3, "ls": "a", "ds": 2,
                    "big": 2, "sa": 2}
    assert type(vals["sx"]) is int and type(vals["sf"]) is float
    assert stamps["big"] == 250 and stamps["sa"] == 250
    empty, _ = e.read(10 ** 9)
    assert empty == {"n": 0, "nx": 0, "sx": 0, "sf": 0.0, "mf": None, "mn": None, "mx": None, "ls": None,
                     "ds": 0, "big": 0, "sa": 0}
    assert type(empty["sf"]) is float


def test_last_ties_broken_by_order_and_redelivery_ignored():
    p = ViewPlan(view(Last("s", window="1s", name="lw"), Field("s", "string"), Count(window="1s", name="c")),
                 tile_us=1000)
    e = Entity1(p)
    e.apply([(7, (2,), {"s": "second"}), (7, (1,), {"s": "first"}), (3, (9,), {"s": "old"})])
    assert e.read(8)[0] == {"lw": "second", "s": "second", "c": 3}
    up = e.apply([(7, (2,), {"s": "second"}), (7, (1,), {"s": "first"})])  # at-least-once redelivery
    assert up.applied == 0 and e.read(8)[0]["c"] == 3
    e.apply([(7, (3,), {"s": None})])  # later order at the same ts wins, even with a null value
    assert e.read(8)[0] == {"lw": None, "s": None, "c": 4}


def test_plain_fields_ttl_boundary_and_future_entries():
    p = ViewPlan(view(Field("s", "string"), Last("x", filter="x > 0", name="pos"), ttl="10us"))
    e = Entity1(p)
    e.apply([(100, (0,), {"s": "a", "x": 5}), (104, (1,), {"s": "b", "x": -1})])
    assert e.read(105)[0] == {"s": "b", "pos": 5}
    assert e.read(114)[0] == {"s": "b", "pos": None}        # pos is 14us old, s exactly 10us: still valid
    assert e.read(115)[0] == {"s": None, "pos": None}
    assert e.read(104)[0] == {"s": None, "pos": 5}          # an entry at or after t is not visible
    assert e.read(105)[1] == {"s": 104, "pos": 100}


def test_eviction_and_late_events():
    p = ViewPlan(view(Count(window="10us", name="c"), Field("x", "int64"), lateness="5us"), 5, tile_us=4)
    assert p.retention == 15 and p.horizon(100) == 85 and p.horizon(None) is None
    e = Entity1(p)
    e.apply([(ts, (ts,), {"x": ts}) for ts in (60, 70, 80)], horizon=p.horizon(80))
    up = e.apply([(100, (100,), {"x": 100}), (84, (84,), {"x": 84}), (85, (85,), {"x": 85})], horizon=p.horizon(100))
    assert up.too_late == [1]                  # 84 < horizon 85; 85 is the oldest event still needed
    assert e.tiles() == [84, 100]               # tiles ending at or before 85 (60.., 68.., 80..) are gone
    assert e.read(101)[0] == {"c": 1, "x": 100}
    assert e.read(95)[0]["c"] == 1              # t >= watermark - lateness: [85, 95) holds only ts 85
    late = e.apply([(50, (50,), {"x": 50}), (150, (1,), {"x": 7})], horizon=p.horizon(150))
    assert late.too_late == [0] and late.applied == 1  # 50 is older than the plain entry: changes nothing
    assert e.read(151)[0] == {"c": 1, "x": 7}


def test_too_late_event_still_updates_plain_field_if_newer():
    p = ViewPlan(view(Count(window="10us", name="c"), Field("x", "int64")), tile_us=4)
    e = Entity1(p)
    up = e.apply([(3, (0,), {"x": 1})], horizon=50)
    assert up.too_late == [0] and up.applied == 1
    assert e.tiles() == [] and e.read(4)[0] == {"c": 0, "x": 1}


def test_datetime_values_round_trip():
    when = datetime(2024, 5, 1, 12, 30, tzinfo=timezone.utc)
    p = ViewPlan(view(Field("when", "timestamp"), Max("when", window="1s", name="mw")), tile_us=1000)
    e = Entity1(p)
    e.apply([(1, (0,), {"when": when}), (2, (1,), {"when": datetime(2024, 1, 1)})])
    assert e.read(3)[0] == {"when": datetime(2024, 1, 1, tzinfo=timezone.utc), "mw": when}


def test_unknown_format_version_is_refused():
    p = ViewPlan(view(Count(window="1s", name="c"), Field("x", "int64")), tile_us=1000)
    with pytest.raises(StateError, match="format version"):
        read_entity(p, {LATEST: encode([99, None, None])}, 5, [1])
    with pytest.raises(StateError, match="format version"):
        tile_partials(encode([2, []]) + b"\n[]")


def test_fingerprint_tracks_state_layout_only():
    a = ViewPlan(view(Count(window="1h", name="c")))
    assert a.fingerprint == ViewPlan(view(Count(window="1h", name="renamed"))).fingerprint
    assert a.fingerprint != ViewPlan(view(Count(window="2h", name="c"))).fingerprint
    assert a.fingerprint != ViewPlan(view(Count(window="1h", name="c")), tile_us=1).fingerprint
    assert a.fingerprint != ViewPlan(view(Count(window="1h", name="c", filter="x > 1"))).fingerprint
    assert a.fingerprint != ViewPlan(view(Count(window="1h", name="c")), lateness_us=1).fingerprint


def test_blob_decoding_keeps_big_ints_nan_and_datetimes_exact():
    from datetime import datetime, timezone

    from loopstack.features.online.partials import _loads, encode
    values = [[1, 2**70, -2**63, 2**63 - 1, 0.1, -0.0, 1e300, "NaN is text"],
              [123456789012345678901234567890], [datetime(2026, 11, 24, 1, 2, 3, 4, tzinfo=timezone.utc)]]
    for v in values:
        got = _loads(encode(v))
        assert got == v and [type(x) for x in got] == [type(x) for x in v]
    nan = _loads(encode([float("nan")]))[0]
    assert nan != nan  # NaN survives (the fast parser would reject it; the fallback reads it)
