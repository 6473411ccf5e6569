"""B12 worker for MLflow (runs in MLflow's own virtualenv, .bench/mlflow). Prints one JSON line.

SQLite backend (`sqlite:///DIR/mlflow.db`) and a local artifact folder (DIR/artifacts).

    .bench/mlflow/bin/python benchmarks/b12_mlflow.py log    DIR --keys 10 --steps 10000 [--batch]
    .bench/mlflow/bin/python benchmarks/b12_mlflow.py create DIR --runs 10000
    .bench/mlflow/bin/python benchmarks/b12_mlflow.py search DIR --queries 16
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import b12_common as c

os.environ.setdefault("MLFLOW_TRACKING_TELEMETRY_DISABLED", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

import mlflow  # noqa: E402
from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

EXPERIMENT = "b12"
FAST_CREATE = False


def open_store(d: Path) -> tuple[MlflowClient, str]:
    """Tracking URI, experiment (created with a local artifact folder) — outside the timed part."""
    mlflow.set_tracking_uri(f"sqlite:///{d / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(
        EXPERIMENT, artifact_location=(d / "artifacts").resolve().as_uri())
    mlflow.set_experiment(experiment_id=exp_id)
    return client, exp_id


def log(d: Path, keys: int, steps: int, batch: bool) -> dict:
    client, _ = open_store(d)
    run = mlflow.start_run(run_name="b12-log-batch" if batch else "b12-log")
    run_id = run.info.run_id
    t0 = time.perf_counter()
    if batch:  # MlflowClient.log_batch, 1000 metrics per call (MLflow's per-request limit)
        buf: list[Metric] = []
        for step in range(steps):
            ts = int(time.time() * 1000)
            for k in range(keys):
                buf.append(Metric(f"m{k}", c.metric_value(k, step), ts, step))
                if len(buf) == 1000:
                    client.log_batch(run_id, metrics=buf)
                    buf = []
        if buf:
            client.log_batch(run_id, metrics=buf)
    else:  # the per-point public API
        for step in range(steps):
            for k in range(keys):
                mlflow.log_metric(f"m{k}", c.metric_value(k, step), step=step)
    mlflow.end_run()
    secs = time.perf_counter() - t0
    stored = sum(len(client.get_metric_history(run_id, f"m{k}")) for k in range(keys))
    last = client.get_run(run_id).data.metrics
    ok = stored == keys * steps and all(abs(last[f"m{k}"] - c.metric_value(k, steps - 1)) < 1e-12 for k in range(keys))
    return {"points": keys * steps, "seconds": secs, "stored_points": stored, "check_ok": ok}


def _relax_sqlite_durability() -> None:
    """Creation only (not the measured part): no fsync per commit, so 10k runs fit the time budget.
    Per-connection pragmas: the file, and every later (search) process, are unaffected."""
    import sqlalchemy as sa

    @sa.event.listens_for(sa.engine.Engine, "connect")
    def _pragmas(dbapi_conn, _rec):  # noqa: ANN001
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        cur.close()


def create(d: Path, runs: int, api_runs: int | None = None) -> dict:
    """MlflowClient calls (create_run, one log_batch with the params and metrics, set_terminated):
    lighter than the fluent API's start_run (no run-context tags, no git lookup), to fit 10k runs in time."""
    client, exp_id = open_store(d)
    from mlflow.entities import Param
    api_runs = min(api_runs or runs, runs)
    t0 = time.perf_counter()
    for i in range(runs):
        name, params, metrics = c.run_spec(i)
        run_id = client.create_run(exp_id, run_name=name).info.run_id
        ts = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id)
        if i + 1 == api_runs:
            break
    secs = time.perf_counter() - t0
    out = {"runs": runs, "seconds": secs, "api": "MlflowClient", "synchronous_off": FAST_CREATE}
    if api_runs < runs:
        out.update(api_runs=api_runs, api_seconds=secs, seconds=secs * runs / api_runs, extrapolated=True,
                   bulk_seconds=_bulk_clone(d, run_id, api_runs, runs))
    return out


def _bulk_clone(d: Path, template: str, first: int, runs: int) -> float:
    """Runs first..runs-1 as direct SQL inserts into MLflow's own tables, copying every row the API wrote
    for the last API-created run (same columns, same tags) with each run's own id, name, params and
    metrics — only to get 10k runs into MLflow's store within the time budget. Search is then timed
    through MLflow's API on the result (and must agree with loopstack's answers)."""
    import sqlite3
    import uuid
    t0 = time.perf_counter()
    con = sqlite3.connect(d / "mlflow.db")
    run_row = con.execute("SELECT * FROM runs WHERE run_uuid = ?", (template,)).fetchone()
    cols = [r[1] for r in con.execute("PRAGMA table_info(runs)")]
    tag_rows = con.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (template,)).fetchall()
    base = dict(zip(cols, run_row))
    R, T, P, M = [], [], [], []
    for i in range(first, runs):
        name, params, metrics = c.run_spec(i)
        rid = uuid.uuid4().hex
        row = dict(base, run_uuid=rid, name=name, start_time=base["start_time"] + (i - first + 1) * 10,
                   end_time=base["end_time"] + (i - first + 1) * 10,
                   artifact_uri=base["artifact_uri"].replace(template, rid))
        R.append(tuple(row[k] for k in cols))
        T += [(k, name if k == "mlflow.runName" else v, rid) for k, v in tag_rows]
        P += [(k, v, rid) for k, v in params.items()]
        M += [(k, v, row["start_time"], rid, 0, 0) for k, v in metrics.items()]
    with con:
        con.executemany(f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", R)
        con.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", T)
        con.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", P)
        con.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) VALUES (?, ?, ?, ?, ?, ?)", M)
        con.executemany("INSERT INTO latest_metrics (key, value, timestamp, run_uuid, step, is_nan) "
                        "VALUES (?, ?, ?, ?, ?, ?)", M)
    con.close()
    return time.perf_counter() - t0


def search(d: Path, nq: int) -> dict:
    client, exp_id = open_store(d)
    qs = c.queries(nq)
    client.search_runs([exp_id], filter_string=qs[0][0], order_by=qs[0][1], max_results=c.MAX_RESULTS)  # warm-up
    per, answers = [], []
    for f, order in qs:
        t0 = time.perf_counter()
        res = client.search_runs([exp_id], filter_string=f, order_by=order, max_results=c.MAX_RESULTS)
        per.append(time.perf_counter() - t0)
        answers.append([r.info.run_name for r in res])
    assert all(len(r) > 0 for r in answers)
    return {"queries": nq, "seconds": sum(per), "per_query": per, "answers": answers}


def main() -> None:
    p = c.worker_parser()
    p.add_argument("--batch", action="store_true", help="log task: MlflowClient.log_batch instead of log_metric")
    p.add_argument("--api-runs", type=int, default=None,
                   help="create task: create only this many runs through the API (timed), bulk-insert the rest")
    p.add_argument("--fast-create", action="store_true", help="create task: PRAGMA synchronous=OFF (no fsync)")
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    if a.task == "create" and a.fast_create:
        global FAST_CREATE
        FAST_CREATE = True
        _relax_sqlite_durability()
    out = {"log": lambda: log(a.dir, a.keys, a.steps, a.batch), "create": lambda: create(a.dir, a.runs, a.api_runs),
           "search": lambda: search(a.dir, a.queries)}[a.task]()
    out["task"] = a.task
    out["mlflow_version"] = mlflow.__version__
    c.emit(out)


if __name__ == "__main__":
    main()
