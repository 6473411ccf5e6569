"""The traffic router: which model version answers a user, from the registry's rollout states. Pure.

``policy_from_states`` turns the registry (version states + production history) and the stored traffic
settings into a ``TrafficPolicy``; ``route`` assigns one request. Assignment is by a hash of the user id
(``loopstack.experiments.bucket``), so a user sees the same version on every request and every replica,
and raising a percentage only ever adds users (bucket < threshold). Each rule hashes with its own salt
(``<model>:holdback``, ``<model>:canary``, the experiment salt), so their populations are independent.

Precedence: holdback -> experiment -> canary -> production. Requests without a user id cannot be sticky,
so they go to production (never to a canary or an experiment). Shadow copies are sampled per request id
and only for requests production answered: the user never waits for the shadow.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping, Sequence

from loopstack.experiments.assignment import assign, bucket
from loopstack.serving.errors import NoRoute, ServingConfigError

BUCKETS = 10_000
PRODUCTION, CANARY, HOLDBACK, CONTROL = "production", "canary", "holdback", "control"

#: Keys of the stored traffic settings (``loopstack models traffic``); anything else is a typo.
SETTINGS_KEYS: tuple[str, ...] = ("canary_percent", "shadow_sample", "experiment_weights", "experiment_percent",
                                  "experiment_salt", "holdback_percent", "fallback", "baseline")
_PERCENTS = ("canary_percent", "experiment_percent", "holdback_percent")


def _bad(key: str, value: Any, allowed: str) -> ServingConfigError:
    return ServingConfigError(f"traffic setting {key}={value!r} is not allowed: use {allowed}")


def _number(key: str, value: Any, lo: float, hi: float, allowed: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise _bad(key, value, allowed)
    return float(value)


def _version(key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(key, value, "a model version number (an integer >= 1) or nothing")
    return value


def _weights(value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise _bad("experiment_weights", value, 'a mapping of variant name to weight, e.g. {"control": 50, "v7": 50}')
    out = {}
    for name, w in value.items():
        out[str(name)] = _number(f"experiment_weights[{name!r}]", w, 0.0, math.inf, "a finite weight >= 0")
    return out


@dataclass(frozen=True)
class TrafficPolicy:
    """Which versions serve a model's traffic, and how much of it. Validated on construction.

    ``experiment`` maps variant name -> version; "control" means the production version and is implied
    when absent. The experiment is active once it has a variant other than control. ``experiment_weights``
    defaults to equal weights; a variant missing from explicit weights gets weight 0 (no users).
    ``experiment_salt`` defaults to ``"<model>:exp:<sorted non-control versions>"``, so a new experiment
    reshuffles users while an unchanged one keeps them. ``notes`` explains settings that were ignored.
    """
    model: str
    production: int | None
    shadow: int | None = None
    shadow_sample: float = 1.0
    canary: int | None = None
    canary_percent: float = 5.0
    experiment: Mapping[str, int] = field(default_factory=dict)
    experiment_weights: Mapping[str, float] = field(default_factory=dict)
    experiment_percent: float = 100.0
    experiment_salt: str = ""
    holdback: int | None = None
    holdback_percent: float = 2.0
    fallback: int | None = None
    baseline: Any = None
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise ServingConfigError(f"traffic policy needs a model name, got {self.model!r}")
        for key in ("production", "shadow", "canary", "holdback", "fallback"):
            _version(key, getattr(self, key))
        for key in _PERCENTS:
            object.__setattr__(self, key, _number(key, getattr(self, key), 0, 100, "a percentage from 0 to 100"))
        object.__setattr__(self, "shadow_sample",
                           _number("shadow_sample", self.shadow_sample, 0, 1, "a fraction from 0 to 1"))
        if not isinstance(self.experiment, Mapping):
            raise _bad("experiment", self.experiment, "a mapping of variant name to version")
        experiment = {str(k): _version(f"experiment[{k!r}]", v) for k, v in self.experiment.items()}
        if any(v is None for v in experiment.values()):
            raise _bad("experiment", self.experiment, "a version number for every variant")
        variants: dict[str, int] = {}
        if self.production is not None and CONTROL not in experiment and experiment:
            variants[CONTROL] = self.production
        variants.update(experiment)  # type: ignore[arg-type]
        weights = _weights(self.experiment_weights)
        unknown = sorted(set(weights) - set(variants))
        if unknown:
            raise _bad("experiment_weights", dict(self.experiment_weights),
                       f"weights only for the experiment's variants {sorted(variants)} (unknown: {unknown})")
        if variants:
            weights = {name: weights.get(name, 0.0) for name in variants} if weights \
                else dict.fromkeys(variants, 1.0)
            if sum(weights.values()) <= 0:
                raise _bad("experiment_weights", dict(self.experiment_weights),
                           "weights that give at least one variant a positive share")
        if not isinstance(self.experiment_salt, str):
            raise _bad("experiment_salt", self.experiment_salt, "a string")
        salt = self.experiment_salt or (
            f"{self.model}:exp:" + ",".join(str(v) for v in sorted(v for k, v in variants.items() if k != CONTROL)))
        object.__setattr__(self, "experiment", MappingProxyType(experiment))
        object.__setattr__(self, "experiment_weights", MappingProxyType(weights))
        object.__setattr__(self, "experiment_salt", salt)
        object.__setattr__(self, "notes", tuple(self.notes))
        object.__setattr__(self, "_variants", MappingProxyType(variants))

    @property
    def variants(self) -> Mapping[str, int]:
        """Experiment variants with the implied control included (empty: no experiment)."""
        return self._variants  # type: ignore[attr-defined]

    @property
    def experiment_active(self) -> bool:
        return any(name != CONTROL for name in self.variants)

    def default_route(self) -> tuple[str, int] | None:
        """(variant, version) for users no rule selects: production, else the only rolled-out version."""
        if self.production is not None:
            return PRODUCTION, self.production
        if self.canary is not None:
            return CANARY, self.canary
        if self.experiment_active:
            name = sorted(self.variants)[0]
            return name, self.variants[name]
        return None

    def versions(self) -> set[int]:
        """Every version this policy may send traffic to (answers, shadow copies and the fallback rung)."""
        vs = {self.production, self.shadow, self.canary, self.holdback, self.fallback, *self.variants.values()}
        return {v for v in vs if v is not None}


@dataclass(frozen=True)
class Assignment:
    """Where one request goes. ``bucket``: the user's bucket (0..9999) under the deciding rule's salt
    (the canary salt for production), or -1 without a user id."""
    variant: str
    version: int
    shadow_version: int | None
    bucket: int


def route(policy: TrafficPolicy, user_id: str | None, request_id: str) -> Assignment:
    """Assign one request: holdback -> experiment -> canary -> production, sticky per user id.

    Without a user id the request goes to production. With no production version (a first rollout) every
    user goes to the canary (or the first experiment variant): it is the only version there is. Raises
    NoRoute when no version at all could answer.
    """
    default = policy.default_route()
    if default is None:
        raise NoRoute(f"model {policy.model!r} has no version that can answer: no production version and no "
                      f"canary or experiment version. Promote one, e.g. "
                      f"`loopstack models promote models:/{policy.model}/<version> production --reason ...`")
    variant, version = default
    b = -1
    if user_id is not None and str(user_id) != "":
        uid = str(user_id)
        variant, version, b = _route_user(policy, uid, default)
    shadow = None
    if policy.shadow is not None and variant == PRODUCTION and policy.shadow != version and policy.shadow_sample > 0:
        if policy.shadow_sample >= 1 or bucket(str(request_id), f"{policy.model}:shadow") < \
                policy.shadow_sample * BUCKETS:
            shadow = policy.shadow
    return Assignment(variant, version, shadow, b)


def route_many(policy: TrafficPolicy, user_ids: Sequence[str | None], request_ids: Sequence[str]
               ) -> list[Assignment]:
    """``[route(policy, u, r) for u, r in zip(user_ids, request_ids)]``, computing each distinct user's
    assignment once (the instances of a batch request mostly share one user, or have none). Assignment
    depends on the user id alone unless shadow copies are sampled (0 < shadow_sample < 1: sampled per
    request id); then every request is routed on its own."""
    if policy.shadow is not None and 0 < policy.shadow_sample < 1:
        return [route(policy, u, r) for u, r in zip(user_ids, request_ids)]
    if len(set(user_ids)) == 1:
        return [route(policy, user_ids[0], request_ids[0])] * len(user_ids)
    memo: dict[Any, Assignment] = {}
    out = []
    for u, r in zip(user_ids, request_ids):
        a = memo.get(u)
        if a is None:
            a = memo[u] = route(policy, u, r)
        out.append(a)
    return out


def _route_user(policy: TrafficPolicy, uid: str, default: tuple[str, int]) -> tuple[str, int, int]:
    if policy.holdback is not None and policy.holdback_percent > 0:
        b = bucket(uid, f"{policy.model}:holdback")
        if b < policy.holdback_percent * (BUCKETS / 100):
            return HOLDBACK, policy.holdback, b
    if policy.experiment_active and policy.experiment_percent > 0:
        salt = policy.experiment_salt
        if policy.experiment_percent >= 100 or bucket(uid, f"{salt}:enrol") < \
                policy.experiment_percent * (BUCKETS / 100):
            name = assign(uid, salt, policy.experiment_weights)
            return name, policy.variants[name], bucket(uid, salt)
    b = bucket(uid, f"{policy.model}:canary")
    if policy.canary is not None and b < policy.canary_percent * (BUCKETS / 100):
        return CANARY, policy.canary, b
    return default[0], default[1], b


def check_steps(settings: Mapping[str, Any]) -> None:
    """New traffic settings must be reachable with `BUCKETS` user buckets: percentages in steps of 0.01 and
    `shadow_sample` in steps of 0.0001 (a finer value would be rounded up to the next bucket)."""
    for key, value in settings.items():
        scale = BUCKETS / 100 if key in _PERCENTS else BUCKETS if key == "shadow_sample" else None
        if scale is not None and abs(value * scale - round(value * scale)) > 1e-6:
            step = "0.01" if key in _PERCENTS else "0.0001"
            raise _bad(key, value, f"a multiple of {step} (users are split into {BUCKETS:,} buckets, so "
                                   f"{value} would reach {math.ceil(value * scale - 1e-6) / scale:g}): e.g. "
                                   f"{round(value * scale) / scale or 1 / scale:g}")


def validate_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Check stored traffic settings (keys, types, ranges) and return a clean copy; raises ServingConfigError."""
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise ServingConfigError(f"traffic settings must be a mapping of setting to value, got {settings!r}")
    unknown = sorted(set(map(str, settings)) - set(SETTINGS_KEYS))
    if unknown:
        raise ServingConfigError(f"unknown traffic setting(s) {unknown}: use {', '.join(SETTINGS_KEYS)}")
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if key in _PERCENTS:
            out[key] = _number(key, value, 0, 100, "a percentage from 0 to 100")
        elif key == "shadow_sample":
            out[key] = _number(key, value, 0, 1, "a fraction from 0 to 1")
        elif key == "experiment_weights":
            out[key] = _weights(value)
            if out[key] and sum(out[key].values()) <= 0:
                raise _bad(key, value, "weights that give at least one variant a positive share")
        elif key == "experiment_salt":
            if not isinstance(value, str):
                raise _bad(key, value, "a string (empty: derived from the experiment's versions)")
            out[key] = value
        elif key == "fallback":
            out[key] = _version(key, value)
        else:  # baseline: any JSON value, served as-is
            out[key] = value
    return out


