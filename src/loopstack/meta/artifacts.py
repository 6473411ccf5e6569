"""Artifact store: files (datasets, models, reports) under a local folder or any fsspec URL.

Writes go to a temporary name and are renamed into place, so a reader never sees half a file;
each artifact's content hash is returned so metadata can pin exactly what was stored.
"""
from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import fsspec

from loopstack.errors import LoopstackError


class ArtifactStore:
    """Put and get artifacts by relative path under `root` (a folder or an fsspec URL)."""

    def __init__(self, root: str | Path) -> None:
        self.root = str(root).rstrip("/")
        self.fs, self.base = fsspec.core.url_to_fs(self.root)
        self.fs.makedirs(self.base, exist_ok=True)

    def _full(self, rel: str) -> str:
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise LoopstackError(f"artifact path {rel!r} must be relative and stay inside the store")
        return f"{self.base}/{rel}"

    def put_bytes(self, rel: str, data: bytes) -> str:
        """Store `data` at `rel` atomically; returns its sha256."""
        full = self._full(rel)
        self.fs.makedirs(full.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{full}.tmp-{uuid.uuid4().hex}"
        try:
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
            self.fs.mv(tmp, full)
        except BaseException:
            if self.fs.exists(tmp):   # a failed copy leaves no partial file behind
                self.fs.rm(tmp)
            raise
        return hashlib.sha256(data).hexdigest()

    def put_file(self, rel: str, src: str | Path) -> str:
        """Copy a local file into the store; returns its sha256."""
        return self.put_bytes(rel, Path(src).read_bytes())

    def get_bytes(self, rel: str) -> bytes:
        full = self._full(rel)
        if not self.fs.exists(full):
            raise LoopstackError(f"no artifact {rel!r} in {self.root}")
        with self.fs.open(full, "rb") as f:
            return f.read()

    def delete(self, rel: str) -> None:
        """Remove the artifact (a file, or a folder and everything under it) at `rel`, if it exists."""
        full = self._full(rel)
        if self.fs.exists(full):
            self.fs.rm(full, recursive=True)

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self._full(rel))

    def list(self, prefix: str = "") -> list[str]:
        """Relative paths of stored artifacts under `prefix`."""
        base = self._full(prefix) if prefix else self.base
        if not self.fs.exists(base):
            return []
        return sorted(p[len(self.base) + 1:] for p in self.fs.find(base) if ".tmp-" not in p)
