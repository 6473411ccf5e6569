"""The model input vector of one request, assembled in the order of the model's signature.

Each signature input is one of: an online feature (``view:feature``, read from the online store by
the request's entity keys), an on-demand feature (computed by `retrieval.compute_on_demand`, the
function offline retrieval uses, from the request-time ``fields`` and the online features), or a
raw input (any other name: read from ``fields`` by column name). The frame given to the model has
the signature's columns and dtypes and is scored by `training.trainers.predict_scores`, so serving
runs the same code path as evaluation; a model fitted on exactly those (numeric) columns then gets
the same vectors as a float64 array, once the first batch scored identically both ways (`score_rows`).
"""
from __future__ import annotations

import math
import warnings
import weakref
from datetime import datetime, timezone
from itertools import chain
from operator import itemgetter
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import FeatureView, OnDemandFeature
from loopstack.features.retrieval import compute_on_demand
from loopstack.serving.errors import ServingError
from loopstack.serving.values import InputError, _kind, check_key, coerce  # noqa: F401 - re-exported
from loopstack.signature import Signature

_FLOAT = frozenset((float,))
TIMESTAMP_COLUMN = "event_timestamp"   # what training's entity frames call the row time (on-demand may read it)


class FeatureUnavailable(ServingError):
    """The feature definitions a model needs are not applied any more (HTTP 503)."""