def policy_from_states(model: str, states: Mapping[int, str], production_history: Sequence[int],
                       settings: Mapping[str, Any]) -> TrafficPolicy:
    """Build the traffic policy from registry state (``{version: state}``, production stack oldest first).

    - production: the top of the history if it is in state production (else the highest version in
      state production); previous production: the latest other version in the history that still exists
      (usually archived: promoting a version archives the one it replaces, and archived artifacts stay
      loadable).
    - shadow / canary: the highest version in that state; experiment: every version in state experiment,
      as variant ``"v<version>"``, plus ``"control"`` (production).
    - holdback is opt-in: only when settings give ``holdback_percent > 0``, it keeps that % of users on the
      previous production version. It is off by default because the previous version may have been
      replaced for a reason.
    - fallback (the ladder's fallback rung): settings ``fallback`` if that version exists, else the previous
      production version.
    Stale settings (weights of variants that left the experiment, a fallback that does not exist) are
    ignored with a note in ``policy.notes`` rather than failing every request.
    """
    clean = validate_settings(settings)
    st = {int(v): str(s).strip().lower() for v, s in states.items()}
    notes: list[str] = []
    history = [int(v) for v in production_history]
    production = history[-1] if history and st.get(history[-1]) == PRODUCTION else None
    if production is None:
        in_prod = [v for v, s in st.items() if s == PRODUCTION]
        production = max(in_prod) if in_prod else None
    earlier = [v for v in history if v != production and v in st]
    previous = earlier[-1] if earlier else None

    def highest(state: str) -> int | None:
        vs = [v for v, s in st.items() if s == state]
        return max(vs) if vs else None

    experiment: dict[str, int] = {}
    exp_versions = sorted(v for v, s in st.items() if s == "experiment")
    if exp_versions:
        if production is not None:
            experiment[CONTROL] = production
        experiment.update({f"v{v}": v for v in exp_versions})
    weights = clean.get("experiment_weights", {})
    stale = sorted(set(weights) - set(experiment))
    if stale:
        notes.append(f"experiment_weights for {stale} ignored: not variants of the current experiment "
                     f"{sorted(experiment)}")
    weights = {k: w for k, w in weights.items() if k in experiment}
    if weights and sum(weights.values()) <= 0:
        notes.append("experiment_weights give every current variant weight 0: using equal weights")
        weights = {}

    holdback_percent = clean.get("holdback_percent", 0.0)
    holdback = previous if holdback_percent > 0 else None
    if holdback_percent > 0 and previous is None:
        notes.append(f"holdback_percent={holdback_percent} ignored: there is no previous production version")
    fallback = clean.get("fallback")
    if fallback is not None and fallback not in st:
        notes.append(f"fallback version {fallback} ignored: model {model!r} has no such version")
        fallback = None
    if fallback is None:
        fallback = previous

    return TrafficPolicy(
        model=model, production=production, shadow=highest("shadow"),
        shadow_sample=clean.get("shadow_sample", 1.0), canary=highest("canary"),
        canary_percent=clean.get("canary_percent", 5.0), experiment=experiment, experiment_weights=weights,
        experiment_percent=clean.get("experiment_percent", 100.0), experiment_salt=clean.get("experiment_salt", ""),
        holdback=holdback, holdback_percent=holdback_percent, fallback=fallback, baseline=clean.get("baseline"),
        notes=tuple(notes))
