"""Pure schema validation and batch preparation for the event log (no I/O).

`validate_record` checks one record against a topic schema and normalises it so it is plain JSON:

* required fields must be present and not null (NaN / NaT count as null);
* int8..int64: Python/numpy ints in range; bools are *not* ints; integral floats (``3.0``, what a
  pandas int column with a gap becomes) are accepted and turned into ints;
* float32/float64: ints and floats (not bools); bool: only bools; string: only strings;
* timestamp: ``datetime`` / ``pandas.Timestamp`` (naive = UTC), ISO-8601 strings, or epoch numbers
  (by magnitude: seconds < 1e11 <= milliseconds < 1e14 <= microseconds < 1e17 <= nanoseconds),
  normalised to ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``;
* fields not in the schema are kept (made JSON-safe: datetimes → ISO strings, numpy scalars →
  Python, anything else unknown → ``repr``), so producers can add fields before the schema does.

`prepare_batch` turns one ``append`` call (dicts or a DataFrame, a key spec) into routed accepted
records plus dead letters; both backends use it, so they validate and route identically.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any, Iterable, Sequence

import orjson

from loopstack.errors import LogError
from loopstack.features.definitions import Field

from .base import TopicConfig, partition_for

_INT_RANGES = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _is_null(v: Any) -> bool:
    if v is None:
        return True
    if isinstance(v, (str, int, dict, list, tuple)):
        return False
    if isinstance(v, datetime):
        return type(v).__name__ == "NaTType"
    if isinstance(v, float):
        return math.isnan(v)
    try:  # pandas.NaT, numpy.nan and friends
        import pandas as pd
        return v is pd.NaT or (not isinstance(v, (str, bytes, dict, list)) and bool(pd.isna(v)) is True)
    except (TypeError, ValueError, ImportError):
        return False


def _py(v: Any) -> Any:
    """numpy scalars → Python scalars."""
    mod = type(v).__module__
    if mod == "numpy" and getattr(v, "ndim", None) == 0:
        return v.item()
    return v


def format_ts(dt: datetime) -> str:
    """A datetime as the log's canonical timestamp string (UTC, microseconds, ``+00:00``)."""
    dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt.astimezone(timezone.utc)
    return dt.isoformat(timespec="microseconds")


def _ts_from_number(n: float | int) -> datetime:
    a = abs(n)
    if a < 1e11:
        us = n * 1_000_000
    elif a < 1e14:
        us = n * 1_000
    elif a < 1e17:
        us = n
    else:
        us = n / 1_000
    from datetime import timedelta
    return _EPOCH + timedelta(microseconds=int(us))


_TS_LAST: tuple[Any, str | None] = (None, None)   # (epoch number, its timestamp string): the last one converted


def _check(f: Field, v: Any) -> tuple[Any, str | None]:
    """Normalised value or a reason fragment (the expected type)."""
    dt = f.dtype
    if dt in _INT_RANGES:
        if isinstance(v, bool):
            return None, f"expected {dt}, bools are not accepted as integers"
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if not isinstance(v, int):
            return None, f"expected {dt}"
        bits = _INT_RANGES[dt]
        if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
            return None, f"expected {dt}, value out of range"
        return v, None
    if dt in ("float32", "float64"):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"expected {dt}"
        if not math.isfinite(v):
            return None, f"expected a finite {dt} (JSON has no infinity)"
        return float(v), None
    if dt == "bool":
        return (v, None) if isinstance(v, bool) else (None, "expected bool")
    if dt == "string":
        return (v, None) if isinstance(v, str) else (None, "expected string")
    # timestamp
    try:
        if isinstance(v, datetime):
            return format_ts(v), None
        if isinstance(v, date):
            return format_ts(datetime(v.year, v.month, v.day)), None
        if isinstance(v, str):
            s = v.strip()
            if s.endswith("Z"):
                s = s[:-1] + "+00:00"
            return format_ts(datetime.fromisoformat(s)), None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            global _TS_LAST
            last = _TS_LAST   # the records of one call often share their time (a prediction log's do)
            if last[0] == v and type(last[0]) is type(v):
                return last[1], None
            out = format_ts(_ts_from_number(v))
            _TS_LAST = (v, out)
            return out, None
    except OverflowError:   # an aware datetime near year 1 / 9999 whose UTC time is not a datetime, 1e30 s
        return None, "timestamp out of range: its UTC time must fall in the years 1..9999"
    except (ValueError, OSError):
        pass
    return None, "expected timestamp (datetime, ISO-8601 string or epoch number)"


