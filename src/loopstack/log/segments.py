"""One partition of the local log on disk: segment files, frames, the sparse index, recovery.

Files in ``<root>/<topic>/<partition>/``:

* ``<base_offset:020d>.seg`` — frames ``[u32 length][u32 crc32(payload)][payload]``; the payload is the
  JSON ``{"ts": <append time µs>, "key": ..., "value": ...}``. Offsets are implicit: the n-th frame
  of a segment has offset ``base + n``.
* ``<base_offset:020d>.idx`` — the sparse index: ``(offset, position, ts)`` as three little-endian
  int64, one for the first frame of the segment and then one at least every ``index_interval`` bytes.
  It is written *after* the data it points to is fsynced, so an entry never points at lost data; it is
  only a hint (recovery re-validates and extends it, and cuts a partial last entry left by a torn write).

Recovery (`refresh(repair=True)`, done under the topic lock before every append and so also on the
first append after a crash) resumes from the last index entry of the active segment, checks every
later frame's length and CRC, and truncates the file at the first torn or corrupt frame.
"""
from __future__ import annotations

import bisect
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Iterator

import orjson

HDR = struct.Struct("<II")
IDX = struct.Struct("<qqq")
MAX_FRAME = 256 * 1024 * 1024
MAX_RECORD_BYTES = MAX_FRAME - 1024   # key + value JSON; the rest of a frame's payload is the ts and braces
_BLOCK = 1 << 20
_dumps = orjson.dumps


def seg_path(d: Path, base: int, ext: str = "seg") -> Path:
    """Path of the segment (or index, ``ext="idx"``) file starting at `base`."""
    return d / f"{base:020d}.{ext}"


def encode_frame(ts: int, key: str | None, value_json: str) -> bytes:
    """One framed record: header (length, crc32) + JSON payload."""
    try:
        key_json = _dumps(key).decode()
    except TypeError:    # orjson.JSONEncodeError (a lone surrogate): the standard encoder escapes it
        key_json = json.dumps(key)
    payload = ('{"ts":%d,"key":%s,"value":%s}' % (ts, key_json, value_json)).encode()
    return HDR.pack(len(payload), zlib.crc32(payload)) + payload


def check_frame_sizes(items_by_p: dict[int, list[tuple[str | None, str]]]) -> tuple[int, int, int] | None:
    """``(partition, index, bytes)`` of the first ``(key, value_json)`` over MAX_RECORD_BYTES, else None. Readers
    stop at a frame over MAX_FRAME (as at a torn one): it and every later record of its segment would be
    unreadable, and then cut off by the next append's recovery."""
    for p, items in items_by_p.items():
        values = [v for _k, v in items]
        keys = [k for k, _v in items if k is not None]
        if max(map(len, values), default=0) * 4 + max(map(len, keys), default=0) * 6 <= MAX_RECORD_BYTES:
            continue                          # the usual case: no text near the limit even at 4 bytes a char
        for n, (k, v) in enumerate(items):
            size = len(v.encode("utf-8", "surrogatepass")) + (0 if k is None else 6 * len(k))
            if size > MAX_RECORD_BYTES:
                return p, n, size
    return None


def payload_ts(payload: bytes) -> int:
    """The append timestamp of a payload without parsing all of it."""
    return int(payload[6:payload.index(b",", 6)])


