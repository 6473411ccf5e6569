"""The online feature service: applies events to an OnlineStore and reads features from it.

CONTRACT (stub written by the lead; implementation in progress). Everything that writes to the
online store (batch materialization, streaming) goes through `OnlineFeatures.apply_events`;
everything that reads (in-process API, HTTP feature server, parity check) goes through
`OnlineFeatures.get_online_features`. The feature math is in the pure core `online/state.py`.

Semantics are the offline engine's (see offline/base.py) evaluated as of `as_of` (default: now):
strictly-before, ttl on plain fields, windows ``[as_of - w, as_of)``, ties by `Event.order`.
Reads are exact for any ``as_of >= watermark - allowed_lateness`` of the view (older tiles may have
been evicted; plain fields are always exact for as_of after the entity's latest event).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Mapping, Sequence

from loopstack.features.definitions import FeatureView
from loopstack.features.online.base import OnlineStore


@dataclass(frozen=True)
class Event:
    """One source event, normalised for the online path.

    `key`: the entity's join-key value as given (int or str); `ts`: event time, µs since the epoch
    UTC; `order`: tie-break among equal `ts` (higher wins) — for log topics
    ``(append_ts_us, partition, offset)``, for files ``(file_index, row_number)``: the same order the
    offline engine uses; `values`: the source columns.
    """

    key: Any
    ts: int
    order: tuple[int, ...]
    values: Mapping[str, Any]


@dataclass
class ApplyStats:
    """What one `apply_events` call did."""

    applied: int = 0          # events that changed state
    too_late: list[Event] = field(default_factory=list)  # beyond allowed lateness: the caller side-outputs them
    watermark: int | None = None  # max event ts seen for the view minus allowed lateness (µs)


@dataclass
class OnlineResponse:
    """Rows of features in request order, with per-value event timestamps and per-row found flags."""

    features: list[str]                       # output column names, in order
    rows: list[dict[str, Any]]                # entity columns + feature values (None when unknown)
    event_timestamps: list[dict[str, int | None]]  # per row: feature -> event ts (µs) of its newest input
    found: list[bool]                         # False when the entity has no state in any requested view


class OnlineFeatures:
    """Applies events to and reads features from one OnlineStore, for the given views."""

    def __init__(self, store: OnlineStore, views: Mapping[str, FeatureView],
                 allowed_lateness: Mapping[str, timedelta] | None = None) -> None:
        self.store = store
        self.views = dict(views)
        self.allowed_lateness = dict(allowed_lateness or {})

    def apply_events(self, view: str, events: Sequence[Event], progress: Mapping[str, str] | None = None,
                     ) -> ApplyStats:
        """Apply events of one view and write the new state atomically with `progress` marks.

        Marks are how callers make delivery idempotent: a streaming consumer passes
        ``{"stream:<view>:<topic>:<partition>": "<last offset in this batch>"}``, and after a crash
        reads them back with ``store.progress(...)`` and skips events at or before them (the marks
        and the state they describe are written in one transaction, so they never disagree).
        Events older than the view's retention horizon (watermark - allowed lateness - longest
        window) cannot change any read the store serves: they still update plain fields if newer,
        and are returned in `too_late` for the caller to side-output.
        """
        raise NotImplementedError

    def get_online_features(self, features: Sequence[str], entity_rows: Sequence[Mapping[str, Any]],
                            as_of: int | None = None, full_feature_names: bool = False) -> OnlineResponse:
        """Features ("view:feature") for each entity row, as of `as_of` µs (default now).

        Unknown features raise FeatureReferenceError naming them (with close matches); unknown
        entities give None values and ``found=False``.
        """
        raise NotImplementedError

    def freshness(self) -> dict[str, dict[str, Any]]:
        """Per view: newest applied event ts, watermark, and lag = now - newest (seconds)."""
        raise NotImplementedError
