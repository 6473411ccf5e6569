"""Durations ("10m", "7d") and timezone handling shared by every box."""
from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from typing import Any

from loopstack.errors import DefinitionError, RetrievalError

_UNITS = {"us": "microseconds", "ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours",
          "d": "days", "w": "weeks"}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)\s*$")
_ZERO_RE = re.compile(r"^\s*0+(?:\.0*)?\s*$")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "10m", "1h", "7d", "30d", "500ms" (or seconds as a number) into a timedelta."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        unit, value = "s", str(text)
    else:
        m = _DUR_RE.match(str(text))
        if not m and _ZERO_RE.match(str(text)):   # "0" needs no unit (`--label-delay 0`)
            return timedelta(0)
        if not m:
            raise DefinitionError(
                f"duration {text!r} is not understood: write a number and a unit, one of "
                f"{', '.join(_UNITS)} (e.g. \"10m\", \"1h\", \"7d\")"
            )
        value, unit = m.groups()
    try:
        return timedelta(**{_UNITS[unit]: float(value)})
    except (OverflowError, ValueError) as exc:
        raise DefinitionError(f"duration {text!r} is out of range: give a finite duration up to 999999999d") from exc


def to_micros(td: timedelta) -> int:
    """A timedelta as whole microseconds (the precision of every timestamp in loopstack)."""
    return (td.days * 86_400 + td.seconds) * 1_000_000 + td.microseconds


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def now_micros() -> int:
    """Current UTC time in microseconds since the epoch."""
    return to_micros(utcnow() - datetime(1970, 1, 1, tzinfo=timezone.utc))


def ensure_utc(ts: datetime) -> datetime:
    """Aware datetimes are converted to UTC; naive ones are taken to be UTC already."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def to_us(value: Any) -> int:
    """A time as µs since the epoch (UTC): int µs, datetime/date/pandas Timestamp (naive = UTC) or ISO text."""
    if isinstance(value, bool):
        raise RetrievalError(f"time {value!r} is not a time")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise RetrievalError(
                f"time {value!r} is not ISO 8601: write e.g. 2024-05-01, 2024-05-01T12:00:00 or "
                "2024-05-01T12:00:00+02:00 (times without an offset are UTC)") from exc
    if hasattr(value, "to_pydatetime"):
        value = value.to_pydatetime()
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime(value.year, value.month, value.day)
    if isinstance(value, datetime):
        try:
            return to_micros(ensure_utc(value) - _EPOCH)
        except OverflowError:   # e.g. 0001-01-01T00:00:00+05:00: before year 1 in UTC
            raise RetrievalError(f"time {value.isoformat()} is out of range: in UTC it must fall between "
                                 "0001-01-01 and 9999-12-31") from None
    raise RetrievalError(f"time {value!r} ({type(value).__name__}) is not a datetime, ISO string or µs integer")


def us_to_iso(us: int) -> str:
    """µs since the epoch as an ISO 8601 UTC string."""
    return (_EPOCH + timedelta(microseconds=int(us))).isoformat()
