"""Typed fields, filters and the aggregation functions a feature view is made of.

Pure data with a JSON spec each; the offline engine and the online store both evaluate these same
definitions, so their semantics (documented on `Aggregation`) are stated once, here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from loopstack.errors import DefinitionError
from loopstack.timeutil import parse_duration

if TYPE_CHECKING:
    from loopstack.features.definitions import EventSource

DTYPES = ("int8", "int16", "int32", "int64", "float32", "float64", "bool", "string", "timestamp")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} is invalid: use letters, digits and underscores, not starting with a digit"
        )
    return name



@dataclass(frozen=True)
class Field:
    """A named, typed column of an event source (or a plain feature: latest value as of t)."""

    name: str
    dtype: str
    required: bool = True

    def __post_init__(self) -> None:
        _check_name("Field", self.name)
        if self.dtype not in DTYPES:
            raise DefinitionError(
                f"Field {self.name!r} has dtype {self.dtype!r}; allowed dtypes are {', '.join(DTYPES)}"
            )

    def to_spec(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "required": self.required}

    @classmethod
    def from_spec(cls, spec: dict) -> "Field":
        return cls(spec["name"], spec["dtype"], spec.get("required", True))


@dataclass(frozen=True)
class Filter:
    """`column op literal`, e.g. ``"is_spam == 1"`` or ``"label == 'spam'"``; applied before aggregating."""

    column: str
    op: str
    value: Any

    @classmethod
    def parse(cls, text: "str | Filter | None") -> "Filter | None":
        if text is None or isinstance(text, Filter):
            return text
        m = _FILTER_RE.match(str(text))
        if not m:
            raise DefinitionError(
                f"filter {text!r} is not understood: write `column op value` with op one of "
                "==, !=, <, <=, >, >= (e.g. \"is_spam == 1\" or \"label == 'spam'\")"
            )
        col, op, raw = m.groups()
        if raw[:1] in "'\"" and raw[-1:] == raw[:1] and len(raw) >= 2:
            value: Any = raw[1:-1]
        elif raw.lower() in ("true", "false"):
            value = raw.lower() == "true"
        else:
            try:
                value = int(raw)
            except ValueError:
                try:
                    value = float(raw)
                except ValueError as exc:
                    raise DefinitionError(
                        f"filter {text!r}: value {raw!r} is neither a number, true/false nor a quoted string"
                    ) from exc
        return cls(col, op, value)

    def matches(self, v: Any) -> bool:
        """Reference semantics (SQL-like): a null never matches."""
        if v is None:
            return False
        try:
            return {"==": v == self.value, "!=": v != self.value, "<": v < self.value,
                    "<=": v <= self.value, ">": v > self.value, ">=": v >= self.value}[self.op]
        except TypeError:
            return False

    def to_spec(self) -> dict:
        return {"column": self.column, "op": self.op, "value": self.value}


@dataclass(frozen=True)
class Aggregation:
    """One feature of a view: `function` over `column` (None for Count), optionally over a `window`.

    Without a window, ``Last(col)`` is a plain field: the latest value strictly before t, subject to
    the view's ttl. With a window, the aggregate covers events with ``t - window <= ts < t``.
    Empty windows: Count and CountDistinct give 0, Sum gives 0, Mean/Min/Max/Last give null.
    """

    function: ClassVar[str] = ""
    column: str | None = None
    window: str | None = None
    name: str | None = None
    filter: Filter | None = None

    def __init__(self, column: str | None = None, *, window: str | None = None, name: str | None = None,
                 filter: "str | Filter | None" = None) -> None:
        if self.function != "count" and column is None:
            raise DefinitionError(f"{type(self).__name__}() needs a column, e.g. {type(self).__name__}(\"amount\")")
        if column is not None:
            _check_name(f"{type(self).__name__} column", column)
        if window is not None:
            if parse_duration(window) <= timedelta(0):
                raise DefinitionError(f"window {window!r} must be positive")
        elif self.function not in ("last",):
            raise DefinitionError(
                f"{type(self).__name__}({column or ''}) needs a window, e.g. window=\"7d\"; only Last works without one"
            )
        object.__setattr__(self, "column", column)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "filter", Filter.parse(filter))
        object.__setattr__(self, "name", _check_name("feature", name or self._default_name()))

    def _default_name(self) -> str:
        parts = [self.function] + ([self.column] if self.column else []) + ([self.window] if self.window else [])
        return "_".join(parts)

    @property
    def window_delta(self) -> timedelta | None:
        return parse_duration(self.window) if self.window else None

    @property
    def is_plain(self) -> bool:
        return self.window is None

    def output_dtype(self, source: EventSource | None) -> str:
        if self.function in ("count", "count_distinct"):
            return "int64"
        if self.function == "mean":
            return "float64"
        col_type = source.field(self.column).dtype if source and source.field(self.column) else "float64"
        if self.function == "sum":
            return "int64" if col_type.startswith(("int", "bool")) else "float64"
        return col_type

    def to_spec(self) -> dict:
        return {"function": self.function, "column": self.column, "window": self.window, "name": self.name,
                "filter": self.filter.to_spec() if self.filter else None}

    @staticmethod
    def from_spec(spec: dict) -> "Aggregation":
        cls = AGGREGATIONS[spec["function"]]
        f = spec.get("filter")
        return cls(spec.get("column"), window=spec.get("window"), name=spec.get("name"),
                   filter=Filter(f["column"], f["op"], f["value"]) if f else None)


class Count(Aggregation):
    """Number of events in the window (of non-null `column` values if a column is given)."""
    function = "count"


class Sum(Aggregation):
    """Sum of `column` over the window (0 when empty)."""
    function = "sum"


class Mean(Aggregation):
    """Mean of `column` over the window (null when empty)."""
    function = "mean"


class Min(Aggregation):
    """Minimum of `column` over the window (null when empty)."""
    function = "min"


class Max(Aggregation):
    """Maximum of `column` over the window (null when empty)."""
    function = "max"


class Last(Aggregation):
    """Latest value of `column`: a plain field without a window, the latest in the window with one."""
    function = "last"


class CountDistinct(Aggregation):
    """Number of distinct non-null values of `column` in the window."""
    function = "count_distinct"


AGGREGATIONS: dict[str, type[Aggregation]] = {
    c.function: c for c in (Count, Sum, Mean, Min, Max, Last, CountDistinct)
}
