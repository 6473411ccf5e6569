"""Load a JSONL, CSV or Parquet file into a topic, in chunks, with a progress bar.

Nothing is dropped: rows that cannot be parsed (bad JSON, a CSV row with more values than the header)
and rows the topic schema rejects all land in ``<topic>.dlq`` with a reason. CSV cells are text, so
they are first coerced to the schema's dtypes (ints, floats, bools such as true/false/yes/no/1/0,
epoch numbers for timestamps); an empty cell is null; a cell that does not coerce is left as text
and the schema check rejects it with a reason naming the field, the type and the value. Columns
of a schema-less topic (or not in the schema) become int, float or text, whichever fits.

The returned AppendResult has the counts and reasons; its ``offsets`` stay empty so memory is
bounded for files of any size.
"""
from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from loopstack.errors import LogError

from .base import DLQ_SUFFIX, AppendResult, EventLog, TopicConfig
from .validate import reason_kind

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
_INT_RE = re.compile(r"^[+-]?\d+$")
_TRUE, _FALSE = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}

Bad = tuple[Any, str]  # (raw row, reason)


def _num(s: str) -> Any:
    if _INT_RE.match(s):
        return int(s)
    try:
        return float(s)
    except ValueError:
        return s


def coerce_cell(dtype: str | None, s: str | None) -> Any:
    """A CSV cell as the schema dtype wants it (unchanged text when it does not coerce)."""
    if s is None or s == "":
        return None
    t = s.strip()
    if dtype is None:
        return _num(t)
    if dtype.startswith("int"):
        if _INT_RE.match(t):
            return int(t)
        try:
            f = float(t)
            return int(f) if f.is_integer() else s
        except ValueError:
            return s
    if dtype.startswith("float"):
        try:
            return float(t)
        except ValueError:
            return s
    if dtype == "bool":
        low = t.lower()
        return True if low in _TRUE else False if low in _FALSE else s
    if dtype == "timestamp":
        n = _num(t)
        return n if not isinstance(n, str) else s
    return s


def _jsonl(path: Path, chunk: int, advance: Callable[[int], None]) -> Iterator[tuple[list, list[Bad]]]:
    recs: list = []
    bad: list[Bad] = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            advance(len(raw))
            line, why = _decode(raw, n)
            line = line.strip()
            if why is not None:   # kept in the DLQ, not altered by a replacement character
                bad.append((line, why))
            elif line:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    bad.append((line, f"line {n} is not valid JSON ({exc.msg}): got {line[:80]!r}"))
                else:
                    if isinstance(rec, dict):
                        recs.append(rec)
                    else:   # the line as it is (NaN would be null in the DLQ), with its line number
                        kind = {list: "an array", str: "a string", type(None): "null"}.get(type(rec), "a number")
                        kind = "a bool" if isinstance(rec, bool) else kind
                        bad.append((line, f"line {n} is {kind}, not a JSON object of field -> value: "
                                          f"got {line[:80]!r}"))
            if len(recs) + len(bad) >= chunk:
                yield recs, bad
                recs, bad = [], []
    if recs or bad:
        yield recs, bad


def _csv(path: Path, cfg: TopicConfig, chunk: int, advance: Callable[[int], None],
         ) -> Iterator[tuple[list, list[Bad]]]:
    dtypes = {f.name: f.dtype for f in cfg.schema}

    broken: dict[int, str] = {}   # physical line -> why it is not UTF-8 (its row goes to the DLQ)

    def lines(f: io.BufferedReader) -> Iterator[str]:
        for n, raw in enumerate(f, 1):
            advance(len(raw))
            text, why = _decode(raw, n)
            if why is not None:
                broken[n] = why
            yield text

    recs: list = []
    bad: list[Bad] = []
    with open(path, "rb") as f:
        reader = csv.DictReader(lines(f))
        if reader.fieldnames is not None and 1 in broken:
            raise LogError(f"cannot ingest {path.name!r}: its header {broken[1]}")
        first = 2   # the first physical line of the next row (line 1 is the header)
        for row in reader:
            why = next((broken[n] for n in range(first, reader.line_num + 1) if n in broken), None)
            first = reader.line_num + 1
            if why is not None:
                bad.append(({k: v for k, v in row.items() if k is not None}, why))
            elif None in row:
                bad.append(({k: v for k, v in row.items() if k is not None} | {"_extra": row[None]},
                            f"line {reader.line_num} has more values than the header: got {row[None]!r}"))
            else:
                recs.append({k: coerce_cell(dtypes.get(k), v) for k, v in row.items()})
            if len(recs) + len(bad) >= chunk:
                yield recs, bad
                recs, bad = [], []
    if recs or bad:
        yield recs, bad


