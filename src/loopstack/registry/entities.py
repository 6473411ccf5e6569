"""Value objects of the registry: a model's signature and a registered model version."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

from loopstack.registry.errors import RegistryError


@dataclass(frozen=True)
class FeatureSpec:
    """One model input: a feature reference ("view:feature"), its definition version and dtype."""
    ref: str
    version: int | None
    dtype: str


@dataclass(frozen=True)
class ModelSignature:
    """Ordered inputs (feature refs with definition versions and dtypes) and the output schema.

    Serving assembles exactly this vector, in this order, so it matches what training used.
    """
    inputs: tuple[FeatureSpec, ...]
    outputs: tuple[dict, ...] = field(default=({"name": "score", "dtype": "float64"},))

    @property
    def feature_refs(self) -> list[str]:
        return [f.ref for f in self.inputs]

    @property
    def feature_versions(self) -> dict[str, int | None]:
        return {f.ref: f.version for f in self.inputs}

    def to_dict(self) -> dict:
        return {"inputs": [asdict(f) for f in self.inputs], "outputs": [dict(o) for o in self.outputs]}

    @classmethod
    def coerce(cls, obj: "ModelSignature | Mapping[str, Any]") -> "ModelSignature":
        """From a ModelSignature or a dict {"inputs": [{"ref", "version", "dtype"} | (ref, version, dtype)],
        "outputs": [{"name", "dtype"}]}; raises RegistryError naming what is missing."""
        if isinstance(obj, ModelSignature):
            sig = obj
        elif isinstance(obj, Mapping):
            if not obj.get("inputs"):
                raise RegistryError("a model signature needs 'inputs': the ordered feature references with "
                                    "definition versions and dtypes, e.g. [{'ref': 'author:spam_7d', "
                                    "'version': 2, 'dtype': 'float64'}]")
            inputs = tuple(_spec(i) for i in obj["inputs"])
            outputs = tuple(_output(o) for o in (obj.get("outputs") or [{"name": "score", "dtype": "float64"}]))
            sig = cls(inputs, outputs)
        else:
            raise RegistryError(f"signature must be a ModelSignature or a dict, not {type(obj).__name__}; it is "
                                "required so serving assembles exactly the feature vector training used")
        refs = [f.ref for f in sig.inputs]
        dup = sorted({r for r in refs if refs.count(r) > 1})
        if dup:
            raise RegistryError(f"signature lists feature(s) {dup} more than once; each input appears once")
        return sig


def _spec(item: Any) -> FeatureSpec:
    if isinstance(item, FeatureSpec):
        return item
    if isinstance(item, Mapping):
        ref, version, dtype = item.get("ref") or item.get("name"), item.get("version"), item.get("dtype")
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        ref, version, dtype = item
    else:
        raise RegistryError(f"signature input {item!r} must be {{'ref', 'version', 'dtype'}} or (ref, version, dtype)")
    if not ref or not dtype:
        raise RegistryError(f"signature input {item!r} needs a feature reference and a dtype")
    return FeatureSpec(str(ref), None if version is None else int(version), str(dtype))


def _output(item: Any) -> dict:
    if isinstance(item, Mapping) and item.get("name") and item.get("dtype"):
        return {"name": str(item["name"]), "dtype": str(item["dtype"]),
                **{k: v for k, v in item.items() if k not in ("name", "dtype")}}
    raise RegistryError(f"signature output {item!r} must be a dict with 'name' and 'dtype'")


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


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float]:
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


def version_from_row(row: Any, aliases: Iterable[str]) -> ModelVersion:
    m = row._mapping
    gate = loads(m["gate"])
    return ModelVersion(
        name=m["name"], version=m["version"], state=m["state"], run_id=m["run_id"], dataset_id=m["dataset_id"],
        dataset_hash=m["dataset_hash"], code_version=m["code_version"],
        feature_versions=loads(m["feature_versions"]), params=loads(m["params"]), metrics=loads(m["metrics"]),
        signature=ModelSignature.coerce(loads(m["signature"])), artifact_uri=m["artifact_uri"],
        artifact_path=m["artifact_path"], artifact_sha256=m["artifact_sha256"],
        artifact_format=m["artifact_format"], gate=gate, gate_passed=m["gate_passed"],
        has_profile=m["profile"] is not None, aliases=tuple(sorted(aliases)), description=m["description"] or "",
        created_by=m["created_by"], created_at=utc(m["created_at"]))
