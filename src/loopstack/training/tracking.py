"""Experiment tracking (MLflow-like): runs with params, metric histories, tags, artifacts, datasets.

``with project.start_run("lgbm", tags={...}) as run: run.log_params(...); run.log_metric("auc", 0.9, step=3)``.
Recorded automatically: code version (git commit + dirty flag of the working directory's repo),
package versions, start/end/duration, and status (FINISHED, or FAILED with the exception text).

Writes are built for volume: `log_metric` appends to an in-memory buffer that is written in one
bulk insert per `flush_every` points (or `flush_interval` seconds, and always at the end), with
the latest value per metric kept in a small table so search is a handful of indexed joins.
"""
from __future__ import annotations


import json
import math
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import sqlalchemy as sa

from loopstack.errors import LoopstackError
from loopstack.meta.tx import run_transaction, upsert
from loopstack.training.provenance import git_info, package_versions
from loopstack.training.schema import latest_metrics, metrics, params, run_artifacts, run_datasets, runs, tags
from loopstack.training.search import order_clause, parse_filter, where_clause

if TYPE_CHECKING:
    from loopstack.training.report_html import Comparison

RUNNING, FINISHED, FAILED, KILLED = "RUNNING", "FINISHED", "FAILED", "KILLED"
_CHUNK = 900  # ids per IN (...) list: under SQLite's bound-parameter limit


class TrackingError(LoopstackError):
    """Misuse of the tracking API (unknown run, changed param, non-numeric metric, ...)."""


def _ms() -> int:
    return int(time.time() * 1000)


def _check_keys(what: str, keys: Iterable[str], limit: int = 255) -> None:
    """The metadata columns hold 255 characters (PostgreSQL enforces it; SQLite would not): say so first."""
    long = [k for k in keys if len(k) > limit]
    if long:
        raise TrackingError(f"{what} {long[0][:40]!r}... is {len(long[0])} characters long; the limit is {limit}: "
                            "use a shorter name")


