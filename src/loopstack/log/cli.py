"""`loopstack log ...`: ingest files, tail topics, list topics."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from loopstack.errors import LogError, LoopstackError

from .base import DLQ_SUFFIX, EventLog

app = typer.Typer(help="Box 1, the event log: ingest files into topics, tail them, list them.",
                  no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)   # errors: `log tail` prints JSON lines on stdout for pipes

ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (with loopstack.yaml).")


def _open_log(project_dir: str) -> EventLog:
    from loopstack.project import Project
    return Project(project_dir).log


def _fail(exc: Exception) -> None:
    """A user error: one line on stderr and exit 2, as every other loopstack command."""
    err_console.print(f"[red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def ingest(file: Path = typer.Argument(..., help="A .jsonl, .csv or .parquet file."),
           topic: str = typer.Option(..., "--topic", "-t", help="Topic to append to."),
           chunk_size: int = typer.Option(10000, help="Records per append."),
           progress: bool = typer.Option(True, help="Show a progress bar."),
           project: str = ProjectOpt) -> None:
    """Append every row of FILE to a topic; rows the schema rejects go to <topic>.dlq."""
    from .ingest import ingest_file
    try:
        res = ingest_file(_open_log(project), file, topic, chunk_size=chunk_size, progress=progress)
    except LoopstackError as exc:
        _fail(exc)
        return
    console.print(f"[green]{res.accepted}[/] accepted, [yellow]{res.rejected}[/] rejected "
                  f"(rejected rows are in {topic}{DLQ_SUFFIX})")
    if res.reasons:
        t = Table(title="top rejection reasons")
        t.add_column("count", justify="right")
        t.add_column("reason")
        for reason, n in sorted(res.reasons.items(), key=lambda kv: -kv[1])[:10]:
            t.add_row(str(n), reason)
        console.print(t)
    if res.rejected and not res.accepted:   # a script must be able to tell that nothing went in
        err_console.print(f"[red]error:[/] no row of {file} was accepted into {topic!r}: fix the file (or the topic's "
                      "schema) by the reasons above, then ingest it again")
        raise typer.Exit(1)


@app.command()
def tail(topic: str = typer.Argument(..., help="Topic name (e.g. events or events.dlq)."),
         n: int = typer.Option(10, "--n", "-n", help="How many of the last records per partition."),
         partition: int | None = typer.Option(None, "--partition", help="Only this partition."),
         follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new records (Ctrl-C stops)."),
         project: str = ProjectOpt) -> None:
    """Print the last N records of a topic as JSON lines (partition, offset, ts, key, value)."""
    try:
        if n < 0:
            raise LogError(f"--n {n}: the number of last records to print per partition must be >= 0")
        log = _open_log(project)
        cfg = log.topic(topic)
        parts = [partition] if partition is not None else list(range(cfg.partitions))
        if partition is not None:
            log._check_partition(topic, partition)  # type: ignore[attr-defined]
        ends = log.end_offsets(topic)
        starts = log.start_offsets(topic)
        pos = {p: max(starts[p], ends[p] - n) for p in parts}
        while True:
            for p in parts:
                while recs := log.read(topic, p, pos[p], 1000):
                    for r in recs:
                        typer.echo(json.dumps({"partition": r.partition, "offset": r.offset, "ts": r.timestamp,
                                               "key": r.key, "value": r.value}))
                    pos[p] = recs[-1].offset + 1
            if not follow:
                break
            time.sleep(0.5)
    except LoopstackError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        pass


@app.command()
def topics(project: str = ProjectOpt) -> None:
    """Table of topics: partitions, end offsets, retained records and dead letters."""
    try:
        log = _open_log(project)
        cfgs = log.topics()
    except LoopstackError as exc:
        _fail(exc)
        return
    names = {c.name for c in cfgs}
    t = Table(title=f"topics ({log!r})")
    for col in ("name", "partitions", "end offsets", "records", "dlq"):
        t.add_column(col, justify="left" if col in ("name", "end offsets") else "right")
    for c in cfgs:
        if c.name.endswith(DLQ_SUFFIX) and c.name[: -len(DLQ_SUFFIX)] in names:
            continue
        ends, starts = log.end_offsets(c.name), log.start_offsets(c.name)
        records = sum(ends[p] - starts[p] for p in ends)
        dlq = c.name + DLQ_SUFFIX
        if dlq in names:
            de, ds = log.end_offsets(dlq), log.start_offsets(dlq)
            dlq_n = str(sum(de[p] - ds[p] for p in de))
        else:
            dlq_n = "-"
        t.add_row(c.name, str(c.partitions), " ".join(f"{p}:{o}" for p, o in sorted(ends.items())),
                  str(records), dlq_n)
    console.print(t)
