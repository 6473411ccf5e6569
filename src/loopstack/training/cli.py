"""`loopstack dataset ...` and `loopstack runs ...` (box 4).

Mount in loopstack/cli.py::_add_groups:  ``from loopstack.training.cli import mount; mount(app)``.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

console = Console()
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")
dataset_app = typer.Typer(help="Box 4: training datasets (label delay, point-in-time features, temporal split).",
                          no_args_is_help=True)
runs_app = typer.Typer(help="Box 4: tracked runs (list, show, compare).", no_args_is_help=True)


def mount(app: typer.Typer) -> None:
    """Add the `dataset` and `runs` groups to the root app (idempotent)."""
    have = {g.name for g in app.registered_groups}
    if "dataset" not in have:
        app.add_typer(dataset_app, name="dataset", help="Box 4: training datasets (build, list, show).")
    if "runs" not in have:
        app.add_typer(runs_app, name="runs", help="Box 4: tracked runs (list, show, compare).")


def _project(path: Path):
    from loopstack.project import Project
    return Project(path)


# -- datasets ---------------------------------------------------------------------------------
@dataset_app.command("build")
def dataset_build(
        labels: str = typer.Option(..., "--labels", "-l", help="Parquet/CSV file or folder, or a log topic name."),
        feature: List[str] = typer.Option(..., "--feature", "-f", help="'view:feature' reference (repeat)."),
        label_delay: str = typer.Option("24h", help="Keep labels final for at least this long before the cut-off."),
        cutoff: Optional[str] = typer.Option(None, help="Dataset cut-off time (ISO 8601; default now)."),
        name: Optional[str] = typer.Option(None, help="Dataset name (versions are numbered per name)."),
        weekly: Optional[str] = typer.Option(None, help="Temporal split: train before T, evaluate the week after."),
        train_start: Optional[str] = typer.Option(None), train_end: Optional[str] = typer.Option(None),
        eval_start: Optional[str] = typer.Option(None), eval_end: Optional[str] = typer.Option(None),
        random_fraction: Optional[float] = typer.Option(None, help="Random split with this eval share (warns)."),
        seed: int = typer.Option(0, help="Seed of --random-fraction."),
        time_column: str = typer.Option("event_timestamp", help="Prediction time column of the labels."),
        label_column: str = typer.Option("label"),
        label_time_column: str = typer.Option("label_timestamp", help="When each label became final."),
        entity: Optional[List[str]] = typer.Option(None, help="Entity key column(s) (default: the views' keys)."),
        project: Path = ProjectOpt) -> None:
    """Build and store a dataset snapshot; prints rows kept/dropped (and why), split and hash."""
    split = _split_option(random_fraction, seed, weekly, train_start, train_end, eval_start, eval_end)
    p = _project(project)
    try:
        ds = p.build_dataset(labels, feature, label_delay=label_delay, split=split, cutoff=cutoff, name=name,
                             time_column=time_column, label_column=label_column,
                             label_time_column=label_time_column, entity_columns=entity or None)
        for line in ds.report():
            console.print(escape(line), highlight=False)
    finally:
        p.close()


def _split_option(random_fraction: float | None, seed: int, weekly: str | None, train_start: str | None,
                  train_end: str | None, eval_start: str | None, eval_end: str | None) -> Any:
    """The split the options ask for: exactly one kind, and no bound that would be silently ignored."""
    from loopstack.training.datasets import DatasetError
    from loopstack.training.splits import RandomSplit, TemporalSplit
    bounds = {"--train-start": train_start, "--train-end": train_end, "--eval-start": eval_start,
              "--eval-end": eval_end}
    given = [k for k, v in bounds.items() if v]
    kinds = [k for k, on in (("--random-fraction", random_fraction is not None), ("--weekly", bool(weekly)),
                             (" ".join(given), bool(given))) if on]
    if len(kinds) > 1:
        raise DatasetError(f"choose one split: {' and '.join(kinds)} were both given (a random split, "
                           "--weekly T, or explicit --train-end/--eval-* bounds)")
    if given and not train_end:
        raise DatasetError(f"{' '.join(given)} needs --train-end (where the train part ends); without it the "
                           "default split (the last 7 days evaluate) would be used instead")
    if random_fraction is not None:
        return RandomSplit(seed=seed, fraction=random_fraction)
    if weekly:
        return TemporalSplit.weekly(weekly)
    if train_end:
        return TemporalSplit(train_end=train_end, eval_start=eval_start, eval_end=eval_end, train_start=train_start)
    return None


@dataset_app.command("list")
def dataset_list(name: Optional[str] = typer.Argument(None), project: Path = ProjectOpt) -> None:
    """Stored dataset versions, newest first."""
    from loopstack.training.datasets import list_datasets
    p = _project(project)
    t = Table("id", "name", "version", "train", "eval", "hash", "created")
    for d in list_datasets(p, name):
        t.add_row(d["dataset_id"], escape(d["name"]), str(d["version"]), str(d["rows_train"]), str(d["rows_eval"]),
                  d["content_hash"][:19], _when(d["created_at"]))
    console.print(t)
    p.close()


@dataset_app.command("show")
def dataset_show(ref: str = typer.Argument(..., help="Dataset id, name@version or name."),
                 manifest: bool = typer.Option(False, "--json", help="Print the whole manifest as JSON."),
                 project: Path = ProjectOpt) -> None:
    """One dataset: summary, or its manifest with --json."""
    p = _project(project)
    ds = p.dataset(ref)
    if manifest:
        typer.echo(json.dumps(ds.manifest, indent=2, sort_keys=True))
    else:
        for line in ds.report():
            console.print(escape(line), highlight=False)
        for f in ds.manifest["features"]:
            console.print(escape(f"  feature {f['ref']} (view version {f.get('view_version', f.get('version'))})"),
                          highlight=False)
    p.close()


# -- runs -------------------------------------------------------------------------------------
def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if ms else ""


@runs_app.command("list")
def runs_list(filter: Optional[str] = typer.Option(None, "--filter", help="e.g. \"metrics.auc > 0.8\"."),
              order_by: Optional[List[str]] = typer.Option(None, "--order-by", help="'metrics.auc DESC' (repeat)."),
              limit: int = typer.Option(50, "--limit", "-n", min=1, help="At most this many runs."),
              project: Path = ProjectOpt) -> None:
    """Runs matching a filter, sorted (default: newest first)."""
    p = _project(project)
    found = p.runs.search(filter, order_by=order_by, max_results=limit)
    mkeys = sorted({k for r in found for k in r.metrics})[:6]
    pkeys = sorted({k for r in found for k in r.params})[:6]
    t = Table("run_id", "name", "status", "start", *[f"params.{k}" for k in pkeys], *[f"metrics.{k}" for k in mkeys])
    from loopstack.training.report_html import _fmt
    for r in found:
        t.add_row(r.run_id[:12], escape(r.name), r.status, _when(r.start_time),
                  *[escape(str(r.params.get(k, ""))) for k in pkeys], *[_fmt(r.metrics.get(k)) for k in mkeys])
    console.print(t)
    console.print(f"{len(found)} run(s)", highlight=False)
    p.close()


@runs_app.command("show")
def runs_show(run: str = typer.Argument(..., help="Run id (or unique prefix, or name)."),
              as_json: bool = typer.Option(False, "--json"), project: Path = ProjectOpt) -> None:
    """Everything recorded for one run."""
    p = _project(project)
    info = p.runs.get(run)
    if as_json:
        typer.echo(json.dumps(info.to_dict(), indent=2, sort_keys=True, default=str))
        p.close()
        return
    console.print(f"[bold]{escape(info.name)}[/] {info.run_id} [{'green' if info.status == 'FINISHED' else 'red'}]"
                  f"{info.status}[/]")
    console.print(escape(f"start {_when(info.start_time)}  duration {info.duration_s or 0:.3f}s  git "
                         f"{info.git_commit or '-'}{' (dirty)' if info.git_dirty else ''}"), highlight=False)
    if info.error:   # stored text is printed as written: '[/]' in it is not markup
        console.print(f"[red]error:[/] {escape(info.error)}", highlight=False)
    for title, d in (("params", info.params), ("metrics", info.metrics), ("tags", info.tags),
                     ("packages", info.packages)):
        if d:
            console.print(f"[bold]{title}[/]: " + escape(", ".join(f"{k}={v}" for k, v in sorted(d.items()))),
                          highlight=False)
    for key, problem in sorted(info.problems.items()):
        console.print(f"[red]bad stored {key}:[/] {escape(problem)}", highlight=False)
    for ds in info.datasets:
        console.print(escape(f"dataset {ds['name']}@{ds['version']} {ds['dataset_id']} {ds['content_hash'][:19]}"),
                      highlight=False)
    for a in info.artifacts:
        console.print(escape(f"artifact {a['path']} ({a['size']} bytes, sha256 {a['sha256'][:12]})"), highlight=False)
    p.close()


@runs_app.command("compare")
def runs_compare(run: List[str] = typer.Argument(..., help="Two or more run ids."),
                 html: Optional[Path] = typer.Option(None, "--html", help="Write an HTML page with metric curves."),
                 project: Path = ProjectOpt) -> None:
    """Params and metrics side by side (differences highlighted); --html plots the metric curves."""
    p = _project(project)
    cmp = p.runs.compare(run)
    labels = cmp.labels()
    t = Table("", *[escape(labels[r.run_id]) for r in cmp.runs])
    for label, vals, diff in cmp.rows():
        t.add_row(escape(label), *[escape(str(v)) for v in vals], style="yellow" if diff else None)
    console.print(t)
    if html:
        cmp.to_html(html)
        console.print(escape(f"wrote {html} ({len(cmp.histories)} metric chart(s))"), highlight=False)
    p.close()
