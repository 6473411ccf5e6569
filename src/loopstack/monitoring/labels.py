"""The ``labels`` topic: one record per label, ``{request_id (or the label key), label: 0/1, ts}``.

A label is 0 or 1 (a boolean is read as 0/1). Anything else, e.g. -1 for "negative" or 2 for a
second class, is refused by `append_labels` and skipped (with a warning) by the monitor, never
read as a positive.
"""
from __future__ import annotations

from typing import Any, Iterable

from loopstack.features.definitions import Field
from loopstack.log.base import TopicConfig
from loopstack.monitoring.columns import MonitoringError

LABELS = "labels"
LABEL_SCHEMA = (Field("label", "int64"), Field("ts", "timestamp", required=False))


def labels_topic(partitions: int = 1) -> TopicConfig:
    """The ``labels`` topic: one record per label, ``{request_id (or the label key), label: 0/1, ts}``."""
    return TopicConfig(LABELS, partitions, LABEL_SCHEMA)


def label_value(value: Any) -> int | None:
    """0 or 1 for a label of 0/1 (or a boolean, or 0.0/1.0); None for anything else."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)) and value in (0, 1):
        return int(value)
    return None


def append_labels(event_log: Any, records: Iterable[dict]) -> int:
    """Append labels (``{request_id, label: 0/1 or bool, ts}``) to the ``labels`` topic (created if
    needed); returns how many were accepted (the rest went to ``labels.dlq`` with the reason). A label
    that is a number other than 0/1 is a MonitoringError and nothing is appended."""
    recs = list(records)
    bad = [r for r in recs if isinstance(r, dict) and isinstance(r.get("label"), (int, float))
           and label_value(r["label"]) is None]
    if bad:
        raise MonitoringError(f"{len(bad)} label(s) are not 0 or 1, e.g. {bad[0]!r}: map them to 0 (negative) / "
                              "1 (positive) first; nothing was appended")
    if LABELS not in {t.name for t in event_log.topics()}:
        event_log.create_topic(labels_topic())
    recs = [{**r, "label": int(r["label"])} if isinstance(r.get("label"), bool) else r for r in recs]
    return event_log.append(LABELS, recs).accepted
