"""`MonitorEvidence`: the loop's real evidence provider, read from what the model server logged.

- ``shadow`` / ``canary``: the version's logged predictions since it entered the rung (the registry
  audit says when; shadow copies in shadow, its canary answers in canary), profiled as the `Monitor`
  profiles a window and summarised: requests, error rate, p99 latency and the score PSI against the
  version's offline reference profile (its registered profile).
- ``experiment``: the ``predictions`` topic joined with the ``labels`` topic by request id, per arm
  (the experiment's ``control`` variant vs the candidate's ``v<N>`` variant) since the experiment
  began: users, the goal metric (``spam_caught``: labelled positives the arm flagged, i.e. recall),
  and the guardrails ``latency_ms`` (mean, variance), ``error_rate`` and ``false_positive_rate``
  (labelled negatives flagged). Counts are cumulative, as the sequential test requires.

Labels arrive late: a request without a label yet simply does not count in the label-based metrics.
"""
from __future__ import annotations

from collections import defaultdict
from datetime import datetime
from typing import Any, Callable, Iterator, Mapping

from loopstack.loop.evidence import EvidenceProvider
from loopstack.timeutil import to_us

GOAL, FPR, LATENCY, ERRORS = "spam_caught", "false_positive_rate", "latency_ms", "error_rate"


