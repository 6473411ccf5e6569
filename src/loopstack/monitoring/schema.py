"""Metadata tables of box 8 (monitor windows, offsets, prediction join index, alerts): a migration step of meta/db.py.

- ``ls_monitor_windows``: the mergeable state of one (model, version, window) as JSON text.
- ``ls_monitor_offsets``: the monitor's own next offsets per (consumer, topic, partition), written in
  the same transaction as the window states, so a crash never counts a record twice or loses one.
- ``ls_monitor_predictions``: per scored prediction its join key, window and score, so labels that
  arrive days later can be added to the right window; ``ls_monitor_labels`` holds labels whose
  prediction has not been read yet.
- ``ls_monitor_alerts``: fired alerts, unique per (model, version, window, rule, feature).
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

monitor_metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

windows = sa.Table(
    "ls_monitor_windows", monitor_metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("start_us", sa.BigInteger, primary_key=True),
    sa.Column("width_s", sa.Integer, primary_key=True),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

offsets = sa.Table(
    "ls_monitor_offsets", monitor_metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("topic", sa.String(255), primary_key=True),
    sa.Column("partition", sa.Integer, primary_key=True),
    sa.Column("next_offset", sa.BigInteger, nullable=False),
)

predictions = sa.Table(
    "ls_monitor_predictions", monitor_metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("start_us", sa.BigInteger, nullable=False),
    sa.Column("width_s", sa.Integer, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("segments", sa.Text, nullable=False, default="[]"),
    sa.Column("labelled", sa.Boolean, nullable=False, default=False),
    sa.Index("ix_monitor_predictions_key", "key"),
)

labels = sa.Table(
    "ls_monitor_labels", monitor_metadata,
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("label", sa.Integer, nullable=False),
    sa.Column("ts", sa.BigInteger, nullable=False),
)

alerts = sa.Table(
    "ls_monitor_alerts", monitor_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("start_us", sa.BigInteger, nullable=False),
    sa.Column("width_s", sa.Integer, nullable=False),
    sa.Column("layer", sa.String(16), nullable=False),
    sa.Column("metric", sa.String(64), nullable=False),
    sa.Column("feature", sa.String(255)),
    sa.Column("value", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("op", sa.String(4), nullable=False),
    sa.Column("severity", sa.String(16), nullable=False),
    sa.Column("message", sa.Text, nullable=False),
    sa.Column("rule_key", sa.Text, nullable=False),
    sa.Column("dedupe", sa.String(64), nullable=False, unique=True),
    sa.Column("delivery", sa.Text),
    sa.Column("created_at", TS, nullable=False),
)


def migrate_monitoring(conn: Connection) -> None:
    """Create the monitoring tables."""
    monitor_metadata.create_all(conn, checkfirst=True)
