"""Box 3, the offline engine interface: point-in-time feature retrieval over the Parquet lake.

Engine-neutral on purpose: inputs and outputs are Arrow tables and plain descriptions of where a
source's events live, so DuckDB today and Spark later implement the same thing. No engine types
cross this boundary.

Semantics every engine must give (the reference implementation in tests/ is the judge):
- a feature's value for a row is computed from events with ``ts < row_ts`` (strictly before),
  at microsecond precision, all times UTC;
- plain fields (``Last`` without window): the latest such event; if it is older than the view's
  ttl (``row_ts - ts > ttl``) the value is null; an event exactly ttl old is still valid;
- windowed aggregations: events with ``row_ts - window <= ts < row_ts`` (after the filter);
  empty window → Count/CountDistinct/Sum 0, Mean/Min/Max/Last null; nulls in the column are
  ignored by Sum/Mean/Min/Max/CountDistinct and by Count(column); Last takes the latest event's value;
- among events with the same ts, the one later in ``order_by`` (log offset / row number) wins;
- output rows are the input rows, in input order, duplicates kept.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from loopstack.features.definitions import Aggregation, FeatureView


@dataclass(frozen=True)
class SourceData:
    """Where one source's events are, as files an engine can scan.

    `paths`: Parquet or CSV files/globs. `timestamp`: the event-time column (timestamp µs UTC, or
    anything castable to it). `order_by`: columns that order events with equal timestamps (later
    wins); empty means file order (file name, then row number).
    """

    name: str
    paths: tuple[str, ...]
    timestamp: str
    order_by: tuple[str, ...] = ()
    format: str = "parquet"  # parquet | csv


@dataclass(frozen=True)
class ViewRequest:
    """The features wanted from one view: (feature, output column name) pairs, plus its source data."""

    view: FeatureView
    features: tuple[tuple[Aggregation, str], ...]
    data: SourceData


@dataclass
class RetrievalStats:
    """What the engine did, for progress reporting and benchmarks."""

    rows: int = 0
    seconds: float = 0.0
    per_view_seconds: dict[str, float] = field(default_factory=dict)


class OfflineEngine(ABC):
    """Computes point-in-time correct features for an entity table."""

    name: str = "engine"

    @abstractmethod
    def historical_features(self, entity_table: pa.Table, timestamp_column: str,
                            requests: list[ViewRequest]) -> pa.Table:
        """Return `entity_table` (same rows, same order, same columns) plus one column per requested
        feature. `timestamp_column` holds timezone-aware UTC timestamps (µs)."""

    def last_stats(self) -> RetrievalStats:
        return RetrievalStats()

    def close(self) -> None:
        return None


def check_source_columns(source: str, view: str, needed: Iterable[str], available: Iterable[str],
                         files: str = "its files", hide_internal: bool = False) -> None:
    """RetrievalError naming the columns of `needed` (in its order) a view's source lacks, and what it has
    (`hide_internal`: without the engine's own `__` columns); shared by both engines and the
    materialization readers so the message is the same everywhere."""
    have = set(available)
    missing = [c for c in dict.fromkeys(needed) if c not in have]
    if missing:
        from loopstack.errors import RetrievalError
        raise RetrievalError(f"source {source!r} of feature view {view!r} has no column(s) {missing}; "
                             f"{files} have {sorted(c for c in have if not (hide_internal and c.startswith('__')))}")


def entity_join_key(view: FeatureView, columns: Sequence[str]) -> str:
    """The view's join key, or a RetrievalError if the entity table (`columns`) lacks it."""
    key = view.entity.join_key
    if key not in columns:
        from loopstack.errors import RetrievalError
        raise RetrievalError(f"feature view {view.name!r} joins on {key!r}, which the entity table lacks; "
                             f"it has {list(columns)}")
    return key
