"""Request and response models of the model server (they are its OpenAPI spec)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

EntityValue = StrictInt | StrictStr
Scalar = StrictStr | StrictInt | StrictFloat | StrictBool | None
UserId = StrictStr | StrictInt

_ENTITIES = "Entity keys: join key -> value (int or string), e.g. {\"author_id\": 42}."
_FIELDS = ("Request-time fields: values the model or its on-demand features read from the request "
           "(e.g. the text of the comment being scored).")
_USER = "Stable user id: canary, experiment and holdback assignment hash it (sticky). Without it: production."
_DEADLINE = "Time budget for the whole request in ms (default: the server's --deadline-ms)."


class PredictRequest(BaseModel):
    """One prediction."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"entities": {"author_id": 42}, "fields": {"text": "free prize, click now", "n_urls": 2, "new_account": 1},
         "user_id": "u-17", "deadline_ms": 200}]})
    entities: dict[str, EntityValue] = Field(default_factory=dict, description=_ENTITIES)
    fields: dict[str, Scalar] = Field(default_factory=dict, description=_FIELDS)
    user_id: UserId | None = Field(None, description=_USER)
    deadline_ms: float | None = Field(None, gt=0, le=600_000, description=_DEADLINE)


class Instance(BaseModel):
    """One row of a batch request; `user_id` overrides the request's."""
    model_config = ConfigDict(extra="forbid")
    entities: dict[str, EntityValue] = Field(default_factory=dict, description=_ENTITIES)
    fields: dict[str, Scalar] = Field(default_factory=dict, description=_FIELDS)
    user_id: UserId | None = Field(None, description=_USER)


class PredictBatchRequest(BaseModel):
    """Several predictions in one call; each instance is routed, batched and answered on its own."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instances": [{"entities": {"author_id": 42}, "fields": {"text": "hi", "n_urls": 0, "new_account": 0}},
                       {"entities": {"author_id": 7}, "fields": {"text": "win", "n_urls": 3, "new_account": 1}}],
         "user_id": "u-17"}]})
    instances: list[Instance] = Field(min_length=1, description="The rows to predict (at most --max-instances).")
    user_id: UserId | None = Field(None, description=_USER)
    deadline_ms: float | None = Field(None, gt=0, le=600_000, description=_DEADLINE)


Rung = Literal["model", "fallback", "baseline"]


class PredictResponse(BaseModel):
    prediction: Any = Field(description="The model's output (a score for classifiers), or the static baseline.")
    model: str
    version: int | None = Field(description="Version that answered (None for the static baseline).")
    variant: str = Field(description="production | canary | holdback | an experiment variant (control, v<N>).")
    rung: Rung = Field(description="Ladder rung that answered: model, fallback (another version) or baseline.")
    request_id: str
    cached: bool = Field(False, description="Answered from the result cache.")
    latency_ms: float


class BatchItem(BaseModel):
    prediction: Any
    version: int | None
    variant: str
    rung: Rung
    request_id: str = Field(description="<request id>:<index>")
    cached: bool = False


class PredictBatchResponse(BaseModel):
    model: str
    predictions: list[BatchItem]
    request_id: str
    latency_ms: float


class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a machine-readable code, a sentence saying what was wrong and what to do."""
    error: Literal["invalid_json", "invalid_request", "invalid_input", "unknown_model", "overloaded",
                   "deadline_exceeded", "unavailable", "not_ready", "not_found", "internal"]
    detail: str
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = Field(None, description="With invalid_request: each problem.")


class ModelStatus(BaseModel):
    name: str
    alias: str
    ready: bool
    policy: dict[str, Any] | None
    versions: list[dict[str, Any]]
    refused: dict[str, str]
    notes: list[str]
    error: str | None = None


class ModelsResponse(BaseModel):
    models: list[ModelStatus]


class HealthResponse(BaseModel):
    status: Literal["ok"]
    uptime_seconds: float


class ReadyResponse(BaseModel):
    ready: bool
    models: dict[str, dict[str, Any]]
