"""Training datasets without leakage: label delay, point-in-time features, temporal split, snapshots.

`build_dataset` takes labelled prediction events (entity key(s), prediction time, label, and the
time the label became final), keeps only labels final for at least `label_delay` before the
cut-off, joins features as of each prediction time (through `Project.get_historical_features`),
splits by time, and saves a versioned snapshot: train/eval Parquet plus a manifest, in the
artifact store, recorded in the ``ls_datasets`` table. The content hash covers the data itself
(schema, rows in a canonical order, the split), so rebuilding from the same inputs gives the same hash.
"""
from __future__ import annotations

import hashlib
import io
import json
import time
import uuid
import warnings
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import sqlalchemy as sa

from loopstack.errors import LogError, LoopstackError
from loopstack.timeutil import parse_duration, utcnow
from loopstack.training.schema import datasets as T
from loopstack.training.splits import EVAL, OUTSIDE, TRAIN, RandomSplit, TemporalSplit, to_utc

TIME_COLUMN, LABEL_COLUMN, LABEL_TIME_COLUMN = "event_timestamp", "label", "label_timestamp"
_LAKE_COLUMNS = ("_append_ts", "_partition", "_offset")
DROP_REASONS = {
    "missing_prediction_time": "the prediction time is missing",
    "missing_label": "the label is missing",
    "missing_label_time": "the label-final time is missing, so it is not known to be final",
    "not_final": "the label became final less than label_delay before the cut-off (it may still change)",
    "outside_split": "the prediction time is outside both the train and the eval range of the split",
}


class DatasetError(LoopstackError):
    """A dataset cannot be built or loaded as asked."""


# -- loading the label source ------------------------------------------------------------------
def _load_labels(project: Any, labels: Any, time_column: str) -> tuple[pd.DataFrame, dict]:
    if isinstance(labels, pd.DataFrame):
        return labels.copy(), {"kind": "dataframe", "rows": int(len(labels))}
    if isinstance(labels, pa.Table):
        return labels.to_pandas(), {"kind": "arrow", "rows": int(labels.num_rows)}
    if not isinstance(labels, (str, Path)):
        raise DatasetError(f"labels must be a DataFrame, a Parquet/CSV path or a log topic name, got "
                           f"{type(labels).__name__}")
    p = Path(labels).expanduser()
    if not p.is_absolute():
        p = project.root / p if (project.root / p).exists() else p
    if p.exists():
        files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
        if not files:
            raise DatasetError(f"labels folder {p} holds no .parquet files")
        df = _read_label_files(files)
        return df, {"kind": "file", "path": str(p), "files": len(files), "rows": int(len(df))}
    name = str(labels)
    try:
        cfg = project.log.topic(name)
    except LogError as exc:
        raise DatasetError(f"labels {name!r} is neither an existing file/folder nor a log topic ({exc}); "
                           "pass a DataFrame, a Parquet path, or the name of a topic holding the labels") from exc
    from loopstack.log.archive import archive_topic
    tf = time_column if any(f.name == time_column for f in cfg.schema) else None
    archive_topic(project.log, name, project.lake_path, timestamp_field=tf)
    files = sorted((project.lake_path / name).rglob("*.parquet"))
    if not files:
        raise DatasetError(f"log topic {name!r} holds no label events yet")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    df = table.drop_columns([c for c in _LAKE_COLUMNS if c in table.column_names]).to_pandas()
    ends = {str(k): int(v) for k, v in project.log.end_offsets(name).items()}
    return df, {"kind": "topic", "topic": name, "end_offsets": ends, "rows": int(len(df))}


def _read_label_files(files: list[Path]) -> pd.DataFrame:
    """Labels from one CSV file or Parquet files; an empty or unreadable file is a DatasetError naming it."""
    f = files[0]
    try:
        if f.suffix.lower() == ".csv":
            return pd.read_csv(f)
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive").to_pandas()
    except pd.errors.EmptyDataError:
        raise DatasetError(f"labels file {str(f)!r} is empty: it needs a header row and one row per "
                           "labelled prediction") from None
    except (pd.errors.ParserError, pa.ArrowException, UnicodeDecodeError, OSError) as exc:
        kind = "CSV" if f.suffix.lower() == ".csv" else "Parquet"
        raise DatasetError(f"labels file {str(f)!r} is not a readable {kind} file ({exc}); give a Parquet "
                           "file or folder, or a .csv file") from None


def _utc_times(s: pd.Series, name: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):   # pandas would read them as ns
        raise DatasetError(f"column {name!r} holds numbers ({s.dtype}), not times: as nanoseconds they are all "
                           "in 1970; give datetimes or ISO 8601 strings, e.g. pd.to_datetime(df[col], unit='s')")
    try:
        out = pd.to_datetime(s, utc=True, format="ISO8601") if s.dtype == object or pd.api.types.is_string_dtype(s) \
            else pd.to_datetime(s, utc=True)
    except (ValueError, TypeError) as exc:
        raise DatasetError(f"column {name!r} does not hold times ({exc}); give datetimes or ISO 8601 strings") from exc
    return out.astype("datetime64[us, UTC]")


