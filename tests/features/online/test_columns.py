"""The columnar read path (`get_online_columns`, the batched "latest" decode, `read_plain_columns`)
against the row path, on every backend: the same values, timestamps, nulls, found flags and errors."""
from __future__ import annotations

import math
from datetime import datetime, timezone

import pytest

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import Count, Entity, EventSource, FeatureView, Field, Last, Max
from loopstack.features.online.partials import decode, decode_many, encode, has_long_int
from loopstack.features.online.service import Event, OnlineFeatures
from loopstack.features.online.reading import read_entity, read_plain_columns
from loopstack.features.online.state import LATEST_VERSIONS, VERSION, StateError

T0 = 1_718_000_000_000_000
S = 1_000_000
H = 3600 * S
USER = Entity("user", "user_id")
SRC = EventSource("src", "ts", [Field("user_id", "int64"), Field("x", "float64", required=False),
                                Field("n", "int64", required=False), Field("s", "string", required=False),
                                Field("when", "timestamp", required=False)])
FEATURES = {"plain": ["plain:x", "plain:n", "plain:s", "plain:big_n", "plain:when"],
            "latest": ["latest:x", "latest:n", "latest:s", "latest:big_n", "latest:when"],   # no ttl
            "wins": ["wins:cnt_1h", "wins:max_x_2h", "wins:last_s"],
            "mixed": ["plain:x", "wins:cnt_1h", "plain:s", "wins:max_x_2h", "plain:big_n"]}


def views() -> dict[str, FeatureView]:
    return {
        "plain": FeatureView("plain", entity=USER, source=SRC, ttl="2h", features=[
            Last("x", name="x"), Last("n", name="n"), Last("s", name="s"),
            Last("n", filter="n > 50", name="big_n"), Last("when", name="when")]),
        "latest": FeatureView("latest", entity=USER, source=SRC, features=[   # no ttl: the fast column read
            Last("x", name="x"), Last("n", name="n"), Last("s", name="s"),
            Last("n", filter="n > 50", name="big_n"), Last("when", name="when")]),
        "wins": FeatureView("wins", entity=USER, source=SRC, features=[
            Count(window="1h", name="cnt_1h"), Max("x", window="2h", name="max_x_2h"), Last("s", name="last_s")]),
    }


@pytest.fixture
def online(store):
    of = OnlineFeatures(store, views())
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    rows = [(1, 1.5, 7, "a", when), (1, float("nan"), 70, None, None), (2, -0.0, 2**70, "é\n\"", when),
            (3, 1e300, None, "", None), (4, None, 60, "late", when), (5, 3.25, 1, "z", None)]
    for i, (u, x, n, s, w) in enumerate(rows):
        ts = T0 + i * 10 * 60 * S if u != 4 else T0 - 3 * H   # user 4: only old events (ttl, windows)
        vals = {"x": x, "n": n, "s": s, "when": w}
        for v in ("plain", "latest", "wins"):
            of.apply_events(v, [Event(u, ts, (i,), vals)])
    return of


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN and -0.0 told from 0.0 (the answers must be the same values)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def assert_same_answer(online, feats, ids, as_of, full=False) -> None:
    rows = online.get_online_features(feats, [{"user_id": u} for u in ids], as_of, full)
    cols = online.get_online_columns(feats, {"user_id": ids}, as_of, full)
    assert cols.features == rows.features
    assert cols.found == rows.found
    for j, name in enumerate(cols.features):
        assert same(cols.values[j], [r[name] for r in rows.rows]), name
        assert cols.event_timestamps[j] == [s[name] for s in rows.event_timestamps], name


@pytest.mark.parametrize("kind", sorted(FEATURES))
@pytest.mark.parametrize("as_of", [T0 + 30 * 60 * S, T0 + 2 * H, T0 + 5 * H, T0 + 40 * 60 * S + 1, T0 - H])
def test_columns_equal_rows(online, kind, as_of):
    ids = [1, 2, 3, 4, 5, 6, 1, "2", None, "02", 5]   # repeats, unknown, a str key, a null key
    assert_same_answer(online, FEATURES[kind], ids, as_of)
    assert_same_answer(online, FEATURES[kind], [3, 5, 6, 3], as_of)   # plain JSON only: the one-call decode
    assert_same_answer(online, FEATURES[kind], ids[:1], as_of, full=True)
    assert_same_answer(online, FEATURES[kind], [], as_of)


