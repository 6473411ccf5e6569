"""Declarative feature definitions: entities, event sources, feature views and aggregations.

Definitions are plain data. Each turns into a JSON-able ``spec`` (what the registry stores and
versions) and back, so the offline engine, the online store and the registry all read the same
definition instead of re-implementing it.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Callable, ClassVar, Sequence

from loopstack.errors import DefinitionError
from loopstack.timeutil import parse_duration

DTYPES = ("int8", "int16", "int32", "int64", "float32", "float64", "bool", "string", "timestamp")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FILTER_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(==|!=|<=|>=|<|>)\s*(.+?)\s*$")


def _check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise DefinitionError(
            f"{kind} name {name!r} is invalid: use letters, digits and underscores, not starting with a digit"
        )
    return name


def _spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


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


class Definition:
    """Base of everything `apply` stores: has a kind, a name and a spec; the version hash is the spec's."""

    kind: ClassVar[str] = "definition"
    name: str

    def to_spec(self) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def spec_hash(self) -> str:
        return _spec_hash(self.to_spec())


@dataclass(frozen=True)
class Entity(Definition):
    """A thing features describe (an author, an item); `join_key` is the column that identifies it."""

    kind: ClassVar[str] = "entity"
    name: str
    join_key: str
    dtype: str = "int64"
    description: str = ""

    def __post_init__(self) -> None:
        _check_name("Entity", self.name)
        _check_name("Entity join_key", self.join_key)

    def to_spec(self) -> dict:
        return {"name": self.name, "join_key": self.join_key, "dtype": self.dtype,
                "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict) -> "Entity":
        return cls(spec["name"], spec["join_key"], spec.get("dtype", "int64"), spec.get("description", ""))


@dataclass(frozen=True)
class EventSource(Definition):
    """Where events come from: a log topic (default: the source's name) or a Parquet/CSV batch `path`.

    `timestamp` names the event-time column. Events with equal timestamps are ordered by their log
    offset (topics) or row number (files): the later one wins.
    """

    kind: ClassVar[str] = "source"
    name: str
    timestamp: str
    schema: tuple[Field, ...] = ()
    topic: str | None = None
    path: str | None = None
    partitions: int = 1
    key: str | None = None
    description: str = ""

    def __init__(self, name: str, timestamp: str, schema: Sequence[Field] = (), *, topic: str | None = None,
                 path: str | None = None, partitions: int = 1, key: str | None = None,
                 description: str = "") -> None:
        _check_name("EventSource", name)
        _check_name("EventSource timestamp", timestamp)
        if topic is not None and path is not None:
            raise DefinitionError(f"EventSource {name!r}: give either topic= or path=, not both")
        if path is not None and not str(path).lower().endswith((".parquet", ".csv", "/")) and "*" not in str(path):
            raise DefinitionError(
                f"EventSource {name!r}: path {path!r} must be a .parquet or .csv file, a glob, or a folder"
            )
        if partitions < 1:
            raise DefinitionError(f"EventSource {name!r}: partitions must be >= 1, got {partitions}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "timestamp", timestamp)
        object.__setattr__(self, "schema", tuple(schema))
        object.__setattr__(self, "topic", topic if topic is not None or path is not None else name)
        object.__setattr__(self, "path", path)
        object.__setattr__(self, "partitions", partitions)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "description", description)
        names = [f.name for f in self.schema]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise DefinitionError(f"EventSource {name!r}: schema repeats field(s) {sorted(dup)}")

    @property
    def is_batch(self) -> bool:
        return self.path is not None

    def field(self, name: str) -> Field | None:
        return next((f for f in self.schema if f.name == name), None)

    def to_spec(self) -> dict:
        return {"name": self.name, "timestamp": self.timestamp, "schema": [f.to_spec() for f in self.schema],
                "topic": self.topic, "path": self.path, "partitions": self.partitions, "key": self.key,
                "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict) -> "EventSource":
        return cls(spec["name"], spec["timestamp"], [Field.from_spec(f) for f in spec.get("schema", [])],
                   topic=spec.get("topic"), path=spec.get("path"), partitions=spec.get("partitions", 1),
                   key=spec.get("key"), description=spec.get("description", ""))


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


@dataclass(frozen=True)
class FeatureView(Definition):
    """A group of features of one entity computed from one source; `ttl` bounds plain fields' age."""

    kind: ClassVar[str] = "feature_view"
    name: str
    entity: Entity
    source: EventSource
    features: tuple[Aggregation, ...]
    ttl: str | None = None
    description: str = ""

    def __init__(self, name: str, *, entity: Entity, source: EventSource,
                 features: Sequence[Aggregation | Field], ttl: str | None = None, description: str = "") -> None:
        _check_name("FeatureView", name)
        feats = tuple(Last(f.name, name=f.name) if isinstance(f, Field) else f for f in features)
        if not feats:
            raise DefinitionError(f"FeatureView {name!r} has no features")
        for f in feats:
            if not isinstance(f, Aggregation):
                raise DefinitionError(f"FeatureView {name!r}: {f!r} is not a Field or an aggregation (Count, Sum, ...)")
        names = [f.name for f in feats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise DefinitionError(f"FeatureView {name!r} defines feature(s) {dup} twice; give them distinct name=")
        if ttl is not None and parse_duration(ttl) <= timedelta(0):
            raise DefinitionError(f"FeatureView {name!r}: ttl {ttl!r} must be positive")
        if source.schema:
            known = {f.name for f in source.schema} | {source.timestamp}
            for f in feats:
                for col in filter(None, [f.column, f.filter.column if f.filter else None]):
                    if col not in known:
                        raise DefinitionError(
                            f"FeatureView {name!r}: feature {f.name!r} uses column {col!r}, which source "
                            f"{source.name!r} does not have (it has {sorted(known)})"
                        )
            if entity.join_key not in known:
                raise DefinitionError(
                    f"FeatureView {name!r}: source {source.name!r} has no column {entity.join_key!r} "
                    f"(the join key of entity {entity.name!r})"
                )
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "entity", entity)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "ttl", ttl)
        object.__setattr__(self, "description", description)

    @property
    def ttl_delta(self) -> timedelta | None:
        return parse_duration(self.ttl) if self.ttl else None

    def feature(self, name: str) -> Aggregation:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_spec(self) -> dict:
        return {"name": self.name, "entity": self.entity.name, "source": self.source.name,
                "features": [f.to_spec() for f in self.features], "ttl": self.ttl,
                "description": self.description}

    @classmethod
    def from_spec(cls, spec: dict, entities: dict[str, Entity], sources: dict[str, EventSource]) -> "FeatureView":
        return cls(spec["name"], entity=entities[spec["entity"]], source=sources[spec["source"]],
                   features=[Aggregation.from_spec(f) for f in spec["features"]], ttl=spec.get("ttl"),
                   description=spec.get("description", ""))


@dataclass(frozen=True)
class OnDemandFeature(Definition):
    """A feature computed at request time: `fn(row) -> value`, where row holds request data and `inputs`.

    `inputs` are feature references ("view:feature") and request field names; the function's source
    is part of the spec, so changing the code makes a new version.
    """

    kind: ClassVar[str] = "on_demand"
    name: str
    fn: Callable[[dict], Any]
    inputs: tuple[str, ...] = ()
    dtype: str = "float64"
    description: str = ""

    def __init__(self, name: str, fn: Callable[[dict], Any], *, inputs: Sequence[str] = (), dtype: str = "float64",
                 description: str = "") -> None:
        _check_name("OnDemandFeature", name)
        if dtype not in DTYPES:
            raise DefinitionError(f"OnDemandFeature {name!r}: dtype {dtype!r} not in {', '.join(DTYPES)}")
        if not callable(fn):
            raise DefinitionError(f"OnDemandFeature {name!r}: fn must be callable")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "description", description)

    def to_spec(self) -> dict:
        import inspect
        try:
            code = inspect.getsource(self.fn)
        except (OSError, TypeError):
            code = getattr(self.fn, "__qualname__", repr(self.fn))
        return {"name": self.name, "inputs": list(self.inputs), "dtype": self.dtype, "code": code,
                "function": f"{getattr(self.fn, '__module__', '')}:{getattr(self.fn, '__qualname__', '')}",
                "description": self.description}

    def compute(self, row: dict) -> Any:
        return self.fn(row)
