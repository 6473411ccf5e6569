"""`ModelValidationGate`: the offline rung of the ladder. Absolute thresholds, regressions against
the production version, the gap between slices, and a measured latency budget.

    gate = ModelValidationGate(absolute={"precision": 0.95, "recall": 0.85},
                               relative={"guarded": {"auc": 0.01}, "primary": ("auc", 0.002)},
                               max_slice_gap={"recall": 0.1},
                               latency_budget_ms={"p99_batch1": 20, "p99_batch32": 50})
    decision = gate.evaluate(candidate_metrics, production_metrics, slice_metrics, predict_fn, sample)
    project.models.record_gate("models:/spam/4", decision)

Metrics named in `lower_is_better` (log_loss, ece, brier, ... by default) are compared the other way.
The checks themselves are pure; only the latency check calls `predict_fn`.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from loopstack.registry.errors import RegistryError

LOWER_IS_BETTER = ("log_loss", "logloss", "ece", "brier", "mse", "rmse", "mae", "latency_ms", "error_rate")
_LATENCY_KEY = re.compile(r"^p(\d+(?:\.\d+)?)_batch(\d+)$")


class GateReason(NamedTuple):
    check: str
    passed: bool
    detail: str


@dataclass
class GateDecision:
    passed: bool
    reasons: list[GateReason]
    measured: dict = field(default_factory=dict)
    evaluated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat())

    @property
    def failed(self) -> list[GateReason]:
        return [r for r in self.reasons if not r.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "reasons": [list(r) for r in self.reasons], "measured": self.measured,
                "evaluated_at": self.evaluated_at}

    @classmethod
    def from_dict(cls, d: Mapping) -> "GateDecision":
        return cls(bool(d["passed"]), [GateReason(str(c), bool(p), str(t)) for c, p, t in d["reasons"]],
                   dict(d.get("measured") or {}), d.get("evaluated_at") or "")

    def table(self, title: str | None = None):
        """A rich Table of every check (printable with rich.print / console.print)."""
        from rich.markup import escape
        from rich.table import Table
        verdict = "[green]PASSED[/]" if self.passed else "[red]FAILED[/]"
        t = Table(title=f"{title + ': ' if title else ''}validation gate {verdict}")
        t.add_column("check")
        t.add_column("result")
        t.add_column("detail")
        for r in self.reasons:
            t.add_row(escape(r.check), "[green]pass[/]" if r.passed else "[red]FAIL[/]", escape(r.detail))
        return t

    def __rich__(self):
        return self.table()


class ModelValidationGate:
    """Configuration of the checks; `evaluate` returns a GateDecision with every reason."""

    def __init__(self, absolute: Mapping[str, float] | None = None, relative: Mapping[str, Any] | None = None,
                 max_slice_gap: Mapping[str, float] | None = None,
                 latency_budget_ms: Mapping[str, float] | None = None, *, latency_repeats: int = 100,
                 latency_warmup: int = 3, lower_is_better: tuple[str, ...] = LOWER_IS_BETTER) -> None:
        self.absolute = _numbers(absolute, "absolute")
        relative = dict(relative or {})
        unknown = set(relative) - {"guarded", "primary"}
        if unknown:
            raise ValueError(f"relative takes 'guarded' and 'primary', not {sorted(unknown)}")
        self.guarded = _numbers(relative.get("guarded"), "relative['guarded']", minimum=0.0)
        primary = relative.get("primary")
        if primary is not None and (not isinstance(primary, (tuple, list)) or len(primary) != 2):
            raise ValueError("relative['primary'] must be (metric, min_improvement), e.g. ('auc', 0.002)")
        self.primary = None
        if primary:
            metric = str(primary[0])
            self.primary = (metric, _numbers({metric: primary[1]}, "relative['primary']")[metric])
        self.max_slice_gap = _numbers(max_slice_gap, "max_slice_gap", minimum=0.0)
        self.latency_budget_ms = _numbers(latency_budget_ms, "latency_budget_ms", minimum=0.0)
        for key in self.latency_budget_ms:
            mt = _LATENCY_KEY.match(key)
            if not mt or not 0 < float(mt.group(1)) <= 100 or int(mt.group(2)) < 1:
                raise ValueError(f"latency budget key {key!r} must look like 'p99_batch1' (a percentile in (0, 100], "
                                 "a batch size of at least 1)")
        self.latency_repeats, self.latency_warmup = int(latency_repeats), int(latency_warmup)
        if self.latency_repeats < 1 or self.latency_warmup < 0:
            raise ValueError(f"latency_repeats must be >= 1 and latency_warmup >= 0, not {latency_repeats} and "
                             f"{latency_warmup}")
        self.lower_is_better = set(lower_is_better)

    def config(self) -> dict:
        return {"absolute": self.absolute, "guarded": self.guarded, "primary": self.primary,
                "max_slice_gap": self.max_slice_gap, "latency_budget_ms": self.latency_budget_ms,
                "latency_repeats": self.latency_repeats}

    def _better(self, metric: str, value: float, bound: float) -> bool:
        return value <= bound if metric in self.lower_is_better else value >= bound

    def evaluate(self, candidate_metrics: Mapping[str, float], production_metrics: Mapping[str, float] | None = None,
                 slice_metrics: Mapping[str, Any] | None = None, predict_fn: Callable[[Any], Any] | None = None,
                 sample: Any = None) -> GateDecision:
        reasons: list[GateReason] = []
        measured: dict[str, Any] = {"config": self.config()}
        cand = dict(candidate_metrics or {})
        for m, thr in self.absolute.items():
            v = finite_number(cand.get(m))
            op = "<=" if m in self.lower_is_better else ">="
            if v is None:
                reasons.append(GateReason(f"absolute:{m}", False, f"candidate has no {m} metric (needs {op} {thr})"))
            else:
                reasons.append(GateReason(f"absolute:{m}", self._better(m, v, thr), f"{m} = {v:.4f}, needs {op} {thr}"))
        reasons += self._relative(cand, production_metrics)
        reasons += self._slices(slice_metrics)
        if self.latency_budget_ms:
            lat_reasons, lat = self._latency(predict_fn, sample)
            reasons += lat_reasons
            measured["latency_ms"] = lat
        return GateDecision(all(r.passed for r in reasons), reasons, measured)

    def _relative(self, cand: dict, prod: Mapping[str, float] | None) -> list[GateReason]:
        checks = [(f"guarded:{m}", m, eps) for m, eps in self.guarded.items()]
        if self.primary:
            checks.append((f"primary:{self.primary[0]}", self.primary[0], self.primary[1]))
        if not checks:
            return []
        if prod is None:
            return [GateReason(c, True, "no production version to compare with (first model): skipped")
                    for c, _, _ in checks]
        out = []
        for check, m, delta in checks:
            v, p = finite_number(cand.get(m)), finite_number(prod.get(m))
            if v is None or p is None:
                who = "candidate" if v is None else "production"
                out.append(GateReason(check, False, f"{who} has no {m} metric to compare"))
                continue
            low = m in self.lower_is_better
            diff = (p - v) if low else (v - p)   # > 0: candidate better
            if check.startswith("guarded"):
                ok = diff >= -delta - 1e-12
                out.append(GateReason(check, ok, f"{m} {v:.4f} vs production {p:.4f} (change {_signed(diff)}); "
                                                 f"may regress by at most {delta}"))
            else:
                ok = diff >= delta - 1e-12
                out.append(GateReason(check, ok, f"{m} {v:.4f} vs production {p:.4f} (improvement "
                                                 f"{_signed(diff)}); must improve by at least {delta}"))
        return out

    def _slices(self, slice_metrics: Mapping[str, Any] | None) -> list[GateReason]:
        out = []
        for m, max_gap in self.max_slice_gap.items():
            if not slice_metrics:
                out.append(GateReason(f"slice_gap:{m}", False, "no slice metrics given (slice_metrics=...)"))
                continue
            for group, slices in _slice_groups(slice_metrics).items():
                vals = {s: finite_number(ms.get(m)) for s, ms in slices.items()}
                vals = {s: v for s, v in vals.items() if v is not None}
                check = f"slice_gap:{m}" + (f":{group}" if group else "")
                if len(vals) < 2:
                    out.append(GateReason(check, False, f"fewer than two slices report {m}"))
                    continue
                lo, hi = min(vals, key=vals.get), max(vals, key=vals.get)
                gap = vals[hi] - vals[lo]
                out.append(GateReason(check, gap <= max_gap + 1e-12,
                                      f"{m} gap {gap:.4f} ({hi}={vals[hi]:.4f}, {lo}={vals[lo]:.4f}), max {max_gap}"))
        return out

    def _latency(self, predict_fn: Callable | None, sample: Any) -> tuple[list[GateReason], dict]:
        if predict_fn is None or sample is None:
            return [GateReason(f"latency:{k}", False, "not measured: pass predict_fn and sample")
                    for k in self.latency_budget_ms], {}
        if hasattr(sample, "__len__") and len(sample) == 0:   # predict on empty batches would always pass
            return [GateReason(f"latency:{k}", False, "not measured: sample has no rows")
                    for k in self.latency_budget_ms], {}
        measured: dict[str, float] = {}
        reasons = []
        cache: dict[int, np.ndarray] = {}
        for key, budget in self.latency_budget_ms.items():
            mt = _LATENCY_KEY.match(key)
            assert mt is not None
            pct, batch = float(mt.group(1)), int(mt.group(2))
            if batch not in cache:
                cache[batch] = measure_latency(predict_fn, sample, batch, self.latency_repeats, self.latency_warmup)
            value = float(np.percentile(cache[batch], pct))
            measured[key] = value
            reasons.append(GateReason(f"latency:{key}", value <= budget,
                                      f"p{mt.group(1)} predict at batch {batch} = {value:.2f} ms "
                                      f"({self.latency_repeats} calls), budget {budget} ms"))
        return reasons, measured


def decision_dict(decision: Any) -> dict:
    """A GateDecision (or its dict) as the dict the registry stores, its reasons as [check, passed, detail]
    triples; RegistryError if it is malformed, so a gate cannot pass on a string like "no"."""
    d = decision.to_dict() if hasattr(decision, "to_dict") else decision
    if not isinstance(d, Mapping) or "passed" not in d or "reasons" not in d:
        raise RegistryError("a gate decision needs 'passed' and 'reasons' (use ModelValidationGate.evaluate)")
    passed, reasons = d["passed"], d["reasons"]
    if not isinstance(passed, (bool, np.bool_)):
        raise RegistryError(f"gate decision 'passed' must be True or False, not {passed!r}")
    if isinstance(reasons, (str, bytes, Mapping)) or not hasattr(reasons, "__iter__"):
        raise RegistryError(f"gate decision 'reasons' must be a list of [check, passed, detail], not {reasons!r}")
    out = []
    for x in reasons:
        if isinstance(x, Mapping):
            x = (x.get("check"), x.get("passed"), x.get("detail", ""))
        if not isinstance(x, (list, tuple)) or len(x) != 3 or not isinstance(x[1], (bool, np.bool_)):
            raise RegistryError(f"gate reason {x!r} must be [check, passed, detail] with passed True or False, "
                                "e.g. ['absolute:auc', True, 'auc = 0.93, needs >= 0.9']")
        out.append([str(x[0]), bool(x[1]), str(x[2])])
    if passed and not all(ok for _, ok, _ in out):
        failed = [c for c, ok, _ in out if not ok]
        raise RegistryError(f"gate decision says passed but check(s) {', '.join(failed)} failed; a gate passes "
                            "only when every check does")
    return {**d, "passed": bool(passed), "reasons": out}


def measure_latency(predict_fn: Callable[[Any], Any], sample: Any, batch: int, repeats: int = 100,
                    warmup: int = 3) -> np.ndarray:
    """Milliseconds of `repeats` calls of predict_fn on `batch` rows of `sample` (rows tiled if fewer)."""
    rows = _batch(sample, batch)
    for _ in range(warmup):
        predict_fn(rows)
    out = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        predict_fn(rows)
        out[i] = (time.perf_counter() - t0) * 1000.0
    return out


def _batch(sample: Any, n: int) -> Any:
    if hasattr(sample, "iloc"):
        import pandas as pd
        reps = -(-n // max(len(sample), 1))
        return pd.concat([sample] * reps, ignore_index=True).iloc[:n] if reps > 1 else sample.iloc[:n]
    arr = np.asarray(sample)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    reps = -(-n // max(len(arr), 1))
    return np.concatenate([arr] * reps)[:n] if reps > 1 else arr[:n]


def _slice_groups(slice_metrics: Mapping[str, Any]) -> dict[str, dict[str, Mapping]]:
    """{slice: {metric: v}} -> {"": that}; {column: {value: {metric: v}}} -> per column."""
    first = next(iter(slice_metrics.values()))
    if isinstance(first, Mapping) and first and all(isinstance(v, Mapping) for v in first.values()):
        groups = {str(g): dict(s) if isinstance(s, Mapping) else {"": s} for g, s in slice_metrics.items()}
    else:
        groups = {"": dict(slice_metrics)}
    for g, slices in groups.items():
        for name, ms in slices.items():
            if not isinstance(ms, Mapping):
                raise ValueError(f"slice_metrics entry {g or name!r} is {ms!r}, not a dict of metrics: give "
                                 "{slice: {metric: value}} or {column: {value: {metric: value}}}, "
                                 "e.g. {'US': {'recall': 0.9}, 'DE': {'recall': 0.86}}")
    return groups


def _numbers(spec: Mapping[str, Any] | None, what: str, minimum: float | None = None) -> dict[str, Any]:
    """{metric: threshold} as finite floats (at least `minimum`); ValueError naming the bad entry, since a
    string or NaN threshold made evaluate() raise TypeError or fail every check."""
    if spec is not None and not isinstance(spec, Mapping):
        raise ValueError(f"{what} must be a dict of {{metric: number}}, not {type(spec).__name__}")
    out = {}
    for k, v in (spec or {}).items():
        f = finite_number(v) if not isinstance(v, (str, bool)) else None
        if f is None or (minimum is not None and f < minimum):
            raise ValueError(f"{what}[{k!r}] = {v!r} must be a finite number" +
                             (f" >= {minimum:g}" if minimum is not None else ""))
        out[str(k)] = v if type(v) in (int, float) else f   # as given, so details read "budget 50 ms"
    return out


def finite_number(v: Any) -> float | None:
    """`v` as a finite float, or None when it is missing, not a number, NaN or infinite (evidence is JSON)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _signed(x: float) -> str:
    return f"{x:+.4f}"
