"""Demo, part 4: serve the spam model over HTTP on loopback, drive traffic through it, put a second
version in shadow and then in canary, and show what the router did."""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table

from loopstack.project import Project


def _climb(project: Project, ref: str, target: str, gate_passed: bool) -> None:
    """Walk a version up the rollout ladder one rung at a time (an audited override if its gate failed)."""
    from loopstack.registry import stages
    current = project.models.get(ref).state
    for state in stages.LADDER[stages.LADDER.index(current) + 1:stages.LADDER.index(target) + 1]:
        project.models.promote(ref, state, reason=f"demo: {state}", override=not gate_passed)


def _second_version(project: Project, dataset_id: str, console: Console) -> tuple[str, bool]:
    """Train and register a challenger (another LightGBM) on the same dataset, with its gate."""
    import lightgbm as lgb

    from loopstack.registry.gate import ModelValidationGate
    ds = project.dataset(dataset_id)
    model = lgb.LGBMClassifier(n_estimators=30, learning_rate=0.2, num_leaves=7, min_child_samples=20, n_jobs=1,
                               verbose=-1, random_state=1)
    result = project.train(model, ds, run_name="spam-lgbm-small", report=False)
    mv = project.models.register("spam", result.model, signature=result.signature.to_dict(), run_id=result.run_id,
                                 dataset={"id": ds.id, "hash": ds.content_hash}, metrics=result.metrics)
    X_eval, _ = ds.X_y("eval")
    decision = ModelValidationGate(absolute={"roc_auc": 0.8}).evaluate(
        result.metrics, predict_fn=lambda x: result.model.predict_proba(x)[:, 1], sample=X_eval)
    project.models.record_gate(mv.ref, decision)
    console.print(f"[bold]12. challenger[/] {mv.ref}: ROC-AUC {result.metrics['roc_auc']:.3f}, gate "
                  + ("[green]passed[/]" if decision.passed else "[red]failed[/] (moved anyway, audited)"))
    return mv.ref, bool(decision.passed)


def _drive(url: str, comments: pd.DataFrame, n: int, users: bool, threads: int = 6) -> list[dict]:
    """`n` predictions for real comments from `threads` concurrent clients; the answers."""
    import httpx
    rows = comments.sample(n, random_state=len(comments) + n, replace=True).to_dict("records")
    out: list[dict] = []
    lock = threading.Lock()

    def client(part: list[dict]) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            for r in part:
                b = {"entities": {"author_id": int(r["author_id"])},
                     "fields": {"text": r["text"], "n_urls": int(r["n_urls"]), "new_account": int(r["new_account"])}}
                if users:
                    b["user_id"] = f"user-{int(r['author_id'])}"
                res = c.post("/v1/models/spam:predict", json=b).json()
                with lock:
                    out.append({**res, "user": b.get("user_id")})
    ts = [threading.Thread(target=client, args=(rows[i::threads],)) for i in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def _wait_policy(url: str, key: str, value: Any, timeout: float = 30) -> None:
    import httpx
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/v1/models/spam").json()["policy"].get(key) != value:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not pick up {key}={value}")
        time.sleep(0.1)


def run_serving(project: Project, comments: pd.DataFrame, console: Console, training: dict) -> dict:
    """Steps 11-15 of the demo; returns the answers per phase (for tests)."""
    from loopstack.serving.app import create_app
    from loopstack.serving.config import ModelSpec, ServingConfig
    from loopstack.serving.policy_store import PolicyStore
    from loopstack.serving.local_server import LoopbackServer
    first = training["version"].ref
    _climb(project, first, "production", bool(training["gate"].passed))
    console.print(f"[bold]11. rollout[/] {first} walked up the ladder to production")
    second, passed = _second_version(project, training["dataset"]["dataset_id"], console)
    cfg = ServingConfig(models=(ModelSpec("spam"),), poll_interval_s=0.2, feature_sample=0.05)
    with LoopbackServer(create_app(project, cfg)) as srv:
        console.print(f"[bold]13. serve[/] {srv.url}  (POST /v1/models/spam:predict, /metrics, /docs)")
        phases = {"production only": _drive(srv.url, comments, 300, users=False)}
        _climb(project, second, "shadow", passed)
        _wait_policy(srv.url, "shadow", project.models.get(second).version)
        console.print(f"   {second} → shadow: the server loaded it without a restart; it gets a copy of every "
                      "production request after the answer")
        phases["shadow"] = _drive(srv.url, comments, 300, users=False)
        PolicyStore(project.meta).update("spam", {"canary_percent": 25})
        _climb(project, second, "canary", passed)
        _wait_policy(srv.url, "canary", project.models.get(second).version)
        console.print(f"   {second} → canary for 25 % of users (`loopstack models traffic spam --canary-percent 25`)")
        phases["canary 25 %"] = _drive(srv.url, comments, 600, users=True)
        srv.app.state.service.plog.flush()
        stats = [lv.batcher.stats() for lv in srv.app.state.fleet.versions()]
    _report(project, console, phases, stats)
    return phases


def _report(project: Project, console: Console, phases: dict[str, list[dict]], stats: list[dict]) -> None:
    t = Table(title="14. what the router did")
    for col in ("phase", "requests", "variant → version: requests", "rungs", "p50 latency"):
        t.add_column(col)
    for name, answers in phases.items():
        by = Counter((a["variant"], a["version"]) for a in answers)
        lat = sorted(a["latency_ms"] for a in answers)
        t.add_row(name, str(len(answers)), ", ".join(f"{v} → v{ver}: {n}" for (v, ver), n in sorted(by.items())),
                  ", ".join(f"{k}: {n}" for k, n in Counter(a["rung"] for a in answers).items()),
                  f"{lat[len(lat) // 2]:.1f} ms")
    console.print(t)
    canary = phases["canary 25 %"]
    users: dict[str, set] = {}
    for a in canary:
        users.setdefault(a["user"], set()).add(a["variant"])
    on_canary = sum(1 for v in users.values() if "canary" in v)
    console.print(f"   canary: {on_canary} of {len(users)} users (by a hash of the user id); "
                  f"{sum(len(v) > 1 for v in users.values())} users saw more than one variant (sticky)")
    recs = [r.value for r in project.log.replay("predictions")]
    shadow = [r for r in recs if r["kind"] == "shadow"]
    diffs = [abs(r["output"] - r["production_output"]) for r in shadow if r.get("output") is not None]
    console.print(f"[bold]15. prediction log[/] topic 'predictions': {len(recs) - len(shadow)} predictions, "
                  f"{len(shadow)} shadow copies ({sum(r['disagree'] for r in shadow)} disagreements, mean "
                  f"|Δ| {sum(diffs) / max(1, len(diffs)):.3f}), {sum('features' in r for r in recs)} with the full "
                  "feature vector")
    fired = Counter()
    sizes = Counter()
    for s in stats:
        fired.update(s["fired"])
        sizes.update(s["batch_sizes"])
    n = sum(sizes.values())
    console.print(f"   batches: {n} run, mean size {sum(k * v for k, v in sizes.items()) / max(1, n):.1f}; fired "
                  + ", ".join(f"{k}: {v}" for k, v in fired.items()))
