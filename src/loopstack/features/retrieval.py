"""Historical feature retrieval, the user-facing layer: validate, plan per view, run the engine.

``get_historical_features(entity_df, features=["view:feature", ...], ...)`` checks everything a user
can get wrong before any engine work, groups references per view into ``ViewRequest``s, lets the
offline engine compute point-in-time values, then computes on-demand features row by row.
"""
from __future__ import annotations

import difflib
import warnings
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loopstack.errors import FeatureReferenceError, RetrievalError
from loopstack.features.definitions import Aggregation, EventSource, FeatureView, OnDemandFeature
from loopstack.features.offline.base import OfflineEngine, SourceData, ViewRequest
from loopstack.features.offline.duckdb import expand_paths

_ARROW = {"int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
          "float32": pa.float32(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
          "timestamp": pa.timestamp("us", tz="UTC")}


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def parse_reference(ref: str) -> tuple[str, str]:
    parts = ref.split(":") if isinstance(ref, str) else []
    if len(parts) != 2 or not all(p.strip() for p in parts):
        raise FeatureReferenceError(
            f"feature reference {ref!r} is malformed: write 'view:feature', e.g. 'author_stats:spam_7d'"
        )
    return parts[0].strip(), parts[1].strip()


def resolve(ref: str, views: dict[str, FeatureView]) -> tuple[FeatureView, Aggregation]:
    view_name, feat_name = parse_reference(ref)
    if view_name not in views:
        raise FeatureReferenceError(
            f"feature reference {ref!r}: unknown feature view {view_name!r}{_did_you_mean(view_name, views)} "
            f"(known views: {sorted(views)})"
        )
    view = views[view_name]
    names = [f.name for f in view.features]
    if feat_name not in names:
        raise FeatureReferenceError(
            f"feature reference {ref!r}: view {view_name!r} has no feature {feat_name!r}"
            f"{_did_you_mean(feat_name, names)} (it has {names})"
        )
    return view, view.feature(feat_name)


# a time of day ending in a zone designator (Z, +02, +0200, -05:30); a date alone is naive
_ZONED = r"[T ]\d\d(?::?\d\d){0,2}(?:[.,]\d+)?\s*(?:[zZ]|[+-]\d\d(?::?\d\d)?)$"


def normalize_timestamps(col: pa.ChunkedArray, name: str) -> pa.ChunkedArray:
    """Entity timestamps → timestamp[us, UTC]. Naive values are taken as UTC (with one warning)."""
    t = col.type
    if _is_text(t):
        values = col.to_pylist()
        try:
            parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=False)
        except (ValueError, TypeError):
            try:
                parsed = pd.to_datetime(pd.Series(values, dtype=object), format="ISO8601", utc=True)
            except (ValueError, TypeError) as exc:
                raise RetrievalError(
                    f"timestamp column {name!r} has strings that are not ISO 8601 times ({exc}); "
                    "give datetimes or strings like '2024-05-01T12:00:00Z'"
                ) from exc
            # several offsets, or naive and zoned strings mixed: utc=True took the naive ones as UTC
            if not pd.Series(values, dtype=object).dropna().str.contains(_ZONED, na=False).all():
                _warn_naive(name)
        if getattr(parsed.dt, "tz", None) is None:
            _warn_naive(name)
            parsed = parsed.dt.tz_localize("UTC")
        col = pa.chunked_array([pa.array(parsed.dt.tz_convert("UTC"), type=pa.timestamp("us", tz="UTC"))])
        t = col.type
    elif pa.types.is_date(t):
        _warn_naive(name)
        col = col.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
        t = col.type
    if not pa.types.is_timestamp(t):
        raise RetrievalError(
            f"timestamp column {name!r} holds {t}, not times; give datetimes (tz-aware preferred) or ISO 8601 strings"
        )
    if t.tz is None:
        _warn_naive(name)
        col = col.cast(pa.timestamp(t.unit, tz="UTC"))
    col = col.cast(pa.timestamp("us", tz="UTC"), safe=False)
    if col.null_count:
        raise RetrievalError(
            f"timestamp column {name!r} has {col.null_count} null value(s); every entity row needs a time"
        )
    return col


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _check_key_type(col: pa.ChunkedArray, view: FeatureView) -> None:
    """entity_df's key column must hold the entity's kind of value: strings against int64 keys failed deep
    in the offline engine with a cast error that named neither the column nor the fix, and a fractional
    float (1.5) against int64 keys matched no entity and quietly gave empty features."""
    t, want, key = col.type, view.entity.dtype.lower(), view.entity.join_key
    if pa.types.is_dictionary(t):   # a pandas categorical
        t = t.value_type
    if want.startswith(("int", "uint", "float")):
        fits, fix = pa.types.is_integer(t) or pa.types.is_floating(t), f"df[{key!r}].astype('int64')"
    elif want == "string":
        fits, fix = _is_text(t), f"df[{key!r}].astype(str)"
    else:
        return   # another key type (e.g. bytes): the engine compares it as it is
    if fits and pa.types.is_floating(t) and want.startswith(("int", "uint")):
        frac = pc.filter(col, pc.not_equal(col, pc.floor(col)))   # (NaN and null: no key, as elsewhere)
        frac = pc.filter(frac, pc.invert(pc.is_nan(frac)))
        if len(frac):
            raise RetrievalError(
                f"entity_df column {key!r} holds {len(frac)} fractional value(s), e.g. {frac[0].as_py()!r}, but "
                f"entity {view.entity.name!r} (feature view {view.name!r}) is keyed by {want}: no entity has "
                f"such a key; fix the column (whole numbers, e.g. df[{key!r}].astype('int64'))")
    if fits or pa.types.is_null(t):
        return
    held = ("string" if _is_text(t) else "integer" if pa.types.is_integer(t)
            else "float" if pa.types.is_floating(t) else str(t))
    raise RetrievalError(
        f"entity_df column {key!r} holds {held} values, but entity {view.entity.name!r} (feature view "
        f"{view.name!r}) is keyed by {want}; convert the column first, e.g. {fix}")


