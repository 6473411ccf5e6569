"""A clustered copy of a source, sorted by (key, event time, tie order): plain-field point-in-time
lookups without sorting the source again on every call.

Why: a point-in-time join of the latest value must bring each key's events into time order. Done
per call (an ASOF join), decoding and sorting the source is most of the cost (docs/benchmarks.md,
B1 floor). A database answers the same question with a clustered index, built once and reused
until the data changes; this is that index for the Parquet lake.

Layout of one index (a folder under the engine's ``index_dir``, named after the source and a
fingerprint of its files' paths, sizes and modification times, its timestamp column, key and
tie order -- any change to the files gives a new fingerprint, so a stale index is never read):

- ``keys.arrow``: the distinct keys, sorted; ``starts.npy``: where each key's events begin
  (``len(keys) + 1`` offsets, int64);
- ``ts.npy``: event times (int64 µs), sorted within each key, ties in ``order_by`` / file order;
- ``rows.npy``: each event's row number in the source's scan order;
- ``c<i>-*.arrow``: one file per value column, rows in index order, added the first time a query
  asks for the column and loaded one at a time (memory stays at one column plus the answer);
- ``manifest.json``: written last; a folder without it is an interrupted build and is rebuilt.

Lookup (``latest_before``): for each row, the key's segment ``[s, e)`` by a hash lookup of the key,
then a vectorized binary search for the last event with ``ts < t`` (strictly before); with a ttl,
a match older than ``t - ttl`` is dropped (an event exactly ttl old still counts).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.feather as feather

from loopstack.errors import RetrievalError
from loopstack.features.offline.base import SourceData

FORMAT_VERSION = 1
_ROW_BITS = 40  # positions are file_index * 2**40 + row number (as in duckdb_sql._ROW_BITS)


def fingerprint(data: SourceData, files: list[str], key: str, extra: str = "") -> str | None:
    """A digest of what the index depends on; None when a file is remote (no cheap change check)."""
    h = hashlib.sha256()
    h.update(json.dumps([FORMAT_VERSION, data.timestamp, list(data.order_by), data.format, key, extra]).encode())
    for f in files:
        if "://" in f:
            return None
        st = os.stat(f)
        h.update(f"{os.path.abspath(f)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:24]


@dataclass
class SortedIndex:
    """An opened index: distinct keys, segment starts and event times in memory; values on demand."""
    path: Path
    keys: pa.Array
    starts: np.ndarray
    ts: np.ndarray
    manifest: dict  # rows, keys, columns (value column -> file name), ...
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @classmethod
    def open(cls, path: Path) -> "SortedIndex":
        manifest = json.loads((path / "manifest.json").read_text())
        keys = feather.read_table(path / "keys.arrow", memory_map=False).column(0).combine_chunks()
        return cls(path, keys, np.load(path / "starts.npy"), np.load(path / "ts.npy"), manifest)

    @property
    def columns(self) -> dict[str, str]:
        return self.manifest["columns"]

    def scan_rows(self) -> np.ndarray:
        """For each indexed event, its row number in the source's scan order (to index new columns)."""
        rows = self.__dict__.get("_rows")
        if rows is None:
            rows = self.__dict__["_rows"] = np.load(self.path / "rows.npy")
        return rows

    def add_column(self, name: str, values: pa.ChunkedArray | pa.Array) -> None:
        """Store one more value column (already in index order); the manifest is replaced atomically."""
        if len(values) != self.rows:
            raise RetrievalError(f"internal error: column {name!r} has {len(values)} rows, index {self.rows}")
        fname = f"c-{uuid.uuid4().hex[:12]}.arrow"
        tmp = self.path / f".{fname}.tmp"
        feather.write_feather(pa.table({"v": values}), tmp, compression="uncompressed", chunksize=max(1, len(values)))
        os.replace(tmp, self.path / fname)
        with self._lock:  # columns may be added from several threads
            self._publish(name, fname)

    def _publish(self, name: str, fname: str) -> None:
        manifest = {**self.manifest, "columns": {**self.columns, name: fname}}
        mtmp = self.path / f".manifest-{uuid.uuid4().hex[:8]}.tmp"
        mtmp.write_text(json.dumps(manifest))
        os.replace(mtmp, self.path / "manifest.json")
        self.manifest = manifest

    @property
    def rows(self) -> int:
        return len(self.ts)

    def codes(self, ent_keys: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
        """Each entity key's position among the index's distinct keys, and whether it has one."""
        try:
            k = ent_keys.cast(self.keys.type) if ent_keys.type != self.keys.type else ent_keys
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise RetrievalError(f"entity keys of type {ent_keys.type} cannot be compared with the source's "
                                 f"keys of type {self.keys.type}: {exc}; cast the entity column") from exc
        if isinstance(k, pa.ChunkedArray):
            k = k.combine_chunks()
        dense = self._dense_table()
        if dense is not None and k.null_count == 0:  # small non-negative integer ids: a direct table
            kn = k.to_numpy()
            inside = (kn >= 0) & (kn < len(dense))
            c = np.where(inside, dense[np.where(inside, kn, 0)], -1)
            return np.maximum(c, 0), c >= 0
        code = pc.index_in(k, value_set=self.keys)
        return (code.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64),
                code.is_valid().to_numpy(zero_copy_only=False))

    def _dense_table(self) -> np.ndarray | None:
        """key -> code for integer keys that are dense non-negative ids (built once per opened index)."""
        if not hasattr(self, "_dense"):
            self._dense = None
            if pa.types.is_integer(self.keys.type) and self.keys.null_count == 0:
                kn = self.keys.to_numpy().astype(np.int64)
                if kn[0] >= 0 and kn[-1] < 8 * len(kn) + 1024:
                    table = np.full(int(kn[-1]) + 1, -1, dtype=np.int64)
                    table[kn] = np.arange(len(kn), dtype=np.int64)
                    self._dense = table
        return self._dense

    def latest_before(self, ent_keys: pa.ChunkedArray | pa.Array, ent_ts: np.ndarray,
                      ent_valid: np.ndarray, ttl_us: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Per entity row: index of the latest event with ts < t (and within the ttl), and a found mask."""
        if not len(self.keys):  # no event has a key and a time
            return np.zeros(len(ent_ts), dtype=np.int64), np.zeros(len(ent_ts), dtype=bool)
        c, has = self.codes(ent_keys)
        has &= ent_valid
        lo = np.where(has, self.starts[c], 0)
        seg_start = lo.copy()
        hi = np.where(has, self.starts[c + 1], 0)
        t = ent_ts
        active = np.flatnonzero(lo < hi)
        ts = self.ts
        while active.size:  # first index in [lo, hi) with ts >= t, for the rows still searching
            a_lo, a_hi = lo[active], hi[active]
            mid = (a_lo + a_hi) >> 1
            before = ts[mid] < t[active]
            a_lo = np.where(before, mid + 1, a_lo)
            a_hi = np.where(before, a_hi, mid)
            lo[active], hi[active] = a_lo, a_hi
            active = active[a_lo < a_hi]
        idx = lo - 1
        found = has & (idx >= seg_start)
        if ttl_us is not None:
            found &= (t - ts[np.where(found, idx, 0)]) <= ttl_us
        return np.where(found, idx, 0), found

    def take(self, column: str, idx: np.ndarray, found: np.ndarray) -> pa.ChunkedArray:
        """The column's values at `idx` (null where not found), read from its own file."""
        col = feather.read_table(self.path / self.columns[column], memory_map=False).column(0)
        col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()  # written as one chunk
        return pa.chunked_array([gather(col, idx, found)])


def gather(col: pa.Array, idx: np.ndarray, found: np.ndarray) -> pa.Array:
    """``col[idx]`` with nulls where not found; numpy gathers for fixed-width columns (3-4x Arrow's take)."""
    if not len(col):
        return pa.nulls(len(idx), col.type)
    try:
        width = col.type.bit_width
    except ValueError:  # variable width (strings, lists)
        width = 0
    if width not in (8, 16, 32, 64) or pa.types.is_boolean(col.type) or pa.types.is_dictionary(col.type):
        return col.take(pa.array(idx, mask=~found))
    validity, data = col.buffers()[:2]
    values = np.frombuffer(data, dtype=np.dtype(f"u{width // 8}"), count=len(col) + col.offset)[col.offset:]
    out = values[idx]
    ok = found
    if col.null_count:
        bitmap = np.frombuffer(validity, dtype=np.uint8)
        at = idx + col.offset
        ok = found & ((bitmap[at >> 3] >> (at & 7).astype(np.uint8)) & 1).astype(bool)
    mask = pa.py_buffer(np.packbits(ok, bitorder="little"))
    return pa.Array.from_buffers(col.type, len(idx), [mask, pa.py_buffer(out)])


class IndexStore:
    """Finds, builds and prunes sorted indexes under one folder (shared by every engine using it)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._open: dict[str, SortedIndex] = {}
        self.built = 0  # how many indexes this store built (stats / tests)

    def folder(self, data: SourceData, digest: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in data.name)[:60]
        return self.root / f"{safe}-{digest}"

    def get(self, data: SourceData, digest: str) -> SortedIndex | None:
        path = self.folder(data, digest)
        idx = self._open.get(str(path))
        if idx is not None:
            return idx
        if not (path / "manifest.json").exists():
            return None
        try:
            idx = SortedIndex.open(path)
        except (OSError, ValueError, KeyError, pa.ArrowInvalid):
            shutil.rmtree(path, ignore_errors=True)  # damaged: rebuilt by the caller
            return None
        self._open = {str(path): idx}  # keep one opened index: bounded memory
        return idx

    def write(self, data: SourceData, digest: str, keys: pa.Array, ts: np.ndarray, rows: np.ndarray,
              meta: dict) -> SortedIndex:
        """Write an index atomically (temp folder, then rename); replaces older ones of the same source."""
        final = self.folder(data, digest)
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            self._write_parts(tmp, keys, ts, rows, meta)
            for old in self.root.glob(final.name.rsplit("-", 1)[0] + "-*"):
                if old != final and old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)  # an older version of the same source's files
            if final.exists():
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self.built += 1
        return self.get(data, digest)  # type: ignore[return-value]

    @staticmethod
    def _write_parts(tmp: Path, keys: pa.Array, ts: np.ndarray, rows: np.ndarray, meta: dict) -> None:
        key_arr = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
        if len(key_arr):
            boundary = pc.not_equal(key_arr.slice(1), key_arr.slice(0, len(key_arr) - 1))
            firsts = np.concatenate([[0], np.flatnonzero(boundary.to_numpy(zero_copy_only=False)) + 1])
        else:
            firsts = np.zeros(0, dtype=np.int64)
        starts = np.concatenate([firsts, [len(key_arr)]]).astype(np.int64)
        feather.write_feather(pa.table({"k": key_arr.take(pa.array(firsts, pa.int64()))}), tmp / "keys.arrow",
                              compression="uncompressed")
        np.save(tmp / "starts.npy", starts)
        np.save(tmp / "ts.npy", np.ascontiguousarray(ts, dtype=np.int64))
        np.save(tmp / "rows.npy", np.ascontiguousarray(rows, dtype=np.int64))
        (tmp / "manifest.json").write_text(json.dumps({**meta, "format": FORMAT_VERSION, "rows": int(len(ts)),
                                                       "keys": int(len(firsts)), "columns": {}}))


def row_numbers(pos: np.ndarray, file_rows: dict[int, int]) -> np.ndarray:
    """Scan-order row numbers of positions ``file_index * 2**40 + row``, given each file's row count."""
    n_files = max(file_rows) + 1 if file_rows else 0
    offsets = np.zeros(n_files + 1, dtype=np.int64)
    for fi, cnt in file_rows.items():
        offsets[fi + 1] = cnt
    offsets = np.cumsum(offsets)
    return offsets[pos >> _ROW_BITS] + (pos & ((1 << _ROW_BITS) - 1))
