"""The stored form of the ``"latest"`` field (format 2: one timestamp per entity unless an entry came
from an older event) against the in-memory list it encodes, and format-1 state written by earlier
versions: both must read the same values and timestamps, through every read path."""
from __future__ import annotations

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopstack.features.definitions import Entity, EventSource, FeatureView, Field, Last
from loopstack.features.online.partials import decode_many, encode
from loopstack.features.online.reading import read_entity, read_plain_columns
from loopstack.features.online.state import (LATEST, LATEST_VERSIONS, StateError, ViewPlan, apply_entity,
                                             decode_latest, encode_latest)

ENTITY = Entity("user", "uid")
SOURCE = EventSource("ev", "ts", [Field("uid", "int64"), Field("x", "int64"), Field("s", "string")])
VIEW = FeatureView("v", entity=ENTITY, source=SOURCE, features=[
    Last("x", name="x"), Last("s", name="s"), Last("x", filter="x > 50", name="big_x"),
    Last("s", filter="s == 'a'", name="s_a")])

stamp = st.tuples(st.integers(0, 2**53), st.lists(st.integers(0, 10**6), max_size=2))
value = st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(allow_nan=False, allow_infinity=False),
                  st.text(max_size=5))


@st.composite
def latest_lists(draw):
    seen = draw(st.one_of(st.none(), stamp))
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        if seen is None or draw(st.booleans()):
            e = draw(st.one_of(st.none(), stamp)) if seen is not None else None
        else:
            e = seen                                      # from the newest event: stored as a 0 stamp
        entries.append(None if e is None else [e[0], list(e[1]), draw(value)])
    return [1, None if seen is None else [seen[0], list(seen[1])], *entries]


@given(latest_lists())
@settings(max_examples=300, deadline=None)
def test_encode_latest_round_trips(latest):
    blob = encode_latest(latest)
    assert decode_latest(blob) == latest
    doc = orjson.loads(blob)
    assert doc[0] == 2 and len(doc) == len(latest) + 1
    seen = latest[1]
    for s, e in zip(doc[2], latest[2:]):   # the stamp says where each entry's (ts, order) is
        assert (s is None) == (e is None)
        if e is not None:
            assert (s == 0) == ([e[0], e[1]] == seen)


def test_an_entity_updated_by_one_event_stores_one_timestamp():
    latest = [1, [1718000000000000, [3, 7]]] + [[1718000000000000, [3, 7], v] for v in (1.5, "a", None, 4)]
    assert encode_latest(latest) == b'[2,[1718000000000000,[3,7]],[0,0,0,0],1.5,"a",null,4]'
    assert len(encode_latest(latest)) < len(encode(latest)) / 2


def test_format_1_and_format_2_read_alike():
    """State written by an older loopstack (format 1) reads exactly as the same state in format 2:
    per entity (`read_entity`) and in batches (`read_plain_columns`, fast and general paths)."""
    p = ViewPlan(VIEW)
    events = [(100, [1], {"x": 70, "s": "a"}), (200, [2], {"x": 10, "s": "b"}), (300, [3], {"x": 20, "s": None})]
    states = []
    for upto in (1, 2, 3):   # entity 1: every entry from the newest event; 2 and 3: older entries too
        up = apply_entity(p, {}, events[:upto], None)
        states.append(up.puts[LATEST])
    v2 = states
    v1 = [encode(decode_latest(b)) for b in v2]
    assert all(b.startswith(b"[2,") for b in v2) and all(b.startswith(b"[1,") for b in v1)
    wanted = list(range(len(p.features)))
    for t in (150, 250, 10**6):
        for b1, b2 in zip(v1, v2):
            assert read_entity(p, {LATEST: b1}, t, wanted) == read_entity(p, {LATEST: b2}, t, wanted)
        for order in ([0, 1, 2], [0], [2, 0, 1]):
            docs1 = decode_many([v1[i] for i in order] + [v1[0]], LATEST_VERSIONS) + [None]
            docs2 = decode_many([v2[i] for i in order] + [v2[0]], LATEST_VERSIONS) + [None]
            for w in (wanted, [1], [3, 0]):
                got = read_plain_columns(p, docs2, t, w)
                assert got == read_plain_columns(p, docs1, t, w)
                # and equal to reading each entity alone
                for j, d in enumerate(docs2):
                    one = read_entity(p, {LATEST: encode(d)} if d is not None else {}, t, w)
                    assert [c[j] for c in got[0]] == one[0] and [c[j] for c in got[1]] == one[1]


def test_unknown_latest_format_is_refused():
    with pytest.raises(StateError, match="format version"):
        decode_latest(b"[3,null,[]]")
    with pytest.raises(StateError, match="reads 1 or 2"):
        decode_many([b"[3,null,[]]", b"[2,null,[]]"], LATEST_VERSIONS)
