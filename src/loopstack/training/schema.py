"""Metadata tables of box 4 (datasets, runs): created by migration step 2 of meta/db.py.

Runs are laid out for bulk writes and SQL search: metrics are append-only rows indexed by
(run, key, step); the latest value of each metric is kept in its own small table so filters and
ordering on ``metrics.x`` are one indexed join per term, never a scan of the history.
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from loopstack.meta.db import metadata

datasets = sa.Table(
    "ls_datasets", metadata,
    sa.Column("dataset_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(80), nullable=False),
    sa.Column("artifact_prefix", sa.String(1024), nullable=False),
    sa.Column("rows_train", sa.BigInteger, nullable=False),
    sa.Column("rows_eval", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),  # epoch ms
    sa.UniqueConstraint("name", "version", name="uq_dataset_version"),
    sa.Index("ix_ls_datasets_hash", "content_hash"),
)

runs = sa.Table(
    "ls_runs", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("start_time", sa.BigInteger, nullable=False),  # epoch ms
    sa.Column("end_time", sa.BigInteger),
    sa.Column("duration_s", sa.Float),
    sa.Column("error", sa.Text),
    sa.Column("git_commit", sa.String(64)),
    sa.Column("git_dirty", sa.Boolean),
    sa.Column("git_root", sa.Text),
    sa.Column("packages", sa.Text, nullable=False),  # JSON {name: version}
    sa.Column("artifact_uri", sa.Text, nullable=False),
    sa.Index("ix_ls_runs_start", "start_time"),
    sa.Index("ix_ls_runs_name", "name"),
)

params = sa.Table(
    "ls_run_params", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("value_num", sa.Float),  # the value as a number when it is one: numeric filters
    sa.Index("ix_ls_run_params_kv", "key", "value_num"),
)

metrics = sa.Table(
    "ls_run_metrics", metadata,
    sa.Column("run_id", sa.String(32), nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float),  # NaN is stored as NULL on SQLite
    sa.Column("timestamp", sa.BigInteger, nullable=False),  # epoch ms
    sa.Index("ix_ls_run_metrics_rks", "run_id", "key", "step"),
)

latest_metrics = sa.Table(
    "ls_run_latest_metrics", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("value", sa.Float),
    sa.Column("timestamp", sa.BigInteger, nullable=False),
    sa.Index("ix_ls_run_latest_kv", "key", "value"),
)

tags = sa.Table(
    "ls_run_tags", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Index("ix_ls_run_tags_kv", "key"),
)

run_datasets = sa.Table(
    "ls_run_datasets", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("dataset_id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("content_hash", sa.String(80), nullable=False),
)

run_artifacts = sa.Table(
    "ls_run_artifacts", metadata,
    sa.Column("run_id", sa.String(32), primary_key=True),
    sa.Column("path", sa.String(1024), primary_key=True),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
)

TABLES = (datasets, runs, params, metrics, latest_metrics, tags, run_datasets, run_artifacts)


def migrate_v2(conn: Connection) -> None:
    """Create the dataset and run-tracking tables."""
    for table in TABLES:
        table.create(conn, checkfirst=True)
