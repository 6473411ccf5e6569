"""Errors of the serving box. Each message says what was wrong and what to do about it."""
from __future__ import annotations

from loopstack.errors import LoopstackError


class ServingError(LoopstackError):
    """Base of every error the model server raises on purpose."""


class ServingConfigError(ServingError, ValueError):
    """A serving setting (batching, traffic policy, breaker, cache) has a value that is not allowed."""


class NoRoute(ServingError):
    """The traffic policy has no version that could answer (no production version and no variant)."""