def _warn_naive(name: str) -> None:
    warnings.warn(
        f"timestamp column {name!r} has timezone-naive times; they are interpreted as UTC. "
        "Pass tz-aware datetimes to silence this warning.", UserWarning, stacklevel=4)


def has_events(data: SourceData) -> bool:
    """Whether any file behind the source holds at least one event (cheap: metadata / first lines)."""
    fmt = (data.format or "parquet").lower()
    files = expand_paths(data.paths, fmt)
    for f in files:
        if "://" in f:
            return True
        try:
            if fmt == "parquet" and pq.ParquetFile(f).metadata.num_rows > 0:
                return True
            if fmt == "csv":
                with open(f, "rb") as fh:
                    if sum(1 for line, _ in zip(fh, range(2)) if line.strip()) >= 2:
                        return True
        except (OSError, pa.ArrowInvalid):
            return True  # unreadable here; let the engine report it precisely
    return False


def _no_history(view: FeatureView, data: SourceData) -> RetrievalError:
    src: EventSource = view.source
    if src.topic:
        hint = (f"append to topic {src.topic!r} (or `loopstack log append {src.topic}`) and materialize it "
                f"to the offline store")
    else:
        hint = f"check path {src.path!r}"
    looked = ", ".join(data.paths) or "(no paths)"
    return RetrievalError(
        f"feature view {view.name!r} has no history: source {src.name!r} has no events; {hint} "
        f"(looked in {looked})"
    )


def check_batch_files(view: FeatureView, data: SourceData, where: str) -> None:
    """Refuse a batch-file source whose path (`where`, resolved) matches no file: materializing it would mark
    the interval done, and the events of files created later in that interval would never reach the online store."""
    if view.source.is_batch and not expand_paths(data.paths, (data.format or "parquet").lower()):
        raise RetrievalError(f"source {view.source.name!r} of feature view {view.name!r}: path {view.source.path!r} "
                             f"matches no file (looked for {where}); check the path, nothing was materialized")


