"""Alert rules: parsed from the ``monitoring.rules`` config and evaluated on window summaries (pure).

A rule is ``{metric: psi, feature: "*", op: ">", value: 0.2, severity: act}``: fire when the metric of a
window compares true against ``value``. ``feature`` applies only to per-feature metrics (``*`` = every
feature, or one name). A metric a window cannot answer (too few samples, labels not final, no
reference profile) is ``None`` and never fires. This module imports nothing heavy, so `config.py` can
validate rules when it reads loopstack.yaml.
"""
from __future__ import annotations

import json
import math
import operator
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from loopstack.errors import ConfigError

SYSTEM_METRICS = ("requests", "errors", "error_rate", "p50_latency_ms", "p99_latency_ms", "fallback_rate",
                  "mean_batch_size", "queue_depth_mean", "queue_depth_max")
FEATURE_METRICS = ("psi", "js", "ks", "ks_p", "chi2_p", "null_rate", "null_rate_increase", "out_of_range",
                   "unseen")
MODEL_METRICS = ("score_psi", "score_js", "score_ks", "mean_score", "mean_score_shift", "high_score_share",
                 "high_score_share_change", "ece")
PRODUCT_METRICS = ("precision", "recall", "flagged_rate", "positive_rate", "label_coverage")
METRICS = SYSTEM_METRICS + FEATURE_METRICS + MODEL_METRICS + PRODUCT_METRICS
LAYERS = {**{m: "system" for m in SYSTEM_METRICS}, **{m: "data" for m in FEATURE_METRICS},
          **{m: "model" for m in MODEL_METRICS}, **{m: "product" for m in PRODUCT_METRICS}}
OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
       "!=": operator.ne}
SEVERITIES = ("info", "watch", "act")

DEFAULT_RULES: tuple[dict, ...] = (
    {"metric": "psi", "feature": "*", "op": ">", "value": 0.2, "severity": "act"},
    {"metric": "null_rate_increase", "feature": "*", "op": ">", "value": 0.05, "severity": "act"},
    {"metric": "out_of_range", "feature": "*", "op": ">", "value": 0.05, "severity": "act"},
    {"metric": "score_psi", "op": ">", "value": 0.2, "severity": "act"},
    {"metric": "recall", "op": "<", "value": 0.85, "severity": "act"},
    {"metric": "precision", "op": "<", "value": 0.95, "severity": "act"},
    {"metric": "error_rate", "op": ">", "value": 0.01, "severity": "act"},
    {"metric": "p99_latency_ms", "op": ">", "value": 200, "severity": "watch"},
)


@dataclass(frozen=True)
class Rule:
    """One alert rule (see module doc)."""

    metric: str
    op: str
    value: float
    severity: str = "act"
    feature: str | None = None
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        feat = f"[{self.feature}]" if self.feature else ""
        return f"{self.metric}{feat} {self.op} {self.value:g}"

    def fires(self, value: float | None) -> bool:
        return value is not None and value == value and OPS[self.op](value, self.value)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"metric": self.metric, "op": self.op, "value": self.value, "severity": self.severity}
        if self.feature is not None:
            d["feature"] = self.feature
        if self.name:
            d["name"] = self.name
        return d


def parse_rule(raw: Any, where: str = "monitoring.rules") -> Rule:
    """A `Rule` from its config mapping; ConfigError naming the bad key and what is allowed."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: a rule is a mapping like {{metric: psi, feature: '*', op: '>', value: 0.2}}, "
                          f"got {raw!r}")
    unknown = sorted(set(raw) - {"metric", "feature", "op", "value", "severity", "name"})
    if unknown:
        raise ConfigError(f"{where}: unknown rule key(s) {unknown}; allowed: metric, feature, op, value, severity, "
                          "name")
    metric = raw.get("metric")
    if metric not in METRICS:
        raise ConfigError(f"{where}: metric {metric!r} is not known; choose one of: {', '.join(METRICS)}")
    op = str(raw.get("op", ">"))
    if op not in OPS:
        raise ConfigError(f"{where}: op {op!r} is not allowed; choose one of: {', '.join(OPS)}")
    try:
        value = float(raw["value"])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f"{where}: rule for {metric} needs a numeric value, got {raw.get('value')!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{where}: rule for {metric} needs a finite value, got {raw.get('value')!r} (a comparison "
                          "with NaN never fires, with inf always or never)")
    severity = str(raw.get("severity", "act"))
    if severity not in SEVERITIES:
        raise ConfigError(f"{where}: severity {severity!r} is not allowed; choose one of: {', '.join(SEVERITIES)}")
    feature = raw.get("feature")
    if metric in FEATURE_METRICS:
        feature = "*" if feature is None else str(feature)
    elif feature is not None:
        raise ConfigError(f"{where}: metric {metric!r} is not per feature; remove feature: {feature!r} (per-feature "
                          f"metrics: {', '.join(FEATURE_METRICS)})")
    return Rule(str(metric), op, value, severity, feature, str(raw.get("name") or ""))


def parse_rules(raw: Any) -> tuple[Rule, ...]:
    """Rules from config: a list of mappings, or its JSON/YAML text (environment override)."""
    if isinstance(raw, str):
        import yaml
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f"monitoring.rules is not valid YAML/JSON: {exc}") from None
    if raw is None:
        return ()
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"monitoring.rules must be a list of rules, got {type(raw).__name__}")
    return tuple(parse_rule(r, f"monitoring.rules[{i}]") for i, r in enumerate(raw))


@dataclass(frozen=True)
class Firing:
    """A rule that fired on one window (and feature): what to store and print as an alert."""

    rule: Rule
    feature: str | None
    value: float

    @property
    def message(self) -> str:
        feat = f" of {self.feature}" if self.feature else ""
        return f"{self.rule.metric}{feat} = {self.value:.4g} {self.rule.op} {self.rule.value:g} ({self.rule.severity})"

    @property
    def key(self) -> str:
        return json.dumps([self.rule.to_dict(), self.feature], sort_keys=True)


def evaluate(rules: Iterable[Rule], metrics: Mapping[str, Any],
             feature_metrics: Mapping[str, Mapping[str, Any]]) -> list[Firing]:
    """Every (rule, feature) that fires: ``metrics`` is metric -> value, ``feature_metrics`` feature ->
    metric -> value (None = cannot tell, never fires)."""
    out: list[Firing] = []
    for rule in rules:
        if rule.metric in FEATURE_METRICS:
            names = sorted(feature_metrics) if rule.feature in (None, "*") else [rule.feature]
            for f in names:
                v = (feature_metrics.get(f) or {}).get(rule.metric)
                if rule.fires(v):
                    out.append(Firing(rule, f, float(v)))
        else:
            v = metrics.get(rule.metric)
            if rule.fires(v):
                out.append(Firing(rule, None, float(v)))
    return out