def frames(path: Path, pos: int, off: int) -> Iterator[tuple[int, int, bytes]]:
    """``(offset, position, payload)`` of each intact frame from `pos` on; stops at a torn/bad frame."""
    with open(path, "rb") as f:
        f.seek(pos)
        buf, i, bpos = b"", 0, pos
        while True:
            if len(buf) - i < HDR.size:
                more = f.read(_BLOCK)
                buf, bpos, i = buf[i:] + more, bpos + i, 0
                if len(buf) < HDR.size:
                    return
            ln, crc = HDR.unpack_from(buf, i)
            if ln == 0 or ln > MAX_FRAME:
                return
            end = i + HDR.size + ln
            if end > len(buf):
                more = f.read(max(_BLOCK, end - len(buf)))
                buf, bpos, i = buf[i:] + more, bpos + i, 0
                end = HDR.size + ln
                if end > len(buf):
                    return
            payload = buf[i + HDR.size:end]
            if zlib.crc32(payload) != crc:
                return
            yield off, bpos + i, payload
            i, off = end, off + 1


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written: a short write (disk full, ...) must fail the append, not ack it."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Partition:
    """In-memory view of one partition directory; the files are the truth, this caches positions."""

    def __init__(self, d: Path, segment_bytes: int, index_interval: int) -> None:
        self.dir = d
        self.segment_bytes = segment_bytes
        self.index_interval = index_interval
        self.bases: list[int] = []
        self.active: int | None = None
        self.pos = 0          # verified end of the active segment
        self.next = 0         # next offset to write
        self.last_ts = 0
        self._idx: dict[int, tuple[int, list[tuple[int, int, int]]]] = {}

    # -- index -------------------------------------------------------------------------------
    def index(self, base: int) -> list[tuple[int, int, int]]:
        """Index entries of a segment (cached; re-read incrementally when the file grew)."""
        p = seg_path(self.dir, base, "idx")
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return []
        cached = self._idx.get(base)
        if cached and cached[0] == size:
            return cached[1]
        start, entries = (cached[0], list(cached[1])) if cached and cached[0] < size else (0, [])
        with open(p, "rb") as f:
            f.seek(start)
            data = f.read(size - start)
        n = len(data) // IDX.size
        for k in range(n):
            e = IDX.unpack_from(data, k * IDX.size)
            if not entries or (e[0] > entries[-1][0] and e[1] > entries[-1][1]):
                entries.append(e)
        self._idx[base] = (start + n * IDX.size, entries)
        return entries

    def _first_ts(self, base: int) -> float:
        """Append ts of a segment's first record (its first index entry); +inf for an empty segment."""
        cached = self._idx.get(base)
        if cached and cached[1]:
            return cached[1][0][2]
        try:
            with open(seg_path(self.dir, base, "idx"), "rb") as f:
                head = f.read(IDX.size)
        except FileNotFoundError:
            return float("inf")
        return IDX.unpack(head)[2] if len(head) == IDX.size else float("inf")

    def _write_index(self, base: int, entries: list[tuple[int, int, int]], fsync: bool) -> None:
        if not entries:
            return
        fd = os.open(seg_path(self.dir, base, "idx"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            _write_all(fd, b"".join(IDX.pack(*e) for e in entries))
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def _cut_partial_index_entry(self, base: int) -> None:
        """Drop the partial last entry a kill -9 mid-write can leave (the kernel stops a write at a page
        boundary, and 4096 % 24 != 0); appending after it would misalign every later entry."""
        p = seg_path(self.dir, base, "idx")
        try:
            extra = p.stat().st_size % IDX.size
        except FileNotFoundError:
            return
        if extra:
            with open(p, "r+b") as f:
                f.truncate(f.seek(0, os.SEEK_END) - extra)

    def _rewrite_index(self, base: int, entries: list[tuple[int, int, int]]) -> None:
        p = seg_path(self.dir, base, "idx")
        tmp = p.with_suffix(".idx.tmp")
        tmp.write_bytes(b"".join(IDX.pack(*e) for e in entries))
        os.replace(tmp, p)
        self._idx.pop(base, None)

    # -- state -------------------------------------------------------------------------------
    def list_bases(self) -> list[int]:
        """Base offsets of the segments on disk, ascending."""
        return sorted(int(n[:-4]) for n in os.listdir(self.dir) if n.endswith(".seg"))

    def tail(self, base: int) -> tuple[int, int, int]:
        """``(end position, next offset, last ts)`` of a segment, scanning from its last index entry."""
        entries = self.index(base)
        path = seg_path(self.dir, base)
        size = path.stat().st_size
        entries = [e for e in entries if e[1] < size]
        off, pos, ts = entries[-1] if entries else (base, 0, 0)
        end = pos
        for off2, pos2, payload in frames(path, pos, off):
            end, off, ts = pos2 + HDR.size + len(payload), off2 + 1, payload_ts(payload)
        return end, off, ts

    def refresh(self, repair: bool = False) -> None:
        """Catch up with the files (appends/rolls/retention by any process); `repair` truncates torn tails."""
        bases = self.list_bases()
        if not bases:
            if not repair:
                self.bases, self.active, self.pos, self.next = [], None, 0, 0
                return
            seg_path(self.dir, 0).touch()
            _fsync_dir(self.dir)
            bases = [0]
        self.bases = bases
        base = bases[-1]
        path = seg_path(self.dir, base)
        if base != self.active:
            self.active = base
            size = path.stat().st_size
            entries = [e for e in self.index(base) if e[1] < size]
            self.pos, self.next, self.last_ts = (entries[-1][1], entries[-1][0], entries[-1][2]) if entries \
                else (0, base, self.last_ts)
            if not entries and len(bases) > 1 and not self.last_ts:
                self.last_ts = self.tail(bases[-2])[2]
        entries = self.index(base)
        last_idx = entries[-1][1] if entries else -1
        add: list[tuple[int, int, int]] = []
        for off, pos, payload in frames(path, self.pos, self.next):
            ts = payload_ts(payload)
            if repair and pos > last_idx and (last_idx < 0 or pos - last_idx >= self.index_interval):
                add.append((off, pos, ts))
                last_idx = pos
            self.pos, self.next, self.last_ts = pos + HDR.size + len(payload), off + 1, ts
        if not repair:
            return
        if path.stat().st_size > self.pos:  # torn or corrupt tail: cut it off
            with open(path, "r+b") as f:
                f.truncate(self.pos)
                os.fsync(f.fileno())
            kept = [e for e in self.index(base) if e[1] < self.pos]
            if len(kept) != len(self.index(base)):
                self._rewrite_index(base, kept)
        self._cut_partial_index_entry(base)
        self._write_index(base, add, fsync=False)

    # -- writing -----------------------------------------------------------------------------
    def append(self, items: list[tuple[str | None, str]], now_us: int) -> tuple[int, int]:
        """Write ``(key, value_json)`` items and fsync (call under the topic lock after refresh(True)).

        Returns ``(first offset, append ts)``.
        """
        ts = max(now_us, self.last_ts)
        first = self.next
        assert self.active is not None
        base, size = self.active, self.pos
        entries = self.index(base)
        last_idx = entries[-1][1] if entries else -1
        buf: list[bytes] = []
        new_idx: list[tuple[int, int, int]] = []
        fd = os.open(seg_path(self.dir, base), os.O_WRONLY | os.O_APPEND)
        try:
            for key, value_json in items:
                fr = encode_frame(ts, key, value_json)
                if size > 0 and size + len(fr) > self.segment_bytes:  # roll to a new segment
                    _write_all(fd, b"".join(buf))
                    os.fsync(fd)
                    os.close(fd)
                    fd = -1
                    self._write_index(base, new_idx, fsync=True)
                    base, size, last_idx, buf, new_idx = self.next, 0, -1, [], []
                    fd = os.open(seg_path(self.dir, base), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                    _fsync_dir(self.dir)
                    self.bases.append(base)
                    self.active = base
                if last_idx < 0 or size - last_idx >= self.index_interval:
                    new_idx.append((self.next, size, ts))
                    last_idx = size
                buf.append(fr)
                size += len(fr)
                self.next += 1
            _write_all(fd, b"".join(buf))
            os.fsync(fd)  # group commit: one fsync for everything this call wrote to the segment
        except BaseException:
            self.active = None  # cached next/pos ran ahead of the files: the next refresh re-reads them
            raise
        finally:
            if fd >= 0:
                os.close(fd)
        self._write_index(base, new_idx, fsync=False)
        self.pos, self.last_ts = size, ts
        return first, ts

    # -- reading -----------------------------------------------------------------------------
    def read(self, offset: int, max_records: int) -> Iterator[tuple[int, bytes]]:
        """``(offset, payload)`` from `offset` (clamped to the first retained one) on."""
        if not self.bases or offset >= self.next:
            self.refresh(False)
        if not self.bases:
            return
        offset = max(offset, self.bases[0])
        i = bisect.bisect_right(self.bases, offset) - 1
        n = 0
        while n < max_records and i < len(self.bases) and offset < self.next:
            base = self.bases[i]
            entries = self.index(base)
            j = bisect.bisect_right(entries, (offset, 1 << 62, 0)) - 1
            first, pos = (entries[j][0], entries[j][1]) if j >= 0 else (base, 0)
            for off, _pos, payload in frames(seg_path(self.dir, base), pos, first):
                if off >= self.next or n >= max_records:
                    return
                if off >= offset:
                    yield off, payload
                    n += 1
            i += 1
            if i < len(self.bases):
                offset = max(offset, self.bases[i])

    def offset_for_time(self, ts: int) -> int:
        """First offset with append ts >= `ts` (the end offset if none)."""
        self.refresh(False)
        lo, hi = 0, len(self.bases)  # binary search: the last segment whose first record is < ts
        while lo < hi:
            mid = (lo + hi) // 2
            if self._first_ts(self.bases[mid]) < ts:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return self.bases[0] if self.bases else 0
        k = lo - 1
        base = self.bases[k]
        entries = self.index(base)
        j = max(0, bisect.bisect_left([e[2] for e in entries], ts) - 1)
        for off, _pos, payload in frames(seg_path(self.dir, base), entries[j][1], entries[j][0]):
            if off >= self.next:
                break
            if payload_ts(payload) >= ts:
                return off
        return self.bases[k + 1] if k + 1 < len(self.bases) else self.next

    # -- retention ---------------------------------------------------------------------------
    def retain(self, cutoff_ts: int | None, max_bytes: int | None) -> int:
        """Delete whole closed segments older than `cutoff_ts` / beyond `max_bytes`; records dropped."""
        self.refresh(True)
        closed = self.bases[:-1]
        sizes = {b: seg_path(self.dir, b).stat().st_size for b in self.bases}
        total = sum(sizes.values())
        drop: list[int] = []
        for b in closed:
            old = cutoff_ts is not None and self.tail(b)[2] < cutoff_ts
            big = max_bytes is not None and total > max_bytes
            if not (old or big):
                break
            drop.append(b)
            total -= sizes[b]
        for b in drop:
            seg_path(self.dir, b).unlink()
            seg_path(self.dir, b, "idx").unlink(missing_ok=True)
            self._idx.pop(b, None)
        if drop:
            _fsync_dir(self.dir)
            self.bases = self.bases[len(drop):]
            return self.bases[0] - drop[0]
        return 0
