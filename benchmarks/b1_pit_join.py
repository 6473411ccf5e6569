"""B1: point-in-time join, loopstack vs Feast (file and duckdb offline stores).

Generates the data (cached under .bench/data), runs every system on every size in its own
subprocess (so peak RSS is per run), checks that the outputs agree row by row (same values within
1e-9 relative, same nulls), prints a table and the ratios at the largest size, writes
.bench/results/b1.json and, with --write-docs, the B1 section of docs/benchmarks.md.

    python benchmarks/b1_pit_join.py --sizes small            # quick check: 1e4x1e5, 1e5x1e6
    python benchmarks/b1_pit_join.py --sizes full --write-docs  # the whole matrix (make bench)
    python benchmarks/b1_pit_join.py --sizes 1000000x10000000 --systems loopstack,feast-duckdb

Feast runs in its own virtualenv (.bench/feast, created here with `pip install feast[duckdb]` if
missing); it is never installed into loopstack's environment.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from rich.live import Live

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b1_data  # noqa: E402
import b1_modes  # noqa: E402
from b1_common import (BENCH, DATA, FEAST_PY, FEAST_SYSTEMS, REL_TOL, REPO, RESULTS, SYSTEMS, _tree_rss,  # noqa: E402
                       console, ensure_feast_venv, machine_info)
from b1_report import (_cell, _fmt_n, build_table, key, load_results, ratios, save_results,  # noqa: E402
                       write_docs)
# re-exported: other benchmarks import these shared helpers from here
from b1_common import DOCS, FEAST_VENV, _pkg_versions, read_results, write_results, write_section  # noqa: E402,F401
from b1_report import BEGIN, END  # noqa: E402,F401

FULL = [(n, m) for m in (100_000, 1_000_000, 10_000_000) for n in (10_000, 100_000, 1_000_000)]
SMALL = [(10_000, 100_000), (100_000, 1_000_000)]
REFERENCE_SIZE = (10_000, 100_000)


# ---------------------------------------------------------------- running one system ----------
def command(system: str, data_dir: Path, out: Path) -> list[str]:
    if system.startswith("feast-"):
        return [str(FEAST_PY), str(HERE / "b1_feast.py"), str(data_dir), "--store", system.split("-", 1)[1],
                "--out", str(out)]
    mode = "windowed" if system == "loopstack-windowed" else "plain"
    return [sys.executable, str(HERE / "b1_loopstack.py"), str(data_dir), "--mode", mode, "--out", str(out)]


def run_one(system: str, n: int, m: int, data_dir: Path, timeout: float, mem_cap: int, live_status) -> dict:
    """Run one system on one size in a fresh process; never raises for a failed run."""
    logs = RESULTS / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    out = BENCH / "outputs" / f"{system}_n{n}_m{m}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    cmd = command(system, data_dir, out)
    env = None
    if system in b1_modes.MODES:
        if system == "loopstack":
            b1_modes.prime(cmd, BENCH, n, m, live_status)
        env = b1_modes.environment(system, BENCH, n, m)
    if os.path.exists("/usr/bin/time"):
        cmd = ["/usr/bin/time", "-v"] + cmd
    stem = logs / f"{system}_n{n}_m{m}"
    load_before = os.getloadavg()[0]
    with open(f"{stem}.out", "w") as fo, open(f"{stem}.err", "w") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, start_new_session=True, cwd=str(REPO), env=env)
        ps = psutil.Process(proc.pid)
        peak_polled, status = 0, None
        while proc.poll() is None:
            rss = _tree_rss(ps)
            peak_polled = max(peak_polled, rss)
            elapsed = time.perf_counter() - t0
            live_status(f"{system}  N={n:,} M={m:,}  {elapsed:6.0f}s  RSS {rss / 2**30:5.2f} GiB")
            if elapsed > timeout:
                status = "timeout"
            elif rss > mem_cap:
                status = "memory-cap"
            if status:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.25)
        wall = time.perf_counter() - t0
    rc = proc.returncode
    err_text = Path(f"{stem}.err").read_text(errors="replace")
    m_rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err_text)
    res = {"system": system, "n": n, "m": m, "process_wall_seconds": round(wall, 3),
           "peak_rss_process_bytes": int(m_rss.group(1)) * 1024 if m_rss else peak_polled,
           "peak_rss_polled_bytes": peak_polled, "returncode": rc, "output": str(out),
           "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)]}
    if status is None:
        exit_m = re.search(r"Command terminated by signal (\d+)", err_text)
        if rc != 0 and ((exit_m and exit_m.group(1) == "9") or rc in (-9, 137)):
            status = "oom-killed"
        elif rc != 0:
            status = "error"
        else:
            status = "ok"
    res["status"] = status
    if status == "ok":
        try:
            lines = [ln for ln in Path(f"{stem}.out").read_text().splitlines() if ln.startswith("{")]
            res.update(json.loads(lines[-1]))
        except (IndexError, json.JSONDecodeError):
            res["status"] = "error"
    if res["status"] == "error":
        tail = [ln for ln in err_text.splitlines() if ln.strip() and not ln.startswith("\t")][-6:]
        res["error"] = "\n".join(tail)
    if status == "timeout":
        res["timeout_seconds"] = timeout
    if status == "memory-cap":
        res["memory_cap_bytes"] = mem_cap
    return res


def repeated(first: dict, runs: list[dict]) -> dict:
    """Median of repeated runs (join time and peak RSS); a failed repeat makes the result that failure."""
    bad = [r for r in runs if r["status"] != "ok"]
    if bad:
        return bad[0]
    times = sorted(r["join_seconds"] for r in runs)
    rss = sorted(r["peak_rss_join_bytes"] for r in runs)
    out = dict(runs[-1])
    out.update(join_seconds=float(np.median(times)), peak_rss_join_bytes=int(np.median(rss)),
               repeats={"join_seconds": [r["join_seconds"] for r in runs],
                        "peak_rss_join_bytes": [r["peak_rss_join_bytes"] for r in runs],
                        "load_average": [r.get("load_average") for r in runs]})
    if all("join_cpu_seconds" in r for r in runs):
        out["join_cpu_seconds"] = float(np.median([r["join_cpu_seconds"] for r in runs]))
        out["repeats"]["join_cpu_seconds"] = [r["join_cpu_seconds"] for r in runs]
    return out


# ---------------------------------------------------------------- comparing outputs -----------
def _load(path: str) -> pa.Table:
    t = pq.read_table(path)
    return t.sort_by("row_id")


def compare(ref_path: str, other_path: str, n: int) -> dict:
    """Row-by-row comparison on row_id: rows missing/extra, and per feature column null-mask and
    value mismatches (float tolerance 1e-9 relative, ints exact)."""
    a, b = _load(ref_path), _load(other_path)
    ra, rb = a.column("row_id").to_numpy(), b.column("row_id").to_numpy()
    common = np.intersect1d(ra, rb, assume_unique=False)
    out: dict = {"rows_ref": len(ra), "rows_other": len(rb), "rows_missing_in_other": int(len(np.setdiff1d(ra, rb))),
                 "rows_extra_in_other": int(len(np.setdiff1d(rb, ra))),
                 "duplicate_row_ids_other": int(len(rb) - len(np.unique(rb))),
                 "columns_compared": 0, "mismatched_cells": 0, "null_mismatches": 0, "examples": []}
    ia = np.searchsorted(ra, common)
    ib = np.searchsorted(rb, common)
    skip = {"row_id", "user_id", "event_timestamp"}
    cols = [c for c in a.column_names if c not in skip]
    missing_cols = [c for c in cols if c not in b.column_names]
    out["columns_missing_in_other"] = missing_cols
    for c in cols:
        if c in missing_cols:
            continue
        out["columns_compared"] += 1
        ca = a.column(c).combine_chunks().take(pa.array(ia))
        cb = b.column(c).combine_chunks().take(pa.array(ib))
        na, nb = ca.is_null().to_numpy(zero_copy_only=False), cb.is_null().to_numpy(zero_copy_only=False)
        va = ca.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        vb = cb.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
        both = ~na & ~nb
        bad_val = np.zeros(len(common), dtype=bool)
        bad_val[both] = ~np.isclose(va[both], vb[both], rtol=REL_TOL, atol=0.0)
        bad_null = na != nb
        out["null_mismatches"] += int(bad_null.sum())
        out["mismatched_cells"] += int((bad_val | bad_null).sum())
        for i in np.flatnonzero(bad_val | bad_null)[: max(0, 5 - len(out["examples"]))]:
            out["examples"].append({"row_id": int(common[i]), "column": c,
                                    "ref": None if na[i] else float(va[i]),
                                    "other": None if nb[i] else float(vb[i])})
    out["equal"] = (out["rows_missing_in_other"] == 0 and out["rows_extra_in_other"] == 0
                    and out["duplicate_row_ids_other"] == 0 and not missing_cols and out["mismatched_cells"] == 0)
    return out


def check_order(path: str, n: int) -> bool:
    """loopstack keeps the input's row order: row_id must come back as 0..n-1."""
    rid = pq.read_table(path, columns=["row_id"]).column("row_id").to_numpy()
    return len(rid) == n and bool((rid == np.arange(n)).all())


