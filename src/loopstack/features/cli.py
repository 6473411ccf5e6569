"""`loopstack features ...`: inspect definitions and build point-in-time feature frames."""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
app = typer.Typer(no_args_is_help=True)
ProjectOpt = typer.Option(".", "--project", "-p", help="Project folder (holds loopstack.yaml).")


@app.command("list")
def list_features(project: Path = ProjectOpt) -> None:
    """Every applied feature view and its features (reference, function, window, filter, version)."""
    from loopstack.project import Project
    p = Project(project)
    table = Table("reference", "function", "column", "window", "filter", "ttl", "view version")
    stored = {r["name"]: r["version"] for r in p.meta.latest_definitions("feature_view")}
    for name, view in sorted(p.registry.views().items()):
        for f in view.features:
            flt = f"{f.filter.column} {f.filter.op} {f.filter.value!r}" if f.filter else ""
            table.add_row(f"{name}:{f.name}", f.function, f.column or "*", f.window or "(latest)", flt,
                          view.ttl or "", f"v{stored.get(name, '?')}")
    for r in p.meta.latest_definitions("on_demand"):
        table.add_row(r["name"], "on-demand", ", ".join(r["spec"]["inputs"]), "", "", "", f"v{r['version']}")
    console.print(table)


@app.command()
def versions(view: str = typer.Argument(..., help="Feature view name."), project: Path = ProjectOpt) -> None:
    """Every stored version of a feature view, oldest first."""
    from loopstack.project import Project
    p = Project(project)
    table = Table("version", "created", "hash", "features", "removed")
    found = p.registry.versions_of("feature_view", view)
    if not found:
        from loopstack.errors import FeatureReferenceError
        raise FeatureReferenceError(f"no feature view named {view!r} was ever applied (views: "
                                    f"{', '.join(sorted(p.registry.views())) or 'none'}); check the name")
    for v in found:
        table.add_row(str(v["version"]), str(v["created_at"])[:19], v["spec_hash"],
                      ", ".join(f["name"] for f in v["spec"]["features"]), "yes" if v["removed"] else "")
    console.print(table)


@app.command()
def historical(entity_file: Path = typer.Argument(..., help="Parquet/CSV with join keys and a timestamp column."),
               feature: list[str] = typer.Option(..., "--feature", "-f", help="view:feature (repeatable)."),
               out: Path = typer.Option(..., "--out", "-o", help="Output file (.parquet or .csv)."),
               timestamp_column: str = typer.Option("event_timestamp", help="Timestamp column of the entity file."),
               full_feature_names: bool = typer.Option(False, help="Name columns view__feature."),
               project: Path = ProjectOpt) -> None:
    """Point-in-time correct features for each row of ENTITY_FILE, written to --out."""
    import pandas as pd

    from loopstack.errors import RetrievalError
    from loopstack.project import Project
    if not entity_file.exists():
        raise RetrievalError(f"entity file {entity_file} does not exist")
    if out.suffix.lower() not in (".csv", ".parquet"):
        raise RetrievalError(f"--out {out}: name a .parquet or .csv file")
    if not out.parent.is_dir():
        raise RetrievalError(f"--out {out}: folder {out.parent} does not exist; create it first")
    try:
        df = pd.read_csv(entity_file) if entity_file.suffix.lower() == ".csv" else pd.read_parquet(entity_file)
    except Exception as exc:  # noqa: BLE001 - pandas/pyarrow raise many types for an unreadable file
        raise RetrievalError(f"entity file {entity_file} could not be read as "
                             f"{'CSV' if entity_file.suffix.lower() == '.csv' else 'Parquet'}: {exc}") from exc
    p = Project(project)
    result = p.get_historical_features(df, feature, timestamp_column=timestamp_column,
                                       full_feature_names=full_feature_names)
    if out.suffix.lower() == ".csv":
        result.to_csv(out, index=False)
    else:
        result.to_parquet(out, index=False)
    console.print(f"[green]wrote[/] {len(result)} rows × {len(result.columns)} columns to {out}")