@pytest.mark.parametrize("view", ["plain", "latest"])
@pytest.mark.parametrize("t", [T0 + H, T0 + 30 * 60 * S, T0 + 20 * 60 * S, T0])
@pytest.mark.parametrize("wanted", [None, (1,), (4, 0)])
def test_columns_against_read_entity_one_by_one(online, store, view, t, wanted):
    """The batched plain decode gives what the per-entity `read_entity` gives, value by value (with and
    without ttl, as of times after every entity's newest event and between events)."""
    plan = online.plan(view)
    wanted = wanted or tuple(range(len(plan.features)))
    hashes = store.read([f"{view}|{u}" for u in range(1, 7)])
    present = [u for u in range(1, 7) if f"{view}|{u}" in hashes]
    docs = dict(zip(present, decode_many([hashes[f"{view}|{u}"]["latest"] for u in present], LATEST_VERSIONS)))
    latest = [docs.get(u) for u in range(1, 7)]
    vals, stamps = read_plain_columns(plan, latest, t, wanted)
    for i, u in enumerate(range(1, 7)):
        fields = hashes.get(f"{view}|{u}")
        want = read_entity(plan, fields, t, wanted) if fields else ([None] * len(wanted), [None] * len(wanted))
        assert same([c[i] for c in vals], want[0]) and [c[i] for c in stamps] == want[1]
    if t == T0 + H and len(wanted) == 5:
        assert vals[4][1] == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)   # datetimes survive the batch decode
        assert vals[1][1] == 2**70                                              # so do integers beyond 64 bits


def test_values_that_need_the_standard_parser(online):
    got = online.get_online_columns(["plain:x", "plain:n", "plain:s"], {"user_id": [1, 2, 3]}, T0 + H)
    x, n, s = got.values
    assert math.isnan(x[0]) and math.copysign(1, x[1]) == -1 and x[2] == 1e300
    assert n == [70, 2**70, None] and s == [None, "é\n\"", ""]
    assert got.found == [True, True, True]


def test_errors_are_the_row_paths(online):
    def both(feats, ids, err, match):
        with pytest.raises(err, match=match):
            online.get_online_features(feats, [{"user_id": u} for u in ids])
        with pytest.raises(err, match=match):
            online.get_online_columns(feats, {"user_id": ids})
    both(["plain:nope"], [1], FeatureReferenceError, "has no feature 'nope'")
    both(["plain:x", "wins:cnt_1h"], [1, 2.5], RetrievalError, r"entity row 1: entity key 2\.5 is a non-integral")
    both(["plain:x"], [1, [3]], RetrievalError, r"entity row 1: entity key \[3\] \(list\)")
    with pytest.raises(RetrievalError, match=r"entity row 0 has no 'user_id'.*it has \['id'\]"):
        online.get_online_columns(["plain:x"], {"id": [1]})
    with pytest.raises(FeatureReferenceError, match=r"feature\(s\) \['x'\] collide"):
        online.get_online_columns(["plain:x"], {"user_id": [1], "x": [2]})
    assert online.get_online_columns(["plain:x"], {"user_id": [], "x": []}).found == []  # no rows: no clash
    with pytest.raises(RetrievalError, match="same length"):
        online.get_online_columns(["plain:x"], {"user_id": [1, 2], "other": [1]})


def test_state_written_by_another_format_version_is_refused(online, store):
    from loopstack.features.online.base import WriteBatch
    store.write(WriteBatch(puts={"plain|9": {"latest": b"[9,null]"}, "plain|8": {"latest": b"[9,null]"}}))
    with pytest.raises(StateError, match="format version"):
        online.get_online_columns(["plain:x"], {"user_id": [9, 8]})
    with pytest.raises(StateError, match="format version"):
        online.get_online_features(["plain:x"], [{"user_id": 9}])


def test_decode_many_equals_decode():
    docs = [[VERSION, 1, 2.5, "s"], [VERSION, float("nan")], [VERSION, 2**64, -2**63 - 1],
            [VERSION, datetime(2020, 1, 1, tzinfo=timezone.utc)], [VERSION, "NaN", "Infinity"], [VERSION, None]]
    blobs = [encode(d) for d in docs]
    for chunk in (blobs, blobs[:1], blobs[4:], [blobs[0], blobs[5]], []):
        assert same(decode_many(chunk), [decode(b) for b in chunk])
    assert decode_many([blobs[0], blobs[5]]) == [docs[0], docs[5]]
    with pytest.raises(StateError):
        decode_many([blobs[0], b"[2,1]"])


def test_has_long_int():
    assert has_long_int(b"[1234567890123456789]") and has_long_int(b"-99999999999999999999")
    assert has_long_int(b'[0.5,{"a":[12345678901234567890]}]')
    assert not has_long_int(b"[123456789012345678, 1.2345678901234567e+300, 1718000000000000]")
    # fraction digits are no integer: small floats are written with 19+ digits after the point
    assert not has_long_int(b"[0.00017241441922047758,-0.0008222677293702708,12345678901234567890.5,1e-7]")


def test_a_small_float_keeps_the_batch_decode_in_one_call(monkeypatch):
    """One value like 0.00017241441922047758 must not send the whole batch to the per-blob parser."""
    from loopstack.features.online import partials
    calls = []
    real = partials._orjson_loads
    monkeypatch.setattr(partials, "_orjson_loads", lambda b: calls.append(b) or real(b))
    docs = [[VERSION, [T0, [0, i]], [T0, [0, i], 0.00017241441922047758 * i]] for i in range(5)]
    assert decode_many([encode(d) for d in docs]) == docs
    assert len(calls) == 1
