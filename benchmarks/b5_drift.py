"""B5: drift report, loopstack vs Evidently vs NannyML, on 1M reference x 1M current rows (20 numeric +
5 categorical columns), plus the check of a new 100k-row window against a stored reference profile.

Generates the data (b5_data.py, cached in .bench/b5), then runs, one fresh process each and one after
the other (peak RSS from /usr/bin/time -v):
  loopstack:profile   one-time: profile the reference, store it as JSON (not part of any ratio)
  loopstack:window    load the stored profile + profile the window + score_profile      } the check
  evidently:window    DataDriftPreset reports (KS/chi2 and PSI) on reference x window    } (target >= 100x)
  nannyml:window      UnivariateDriftCalculator fit(reference) + calculate(window)       }
  loopstack:full      DataDriftDetector.fit(reference).score(current), exact KS           } the full report
  evidently:full      the same two Evidently reports on reference x current              } (target >= 20x)
  nannyml:full        NannyML on reference x current                                     }
Times are of the drift work on DataFrames already in memory (Parquet reading is the same pandas call
for everyone, reported apart); imports are excluded for every system. Then compares the per-column
drift flags across systems (b5_report.py) and prints the table; --write-docs writes the B5 section of
docs/benchmarks.md. Evidently and NannyML live in their own virtualenvs (.bench/evidently,
.bench/nannyml; created here if missing).

    python benchmarks/b5_drift.py --quick                   # 100k x 100k, 10k window: smoke test
    python benchmarks/b5_drift.py --repeat 3 --write-docs   # the B5 numbers (1M x 1M, 100k window)
    python benchmarks/b5_drift.py --report-only --write-docs
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

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import b5_data  # noqa: E402
import b5_report  # noqa: E402

BENCH = REPO / ".bench"
RESULTS = BENCH / "results"
LOGS = RESULTS / "b5-logs"
VENVS = {"evidently": BENCH / "evidently", "nannyml": BENCH / "nannyml"}
# what the peers' virtualenvs get (versions as measured; see the install notes in b5_report.QUIRKS)
INSTALL = {"evidently": [["evidently==0.7.23"], ["pandas<3"]],
           "nannyml": [["nannyml==0.13.1"], ["statsmodels"]]}
WORKER_ENV = {"DO_NOT_TRACK": "1", "ITERATIVE_DO_NOT_TRACK": "1", "NML_DISABLE_USAGE_LOGGING": "1"}
ORDER = ["loopstack:profile", "loopstack:window", "evidently:window", "nannyml:window",
         "loopstack:full", "evidently:full", "nannyml:full"]
QUICK_ROWS, QUICK_WINDOW = 100_000, 10_000


def python_of(system: str) -> str:
    return sys.executable if system == "loopstack" else str(VENVS[system] / "bin" / "python")


def ensure_venv(system: str) -> None:
    if Path(python_of(system)).exists():
        return
    log = BENCH / f"{system}_install.log"
    print(f"creating {VENVS[system]} (pip install {' '.join(' '.join(s) for s in INSTALL[system])}), log {log}")
    with open(log, "a") as f:
        subprocess.run([shutil.which("python3") or sys.executable, "-m", "venv", str(VENVS[system])], check=True,
                       stdout=f, stderr=f)
        for spec in INSTALL[system]:
            subprocess.run([str(VENVS[system] / "bin" / "pip"), "install", *spec], check=True, stdout=f, stderr=f)


def command(key: str, data: Path, profile_json: Path) -> list[str]:
    system, task = key.split(":")
    cmd = [python_of(system), str(HERE / f"b5_{system}.py"), task, str(data)]
    return cmd + ([str(profile_json)] if system == "loopstack" and task in ("profile", "window") else [])


def run_worker(cmd: list[str], stem: Path, timeout: float) -> dict:
    """One fresh process; its last stdout line is the worker's JSON. Never raises for a failed run."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    full = (["/usr/bin/time", "-v"] if os.path.exists("/usr/bin/time") else []) + cmd
    env = dict(os.environ, PYTHONPATH=str(HERE), **WORKER_ENV)
    cwd = Path(tempfile.gettempdir()) / "b5-cwd"
    cwd.mkdir(exist_ok=True)
    load0, t0 = os.getloadavg()[0], time.perf_counter()
    with open(f"{stem}.out", "w") as fo, open(f"{stem}.err", "w") as fe:
        try:
            proc = subprocess.run(full, stdout=fo, stderr=fe, cwd=str(cwd), env=env, timeout=timeout)
            status, rc = None, proc.returncode
        except subprocess.TimeoutExpired:
            status, rc = "timeout", None
    res: dict = {"process_wall_seconds": round(time.perf_counter() - t0, 3), "returncode": rc,
                 "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}
    err = Path(f"{stem}.err").read_text(errors="replace")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    lines = [ln for ln in Path(f"{stem}.out").read_text(errors="replace").splitlines() if ln.startswith("{")]
    if status is None and rc == 0 and lines:
        res.update(json.loads(lines[-1]))
        res["peak_rss_bytes"] = int(m.group(1)) * 1024 if m else res.get("peak_rss_self_bytes")
        res["status"] = "ok"
    else:
        res["status"] = status or "error"
        res["error"] = "\n".join([ln for ln in err.splitlines() if ln.strip() and "\t" not in ln][-8:])
    return res


def median_of(rs: list[dict]) -> dict:
    bad = [r for r in rs if r["status"] != "ok"]
    if bad:
        return bad[0]
    out = dict(rs[-1])
    for k in ("seconds", "load_seconds", "process_wall_seconds"):
        if k in out:
            out[k] = float(np.median([r[k] for r in rs]))
    out["peak_rss_bytes"] = int(np.median([r["peak_rss_bytes"] for r in rs]))
    out["repeats"] = {"seconds": [r["seconds"] for r in rs], "load_average": [r["load_average"] for r in rs]}
    if "run_seconds" in out:
        out["run_seconds"] = {k: float(np.median([r["run_seconds"][k] for r in rs])) for k in out["run_seconds"]}
    return out


def environment() -> dict:
    from b1_pit_join import _pkg_versions, machine_info
    info = {k: v for k, v in machine_info().items() if not k.endswith("_env")}
    info["loopstack_env"] = _pkg_versions(Path(sys.executable), ["loopstack", "numpy", "pandas", "scipy", "pyarrow"])
    for peer in VENVS:
        py = Path(python_of(peer))
        info[f"{peer}_env"] = _pkg_versions(py, [peer, "numpy", "pandas", "scipy", "pyarrow"]) if py.exists() else {}
    try:
        info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                        cwd=REPO).stdout.strip()
    except OSError:
        info["commit"] = None
    info["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return info


def results_path(tag: str) -> Path:
    return RESULTS / f"b5-{tag}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, {QUICK_WINDOW:,}-row window")
    ap.add_argument("--rows", type=int, default=None, help="rows of reference and of current (default 1M)")
    ap.add_argument("--window", type=int, default=None, help="rows of the new window (default rows / 10)")
    ap.add_argument("--systems", default="loopstack,evidently,nannyml")
    ap.add_argument("--tasks", default="full,window", help="full, window or both")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (median reported)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker process")
    ap.add_argument("--report-only", action="store_true", help="re-print / re-write docs from the saved results")
    ap.add_argument("--write-docs", action="store_true", help="write the B5 section of docs/benchmarks.md")
    a = ap.parse_args()
    rows = a.rows or (QUICK_ROWS if a.quick else b5_data.FULL_ROWS)
    window = a.window or (QUICK_WINDOW if a.quick else max(rows // 10, 1000))
    tag = b5_data.size_dir(rows).name + ("" if window == max(rows // 10, 1000) else f"-w{window}")
    path = results_path(tag)

    if a.report_only:
        res = json.loads(path.read_text())
    else:
        systems, tasks = set(a.systems.split(",")), set(a.tasks.split(","))
        for s in systems - {"loopstack"}:
            ensure_venv(s)
        print(f"B5 data: {rows:,} x {rows:,} rows, window {window:,} rows")
        data = b5_data.generate(rows, window)
        profile_json = data / "loopstack_reference_profile.json"
        res = json.loads(path.read_text()) if path.exists() else {}
        res.update({"size": {"rows": rows, "window": window}, "quick": rows < b5_data.FULL_ROWS,
                    "machine": environment(), "repeat": a.repeat, "spec": json.loads((data / "meta.json").read_text())})
        runs = res.setdefault("runs", {})
        for key in ORDER:
            system, task = key.split(":")
            if system not in systems or (task != "profile" and task not in tasks):
                continue
            if task == "profile" and "window" not in tasks:
                continue
            n = 1 if task == "profile" else a.repeat
            rs = []
            for i in range(n):
                r = run_worker(command(key, data, profile_json), LOGS / tag / f"{system}-{task}-{i}", a.timeout)
                rs.append(r)
                msg = (f"{r['seconds']:9.3f} s drift work  (load {r.get('load_seconds', 0):.2f} s, peak RSS "
                       f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB, load avg {r['load_average'][0]:.1f})"
                       if r["status"] == "ok" else f"{r['status'].upper()}: {r.get('error', '')[-600:]}")
                print(f"  {key:18s} #{i + 1}: {msg}", flush=True)
                if r["status"] != "ok":
                    break
            runs[key] = median_of(rs)
        res["machine"]["uptime_end"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(res, indent=1, default=float))
        print(f"results: {path.relative_to(REPO)}")
    b5_report.print_report(res)
    if a.write_docs:
        b5_report.write_docs(res, tag)


if __name__ == "__main__":
    main()
