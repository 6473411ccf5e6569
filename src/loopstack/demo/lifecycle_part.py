"""Demo, part 5: the model's life after the first deploy, with real HTTP traffic and simulated days.

16. A/B: the challenger against production, read with the sequential test after each batch.
17. Spammers change behaviour (long texts without links, one-off accounts): the monitor reads the
    predictions, then the labels a day later: score shift, recall drop, alerts.
18. `diagnose` walks the playbook and stops at the first explanation.
19. The alert triggers the closed loop: fresh dataset (new spam included) -> train -> gate ->
    register -> shadow -> canary -> A/B -> promote with holdback, on the real evidence provider.
20. The monitoring HTML report.

Time: requests are real (stamped with the wall clock); what takes days in reality is simulated with
injected clocks: the monitor's `now` (labels become final a day later) and the loop's clock, whose
`sleep` delivers the next batch of live traffic instead of waiting an hour.
"""
from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from loopstack.demo import live
from loopstack.project import Project

WINDOW_S = 10   # monitoring windows: 10 s of wall clock stand for an hour of traffic
DRIFT_SHARE = 0.15   # share of the new-style spam in the traffic after the drift


class TrafficClock:
    """The loop's clock: simulated time; `sleep` advances it and serves the next batch of comments."""

    def __init__(self, start: datetime, on_sleep: Callable[[float], None]) -> None:
        self.t, self.on_sleep = start, on_sleep

    def now(self) -> datetime:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=seconds)
        self.on_sleep(seconds)


def _plan(min_samples: int = 30) -> Any:
    from loopstack.experiments.guardrails import Guardrail
    from loopstack.loop.core import ExperimentPlan, Goal
    return ExperimentPlan(
        goal=Goal("spam_caught", tau=0.1, min_samples=min_samples),
        guardrails=(Guardrail("latency_ms", higher_is_better=False, tolerance=0.5),
                    Guardrail("false_positive_rate", higher_is_better=False, tolerance=0.02, relative=False,
                              blocking=False),
                    Guardrail("error_rate", higher_is_better=False, tolerance=0.01, relative=False,
                              blocking=False)),
        treatment_percent=50, max_minutes=7 * 24 * 60)


def _bar(console: Console) -> Progress:
    return Progress(TextColumn("   {task.description}"), BarColumn(), MofNCompleteColumn(), console=console,
                    transient=True, disable=not console.is_terminal)


def _wait_window(console: Console) -> None:
    """Start the next phase in a fresh monitoring window (so its windows hold only its traffic)."""
    left = WINDOW_S - time.time() % WINDOW_S + 0.05
    time.sleep(left)