def _decode(raw: bytes, n: int) -> tuple[str, str | None]:
    """Line `n` of a file as text, and why it is not UTF-8 (None if it is; the text then has replacement
    characters, for the DLQ). Line 1 may start with a byte-order mark (Excel, PowerShell)."""
    enc = "utf-8-sig" if n == 1 else "utf-8"
    try:
        return raw.decode(enc), None
    except UnicodeDecodeError as exc:
        return raw.decode(enc, errors="replace"), (
            f"line {n} is not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at position {exc.start}); "
            "save the file as UTF-8 and ingest it again")


def _parquet(path: Path, chunk: int, advance: Callable[[int], None]) -> Iterator[tuple[list, list[Bad]]]:
    import pyarrow.parquet as pq
    pf = pq.ParquetFile(path)
    for batch in pf.iter_batches(batch_size=chunk):
        advance(batch.num_rows)
        yield batch.to_pylist(), []


def ingest_file(log: EventLog, path: Path | str, topic: str, chunk_size: int = 10000,
                progress: bool = True) -> AppendResult:
    """Append every row of a JSONL/CSV/Parquet file to `topic`; bad rows go to the DLQ with a reason."""
    path = Path(path)
    if not path.is_file():
        raise LogError(f"cannot ingest {str(path)!r}: no such file")
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise LogError(f"cannot ingest {path.name!r}: unknown file type {path.suffix!r}; use one of "
                       f"{', '.join(sorted(FORMATS))}")
    if chunk_size < 1:
        raise LogError(f"cannot ingest {path.name!r}: chunk_size must be >= 1, got {chunk_size}")
    cfg = log.topic(topic)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        try:
            total, unit = pq.ParquetFile(path).metadata.num_rows, "rows"
        except (pa.ArrowException, OSError) as exc:
            raise LogError(f"cannot ingest {path.name!r}: it is not a readable Parquet file ({exc}); "
                           "check the file, or rename it to .jsonl/.csv if that is what it holds") from None
    else:
        total, unit = path.stat().st_size, "bytes"
    result = AppendResult()
    with Progress(TextColumn("[bold]ingest[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn(unit), TimeRemainingColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task(f"{path.name} → {topic}", total=total)

        def advance(n: int) -> None:
            bar.advance(task, n)

        chunks = (_jsonl(path, chunk_size, advance) if fmt == "jsonl" else
                  _csv(path, cfg, chunk_size, advance) if fmt == "csv" else _parquet(path, chunk_size, advance))
        for recs, bad in chunks:
            if recs:
                r = log.append(topic, recs)
                r.offsets = []
                result += r
            if bad:
                log.append(topic + DLQ_SUFFIX, [{"record": raw, "reason": why, "topic": topic} for raw, why in bad])
                result.rejected += len(bad)
                for _raw, why in bad:
                    k = reason_kind(why)
                    k = re.sub(r"^line \d+ ", "line ", k)
                    result.reasons[k] = result.reasons.get(k, 0) + 1
            bar.update(task, description=f"{path.name} → {topic}: {result.accepted} accepted, "
                                         f"{result.rejected} rejected")
    return result