def _feature_refs(project: Any, features: Sequence[str], full_names: bool) -> list[dict]:
    out = []
    for ref in features:
        if ":" in ref:
            view, feat = ref.split(":", 1)
            version = project.registry.view_version(view.strip())["version"]
            out.append({"ref": ref, "view": view.strip(), "feature": feat.strip(), "view_version": int(version),
                        "column": f"{view.strip()}__{feat.strip()}" if full_names else feat.strip()})
        else:
            versions = project.registry.versions_of("on_demand", ref)
            out.append({"ref": ref, "on_demand": True, "version": int(versions[-1]["version"]) if versions else None,
                        "column": ref})
    return out


# -- hashing and summaries ---------------------------------------------------------------------
def _row_hashes(df: pd.DataFrame) -> np.ndarray:
    if df.empty:
        return np.zeros(0, dtype=np.uint64)
    return pd.util.hash_pandas_object(df, index=False).to_numpy(dtype=np.uint64)


def content_hash(train: pd.DataFrame, eval_: pd.DataFrame) -> str:
    """sha256 of the schema and of every row of each part, in order (independent of file bytes)."""
    h = hashlib.sha256()
    h.update(json.dumps([[c, str(train[c].dtype)] for c in train.columns]).encode())
    for part, df in (("train", train), ("eval", eval_)):
        h.update(f"|{part}:{len(df)}|".encode())
        h.update(_row_hashes(df).tobytes())
    return "sha256:" + h.hexdigest()


def _class_balance(y: pd.Series) -> dict:
    y = y.dropna()
    if y.empty:
        return {}
    numeric = pd.api.types.is_numeric_dtype(y) and not pd.api.types.is_bool_dtype(y)
    if numeric and y.nunique() > 20:
        return {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())}
    counts = {str(k): int(v) for k, v in sorted(y.value_counts().items(), key=lambda kv: str(kv[0]))}
    out: dict[str, Any] = {"counts": counts}
    if set(counts) <= {"0", "1", "True", "False"}:
        out["positive_rate"] = round(float((y.astype(float) == 1).mean()), 6)
    return out


def _time_range(t: pd.Series) -> list[str | None]:
    return [t.min().isoformat(), t.max().isoformat()] if len(t) else [None, None]


def _parquet_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False), buf)
    return buf.getvalue()


# -- the dataset object --------------------------------------------------------------------------
class Dataset:
    """A stored dataset snapshot: `manifest`, and the `train` / `eval` frames (read on first use)."""

    def __init__(self, manifest: dict, artifacts: Any) -> None:
        self.manifest = manifest
        self._artifacts = artifacts

    id = property(lambda self: self.manifest["dataset_id"])
    name = property(lambda self: self.manifest["name"])
    version = property(lambda self: self.manifest["version"])
    content_hash = property(lambda self: self.manifest["content_hash"])
    dropped = property(lambda self: dict(self.manifest["dropped"]))
    label_column = property(lambda self: self.manifest["columns"]["label"])
    time_column = property(lambda self: self.manifest["columns"]["time"])
    entity_columns = property(lambda self: list(self.manifest["columns"]["entities"]))

    @property
    def feature_columns(self) -> list[str]:
        return [f["column"] for f in self.manifest["features"]]

    def _part(self, part: str) -> pd.DataFrame:
        raw = self._artifacts.get_bytes(self.manifest["files"][part]["path"])
        return pq.read_table(io.BytesIO(raw)).to_pandas()

    @cached_property
    def train(self) -> pd.DataFrame:
        return self._part("train")

    @cached_property
    def eval(self) -> pd.DataFrame:
        return self._part("eval")

    def X_y(self, part: str = "train") -> tuple[pd.DataFrame, pd.Series]:
        """Feature columns (in reference order) and the label of one part."""
        if part not in ("train", "eval"):
            raise DatasetError(f"part must be 'train' or 'eval', got {part!r}")
        df = self.train if part == "train" else self.eval
        return df[self.feature_columns], df[self.label_column]

    def report(self) -> list[str]:
        """Human-readable lines: rows kept, dropped and why, split, class balance."""
        m = self.manifest
        r = m["rows"]
        lines = [f"dataset {m['name']} v{m['version']} ({m['dataset_id']}) {m['content_hash'][:19]}",
                 f"labels: {r['input']} read, {r['kept']} kept, {m['dropped']['total']} dropped "
                 f"(cut-off {m['cutoff']}, label delay {m['label_delay']})"]
        for reason, n in m["dropped"]["by_reason"].items():
            if n:
                lines.append(f"  dropped {n}: {DROP_REASONS[reason]}")
        lines.append(f"train {r['train']} rows {m['time_range']['train']}, eval {r['eval']} rows "
                     f"{m['time_range']['eval']}")
        lines.append(f"class balance: train {m['class_balance']['train']}, eval {m['class_balance']['eval']}")
        return lines

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, version={self.version}, id={self.id!r}, "
                f"train={self.manifest['rows']['train']}, "
                f"eval={self.manifest['rows']['eval']})")


