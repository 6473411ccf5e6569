"""Declarative feature definitions: entities, event sources, feature views, on-demand features.

Definitions are plain data. Each turns into a JSON-able ``spec`` (what the registry stores and
versions) and back, so the offline engine, the online store and the registry all read the same
definition instead of re-implementing it. Fields and aggregations live in `aggregations.py`.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, ClassVar, Sequence

from loopstack.errors import DefinitionError
from loopstack.features.aggregations import (AGGREGATIONS, DTYPES, Aggregation, Count, CountDistinct, Field,
                                             Filter, Last, Max, Mean, Min, Sum, _check_name)
from loopstack.timeutil import parse_duration

__all__ = ["AGGREGATIONS", "DTYPES", "Aggregation", "Count", "CountDistinct", "Definition", "Entity",
           "EventSource", "FeatureView", "Field", "Filter", "Last", "Max", "Mean", "Min", "OnDemandFeature", "Sum"]


_NUMERIC_ONLY = ("sum", "mean")  # aggregations that only make sense over numbers (and bools)
KEY_DTYPES = ("int8", "int16", "int32", "int64", "string")  # what the stores and engines key entities by


def _spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]



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
        if self.dtype not in KEY_DTYPES:   # "str"/"int" were kept and keyed entities inconsistently online
            raise DefinitionError(f"Entity {self.name!r}: dtype {self.dtype!r} is not a join-key type; use one of "
                                  f"{', '.join(KEY_DTYPES)}")

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
class FeatureView(Definition):
    """A group of features of one entity computed from one source; `ttl` bounds plain fields' age."""

    kind: ClassVar[str] = "feature_view"
    name: str
    entity: Entity
    source: EventSource
    features: tuple[Aggregation, ...]
    ttl: str | None = None
    description: str = ""
    allowed_lateness: str | None = None

    def __init__(self, name: str, *, entity: Entity, source: EventSource,
                 features: Sequence[Aggregation | Field], ttl: str | None = None, description: str = "",
                 allowed_lateness: str | None = None) -> None:
        _check_name("FeatureView", name)
        if not isinstance(entity, Entity):
            raise DefinitionError(f"FeatureView {name!r}: entity= must be an Entity object (e.g. entity=author), "
                                  f"got {entity!r}")
        if not isinstance(source, EventSource):
            raise DefinitionError(f"FeatureView {name!r}: source= must be an EventSource object (e.g. "
                                  f"source=comments), got {source!r}")
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
        if allowed_lateness is not None and parse_duration(allowed_lateness) < timedelta(0):
            raise DefinitionError(f"FeatureView {name!r}: allowed_lateness {allowed_lateness!r} must not be negative")
        if source.schema:
            known = {f.name for f in source.schema} | {source.timestamp}
            for f in feats:
                for col in filter(None, [f.column, f.filter.column if f.filter else None]):
                    if col not in known:
                        raise DefinitionError(
                            f"FeatureView {name!r}: feature {f.name!r} uses column {col!r}, which source "
                            f"{source.name!r} does not have (it has {sorted(known)})"
                        )
            for f in feats:
                dtype = source.field(f.column).dtype if f.column and source.field(f.column) else None
                if f.function in _NUMERIC_ONLY and dtype in ("string", "timestamp"):
                    raise DefinitionError(
                        f"FeatureView {name!r}: feature {f.name!r} is {type(f).__name__}({f.column!r}), but "
                        f"{f.column!r} is a {dtype} column; {type(f).__name__} needs a number or bool column "
                        "(use Count, CountDistinct, Min, Max or Last for other types)"
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
        object.__setattr__(self, "allowed_lateness", allowed_lateness)

    @property
    def lateness_delta(self) -> timedelta:
        """How late (behind the watermark) an event may arrive and still be applied online (default 0)."""
        return parse_duration(self.allowed_lateness) if self.allowed_lateness else timedelta(0)

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
                "description": self.description, "allowed_lateness": self.allowed_lateness}

    @classmethod
    def from_spec(cls, spec: dict, entities: dict[str, Entity], sources: dict[str, EventSource]) -> "FeatureView":
        return cls(spec["name"], entity=entities[spec["entity"]], source=sources[spec["source"]],
                   features=[Aggregation.from_spec(f) for f in spec["features"]], ttl=spec.get("ttl"),
                   description=spec.get("description", ""), allowed_lateness=spec.get("allowed_lateness"))


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
                "function": getattr(self.fn, "__qualname__", ""),  # not the module: it differs per import
                "description": self.description}

    def compute(self, row: dict) -> Any:
        return self.fn(row)
