"""`loopstack models ...`: list, show, promote, rollback, alias and audit (box 5).

Mount in loopstack/cli.py::_add_groups:
    from loopstack.registry.cli import models_app
    app.add_typer(models_app, name="models", help="Box 5: model registry (versions, rollout, rollback).")
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loopstack.registry.errors import RegistryError

console = Console()
models_app = typer.Typer(help="Model registry: versions, aliases, rollout states, rollback.", no_args_is_help=True)
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")


def _registry(project: Path):
    from loopstack.project import Project
    return Project(project).models


@models_app.command("list")
def list_models(project: Path = ProjectOpt,
                name: str = typer.Argument(None, help="Show the versions of this model instead.")) -> None:
    """Registered models (or one model's versions) with their rollout states and aliases."""
    reg = _registry(project)
    if name is not None:
        t = Table(title=f"model {name}")
        for c in ("version", "state", "aliases", "gate", "metrics", "run", "created"):
            t.add_column(c)
        broken = []
        for v in reg.versions(name):
            t.add_row(str(v.version), escape(v.state), ", ".join(f"@{a}" for a in v.aliases),
                      "[red]unreadable[/]" if "gate" in v.problems else _gate(v.gate_passed),
                      escape(_metrics(v.metrics)), escape(v.run_id or "-"), v.created_at.strftime("%Y-%m-%d %H:%M"))
            if v.problems:
                broken.append(f"[red]{v.ref}: bad stored {', '.join(sorted(v.problems))}[/] (see `loopstack models "
                              f"show {v.ref}`)")
        console.print(t)
        for line in broken:
            console.print(line)
        return
    t = Table(title="models")
    for c in ("name", "versions", "latest", "production", "aliases", "states"):
        t.add_column(c)
    for m in reg.list():
        t.add_row(m["name"], str(m["versions"]), str(m["latest"] or "-"), str(m["production"] or "-"),
                  ", ".join(f"@{a}={v}" for a, v in sorted(m["aliases"].items())),
                  ", ".join(f"{s}:{n}" for s, n in sorted(m["states"].items())))
    console.print(t)


@models_app.command()
def show(ref: str = typer.Argument(..., help="models:/name/3, models:/name@alias or models:/name/latest"),
         project: Path = ProjectOpt, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """A version's lineage, metrics, signature, gate decision, profile summary and audit trail."""
    reg = _registry(project)
    v = reg.get(ref, strict=False)   # show what can be read; unreadable fields are flagged below
    if as_json:
        print(json.dumps(v.to_dict(), indent=2, default=str))
        return
    t = Table(title=f"{v.ref}", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value")
    rows = [("state", v.state), ("aliases", ", ".join(f"@{a}" for a in v.aliases) or "-"),
            ("run", v.run_id or "-"), ("dataset", f"{v.dataset_id or '-'} (hash {v.dataset_hash or '-'})"),
            ("code", v.code_version or "-"), ("artifact", v.artifact_uri), ("sha256", v.artifact_sha256),
            ("params", json.dumps(v.params, default=str)), ("metrics", _metrics(v.metrics) or "-"),
            ("inputs", ", ".join(f"{f.ref}@v{f.version} {f.dtype}" for f in v.signature.inputs)),
            ("outputs", ", ".join(f"{o['name']} {o['dtype']}" for o in v.signature.outputs)),
            ("created", f"{v.created_at:%Y-%m-%d %H:%M:%S} by {v.created_by}")]
    for k, val in rows:
        bad = any(f in v.problems for f in SHOWN_FROM.get(k, (k,)))
        t.add_row(k, escape(val) if not bad else "[red]unreadable[/] (see below)" if val in ("-", "{}")
                  else f"[red](bad: see below)[/] {escape(val)}")
    console.print(t)
    for field, problem in sorted(v.problems.items()):
        console.print(f"[red]bad stored {field}:[/] {escape(problem)}")
    if v.gate:
        from loopstack.registry.gate import GateDecision
        console.print(GateDecision.from_dict(v.gate).table(v.ref))
    elif "gate" not in v.problems:
        console.print("[yellow]validation gate: never ran[/] (promotion past candidate needs --override)")
    if v.has_profile:
        _print_profile(reg, v.ref)
    a = Table(title="audit log")
    for c in ("when", "who", "action", "change", "override", "why"):
        a.add_column(c)
    for e in reg.audit(v.name, v.version):
        change = f"{e['from_state'] or ''} -> {e['to_state']}" if e["to_state"] else (f"@{e['alias']}" if e["alias"]
                                                                                      else "")
        a.add_row(f"{e['at']:%Y-%m-%d %H:%M:%S}", escape(e["actor"]), escape(e["action"]), escape(change),
                  "yes" if e["override"] else "", escape(e["reason"]))
    console.print(a)


SHOWN_FROM = {"run": ("run_id",), "dataset": ("dataset_id", "dataset_hash"), "code": ("code_version",),
              "inputs": ("signature",), "outputs": ("signature",), "created": ("created_by",)}


def _print_profile(reg, ref: str) -> None:
    """The reference profile's summary table, or a flagged line when the stored profile is unreadable."""
    from loopstack.registry.profile import describe
    try:
        rows = describe(reg.profile(ref))
    except RegistryError as exc:
        console.print(f"[red]unreadable reference profile:[/] {escape(str(exc))}")
        return
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        console.print(f"[red]unreadable reference profile:[/] a feature lacks a field ({type(exc).__name__}: "
                      f"{escape(str(exc))}); it was written by an older loopstack. Register the model again with "
                      "profile=<holdout features> to store a new one")
        return
    p = Table(title="reference profile")
    for c in ("feature", "kind", "null rate", "summary"):
        p.add_column(c)
    for row in rows:
        p.add_row(*map(escape, row))
    console.print(p)


@models_app.command()
def promote(ref: str = typer.Argument(..., help="The version to move, e.g. models:/spam/3"),
            state: str = typer.Argument(..., help="shadow, canary, experiment, production, archived, candidate"),
            reason: str = typer.Option(..., "--reason", "-r", help="Why (goes in the audit log)."),
            evidence: str = typer.Option(None, help="Evidence as JSON, e.g. '{\"shadow_p99_ms\": 12}'."),
            override: bool = typer.Option(False, "--override", help="Force a transition the rules refuse (audited)."),
            actor: str = typer.Option(None, help="Who (default: the OS user)."),
            expect_generation: int = typer.Option(None, help="Only if the model is still at this generation."),
            project: Path = ProjectOpt) -> None:
    """Move a version to another rollout state (production: archives the previous one)."""
    ev = _evidence(evidence)
    reg = _registry(project)
    v = reg.promote(ref, state, reason, ev, actor, override=override, expected_generation=expect_generation)
    console.print(f"[green]{v.ref}[/] is now [bold]{v.state}[/]" + (" [yellow](override, audited)[/]" if override
                                                                     else ""))


@models_app.command()
def rollback(name: str = typer.Argument(..., help="Model name."),
             reason: str = typer.Option(..., "--reason", "-r", help="Why (goes in the audit log)."),
             to: str = typer.Option("archived", "--current-to", help="archived or candidate."),
             actor: str = typer.Option(None, help="Who (default: the OS user)."),
             project: Path = ProjectOpt) -> None:
    """Put the previous production version back in production, in one step."""
    reg = _registry(project)
    t0 = time.perf_counter()
    v = reg.rollback(name, reason, actor, current_to=to)
    console.print(f"[green]rolled back:[/] {v.ref} is production again ({(time.perf_counter() - t0) * 1000:.0f} ms)")


@models_app.command()
def alias(name: str = typer.Argument(...), alias_name: str = typer.Argument(..., metavar="ALIAS"),
          version: int = typer.Argument(None, help="Version to point at (omit with --delete)."),
          delete: bool = typer.Option(False, "--delete", help="Remove the alias."),
          reason: str = typer.Option("", "--reason", "-r"), project: Path = ProjectOpt) -> None:
    """Set (or move, or delete) an alias such as @champion."""
    if delete and version is not None:
        raise RegistryError(f"give either a version or --delete, not both (--delete removes @{alias_name} "
                            "wherever it points)")
    reg = _registry(project)
    if delete:
        reg.delete_alias(name, alias_name, reason)
        console.print(f"deleted models:/{name}@{alias_name}")
        return
    if version is None:
        raise RegistryError("give the version the alias should point at, or --delete")
    reg.set_alias(name, alias_name, version, reason)
    console.print(f"models:/{name}@{alias_name} -> version {version}")


@models_app.command()
def audit(name: str = typer.Argument(...), project: Path = ProjectOpt) -> None:
    """The full audit log of a model."""
    t = Table(title=f"audit log of {name}")
    for c in ("when", "who", "version", "action", "change", "override", "why"):
        t.add_column(c)
    for e in _registry(project).audit(name):
        change = f"{e['from_state'] or ''} -> {e['to_state']}" if e["to_state"] else (f"@{e['alias']}" if e["alias"]
                                                                                      else "")
        t.add_row(f"{e['at']:%Y-%m-%d %H:%M:%S}", escape(e["actor"]), str(e["version"] or "-"), escape(e["action"]),
                  escape(change), "yes" if e["override"] else "", escape(e["reason"]))
    console.print(t)


def _evidence(text: str | None) -> dict:
    if not text:
        return {}
    try:
        ev = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RegistryError(f"--evidence must be JSON ({exc.msg} at position {exc.pos}), "
                            "e.g. '{\"p99_ms\": 12}'") from None
    if not isinstance(ev, dict):
        raise RegistryError("--evidence must be a JSON object, e.g. '{\"p99_ms\": 12}'")
    return ev


def _gate(passed: bool | None) -> str:
    return "-" if passed is None else ("[green]passed[/]" if passed else "[red]failed[/]")


def _metrics(m: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" for k, v in sorted(m.items()))