# -- building --------------------------------------------------------------------------------
def build_dataset(project: Any, labels: Any, features: Sequence[str], label_delay: Any = "24h",
                  split: TemporalSplit | RandomSplit | None = None, cutoff: Any = None, name: str | None = None,
                  *, time_column: str = TIME_COLUMN, label_column: str = LABEL_COLUMN,
                  label_time_column: str = LABEL_TIME_COLUMN, entity_columns: Sequence[str] | None = None,
                  full_feature_names: bool = False, eval_window: str = "7d") -> Dataset:
    """Build, store and return a dataset snapshot (see the module docstring and docs/datasets-and-tracking.md)."""
    features = [features] if isinstance(features, str) else list(features)
    if not features:
        raise DatasetError("features is empty: name at least one 'view:feature' reference")
    df, source = _load_labels(project, labels, time_column)
    source["columns"] = [str(c) for c in df.columns]
    if entity_columns is None:
        views = project.registry.views()
        entity_columns = []
        for ref in features:
            v = ref.split(":", 1)[0].strip() if ":" in ref else None
            if v in views and views[v].entity.join_key not in entity_columns:
                entity_columns.append(views[v].entity.join_key)
    needed = [time_column, label_column, label_time_column, *entity_columns]
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise DatasetError(
            f"labels lack column(s) {missing}; they have {list(df.columns)}. Name the columns with "
            "time_column= (prediction time), label_column=, label_time_column= (when the label became final)"
            " or add them")
    delay = parse_duration(label_delay)
    cut = to_utc(cutoff, "cutoff") if cutoff is not None else utcnow()
    df[time_column] = _utc_times(df[time_column], time_column)
    df[label_time_column] = _utc_times(df[label_time_column], label_time_column)

    # label delay: keep labels final for at least `delay` before the cut-off (inclusive boundary)
    reasons = pd.Series(pd.NA, index=df.index, dtype=object)
    checks = [("missing_prediction_time", df[time_column].isna()), ("missing_label", df[label_column].isna()),
              ("missing_label_time", df[label_time_column].isna()),
              ("not_final", df[label_time_column] > pd.Timestamp(cut - delay))]
    for reason, mask in checks:
        reasons[mask.fillna(False).to_numpy() & reasons.isna().to_numpy()] = reason
    dropped = {r: int((reasons == r).sum()) for r in DROP_REASONS}
    kept = df[reasons.isna().to_numpy()]
    if kept.empty:
        raise DatasetError(f"no label is final for {label_delay} before the cut-off {cut.isoformat()}: "
                           f"dropped {dropped}; move the cut-off later or shorten label_delay")

    # canonical order: by prediction time, then by the row's content (input order does not matter)
    order = pd.DataFrame({"t": kept[time_column].to_numpy(), "h": _row_hashes(kept)})
    kept = kept.iloc[np.lexsort((order["h"].to_numpy(), order["t"].to_numpy()))].reset_index(drop=True)
    label_side = kept.copy()

    refs = _feature_refs(project, features, full_feature_names)
    columns: dict[str, str] = {}
    for r in refs:
        if columns.get(r["column"]) == r["ref"]:
            raise DatasetError(f"feature {r['ref']!r} is listed twice: list each feature once")
        if r["column"] in columns:
            raise DatasetError(f"features {columns[r['column']]!r} and {r['ref']!r} both become column "
                               f"{r['column']!r}: pass full_feature_names=True to keep them apart")
        columns[r["column"]] = r["ref"]
    frame = project.get_historical_features(kept, features, full_feature_names=full_feature_names,
                                            timestamp_column=time_column)
    split = split if split is not None else TemporalSplit.last(frame[time_column], eval_window)
    side = split.assign(frame[time_column], label_side)
    dropped["outside_split"] = int((side == OUTSIDE).sum())
    train = frame[side == TRAIN].reset_index(drop=True)
    eval_ = frame[side == EVAL].reset_index(drop=True)
    if train.empty:
        raise DatasetError(f"the split {split.describe()} leaves no training rows among the {len(frame)} kept "
                           "labels; move train_end later")
    if eval_.empty:
        warnings.warn(f"the split {split.describe()} leaves no evaluation rows", UserWarning, stacklevel=3)
    chash = content_hash(train, eval_)
    name = name or (source.get("topic") or (Path(source["path"]).stem if "path" in source else "dataset"))
    if "@" in name or ":" in name:
        raise DatasetError(f"dataset name {name!r} holds '@' or ':', which a reference reads as name@version, "
                           "so the dataset could not be found by name: pick a name without them (name=/--name)")
    manifest = {
        "name": name, "content_hash": chash, "features": refs, "label_source": source,
        "columns": {"entities": list(entity_columns), "time": time_column, "label": label_column,
                    "label_time": label_time_column},
        "cutoff": cut.isoformat(), "label_delay": str(label_delay), "label_delay_seconds": delay.total_seconds(),
        "split": split.describe(),
        "time_range": {"all": _time_range(frame[time_column]), "train": _time_range(train[time_column]),
                       "eval": _time_range(eval_[time_column]),
                       "label_final": _time_range(kept[label_time_column])},
        "rows": {"input": int(len(df)), "kept": int(len(kept)), "train": int(len(train)), "eval": int(len(eval_))},
        "dropped": {"total": int(sum(dropped.values())), "by_reason": dropped},
        "class_balance": {"train": _class_balance(train[label_column]), "eval": _class_balance(eval_[label_column])},
        "schema": [{"name": str(c), "dtype": str(frame[c].dtype)} for c in frame.columns],
    }
    return _store(project, manifest, train, eval_)


