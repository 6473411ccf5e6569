"""Durations ("10m", "7d") and timezone handling shared by every box."""
from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

from loopstack.errors import DefinitionError

_UNITS = {"us": "microseconds", "ms": "milliseconds", "s": "seconds", "m": "minutes", "h": "hours",
          "d": "days", "w": "weeks"}
_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)\s*$")


def parse_duration(text: str | int | float | timedelta) -> timedelta:
    """Parse "10m", "1h", "7d", "30d", "500ms" (or seconds as a number) into a timedelta."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return timedelta(seconds=text)
    m = _DUR_RE.match(str(text))
    if not m:
        raise DefinitionError(
            f"duration {text!r} is not understood: write a number and a unit, one of "
            f"{', '.join(_UNITS)} (e.g. \"10m\", \"1h\", \"7d\")"
        )
    value, unit = m.groups()
    return timedelta(**{_UNITS[unit]: float(value)})


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