def _num(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass
class RunInfo:
    """One stored run: attributes, params, latest metrics, tags, datasets and artifacts."""

    run_id: str
    name: str
    status: str
    start_time: int
    end_time: int | None
    duration_s: float | None
    error: str | None
    git_commit: str | None
    git_dirty: bool | None
    packages: dict
    artifact_uri: str
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    artifacts: list = field(default_factory=list)
    problems: dict = field(default_factory=dict)   # stored fields that could not be read, and why

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class Run:
    """An active run: log to it, then leave the `with` block (or call `end()`)."""

    def __init__(self, store: "RunStore", run_id: str, name: str, flush_every: int = 10_000,
                 flush_interval: float = 5.0) -> None:
        self.store, self.run_id, self.name = store, run_id, name
        self.flush_every, self.flush_interval = flush_every, flush_interval
        self._buf: list[tuple[str, int, float | None, int]] = []
        self._steps: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_flush = time.monotonic()
        self._t0 = time.monotonic()
        self.status = RUNNING

    @property
    def info(self) -> RunInfo:
        self.flush()
        return self.store.get(self.run_id)

    # -- params and tags (written at once: few and small) ---------------------------------------
    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, values: dict) -> None:
        """Record params; re-logging a param with a different value is an error (as in MLflow)."""
        values = {str(k): str(v) for k, v in values.items()}
        if not values:
            return
        _check_keys("param", values)

        def write(conn: sa.engine.Connection) -> None:
            old = {r.key: r.value for r in conn.execute(sa.select(params.c.key, params.c.value).where(
                params.c.run_id == self.run_id, params.c.key.in_(list(values))))}
            changed = {k: (old[k], v) for k, v in values.items() if k in old and old[k] != v}
            if changed:
                raise TrackingError(f"run {self.run_id}: params {changed} were already logged with other values "
                                    "(old, new); params are immutable: log a new key or start a new run")
            new = [{"run_id": self.run_id, "key": k, "value": v, "value_num": _num(v)}
                   for k, v in values.items() if k not in old]
            if new:
                conn.execute(params.insert(), new)
        # a concurrent logger inserted one of the keys first: re-run, which compares with its value
        run_transaction(self.store.engine, write, retry_on=(sa.exc.IntegrityError,))

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, values: dict) -> None:
        self.store._set_tags(self.run_id, values)

    # -- metrics (buffered) ---------------------------------------------------------------------
    def log_metric(self, key: str, value: Any, step: int | None = None, timestamp: int | None = None) -> None:
        """Append one point; `step` defaults to the key's previous step + 1 (0 first)."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TrackingError(f"metric {key!r} = {value!r} is not a number") from None
        _check_keys("metric", [key])
        with self._lock:
            if step is None:
                step = self._steps.get(key, -1) + 1
            self._steps[key] = max(int(step), self._steps.get(key, -1))
            self._buf.append((key, int(step), None if math.isnan(v) else v, timestamp or _ms()))
            due = len(self._buf) >= self.flush_every or time.monotonic() - self._last_flush > self.flush_interval
        if due:
            self.flush()

    def log_metrics(self, values: dict, step: int | None = None, timestamp: int | None = None) -> None:
        ts = timestamp or _ms()
        for k, v in values.items():
            self.log_metric(k, v, step=step, timestamp=ts)

    def flush(self) -> int:
        """Write buffered metric points in one transaction; returns how many were written."""
        with self._lock:
            buf, self._buf = self._buf, []
            self._last_flush = time.monotonic()
        if buf:
            self.store._write_metrics(self.run_id, buf)
        return len(buf)

    # -- artifacts and datasets -----------------------------------------------------------------
    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> list[str]:
        """Copy a file (or every file of a folder) into the run's artifacts; returns stored paths."""
        src = Path(path)
        if not src.exists():
            raise TrackingError(f"log_artifact: {src} does not exist")
        files = [src] if src.is_file() else sorted(f for f in src.rglob("*") if f.is_file())
        base = src.parent if src.is_file() else src.parent
        rows, stored = [], []
        for f in files:
            rel = "/".join(p for p in (artifact_path, str(f.relative_to(base)).replace("\\", "/")) if p)
            sha = self.store.artifacts.put_file(f"runs/{self.run_id}/artifacts/{rel}", f)
            rows.append({"run_id": self.run_id, "path": rel, "sha256": sha, "size": f.stat().st_size})
            stored.append(rel)
        _check_keys("artifact path", stored, limit=1024)
        run_transaction(self.store.engine,
                        lambda conn: upsert(conn, run_artifacts, rows, ["run_id", "path"], ["sha256", "size"]))
        return stored

    def log_dataset(self, dataset: Any) -> None:
        """Record which dataset snapshot (id, name, version, content hash) this run used."""
        m = dataset.manifest if hasattr(dataset, "manifest") else dataset
        row = dict(run_id=self.run_id, dataset_id=m["dataset_id"], name=m["name"], version=m["version"],
                   content_hash=m["content_hash"])
        run_transaction(self.store.engine, lambda conn: upsert(conn, run_datasets, [row], ["run_id", "dataset_id"],
                                                               ["name", "version", "content_hash"]))

    # -- ending ---------------------------------------------------------------------------------
    def end(self, status: str = FINISHED, error: str | None = None) -> None:
        if self.status != RUNNING:
            return
        self.flush()
        self.status = status
        values = dict(status=status, end_time=_ms(), duration_s=time.monotonic() - self._t0, error=error)
        run_transaction(self.store.engine,
                        lambda conn: conn.execute(runs.update().where(runs.c.run_id == self.run_id).values(**values)))

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            self.end(FINISHED)
        else:
            text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            self.end(FAILED if isinstance(exc, Exception) else KILLED, text)

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, name={self.name!r}, status={self.status})"


