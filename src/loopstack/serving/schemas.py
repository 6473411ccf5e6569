"""Request and response models of the model server (they are its OpenAPI spec)."""
from __future__ import annotations

from itertools import chain
from operator import itemgetter
from typing import Annotated, Any, Literal

from pydantic import (AllowInfNan, BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, StrictStr,
                      field_validator, model_validator)

EntityValue = StrictInt | StrictStr
# a finite float: JSON has no NaN or Infinity (orjson refuses them; Python's json reads them), and one such value
# would make the model fail the whole batch it shares with other requests
FiniteFloat = Annotated[float, Strict(), AllowInfNan(False)]
Scalar = StrictStr | StrictInt | FiniteFloat | StrictBool | None


UserId = StrictStr | StrictInt


def _utf8_user(value: Any) -> Any:
    """A user id that can be hashed and logged: a JSON escape such as \\ud800 gives a lone surrogate, which
    UTF-8 cannot encode (only Python's JSON reader takes it; the fast path's orjson refuses the body)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("the user id holds a lone surrogate (e.g. from the JSON escape \\ud800), which is "
                             "not valid Unicode: send it as UTF-8 text") from None
    return value


_ENTITIES = "Entity keys: join key -> value (int or string), e.g. {\"author_id\": 42}."
_FIELDS = ("Request-time fields: values the model or its on-demand features read from the request "
           "(e.g. the text of the comment being scored).")
_USER = "Stable user id: canary, experiment and holdback assignment hash it (sticky). Without it: production."
_COLUMNS = ("With `rows`: the name of each value of a row. A column is a request field, or an entity key "
            "when the model reads online features by that key.")
_DEADLINE = "Time budget for the whole request in ms (default: the server's --deadline-ms)."


class PredictRequest(BaseModel):
    """One prediction."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"entities": {"author_id": 42}, "fields": {"text": "free prize, click now", "n_urls": 2, "new_account": 1},
         "user_id": "u-17", "deadline_ms": 200}]})
    entities: dict[str, EntityValue] = Field(default_factory=dict, description=_ENTITIES)
    fields: dict[str, Scalar] = Field(default_factory=dict, description=_FIELDS)
    user_id: UserId | None = Field(None, description=_USER)
    deadline_ms: float | None = Field(None, gt=0, le=600_000, allow_inf_nan=False, strict=True,
                                     description=_DEADLINE)   # strict: "100" and true are not numbers
    check_user_id = field_validator("user_id")(_utf8_user)


class Instance(BaseModel):
    """One row of a batch request; `user_id` overrides the request's."""
    model_config = ConfigDict(extra="forbid")
    entities: dict[str, EntityValue] = Field(default_factory=dict, description=_ENTITIES)
    fields: dict[str, Scalar] = Field(default_factory=dict, description=_FIELDS)
    user_id: UserId | None = Field(None, description=_USER)
    check_user_id = field_validator("user_id")(_utf8_user)


class PredictBatchRequest(BaseModel):
    """Several predictions in one call; each instance is routed, batched and answered on its own. Give
    either `instances` (an object per row) or `columns` + `rows` (the names once, then a list of values per
    row: a smaller body that is cheaper to read, as MLflow's dataframe_split)."""
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instances": [{"entities": {"author_id": 42}, "fields": {"text": "hi", "n_urls": 0, "new_account": 0}},
                       {"entities": {"author_id": 7}, "fields": {"text": "win", "n_urls": 3, "new_account": 1}}],
         "user_id": "u-17"},
        {"columns": ["author_id", "text", "n_urls", "new_account"], "rows": [[42, "hi", 0, 0], [7, "win", 3, 1]],
         "user_id": "u-17"}]})
    instances: list[Instance] | None = Field(None, min_length=1,
                                             description="The rows to predict (at most --max-instances).")
    columns: list[StrictStr] | None = Field(None, min_length=1, description=_COLUMNS)
    rows: list[list[Scalar]] | None = Field(None, min_length=1,
                                            description="With `columns`: one list of values per row, in column "
                                                        "order (at most --max-instances rows).")
    user_id: UserId | None = Field(None, description=_USER)
    deadline_ms: float | None = Field(None, gt=0, le=600_000, allow_inf_nan=False, strict=True,
                                     description=_DEADLINE)   # strict: "100" and true are not numbers
    check_user_id = field_validator("user_id")(_utf8_user)

    @model_validator(mode="after")
    def _one_form(self) -> "PredictBatchRequest":
        if (self.instances is None) == (self.columns is None and self.rows is None):
            raise ValueError("give either \"instances\" or \"columns\" with \"rows\", not both and not neither")
        if self.instances is None:
            if self.columns is None or self.rows is None:
                raise ValueError("\"columns\" and \"rows\" go together: the names once, then the rows of values")
            if len(set(self.columns)) != len(self.columns):
                raise ValueError(f"\"columns\" names a column twice: {self.columns}")
            bad = next((i for i, r in enumerate(self.rows) if len(r) != len(self.columns)), None)
            if bad is not None:
                raise ValueError(f"row {bad} has {len(self.rows[bad])} values for {len(self.columns)} columns; "
                                 "give one value per column, in column order")
        return self


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
    error: Literal["invalid_json", "invalid_request", "invalid_input", "unknown_model", "payload_too_large",
                   "overloaded", "deadline_exceeded", "unavailable", "not_ready", "not_found", "internal"]
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