def json_safe(v: Any) -> Any:
    """Make a value JSON-serialisable: datetimes → ISO, numpy → Python, NaN → None, else repr."""
    v = _py(v)
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, datetime):
        try:
            return format_ts(v)
        except OverflowError:   # e.g. 0001-01-01 at +05:00 has no UTC form: kept with its own offset
            return v.isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, dict):
        return _safe_items({}, v.items())
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if _is_null(v):
        return None
    if hasattr(v, "tolist"):
        return json_safe(v.tolist())
    return repr(v)


# Exact Python types that need no conversion for a dtype (bool is not int's exact type, so it never passes
# as an integer here; floats still need the finiteness check, ints the range check).
_FAST_TYPES = {"string": str, "bool": bool, "float32": float, "float64": float,
               **{dt: int for dt in _INT_RANGES}}
_PLANS: dict[int, tuple] = {}


def _plan(schema: Sequence[Field]) -> tuple:
    """Per-schema lookups built once (a topic's schema object is reused for every record of every append)."""
    plan = _PLANS.get(id(schema))
    if plan is None or plan[0] is not schema:
        if len(_PLANS) > 256:
            _PLANS.clear()
        fields = tuple((f, f.name, _FAST_TYPES.get(f.dtype),
                        1 << (_INT_RANGES[f.dtype] - 1) if f.dtype in _INT_RANGES else 0, not f.required)
                       for f in schema)
        plan = _PLANS[id(schema)] = (schema, frozenset(f.name for f in schema), fields)
    return plan


def _safe_items(out: dict, items: Iterable[tuple[Any, Any]]) -> dict:
    """`json_safe` of each value into `out` under its key as a string; plain values (None, str, int, bool,
    float) inline, since a logged record's extras and feature vector are mostly those."""
    for k, x in items:
        t = type(x)
        key = k if type(k) is str else str(k)
        if x is None or t is str or t is int or t is bool:
            out[key] = x
        elif t is float:
            out[key] = x if math.isfinite(x) else None
        else:
            out[key] = json_safe(x)
    return out


def validate_record(record: Any, schema: Sequence[Field]) -> tuple[dict | None, str | None]:
    """Check one record against `schema`: ``(normalised, None)`` or ``(None, reason)``.

    Values that already are the plain Python type of their field (a str for a string, a finite float for a
    float, an in-range int for an integer) are taken as they are; everything else goes through the full
    conversion and checks below, which define the rules.
    """
    if not isinstance(record, dict):
        return None, f"record is not an object (mapping of field -> value): got {type(record).__name__} " \
                     f"{_short(record)}"
    _, names, fields = _plan(schema)
    out: dict[str, Any] = {}
    for f, name, fast, bound, nullable in fields:
        v = record.get(name)
        t = type(v)
        if t is fast and (t is not float or math.isfinite(v)) and (not bound or -bound <= v < bound):
            out[name] = v
            continue
        if v is None and nullable:
            out[name] = None
            continue
        v = _py(v)
        if _is_null(v):
            if f.required:
                what = "missing" if name not in record else "null"
                return None, f"field {name!r} ({f.dtype}) is required but {what}: got {_short(record.get(name))}"
            out[name] = None
            continue
        norm, why = _check(f, v)
        if why is not None:
            return None, f"field {name!r}: {why}: got {_short(v)} ({type(v).__name__})"
        out[name] = norm
    return _safe_items(out, ((k, v) for k, v in record.items() if k not in names)), None