class Row(Mapping):
    """One row of a `columns` + `rows` batch body as a read-only mapping column -> value, without a dict per
    row. It serves as the instance's entity keys and its request fields both (a column is whichever the
    model needs it as); the vector builder reads an all-float row by position (`VectorBuilder`)."""
    __slots__ = ("columns", "index", "values")

    def __init__(self, columns: tuple[str, ...], index: Mapping[str, int], values: Sequence[Any]) -> None:
        self.columns, self.index, self.values = columns, index, values

    def __getitem__(self, key: str) -> Any:
        return self.values[self.index[key]]

    def __iter__(self) -> Any:
        return iter(self.columns)

    def __len__(self) -> int:
        return len(self.columns)


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
        self._plan = [(kind, name, dtype, _kind(dtype) == "float")
                      for (kind, name), dtype in zip(self.kinds, self.dtypes)]
        self._fields_only = [name for _, name, _, _ in self._plan] \
            if not view_refs and not self.odfvs and all(k == "field" for k, *_ in self._plan) else None
        names = self._fields_only
        self._all_float = bool(names) and all(is_float for *_, is_float in self._plan)
        # one name: itemgetter would return the value itself, not a 1-tuple
        self._getter = (itemgetter(*names) if len(names) > 1 else lambda d, n=names[0]: (d[n],)) \
            if self._all_float else None
        self._by_columns: dict[tuple[str, ...], Any] = {}   # `Row` columns -> how to read a vector off a row
        self.full_names = full   # training named view features 'view__feature' (full_feature_names=True)
        self.join_keys: dict[str, list[str]] = {}
        for ref in view_refs:
            view = views.get(ref.split(":", 1)[0])
            if view is None or all(f.name != ref.split(":", 1)[1] for f in view.features):
                raise FeatureUnavailable(f"the model needs feature {ref!r}, which is not an applied feature "
                                         f"definition (views: {sorted(views)}); run `loopstack apply`")
            self.join_keys.setdefault(view.entity.join_key, []).append(view.name)

    def _build_fields(self, instances: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
                      where: Sequence[str], floats: bool = False) -> list[Sequence[Any]]:
        """`build` when every input is a request field (no store read, no on-demand feature). The common
        case — every input a float, every value a JSON float — is done for the whole batch at once
        (`plain_rows`, `plain_fields`); anything else (a missing field, a value needing conversion) takes
        the per-value checks."""
        names, plan = self._fields_only, self._plan
        if self._all_float:
            first = instances[0][1]
            if type(first) is Row:
                rows = [r.values for _, r in instances if type(r) is Row and r.columns is first.columns]
                vecs = self.plain_rows(first.columns, rows, floats) if len(rows) == len(instances) else None
            else:
                vecs = self.plain_fields([flds for _, flds in instances], floats)
            if vecs is not None:
                return vecs
        vectors = []
        for (ents, flds), w in zip(instances, where):
            try:
                vec = [flds[n] for n in names]
            except KeyError:
                self.check(ents, flds, w)
                raise
            for j, v in enumerate(vec):
                if type(v) is not float or not plan[j][3]:
                    vec[j] = coerce(v, plan[j][2], f"{w}field {plan[j][1]!r}")
            vectors.append(vec)
        return vectors

    def plain_rows(self, columns: tuple[str, ...], rows: Sequence[Sequence[Any]], floats: bool = False
                   ) -> list[Sequence[Any]] | None:
        """The vectors of a `columns` + `rows` batch when every model input is a float request field and each
        value it reads is a float: the rows themselves when their columns are the inputs in order, else one
        C-level `itemgetter` call per row. None otherwise (a missing column, a value to convert), for the
        per-value path to build or refuse. `floats`: every value is known to be a float."""
        if not self._all_float:
            return None
        get = self._by_columns.get(columns)
        if get is None:
            pos = {c: i for i, c in enumerate(columns)}
            if not all(n in pos for n in self._fields_only):
                return None
            idx = [pos[n] for n in self._fields_only]
            get = True if idx == list(range(len(columns))) else \
                itemgetter(*idx) if len(idx) > 1 else (lambda v, i=idx[0]: (v[i],))
            if len(self._by_columns) >= 64:
                self._by_columns.clear()
            self._by_columns[columns] = get
        vecs = rows if get is True else [get(v) for v in rows]
        return vecs if floats or _FLOAT.issuperset(map(type, chain.from_iterable(vecs))) else None

    def plain_fields(self, fields: Sequence[Mapping[str, Any]], floats: bool = False) -> list[Sequence[Any]] | None:
        """The vectors of instances given by their request fields, when every model input is a float request
        field and each value is a float (one C-level `itemgetter` call per instance, tuples come back);
        None otherwise (see `plain_rows`)."""
        if not self._all_float:
            return None
        get = self._getter
        try:
            vecs = [get(flds) for flds in fields]
        except KeyError:
            return None
        return vecs if floats or _FLOAT.issuperset(map(type, chain.from_iterable(vecs))) else None

    def _name(self, ref: str) -> str:
        return ref.replace(":", "__") if self.full_names else ref.split(":", 1)[1]

    def check(self, entities: Mapping[str, Any], fields: Mapping[str, Any], where: str = "") -> None:
        """InputError naming the first missing entity key or request field."""
        rows = type(fields) is Row
        for key, views in self.join_keys.items():
            if key not in entities:
                how = f"add a column {key!r}" if rows else f"give it in \"entities\", e.g. {{\"{key}\": 42}}"
                raise InputError(f"{where}missing entity key {key!r} (the join key of feature view(s) "
                                 f"{sorted(set(views))}); {how}")
            check_key(entities[key], key, where)
        for name, why in self.fields.items():
            if name not in fields:
                how = f"add a column {name!r}" if rows else "give it in \"fields\""
                raise InputError(f"{where}missing request field {name!r} ({why}); {how}")

    def build(self, online: Any, instances: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
              where: Sequence[str] | None = None, floats: bool = False) -> list[Sequence[Any]]:
        """One vector per (entities, fields) pair (a list, or a tuple from the all-float fast path); one
        online read for all of them. `floats`: every field value is known to be a float (not checked again)."""
        if where is None:
            where = [""] * len(instances)
        if self._fields_only is not None:
            return self._build_fields(instances, where, floats)
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
        now = datetime.now(timezone.utc) if self.odfvs else None
        vectors = []
        plan = self._plan
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
            for kind, name, dtype, is_float in plan:
                if kind == "field":
                    v = flds[name]
                    # the common case needs no conversion: a JSON float for a float input
                    vec.append(v if is_float and type(v) is float else coerce(v, dtype, f"{w}field {name!r}"))
                elif kind == "view":
                    vec.append(feats[name])
                else:
                    vec.append(coerce(computed[name], dtype, f"{w}on-demand feature {name!r}"))
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
# (id(model), id(signature)) -> (weak reference to the model, score a float64 array instead of the frame?)
_PLANS: dict[tuple[int, int], tuple[Any, bool]] = {}
_NAMES_WARNING = "X does not have valid feature names"


