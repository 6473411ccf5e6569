"""Checks of the numbers a user hands the event log (partition counts, retention, offsets, batch sizes).

Pure, no I/O; each raises LogError saying what was wrong and what to pass instead. They run once per topic
creation or per call, never per record.
"""
from __future__ import annotations

import operator
from typing import Any

from loopstack.errors import LogError


def as_int(value: Any, numpy_ok: bool = True) -> int | None:
    """`value` as an int if it is an integer (Python, or numpy when `numpy_ok`; never a bool), else None."""
    if isinstance(value, bool) or not (numpy_ok or isinstance(value, int)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_count(value: Any, what: str, minimum: int = 1, numpy_ok: bool = True) -> int:
    """An integer count >= `minimum` (a partition count, a batch size), or LogError naming `what`."""
    n = as_int(value, numpy_ok)
    if n is None or n < minimum:
        raise LogError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return n


def check_retention(value: Any, what: str, unit: str) -> None:
    """A retention limit: None (keep forever) or a whole number > 0 of `unit`."""
    if value is None:
        return
    n = as_int(value, numpy_ok=False)   # stored in the topic's JSON config: a plain int
    if n is None or n <= 0:
        raise LogError(f"{what} must be a whole number of {unit} > 0, or None to keep records forever "
                       f"(Kafka's -1); got {value!r}. A value <= 0 would let retention delete every record")


def check_offset(value: Any, what: str) -> int:
    """An offset: a whole number >= 0."""
    n = as_int(value)
    if n is None or n < 0:
        raise LogError(f"{what}: offsets are whole numbers >= 0, got {value!r}")
    return n
