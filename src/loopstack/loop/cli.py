"""`loopstack loop run|status|resume`: the closed loop from the command line.

`run` and `resume` need the retrain recipe, which is code (an estimator, a gate, an evidence
provider): a Python file (default ``loop.py`` in the project) defining ``pipeline(project)`` that
returns a `RetrainPipeline`. `status` only reads the metadata store.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from loopstack.loop.core import LoopError, summary

app = typer.Typer(help="The closed loop: retrain -> gate -> shadow -> canary -> A/B -> promote.", no_args_is_help=True)
console = Console()
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")
FileOpt = typer.Option(None, "--file", "-f", help="Python file defining pipeline(project) (default: loop.py "
                                                  "in the project folder).")


def load_pipeline(project: Any, file: Path | None) -> Any:
    """Import the loop file and call its ``pipeline(project)``."""
    path = Path(file) if file else project.root / "loop.py"
    if not path.exists():
        raise LoopError(f"loop file {path} not found: write one defining `def pipeline(project): return "
                        "RetrainPipeline(project, LoopSpec(...), evidence)` (see docs/monitoring.md, "
                        "\"The closed loop\"), or pass --file")
    spec = importlib.util.spec_from_file_location(f"loopstack_loop_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise LoopError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    factory = getattr(module, "pipeline", None)
    if not callable(factory):
        raise LoopError(f"{path} defines no function pipeline(project) returning a RetrainPipeline")
    pl = factory(project)
    if pl.console is None:
        pl.console = console
    return pl


def _finish(state: Any) -> None:
    style = {"done": "green", "failed": "red", "rolled_back": "red"}.get(state.step, "yellow")
    console.print(f"run {state.run_id}: [{style}]{state.step}[/]" + (f" ({state.error})" if state.error else ""))
    if state.step in ("failed", "rolled_back"):
        raise typer.Exit(1)


@app.command("run")
def run(project: Path = ProjectOpt, file: Path = FileOpt,
        reason: str = typer.Option("", help="Why this run (goes in the audit log)."),
        every: str = typer.Option(None, help="Run on a schedule, e.g. 7d or 12h: the next run time is stored, a "
                                             "run starts only when due (or an unfinished one resumes)."),
        forever: bool = typer.Option(False, "--forever", help="With --every: keep running, sleeping until due.")
        ) -> None:
    """Start a retrain run now (or, with --every, when the schedule says) and drive it to the end."""
    from loopstack.loop.triggers import Schedule
    from loopstack.project import Project
    p = Project(project)
    pl = load_pipeline(p, file)
    if every is None:
        if forever:
            raise LoopError("--forever needs --every (the schedule's interval)")
        _finish(pl.run("manual", reason))
        return
    schedule = Schedule(pl, every)
    if forever:
        schedule.run_forever()
        return
    state = schedule.tick()
    if state is None:
        console.print(f"not due: the next scheduled run of {pl.spec.model!r} is at "
                      f"{schedule.next_run_at:%Y-%m-%d %H:%M} UTC")
        return
    _finish(state)


@app.command("resume")
def resume(project: Path = ProjectOpt, file: Path = FileOpt,
           run_id: str = typer.Option(None, "--run", help="The run to resume (default: the unfinished one).")) -> None:
    """Continue an unfinished run from the step it stopped at (after a crash or a stop)."""
    from loopstack.project import Project
    p = Project(project)
    _finish(load_pipeline(p, file).resume(run_id))


@app.command("status")
def status(project: Path = ProjectOpt,
           model: str = typer.Option(None, help="Only this model's runs."),
           run_id: str = typer.Option(None, "--run", help="Show one run step by step."),
           limit: int = typer.Option(10, min=1, help="How many recent runs to list."),
           as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Recent loop runs (step, trigger, version) and the next scheduled run; --run shows one in detail."""
    from loopstack.loop.store import LoopStore
    from loopstack.project import Project
    store = LoopStore(Project(project).meta)
    if run_id:
        state = store.get(run_id)
        if as_json:
            console.print_json(json.dumps(state.to_dict(), default=str))
        else:
            for line in summary(state):
                console.print(line, markup=False, highlight=False)
        return
    runs = store.runs(model, limit)
    if as_json:
        console.print_json(json.dumps([s.to_dict() for s in runs], default=str))
        return
    if not runs:
        console.print("no loop runs yet: start one with `loopstack loop run`")
        return
    table = Table(title="loop runs (newest first)")
    for col in ("run", "model", "step", "trigger", "version", "started", "last outcome"):
        table.add_column(col)
    for s in runs:
        last = s.history[-1] if s.history else None
        table.add_row(s.run_id, s.model, s.step, s.trigger, str(s.version or "-"), s.started_at[:19],
                      f"{last['step']} {last['outcome']}: {last['reason']}"[:90] if last else "")
    console.print(table)
    for name in sorted({s.model for s in runs}):
        sched = store.schedule(name)
        if sched:
            console.print(f"{name}: scheduled every {sched['every_seconds'] / 3600:g} h, next run "
                          f"{sched['next_run_at']:%Y-%m-%d %H:%M} UTC")
