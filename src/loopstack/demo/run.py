"""`loopstack demo`: the spam-classifier lifecycle end to end, on embedded defaults.

Ingest a comment stream (bad records dead-lettered), apply definitions, build a point-in-time
training frame that never counts later spam, stream the topic into the online store, read online
features, run the offline/online parity check, train/register/gate a model, then serve it over HTTP
on loopback with a challenger in shadow and then in canary (parts 1-4); then the A/B, the concept
drift, monitoring, diagnosis and the closed loop climbing the ladder again (part 5, lifecycle_part).
"""
from __future__ import annotations

import json
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from loopstack.demo.data import bad_records, demo_start, generate_comments
from loopstack.project import Project


def _jsonable(rec: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in rec.items()}


def run_demo(directory: Path, fresh: bool = True, console: Console | None = None, *, lifecycle: bool = True,
             state: dict | None = None) -> pd.DataFrame:
    """Build the demo project in `directory`; returns the training frame it printed (`state`, if given,
    receives what the lifecycle part found: A/B outcome, alerts, diagnosis, loop run, report path)."""
    from loopstack.log.ingest import ingest_file
    console = console or Console()
    directory = Path(directory)
    if fresh and directory.exists():
        shutil.rmtree(directory)
    console.rule("[bold]loopstack demo: spam comments")
    project = Project.init(directory, name="spam-demo")
    diff = project.apply(project.load_definitions(), prune=True)
    console.print("[bold]1. apply[/] " + "; ".join(diff.lines()))

    comments = generate_comments(start=demo_start())   # content fixed by the seed; dates end 2-3 days ago
    raw = directory / "comments.jsonl"
    rows = [_jsonable(c) for c in comments]
    rows[100:100] = bad_records()
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = ingest_file(project.log, raw, "comments", progress=True)
    console.print(f"[bold]2. ingest[/] {raw.name}: [green]{result.accepted} accepted[/], "
                  f"[red]{result.rejected} dead-lettered[/] to comments.dlq")
    for reason, n in sorted(result.reasons.items(), key=lambda kv: -kv[1])[:4]:
        console.print(f"   [dim]{n} × {reason}[/]")

    df = pd.DataFrame(comments)
    spam_authors = df[df.is_spam == 1].author_id.unique()
    sample = df[df.author_id.isin(spam_authors)].iloc[::7].head(8)
    entity_df = pd.DataFrame({"author_id": sample.author_id.to_list(), "event_timestamp": sample.ts.to_list(),
                              "is_spam": sample.is_spam.to_list()})
    frame = project.get_historical_features(
        entity_df, ["author_stats:spam_7d", "author_stats:comments_7d", "author_stats:mean_urls_7d",
                    "author_stats:last_text", "spam_share_7d"])
    leaky = [int(df[(df.author_id == a)].is_spam.sum()) for a in entity_df.author_id]
    table = Table(title="3. point-in-time training frame (features strictly before each comment)")
    cols = {"author_id": "author", "event_timestamp": "comment time", "is_spam": "label", "spam_7d": "spam_7d",
            "comments_7d": "comments_7d", "spam_share_7d": "share"}
    for header in cols.values():
        table.add_column(header)
    table.add_column("leaky", style="red")
    for (_, r), bad in zip(frame.iterrows(), leaky):
        table.add_row(*[_fmt(r[c]) for c in cols], str(bad))
    console.print(table)
    console.print("[dim]spam_7d counts this author's spam in the 7 days before each comment; 'leaky' is the "
                  "author's all-time spam count a naive join would feed into training.[/]")
    _online_part(project, df, console)
    from loopstack.demo.training_part import run_training
    trained = run_training(project, df, console)
    from loopstack.demo.serving_part import run_serving
    run_serving(project, df, console, trained)
    if lifecycle:
        from loopstack.demo.lifecycle_part import run_lifecycle
        result = run_lifecycle(project, df, console, directory)
        if state is not None:
            state.update(result)
    project.close()
    return frame


def _online_part(project: Project, df: pd.DataFrame, console: Console) -> None:
    """Stream the topic into the online store, read online features, prove parity with offline."""
    from loopstack.features.parity import check_parity
    from loopstack.features.stream import StreamProcessor
    with StreamProcessor(project) as stream:
        stats = stream.run(idle_timeout=0.5)
    console.print(f"[bold]4. stream[/] comments → online store ({project.config.online.backend}): "
                  f"{sum(stats.applied.values())} events applied, {sum(stats.late.values())} too late "
                  "(side topic comments.late)")
    as_of = df.ts.max().to_pydatetime() + timedelta(seconds=1)
    authors = [int(a) for a in df[df.is_spam == 1].author_id.value_counts().index[:3]] + [99999]
    resp = project.get_online_features(["author_stats:spam_7d", "author_stats:comments_7d",
                                        "author_stats:last_text"], [{"author_id": a} for a in authors], as_of=as_of)
    table = Table(title=f"5. online features as of {as_of:%Y-%m-%d %H:%M:%S} (the end of the stream)")
    for col in ["author", "found", "spam_7d", "comments_7d", "last_text"]:
        table.add_column(col)
    for a, row, found in zip(authors, resp.rows, resp.found):
        table.add_row(str(a), str(found), *[_fmt(row.get(f)) for f in ("spam_7d", "comments_7d")],
                      _fmt(row.get("last_text"))[:28])
    console.print(table)
    report = check_parity(project, sample=60, now=as_of + timedelta(days=2))
    console.print(f"[bold]6. parity[/] offline point-in-time vs online, {report.checked} values compared: "
                  + ("[green]0 mismatches[/]" if report.ok else f"[red]{report.mismatches} mismatches[/]"))
    if not report.ok:
        console.print(report.table())


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if isinstance(v, pd.Timestamp):
        return v.strftime("%m-%d %H:%M:%S")
    return str(v)
