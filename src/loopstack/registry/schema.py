"""Metadata tables of box 5 (models, versions, aliases, audit log): migration step 3 of meta/db.py."""
from __future__ import annotations

from sqlalchemy.engine import Connection


def migrate_v3(conn: Connection) -> None:
    """Create the model registry tables."""
