"""Reference profile of the training/holdout data, stored with a model version (pure numpy/pandas).

Monitoring compares live traffic to it without re-reading the training data, so each numeric
feature keeps its histogram as bin *edges and counts* (not just a picture), and each categorical
one its category counts plus an "other" bucket:

    {"format": 1, "n_rows": N,
     "features": {
        "url_count": {"kind": "numeric", "dtype": "int64", "count": N, "null_count": k, "null_rate": k/N,
                      "min", "max", "mean", "std", "quantiles": {"0.01": .., ..., "0.99": ..},
                      "bin_edges": [e0, ..., eB], "counts": [c1, ..., cB]},          # sum(counts) = N - k
        "country":   {"kind": "categorical", "dtype": "object", "count": N, "null_count", "null_rate",
                      "n_unique": u, "counts": {"US": 10, ...}, "frequencies": {"US": 0.5, ...},
                      "other_count": c, "other_frequency": f}},                        # over non-null rows
     "scores": {<numeric profile of the model's holdout scores>} | null}

Binning rule (what `bin_counts` implements, and what monitoring must use): edges are quantiles of
the reference data; bin i holds e[i] <= x < e[i+1]; the outer bins are open-ended (values below e0
fall in the first bin, values >= eB in the last), so live values outside the training range are
still counted. PSI/KS on live data = compare `bin_counts(profile, live)` to the stored `counts`.
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from loopstack.registry.errors import RegistryError

QUANTILES = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
PROFILE_FORMAT = 1


def build_profile(df: pd.DataFrame, scores: Any = None, *, categorical: Iterable[str] = (), bins: int = 10,
                  top_k: int = 20, quantiles: Iterable[float] = QUANTILES) -> dict:
    """Profile every column of `df` (numeric unless object/category/bool/string or listed in
    `categorical`), plus the model's `scores` on the same rows (1-D, or 2-D probabilities: last column)."""
    if not isinstance(df, pd.DataFrame):
        df = pd.DataFrame(df)
    cat = set(categorical)
    qs = tuple(float(q) for q in quantiles)
    _check_inputs(df, cat, qs, bins, top_k)
    feats = {}
    for col in df.columns:
        s = df[col]
        if col in cat or not _is_numeric(s):
            feats[str(col)] = categorical_profile(s, top_k=top_k)
        else:
            feats[str(col)] = numeric_profile(s, bins=bins, quantiles=qs)
    out: dict = {"format": PROFILE_FORMAT, "n_rows": int(len(df)), "features": feats, "scores": None}
    if scores is not None:
        try:
            arr = np.asarray(scores, dtype="float64")
        except (TypeError, ValueError) as exc:
            raise RegistryError(f"scores must be numbers (the model's scores on the profiled rows): {exc}") from None
        if arr.ndim == 2:
            arr = arr[:, -1]
        if arr.ndim != 1 or len(arr) != len(df):
            raise RegistryError(f"scores have shape {np.shape(scores)} but the profiled data has {len(df)} rows: "
                                "pass the model's scores on those same rows (1-D, or 2-D probabilities)")
        out["scores"] = numeric_profile(pd.Series(arr), bins=max(bins, 20), quantiles=qs)
    return out


def _check_inputs(df: pd.DataFrame, categorical: set, quantiles: tuple[float, ...], bins: int, top_k: int) -> None:
    """RegistryError for inputs that would profile nonsense (silently, or with a numpy/pandas traceback)."""
    problems = []
    if df.shape[0] == 0 or df.shape[1] == 0:
        problems.append(f"the data to profile is empty ({df.shape[0]} rows, {df.shape[1]} columns)")
    dups = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
    if dups:
        problems.append(f"column(s) {dups} appear more than once")
    missing = sorted(str(c) for c in categorical if c not in df.columns)
    if missing:
        problems.append(f"categorical names column(s) {missing} the data does not have (columns: "
                        f"{', '.join(map(str, df.columns))})")
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        problems.append(f"bins must be a whole number >= 1, not {bins!r}")
    if not isinstance(top_k, (int, np.integer)) or isinstance(top_k, bool) or top_k < 0:
        problems.append(f"top_k must be a whole number >= 0, not {top_k!r}")
    if any(not 0.0 <= q <= 1.0 for q in quantiles):
        problems.append(f"quantiles must be between 0 and 1, not {list(quantiles)}")
    if problems:
        raise RegistryError("cannot build a reference profile: " + "; ".join(problems))


