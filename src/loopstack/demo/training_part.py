"""Demo, part 3: a leakage-free training set, a LightGBM model, evaluation, registry and the gate."""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from loopstack.project import Project

FEATURES = ["author_stats:spam_7d", "author_stats:comments_1h", "author_stats:comments_7d",
            "author_stats:mean_urls_7d", "author_stats:urly_comments_7d", "spam_share_7d",
            "url_count", "text_length", "new_account_flag"]


def labels_from(comments: pd.DataFrame, seed: int = 11) -> pd.DataFrame:
    """One label per comment; it becomes final 1-72 h after the comment (reports and reviews are late)."""
    rng = np.random.default_rng(seed)
    delay = pd.to_timedelta(rng.uniform(1, 72, size=len(comments)), unit="h")
    return pd.DataFrame({"author_id": comments.author_id.to_numpy(), "event_timestamp": comments.ts,
                         "label": comments.is_spam.to_numpy(), "label_timestamp": comments.ts + delay,
                         "n_urls": comments.n_urls.to_numpy(), "text": comments.text.to_numpy(),
                         "new_account": comments.new_account.to_numpy()})


def run_training(project: Project, comments: pd.DataFrame, console: Console) -> dict:
    """Build the dataset, train, evaluate, register and gate; returns what it printed, for tests."""
    import lightgbm as lgb

    from loopstack.registry.gate import ModelValidationGate
    from loopstack.registry.profile import build_profile
    from loopstack.training.splits import TemporalSplit
    start = comments.ts.min().normalize()
    cutoff = comments.ts.max() + timedelta(hours=12)
    ds = project.build_dataset(labels_from(comments), FEATURES, label_delay="24h", cutoff=cutoff,
                               split=TemporalSplit.weekly(start + timedelta(days=7)), name="spam")
    m = ds.manifest
    console.print("[bold]7. dataset[/] (labels final ≥ 24 h before the cut-off, features point in time, "
                  "temporal split)\n   " + "\n   ".join(ds.report()))
    model = lgb.LGBMClassifier(n_estimators=60, learning_rate=0.1, num_leaves=15, min_child_samples=10,
                               n_jobs=1, verbose=-1, random_state=0)
    result = project.train(model, ds, run_name="spam-lgbm")
    met = result.metrics
    console.print(f"[bold]8. train + evaluate[/] run {result.run_id[:8]}: ROC-AUC {met['roc_auc']:.3f}, "
                  f"PR-AUC {met['pr_auc']:.3f}, ECE {met['ece']:.3f}; at precision ≥ 0.95 the threshold is "
                  f"{_num(met.get('threshold_at_target'))} with recall {_num(met.get('recall_at_target'))}")
    X_eval, _ = ds.X_y("eval")
    scores = result.model.predict_proba(X_eval)[:, 1]
    version = project.models.register(
        "spam", result.model, signature=result.signature.to_dict(), run_id=result.run_id,
        dataset={"id": ds.id, "hash": ds.content_hash}, metrics=met,
        profile=build_profile(X_eval, scores))
    gate = ModelValidationGate(absolute={"precision_at_target": 0.95, "recall_at_target": 0.85},
                               latency_budget_ms={"p99_batch1": 50, "p99_batch32": 100})
    decision = gate.evaluate(met, predict_fn=lambda x: result.model.predict_proba(x)[:, 1], sample=X_eval)
    project.models.record_gate(version.ref, decision)
    console.print(f"[bold]9. register + gate[/] {version.ref}: gate "
                  + ("[green]passed[/]" if decision.passed else "[red]refused[/] (stays a candidate)"))
    console.print(decision.table() if hasattr(decision, "table") else decision)
    _show_registry(project, console)
    return {"metrics": met, "gate": decision, "version": version, "dataset": m}


def _num(v: object) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _show_registry(project: Project, console: Console) -> None:
    table = Table(title="10. model registry")
    for col in ("model", "versions", "latest", "production", "states"):
        table.add_column(col)
    for m in project.models.list():
        table.add_row(m["name"], str(m["versions"]), str(m["latest"]), str(m["production"]),
                      ", ".join(f"{k}: {v}" for k, v in m["states"].items()))
    console.print(table)
