"""Metadata tables of box 5 (models, versions, aliases, audit log): migration step 3 of meta/db.py.

JSON payloads (params, metrics, signature, profile, gate, evidence) are stored as text so the same
schema works on SQLite and PostgreSQL. ``ls_models.generation`` is the per-model row version: every
change to a model (registration, promotion, alias move, gate, rollback) takes that row's lock by
incrementing it first, so changes to one model are serialized, and a caller that read generation g
can ask for its change to apply only if nothing changed since (compare-and-swap).
"""
from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

registry_metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

models = sa.Table(
    "ls_models", registry_metadata,
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("generation", sa.Integer, nullable=False, default=0),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

model_versions = sa.Table(
    "ls_model_versions", registry_metadata,
    sa.Column("name", sa.String(200), sa.ForeignKey("ls_models.name"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("run_id", sa.String(255)),
    sa.Column("dataset_id", sa.String(255)),
    sa.Column("dataset_hash", sa.String(128)),
    sa.Column("code_version", sa.String(255)),
    sa.Column("feature_versions", sa.Text, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("metrics", sa.Text, nullable=False),
    sa.Column("signature", sa.Text, nullable=False),
    sa.Column("artifact_path", sa.String(1024), nullable=False),
    sa.Column("artifact_uri", sa.String(2048), nullable=False),
    sa.Column("artifact_sha256", sa.String(64), nullable=False),
    sa.Column("artifact_format", sa.String(32), nullable=False),
    sa.Column("profile", sa.Text),
    sa.Column("gate", sa.Text),
    sa.Column("gate_passed", sa.Boolean),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("created_by", sa.String(255), nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

model_aliases = sa.Table(
    "ls_model_aliases", registry_metadata,
    sa.Column("name", sa.String(200), sa.ForeignKey("ls_models.name"), primary_key=True),
    sa.Column("alias", sa.String(64), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
)

model_audit = sa.Table(
    "ls_model_audit", registry_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(200), nullable=False, index=True),
    sa.Column("version", sa.Integer),
    sa.Column("action", sa.String(32), nullable=False),   # register|transition|alias|gate|rollback
    sa.Column("from_state", sa.String(32)),
    sa.Column("to_state", sa.String(32)),
    sa.Column("alias", sa.String(64)),
    sa.Column("override", sa.Boolean, nullable=False, default=False),
    sa.Column("actor", sa.String(255), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, default=""),
    sa.Column("evidence", sa.Text, nullable=False, default="{}"),
    sa.Column("generation", sa.Integer, nullable=False),
    sa.Column("at", TS, nullable=False),
)


def migrate_v3(conn: Connection) -> None:
    """Create the model registry tables."""
    registry_metadata.create_all(conn, checkfirst=True)
