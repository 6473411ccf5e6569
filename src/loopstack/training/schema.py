"""Metadata tables of box 4 (datasets, runs): created by migration step 2 of meta/db.py."""
from __future__ import annotations

from sqlalchemy.engine import Connection


def migrate_v2(conn: Connection) -> None:
    """Create the dataset and run-tracking tables."""
