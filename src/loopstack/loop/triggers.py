"""What starts a retrain run: a schedule (every N hours/days, next run time persisted) or an alert.

    schedule = Schedule(pipeline, every="7d")
    schedule.tick()                 # runs if due (or resumes an unfinished run), else returns None
    trigger = AlertTrigger(pipeline, cooldown="6h")
    monitor.on_alert(trigger)       # the monitor calls trigger(alert) for each new alert

Both refuse to start a second run while one is unfinished (they resume it instead, or skip), so a
storm of alerts starts one retrain, not fifty. System-layer alerts (latency, errors) never trigger a
retrain: a broken pipeline is fixed, not retrained on.
"""
from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Iterable, Mapping

from loopstack.loop.core import LoopError, LoopState
from loopstack.timeutil import parse_duration


class Schedule:
    """Retrain `pipeline`'s model every `every`; the next due time lives in the metadata store."""

    def __init__(self, pipeline: Any, every: Any, *, first_run_at: datetime | None = None) -> None:
        self.pipeline, self.every = pipeline, parse_duration(every)
        if self.every <= timedelta(0):
            raise LoopError(f"a schedule needs a positive interval, got {every!r}")
        self.store, self.clock, self.model = pipeline.store, pipeline.clock, pipeline.spec.model
        now = self.clock.now()
        current = self.store.schedule(self.model)
        if current is None or current["every_seconds"] != self.every.total_seconds():
            nxt = first_run_at or (now if current is None else
                                   min(current["next_run_at"], now + self.every))
            self.store.set_schedule(self.model, self.every.total_seconds(), nxt, now)

    @property
    def next_run_at(self) -> datetime:
        return self.store.schedule(self.model)["next_run_at"]

    def due(self) -> bool:
        return self.clock.now() >= self.next_run_at

    def tick(self) -> LoopState | None:
        """Resume an unfinished run, or start one if due (the next due time is saved first, so a
        crash mid-run does not start a second run: the next tick resumes it). None when not due."""
        active = self.store.active(self.model)
        if active is not None:
            return self.pipeline.resume(active.run_id)
        now = self.clock.now()
        if now < self.next_run_at:
            return None
        nxt = self.next_run_at + self.every
        while nxt <= now:            # missed runs (the process was down) collapse into one
            nxt += self.every
        state = self.pipeline.start("schedule", f"every {_human(self.every)}")
        self.store.set_schedule(self.model, self.every.total_seconds(), nxt, now, last_run_id=state.run_id)
        return self.pipeline.drive(state)

    def run_forever(self, max_runs: int | None = None) -> list[LoopState]:
        """Tick, sleep until the next due time, repeat (`max_runs` bounds it, for tests and demos)."""
        done: list[LoopState] = []
        while max_runs is None or len(done) < max_runs:
            state = self.tick()
            if state is not None:
                done.append(state)
                continue
            self.clock.sleep(max(0.0, (self.next_run_at - self.clock.now()).total_seconds()))
        return done


class AlertTrigger:
    """A callable the monitor calls with each alert; starts (and by default drives) a retrain run.

    An alert is an object or mapping with ``model``, ``severity``, ``layer``, ``metric`` and
    ``message`` (monitoring.alerts.Alert). It triggers when the model matches, the severity is in
    `severities`, the layer in `layers` (and the metric in `metrics`, if given), no run is unfinished
    and the last alert-triggered run started more than `cooldown` ago. `last_skip` says why not.
    """

    def __init__(self, pipeline: Any, *, severities: Iterable[str] = ("act",),
                 layers: Iterable[str] = ("data", "model", "product"), metrics: Iterable[str] | None = None,
                 cooldown: Any = "6h", drive: bool = True) -> None:
        from loopstack.monitoring.rules import LAYERS, METRICS, SEVERITIES
        self.pipeline = pipeline
        self.severities = _names("severities", severities, SEVERITIES)
        self.layers = _names("layers", layers, sorted(set(LAYERS.values())))
        self.metrics = None if metrics is None else _names("metrics", metrics, METRICS)
        self.cooldown, self.drive = parse_duration(cooldown), drive
        self.last_skip: str | None = None

    def __call__(self, alert: Any) -> LoopState | None:
        a = _fields(alert)
        model = self.pipeline.spec.model
        skip = None
        if a["model"] != model:
            skip = f"alert is for model {a['model']!r}, this loop retrains {model!r}"
        elif a["severity"] not in self.severities:
            skip = f"severity {a['severity']!r} does not trigger a retrain (only {sorted(self.severities)})"
        elif a["layer"] is not None and a["layer"] not in self.layers:
            skip = f"{a['layer']}-layer alerts do not trigger a retrain (fix the system, do not retrain on it)"
        elif self.metrics is not None and a["metric"] not in self.metrics:
            skip = f"metric {a['metric']!r} does not trigger a retrain"
        else:
            store, now = self.pipeline.store, self.pipeline.clock.now()
            active = store.active(model)
            last = store.last_started(model, "alert")
            if active is not None:
                skip = f"run {active.run_id} is already retraining {model!r} (at {active.step})"
            elif last is not None and now - last < self.cooldown:
                skip = f"an alert started a run at {last:%Y-%m-%d %H:%M}; cooling down for {_human(self.cooldown)}"
        self.last_skip = skip
        if skip:
            return None
        state = self.pipeline.start("alert", f"{a['metric']}: {a['message']}".strip(": "))
        return self.pipeline.drive(state) if self.drive else state


def _names(what: str, values: Any, allowed: Iterable[str]) -> set[str]:
    """A filter's names: one name or several, each one the monitor can emit (a typo would never match)."""
    names = {values} if isinstance(values, str) else set(values)
    unknown = sorted(map(str, names - set(allowed)))
    if unknown or not names:
        raise LoopError(f"AlertTrigger {what}: {unknown or 'none given'} not known; choose from {', '.join(allowed)}")
    return names


def _fields(alert: Any) -> dict[str, Any]:
    get = alert.get if isinstance(alert, Mapping) else (lambda k, d=None: getattr(alert, k, d))
    return {"model": get("model"), "severity": str(get("severity", "act")), "layer": get("layer"),
            "metric": get("metric", "") or "", "message": get("message", "") or ""}


def _human(d: timedelta) -> str:
    s = int(d.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s % n == 0 and s >= n:
            return f"{s // n}{unit}"
    return f"{s}s"
