"""B12: experiment tracking, loopstack vs MLflow (both on SQLite).

(a) logging 100k metric points (1 run, 10 keys x 10k steps) through the per-point public API
    (`run.log_metric(key, value, step)` / `mlflow.log_metric(key, value, step=)`), plus MLflow's batch
    API (`MlflowClient.log_batch`, 1000 metrics per call) as a second MLflow row;
(b) searching 10k runs (3 params + 3 metrics each): the runs are created once per system (creation
    time reported, not the target), then 16 queries `metrics.auc > T and params.lr = 'X'` ordered by
    `metrics.auc DESC`, max_results 100, are timed (after one untimed warm-up query). Both systems must
    return the same runs in the same order.

Every measurement runs in its own subprocess (peak RSS from /usr/bin/time -v); MLflow runs in its
own virtualenv (.bench/mlflow). Results: .bench/results/b12.json; --write-docs regenerates only the
B12 section of docs/benchmarks.md.

    python benchmarks/b12_tracking.py --quick                       # small sizes, 1 repeat
    python benchmarks/b12_tracking.py --repeat 3 --write-docs       # full sizes (the B12 numbers)
    python benchmarks/b12_tracking.py --report-only --write-docs
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from b1_pit_join import BENCH, RESULTS, _pkg_versions, _tree_rss, console  # noqa: E402  (.bench paths: b1_common)
from b12_report import print_report, write_docs  # noqa: E402  (the summary and the docs section)

WORK = BENCH / "b12"
MLFLOW_VENV = BENCH / "mlflow"
MLFLOW_PY = MLFLOW_VENV / "bin" / "python"

FULL = {"keys": 10, "steps": 10_000, "runs": 10_000, "queries": 16}
QUICK = {"keys": 10, "steps": 200, "runs": 300, "queries": 8}
LOG_ROWS = (("loopstack", "log_metric", False), ("mlflow", "log_metric", False), ("mlflow", "log_batch", True))


def ensure_mlflow_venv() -> None:
    if MLFLOW_PY.exists():
        return
    console.print("[bold]creating the MLflow virtualenv[/] (.bench/mlflow, pip install mlflow)")
    subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(MLFLOW_VENV)], check=True)
    subprocess.run([str(MLFLOW_VENV / "bin" / "pip"), "install", "-q", "mlflow"], check=True)


def worker_cmd(system: str, task: str, d: Path, size: dict, batch: bool = False) -> list[str]:
    py, script = (str(MLFLOW_PY), "b12_mlflow.py") if system == "mlflow" else (sys.executable, "b12_loopstack.py")
    cmd = [py, str(HERE / script), task, str(d), "--keys", str(size["keys"]), "--steps", str(size["steps"]),
           "--runs", str(size["runs"]), "--queries", str(size["queries"])]
    return cmd + (["--batch"] if batch else [])


def start(cmd: list[str], stem: Path) -> tuple[subprocess.Popen, float, float]:
    """Start a worker under /usr/bin/time -v. Its cwd is a scratch folder outside any git repository, so
    neither system spends time on git lookups of the benchmark's own checkout."""
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-v"] + cmd
    stem.parent.mkdir(parents=True, exist_ok=True)
    cwd = Path(tempfile.gettempdir()) / "b12-cwd"
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=str(HERE))
    fo, fe = open(f"{stem}.out", "w"), open(f"{stem}.err", "w")
    proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=str(cwd), env=env, start_new_session=True)
    return proc, time.perf_counter(), os.getloadavg()[0]


