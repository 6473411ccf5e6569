"""A model's signature: the ordered feature references (with definition versions), the columns and
dtypes it was trained on, and its output schema.

One definition shared by training (which writes it), the registry (which stores it with each
version) and serving (which assembles exactly this vector), so the three can never disagree.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import pandas as pd

from loopstack.errors import LoopstackError


class SignatureError(LoopstackError):
    """A frame does not match a model's signature (missing/extra/reordered columns, other dtypes)."""


@dataclass(frozen=True)
class FeatureInput:
    """One model input: feature reference, its definition version, the column it is read from, dtype."""
    ref: str
    version: int | None
    column: str
    dtype: str


@dataclass(frozen=True)
class Signature:
    """Ordered inputs and the output schema of a trained model.

    `to_dict()` is {"inputs": [{"ref", "version", "column", "dtype"}], "outputs": [{"name", "dtype", ...}],
    "label": ...}: the shape the model registry accepts.
    """
    inputs: tuple[FeatureInput, ...]
    outputs: tuple[dict, ...] = ({"name": "score", "dtype": "float64"},)
    label: str | None = None

    @property
    def columns(self) -> list[str]:
        return [i.column for i in self.inputs]

    @property
    def feature_refs(self) -> list[str]:
        return [i.ref for i in self.inputs]

    @property
    def dtypes(self) -> dict[str, str]:
        return {i.column: i.dtype for i in self.inputs}

    def to_dict(self) -> dict:
        return {"inputs": [asdict(i) for i in self.inputs], "outputs": [dict(o) for o in self.outputs],
                "label": self.label}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Signature":
        try:
            inputs = tuple(FeatureInput(str(i["ref"]), None if i.get("version") is None else int(i["version"]),
                                        str(i.get("column") or i["ref"]), str(i["dtype"])) for i in d["inputs"])
        except (KeyError, TypeError) as exc:
            raise SignatureError(f"not a signature dict ({exc!r}): it needs 'inputs' with 'ref', 'version', "
                                 "'dtype' (and 'column') per input") from exc
        return cls(inputs, tuple(dict(o) for o in d.get("outputs") or ({"name": "score", "dtype": "float64"},)),
                   d.get("label"))

    @classmethod
    def coerce(cls, obj: "Signature | Mapping[str, Any]") -> "Signature":
        """From a Signature or a dict {"inputs": [{"ref", "version", "dtype", "column"?} | (ref, version, dtype)],
        "outputs": [{"name", "dtype", ...}], "label"?}; SignatureError names what is missing or repeated."""
        if isinstance(obj, Signature):
            sig = obj
        elif isinstance(obj, Mapping):
            if not obj.get("inputs"):
                raise SignatureError("a model signature needs 'inputs': the ordered feature references with "
                                     "definition versions and dtypes, e.g. [{'ref': 'author:spam_7d', "
                                     "'version': 2, 'dtype': 'float64'}]")
            inputs = tuple(_input(i) for i in obj["inputs"])
            outputs = tuple(_output(o) for o in (obj.get("outputs") or [{"name": "score", "dtype": "float64"}]))
            sig = cls(inputs, outputs, obj.get("label"))
        else:
            raise SignatureError(f"signature must be a Signature or a dict, not {type(obj).__name__}; it is "
                                 "required so serving assembles exactly the feature vector training used")
        refs = [f.ref for f in sig.inputs]
        dup = sorted({r for r in refs if refs.count(r) > 1})
        if dup:
            raise SignatureError(f"signature lists feature(s) {dup} more than once; each input appears once")
        return sig

    @property
    def feature_versions(self) -> dict[str, int | None]:
        return {i.ref: i.version for i in self.inputs}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Signature":
        return cls.from_dict(json.loads(text))

    def check(self, frame: pd.DataFrame, *, allow_extra: bool = False, allow_reorder: bool = False) -> None:
        """Raise SignatureError naming every difference between `frame` and the training vector:
        missing columns, extra columns (unless allow_extra), another order (unless allow_reorder),
        other dtypes."""
        if not isinstance(frame, pd.DataFrame):
            raise SignatureError(f"expected a pandas DataFrame with columns {self.columns}, got "
                                 f"{type(frame).__name__}")
        cols = [str(c) for c in frame.columns]
        problems = []
        missing = [c for c in self.columns if c not in cols]
        if missing:
            refs = {i.column: i.ref for i in self.inputs}
            problems.append(f"missing column(s) {missing} (features {[refs[c] for c in missing]})")
        extra = [c for c in cols if c not in self.columns]
        if extra and not allow_extra:
            problems.append(f"unexpected column(s) {extra} (pass allow_extra=True or drop them)")
        present = [c for c in cols if c in self.columns]
        if not missing and not allow_reorder and present != self.columns:
            problems.append(f"columns in order {present}, but the model was trained on {self.columns} "
                            "(select frame[signature.columns])")
        bad = [f"{c}: {frame[c].dtype} (trained on {t})" for c, t in self.dtypes.items()
               if c in cols and str(frame[c].dtype) != t]
        if bad:
            problems.append("dtype mismatch " + "; ".join(bad) + " (cast with frame.astype(signature.dtypes))")
        if problems:
            raise SignatureError("the frame does not match the model signature: " + "; ".join(problems))

    def prepare(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The training vector out of a wider frame: checked (extra columns and order allowed), reordered."""
        self.check(frame, allow_extra=True, allow_reorder=True)
        return frame[self.columns]


def _input(item: Any) -> FeatureInput:
    if isinstance(item, FeatureInput):
        return item
    if isinstance(item, Mapping):
        ref, version, dtype = item.get("ref") or item.get("name"), item.get("version"), item.get("dtype")
        column = item.get("column") or ref
    elif isinstance(item, (tuple, list)) and len(item) == 3:
        ref, version, dtype = item
        column = ref
    else:
        raise SignatureError(f"signature input {item!r} must be {{'ref', 'version', 'dtype'}} or (ref, version, dtype)")
    if not ref or not dtype:
        raise SignatureError(f"signature input {item!r} needs a feature reference and a dtype")
    return FeatureInput(str(ref), None if version is None else int(version), str(column), str(dtype))


def _output(item: Any) -> dict:
    if isinstance(item, Mapping) and item.get("name") and item.get("dtype"):
        return {"name": str(item["name"]), "dtype": str(item["dtype"]),
                **{k: v for k, v in item.items() if k not in ("name", "dtype")}}
    raise SignatureError(f"signature output {item!r} must be a dict with 'name' and 'dtype'")
