"""Box 6, the online store interface: a small, dumb, atomic hash store.

All feature logic (which tile an event goes to, how tiles combine into a window, ttl, ties) lives
in the pure core ``online/state.py``; a backend only stores bytes. That keeps the backends tiny
(SQLite, Redis, later Redis Cluster) and guarantees they behave the same.

Layout (chosen by the core, opaque to backends): one *hash* per (view, entity), e.g.
``"author_stats|42"``, whose *fields* hold the plain-field values (``"latest"``) and one field per
tile (``"t:<tile_start_us>"``). Writes come in batches that are applied atomically together with
*progress marks* (e.g. the last applied log offset per partition), which is what makes streaming
and materialization idempotent: a batch re-applied after a crash is recognised and skipped.
"""
from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterable, Mapping

FORKS = [0]   # forks of this process so far: a backend's per-thread connection is reopened in a forked child
os.register_at_fork(after_in_child=lambda: FORKS.__setitem__(0, FORKS[0] + 1))   # (os.getpid per read: a syscall)


@dataclass
class WriteBatch:
    """One atomic write: field puts, field deletes, whole-hash deletes, and progress marks."""

    puts: dict[str, dict[str, bytes]] = field(default_factory=dict)      # hash -> field -> value
    deletes: dict[str, list[str]] = field(default_factory=dict)          # hash -> fields to drop
    drop: list[str] = field(default_factory=list)                        # hashes to drop entirely
    progress: dict[str, str] = field(default_factory=dict)               # mark name -> value

    def put(self, hash_key: str, field_name: str, value: bytes) -> None:
        self.puts.setdefault(hash_key, {})[field_name] = value

    def delete(self, hash_key: str, field_name: str) -> None:
        self.deletes.setdefault(hash_key, []).append(field_name)

    def __len__(self) -> int:
        return sum(len(v) for v in self.puts.values()) + sum(len(v) for v in self.deletes.values()) + len(self.drop)


class OnlineStore(ABC):
    """Hashes of bytes with atomic batched writes and progress marks. Backends: sqlite, redis."""

    name: str = "online"
    unavailable: tuple[type[Exception], ...] = ()   # errors meaning "cannot be reached or used now", not a bug

    @abstractmethod
    def read(self, hash_keys: Iterable[str], fields: Iterable[str] | None = None) -> dict[str, dict[str, bytes]]:
        """The fields of each hash (all fields if `fields` is None); missing hashes are absent from the result."""

    def lookup(self, hash_keys: Iterable[str]) -> dict[str, dict[str, bytes]]:
        """`read` of whole hashes for a serving read (the online read path); a backend may tune it for
        latency (SQLite memory-maps the file). Same answer as ``read(hash_keys)``."""
        return self.read(hash_keys)

    @abstractmethod
    def write(self, batch: WriteBatch) -> None:
        """Apply the whole batch atomically (all or nothing), progress marks included; durable on return.

        Within a batch, whole-hash drops apply first, then field deletes, then puts, so a batch may
        drop or delete and re-put the same field. A hash left with no fields does not exist.
        """

    @abstractmethod
    def progress(self, prefix: str = "") -> dict[str, str]:
        """Progress marks whose name starts with `prefix`."""

    @abstractmethod
    def scan(self, prefix: str, count: int | None = None) -> Iterable[str]:
        """Hash keys starting with `prefix` (for parity sampling and clean-up); order unspecified."""

    @abstractmethod
    def clear(self, prefix: str = "") -> int:
        """Drop every hash (and progress mark) whose name starts with `prefix`; returns hashes dropped."""

    def close(self) -> None:
        return None


def as_bytes(mapping: Mapping[str, bytes | str]) -> dict[str, bytes]:
    """Normalise field values to bytes (backends may return str)."""
    return {k: v if isinstance(v, bytes) else v.encode() for k, v in mapping.items()}


def check_batch(batch: WriteBatch) -> None:
    """Reject a malformed batch before anything is written (str names, bytes values, str marks)."""
    for h, fields in batch.puts.items():
        if not isinstance(h, str):
            raise TypeError(f"hash key {h!r} must be a str")
        for f, v in fields.items():
            if not isinstance(f, str) or not isinstance(v, (bytes, bytearray, memoryview)):
                raise TypeError(f"field {h!r}/{f!r}: names must be str and values bytes, got {type(v).__name__}")
    for h, names in batch.deletes.items():
        if not isinstance(h, str) or not all(isinstance(f, str) for f in names):
            raise TypeError(f"delete of {h!r}: hash and field names must be str")
    if not all(isinstance(h, str) for h in batch.drop):
        raise TypeError("hashes to drop must be str")
    for k, v in batch.progress.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"progress mark {k!r}: name and value must be str, got {type(v).__name__}")