def get_historical_features(entity_df: pd.DataFrame | pa.Table, features: list[str],
                            views: dict[str, FeatureView], source_data: Callable[[EventSource], SourceData],
                            engine: OfflineEngine, full_feature_names: bool = False,
                            timestamp_column: str = "event_timestamp",
                            on_demand: dict[str, OnDemandFeature] | None = None,
                            output: str = "pandas") -> pd.DataFrame | pa.Table:
    """Point-in-time correct features for every row of `entity_df` (see docs/offline-store.md).

    `features` are "view:feature" references, or bare names of entries of `on_demand` (computed
    only when named). Output: the input
    columns in input order (the timestamp column as tz-aware UTC), then one column per feature in
    reference order, named `feature` or `view__feature` with `full_feature_names=True`.
    """
    if output not in ("pandas", "arrow"):
        raise RetrievalError(f"output={output!r}: use 'pandas' or 'arrow'")
    on_demand = dict(on_demand or {})
    index = None
    if isinstance(entity_df, pd.DataFrame):
        index = entity_df.index
        table = pa.Table.from_pandas(entity_df, preserve_index=False)
    elif isinstance(entity_df, pa.Table):
        table = entity_df
    else:
        raise RetrievalError(f"entity_df must be a pandas DataFrame or a pyarrow Table, got {type(entity_df).__name__}")
    if timestamp_column not in table.column_names:
        raise RetrievalError(
            f"entity_df has no timestamp column {timestamp_column!r}; its columns are {table.column_names}. "
            f"Add the time of each row, or pass timestamp_column= naming the column that holds it"
            f"{_did_you_mean(timestamp_column, table.column_names)}"
        )
    if isinstance(features, str):
        features = [features]

    # resolve references; on-demand inputs are retrieved too but only shown if asked for
    odfv_wanted = [f for f in features if ":" not in f and f in on_demand]
    refs: list[str] = []
    for f in features:
        if ":" not in f and f in on_demand:
            continue
        if ":" not in f and on_demand:
            raise FeatureReferenceError(
                f"feature reference {f!r} is malformed: write 'view:feature', or name an on-demand feature"
                f"{_did_you_mean(f, on_demand)} (on-demand features: {sorted(on_demand)})"
            )
        if f not in refs:
            refs.append(f)
    hidden: list[str] = []
    for name in odfv_wanted:
        for inp in on_demand[name].inputs:
            if ":" in inp:
                if inp not in refs and inp not in hidden:
                    hidden.append(inp)
            elif inp not in table.column_names:
                raise FeatureReferenceError(
                    f"on-demand feature {name!r} needs input {inp!r}, which is neither a 'view:feature' "
                    f"reference nor a column of entity_df (columns: {table.column_names})"
                )
    resolved = [(ref, *resolve(ref, views)) for ref in refs + hidden]

    # output names and collisions
    out_names: dict[str, str] = {}
    by_name: dict[str, str] = {}
    for ref, view, agg in resolved:
        name = f"{view.name}__{agg.name}" if full_feature_names else agg.name
        if name in by_name and by_name[name] != ref:
            raise FeatureReferenceError(
                f"feature name {agg.name!r} is requested from views {by_name[name].split(':')[0]!r} and "
                f"{view.name!r}; pass full_feature_names=True so columns are named 'view__feature' "
                f"({by_name[name].split(':')[0]}__{agg.name}, {view.name}__{agg.name})"
            )
        if name in table.column_names:
            raise FeatureReferenceError(
                f"feature {ref!r} would be written to column {name!r}, which entity_df already has; "
                "rename that column or pass full_feature_names=True"
            )
        by_name[name] = ref
        out_names[ref] = name
    for name in odfv_wanted:
        if name in table.column_names or name in by_name:
            raise FeatureReferenceError(f"on-demand feature {name!r} collides with an existing column {name!r}")

    # join keys, sources
    grouped: dict[str, list[tuple[Aggregation, str]]] = {}
    view_of: dict[str, FeatureView] = {}
    for ref, view, agg in resolved:
        key = view.entity.join_key
        if key not in table.column_names:
            raise RetrievalError(
                f"feature view {view.name!r} is keyed by {key!r} (entity {view.entity.name!r}), but entity_df "
                f"has no {key!r} column; its columns are {table.column_names}"
            )
        _check_key_type(table[key], view)
        grouped.setdefault(view.name, []).append((agg, out_names[ref]))
        view_of[view.name] = view
    requests = []
    for vname, feats in grouped.items():
        view = view_of[vname]
        data = source_data(view.source)
        if not has_events(data):
            raise _no_history(view, data)
        requests.append(ViewRequest(view, tuple(feats), data))

    ts_col = normalize_timestamps(table[timestamp_column], timestamp_column)
    table = table.set_column(table.column_names.index(timestamp_column), timestamp_column, ts_col)
    result = engine.historical_features(table, timestamp_column, requests) if requests else table

    # on-demand features, row-wise
    if odfv_wanted:
        cols = {c: result[c].to_pylist() for c in table.column_names}
        for ref, name in out_names.items():
            cols[ref] = cols[name] = result[name].to_pylist()
        odfvs = [on_demand[name] for name in odfv_wanted]
        keys = list(cols)
        computed = [compute_on_demand(odfvs, {k: cols[k][i] for k in keys}, f" on row {i}")
                    for i in range(result.num_rows)]
        for name in odfv_wanted:
            odfv = on_demand[name]
            values = [c[name] for c in computed]
            try:
                arr = pa.array(values, type=_ARROW[odfv.dtype])
            except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                raise RetrievalError(
                    f"on-demand feature {name!r} returned values that are not {odfv.dtype}: {exc}") from exc
            result = result.append_column(name, arr)
            cols[name] = values
    hidden_names = {out_names[r] for r in hidden if r not in refs}
    keep = [c for c in result.column_names if c not in hidden_names]
    result = result.select(keep)
    if output == "arrow":
        return result
    return _to_pandas(result, entity_df if isinstance(entity_df, pd.DataFrame) else None, timestamp_column, index)