class MonitorEvidence(EvidenceProvider):
    """Live evidence from the monitor's windows and the prediction/label topics of `project`.

    `monitor`: a `monitoring.Monitor` (default: one with the project's config). `threshold`: the score
    at or above which a prediction counts as flagged (default: the monitoring config's). `now`: a
    callable returning the current time (the loop's clock), used to decide which labels are final.
    """

    def __init__(self, project: Any, monitor: Any = None, *, threshold: float | None = None,
                 now: Callable[[], datetime] | None = None) -> None:
        from loopstack.monitoring.windows import Monitor
        self.project = project
        self.monitor = monitor if monitor is not None else Monitor(project)
        self.threshold = self.monitor.config.threshold if threshold is None else float(threshold)
        self.now = now

    # -- shadow / canary ------------------------------------------------------------------------
    def shadow(self, model: str, version: int) -> Mapping[str, Any]:
        return self._live(model, version, "shadow")

    def canary(self, model: str, version: int) -> Mapping[str, Any]:
        return self._live(model, version, "canary")

    def _live(self, model: str, version: int, rung: str) -> dict[str, Any]:
        """The version's records since it entered the rung (shadow copies in shadow, its canary
        answers in canary), profiled exactly as the monitor profiles a window (a `WindowState` on the
        version's reference layout) and summarised. The monitor's own windows are per version, not per
        rung, so a window that saw both rungs would blur them: the log is read instead."""
        from loopstack.monitoring.summary import summarize
        from loopstack.monitoring.window_state import WindowState, parse_score
        mon = self.monitor
        since = self._entered(model, version, rung)
        kind, variant = ("shadow", None) if rung == "shadow" else ("prediction", "canary")
        recs, first, last = [], None, None
        for v, ts in self._predictions(model, since):
            if v.get("kind") != kind or int(v.get("version") or 0) != version:
                continue
            if variant is not None and v.get("variant") != variant:
                continue
            recs.append(v)
            first, last = (ts if first is None else min(first, ts)), (ts if last is None else max(last, ts))
        if not recs:
            return {"requests": 0, "error_rate": None, "p99_ms": None, "score_psi": None}
        ref = mon.reference(model, version)
        state = WindowState(ref)
        state.add_predictions(recs, [parse_score(v.get("output")) for v in recs], [[] for _ in recs])
        width = max(1, (last - first) // 1_000_000 + 1)
        now_us = to_us(self.now()) if self.now else last + 1
        s = summarize(model, version, first, width, state, ref, now_us=now_us, label_delay_us=mon.label_delay_us,
                      threshold=mon.config.threshold, min_samples=mon.config.min_samples)
        m = s.metrics
        return {"requests": int(m["requests"] or 0), "error_rate": m["error_rate"], "p99_ms": m["p99_latency_ms"],
                "score_psi": m.get("score_psi"), "mean_score": m.get("mean_score")}

    def _predictions(self, model: str, since: int | None) -> Iterator[tuple[dict, int]]:
        """(record, ts µs) of `model` in the ``predictions`` topic at or after `since`."""
        log = self.project.log
        if "predictions" not in {t.name for t in log.topics()}:
            return
        for rec in log.replay("predictions"):
            v = rec.value
            if v.get("model") != model:
                continue
            ts = to_us(v.get("ts") or rec.timestamp)
            if since is None or ts >= since:
                yield v, ts

    def _entered(self, model: str, version: int, state: str) -> int | None:
        """When (µs) the version last moved into `state` (None: never, so every window counts)."""
        moves = [a for a in self.project.models.audit(model, version)
                 if a["action"] == "transition" and a.get("to_state") == state]
        return to_us(moves[-1]["at"]) if moves else None

    # -- experiment -------------------------------------------------------------------------------
    def experiment(self, model: str, control: int | None, treatment: int) -> Mapping[str, Any]:
        since = self._entered(model, treatment, "experiment")
        arms = {"control": _Arm(), "treatment": _Arm()}
        names = {"control": "control", f"v{treatment}": "treatment"}
        outputs: dict[str, tuple[str, float | None]] = {}
        for v, _ in self._predictions(model, since):
            if v.get("kind") != "prediction" or v.get("variant") not in names:
                continue
            arm = names[v["variant"]]
            arms[arm].add(v)
            outputs[str(v["request_id"])] = (arm, v.get("output") if v.get("status", "ok") == "ok" else None)
        for key, label in self._labels().items():
            hit = outputs.get(key)
            if hit is not None and hit[1] is not None:
                arms[hit[0]].label(float(hit[1]) >= self.threshold, label)
        return {name: arm.evidence() for name, arm in arms.items()}

    def _labels(self) -> dict[str, int]:
        log = self.project.log
        if "labels" not in {t.name for t in log.topics()}:
            return {}
        key = self.monitor.config.label_key
        cut = to_us(self.now()) if self.now else None
        out: dict[str, int] = {}
        for rec in log.replay("labels"):
            v = rec.value
            if v.get(key) is None or v.get("label") is None:
                continue
            if cut is not None and v.get("ts") is not None and to_us(v["ts"]) > cut:
                continue   # not arrived yet at the loop's "now"
            out[str(v[key])] = int(bool(v["label"]))
        return out


class _Arm:
    """Cumulative numbers of one experiment arm."""

    def __init__(self) -> None:
        self.users: set = set()
        self.requests = self.errors = 0
        self.lat_n, self.lat_sum, self.lat_sq = 0, 0.0, 0.0
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, v: Mapping[str, Any]) -> None:
        self.users.add(v.get("user_id") or v.get("request_id"))
        self.requests += 1
        self.errors += int(v.get("status", "ok") != "ok")
        lat = v.get("latency_ms")
        if lat is not None:
            self.lat_n += 1
            self.lat_sum += float(lat)
            self.lat_sq += float(lat) ** 2

    def label(self, flagged: bool, label: int) -> None:
        self.counts["pos" if label else "neg"] += 1
        if flagged:
            self.counts["tp" if label else "fp"] += 1

    def evidence(self) -> dict[str, Any]:
        n = self.lat_n
        mean = self.lat_sum / n if n else 0.0
        var = max(0.0, (self.lat_sq - n * mean * mean) / (n - 1)) if n > 1 else 0.0
        c = self.counts
        return {"users": len(self.users), "requests": self.requests, "metrics": {
            GOAL: {"successes": c["tp"], "n": c["pos"]},
            FPR: {"successes": c["fp"], "n": c["neg"]},
            ERRORS: {"successes": self.errors, "n": self.requests},
            LATENCY: {"mean": mean, "var": var, "n": n}}}
