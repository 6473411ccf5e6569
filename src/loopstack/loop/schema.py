"""Metadata tables of the closed loop (a migration step of meta/db.py): runs and schedules.

``ls_loop_runs`` holds one row per retrain run: its current step and the JSON state every
committed step produced (dataset id, training run, registered version, sequential-test states),
rewritten after each step so a crashed run resumes where it stopped. ``ls_loop_schedules`` holds
the next time a scheduled retrain is due, per model.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

loop_metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

loop_runs = sa.Table(
    "ls_loop_runs", loop_metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("model", sa.String(200), nullable=False, index=True),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("trigger", sa.String(32), nullable=False),
    sa.Column("state", sa.Text, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

loop_schedules = sa.Table(
    "ls_loop_schedules", loop_metadata,
    sa.Column("model", sa.String(200), primary_key=True),
    sa.Column("every_seconds", sa.Float, nullable=False),
    sa.Column("next_run_at", TS, nullable=False),
    sa.Column("last_run_id", sa.String(64)),
    sa.Column("updated_at", TS, nullable=False),
)


def migrate_loop(conn: Connection) -> None:
    """Create the loop tables (idempotent: checkfirst)."""
    loop_metadata.create_all(conn, checkfirst=True)