def run_lifecycle(project: Project, history: pd.DataFrame, console: Console, directory: Path) -> dict:
    from loopstack.monitoring.windows import Monitor
    from loopstack.serving.app import create_app
    from loopstack.serving.config import ModelSpec, ServingConfig
    from loopstack.serving.local_server import LoopbackServer
    out: dict[str, Any] = {}
    from loopstack.monitoring.rules import DEFAULT_RULES
    # the default rules plus one early warning: the score distribution moved (KS), before any label
    rules = [*DEFAULT_RULES, {"metric": "score_ks", "op": ">", "value": 0.05, "severity": "watch"}]
    cfg = replace(project.config.monitoring, window=f"{WINDOW_S}s", deploy_lookback="0s", rules=rules)
    yaml = directory / "loopstack.yaml"     # so `loopstack monitor ...` afterwards reads the same windows
    lines = (f"  window: {WINDOW_S}s               # the demo: 10 s of wall clock stand for an hour\n"
             "  deploy_lookback: 0s       # diagnose: deploys since the window began")
    yaml.write_text(re.sub(r"(?m)^  window: 1h.*$", lines, yaml.read_text(), count=1))
    monitor = Monitor(project, cfg)
    end = history.ts.max().ceil("h").to_pydatetime()
    prod = project.models.get("models:/spam@production").version if _has_alias(project) else 1
    ref = project.models.profile(f"models:/spam/{prod}")
    max_text = int(ref["features"]["text_length"]["max"])
    ab = live.live_comments(900, end, 8, seed=21, first_id=100_000)
    drift = live.live_comments(1200, end + timedelta(hours=8), 8, seed=22, drift_share=DRIFT_SHARE,
                               max_text=max_text, first_id=200_000)
    later = live.live_comments(3000, end + timedelta(hours=16), 8, seed=23, drift_share=DRIFT_SHARE,
                               max_text=max_text, first_id=300_000)
    stored: list[pd.DataFrame] = [history]
    server_cfg = ServingConfig(models=(ModelSpec("spam"),), poll_interval_s=0.2, feature_sample=1.0)
    with LoopbackServer(create_app(project, server_cfg)) as srv:
        def batch(rows: pd.DataFrame, what: str) -> list[dict]:
            with _bar(console) as bar:
                task = bar.add_task(what, total=len(rows))
                answers = []
                for i in range(0, len(rows), 100):
                    answers += live.serve(srv.url, rows.iloc[i:i + 100])
                    bar.advance(task, min(100, len(rows) - i))
            live.store(project, rows)
            stored.append(rows)
            return answers
        out["ab"] = _first_ab(project, console, ab, batch, monitor)
        _wait_window(console)
        drift_start = datetime.fromtimestamp(time.time() // WINDOW_S * WINDOW_S, timezone.utc)
        answers = batch(drift, "spammers switch to long texts without links: 1200 comments served")
        out["drift"] = _drift(project, console, monitor, answers, drift_start)
        out["diagnosis"] = _diagnose(project, console, monitor, drift)
        out["loop"] = _loop(project, console, monitor, later, batch, stored, end, out["drift"]["alerts"])
    path = _report(project, console, monitor, directory)
    out["report"] = path
    return out


def _has_alias(project: Project) -> bool:
    try:
        project.models.get("models:/spam@production")
        return True
    except Exception:  # noqa: BLE001 - no production alias yet
        return False


def _first_ab(project: Project, console: Console, rows: pd.DataFrame, batch: Callable, monitor: Any) -> dict:
    """The challenger (in canary) against production, 50/50 by user, a sequential readout per batch."""
    from loopstack.loop.core import decide_experiment
    from loopstack.loop.monitor_evidence import MonitorEvidence
    from loopstack.serving.policy_store import PolicyStore
    reg = project.models
    challenger = next(v for v in reg.versions("spam") if v.state == "canary")
    prod = reg.get("models:/spam@production").version
    reg.promote(challenger.ref, "experiment", reason="demo: A/B against production")
    PolicyStore(project.meta).update("spam", {"canary_percent": None,
                                             "experiment_weights": {"control": 50, f"v{challenger.version}": 50}})
    time.sleep(0.6)   # the server polls its policy every 0.2 s
    console.print(f"[bold]16. A/B[/] v{challenger.version} vs production v{prod}, 50/50 by user; goal: spam caught "
                  "(recall on labelled comments); guardrails: latency (blocking), false positives, errors; "
                  "an always-valid sequential test (mSPRT) is read after every batch")
    plan, evidence, tests = _plan(), MonitorEvidence(project, monitor), {}
    decision = None
    t = Table()
    for col in ("look", "users c/t", "spam caught c → t", "always-valid p", "decision"):
        t.add_column(col)
    for look, i in enumerate(range(0, len(rows), 300), 1):
        answers = batch(rows.iloc[i:i + 300], f"A/B batch {look}: 300 comments served")
        live.deliver_labels(project, answers)
        ev = evidence.experiment("spam", prod, challenger.version)
        decision, tests = decide_experiment(plan, ev, (look * 8 / 3) * 3600, tests)
        g = decision.evidence.get("goal") or {}
        t.add_row(str(look), f"{ev['control']['users']}/{ev['treatment']['users']}",
                  f"{g.get('control', 0):.2f} → {g.get('treatment', 0):.2f}", f"{g.get('p_value', 1):.3f}",
                  decision.outcome)
        if decision.outcome != "wait":
            break
    console.print(t)
    PolicyStore(project.meta).update("spam", {"experiment_weights": None})
    if decision is not None and decision.outcome == "pass":
        reg.promote(challenger.ref, "production", reason=f"demo A/B: {decision.reason}")
        PolicyStore(project.meta).update("spam", {"holdback_percent": 2})
        console.print(f"   [green]v{challenger.version} promoted[/] with a 2 % holdback on v{prod}: {decision.reason}")
        return {"outcome": "promoted", "reason": decision.reason}
    why = decision.reason if decision else "no data"
    reg.promote(challenger.ref, "archived", reason=f"demo A/B: {why}")
    console.print(f"   v{challenger.version} archived: {why} — the two models catch the same spam; nothing moves "
                  f"without evidence, production stays on v{prod}")
    return {"outcome": "archived", "reason": why}


def _drift(project: Project, console: Console, monitor: Any, answers: list[dict], since: datetime) -> dict:
    by = live.recall_by_style(answers)
    console.print("[bold]17. concept drift[/] spammers switch to long texts without links, from clean aged "
                  "accounts; production flagged " + ", ".join(f"{k}: {f}/{n}" for k, (f, n) in sorted(by.items())))
    run = monitor.run(progress=True)
    now = datetime.now(timezone.utc)
    early = monitor.check("spam", now=now, since=since, notify=False)
    console.print(f"   monitor: {run}")
    console.print("   before any label: " + ("; ".join(f"{a.severity}: {_rule(a)} ({a.layer})" for a in early)
                                            if early else "no alert") + "; recall unknown until the labels are final")
    live.deliver_labels(project, answers)
    later = now + timedelta(hours=25)
    run = monitor.run(now=later)
    alerts = early + monitor.check("spam", now=later, since=since, notify=False)
    console.print(f"   a day later the reports and reviews are in ({run.joined} labels joined): windows complete")
    t = Table(title="alerts (drift windows)")
    for col in ("severity", "layer", "rule", "value", "version"):
        t.add_column(col)
    for a in alerts[:8]:
        t.add_row(a.severity, a.layer, _rule(a), f"{a.value:.3f}", str(a.version))
    console.print(t)
    return {"alerts": alerts, "flagged": by}


def _diagnose(project: Project, console: Console, monitor: Any, drift: pd.DataFrame) -> dict:
    from loopstack.monitoring.gather import run_diagnosis
    sim_now = drift.ts.max().to_pydatetime() + timedelta(minutes=1)

    def freshness() -> dict[str, float | None]:   # lag against the demo's simulated clock
        now_us = sim_now.timestamp() * 1e6
        return {v: None if f.get("newest_event_ts") is None else (now_us - f["newest_event_ts"]) / 1e6
                for v, f in project.online.freshness().items()}
    facts, d = run_diagnosis(monitor, "spam", now=datetime.now(timezone.utc) + timedelta(hours=25),
                             freshness=freshness)
    console.print(f"[bold]18. diagnose[/] ({facts.window}):")
    for i, s in enumerate(d.steps, 1):
        console.print(f"   {i}. {s.title:<48} {'[red]yes[/]' if s.found else '[green]no[/]'}  [dim]{s.detail}[/]")
    console.print(f"   stopped at: [bold]{d.stopped_at}[/]")
    return d.to_dict()


def _loop(project: Project, console: Console, monitor: Any, rows: pd.DataFrame, batch: Callable,
          stored: list[pd.DataFrame], end: datetime, alerts: list) -> dict:
    import lightgbm as lgb

    from loopstack.demo.training_part import FEATURES, labels_from
    from loopstack.loop.core import LiveChecks, LoopPolicy
    from loopstack.loop.monitor_evidence import MonitorEvidence
    from loopstack.loop.pipeline import RetrainPipeline
    from loopstack.loop.spec import LoopSpec
    from loopstack.loop.triggers import AlertTrigger
    from loopstack.registry.gate import ModelValidationGate
    from loopstack.training.splits import TemporalSplit
    pos = {"i": 0}

    def traffic(seconds: float) -> None:   # an hour of simulated time: the next 250 comments, then labels
        i = pos["i"]
        if i >= len(rows):
            return
        time.sleep(0.5)                    # the server picks up traffic changes within 0.2 s
        answers = batch(rows.iloc[i:i + 250], "loop: next hour of traffic (250 comments)")
        pos["i"] = i + 250
        live.deliver_labels(project, answers)

    policy = LoopPolicy(experiment=_plan(), shadow=LiveChecks(min_requests=200, max_minutes=24 * 60),
                        canary=LiveChecks(min_requests=150, max_minutes=24 * 60), canary_percent=25,
                        holdback_percent=2, poll_seconds=3600)
    spec = LoopSpec(
        model="spam", labels=lambda now: labels_from(pd.concat(stored, ignore_index=True)), features=FEATURES,
        estimator=lambda: lgb.LGBMClassifier(n_estimators=60, learning_rate=0.1, num_leaves=15, min_child_samples=10,
                                             n_jobs=1, verbose=-1, random_state=0),
        gate=ModelValidationGate(absolute={"roc_auc": 0.9}), policy=policy, label_delay="24h",
        split=TemporalSplit(train_end=end + timedelta(hours=12)), dataset_name="spam")
    clock = TrafficClock(datetime.now(timezone.utc) + timedelta(days=3), traffic)
    pipeline = RetrainPipeline(project, spec, MonitorEvidence(project, monitor, now=clock.now), clock=clock,
                               console=console)
    trigger = AlertTrigger(pipeline, cooldown="6h")
    console.print("[bold]19. closed loop[/] the alert triggers a retrain (simulated clock: each poll is an hour "
                  "of live traffic through the server)")
    state = None
    for a in sorted(alerts, key=lambda a: a.layer != "product"):
        state = trigger(a)
        if state is not None:
            break
        console.print(f"   [dim]alert {_rule(a)}: {trigger.last_skip}[/]")
    if state is None:
        console.print("   [red]no alert started a retrain[/]")
        return {"state": None}
    last = state.history[-1]["reason"] if state.history else ""
    console.print(f"   run {state.run_id}: [bold]{state.step}[/] — v{state.version} "
                  + ("is production" if state.step == "done" else f"stopped: {last}"))
    if state.version is not None:
        from collections import Counter
        audit = Counter(e["action"] for e in project.models.audit("spam", state.version))
        console.print(f"   audit log of v{state.version}: " + ", ".join(f"{n} × {a}" for a, n in audit.items())
                      + " (`loopstack models show spam`)")
    return {"state": state.step, "version": state.version, "run_id": state.run_id,
            "history": [(h["step"], h["outcome"]) for h in state.history]}


def _rule(a: Any) -> str:
    return f"{a.metric}{f'[{a.feature}]' if a.feature else ''} {a.op} {a.threshold:g}"


def _report(project: Project, console: Console, monitor: Any, directory: Path) -> Path:
    from loopstack.monitoring.report import write_report
    monitor.run()          # the loop's traffic too
    path = write_report(monitor, "spam", directory / "monitoring-report.html", every="60s",
                        now=datetime.now(timezone.utc) + timedelta(hours=25))
    console.print(f"[bold]20. report[/] {path}")
    return path