def _store(project: Any, manifest: dict, train: pd.DataFrame, eval_: pd.DataFrame) -> Dataset:
    meta, art = project.meta, project.artifacts
    dataset_id = uuid.uuid4().hex[:16]
    for attempt in range(5):
        with meta.engine.connect() as conn:
            last = conn.execute(sa.select(sa.func.max(T.c.version)).where(T.c.name == manifest["name"])).scalar()
        version = (last or 0) + 1
        prefix = f"datasets/{manifest['name']}/v{version}-{dataset_id}"
        files = {}
        for part, df in (("train", train), ("eval", eval_)):
            path = f"{prefix}/{part}.parquet"
            files[part] = {"path": path, "sha256": art.put_bytes(path, _parquet_bytes(df)), "rows": int(len(df))}
        manifest = {**manifest, "dataset_id": dataset_id, "version": version, "files": files,
                    "created_at": utcnow().isoformat()}
        text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
        art.put_bytes(f"{prefix}/manifest.json", text.encode())
        try:
            with meta.engine.begin() as conn:
                conn.execute(T.insert().values(
                    dataset_id=dataset_id, name=manifest["name"], version=version,
                    content_hash=manifest["content_hash"],
                    artifact_prefix=prefix, rows_train=len(train), rows_eval=len(eval_), manifest=text,
                    created_at=int(time.time() * 1000)))
            return Dataset(manifest, art)
        except sa.exc.IntegrityError:  # another build took this version number: take the next
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


# -- reading back ----------------------------------------------------------------------------
def load_dataset(project: Any, ref: str) -> Dataset:
    """A stored dataset by id, by ``name@version`` (or ``name:version``), or by name (the newest version)."""
    if isinstance(ref, Dataset):
        return ref
    q = sa.select(T.c.manifest)
    with project.meta.engine.connect() as conn:
        row = conn.execute(q.where(T.c.dataset_id == str(ref))).first()
        if row is None:
            name, sep, ver = str(ref).replace(":", "@").rpartition("@")
            if sep and ver.isdigit():
                row = conn.execute(q.where(T.c.name == name, T.c.version == int(ver))).first()
            else:
                row = conn.execute(q.where(T.c.name == str(ref)).order_by(T.c.version.desc()).limit(1)).first()
    if row is None:
        known = sorted({d["name"] for d in list_datasets(project)})
        raise DatasetError(f"no dataset {ref!r}; known datasets: {known or 'none'} "
                           "(refer to one by id, name or name@version)")
    try:
        manifest = json.loads(row.manifest)
        if not isinstance(manifest, dict):
            raise ValueError(f"a JSON {type(manifest).__name__}, not an object")
    except ValueError as exc:
        raise DatasetError(f"the stored manifest of dataset {ref!r} is unreadable ({exc}; stored: "
                           f"{str(row.manifest)[:60]!r}): rebuild the dataset with `loopstack dataset build`") from None
    return Dataset(manifest, project.artifacts)


def list_datasets(project: Any, name: str | None = None) -> list[dict]:
    """Every stored dataset version (newest first): id, name, version, hash, row counts, created."""
    q = sa.select(T.c.dataset_id, T.c.name, T.c.version, T.c.content_hash, T.c.rows_train, T.c.rows_eval,
                  T.c.created_at).order_by(T.c.created_at.desc(), T.c.version.desc())
    if name:
        q = q.where(T.c.name == name)
    with project.meta.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(q)]
