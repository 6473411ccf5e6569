"""`loopstack monitor run|status|alerts|report|diagnose` (box 8)."""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)      # warnings: stdout stays parseable with --json
monitor_app = typer.Typer(help="Box 8: four-layer monitoring, alerts, report, diagnosis.", no_args_is_help=True)
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")


def _monitor(project: Path):
    from loopstack.monitoring.windows import Monitor
    from loopstack.project import Project
    return Monitor(Project(project))


def _models(m, model: str | None) -> list[str]:
    return [model] if model else m.models()


def _check_known(thing: Any, seen: list, registered: Callable[[], list], unknown: Callable[[list], str],
                 no_windows: str) -> None:
    """`thing` (a model, a version) has monitoring windows (`seen`), or the registry knows it (a warning: nothing
    logged yet), or it is a typo: exit 2 naming what exists, instead of an empty report and exit 0."""
    if thing in seen:
        return
    try:
        known = registered()
    except Exception:  # noqa: BLE001 - no registry to ask: the warning below still applies
        known = [thing]
    if thing not in known:
        err_console.print(f"[red]error:[/] {unknown(known)}")
        raise typer.Exit(2)
    err_console.print(no_windows)


def _names(items: list) -> str:
    return ", ".join(map(str, items)) or "none"


def _check_model(m, model: str) -> None:
    """A model the registry does not know and that has no windows is an error; a known one without windows a
    warning."""
    seen = m.models()
    _check_known(model, seen, lambda: sorted(d["name"] for d in m.project.models.list()),
                 lambda reg: f"unknown model {model!r}: it is not in the registry and has no monitoring windows "
                             f"(registered: {_names(reg)}; with windows: {_names(seen)})",
                 f"[yellow]no monitoring windows for model {model!r}[/] (models seen: {_names(seen)}); run "
                 "`loopstack monitor run` after the server logged predictions to the 'predictions' topic")


def _check_version(m, model: str, version: int | None) -> None:
    """`--version` of a model: as `_check_model`, for a version of it."""
    if version is None:
        return
    seen = sorted({v for v, _ in m.windows(model)})
    _check_known(version, seen, lambda: sorted(mv.version for mv in m.project.models.versions(model)),
                 lambda reg: f"model {model!r} has no version {version} (registered versions: {_names(reg)}; "
                             f"with windows: {_names(seen)})",
                 f"[yellow]no monitoring windows for version {version} of model {model!r}[/] (versions with "
                 f"windows: {_names(seen)})")


@monitor_app.command()
def run(project: Path = ProjectOpt,
        follow: bool = typer.Option(False, "--follow", help="Keep consuming every --interval seconds."),
        interval: float = typer.Option(60.0, help="Seconds between runs with --follow."),
        server: str = typer.Option(None, help="Model server URL: also sample its /metrics (queue depth, "
                                              "batch sizes).")) -> None:
    """Consume new predictions and labels, update the windows, evaluate the alert rules."""
    if follow and not (math.isfinite(interval) and interval > 0):
        err_console.print(f"[red]error:[/] --interval {interval} must be a positive number of seconds (the pause "
                          "between runs with --follow), e.g. --interval 60")
        raise typer.Exit(2)
    m = _monitor(project)
    while True:
        if server:
            m.scrape(server)
        res = m.run(progress=not follow)
        console.print(f"[green]monitor[/] {res}")
        for model in m.models():
            for a in m.check(model):
                console.print(f"[red]ALERT[/] [{a.severity}] {a.message} (window "
                              f"{a.window_start:%Y-%m-%d %H:%M} UTC)")
        if not follow:
            return
        time.sleep(interval)


@monitor_app.command()
def status(project: Path = ProjectOpt, model: str = typer.Argument(None, help="One model (default: all)."),
           last: int = typer.Option(12, min=1, help="Windows to show per model.")) -> None:
    """The latest windows of each model: traffic, latency, drift, score shift, precision/recall, labels."""
    from loopstack.monitoring.report import terminal_summary
    m = _monitor(project)
    if model:
        _check_model(m, model)
    lag = m.lag()
    console.print("records not yet consumed: " + (", ".join(f"{t}: {n}" for t, n in lag.items()) or "none"))
    for name in _models(m, model):
        starts = sorted({s for _, s in m.windows(name)})
        since = starts[-last] if len(starts) > last else None
        terminal_summary(console, name, m.summaries(name, since=since), last)


@monitor_app.command()
def alerts(project: Path = ProjectOpt, model: str = typer.Argument(None), limit: int = typer.Option(50, min=1),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Stored alerts, newest first."""
    m = _monitor(project)
    if model:
        _check_model(m, model)
    got = m.alerts(model, limit)
    if as_json:
        print(json.dumps([a.to_dict() for a in got], indent=2))
        return
    t = Table(title="alerts")
    for c in ("id", "window (UTC)", "model", "v", "layer", "severity", "message", "webhook"):
        t.add_column(c)
    for a in got:
        t.add_row(str(a.id), f"{a.window_start:%m-%d %H:%M}", a.model, str(a.version), a.layer, a.severity,
                  a.message, a.delivery or "-")
    console.print(t)


@monitor_app.command()
def report(project: Path = ProjectOpt, model: str = typer.Argument(..., help="Model name."),
           out: Path = typer.Option(None, "--out", "-o", help="HTML file (default: monitor-<model>.html)."),
           every: str = typer.Option(None, help="Roll windows up, e.g. 1d."),
           version: int = typer.Option(None, help="One version only.")) -> None:
    """Write the self-contained HTML report and print a terminal summary."""
    from loopstack.monitoring.report import terminal_summary, write_report
    m = _monitor(project)
    _check_model(m, model)
    _check_version(m, model, version)
    path = write_report(m, model, out or Path(f"monitor-{model}.html"), version=version, every=every)
    terminal_summary(console, model, m.summaries(model, version, every=every))
    console.print(f"report written to [bold]{path}[/]")


@monitor_app.command()
def diagnose(project: Path = ProjectOpt, model: str = typer.Argument(..., help="Model name."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Walk the on-call playbook in order and stop at the first explanation."""
    from loopstack.monitoring.gather import run_diagnosis
    m = _monitor(project)
    _check_model(m, model)
    facts, d = run_diagnosis(m, model)
    if as_json:
        print(json.dumps(d.to_dict(), indent=2))
    else:
        _print_diagnosis(model, facts, d)
    if d.explanation is None and d.note is not None:
        raise typer.Exit(1)      # nothing could be checked: not a clean bill of health


def _print_diagnosis(model: str, facts: Any, d: Any) -> None:
    """The playbook's steps and conclusion as text."""
    from loopstack.monitoring.diagnose import NO_EXPLANATION
    console.print(f"[bold]diagnose {model}[/] ({facts.window or 'no windows yet'}; "
                  f"now {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)")
    for i, s in enumerate(d.steps, 1):
        mark = "[red]yes[/]" if s.found else "[green]no[/]"
        console.print(f"  {i}. {s.title} {mark}: {s.detail}")
    console.print(f"[bold]explanation:[/] {d.explanation or d.note or NO_EXPLANATION}")
