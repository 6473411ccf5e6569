"""The `loopstack` command: one sub-command group per box (log, features, ...)."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from loopstack.errors import LoopstackError

console = Console()
err_console = Console(stderr=True)
app = typer.Typer(help="loopstack: a production ML system in one package.", no_args_is_help=True,
                  pretty_exceptions_enable=False)

ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")


@app.command()
def init(directory: Path = typer.Argument(..., help="Folder to create the project in."),
         name: str = typer.Option(None, help="Project name (default: the folder's name)."),
         example: bool = typer.Option(True, help="Write an example definitions.py.")) -> None:
    """Scaffold a project: loopstack.yaml and a definitions file with a worked example."""
    from loopstack.project import Project
    existed = (directory / "loopstack.yaml").exists()
    project = Project.init(directory, name=name, example=example)
    verb = "kept existing" if existed else "created"
    console.print(f"[green]{verb}[/] {project.root / 'loopstack.yaml'}")
    console.print(f"next: edit {project.root / 'definitions.py'}, then `loopstack apply -p {directory}`")


@app.command()
def apply(project: Path = ProjectOpt,
          file: Path = typer.Option(None, "--file", "-f", help="Definitions file (default: from loopstack.yaml)."),
          dry_run: bool = typer.Option(False, "--dry-run", help="Show the diff, change nothing."),
          prune: bool = typer.Option(True, help="Mark definitions no longer in the file as removed.")) -> None:
    """Register the definitions file: prints what was added, changed and removed."""
    from loopstack.project import Project
    p = Project(project)
    objects = p.load_definitions(file)
    diff = p.plan(objects, prune=prune) if dry_run else p.apply(objects, prune=prune)
    styles = {"+": "green", "~": "yellow", "-": "red"}
    for line in diff.lines():
        console.print(f"[{styles.get(line[0], 'dim')}]{line}[/]")
    if dry_run:
        console.print("[dim](dry run: nothing changed)[/]")


@app.command("config")
def show_config(project: Path = ProjectOpt) -> None:
    """Show the effective configuration (loopstack.yaml plus environment overrides)."""
    import dataclasses

    import yaml

    from loopstack.config import load_config
    from loopstack.meta.url import hide_password
    shown = dataclasses.asdict(load_config(project.resolve()))
    for section in shown.values():  # passwords set by environment stay out of terminals and CI logs
        if isinstance(section, dict):
            for key in ("url", "webhook_url"):
                if isinstance(section.get(key), str):
                    section[key] = hide_password(section[key])
    console.print(yaml.safe_dump(shown, sort_keys=False), markup=False)


@app.command()
def demo(directory: Path = typer.Option(Path("demo-project"), help="Where to build the demo project."),
         fresh: bool = typer.Option(True, help="Start from an empty folder.")) -> None:
    """Run the end-to-end spam-classifier demo on embedded defaults."""
    from loopstack.demo.run import run_demo
    run_demo(directory, fresh=fresh, console=console)


def _add_groups() -> None:
    from loopstack.features.cli import app as features_app
    from loopstack.features.cli_online import app as online_features_app
    from loopstack.features.cli_online import root_app as online_root_app
    from loopstack.features.cli_serve import app as serve_app
    from loopstack.log.cli import app as log_app
    features_app.registered_commands.extend(serve_app.registered_commands)  # features serve
    from loopstack.training.cli import mount as mount_training
    mount_training(app)  # dataset, runs
    from loopstack.registry.cli import models_app
    from loopstack.serving.cli import serve, traffic
    models_app.command("traffic")(traffic)   # models traffic NAME --canary-percent ...
    app.command("serve")(serve)              # the model server (box 7)
    app.add_typer(models_app, name="models", help="Box 5: model registry (versions, rollout, rollback).")
    features_app.registered_commands.extend(online_features_app.registered_commands)  # features parity
    app.registered_commands.extend(online_root_app.registered_commands)  # materialize(-incremental), stream
    from loopstack.monitoring.cli import monitor_app
    app.add_typer(monitor_app, name="monitor", help="Box 8: monitoring (windows, alerts, report, diagnose).")
    from loopstack.loop.cli import app as loop_app
    app.add_typer(loop_app, name="loop", help="The closed loop: retrain, gate, shadow, canary, A/B, promote.")
    app.add_typer(log_app, name="log", help="Box 1: the event log (ingest, tail, topics).")
    app.add_typer(features_app, name="features", help="Boxes 2-3: feature definitions and retrieval.")
    from loopstack.llm.cli import app as llm_app
    app.add_typer(llm_app, name="llm", help="LLM engine: OpenAI-compatible server (serve) and one-off generate.")


_add_groups()


def main() -> None:
    """Entry point: user errors print one clear line and exit 2 instead of a traceback."""
    try:
        rc = app(standalone_mode=False)
        if isinstance(rc, int) and not isinstance(rc, bool) and rc:
            sys.exit(rc)   # typer.Exit(code) in a command: without standalone mode click returns the code
    except LoopstackError as exc:
        err_console.print(f"[red]error:[/] {escape(str(exc))}")  # "[offline]" in a message is text, not markup
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click usage errors
        if isinstance(exc, _usage_errors()):
            exc.show()
            sys.exit(exc.exit_code)
        raise


def _usage_errors() -> tuple[type[Exception], ...]:
    """Usage-error classes: click's, and the click copy newer typer versions vendor (typer._click)."""
    import click
    return (click.ClickException,) + ((typer.TyperException,) if hasattr(typer, "TyperException") else ())