# ---------------------------------------------------------------- reference check -----------
def reference_check(n: int, m: int) -> dict:
    """Check loopstack's outputs at one (small) size against brute-force references (b1_reference.py):
    pandas merge_asof for the plain join, a plain SQL range join + GROUP BY for the windowed one."""
    out: dict = {"n": n, "m": m}
    for mode, system in (("plain", "loopstack"), ("windowed", "loopstack-windowed")):
        run = load_results()["runs"].get(key(system, n, m))
        if not run or run.get("status") != "ok" or not Path(run["output"]).exists():
            continue
        ref = BENCH / "outputs" / f"reference-{mode}_n{n}_m{m}.parquet"
        subprocess.run([sys.executable, str(HERE / "b1_reference.py"), str(b1_data.size_dir(DATA, n, m)),
                        "--mode", mode, "--out", str(ref)], check=True)
        c = compare(str(ref), run["output"], n)
        out[mode] = {k: c[k] for k in ("equal", "columns_compared", "mismatched_cells", "null_mismatches",
                                       "rows_missing_in_other", "examples")}
    return out


# ---------------------------------------------------------------- main ------------------------
def parse_sizes(text: str) -> list[tuple[int, int]]:
    if text == "full":
        return FULL
    if text == "small":
        return SMALL
    out = []
    for part in text.split(","):
        n, m = part.lower().split("x")
        out.append((int(float(n)), int(float(m))))
    return out


