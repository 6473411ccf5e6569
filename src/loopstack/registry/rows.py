"""Reading stored registry rows defensively.

Rows written by older loopstack versions can hold values today's code refuses on write: malformed
JSON, a metric that is not a number, a gate decision without its reasons, an alias pointing at a
version such as 1.7. Reads return every field that can be read and, for each one that cannot, a
note naming the field, the row and how to repair it; they never fail with a parsing traceback.
"""
from __future__ import annotations

import json
import math
from typing import Any, Iterable

from loopstack.registry.entities import ModelVersion, coerce_signature, utc
from loopstack.registry.errors import ModelReferenceError, RegistryError
from loopstack.signature import Signature

UNREADABLE_SIGNATURE = Signature(inputs=())


class _Row:
    """Collects a note per unreadable field of one ``ls_model_versions`` row."""

    def __init__(self, name: str, version: Any) -> None:
        self.name, self.version = name, version
        self.problems: dict[str, str] = {}

    def note(self, field: str, what: str, text: Any, repair: str | None = None) -> None:
        shown = text if not isinstance(text, str) or len(text) <= 60 else text[:60] + "..."
        self.problems[field] = (f"{what} (stored: {shown!r}); {repair or self._repair(field)}")

    def _repair(self, field: str) -> str:
        return (f"the row was written by an older loopstack: register the model again, or set column {field} of "
                f"ls_model_versions where name={self.name!r} and version={self.version} to a valid JSON object")

    def json(self, field: str, text: Any, kind: type = dict, repair: str | None = None) -> Any:
        """The stored JSON value of `field` if it is a `kind`; None (and a note) otherwise."""
        try:
            value = json.loads(text) if isinstance(text, (str, bytes)) else text
        except ValueError as exc:
            self.note(field, f"not valid JSON ({exc})", text, repair)
            return None
        if not isinstance(value, kind):
            self.note(field, f"a JSON {type(value).__name__}, expected a {kind.__name__}", text, repair)
            return None
        return value


def _metrics(row: _Row, text: Any) -> dict[str, float]:
    raw = row.json("metrics", text) or {}
    out, bad = {}, []
    for k, v in raw.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[str(k)] = float(v)
        else:
            bad.append(f"{k}={v!r}")
    if bad:
        row.note("metrics", f"metric(s) {', '.join(bad[:3])} are not finite numbers and are left out", text)
    return out


def _gate(row: _Row, text: Any) -> dict | None:
    if text is None:
        return None
    repair = "run the validation gate again (Registry.record_gate) to replace the stored decision"
    gate = row.json("gate", text, dict, repair)
    if gate is None:
        return None
    from loopstack.registry.gate import GateDecision
    try:
        GateDecision.from_dict(gate)
    except (KeyError, TypeError, ValueError) as exc:
        row.note("gate", f"not a gate decision ({type(exc).__name__}: {exc}; it needs 'passed' and 'reasons' as "
                         "[check, passed, detail])", text, repair)
        return None
    return gate


def _signature(row: _Row, text: Any) -> Signature:
    repair = ("register the model again with its signature (serving needs it to assemble the feature vector); "
              "the other fields of this version are shown as stored")
    data = row.json("signature", text, dict, repair)
    if data is None:
        return UNREADABLE_SIGNATURE
    try:
        return coerce_signature(data)
    except Exception as exc:  # noqa: BLE001 - any malformed shape: name it instead of a traceback
        row.note("signature", f"not a model signature ({exc})", text, repair)
        return UNREADABLE_SIGNATURE


ID_WIDTHS = {"run_id": 255, "dataset_id": 255, "dataset_hash": 128, "code_version": 255, "created_by": 255}


def version_from_row(row: Any, aliases: Iterable[str]) -> ModelVersion:
    """A ModelVersion from a stored row; fields that cannot be read are empty and named in `problems`
    (as are lineage ids longer than their column, which SQLite kept: they are returned as stored)."""
    m = row._mapping
    r = _Row(m["name"], m["version"])
    for field, width in ID_WIDTHS.items():
        if m[field] is not None and len(str(m[field])) > width:
            r.note(field, f"{len(str(m[field]))} characters long, more than the {width} the registry keeps (an older "
                          "loopstack stored it on SQLite; PostgreSQL refuses it); shown as stored", m[field],
                   f"register the model again with a shorter {field}, or shorten column {field} of ls_model_versions "
                   f"where name={r.name!r} and version={r.version}")
    fv = r.json("feature_versions", m["feature_versions"])
    params = r.json("params", m["params"])
    sig = _signature(r, m["signature"])
    return ModelVersion(
        name=m["name"], version=m["version"], state=m["state"], run_id=m["run_id"], dataset_id=m["dataset_id"],
        dataset_hash=m["dataset_hash"], code_version=m["code_version"],
        feature_versions=fv if fv is not None else {}, params=params if params is not None else {},
        metrics=_metrics(r, m["metrics"]), signature=sig, artifact_uri=m["artifact_uri"],
        artifact_path=m["artifact_path"], artifact_sha256=m["artifact_sha256"],
        artifact_format=m["artifact_format"], gate=_gate(r, m["gate"]), gate_passed=m["gate_passed"],
        has_profile=m["profile"] is not None, aliases=tuple(sorted(aliases)), description=m["description"] or "",
        created_by=m["created_by"], created_at=utc(m["created_at"]), problems=r.problems)


def audit_entry(row: Any) -> dict:
    """An audit log row as a dict; an unreadable evidence is {} and named in its "problems"."""
    r = _Row(row.name, row.version)
    ev = r.json("evidence", row.evidence, dict, f"audit entry {row.id} of model {row.name!r} is shown without it; "
                                                "the rest of the audit log is unaffected")
    return {**row._mapping, "evidence": ev if ev is not None else {}, "at": utc(row.at), "problems": r.problems}


def alias_version(name: str, alias: str, stored: Any, versions: Iterable[int]) -> int:
    """The version an alias row points at, or ModelReferenceError naming the row and how to repair it."""
    version = stored
    if isinstance(stored, float) and stored.is_integer():
        version = int(stored)
    known = sorted(versions)
    if not isinstance(version, int) or isinstance(version, bool) or version not in known:
        what = ("which is not a version number" if not isinstance(version, int) or isinstance(version, bool)
                else "a version that does not exist")
        raise ModelReferenceError(
            f"alias @{alias} of model {name!r} points at {stored!r}, {what} (versions: "
            f"{', '.join(map(str, known)) or 'none'}); it was stored by an older loopstack. Repair it with "
            f"`loopstack models alias {name} {alias} <version>` or remove it with "
            f"`loopstack models alias {name} {alias} --delete`")
    return version



def stored_profile(ref: str, text: Any) -> dict:
    """The reference profile stored with `ref`, or a RegistryError naming the row and how to repair it."""
    from loopstack.registry.lineage import reference_profile
    r = _Row(ref, None)
    data = r.json("profile", text, dict, "")
    try:
        if data is None:
            raise RegistryError(r.problems["profile"].rstrip("; "))
        return reference_profile(data, None) or {}
    except RegistryError as exc:
        raise RegistryError(f"the reference profile stored with {ref} is unreadable ({exc}); it was written by an "
                            "older loopstack. Register the model again with profile=<holdout features> to store "
                            "a new one") from None