def _is_numeric(s: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def numeric_profile(s: pd.Series, *, bins: int = 10, quantiles: Iterable[float] = QUANTILES) -> dict:
    x = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    x = np.where(np.isfinite(x), x, np.nan)
    n = int(len(x))
    valid = x[~np.isnan(x)]
    nulls = n - int(len(valid))
    prof: dict[str, Any] = {"kind": "numeric", "dtype": str(s.dtype), "count": n, "null_count": nulls,
                            "null_rate": (nulls / n) if n else 0.0}
    if len(valid) == 0:
        prof.update(min=None, max=None, mean=None, std=None, quantiles={}, bin_edges=[], counts=[])
        return prof
    edges = np.unique(np.quantile(valid, np.linspace(0.0, 1.0, bins + 1)))
    if len(edges) == 1:
        edges = np.array([edges[0], edges[0]])
    prof.update(min=float(valid.min()), max=float(valid.max()), mean=float(valid.mean()),
                std=float(valid.std(ddof=0)),
                quantiles={_qkey(q): float(np.quantile(valid, q)) for q in quantiles},
                bin_edges=[float(e) for e in edges], counts=_counts(edges, valid).tolist())
    return prof


def categorical_profile(s: pd.Series, *, top_k: int = 20) -> dict:
    n = int(len(s))
    nulls = int(s.isna().sum())
    vc = s.dropna().astype(str).value_counts()
    top = vc.iloc[:top_k]
    nonnull = n - nulls
    other = int(vc.iloc[top_k:].sum())
    return {"kind": "categorical", "dtype": str(s.dtype), "count": n, "null_count": nulls,
            "null_rate": (nulls / n) if n else 0.0, "n_unique": int(len(vc)),
            "counts": {str(k): int(v) for k, v in top.items()},
            "frequencies": {str(k): (int(v) / nonnull) for k, v in top.items()},
            "other_count": other, "other_frequency": (other / nonnull) if nonnull else 0.0}


def _qkey(q: float) -> str:
    return f"{q:g}"


def _counts(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    idx = np.searchsorted(edges[1:-1], values, side="right")
    return np.bincount(idx, minlength=len(edges) - 1).astype("int64")


def bin_counts(feature_profile: Mapping, values: Any) -> dict:
    """Count new values the way the reference was counted: numeric -> {"counts": [...], "null_count"},
    categorical -> {"counts": {category: n}, "other_count", "null_count"} over the reference's categories."""
    s = pd.Series(values)
    if feature_profile["kind"] == "numeric":
        x = pd.to_numeric(s, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
        ok = np.isfinite(x)
        edges = np.asarray(feature_profile["bin_edges"], dtype="float64")
        counts = _counts(edges, x[ok]).tolist() if len(edges) else []
        return {"counts": counts, "null_count": int((~ok).sum())}
    nulls = int(s.isna().sum())
    vc = s.dropna().astype(str).value_counts()
    known = feature_profile["counts"]
    counts = {k: int(vc.get(k, 0)) for k in known}
    return {"counts": counts, "other_count": int(vc.sum()) - sum(counts.values()), "null_count": nulls}


def describe(profile: Mapping) -> list[tuple[str, str, str, str]]:
    """(feature, kind, null rate, summary) rows for printing."""
    rows = []
    for name, f in profile["features"].items():
        if f["kind"] == "numeric":
            q = f.get("quantiles", {})
            summ = (f"p50={_fmt(q.get('0.5'))} p99={_fmt(q.get('0.99'))} bins={len(f['counts'])}"
                    if f["counts"] else "all null")
        else:
            top = sorted(f["frequencies"].items(), key=lambda kv: -kv[1])[:3]
            summ = ", ".join(f"{k}={v:.0%}" for k, v in top) + (f" (+{f['n_unique'] - len(top)} more)"
                                                               if f["n_unique"] > len(top) else "")
        rows.append((name, f["kind"], f"{f['null_rate']:.1%}", summ))
    return rows


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"