# -- the fast path: hand validation of well-formed bodies (anything else goes through pydantic) -----------
_PREDICT_KEYS = frozenset(("entities", "fields", "user_id", "deadline_ms"))
_INSTANCE_KEYS = frozenset(("entities", "fields", "user_id"))
_BATCH_KEYS = frozenset(("instances", "user_id", "deadline_ms"))
_ROWS_KEYS = frozenset(("columns", "rows", "user_id", "deadline_ms"))
# exact types (type(v), not isinstance): a bool is no int here, as for pydantic's strict types
_SCALARS = frozenset((str, int, float, bool, type(None)))
_KEYS = frozenset((int, str))
_USERS = frozenset((int, str, type(None)))
_DICT = {dict}
_STR, _LIST = {str}, {list}
_FLOAT = frozenset((float,))


def _instance(obj: Any, keys: frozenset) -> tuple[dict, dict, Any] | None:
    """(entities, fields, user_id) if `obj` is valid as `keys` allow, else None (let pydantic explain)."""
    if type(obj) is not dict or not keys.issuperset(obj):
        return None
    ents = obj.get("entities", {})
    flds = obj.get("fields", {})
    uid = obj.get("user_id")
    if type(ents) is not dict or type(flds) is not dict or (uid is not None and type(uid) not in (str, int)):
        return None
    # the types of all values in one C-level pass (no Python loop per value)
    if not _KEYS.issuperset(map(type, ents.values())) or not _SCALARS.issuperset(map(type, flds.values())):
        return None
    return ents, flds, uid


def _deadline(obj: dict) -> tuple[bool, float | None]:
    d = obj.get("deadline_ms")
    if d is None:
        return True, None
    return (type(d) in (int, float) and 0 < d <= 600_000), float(d) if type(d) in (int, float) else None


def fast_predict(obj: Any) -> tuple[dict, dict, Any, float | None] | None:
    """A parsed :predict body that `PredictRequest` would accept unchanged, else None.

    Only plain JSON types reach here (orjson), so exact type checks match pydantic's strict types;
    whatever this does not accept is validated by pydantic, which says what is wrong."""
    inst = _instance(obj, _PREDICT_KEYS)
    if inst is None:
        return None
    ok, deadline = _deadline(obj)
    return (*inst, deadline) if ok else None


def fast_predict_batch(obj: Any) -> tuple[list[tuple[dict, dict, Any]], Any, float | None, bool] | None:
    """A parsed :predict_batch body that `PredictBatchRequest` would accept unchanged, as (instances,
    user_id, deadline_ms, every field value is a float), else None.

    Column-wise: the shape of each instance is checked in one loop, then the types of every entity and
    field value of all instances in one C-level pass each (the last item tells the vector builder it
    need not check the values' types again)."""
    if type(obj) is not dict or not _BATCH_KEYS.issuperset(obj):
        return None
    items, uid = obj.get("instances"), obj.get("user_id")
    if type(items) is not list or not items or (uid is not None and type(uid) not in (str, int)):
        return None
    out = []
    keys = _INSTANCE_KEYS
    for item in items:
        if type(item) is not dict or not keys.issuperset(item):
            return None
        out.append((item.get("entities", {}), item.get("fields", {}), item.get("user_id")))
    ents, flds = list(map(itemgetter(0), out)), list(map(itemgetter(1), out))
    if set(map(type, ents)) | set(map(type, flds)) != _DICT or \
            not _USERS.issuperset(map(type, map(itemgetter(2), out))):
        return None
    field_types = set(map(type, chain.from_iterable(map(dict.values, flds))))
    if not _SCALARS.issuperset(field_types) or not _KEYS.issuperset(map(type, chain.from_iterable(
            map(dict.values, ents)))):
        return None
    ok, deadline = _deadline(obj)
    return (out, uid, deadline, field_types <= _FLOAT) if ok else None


def fast_predict_rows(obj: Any) -> tuple[tuple[str, ...], list[list], Any, float | None, bool] | None:
    """A parsed `columns` + `rows` :predict_batch body that `PredictBatchRequest` would accept unchanged, as
    (columns, rows, user_id, deadline_ms, every value is a float), else None (pydantic then says what is
    wrong). Checked column-wise: one pass over the row lengths, one over the types of all values."""
    if type(obj) is not dict or not _ROWS_KEYS.issuperset(obj):
        return None
    cols, rows, uid = obj.get("columns"), obj.get("rows"), obj.get("user_id")
    if type(cols) is not list or not cols or type(rows) is not list or not rows or \
            (uid is not None and type(uid) not in (str, int)):
        return None
    if set(map(type, cols)) != _STR or len(set(cols)) != len(cols) or set(map(type, rows)) != _LIST or \
            set(map(len, rows)) != {len(cols)}:
        return None
    types = set(map(type, chain.from_iterable(rows)))
    if not _SCALARS.issuperset(types):
        return None
    ok, deadline = _deadline(obj)
    return (tuple(cols), rows, uid, deadline, types <= _FLOAT) if ok else None
