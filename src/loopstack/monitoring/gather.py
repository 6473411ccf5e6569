"""Gathering the facts `diagnose` decides on (the I/O edge): registry audit, online freshness, the
latest window's summary and segments from the `Monitor`."""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Any, Callable

from loopstack.monitoring.diagnose import Diagnosis, Facts, diagnose
from loopstack.monitoring.windows import Monitor
from loopstack.timeutil import now_micros, parse_duration, to_us

log = logging.getLogger("loopstack.monitoring")


def _used_views(monitor: Monitor, model: str, version: int | None) -> set[str] | None:
    if version is None:
        return None
    try:
        refs = monitor.project.models.get(f"models:/{model}/{version}").signature.feature_refs
    except Exception:  # noqa: BLE001 - version 0 (no version) or unknown: check every view
        return None
    return {r.split(":", 1)[0] for r in refs if ":" in r}


def online_freshness(project: Any) -> dict[str, float | None]:
    """View -> lag in seconds of the online store (empty when the project has no views)."""
    try:
        return {v: f.get("lag_seconds") for v, f in project.online.freshness().items()}
    except Exception as exc:  # noqa: BLE001 - no online store / no views: the step has nothing to check
        log.info("online freshness unavailable (%s)", exc)
        return {}


def _recent(monitor: Monitor, model: str, wins: list[tuple[int, int]], now: Any, max_windows: int = 24) -> Any:
    """The newest window of the version with most traffic in it, merged with the windows before it
    (up to `max_windows`) until it holds ``min_samples`` feature samples and scores."""
    from loopstack.monitoring.summary import summarize
    from loopstack.monitoring.window_state import WindowState
    latest = max((s for _, s in wins), default=None)
    if latest is None:
        return None
    states = {v: monitor.window_state(model, v, s) for v, s in wins if s == latest}
    version = max(states, key=lambda v: states[v].requests)
    starts = sorted((s for v, s in wins if v == version), reverse=True)[:max_windows]
    merged, first = [], latest
    for s in starts:
        merged.append(monitor.window_state(model, version, s))
        first = s
        state = WindowState.merge_all(merged)
        rows = state.features.n_rows if state.features is not None else 0
        if rows >= monitor.config.min_samples and state.scored >= monitor.config.min_samples:
            break
    width = (latest - first) // 1_000_000 + monitor.width_s
    now_us = now_micros() if now is None else to_us(now)
    return summarize(model, version, first, width, state, monitor.reference(model, version), now_us=now_us,
                     label_delay_us=monitor.label_delay_us, threshold=monitor.config.threshold,
                     min_samples=monitor.config.min_samples)


def gather(monitor: Monitor, model: str, *, now: Any = None,
           freshness: Callable[[], dict[str, float | None]] | None = None) -> Facts:
    """Facts about the newest window(s) of `model` (the version with most traffic in the newest one)."""
    cfg = monitor.config
    now_dt = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(to_us(now) / 1e6, timezone.utc)
    wins = monitor.windows(model)
    facts = Facts(model, max_lag_s=parse_duration(cfg.max_feature_lag).total_seconds())
    summary = _recent(monitor, model, wins, now)
    if summary is not None:
        facts.version = summary.version
        start = datetime.fromtimestamp(summary.start_us / 1e6, timezone.utc)
        facts.window = f"{start:%Y-%m-%d %H:%M} UTC, {summary.width_s // 60} min, v{summary.version}"
        facts.data_checks = summary.checks
        m = summary.metrics
        facts.score_band, facts.score_psi = m.get("score_band"), m.get("score_psi")
        facts.mean_shift, facts.mean_shift_alert = m.get("mean_score_shift"), bool(m.get("mean_score_shift_alert"))
        facts.reference_mean = m.get("reference_mean_score")
        if summary.state is not None:
            facts.segments = summary.state.segment_means()
        since = min(start, now_dt) - parse_duration(cfg.deploy_lookback)
    else:
        since = now_dt - parse_duration(cfg.deploy_lookback)
    try:
        facts.deploys = [_audit_row(a) for a in monitor.project.models.audit(model) if a["at"] >= since]
    except Exception as exc:  # noqa: BLE001 - model not in the registry: no deploy history
        log.info("no registry audit for %s (%s)", model, exc)
    fresh = (freshness or (lambda: online_freshness(monitor.project)))()
    used = _used_views(monitor, model, facts.version)
    facts.freshness = {v: s for v, s in fresh.items() if used is None or v in used}
    return facts


def _audit_row(a: dict) -> dict:
    return {k: a.get(k) for k in ("action", "version", "alias", "from_state", "to_state", "reason")} | {
        "at": a["at"].strftime("%Y-%m-%d %H:%M:%S UTC") if isinstance(a.get("at"), datetime) else a.get("at")}


def run_diagnosis(monitor: Monitor, model: str, *, now: Any = None,
                  freshness: Callable[[], dict[str, float | None]] | None = None) -> tuple[Facts, Diagnosis]:
    """Gather the facts and walk the playbook."""
    facts = gather(monitor, model, now=now, freshness=freshness)
    return facts, diagnose(facts)


__all__ = ["gather", "online_freshness", "run_diagnosis"]
