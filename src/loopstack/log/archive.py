"""Archive a topic into the Parquet lake that the offline engine reads (incremental, idempotent).

Layout::

    <lake_dir>/<topic>/date=YYYY-MM-DD/hour=HH/part-<partition>-<startoffset>.parquet
    <lake_dir>/<topic>/_archive_state.json      {"next": {"<partition>": next offset to archive}}

Columns: the topic schema's fields with Arrow types (int8..int64, float32/64, bool, string,
timestamp → ``timestamp[us, tz=UTC]``; a schema-less topic gets inferred types), plus
``_partition`` (int32), ``_offset`` (int64) and ``_append_ts`` (timestamp[us, UTC]). Fields that are
not in the schema are not archived. Rows are bucketed by the event-time field when given (falling
back to the append time when it is null), else by append time.

Work goes in chunks of ``chunk_rows`` offsets per partition. Chunk boundaries are counted from the
state's offset and a file is named after the first offset of its (date, hour) bucket in its chunk,
so re-running after a crash between the files and the state rewrites the very same files: no
duplicates. The state is written (atomically) after each chunk's files.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loopstack.errors import LogError
from loopstack.features.definitions import Field

from .base import EventLog, Record

META_COLUMNS = ("_partition", "_offset", "_append_ts")
STATE_FILE = "_archive_state.json"
_TS = pa.timestamp("us", tz="UTC")
ARROW_TYPES = {"int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
               "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
               "timestamp": _TS}


@dataclass
class ArchiveResult:
    """What one `archive_topic` run wrote."""

    rows: int = 0
    files: int = 0
    paths: list[Path] = field(default_factory=list)
    next_offsets: dict[int, int] = field(default_factory=dict)


def arrow_schema(schema: tuple[Field, ...]) -> pa.Schema:
    """The Arrow schema of an archived topic with a declared schema (fields + meta columns)."""
    cols = [pa.field(f.name, ARROW_TYPES[f.dtype]) for f in schema]
    return pa.schema(cols + [pa.field("_partition", pa.int32()), pa.field("_offset", pa.int64()),
                             pa.field("_append_ts", _TS)])


def _parse_ts(v: object) -> datetime | None:
    if v is None:
        return None
    if isinstance(v, str):
        return datetime.fromisoformat(v)
    raise ValueError(v)


def _text_safe(v: object) -> object:
    """`v` with each lone surrogate (a broken JSON escape the log keeps as given) written as its escape text,
    e.g. "\\ud83d": Parquet text is UTF-8, which has no form for it."""
    if isinstance(v, str):
        return v.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(v, dict):
        return {_text_safe(k): _text_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_text_safe(x) for x in v]
    return v


def _array(vals: list, dtype: pa.DataType | None = None) -> pa.Array:
    """`pa.array(vals, dtype)`; values holding lone surrogates are archived as their escape text (`_text_safe`)
    instead of failing the whole archive run."""
    try:
        return pa.array(vals, dtype)
    except UnicodeEncodeError:
        return pa.array([_text_safe(v) for v in vals], dtype)


def _table(recs: list[Record], schema: tuple[Field, ...], partition: int) -> pa.Table:
    meta = {"_partition": pa.array([partition] * len(recs), pa.int32()),
            "_offset": pa.array([r.offset for r in recs], pa.int64()),
            "_append_ts": pa.array([r.timestamp for r in recs], pa.int64()).cast(_TS)}
    if schema:
        cols = {}
        for f in schema:
            vals = [r.value.get(f.name) for r in recs]
            if f.dtype == "timestamp":
                vals = [_parse_ts(v) for v in vals]
            cols[f.name] = _array(vals, ARROW_TYPES[f.dtype])
        return pa.table({**cols, **meta}, schema=arrow_schema(schema))
    names: dict[str, None] = {}
    for r in recs:
        names.update(dict.fromkeys(k for k in r.value if k not in META_COLUMNS))
    cols = {}
    for name in names:  # infer each column; a column of mixed types is kept as JSON text
        vals = [r.value.get(name) for r in recs]
        try:
            cols[name] = _array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            cols[name] = pa.array([None if v is None else json.dumps(v) for v in vals], pa.string())
    return pa.table({**cols, **meta})


def _bucket_times(recs: list[Record], timestamp_field: str | None) -> np.ndarray:
    us = np.array([r.timestamp for r in recs], dtype=np.int64)
    if timestamp_field:
        for i, r in enumerate(recs):
            v = r.value.get(timestamp_field)
            if isinstance(v, str):
                try:
                    dt = datetime.fromisoformat(v)
                except ValueError:
                    continue
                dt = dt.replace(tzinfo=timezone.utc) if dt.tzinfo is None else dt
                us[i] = int(dt.timestamp()) * 1_000_000 + dt.microsecond
    return us


def _load_state(tdir: Path) -> dict[int, int]:
    try:
        return {int(p): int(o) for p, o in json.loads((tdir / STATE_FILE).read_text())["next"].items()}
    except FileNotFoundError:
        return {}


def _save_state(tdir: Path, nxt: dict[int, int]) -> None:
    from .local import atomic_write_json
    atomic_write_json(tdir / STATE_FILE, {"next": {str(p): o for p, o in sorted(nxt.items())}})


def _write(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def archive_topic(log: EventLog, topic: str, lake_dir: Path | str, timestamp_field: str | None = None,
                  chunk_rows: int = 100_000) -> ArchiveResult:
    """Copy records not archived yet into ``<lake_dir>/<topic>/date=.../hour=.../part-<p>-<off>.parquet``."""
    from .checks import check_count
    check_count(chunk_rows, f"archive of {topic!r}: chunk_rows")   # 0 or less never advanced: an endless loop
    cfg = log.topic(topic)
    if timestamp_field and cfg.schema and not any(f.name == timestamp_field for f in cfg.schema):
        raise LogError(f"archive of {topic!r}: timestamp_field {timestamp_field!r} is not in the topic schema "
                       f"({', '.join(f.name for f in cfg.schema)}); pass one of those or None for append time")
    tdir = Path(lake_dir) / topic
    tdir.mkdir(parents=True, exist_ok=True)
    state = _load_state(tdir)
    starts, ends = log.start_offsets(topic), log.end_offsets(topic)
    res = ArchiveResult(next_offsets=dict(state))
    for p in sorted(ends):
        off = max(state.get(p, 0), starts[p])
        while off < ends[p]:
            chunk_end = min(off + chunk_rows, ends[p])
            recs: list[Record] = []
            cur = off
            while cur < chunk_end:
                got = log.read(topic, p, cur, min(chunk_end - cur, 20_000))
                got = [r for r in got if r.offset < chunk_end]
                if not got:
                    break
                recs.extend(got)
                cur = got[-1].offset + 1
            if recs:
                us = _bucket_times(recs, timestamp_field)
                hours = us // 3_600_000_000
                table = _table(recs, cfg.schema, p)
                for h in np.unique(hours):
                    idx = np.nonzero(hours == h)[0]
                    dt = datetime.fromtimestamp(int(h) * 3600, timezone.utc)
                    path = (tdir / f"date={dt:%Y-%m-%d}" / f"hour={dt:%H}"
                            / f"part-{p}-{recs[int(idx[0])].offset}.parquet")
                    _write(table.take(pa.array(idx)), path)
                    res.files += 1
                    res.paths.append(path)
                res.rows += len(recs)
            off = chunk_end
            state[p] = off
            _save_state(tdir, state)  # after the files: a crash before this line just redoes the chunk
        if state.get(p) != off:  # nothing to copy (or a retention gap): still record where we are
            state[p] = off
            _save_state(tdir, state)
        res.next_offsets[p] = off
    return res


def read_archive(lake_dir: Path | str, topic: str) -> pa.Table:
    """Every archived row of a topic as one Arrow table (for tests and small topics)."""
    import pyarrow.dataset as ds
    tdir = Path(lake_dir) / topic
    files = sorted(str(f) for f in tdir.rglob("*.parquet"))
    if not files:
        return pa.table({})
    return ds.dataset(files, format="parquet").to_table()
