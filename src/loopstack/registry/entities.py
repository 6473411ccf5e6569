"""Value objects of the registry: a model's signature and a registered model version."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from loopstack.registry.errors import RegistryError
from loopstack.signature import FeatureInput, Signature, SignatureError


# The registry stores the one signature type training writes and serving reads (loopstack.signature).
FeatureSpec = FeatureInput
ModelSignature = Signature


def coerce_signature(obj: Any) -> Signature:
    """A Signature from a Signature or its dict; a RegistryError says what is wrong with it."""
    try:
        return Signature.coerce(obj)
    except SignatureError as exc:
        raise RegistryError(str(exc)) from exc


@dataclass(frozen=True)
class ModelVersion:
    """One registered version and its lineage (what it was built from and where it is in its rollout)."""
    name: str
    version: int
    state: str
    run_id: str | None
    dataset_id: str | None
    dataset_hash: str | None
    code_version: str | None
    feature_versions: dict
    params: dict
    metrics: dict
    signature: ModelSignature
    artifact_uri: str
    artifact_path: str
    artifact_sha256: str
    artifact_format: str
    gate: dict | None
    gate_passed: bool | None
    has_profile: bool
    aliases: tuple[str, ...]
    description: str
    created_by: str
    created_at: datetime
    problems: dict[str, str] = field(default_factory=dict)   # stored fields that could not be read, and why

    @property
    def ref(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["signature"] = self.signature.to_dict()
        d["created_at"] = self.created_at.isoformat()
        d["aliases"] = list(self.aliases)
        return d


def utc(ts: datetime) -> datetime:
    """SQLite returns naive datetimes; every timestamp we store is UTC."""
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=_json_default, allow_nan=False)


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):   # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, datetime):
        return o.isoformat()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    return str(o)


def json_mapping(obj: Any, what: str, example: str) -> dict:
    """`obj` (a mapping, or None for empty) as a dict that strict JSON can store; RegistryError naming
    `what` otherwise, raised before anything is written (NaN/inf used to fail mid-transaction)."""
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise RegistryError(f"{what} must be a dict, e.g. {example}, not {type(obj).__name__} {obj!r:.80}")
    out = dict(obj)
    try:
        dumps(out)
    except ValueError as exc:
        raise RegistryError(f"{what} cannot be stored as JSON ({exc}): NaN and infinity have no JSON form; "
                            "use a finite number or None") from None
    return out


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """Metrics as finite floats; RegistryError naming the first one that is not a number."""
    if metrics is not None and not isinstance(metrics, Mapping):
        raise RegistryError(f"metrics must be a dict of numbers, e.g. {{'auc': 0.93}}, not {type(metrics).__name__}")
    out: dict[str, float] = {}
    for k, v in (metrics or {}).items():
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise RegistryError(f"metric {k!r} = {v!r} is not a number; metrics are numbers "
                                "(put other values in params)") from None
        if not math.isfinite(f):
            raise RegistryError(f"metric {k!r} = {v!r} is not finite; record a finite number or leave it out")
        out[str(k)] = f
    return out