def _feature_names(model: Any) -> list[str] | None:
    """The column names `model` was fitted on (scikit-learn / LightGBM sklearn API), else None."""
    try:
        names = getattr(model, "feature_names_in_", None)
    except Exception:  # noqa: BLE001 - a property that raises (e.g. an unfitted LightGBM wrapper)
        return None
    return None if names is None else [str(n) for n in names]


def _array_candidate(model: Any, signature: Signature) -> bool:
    """May `model` be given a plain float64 array? Only if every input is numeric, the model was fitted
    on exactly the signature's columns (so the frame carries no information the array lacks) and it
    knows no pandas categories (LightGBM)."""
    if any(_kind(i.dtype) not in ("int", "float", "bool") for i in signature.inputs):
        return False
    if _feature_names(model) != list(signature.columns):
        return False
    booster = getattr(model, "_Booster", None)
    return not getattr(booster, "pandas_categorical", None)


def _plan(model: Any, signature: Signature, rows: Sequence[Sequence[Any]], out: dict) -> tuple[bool, Any]:
    """Decide once per (model, signature): score arrays if the model gives the frame's very answers on
    this first batch; (decision, the frame's scores of this batch)."""
    df = frame(signature, rows)
    if id(signature) not in _CHECKED and [str(t) for t in df.dtypes] == [i.dtype for i in signature.inputs]:
        signature.check(df)
        _CHECKED.add(id(signature))
    from loopstack.training.scoring import positive_scores
    scores = positive_scores(model, df, out.get("positive_class", 1))
    use_array = False
    if _array_candidate(model, signature):
        # scikit-learn warns on every call with an array when the model was fitted on a frame; the array
        # holds the signature's columns in order, so that one warning is silenced (for scikit-learn only)
        warnings.filterwarnings("ignore", message=_NAMES_WARNING, category=UserWarning, module=r"sklearn\.")
        try:
            X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(signature.columns))
            same = np.array_equal(positive_scores(model, X, out.get("positive_class", 1)),
                                  np.asarray(scores, dtype=float), equal_nan=True)
        except Exception:  # noqa: BLE001 - the model needs the frame
            same = False
        use_array = bool(same)
    try:
        ref: Any = weakref.ref(model)
    except TypeError:
        ref = None
    _PLANS[(id(model), id(signature))] = (ref, use_array)
    return use_array, scores


def score_rows(model: Any, signature: Signature, rows: Sequence[Sequence[Any]]) -> list[float]:
    """Scores of a batch of vectors with the training code path: the signature's frame, checked against
    the signature (`Signature.check`, once per signature and process: the frame is built from it), scored
    by `evaluation.positive_scores` as `trainers.predict_scores` does.

    Fast path: a model fitted on exactly the signature's (numeric) columns is scored on a float64 array
    of the same vectors, which skips pandas and scikit-learn's frame validation (most of the time of a
    small batch). It is taken only after the first batch gave identical scores both ways."""
    from loopstack.training.scoring import positive_scores
    out = signature.outputs[0] if signature.outputs else {}
    plan = _PLANS.get((id(model), id(signature)))
    if plan is None or (plan[0] is not None and plan[0]() is not model):
        _, scores = _plan(model, signature, rows, out)
    elif plan[1]:
        X = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(signature.columns))
        scores = positive_scores(model, X, out.get("positive_class", 1))
    else:
        scores = positive_scores(model, frame(signature, rows), out.get("positive_class", 1))
    return [None if isinstance(s, float) and math.isnan(s) else s for s in np.asarray(scores, dtype=float).tolist()]
