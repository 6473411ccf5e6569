"""Settings of a model server (`loopstack serve` flags): which models, runtime, batching, ladder budgets,
breaker, cache, prediction log. Validated on construction; errors name the key, value and what is allowed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from loopstack.asgi import MAX_BODY_BYTES
from loopstack.registry.errors import ModelReferenceError
from loopstack.registry.refs import validate_alias
from loopstack.serving.batch_policy import MAX_LATENCY_MS
from loopstack.serving.batcher import BatchConfig
from loopstack.serving.errors import ServingConfigError
from loopstack.serving.ladder import CircuitBreaker

BREAKER_KEYS = ("window_s", "min_requests", "max_error_rate", "max_latency_s", "latency_quantile", "open_s",
                "half_open_probes")

RUNTIMES = ("thread", "process")
MAX_WAIT_S = 86_400   # a day: the longest wait setting (poll interval, timeouts)


@dataclass(frozen=True)
class ModelSpec:
    """One served model: registry name and the alias its production version is read from."""
    name: str
    alias: str = "production"

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """`spam` or `spam@champion` (also accepts `models:/spam@champion`)."""
        t = text.strip().removeprefix("models:/")
        name, at, alias = t.partition("@")
        if not name or "/" in name or (at and not alias.strip()):
            raise ServingConfigError(f"--model {text!r}: give a registered model name, optionally with an alias, "
                                     "e.g. spam or spam@production")
        if alias:
            try:
                validate_alias(alias)
            except ModelReferenceError as exc:
                raise ServingConfigError(f"--model {text!r}: {exc}") from None
        return cls(name, alias or "production")


def _specs(models: Any) -> tuple[ModelSpec, ...]:
    """The served models as ModelSpecs: "spam" / "spam@champion" text is parsed as --model is (one string is
    one model, not its letters); anything else is an error naming it."""
    if isinstance(models, (str, ModelSpec)):
        models = (models,)
    out = []
    for m in models:
        if isinstance(m, str):
            m = ModelSpec.parse(m)
        elif not isinstance(m, ModelSpec) or not isinstance(m.name, str) or not isinstance(m.alias, str):
            raise ServingConfigError(f"serving setting models: {m!r} is not a model: give ModelSpec('spam') or "
                                     "text such as 'spam' or 'spam@champion'")
        else:
            ModelSpec.parse(f"{m.name}@{m.alias}")   # the same checks as --model NAME@ALIAS
        out.append(m)
    return tuple(out)


def _positive(key: str, value: Any, allow_zero: bool = False, most: float = math.inf) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and (value >= 0 if allow_zero else value > 0) and value <= most
    if not ok:
        raise ServingConfigError(f"serving setting {key}={value!r} is not allowed: use a number "
                                 f"{'>= 0' if allow_zero else '> 0'}" + (f" and at most {most:_g}" if most < math.inf
                                                                         else ""))


def _check_breaker(breaker: Any) -> None:
    """ServingConfigError unless `breaker` makes a circuit breaker (checked here, not at every version's load)."""
    if not isinstance(breaker, Mapping):
        raise ServingConfigError(f"serving setting breaker={breaker!r} is not allowed: use a mapping of circuit "
                                 f"breaker settings ({', '.join(BREAKER_KEYS)})")
    unknown = sorted(set(map(str, breaker)) - set(BREAKER_KEYS))
    if unknown:
        raise ServingConfigError(f"unknown circuit breaker setting(s) {unknown}: use {', '.join(BREAKER_KEYS)}")
    CircuitBreaker(**breaker)   # raises ServingConfigError naming the key and what is allowed


@dataclass(frozen=True)
class ServingConfig:
    """Everything a model server is configured with (defaults are the documented ones)."""
    models: tuple[ModelSpec, ...] = ()
    runtime: str = "thread"                  # thread: in-process; process: a supervised worker process per version
    batch: BatchConfig = field(default_factory=BatchConfig)
    poll_interval_s: float = 1.0             # registry generation + traffic settings, per model
    default_deadline_ms: float = 2000.0      # a request without deadline_ms gets this much time
    model_budget_ms: float = 1000.0          # the model rung's share of the deadline
    fallback_budget_ms: float = 500.0        # the fallback rung's
    breaker: dict = field(default_factory=lambda: {"window_s": 10.0, "min_requests": 20, "max_error_rate": 0.5,
                                                   "open_s": 5.0, "half_open_probes": 3})
    cache_entries: int = 10_000              # 0: no result cache
    cache_ttl_s: float = 60.0
    feature_sample: float = 0.01             # share of predictions logged with their full feature vector
    disagreement: float = 0.1                # |shadow - production| above this is a disagreement (logged in full)
    log_predictions: bool = True
    log_queue: int = 10_000                  # prediction-log records waiting for the writer, at most
    max_instances: int = 1000                # per :predict_batch request
    max_body_bytes: int = MAX_BODY_BYTES     # a larger request body gets 413 (the server never buffers more)
    batch_timeout_s: float = 30.0            # process runtime: a batch running longer means a hung worker
    load_timeout_s: float = 120.0            # process runtime: worker start + model load
    drain_timeout_s: float = 10.0            # hot swap / shutdown: wait this long for in-flight requests

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", _specs(self.models))
        if self.runtime not in RUNTIMES:
            raise ServingConfigError(f"serving setting runtime={self.runtime!r} is not allowed: use one of "
                                     f"{', '.join(RUNTIMES)}")
        # waits past the platform's longest timed wait raised OverflowError in the watcher / at shutdown; a
        # budget or default deadline is at most what a request may ask for (deadline_ms)
        for key in ("default_deadline_ms", "model_budget_ms", "fallback_budget_ms"):
            _positive(key, getattr(self, key), most=MAX_LATENCY_MS)
        for key in ("poll_interval_s", "batch_timeout_s", "load_timeout_s"):
            _positive(key, getattr(self, key), most=MAX_WAIT_S)
        _positive("cache_ttl_s", self.cache_ttl_s)
        _positive("disagreement", self.disagreement, allow_zero=True)
        _positive("drain_timeout_s", self.drain_timeout_s, allow_zero=True, most=MAX_WAIT_S)
        fs = self.feature_sample
        if isinstance(fs, bool) or not isinstance(fs, (int, float)) or not 0 <= fs <= 1:
            raise ServingConfigError(f"serving setting feature_sample={self.feature_sample!r} is not allowed: "
                                     "use a fraction from 0 to 1")
        for key in ("cache_entries", "log_queue", "max_instances", "max_body_bytes"):
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if key == "cache_entries" else 1):
                raise ServingConfigError(f"serving setting {key}={v!r} is not allowed: use an integer "
                                         f"{'>= 0' if key == 'cache_entries' else '>= 1'}")
        _check_breaker(self.breaker)
        names = [m.name for m in self.models]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ServingConfigError(f"model(s) {dup} given more than once: serve each model once")
