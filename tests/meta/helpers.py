"""Point a test project at a metadata database (SQLite file or PostgreSQL) through its loopstack.yaml."""
from __future__ import annotations

from pathlib import Path

import yaml


def use_metadata(root: Path, url: str | None) -> None:
    """Write `metadata:` (backend + url) into `root`/loopstack.yaml, keeping its other keys; None: the default.

    Through the file (not env vars), so subprocesses and CLI runs of the test open the same database.
    """
    if url is None:
        return
    root.mkdir(parents=True, exist_ok=True)
    cfg = root / "loopstack.yaml"
    raw = (yaml.safe_load(cfg.read_text()) or {}) if cfg.exists() else {"name": root.name}
    raw["metadata"] = {"backend": "postgresql" if url.startswith("postgresql") else "sqlite", "url": url}
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))
