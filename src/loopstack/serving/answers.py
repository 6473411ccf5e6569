"""What a prediction call deals in: the instances asked for (`Request`), what each was answered
(`Answer`: the value, the version and rung that gave it, the vector and assignment behind it) and the
errors that end a call without an answer (each maps to an HTTP status in serving/app.py)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from loopstack.serving.errors import ServingError
from loopstack.serving.router import Assignment


class NotReady(ServingError):
    """The model has no loaded version that can answer yet (HTTP 503)."""


class Unavailable(ServingError):
    """Every rung of the ladder failed (HTTP 503)."""


class DeadlineError(ServingError):
    """The request's deadline passed before any rung answered and there is no baseline (HTTP 504)."""


@dataclass(slots=True)
class Answer:
    prediction: Any
    version: int | None
    variant: str
    rung: str
    request_id: str
    cached: bool = False
    vector: list | None = None
    assignment: Assignment | None = None
    failures: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Request:
    entities: dict
    fields: dict
    user_id: str | None
    request_id: str