def finish(proc: subprocess.Popen, t0: float, load0: float, stem: Path, timeout: float) -> dict:
    ps, peak = psutil.Process(proc.pid), 0
    status = None
    while proc.poll() is None:
        peak = max(peak, _tree_rss(ps))
        if time.perf_counter() - t0 > timeout:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = "timeout"
            break
        time.sleep(0.2)
    wall = time.perf_counter() - t0
    err = Path(f"{stem}.err").read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    res = {"process_wall_seconds": round(wall, 3), "peak_rss_bytes": int(m.group(1)) * 1024 if m else peak,
           "returncode": proc.returncode, "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    lines = [ln for ln in Path(f"{stem}.out").read_text().splitlines() if ln.startswith("{")]
    if status is None and proc.returncode == 0 and lines:
        res.update(json.loads(lines[-1]))
        res["status"] = "ok"
    else:
        res["status"] = status or "error"
        res["error"] = "\n".join([ln for ln in err.splitlines() if ln.strip()][-8:])
    return res


def run_worker(cmd: list[str], stem: Path, timeout: float) -> dict:
    return finish(*start(cmd, stem), stem, timeout)


def fresh(d: Path) -> Path:
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


def median_of(rs: list[dict]) -> dict:
    bad = [r for r in rs if r["status"] != "ok"]
    if bad:
        return bad[0]
    out = dict(rs[-1])
    out["seconds"] = float(np.median([r["seconds"] for r in rs]))
    out["peak_rss_bytes"] = int(np.median([r["peak_rss_bytes"] for r in rs]))
    out["repeats"] = {"seconds": [r["seconds"] for r in rs], "peak_rss_bytes": [r["peak_rss_bytes"] for r in rs],
                      "load_average": [r["load_average"] for r in rs]}
    if "per_query" in out:
        out["per_query_median"] = float(np.median([q for r in rs for q in r["per_query"]]))
    return out


# ---------------------------------------------------------------- the two benchmarks ----------------
def bench_log(size: dict, repeat: int, timeout: float, tag: str, only: set[str], point_steps: int | None) -> dict:
    out = {}
    for system, api, batch in LOG_ROWS:
        name = f"{system}:{api}"
        if name not in only:
            continue
        rs, sz, reps = [], size, repeat
        if name == "mlflow:log_metric" and point_steps:  # MLflow's per-point API is too slow for 100k here
            sz, reps = {**size, "steps": point_steps}, 1
        for i in range(reps):
            d = fresh(WORK / f"{tag}-log-{system}-{api}")
            r = run_worker(worker_cmd(system, "log", d, sz, batch), RESULTS / "b12-logs" / f"{tag}-log-{system}-{api}-{i}",
                           timeout)
            rs.append(r)
            console.print(f"  log   {name:22s} #{i + 1}: " + (f"{r['seconds']:8.2f} s  RSS {r['peak_rss_bytes'] / 2**20:6.0f} MiB"
                                                             f"  stored {r['stored_points']:,} check_ok={r['check_ok']}"
                                                             if r["status"] == "ok" else f"{r['status']} {r.get('error', '')}"))
            if r["status"] != "ok":
                break
        out[name] = median_of(rs)
    return out


def _created(d: Path) -> dict | None:
    f = d / "created.json"
    return json.loads(f.read_text()) if f.exists() else None


def bench_search(size: dict, repeat: int, timeout: float, tag: str, parallel_create: bool, recreate: bool,
                 systems: tuple[str, ...] = ("loopstack", "mlflow"), mlflow_fast_create: bool = False,
                 mlflow_api_runs: int | None = None, no_search: bool = False) -> dict:
    out: dict = {"create": {}, "search": {}}
    dirs = {s: WORK / f"{tag}-search-{s}-n{size['runs']}" for s in ("loopstack", "mlflow")}
    todo = [s for s in systems if recreate or (_created(dirs[s]) or {}).get("status") != "ok"]
    started = {}
    for s in todo:
        fresh(dirs[s])
        stem = RESULTS / "b12-logs" / f"{tag}-create-{s}"
        cmd = worker_cmd(s, "create", dirs[s], size) + (["--fast-create"] if s == "mlflow" and mlflow_fast_create else [])
        if s == "mlflow" and mlflow_api_runs:
            cmd += ["--api-runs", str(mlflow_api_runs)]
        started[s] = (start(cmd, stem), stem)
        if not parallel_create:
            r = finish(*started.pop(s)[0], stem, timeout)
            r["concurrent"] = False
            (dirs[s] / "created.json").write_text(json.dumps(r))
    for s, (st, stem) in started.items():
        r = finish(*st, stem, timeout)
        r["concurrent"] = len(started) > 1
        (dirs[s] / "created.json").write_text(json.dumps(r))
    for s in systems:
        r = _created(dirs[s]) or {"status": "not created"}
        out["create"][s] = r
        console.print(f"  create {s:21s}: " + (f"{r['seconds']:8.1f} s for {r['runs']:,} runs" + (" (concurrently)" if r.get("concurrent") else "")
                                                if r["status"] == "ok" else f"{r['status']} {r.get('error', '')}"))
    for s in () if no_search else systems:
        if out["create"][s]["status"] != "ok":
            out["search"][s] = {"status": "not run (creation failed)"}
            continue
        rs = []
        for i in range(repeat):
            r = run_worker(worker_cmd(s, "search", dirs[s], size), RESULTS / "b12-logs" / f"{tag}-search-{s}-{i}", timeout)
            rs.append(r)
            console.print(f"  search {s:21s} #{i + 1}: " + (f"{r['seconds']:8.3f} s for {r['queries']} queries  RSS "
                                                            f"{r['peak_rss_bytes'] / 2**20:6.0f} MiB"
                                                            if r["status"] == "ok" else f"{r['status']} {r.get('error', '')}"))
            if r["status"] != "ok":
                break
        out["search"][s] = median_of(rs)
    return out


def _check_answers(out: dict) -> None:
    a, b = out["search"].get("loopstack", {}), out["search"].get("mlflow", {})
    if a.get("status") == b.get("status") == "ok":
        same = a["answers"] == b["answers"]
        out["same_answers"] = same
        out["answer_sizes"] = [len(x) for x in a["answers"]]
        if not same:
            diff = next(i for i, (x, y) in enumerate(zip(a["answers"], b["answers"])) if x != y)
            out["first_difference"] = {"query": diff, "loopstack": a["answers"][diff][:5], "mlflow": b["answers"][diff][:5]}


def machine() -> dict:
    import datetime as dt
    import platform
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "os": platform.platform(), "python": platform.python_version(), "date": dt.date.today().isoformat(),
            "loopstack_env": _pkg_versions(Path(sys.executable), ["loopstack", "sqlalchemy"]),
            "mlflow_env": _pkg_versions(MLFLOW_PY, ["mlflow", "mlflow-skinny", "sqlalchemy"]),
            "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help=f"small sizes {QUICK}")
    p.add_argument("--repeat", type=int, default=None, help="repeats per measurement (default 3, 1 with --quick)")
    p.add_argument("--only", default="log,search", help="log and/or search")
    p.add_argument("--log-rows", default=",".join(f"{s}:{a}" for s, a, _ in LOG_ROWS))
    p.add_argument("--mlflow-point-steps", type=int, default=None,
                   help="time MLflow's per-point log_metric row on this many steps (x keys) only, once")
    p.add_argument("--note", action="append", default=[], help="a note for the docs section")
    p.add_argument("--parallel-create", action="store_true",
                   help="create both systems' runs at the same time (creation is reported, not the target)")
    p.add_argument("--recreate", action="store_true", help="recreate the search runs even if they exist")
    p.add_argument("--mlflow-api-runs", type=int, default=None,
                   help="create only this many MLflow runs through its API (timed; the creation time is extrapolated) "
                        "and insert the rest with SQL copies of the API's rows")
    p.add_argument("--no-search", action="store_true", help="search: only create the runs")
    p.add_argument("--systems", default="loopstack,mlflow", help="search: which systems to create/search")
    p.add_argument("--mlflow-fast-create", action="store_true",
                   help="create MLflow's runs with PRAGMA synchronous=OFF (creation only; search is unaffected)")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--write-docs", action="store_true", help="regenerate the B12 section of docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true")
    a = p.parse_args()
    mode = "quick" if a.quick else "full"
    size = QUICK if a.quick else FULL
    repeat = a.repeat or (1 if a.quick else 3)
    f = RESULTS / f"b12{'-quick' if a.quick else ''}.json"
    res = json.loads(f.read_text()) if f.exists() else {}
    if not a.report_only:
        ensure_mlflow_venv()
        res.update(mode=mode, size=size, machine=machine())
        only = set(a.only.split(","))
        mine: dict = {}
        if "log" in only:
            mine["log"] = {**res.get("log", {}), **bench_log(size, repeat, a.timeout, mode, set(a.log_rows.split(",")),
                                                             a.mlflow_point_steps)}
            mine["uptime_log_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        if "search" in only:
            mine["search"] = bench_search(size, repeat, a.timeout, mode, a.parallel_create, a.recreate,
                                          tuple(a.systems.split(",")), a.mlflow_fast_create, a.mlflow_api_runs,
                                          a.no_search)
            mine["uptime_search_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        # re-read and merge only what this invocation measured (two invocations may run side by side)
        old = json.loads(f.read_text()) if f.exists() else {}
        if "search" in mine and "search" in old:  # merge per system (one invocation may measure one system)
            ms = mine["search"]
            for part in ("create", "search"):
                ms[part] = {**old["search"].get(part, {}), **ms[part]}
        res = {**old, "mode": mode, "size": size, "machine": res["machine"], **mine}
        if "search" in res:
            _check_answers(res["search"])
        if a.note:
            res["notes"] = a.note
        RESULTS.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(res, indent=1))
    print_report(res)
    if a.write_docs:
        write_docs(res)


if __name__ == "__main__":
    main()
