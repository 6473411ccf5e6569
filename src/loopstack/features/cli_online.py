"""CLI for the online path: `loopstack materialize`, `materialize-incremental`, `stream` (on `root_app`)
and `loopstack features parity` (on `app`).

Times are ISO 8601 (``2024-05-01``, ``2024-05-01T12:00:00``, ``2024-05-01T12:00:00+02:00``); a
time without an offset is UTC.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer(no_args_is_help=True)        # mounted on `loopstack features`
root_app = typer.Typer(no_args_is_help=True)   # its commands are mounted at the top level
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")
ViewsOpt = typer.Option(None, "--views", "-v", help="Feature view (repeatable; default: all).")


def _result_table(result) -> Table:  # noqa: ANN001 - MaterializeResult
    from loopstack.timeutil import us_to_iso
    t = Table("view", "interval(s) read", "rows", "applied", "beyond horizon", "chunks", "seconds")
    for name, v in result.views.items():
        spans = ", ".join(f"{us_to_iso(s)} → {us_to_iso(e)}" for s, e in v.spans) or "(already materialized)"
        if v.resumed_chunks:
            spans += f" [resumed after chunk {v.resumed_chunks}]"
        t.add_row(name, spans, f"{v.rows:,}", f"{v.applied:,}", f"{v.beyond_horizon:,}", str(v.chunks),
                  f"{v.seconds:.2f}")
    return t


@root_app.command("materialize")
def materialize_cmd(start: str = typer.Argument(..., help="Start of event time, ISO 8601 (inclusive; naive = UTC)."),
                    end: str = typer.Argument(..., help="End of event time, ISO 8601 (exclusive; naive = UTC)."),
                    views: list[str] = ViewsOpt, project: Path = ProjectOpt,
                    chunk_rows: int = typer.Option(100_000, help="Events per atomic write (a chunk of time, or for "
                                                   "views with windowed features a batch of whole entities).")) -> None:
    """Load events with START <= event time < END from the offline store into the online store.

    Idempotent and resumable: re-running (also after a crash) applies only what was not applied.
    """
    from loopstack.features.materialize import materialize
    from loopstack.project import Project
    p = Project(project)
    res = materialize(p, start, end, views=views or None, progress=True, chunk_rows=chunk_rows)
    console.print(_result_table(res))
    console.print(f"[green]materialized[/] {res.rows:,} rows in {res.seconds:.2f} s "
                  f"({res.rows_per_second:,.0f} rows/s)")


@root_app.command("materialize-incremental")
def materialize_incremental_cmd(end: str = typer.Argument(..., help="End of event time, ISO 8601 (naive = UTC)."),
                                views: list[str] = ViewsOpt, project: Path = ProjectOpt) -> None:
    """Materialize each view from where the last run ended (or its first event) up to END."""
    from loopstack.features.materialize import materialize_incremental
    from loopstack.project import Project
    p = Project(project)
    res = materialize_incremental(p, end, views=views or None, progress=True)
    console.print(_result_table(res))
    console.print(f"[green]materialized[/] {res.rows:,} rows in {res.seconds:.2f} s")


@root_app.command("stream")
def stream_cmd(views: list[str] = ViewsOpt,
               group: str = typer.Option("loopstack-stream", help="Consumer group."),
               project: Path = ProjectOpt,
               start: str = typer.Option("earliest", help="Where views without progress start: earliest|latest."),
               stop_after: float = typer.Option(None, help="Stop after this many seconds (default: run until ^C)."),
               idle_timeout: float = typer.Option(None, help="Stop after this many seconds without events."),
               ) -> None:
    """Consume the views' event topics into the online store (sub-second; at-least-once, idempotent)."""
    from loopstack.features.stream import StreamProcessor
    from loopstack.project import Project
    p = Project(project)
    with StreamProcessor(p, views=views or None, group=group, start=start) as sp:
        console.print(f"streaming {', '.join(sp.views)} (group {group!r}); ^C to stop")
        stats = sp.run(stop_after=stop_after, idle_timeout=idle_timeout)
    t = Table("view", "applied", "duplicates skipped", "late (side topic)", "ignored")
    for v in sp.views:
        t.add_row(v, str(stats.applied.get(v, 0)), str(stats.duplicates.get(v, 0)), str(stats.late.get(v, 0)),
                  str(stats.ignored.get(v, 0)))
    console.print(t)


@app.command("parity")
def parity_cmd(sample: int = typer.Option(200, "--sample", "-n", help="Entities sampled per view."),
               views: list[str] = ViewsOpt, project: Path = ProjectOpt,
               seed: int = typer.Option(0, help="Random seed of the sample."),
               rel_tol: float = typer.Option(1e-9, help="Relative tolerance for floats."),
               abs_tol: float = typer.Option(1e-9, help="Absolute tolerance for floats.")) -> None:
    """Compare offline and online values of every feature; exit 1 on any mismatch (the skew alarm)."""
    from loopstack.features.parity import check_parity
    from loopstack.project import Project
    p = Project(project)
    report = check_parity(p, sample=sample, views=views or None, seed=seed, rel_tol=rel_tol, abs_tol=abs_tol)
    console.print(report.table())
    for view, why in report.skipped.items():
        console.print(f"[yellow]skipped {view}:[/] {why}")
    if not report.ok:
        console.print(f"[red]skew:[/] {report.mismatches} value(s) differ between offline and online")
        raise typer.Exit(1)
    console.print("[green]offline and online agree[/]")