class RunStore:
    """Runs in the metadata database (`project.runs`): start, get, search, compare."""

    def __init__(self, meta: Any, artifacts: Any) -> None:
        self.meta, self.artifacts = meta, artifacts
        self.engine = meta.engine

    def start(self, name: str | None = None, tags: dict | None = None, datasets: Iterable[Any] = (),
              code_dir: str | Path | None = None, **run_options: Any) -> Run:
        run_id = uuid.uuid4().hex
        name = name or f"run-{run_id[:8]}"
        _check_keys("run name", [name])
        git = git_info(code_dir)
        row = dict(run_id=run_id, name=name, status=RUNNING, start_time=_ms(), git_commit=git["commit"],
                   git_dirty=git["dirty"], git_root=git["root"],
                   packages=json.dumps(package_versions(), sort_keys=True),
                   artifact_uri=f"{self.artifacts.root}/runs/{run_id}/artifacts")
        run_transaction(self.engine, lambda conn: conn.execute(runs.insert().values(**row)))
        run = Run(self, run_id, name, **run_options)
        if tags:
            run.set_tags(tags)
        for ds in datasets:
            run.log_dataset(ds)
        return run

    def _set_tags(self, run_id: str, values: dict) -> None:
        rows = [{"run_id": run_id, "key": str(k), "value": str(v)} for k, v in values.items()]
        _check_keys("tag", [r["key"] for r in rows])
        if rows:
            run_transaction(self.engine, lambda conn: upsert(conn, tags, rows, ["run_id", "key"], ["value"]))

    def _write_metrics(self, run_id: str, buf: list[tuple[str, int, float | None, int]]) -> None:
        latest: dict[str, tuple[int, int, float | None]] = {}
        for key, step, value, ts in buf:
            cur = latest.get(key)
            if cur is None or (step, ts) >= (cur[0], cur[1]):
                latest[key] = (step, ts, value)
        L = latest_metrics

        def newer(new: Any) -> Any:  # the stored latest point is replaced only by a later (step, timestamp)
            return sa.or_(new.step > L.c.step, sa.and_(new.step == L.c.step, new.timestamp >= L.c.timestamp))

        def write(conn: sa.engine.Connection) -> None:
            conn.execute(metrics.insert(), [{"run_id": run_id, "key": k, "step": s, "value": v, "timestamp": t}
                                            for k, s, v, t in buf])
            upsert(conn, L, [{"run_id": run_id, "key": k, "step": s, "timestamp": t, "value": v}
                             for k, (s, t, v) in latest.items()], ["run_id", "key"], ["step", "timestamp", "value"],
                   where=newer)
        run_transaction(self.engine, write)

    # -- reading ----------------------------------------------------------------------------------
    def resolve(self, run_id: str) -> str:
        """A full run id from an id or a unique prefix of one (at least 4 characters), or a run name."""
        with self.engine.connect() as conn:
            if conn.execute(sa.select(runs.c.run_id).where(runs.c.run_id == run_id)).first():
                return run_id
            hits = [r.run_id for r in conn.execute(sa.select(runs.c.run_id).where(
                runs.c.run_id.like(f"{run_id}%")).limit(3))] if len(run_id) >= 4 else []
            if not hits:
                hits = [r.run_id for r in conn.execute(sa.select(runs.c.run_id).where(runs.c.name == run_id)
                                                       .order_by(runs.c.start_time.desc()).limit(3))][:1]
        if len(hits) == 1:
            return hits[0]
        if not hits:
            raise TrackingError(f"no run {run_id!r}: give a run id (or a unique prefix, or a run name); "
                                "`loopstack runs list` shows them")
        raise TrackingError(f"run id prefix {run_id!r} is ambiguous ({', '.join(hits)}, ...): give more characters")

    def get(self, run_id: str) -> RunInfo:
        return self._load([self.resolve(run_id)])[0]

    def search(self, filter: str | None = None, order_by: Sequence[str] | str | None = None,
               max_results: int = 1000, status: str | None = None) -> list[RunInfo]:
        """Runs matching `filter` (see loopstack.training.search), ordered, at most `max_results`."""
        q = sa.select(runs.c.run_id).where(*where_clause(parse_filter(filter)))
        if status:
            q = q.where(runs.c.status == status)
        q = order_clause(q, [order_by] if isinstance(order_by, str) else list(order_by or [])).limit(int(max_results))
        with self.engine.connect() as conn:
            ids = [r.run_id for r in conn.execute(q)]
        return self._load(ids)

    def _load(self, ids: list[str]) -> list[RunInfo]:
        infos: dict[str, RunInfo] = {}
        with self.engine.connect() as conn:
            for i in range(0, len(ids), _CHUNK):
                chunk = ids[i:i + _CHUNK]
                for r in conn.execute(sa.select(runs).where(runs.c.run_id.in_(chunk))):
                    m = dict(r._mapping)
                    m.pop("git_root", None)
                    m["packages"], problems = _packages(m["packages"], r.run_id)
                    infos[r.run_id] = RunInfo(**m, problems=problems)
                for r in conn.execute(sa.select(params.c.run_id, params.c.key, params.c.value)
                                      .where(params.c.run_id.in_(chunk))):
                    infos[r.run_id].params[r.key] = r.value
                for r in conn.execute(sa.select(latest_metrics.c.run_id, latest_metrics.c.key, latest_metrics.c.value)
                                      .where(latest_metrics.c.run_id.in_(chunk))):
                    infos[r.run_id].metrics[r.key] = r.value if r.value is not None else float("nan")
                for r in conn.execute(sa.select(tags).where(tags.c.run_id.in_(chunk))):
                    infos[r.run_id].tags[r.key] = r.value
                for r in conn.execute(sa.select(run_datasets).where(run_datasets.c.run_id.in_(chunk))):
                    d = dict(r._mapping)
                    infos[d.pop("run_id")].datasets.append(d)
                for r in conn.execute(sa.select(run_artifacts).where(run_artifacts.c.run_id.in_(chunk))
                                      .order_by(run_artifacts.c.path)):
                    d = dict(r._mapping)
                    infos[d.pop("run_id")].artifacts.append(d)
        return [infos[i] for i in ids if i in infos]

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """Every logged point of one metric: (step, value, timestamp ms), by step then time."""
        run_id = self.resolve(run_id)
        q = (sa.select(metrics.c.step, metrics.c.value, metrics.c.timestamp)
             .where(metrics.c.run_id == run_id, metrics.c.key == key).order_by(metrics.c.step, metrics.c.timestamp))
        with self.engine.connect() as conn:
            return [(r.step, r.value if r.value is not None else float("nan"), r.timestamp) for r in conn.execute(q)]

    def artifact(self, run_id: str, path: str) -> bytes:
        return self.artifacts.get_bytes(f"runs/{self.resolve(run_id)}/artifacts/{path}")

    def compare(self, run_ids: Sequence[str]) -> "Comparison":
        from loopstack.training.report_html import Comparison
        infos = [self.get(r) for r in run_ids]
        keys = sorted({k for i in infos for k in i.metrics})
        histories = {k: {i.run_id: [(s, v) for s, v, _ in self.metric_history(i.run_id, k)] for i in infos
                         if k in i.metrics} for k in keys}
        return Comparison(infos, histories)


def _packages(text: Any, run_id: str) -> tuple[dict, dict]:
    """(packages, problems) of a stored run: an unreadable packages field is {} and named in problems."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as exc:
        value = exc
    if isinstance(value, dict):
        return value, {}
    return {}, {"packages": f"not a JSON object of package versions ({value}; stored: {str(text)[:60]!r}); the "
                            f"rest of run {run_id} is unaffected"}


def start_run(project: Any, name: str | None = None, tags: dict | None = None, **kwargs: Any) -> Run:
    return RunStore(project.meta, project.artifacts).start(name, tags, **kwargs)
