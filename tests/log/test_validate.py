"""validate_record: pure schema checks and normalisation (no I/O)."""
from __future__ import annotations

import math
from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loopstack.features.definitions import Field
from loopstack.log.validate import reason_kind, validate_record

S = (Field("i8", "int8", False), Field("i64", "int64", False), Field("f", "float32", False),
     Field("b", "bool", False), Field("s", "string", False), Field("t", "timestamp", False))


def ok(rec):
    out, why = validate_record(rec, S)
    assert why is None, why
    return out


def bad(rec):
    out, why = validate_record(rec, S)
    assert out is None and why
    return why


def test_ints():
    assert ok({"i8": 127, "i64": np.int64(-5)})["i64"] == -5
    assert ok({"i8": 3.0})["i8"] == 3
    assert "out of range" in bad({"i8": 128}) and "got 128" in bad({"i8": 128})
    assert "bools are not accepted" in bad({"i64": True})
    assert "expected int64: got '1' (str)" in bad({"i64": "1"})
    assert "expected int8" in bad({"i8": 1.5})


def test_floats_bools_strings():
    assert ok({"f": 2})["f"] == 2.0 and isinstance(ok({"f": 2})["f"], float)
    assert ok({"f": np.float32(1.5)})["f"] == 1.5
    assert "expected float32" in bad({"f": False})
    assert ok({"b": np.bool_(True)})["b"] is True
    assert "expected bool: got 1" in bad({"b": 1})
    assert "expected string: got 5" in bad({"s": 5})


EPOCH_US = int(datetime(2024, 5, 6, 7, 8, 9, tzinfo=timezone.utc).timestamp()) * 1_000_000 + 123456


def test_timestamps():
    want = "2024-05-06T07:08:09.123456+00:00"
    aware = datetime(2024, 5, 6, 9, 8, 9, 123456, tzinfo=timezone(timedelta(hours=2)))
    for v in (datetime(2024, 5, 6, 7, 8, 9, 123456), aware, pd.Timestamp(want), "2024-05-06T07:08:09.123456Z",
              "2024-05-06 07:08:09.123456", EPOCH_US, EPOCH_US / 1000):
        got = ok({"t": v})["t"]
        assert got[:23] == want[:23] and got.endswith("+00:00"), (v, got)
    assert ok({"t": EPOCH_US // 1_000_000})["t"] == "2024-05-06T07:08:09.000000+00:00"
    assert ok({"t": date(2024, 1, 2)})["t"] == "2024-01-02T00:00:00.000000+00:00"
    assert "expected timestamp" in bad({"t": "yesterday"}) and "'yesterday'" in bad({"t": "yesterday"})
    assert ok({"t": pd.NaT})["t"] is None


def test_required_nulls_and_extras():
    schema = (Field("x", "int64"),)
    assert validate_record({}, schema)[1] == "field 'x' (int64) is required but missing: got None"
    assert "required but null" in validate_record({"x": float("nan")}, schema)[1]
    assert "required but null" in validate_record({"x": None}, schema)[1]
    out, _ = validate_record({"x": 1, "when": datetime(2024, 1, 1), "arr": np.array([1, 2]), "o": object}, schema)
    assert out["when"] == "2024-01-01T00:00:00.000000+00:00" and out["arr"] == [1, 2]
    assert out["o"] == repr(object)
    assert "not an object" in validate_record([1], schema)[1]
    assert reason_kind("field 'x': expected int64: got 'a' (str)") == "field 'x': expected int64"


@pytest.mark.parametrize("v", [float("inf"), float("-inf")])
def test_non_finite_floats_rejected(v):
    assert "finite" in bad({"f": v})


_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5), st.integers(-(1 << 40), 1 << 40).map(np.int64), st.floats(-1e9, 1e9).map(np.float32),
    st.datetimes(), st.lists(st.floats(allow_nan=True), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.floats(allow_nan=True), st.integers(), st.none()), max_size=3))
_DTYPES = ["int8", "int32", "int64", "float32", "float64", "bool", "string", "timestamp"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_DTYPES), st.booleans()), min_size=1, max_size=5),
       st.lists(_VALUES, min_size=7, max_size=7))
def test_fast_path_gives_exactly_what_the_full_checks_give(spec, values):
    """Plain values taken as they are (the fast path) must give the same record or the same reason as the
    full conversion rules, for every dtype and every kind of value, extras included."""
    from loopstack.log import validate as V

    schema = tuple(Field(f"f{i}", dt, required=req) for i, (dt, req) in enumerate(spec))
    record = {f"f{i}": v for i, v in enumerate(values[:len(schema)])}
    record["extra_plain"], record["extra_other"] = values[5], values[6]
    got = V.validate_record(record, schema)
    saved = dict(V._FAST_TYPES)
    V._FAST_TYPES.clear()
    V._PLANS.clear()
    try:
        slow = V.validate_record(record, schema)
    finally:
        V._FAST_TYPES.update(saved)
        V._PLANS.clear()
    assert _same(got, slow)


def _same(a, b) -> bool:
    """Equal, with NaN equal to NaN and types compared too (1 and 1.0 differ in the log's JSON)."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 80), 2 ** 80) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(), lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))
def test_encoded_values_read_back_as_the_standard_encoder_writes_them(value):
    """encode_value takes orjson's fast path where it can (not for integers past 64 bits or lone surrogates)
    and the standard encoder otherwise; either way the stored text decodes to the same value."""
    import json

    from loopstack.log.validate import encode_value
    try:
        reference = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError:
        return
    text = encode_value(value)
    assert isinstance(text, str) and json.loads(text) == json.loads(reference) == value


def test_an_int_key_field_with_a_gap_keys_like_the_int():
    """pandas makes an int column with a gap float: 2.0 must key (and so partition) like 2, not as "2.0"."""
    from loopstack.log import TopicConfig
    from loopstack.log.base import partition_for
    from loopstack.log.validate import prepare_batch
    cfg = TopicConfig("c", 8, (Field("author_id", "int64", False), Field("x", "float64", False)), key_field="author_id")
    with_gap = pd.DataFrame({"author_id": [2, None, 7], "x": [1.0, 2.0, 3.0]})
    assert with_gap["author_id"].dtype == "float64"
    keys = [k for _, k, _ in prepare_batch(cfg, with_gap, None).accepted]
    assert keys == ["2", None, "7"]
    assert [k for _, k, _ in prepare_batch(cfg, [{"author_id": 2}, {"author_id": np.int64(7)}], None).accepted] \
        == ["2", "7"]
    parts = [p for p, _, _ in prepare_batch(cfg, with_gap.iloc[[0, 2]], None).accepted]
    assert parts == [partition_for("2", 8), partition_for("7", 8)]
    floats = TopicConfig("f", 8, (Field("x", "float64"),), key_field="x")
    assert [k for _, k, _ in prepare_batch(floats, [{"x": 2.0}], None).accepted] == ["2.0"]
