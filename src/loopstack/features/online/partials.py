"""Encoding and partial aggregates of the online state (pure, no I/O); used by `state.py`.

A tile is two compact JSON documents on two lines -- ``[1, partials]`` and ``[[ts, order, v...], ...]``
-- so a read decodes only the half it needs (partials for tiles inside a window, raw rows for the
two edge tiles). The leading 1 is the format version. Datetimes are tagged ``{"$dt": µs}``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Sequence

from loopstack.features.aggregations import Filter
from loopstack.timeutil import to_micros

VERSION = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class StateError(Exception):
    """Stored state cannot be read by this version of the code or this view definition."""


def _default(o: Any) -> Any:
    if isinstance(o, datetime):
        aware = o if o.tzinfo else o.replace(tzinfo=timezone.utc)
        return {"$dt": to_micros(aware - _EPOCH)}
    if isinstance(o, (set, frozenset)):
        return list(o)
    if hasattr(o, "item"):
        return o.item()  # numpy scalars
    raise TypeError(f"value {o!r} of type {type(o).__name__} cannot be stored online (use int/float/str/bool/datetime)")


def _hook(d: dict) -> Any:
    if "$dt" in d:
        return _EPOCH + timedelta(microseconds=d["$dt"])
    return d


_DEC = json.JSONDecoder()
_DEC_DT = json.JSONDecoder(object_hook=_hook)


_ENC = json.JSONEncoder(separators=(",", ":"), default=_default).encode  # = json.dumps(...), built once


def encode(obj: Any) -> bytes:
    """Compact JSON bytes (datetimes tagged)."""
    return _ENC(obj).encode()


try:  # orjson parses the same JSON about 2x faster; reads decode a blob per entity, so it matters
    from orjson import JSONDecodeError as _OrjsonError
    from orjson import loads as _orjson_loads
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without it
    _orjson_loads = None


_DIGITS = bytes(48 if 48 <= c <= 57 else 32 for c in range(256))  # every digit -> "0", the rest -> " "
_LONG_RUN = b"0" * 19
_LONG_INT = re.compile(rb"(?<![.\d])\d{19,}(?![.\deE])")   # 19+ digits, not a fraction's or a float's mantissa


def has_long_int(blob: bytes) -> bool:
    """True if `blob` has an integer of 19 or more digits (one orjson might read as a float).

    First two C passes (translate, substring search) for any run of 19 digits: ~10x cheaper than a
    regex, which re-scans every 16-digit timestamp from each of its digits. Only if one is found, the
    regex tells integers from fraction digits (``0.00017241441922047758``: common in float columns;
    without it one such value sent a whole batch read down the slow per-blob path)."""
    return _LONG_RUN in blob.translate(_DIGITS) and _LONG_INT.search(blob) is not None


def _orjson_safe(blob: bytes) -> bool:
    # orjson reads integers beyond 64 bits as floats, and tagged datetimes need the object hook: those go
    # to the standard parser (NaN/Infinity, which orjson refuses, go there when orjson raises)
    return _orjson_loads is not None and b'"$dt"' not in blob and not has_long_int(blob)


def _loads(blob: bytes) -> Any:
    if _orjson_safe(blob):
        try:
            return _orjson_loads(blob)
        except _OrjsonError:
            pass
    if b'"$dt"' in blob:
        return _DEC_DT.raw_decode(blob.decode())[0]
    return _DEC.raw_decode(blob.decode())[0]


def decode_many(blobs: Sequence[bytes], versions: tuple[int, ...] = (VERSION,)) -> list:
    """`decode` of many blobs, in one orjson call when they allow it (the batch read path)."""
    if len(blobs) > 1:
        joined = b"[" + b",".join(blobs) + b"]"
        if _orjson_safe(joined):
            try:
                docs = _orjson_loads(joined)
            except _OrjsonError:
                docs = None
            if docs is not None and len(docs) == len(blobs):
                return [_versioned(d, versions) for d in docs]
    return [decode(b, versions) for b in blobs]


def _versioned(obj: Any, versions: tuple[int, ...] = (VERSION,)) -> Any:
    if not isinstance(obj, list) or not obj or obj[0] not in versions:
        raise StateError(f"online state has format version {obj[:1] if isinstance(obj, list) else obj!r}, this "
                         f"loopstack reads {' or '.join(map(str, versions))}; rebuild it (reset the view and "
                         "materialize again)")
    return obj


def decode(blob: bytes, versions: tuple[int, ...] = (VERSION,)) -> Any:
    """Inverse of `encode` for a versioned list; StateError on data written by an unknown format version."""
    return _versioned(_loads(blob), versions)


def encode_tile(partials: list, raw: list) -> bytes:
    """A tile as two JSON documents on two lines, so a read decodes only the half it needs."""
    return encode([VERSION, partials]) + b"\n" + encode(raw)


def tile_partials(blob: bytes) -> list:
    """The partial aggregates of an encoded tile (one per sig)."""
    return _versioned(_loads(blob[:blob.index(b"\n")]))[1]


def tile_raw(blob: bytes) -> list:
    """The raw event rows ``[ts, order, v...]`` of an encoded tile."""
    return _loads(blob[blob.index(b"\n") + 1:])


@dataclass(frozen=True)
class Sig:
    """One partial aggregate kept per tile: kind over raw column `col` (row index) with a filter."""

    kind: str            # cnt | cntv | sum | min | max | last | dist
    col: int             # index into a raw row ([ts, order, v...]); -1 for row counts
    filt: Filter | None
    fcol: int            # row index of the filter column; -1 without filter


# -- partial aggregates ------------------------------------------------------------------------
def _new(sig: Sig) -> list:
    k = sig.kind
    if k in ("cnt", "cntv"):
        return [None, 0]
    if k == "sum":
        return [None, 0, 0]
    if k == "last":
        return [None, None, None]
    if k == "dist":
        return [None, set()]
    return [None, None]  # min, max


def _update(sig: Sig, p: list, row: list) -> None:
    """Add one raw event row to partial `p` (newest-input ts first, then the aggregate)."""
    if sig.filt is not None and not sig.filt.matches(row[sig.fcol]):
        return
    ts = row[0]
    k = sig.kind
    if k == "last":
        if p[0] is None or (ts, row[1]) > (p[0], p[1]):
            p[0], p[1], p[2] = ts, row[1], row[sig.col]
        return
    if p[0] is None or ts > p[0]:
        p[0] = ts
    if k == "cnt":
        p[1] += 1
        return
    v = row[sig.col]
    if v is None:
        return
    if k == "cntv":
        p[1] += 1
    elif k == "sum":
        p[1] += 1
        p[2] += v
    elif k == "min":
        if p[1] is None or v < p[1]:
            p[1] = v
    elif k == "max":
        if p[1] is None or v > p[1]:
            p[1] = v
    else:  # dist
        p[1].add(v)


def _combine(sig: Sig, acc: list, parts: list) -> None:
    """Merge many stored partials of one sig into `acc` at once (the hot loop of a read)."""
    parts = [p for p in parts if p[0] is not None]
    if not parts:
        return
    k = sig.kind
    if k == "last":
        best = max(parts, key=lambda p: (p[0], p[1]))
        if acc[0] is None or (best[0], best[1]) > (acc[0], acc[1]):
            acc[0], acc[1], acc[2] = best[0], best[1], best[2]
        return
    newest = max(p[0] for p in parts)
    if acc[0] is None or newest > acc[0]:
        acc[0] = newest
    if k in ("cnt", "cntv"):
        acc[1] += sum(p[1] for p in parts)
    elif k == "sum":
        acc[1] += sum(p[1] for p in parts)
        acc[2] += sum(p[2] for p in parts)
    elif k == "dist":
        for p in parts:
            acc[1].update(p[1])
    else:
        vals = [p[1] for p in parts if p[1] is not None]
        if acc[1] is not None:
            vals.append(acc[1])
        if vals:
            acc[1] = min(vals) if k == "min" else max(vals)


def tiles_partials(blobs: list[bytes]) -> list[list]:
    """The partials of many encoded tiles, decoded in one JSON call."""
    if not blobs:
        return []
    docs = _loads(b"[" + b",".join(b[:b.index(b"\n")] for b in blobs) + b"]")
    for d in docs:
        _versioned(d)
    return [d[1] for d in docs]
