"""Read columns of a pandas DataFrame, a pyarrow Table/RecordBatch or a mapping of arrays (pure, no I/O).

Two primitives, both vectorised: a numeric column as a float64 array (nulls and non-finite values
become NaN, as in `registry.profile`), and a categorical column as value counts keyed by ``str(value)``
(booleans are ``"True"``/``"False"``, like the registry's reference profile).
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import pandas as pd

from loopstack.errors import LoopstackError


class MonitoringError(LoopstackError, ValueError):
    """Bad input to a monitoring profile, drift statistic or check."""


def as_columns(data: Any) -> dict[str, Any]:
    """Column name -> column object (pd.Series, pyarrow array or numpy array), in the data's order."""
    if isinstance(data, pd.DataFrame):
        return {str(c): data[c] for c in data.columns}
    try:
        import pyarrow as pa
    except ImportError:  # pragma: no cover - pyarrow is a dependency
        pa = None
    if pa is not None and isinstance(data, (pa.Table, pa.RecordBatch)):
        return {name: data.column(i) for i, name in enumerate(data.schema.names)}
    if isinstance(data, Mapping):
        return {str(k): v for k, v in data.items()}
    raise MonitoringError(f"cannot profile a {type(data).__name__}: pass a pandas DataFrame, a pyarrow Table or "
                          "RecordBatch, or a mapping of column name -> array")


def column_names(names: Any) -> list[str]:
    """Column names from a list of them, or from one name (a string is one column, not its characters)."""
    if isinstance(names, (str, bytes)):
        return [names.decode() if isinstance(names, bytes) else names]
    return [str(c) for c in names]


def _is_arrow(col: Any) -> bool:
    mod = type(col).__module__
    return mod.startswith("pyarrow")


def is_numeric(col: Any) -> bool:
    """True for integer/float columns (booleans and strings are categorical, as in the registry)."""
    if _is_arrow(col):
        import pyarrow as pa
        t = col.type
        return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    s = col if isinstance(col, pd.Series) else pd.Series(np.asarray(col))
    return pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s)


def to_float(col: Any) -> np.ndarray:
    """The column as float64 with NaN for nulls (non-finite values are left to the caller)."""
    if _is_arrow(col):
        import pyarrow as pa
        import pyarrow.compute as pc
        return np.asarray(pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False), dtype="float64")
    if isinstance(col, pd.Series):
        if col.dtype == "float64":
            return col.to_numpy()
        return pd.to_numeric(col, errors="coerce").to_numpy(dtype="float64", na_value=np.nan)
    arr = np.asarray(col)
    if arr.dtype.kind in "fiu":
        return arr.astype("float64", copy=False)
    return pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(dtype="float64", na_value=np.nan)


def value_counts(col: Any) -> tuple[pd.Index, np.ndarray, int, int]:
    """(keys as str, counts, null count, row count) of a categorical column; keys are unique."""
    if _is_arrow(col):
        import pyarrow.compute as pc
        n = len(col)
        nulls = int(col.null_count)
        vc = pc.value_counts(col)
        values, counts = vc.field("values"), vc.field("counts")
        valid = values.is_valid()
        values = values.filter(valid)
        counts = np.asarray(counts.filter(valid).to_numpy(zero_copy_only=False), dtype="int64")
        keys = pd.Index(values.to_pandas()).astype(str)
    else:
        s = col if isinstance(col, pd.Series) else pd.Series(np.asarray(col, dtype=object))
        n = len(s)
        vc = s.value_counts(dropna=True, sort=False)
        counts = vc.to_numpy(dtype="int64")
        keys = vc.index.astype(str)
        nulls = n - int(counts.sum())
    if len(counts) and not counts.all():   # unused levels of a pandas Categorical
        keys, counts = keys[counts > 0], counts[counts > 0]
    if not keys.is_unique:  # e.g. 1 and "1" in an object column: same key, as in the registry
        grouped = pd.Series(counts).groupby(np.asarray(keys)).sum()
        keys, counts = pd.Index(grouped.index).astype(str), grouped.to_numpy(dtype="int64")
    return keys, counts, nulls, n


def dtype_name(col: Any) -> str:
    """A short dtype label for reports (numpy/pandas dtype or arrow type)."""
    if _is_arrow(col):
        return str(col.type)
    dtype = getattr(col, "dtype", None)
    return str(dtype if dtype is not None else np.asarray(col).dtype)


def scores_1d(scores: Any) -> np.ndarray:
    """Model scores as a 1-D float array: a 2-D predict_proba output contributes its last column."""
    arr = np.asarray(scores, dtype="float64")
    if arr.ndim == 2:
        arr = arr[:, -1]
    if arr.ndim != 1:
        raise MonitoringError(f"scores must be 1-D (or 2-D class probabilities), got shape {arr.shape}")
    return arr