def warm_cache(paths: list[str]) -> None:
    """Read the input files once so every system starts with the same (warm) page cache."""
    for p in paths:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="small", help="small | full | NxM[,NxM...] (e.g. 1e6x1e7)")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--timeout", type=float, default=1800, help="per-run timeout in seconds (default 30 min)")
    p.add_argument("--mem-cap-gib", type=float, default=18, help="kill a run whose RSS exceeds this")
    p.add_argument("--write-docs", action="store_true", help="regenerate the B1 section of docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="run nothing; print (and write) from b1.json")
    p.add_argument("--no-skip", action="store_true",
                   help="also run a system on sizes dominating one where it timed out / ran out of memory")
    p.add_argument("--keep-outputs", action="store_true")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each (system, size) this many times and report the median join time")
    a = p.parse_args()
    sizes = sorted(parse_sizes(a.sizes), key=lambda s: (s[1], s[0]))
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    unknown = set(systems) - set(SYSTEMS)
    if unknown:
        p.error(f"unknown system(s) {sorted(unknown)}; choose from {', '.join(SYSTEMS)}")

    results = load_results()
    if not a.report_only:
        if any(s in FEAST_SYSTEMS for s in systems):
            ensure_feast_venv()
        results["machine"] = machine_info()
        results["timeout_seconds"] = a.timeout
        results["memory_cap_bytes"] = int(a.mem_cap_gib * 2**30)
        failed: dict[str, list[tuple[int, int]]] = {}
        with Live(console=console, refresh_per_second=4, transient=True) as live:
            def status(msg: str) -> None:
                live.update(f"[bold cyan]running[/] {msg}")

            for n, m in sizes:
                status(f"generating data N={n:,} M={m:,}")
                data_dir = b1_data.ensure_data(DATA, n, m, log=lambda s: console.print(f"  {s}"))
                meta = b1_data.load_meta(data_dir)
                warm_cache(list(meta["sources"].values()) + [meta["labels"]])
                for s in systems:
                    k = key(s, n, m)
                    smaller_fail = next(((fn, fm) for fn, fm in failed.get(s, []) if fn <= n and fm <= m), None)
                    if smaller_fail and not a.no_skip:
                        results["runs"][k] = {"system": s, "n": n, "m": m,
                                              "status": f"skipped ({results['runs'][key(s, *smaller_fail)]['status']}"
                                                        f" at {_fmt_n(smaller_fail[0])}×{_fmt_n(smaller_fail[1])})"}
                        save_results(results)
                        continue
                    r = run_one(s, n, m, data_dir, a.timeout, int(a.mem_cap_gib * 2**30), status)
                    if a.repeat > 1 and r["status"] == "ok":
                        r = repeated(r, [r] + [run_one(s, n, m, data_dir, a.timeout, int(a.mem_cap_gib * 2**30),
                                                       status) for _ in range(a.repeat - 1)])
                    results["runs"][k] = r
                    if r["status"] in ("timeout", "memory-cap", "oom-killed"):
                        failed.setdefault(s, []).append((n, m))
                    line = _cell(r)
                    console.print(f"{s:20s} N={_fmt_n(n):>4s} M={_fmt_n(m):>4s}  {line[0]:>24s}  {line[1]:>10s}"
                                  + (f"  [red]{r.get('error', '')}[/]" if r["status"] == "error" else ""))
                    save_results(results)
                # compare what finished in this cell
                ours = results["runs"].get(key("loopstack", n, m))
                if ours and ours["status"] == "ok" and "loopstack" in systems:
                    results["comparisons"][key("loopstack-order", n, m)] = check_order(ours["output"], n)
                for s in FEAST_SYSTEMS:
                    other = results["runs"].get(key(s, n, m))
                    if s in systems or "loopstack" in systems:
                        if ours and other and ours["status"] == "ok" and other["status"] == "ok" \
                                and Path(ours["output"]).exists() and Path(other["output"]).exists():
                            status(f"comparing {s} with loopstack N={n:,} M={m:,}")
                            results["comparisons"][key(s, n, m)] = compare(ours["output"], other["output"], n)
                fd, ff = (results["runs"].get(key(s, n, m)) for s in FEAST_SYSTEMS)
                if fd and ff and fd["status"] == ff["status"] == "ok" and Path(fd["output"]).exists() \
                        and Path(ff["output"]).exists():
                    status(f"comparing feast-file with feast-duckdb N={n:,} M={m:,}")
                    results["comparisons"][key("feast-file-vs-duckdb", n, m)] = compare(fd["output"], ff["output"], n)
                save_results(results)
                if (n, m) == REFERENCE_SIZE and {"loopstack", "loopstack-windowed"} & set(systems):
                    status("checking loopstack against brute-force references")
                    results["reference_check"] = reference_check(n, m)
                    save_results(results)
                if not a.keep_outputs:
                    for s in SYSTEMS:
                        run = results["runs"].get(key(s, n, m))
                        if run and run.get("output") and (n, m) != REFERENCE_SIZE:
                            Path(run["output"]).unlink(missing_ok=True)

    report_sizes = sizes
    console.print(build_table(results, report_sizes))
    for n, m in report_sizes:
        c = {s: results["comparisons"].get(key(s, n, m)) for s in FEAST_SYSTEMS}
        for s, cmp in c.items():
            if cmp and not cmp["equal"] and cmp["examples"]:
                console.print(f"[yellow]{s} vs loopstack at N={_fmt_n(n)} M={_fmt_n(m)}: first differences "
                              f"{cmp['examples'][:3]}[/]")
    big = max(report_sizes, key=lambda s: (s[1], s[0]))
    r = ratios(results, *big)
    if r is None:
        console.print(f"ratio at N={_fmt_n(big[0])} x M={_fmt_n(big[1])}: not available (a run is missing)")
    elif r["exact"]:
        console.print(f"[bold]at N={_fmt_n(big[0])} x M={_fmt_n(big[1])}: loopstack is {r['speedup']:.1f}x faster "
                      f"than {r['fastest_feast']} and uses {r['memory_ratio']:.2f}x its peak RSS[/] "
                      f"(target: >= 10x, <= 0.5x)")
        for s in ("loopstack-cold", "loopstack-asof"):
            run = results["runs"].get(key(s, *big))
            if run and run.get("status") == "ok":
                console.print(f"  {s} ({b1_modes.LABELS[s]}): {r['feast_seconds'] / run['join_seconds']:.1f}x faster, "
                              f"{run['peak_rss_join_bytes'] / r['feast_rss']:.2f}x the peak RSS")
    else:
        console.print(f"[bold]at N={_fmt_n(big[0])} x M={_fmt_n(big[1])}: no Feast store finished; loopstack is "
                      f"more than {r['speedup']:.1f}x faster than {r['fastest_feast']} ({r['feast_status']})[/]")
    if a.write_docs:
        write_docs(results, FULL)  # the docs always show the whole matrix (unmeasured cells say "not run")


if __name__ == "__main__":
    main()
