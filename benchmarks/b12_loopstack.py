"""B12 worker for loopstack (runs in .venv). Prints one JSON line with its timings.

    python benchmarks/b12_loopstack.py log    DIR --keys 10 --steps 10000
    python benchmarks/b12_loopstack.py create DIR --runs 10000
    python benchmarks/b12_loopstack.py search DIR --queries 16
"""
from __future__ import annotations

import time
from pathlib import Path

import b12_common as c

from loopstack import Project


def open_project(d: Path) -> Project:
    p = Project.init(d, name="b12", example=False) if not (d / "loopstack.yaml").exists() else Project(d)
    p.meta.migrate()  # open + migrate outside the timed part
    return p


def log(d: Path, keys: int, steps: int) -> dict:
    project = open_project(d)
    run = project.start_run("b12-log")
    t0 = time.perf_counter()
    for step in range(steps):
        for k in range(keys):
            run.log_metric(f"m{k}", c.metric_value(k, step), step=step)
    run.end()
    secs = time.perf_counter() - t0
    # check (untimed): every point is stored
    stored = sum(len(project.runs.metric_history(run.run_id, f"m{k}")) for k in range(keys))
    last = project.runs.get(run.run_id).metrics
    ok = stored == keys * steps and all(abs(last[f"m{k}"] - c.metric_value(k, steps - 1)) < 1e-12 for k in range(keys))
    return {"points": keys * steps, "seconds": secs, "stored_points": stored, "check_ok": ok}


def create(d: Path, runs: int) -> dict:
    project = open_project(d)
    t0 = time.perf_counter()
    for i in range(runs):
        name, params, metrics = c.run_spec(i)
        with project.start_run(name) as run:
            run.log_params(params)
            run.log_metrics(metrics, step=0)
    return {"runs": runs, "seconds": time.perf_counter() - t0}


def search(d: Path, nq: int) -> dict:
    project = open_project(d)
    qs = c.queries(nq)
    project.runs.search(qs[0][0], order_by=qs[0][1], max_results=c.MAX_RESULTS)  # warm-up, untimed
    per, answers = [], []
    for f, order in qs:
        t0 = time.perf_counter()
        res = project.runs.search(f, order_by=order, max_results=c.MAX_RESULTS)
        per.append(time.perf_counter() - t0)
        answers.append([r.name for r in res])
    assert all(len(r) > 0 for r in answers)
    return {"queries": nq, "seconds": sum(per), "per_query": per, "answers": answers}


def main() -> None:
    p = c.worker_parser()
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    out = {"log": lambda: log(a.dir, a.keys, a.steps), "create": lambda: create(a.dir, a.runs),
           "search": lambda: search(a.dir, a.queries)}[a.task]()
    out["task"] = a.task
    c.emit(out)


if __name__ == "__main__":
    main()