def reason_kind(reason: str) -> str:
    """The reason without the offending value, so counts aggregate (``... : got X`` → ``...``)."""
    return reason.rsplit(": got ", 1)[0]


def _short(v: Any, limit: int = 80) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[: limit - 3] + "..."


def to_records(data: Any) -> list:
    """Input of ``append`` as a list: a DataFrame becomes dicts (NaN/NaT → None); a dict is one record."""
    if isinstance(data, dict):
        return [data]
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is a dependency
        pd = None
    if pd is not None and isinstance(data, pd.DataFrame):
        df = data.astype(object).where(data.notna(), None)
        return df.to_dict("records")
    if isinstance(data, (str, bytes, bytearray)) or not hasattr(data, "__iter__"):
        hint = " (parse JSON text first, e.g. json.loads)" if isinstance(data, (str, bytes, bytearray)) else ""
        raise LogError(f"append takes records: a list of dicts, one dict or a DataFrame; got "
                       f"{type(data).__name__} {_short(data)}{hint}")
    return list(data)


@dataclass
class Prepared:
    """One append call, validated and routed: accepted ``(partition, key, value)`` in input order."""

    accepted: list[tuple[int, str | None, dict]] = field(default_factory=list)
    dead: list[dict] = field(default_factory=list)  # values for the DLQ topic
    reasons: dict[str, int] = field(default_factory=dict)


def _keys(records: list, key: str | Sequence[str | None] | None, cfg: TopicConfig) -> list[str | None]:
    if isinstance(key, str):
        return [key] * len(records)
    if isinstance(key, int) and not isinstance(key, bool):   # one int key: keys like the string, as a key_field does
        return [str(key)] * len(records)
    if key is not None and (isinstance(key, (bytes, bytearray)) or not hasattr(key, "__iter__")):
        raise LogError(f"append to {cfg.name!r}: key must be a string, an int, one key per record (a list) or "
                       f"None; got {type(key).__name__} {_short(key)}")
    if key is not None:
        keys = list(key)
        if len(keys) != len(records):
            raise LogError(f"append to {cfg.name!r}: got {len(keys)} keys for {len(records)} records; "
                           "pass one key per record, a single key string, or key=None")
        return [None if k is None else str(k) for k in keys]
    if cfg.key_field:
        # an int field keys as the int the record is stored with: 2.0 (an int column with a gap, in pandas or
        # Parquet) keys as "2", like 2, so both go to the same partition
        as_int = any(f.name == cfg.key_field and f.dtype in _INT_RANGES for f in cfg.schema)
        out = []
        for r in records:
            v = r.get(cfg.key_field) if isinstance(r, dict) else None
            if type(v) is str:     # the usual key: taken as it is
                out.append(v)
                continue
            v = _py(v)
            if as_int and isinstance(v, float) and v.is_integer():
                v = int(v)
            out.append(None if _is_null(v) else str(v))
        return out
    return [None] * len(records)


def prepare_batch(cfg: TopicConfig, data: Any, key: str | Sequence[str | None] | None,
                  rr: "itertools.count[int] | None" = None) -> Prepared:
    """Validate, normalise and route a batch; rejected records become DLQ values with their reason."""
    records = to_records(data)
    keys = _keys(records, key, cfg)
    rr = rr if rr is not None else itertools.count()
    out = Prepared()
    one = cfg.partitions == 1   # every record goes to partition 0: no hash per record
    for rec, k in zip(records, keys):
        norm, reason = validate_record(rec, cfg.schema)
        if reason is not None:
            out.dead.append({"record": json_safe(rec), "reason": reason, "topic": cfg.name})
            kind = reason_kind(reason)
            out.reasons[kind] = out.reasons.get(kind, 0) + 1
            continue
        p = 0 if one else partition_for(k, cfg.partitions) if k is not None else next(rr) % cfg.partitions
        out.accepted.append((p, k, norm))
    return out


