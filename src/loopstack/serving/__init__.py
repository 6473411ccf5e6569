"""Box 7: model serving (dynamic batching, traffic routing, graceful degradation, result cache)."""
from loopstack.serving.batcher import (BatchConfig, BatcherClosed, DeadlineExceeded, DynamicBatcher, QueueFull,
                                       decide)
from loopstack.serving.cache import ResultCache, cache_key
from loopstack.serving.errors import NoRoute, ServingConfigError, ServingError
from loopstack.serving.ladder import CircuitBreaker, Rung, plan_rungs
from loopstack.serving.router import Assignment, TrafficPolicy, policy_from_states, route, validate_settings

__all__ = ["Assignment", "BatchConfig", "BatcherClosed", "CircuitBreaker", "DeadlineExceeded", "DynamicBatcher",
           "NoRoute", "QueueFull", "ResultCache", "Rung", "ServingConfigError", "ServingError", "TrafficPolicy",
           "cache_key", "decide", "plan_rungs", "policy_from_states", "route", "validate_settings"]
from loopstack.serving.config import ModelSpec, ServingConfig  # noqa: E402 - appended by the app helper
from loopstack.serving.policy_store import PolicyStore  # noqa: E402

__all__ += ["ModelSpec", "PolicyStore", "ServingConfig"]