def compute_on_demand(odfvs: list[OnDemandFeature], row: dict[str, Any], where: str = "") -> dict[str, Any]:
    """On-demand values for one row, in order; each sees the row (request columns, features by reference
    and by output name) plus the ones computed before it. Offline retrieval and online serving both call
    this, so the two cannot compute a request-time feature differently."""
    out: dict[str, Any] = {}
    for odfv in odfvs:
        try:
            row[odfv.name] = out[odfv.name] = odfv.compute(row)
        except Exception as exc:  # noqa: BLE001 - user code; say where it failed
            raise RetrievalError(f"on-demand feature {odfv.name!r} failed{where}: {exc!r}") from exc
    return out


def _to_pandas(result: pa.Table, original: pd.DataFrame | None, ts_name: str, index) -> pd.DataFrame:
    if original is None:
        df = result.to_pandas()
    else:  # keep the user's columns and dtypes untouched; only the timestamp becomes UTC-aware
        df = original.copy()
        names = result.column_names[original.shape[1]:]
        if set(names) & set(df.columns) or not names:
            for name in names:
                df[name] = _series(result[name], index)
        else:  # one threaded conversion per dtype group, one concat (not a block insert per column)
            nullable = [n for n in names if result[n].null_count and (pa.types.is_integer(result[n].type)
                                                                      or pa.types.is_boolean(result[n].type))]
            rest = [n for n in names if n not in set(nullable)]
            parts = [result.select(rest).to_pandas()] if rest else []
            if nullable:
                parts.append(result.select(nullable).to_pandas(types_mapper=_NULLABLE.get))
            new = (pd.concat(parts, axis=1) if len(parts) > 1 else parts[0])[names]
            df = pd.concat([df, new.set_axis(df.index)], axis=1)
    df[ts_name] = result[ts_name].to_pandas().set_axis(df.index)
    return df


_NULLABLE = {pa.int8(): pd.Int8Dtype(), pa.int16(): pd.Int16Dtype(), pa.int32(): pd.Int32Dtype(),
             pa.int64(): pd.Int64Dtype(), pa.bool_(): pd.BooleanDtype()}


def _series(col: pa.ChunkedArray, index) -> Any:
    t = col.type
    if col.null_count and (pa.types.is_integer(t) or pa.types.is_boolean(t)):
        s = col.to_pandas(types_mapper=_NULLABLE.get)
    else:
        s = col.to_pandas()
    return s.set_axis(index) if index is not None else s
