"""The model input vector of one request, assembled in the order of the model's signature.

Each signature input is one of: an online feature (``view:feature``, read from the online store by
the request's entity keys), an on-demand feature (computed by `retrieval.compute_on_demand`, the
function offline retrieval uses, from the request-time ``fields`` and the online features), or a
raw input (any other name: read from ``fields`` by column name). The frame given to the model has
the signature's columns and dtypes and is scored by `training.trainers.predict_scores`, so serving
runs the same code path as evaluation.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import FeatureView, OnDemandFeature
from loopstack.features.retrieval import compute_on_demand
from loopstack.serving.errors import ServingError
from loopstack.signature import Signature

TIMESTAMP_COLUMN = "event_timestamp"   # what training's entity frames call the row time (on-demand may read it)


class InputError(ServingError):
    """The request's input cannot make this model's vector (HTTP 422); the message names what is wrong."""


class FeatureUnavailable(ServingError):
    """The feature definitions a model needs are not applied any more (HTTP 503)."""


def _kind(dtype: str) -> str:
    d = dtype.lower()
    if d.startswith(("int", "uint")):
        return "int"
    if d.startswith("float"):
        return "float"
    if d in ("bool", "boolean"):
        return "bool"
    if d in ("object", "string", "str"):
        return "str"
    return "any"


def coerce(value: Any, dtype: str, what: str) -> Any:
    """`value` as the Python type of `dtype` (None stays None); InputError saying what was expected."""
    if value is None:
        return None
    kind = _kind(dtype)
    if kind in ("int", "float", "bool"):
        if isinstance(value, (np.integer, np.floating, np.bool_)):
            value = value.item()
        if not isinstance(value, (int, float, bool)):
            raise InputError(f"{what} must be a number (the model's input is {dtype}), got {value!r}")
        if kind == "int" and isinstance(value, float) and not value.is_integer():
            raise InputError(f"{what} must be a whole number (the model's input is {dtype}), got {value!r}")
        return bool(value) if kind == "bool" else (int(value) if kind == "int" else float(value))
    if kind == "str" and not isinstance(value, str):
        raise InputError(f"{what} must be a string (the model's input is {dtype}), got {value!r}")
    return value


class VectorBuilder:
    """Builds signature-ordered vectors for one model version from entity keys and request fields."""

    def __init__(self, signature: Signature, views: Mapping[str, FeatureView],
                 on_demand: Mapping[str, OnDemandFeature]) -> None:
        self.signature = signature
        self.columns = signature.columns
        self.dtypes = [i.dtype for i in signature.inputs]
        self.kinds: list[tuple[str, str]] = []          # ("view", ref) | ("on_demand", name) | ("field", column)
        view_refs: list[str] = []
        self.odfvs: list[OnDemandFeature] = []
        self.fields: dict[str, str] = {}                 # request field -> why it is needed
        full = False
        for inp in signature.inputs:
            if ":" in inp.ref:
                self.kinds.append(("view", inp.ref))
                view_refs.append(inp.ref)
                full = full or inp.column == inp.ref.replace(":", "__")
            elif inp.ref in on_demand:
                self.kinds.append(("on_demand", inp.ref))
                self.odfvs.append(on_demand[inp.ref])
            else:
                self.kinds.append(("field", inp.column))
                self.fields.setdefault(inp.column, f"model input {inp.column!r} ({inp.dtype})")
        for odfv in self.odfvs:
            for src in odfv.inputs:
                if ":" in src:
                    if src not in view_refs:
                        view_refs.append(src)
                elif src not in on_demand:
                    self.fields.setdefault(src, f"input of on-demand feature {odfv.name!r}")
        self.view_refs = view_refs
        self.full_names = full   # training named view features 'view__feature' (full_feature_names=True)
        self.join_keys: dict[str, list[str]] = {}
        for ref in view_refs:
            view = views.get(ref.split(":", 1)[0])
            if view is None or all(f.name != ref.split(":", 1)[1] for f in view.features):
                raise FeatureUnavailable(f"the model needs feature {ref!r}, which is not an applied feature "
                                         f"definition (views: {sorted(views)}); run `loopstack apply`")
            self.join_keys.setdefault(view.entity.join_key, []).append(view.name)

    def _name(self, ref: str) -> str:
        return ref.replace(":", "__") if self.full_names else ref.split(":", 1)[1]

    def check(self, entities: Mapping[str, Any], fields: Mapping[str, Any], where: str = "") -> None:
        """InputError naming the first missing entity key or request field."""
        for key, views in self.join_keys.items():
            if key not in entities:
                raise InputError(f"{where}missing entity key {key!r} (the join key of feature view(s) "
                                 f"{sorted(set(views))}); give it in \"entities\", e.g. {{\"{key}\": 42}}")
        for name, why in self.fields.items():
            if name not in fields:
                raise InputError(f"{where}missing request field {name!r} ({why}); give it in \"fields\"")

    def build(self, online: Any, instances: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
              where: Sequence[str] | None = None) -> list[list[Any]]:
        """One vector per (entities, fields) pair; one online read for all of them."""
        where = list(where or [""] * len(instances))
        for (ents, flds), w in zip(instances, where):
            self.check(ents, flds, w)
        values: list[dict[str, Any]] = [{} for _ in instances]
        if self.view_refs:
            keys = list(self.join_keys)
            rows = [{k: ents[k] for k in keys} for ents, _ in instances]
            try:
                resp = online.get_online_features(self.view_refs, rows, full_feature_names=True)
            except FeatureReferenceError as exc:
                raise FeatureUnavailable(f"online features are unavailable: {exc}") from exc
            except RetrievalError as exc:
                raise InputError(f"bad entity key: {exc}") from exc
            for out, row in zip(values, resp.rows):
                for ref in self.view_refs:
                    out[ref] = row.get(ref.replace(":", "__"))
        now = datetime.now(timezone.utc)
        vectors = []
        for (ents, flds), feats, w in zip(instances, values, where):
            computed: dict[str, Any] = {}
            if self.odfvs:
                row: dict[str, Any] = {TIMESTAMP_COLUMN: now, **ents, **flds}
                for ref, v in feats.items():
                    row[ref] = row[self._name(ref)] = v
                try:
                    computed = compute_on_demand(self.odfvs, row)
                except RetrievalError as exc:
                    raise InputError(f"{w}{exc} (check the request fields it reads)") from exc
            vec = []
            for (kind, name), dtype in zip(self.kinds, self.dtypes):
                if kind == "view":
                    vec.append(feats[name])
                elif kind == "on_demand":
                    vec.append(coerce(computed[name], dtype, f"{w}on-demand feature {name!r}"))
                else:
                    vec.append(coerce(flds[name], dtype, f"{w}field {name!r}"))
            vectors.append(vec)
        return vectors


def frame(signature: Signature, rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """A DataFrame with the signature's columns and dtypes (an integer column with a missing value
    becomes float64 with NaN: the model sees a missing value rather than a made-up number)."""
    dtypes = signature.dtypes
    if all(t == "float64" for t in dtypes.values()):   # the common case: one float block, no per-column casts
        try:
            return pd.DataFrame(np.asarray(rows, dtype=np.float64).reshape(len(rows), len(dtypes)),
                                columns=signature.columns)
        except (TypeError, ValueError):
            pass
    df = pd.DataFrame(list(rows), columns=signature.columns)
    for col, dtype in dtypes.items():
        if str(df[col].dtype) == dtype:
            continue
        try:
            df[col] = df[col].astype(dtype)
        except (TypeError, ValueError):
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("float64") \
                if _kind(dtype) in ("int", "bool", "float") else df[col]
    return df


_CHECKED: set[int] = set()


def score_rows(model: Any, signature: Signature, rows: Sequence[Sequence[Any]]) -> list[float]:
    """Scores of a batch of vectors with the training code path: the signature's frame, checked against
    the signature (`Signature.check`, once per signature and process: the frame is built from it), scored
    by `evaluation.positive_scores` as `trainers.predict_scores` does."""
    from loopstack.training.evaluation import positive_scores
    df = frame(signature, rows)
    if id(signature) not in _CHECKED and [str(t) for t in df.dtypes] == [i.dtype for i in signature.inputs]:
        signature.check(df)
        _CHECKED.add(id(signature))
    out = signature.outputs[0] if signature.outputs else {}
    scores = positive_scores(model, df, out.get("positive_class", 1))
    return [None if isinstance(s, float) and math.isnan(s) else s for s in np.asarray(scores, dtype=float).tolist()]
