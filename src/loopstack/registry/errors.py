"""Errors of the model registry. Each message says what was wrong and what to do about it."""
from __future__ import annotations

from loopstack.errors import LoopstackError


class RegistryError(LoopstackError):
    """Misuse of the model registry (unknown model, bad signature, ...)."""


class ModelReferenceError(RegistryError, ValueError):
    """A model reference (``models:/name/3``, ``models:/name@alias``) is malformed or names nothing."""


class TransitionError(RegistryError):
    """A rollout-state transition the stage machine does not allow (or not without an override)."""


class ConcurrentUpdateError(RegistryError):
    """Another process changed the model between reading it and writing it; the write was refused."""


class ArtifactIntegrityError(RegistryError):
    """A stored model artifact does not match the sha256 recorded at registration (tampered or corrupt)."""