def encode_value(value: dict) -> str:
    """The JSON text stored for a value (compact, stable). orjson (about 10x faster: the prediction log
    encodes every prediction) for what it can write exactly; the standard encoder for the rest (integers
    beyond 64 bits, lone surrogates from a broken ``\\ud83d`` JSON escape), so both give the same values back.
    The fallback escapes non-ASCII: a lone surrogate has no UTF-8 form, so unescaped it could not be stored."""
    try:
        return _dumps(value).decode()
    except TypeError:      # orjson.JSONEncodeError: an integer out of its range, a lone surrogate, ...
        return _ENCODE(value)


_dumps = orjson.dumps
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode


def check_topic_name(name: str, kind: str = "topic") -> str:
    """Topic (and consumer group: `kind`) names: letters, digits, ``. _ -``; not starting with ``_`` or ``.``."""
    import re
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", name) or ".." in name:
        example = "'loopstack-stream' or 'scorer.v2'" if kind == "consumer group" else "'events' or 'clicks.v2'"
        raise LogError(f"{kind} name {name!r} is invalid: use letters, digits, '.', '_' and '-', "
                       f"starting with a letter or digit (e.g. {example})")
    return name


def check_new_topic(config: TopicConfig) -> None:
    """Validate a topic config before creating it (name, partition count, retention, schema field names)."""
    from .checks import check_count, check_retention
    check_topic_name(config.name)
    from .base import DLQ_SUFFIX
    if config.name.endswith(DLQ_SUFFIX) and config != dlq_config(config.name[: -len(DLQ_SUFFIX)]):
        raise LogError(f"topic name {config.name!r} is reserved: names ending in {DLQ_SUFFIX!r} are the dead-letter "
                       f"topics loopstack creates itself (1 partition, no schema; {config.name!r} is the one of "
                       f"{config.name[: -len(DLQ_SUFFIX)]!r}). Pick another name, e.g. "
                       f"{config.name[: -len(DLQ_SUFFIX)] + '-dlq'!r}")
    check_count(config.partitions, f"topic {config.name!r}: partitions", numpy_ok=False)
    check_retention(config.retention_ms, f"topic {config.name!r}: retention_ms", "milliseconds")
    check_retention(config.retention_bytes, f"topic {config.name!r}: retention_bytes", "bytes")
    seen: set[str] = set()
    for f in config.schema:
        if not isinstance(f, Field):
            raise LogError(f"topic {config.name!r}: schema entries must be Field(name, dtype), got {f!r}")
        if f.name in seen:
            raise LogError(f"topic {config.name!r}: field {f.name!r} appears twice in the schema; "
                           "a record could never match both, so every record would go to the dead-letter topic")
        seen.add(f.name)


def check_recreate(existing: TopicConfig, config: TopicConfig, exist_ok: bool) -> bool:
    """Validate re-creating an existing topic; True when the stored config must be replaced.

    The partition count can never change (it would break per-key order); schema, retention and
    key_field may evolve.
    """
    if existing.partitions != config.partitions:
        raise LogError(
            f"topic {config.name!r} already exists with {existing.partitions} partition(s); "
            f"re-creating it with {config.partitions} would break per-key order. Use "
            f"partitions={existing.partitions}, or create a new topic (e.g. "
            f"{config.name + '.v2'!r}) and replay into it")
    if not exist_ok:
        raise LogError(f"topic {config.name!r} already exists; pass exist_ok=True to reuse it")
    return existing != config


def dlq_config(topic: str) -> TopicConfig:
    """Config of a topic's dead-letter topic (1 partition, no schema)."""
    from .base import DLQ_SUFFIX
    return TopicConfig(topic + DLQ_SUFFIX, 1)


def iter_chunks(it: Iterable, n: int) -> Iterable[list]:
    """Consecutive lists of at most `n` items."""
    it = iter(it)
    while chunk := list(itertools.islice(it, n)):
        yield chunk
