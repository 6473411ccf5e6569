"""Request values as a model input's type: the conversions and checks behind the model server's 422s
(pure functions; `vector.VectorBuilder` applies them)."""
from __future__ import annotations

import functools
import math
import sys
from typing import Any

import numpy as np

from loopstack.serving.errors import ServingError

_FLOAT_MAX = sys.float_info.max
_KEY_BOUND = 1 << 63   # entity keys are stored as 64-bit integers or strings


class InputError(ServingError):
    """The request's input cannot make this model's vector (HTTP 422); the message names what is wrong."""


def _kind(dtype: str) -> str:
    d = dtype.lower()
    if d.startswith(("int", "uint")):
        return "int"
    if d.startswith("float"):
        return "float"
    if d in ("bool", "boolean"):
        return "bool"
    if d in ("object", "string", "str"):
        return "str"
    return "any"


@functools.lru_cache(maxsize=64)
def _int_range(dtype: str) -> tuple[int, int]:
    """The smallest and largest value of an integer dtype (int64's when numpy does not know the name)."""
    try:
        info = np.iinfo(np.dtype(dtype.lower()))
    except TypeError:
        info = np.iinfo(np.int64)
    return int(info.min), int(info.max)


def _fits(value: int, kind: str, dtype: str) -> bool:
    """Whether the integer `value` converts to the model input's type without overflowing."""
    if kind == "float":
        return abs(value) <= _FLOAT_MAX
    if kind == "int":
        lo, hi = _int_range(dtype)
        return lo <= value <= hi
    return True


def coerce(value: Any, dtype: str, what: str) -> Any:
    """`value` as the Python type of `dtype` (None stays None); InputError saying what was expected."""
    if value is None:
        return None
    kind = _kind(dtype)
    if kind in ("int", "float", "bool"):
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            value = value.item()
        if not isinstance(value, (int, float, bool)):
            raise InputError(f"{what} must be a number (the model's input is {dtype}), got {value!r}")
        if isinstance(value, float) and math.isinf(value) or not isinstance(value, bool) and \
                isinstance(value, int) and not _fits(value, kind, dtype):
            got = str(value) if isinstance(value, float) or abs(value) < 10**24 \
                else f"an integer of about 10^{int(value.bit_length() * 0.30103)}"
            raise InputError(f"{what} must be a finite number that {dtype} can hold, got {got}")
        if kind == "int" and isinstance(value, float) and not value.is_integer():
            raise InputError(f"{what} must be a whole number (the model's input is {dtype}), got {value!r}")
        if kind == "bool" and value not in (0, 1):   # bool(0.5) or bool(7) would silently be True
            if isinstance(value, float) and math.isnan(value):
                return None   # a missing value, as for a float input (bool(nan) is True)
            raise InputError(f"{what} must be true or false (or 1 or 0; the model's input is {dtype}), "
                             f"got {value!r}")
        return bool(value) if kind == "bool" else (int(value) if kind == "int" else float(value))
    if kind == "str" and not isinstance(value, str):
        raise InputError(f"{what} must be a string (the model's input is {dtype}), got {value!r}")
    return value


def check_key(value: Any, key: str, where: str = "") -> None:
    """InputError unless `value` can be an entity key: an int of 64 bits or a string. A JSON integer past
    64 bits arrives as an int, or as a float from orjson, which cannot hold it exactly."""
    t = type(value)
    if t is str or (t is int and -_KEY_BOUND <= value < _KEY_BOUND):
        return
    if t is int or (t is float and value.is_integer() and abs(value) >= _KEY_BOUND):
        raise InputError(f"{where}entity key {key!r} is an integer too large for a key (about "
                         f"{float(value):.0e}; keys are 64-bit integers or strings)")
    raise InputError(f"{where}entity key {key!r} must be an integer or a string (as in \"entities\"), got {value!r}")
