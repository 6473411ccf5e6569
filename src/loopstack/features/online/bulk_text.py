"""Arrow-built JSON texts for bulk materialization (online/bulk.py): each new entity's ``latest``
entry, byte for byte what `state.encode_latest` gives, built column-wise without a Python object per value."""
from __future__ import annotations

from json.encoder import encode_basestring_ascii as _escape
from typing import TYPE_CHECKING, Any

from loopstack.features.online.partials import _ENC
from loopstack.features.online.state import _norm

if TYPE_CHECKING:
    from loopstack.features.online.bulk import _Query

_DUMPS = _ENC  # the encoder `encode` uses


def _json_column(arr):  # noqa: ANN001 - pyarrow Array -> StringArray
    """Each value of an Arrow array as the JSON text `partials.encode` gives it inside a list.

    Integers: Arrow's decimal text; floats: `_float_json`; booleans: one C-level json.dumps of the
    column, split at the commas; strings: the C
    escaper per value; UTC timestamps: the ``{"$dt": µs}`` tag; anything else: `encode` per value.
    Nulls are ``null``.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    t = arr.type
    if pa.types.is_integer(t):
        return pc.fill_null(pc.cast(arr, pa.string()), "null")
    if pa.types.is_floating(t):
        return _float_json(arr)
    if pa.types.is_boolean(t):
        return pa.array(_DUMPS(arr.to_pylist())[1:-1].split(",") if len(arr) else [], pa.string())
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return pa.array(["null" if v is None else _escape(v) for v in arr.to_pylist()], pa.string())
    if pa.types.is_timestamp(t) and t.unit == "us" and t.tz is not None:
        txt = pc.binary_join_element_wise('{"$dt":', pc.cast(pc.cast(arr, pa.int64()), pa.string()), "}", "")
        return pc.fill_null(txt, "null")
    return pa.array([_DUMPS(_norm(v)) for v in arr.to_pylist()], pa.string())


def _float_json(arr):  # noqa: ANN001 - pyarrow float Array -> StringArray
    """`json.dumps` text of each float (Python's repr) built by Arrow's shortest round-trip formatting.

    For 1e-4 <= |x| < 1e13 (and 0) Arrow's text, when it has no exponent, is repr's digits, with
    ``.0`` added to integral values (checked against repr on ~10^7 values, tests/features/online/
    test_bulk_batches.py); the rest (exponents, NaN, inf, rare) goes through `json.dumps` per value.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    if arr.type != pa.float64():  # float32 etc.: repr of the widened double, like to_pylist gives
        arr = pc.cast(arr, pa.float64())
    txt = pc.cast(arr, pa.string())
    ab = pc.abs(arr)
    ok = pc.and_(pc.or_(pc.and_(pc.greater_equal(ab, 1e-4), pc.less(ab, 1e13)), pc.equal(arr, 0.0)),
                 pc.invert(pc.match_substring(txt, "e")))
    txt = pc.if_else(pc.match_substring(txt, "."), txt, pc.binary_join_element_wise(txt, ".0", ""))
    bad = pc.and_(pc.is_valid(arr), pc.invert(pc.fill_null(ok, True)))
    if pc.any(bad).as_py():
        idx = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
        vals = pc.take(arr, pa.array(idx)).to_pylist()
        txt = pc.replace_with_mask(txt, bad, pa.array([_DUMPS(v) for v in vals], pa.string()))
    return pc.fill_null(txt, "null")


def fresh_texts(query: "_Query", rb):  # noqa: ANN001, ANN202 - RecordBatch -> BinaryArray
    """Per entity of the batch, the stored ``latest`` bytes built from the span alone: what
    `state.encode_latest` gives for ``[1, [ts, order], [ts, order, value] per slot]`` (format 2:
    ``[2, seen, stamps, values...]``), built column-wise in Arrow (a binary array)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    join = pc.binary_join_element_wise

    def head(struct, ts: str, prefix: str) -> Any:  # "[ts,[o0,o1]"
        parts = [_json_column(pc.struct_field(struct, ts))]
        for i in range(query.n_order):
            parts += [",", _json_column(pc.struct_field(struct, f"{prefix}{i}"))]
        return join("[", parts[0], ",[", *parts[2:], "]", "")

    seen = rb.column("__seen")
    stamps_of, valid = [], []
    for gi in range(len(query.groups)):
        g = rb.column(f"__g{gi}")
        same = pc.equal(pc.struct_field(g, "__ts"), pc.struct_field(seen, "t"))
        for i in range(query.n_order):
            same = pc.and_(same, pc.equal(pc.struct_field(g, f"__o{i}"), pc.struct_field(seen, f"o{i}")))
        stamp = pc.if_else(pc.fill_null(same, False), pa.scalar("0"), join(head(g, "__ts", "__o"), "]", ""))
        has = g.is_valid() if g.null_count else None
        stamps_of.append(pc.if_else(has, stamp, pa.scalar("null")) if has is not None else stamp)
        valid.append(has)
    stamps = join("[", join(*[stamps_of[gi] for gi, _ in query.slot_fields], ","), "]", "")
    items: list = [join(head(seen, "t", "o"), "]", ""), stamps]
    for gi, fld in query.slot_fields:
        value = _json_column(pc.struct_field(rb.column(f"__g{gi}"), fld))
        items.append(pc.if_else(valid[gi], value, pa.scalar("null")) if valid[gi] is not None else value)
    return pc.cast(join("[2,", join(*items, ","), "]", ""), pa.binary())
