"""Errors a user can cause. Each message says what was wrong and what to do about it."""
from __future__ import annotations


class LoopstackError(Exception):
    """Base of all loopstack errors."""


class ConfigError(LoopstackError):
    """loopstack.yaml or an environment override is invalid."""


class DefinitionError(LoopstackError):
    """A feature definition (entity, source, view) is invalid."""


class FeatureReferenceError(LoopstackError, KeyError):
    """A feature reference ("view:feature") names nothing that was applied."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class RetrievalError(LoopstackError):
    """Bad input to historical or online feature retrieval."""


class LogError(LoopstackError):
    """Misuse of the event log (unknown topic, bad partition, ...)."""


class MetadataError(LoopstackError):
    """The metadata store is unreachable or its schema is incompatible."""
