"""B2: online reads, loopstack vs Feast (SQLite and Redis online stores; in-process and HTTP).

Generates the data (cached under .bench/data), starts a real redis-server on loopback
(tests/servers.py; loopstack uses db 0, Feast db 1), loads both online stores (loopstack:
`loopstack.features.materialize.materialize`; Feast: `store.materialize`; the SQLite stores are
kept under .bench/b2 and reused), then

- in-process: each system in its own fresh process (b2_loopstack.py / b2_feast.py), sequential
  requests with random entity ids (a seed per case, the same for both systems), warm-up first;
  1 entity x 10 features and 100 entities x 10 features; p50/p95/p99 and requests/s; repeated
  --repeat times (median), alternating which system, and which loopstack API, goes first;
- HTTP: `loopstack features serve` vs `feast serve` on 127.0.0.1, each alone on the machine, driven
  by b2_loadgen.py at a fixed arrival rate (open loop, latency from the due time);
- before every timed run (each in-process worker, each server start) the system's SQLite online
  store file(s) are read once through the OS (16 MiB chunks, discarded), so both systems start
  from the same warm page cache (`warm_page_cache`; nothing for Redis);

checks that both systems return the same values for a fixed sample of entities, prints the tables
and the ratios, writes .bench/results/b2.json and, with --write-docs, the B2 section of
docs/benchmarks.md.

    python benchmarks/b2_online_reads.py --quick               # 10k entities, short runs
    python benchmarks/b2_online_reads.py --write-docs          # 1M entities, the full benchmark
    python benchmarks/b2_online_reads.py --report-only --write-docs
    python benchmarks/b2_online_reads.py --quick --backends sqlite --systems loopstack --skip-http

Feast runs in its own virtualenv (.bench/feast, see b1_pit_join.ensure_feast_venv; the redis
client is added to it if missing); it is never installed into loopstack's environment.

The stores (paths, loading, page-cache warming, fresh-process steps) live in b2_load.py, the
results file, tables and docs section in b2_report.py.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b1_pit_join as b1  # noqa: E402  (shared helpers: console, machine info, Feast venv, RSS polling)
import b2_data  # noqa: E402
from b2_load import (SYSTEMS, WORK, ensure_feast_redis, feast_args, load_all, loopstack_env, redis,  # noqa: E402
                     run_json, settle, warm_page_cache)  # the stores, loading them, fresh-process steps
from b2_loopstack import CASE_SEEDS  # noqa: E402  (numpy and b2_data only at import)
from b2_report import BACKENDS, load_results, print_report, save_results, write_docs  # noqa: E402

REPO, BENCH, RESULTS, DOCS = b1.REPO, b1.BENCH, b1.RESULTS, b1.DOCS
FEAST_PY, FEAST_BIN = b1.FEAST_PY, b1.FEAST_VENV / "bin" / "feast"
console = b1.console
FLOAT_TOL = 1e-9


# ---------------------------------------------------------------- environment -----------------
def machine_info() -> dict:
    m = b1.machine_info()
    m["loopstack_env"] = b1._pkg_versions(Path(sys.executable), ["loopstack", "redis", "fastapi", "uvicorn",
                                                                "orjson"])
    m["feast_env"] = b1._pkg_versions(FEAST_PY, ["feast", "redis", "hiredis", "fastapi", "uvicorn", "gunicorn",
                                                 "duckdb"])
    m["redis_server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                       text=True).stdout.strip()
    m["sqlite"] = __import__("sqlite3").sqlite_version
    git = ["git", "-C", str(REPO)]
    out = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    m["git_commit"] = out.stdout.strip()
    out = subprocess.run(git + ["status", "--porcelain", "src"], capture_output=True, text=True)
    m["git_src_modified"] = [ln[3:] for ln in out.stdout.splitlines()]
    m["note"] = ("a 2-core virtual machine on shared hardware: its speed drifts with the host's load, so the "
                 "same code measures differently from run to run")
    return m


def load_note() -> dict:
    l1, l5, l15 = os.getloadavg()
    return {"load1": round(l1, 2), "load5": round(l5, 2), "load15": round(l15, 2), "time": time.time()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- in-process ------------------
def median_cases(runs: list[dict]) -> dict:
    out = {}
    for case in runs[0]["cases"]:
        vals = [r["cases"][case] for r in runs if case in r.get("cases", {})]
        stats = dict.fromkeys(k for v in vals for k in v)
        out[case] = {k: float(np.median([v[k] for v in vals if k in v])) for k in stats}
        out[case]["repeats"] = len(vals)
        out[case]["p99_ms_each"] = [v["p99_ms"] for v in vals]
    return out


def inprocess(n: int, data: Path, url: str, a, results: dict) -> None:
    runs: dict[str, list] = {}
    answers = {}
    for rep in range(a.repeat):
        for backend in a.backends:
            for system in alternate(a.systems, rep):
                settled = settle(url, backend)
                warm = warm_page_cache(system, backend, n)
                note = load_note()
                console.print(f"in-process reads: {system} {backend} (repeat {rep + 1}/{a.repeat}; "
                              f"load avg {note['load1']}; page cache warmed: {warm['bytes'] / 2**20:,.0f} MiB "
                              f"in {warm['seconds']:.1f} s)")
                common = ["--data", str(data), "--requests", str(a.requests), "--requests-100", str(a.requests_100)]
                if system == "loopstack":
                    r = run_json([sys.executable, str(HERE / "b2_loopstack.py"), "read", "--project",
                                  str(WORK / f"n{n}" / "loopstack")] + common + (["--project-first"] if rep % 2 else []),
                                 f"read_loopstack_{backend}_n{n}", loopstack_env(backend, url))
                else:
                    r = run_json([str(FEAST_PY), str(HERE / "b2_feast.py"), "read", "--seed",
                                  str(CASE_SEEDS["plain", "service"])] + common + feast_args(backend, url, n),
                                 f"read_feast_{backend}_n{n}")
                if r["status"] != "ok":
                    raise SystemExit(f"{system} reads ({backend}) failed:\n{r.get('error')}")
                r["load_before"], r["page_cache_warmed"], r["settled"] = note, warm, settled
                answers[f"{system}|{backend}"] = r.pop("answers")
                results.setdefault("answers", {}).setdefault(str(n), {})[f"{system}|{backend}"] = answers[
                    f"{system}|{backend}"]
                runs.setdefault(f"{system}|{backend}", []).append(r)
    res = results.setdefault("inprocess", {})
    for k, rs in runs.items():
        res[f"{k}|{n}"] = {"cases": median_cases(rs),
                           "peak_rss_bytes": int(np.median([r["peak_rss_bytes"] for r in rs])),
                           "version": rs[0]["version"], "loads": [r["load_before"] for r in rs],
                           "page_cache_warmed": [r["page_cache_warmed"] for r in rs],
                           "settled": [r["settled"] for r in rs],
                           "case_order": [r.get("order") for r in rs]}
    results.setdefault("answers_check", {})[str(n)] = check_answers(results["answers"][str(n)])


def alternate(systems: tuple[str, ...], rep: int) -> tuple[str, ...]:
    """The systems in their order on even repeats, reversed on odd ones (neither always runs first)."""
    return tuple(reversed(systems)) if rep % 2 else systems


def check_answers(answers: dict) -> dict:
    """Both systems' plain values for the same 200 entity ids, per backend: equal within 1e-9 relative."""
    out = {}
    ref = answers.get("loopstack|sqlite")
    for k, ans in answers.items():
        if ref is None or k == "loopstack|sqlite":
            continue
        bad = []
        for key, row in ref.items():
            other = ans.get(key)
            for i, (x, y) in enumerate(zip(row, other or [None] * len(row))):
                same = (x is None and y is None) or (x is not None and y is not None and
                                                     math.isclose(float(x), float(y), rel_tol=FLOAT_TOL))
                if not same:
                    bad.append({"user_id": key, "feature": f"f{i}", "loopstack_sqlite": x, k: y})
        out[k] = {"entities": len(ref), "cells": len(ref) * b2_data.N_FEATURES, "mismatches": len(bad),
                  "examples": bad[:3]}
    return out


# ---------------------------------------------------------------- HTTP ----------------------
def _serve_supported() -> bool:
    r = subprocess.run([str(Path(sys.executable).parent / "loopstack"), "features", "serve", "--help"],
                       capture_output=True, text=True)
    return r.returncode == 0


def server_cmd(system: str, n: int, backend: str, url: str, port: int) -> tuple[list[str], dict, str]:
    if system == "feast":
        repo = WORK / f"n{n}" / f"feast-{backend}"
        return ([str(FEAST_BIN), "-c", str(repo), "serve", "-h", "127.0.0.1", "-p", str(port), "--no-access-log",
                 "-w", "1", "--max-requests", "1000000000"], {}, "feast serve -w 1 --no-access-log")
    proj = str(WORK / f"n{n}" / "loopstack")
    env = loopstack_env(backend, url)
    if _serve_supported():
        return ([str(Path(sys.executable).parent / "loopstack"), "features", "serve", "--project", proj,
                 "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--reload-interval", "0",
                 "--log-level", "warning"], env, "loopstack features serve --no-access-log")
    code = ("import sys, uvicorn\nfrom loopstack.project import Project\n"
            "from loopstack.features.server import create_app\n"
            f"uvicorn.run(create_app(Project({proj!r}), reload_interval=0), host='127.0.0.1', port={port}, "
            "log_level='warning', access_log=False)")
    return [sys.executable, "-c", code], env, "uvicorn(create_app(project)) (`features serve` not mounted yet)"


def wait_ready(port: int, body: bytes, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/get-online-features", content=body,
                           headers={"content-type": "application/json"}, timeout=5)
            if r.status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def bodies_file(n: int, batch: int, count: int) -> Path:
    f = WORK / f"n{n}" / f"http_bodies_b{batch}.jsonl"
    keys = b2_data.request_keys(n, count, batch, seed=3)
    feats = [f"plain:{x}" for x in b2_data.FEATURES]
    f.write_text("".join(json.dumps({"features": feats, "entities": {"user_id": [int(k) for k in req]}}) + "\n"
                         for req in keys))
    return f


def http(n: int, url: str, a, results: dict) -> None:
    res = results.setdefault("http", {})
    total = int(a.rate * (a.http_seconds + a.http_warmup)) + 10
    files = {b: bodies_file(n, b, total) for b in (1, 100)}
    runs: dict[str, list] = {}
    closed: dict[str, list] = {}
    for rep in range(a.http_repeat):
        for backend in a.backends:
            for system in alternate(a.systems, rep):
                port = free_port()
                cmd, env, how = server_cmd(system, n, backend, url, port)
                warm = warm_page_cache(system, backend, n)
                logs = RESULTS / "logs"
                with open(logs / f"b2_serve_{system}_{backend}.log", "w") as lf:
                    proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True,
                                            cwd=str(REPO), env={**os.environ, **env})
                try:
                    wait_ready(port, files[1].read_text().splitlines()[0].encode(), proc)
                    for batch in (1, 100):
                        settled = settle(url, backend)
                        note = load_note()
                        console.print(f"HTTP: {system} {backend} {batch}x10 at {a.rate:.0f} req/s for "
                                      f"{a.http_seconds:.0f} s (repeat {rep + 1}/{a.http_repeat}; "
                                      f"load avg {note['load1']}; page cache warmed before the server "
                                      f"started: {warm['bytes'] / 2**20:,.0f} MiB)")
                        r = run_json([sys.executable, str(HERE / "b2_loadgen.py"), "--port", str(port), "--bodies",
                                      str(files[batch]), "--rate", str(a.rate), "--seconds", str(a.http_seconds),
                                      "--warmup-seconds", str(a.http_warmup), "--trace",
                                      str(logs / f"b2_trace_{system}_{backend}_{batch}_r{rep + 1}.csv")],
                                     f"http_{system}_{backend}_{batch}")
                        if r["status"] != "ok":
                            raise SystemExit(f"load generator failed:\n{r.get('error')}")
                        r["server_rss_bytes"] = b1._tree_rss(psutil.Process(proc.pid))
                        r["server"] = how
                        r["load_before"], r["page_cache_warmed"], r["settled"] = note, warm, settled
                        runs.setdefault(f"{system}|{backend}|{batch}", []).append(r)
                        for conc in a.concurrency:
                            console.print(f"HTTP closed loop: {system} {backend} {batch}x10 at concurrency {conc} "
                                          f"for {a.closed_seconds:.0f} s")
                            r = run_json([sys.executable, str(HERE / "b4_client.py"), "--port", str(port), "--path",
                                          "/get-online-features", "--bodies", str(files[batch]), "--concurrency",
                                          str(conc), "--seconds", str(a.closed_seconds), "--warmup-seconds", "2"],
                                         f"closed_{system}_{backend}_{batch}_c{conc}")
                            if r["status"] != "ok":
                                raise SystemExit(f"closed-loop client failed:\n{r.get('error')}")
                            closed.setdefault(f"closed|{system}|{backend}|{batch}|{conc}", []).append(r)
                finally:
                    os.killpg(proc.pid, signal.SIGTERM)
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
    for k, rs in runs.items():
        keys = ("p50_ms", "p95_ms", "p99_ms", "max_ms", "mean_ms", "achieved_rps")
        m = {x: float(np.median([r[x] for r in rs])) for x in keys}
        m.update(requests=rs[0]["requests"], target_rps=a.rate, seconds=a.http_seconds, repeats=len(rs),
                 errors=sum(r["requests"] - r["ok"] for r in rs), timeouts=sum(r.get("timeouts", 0) for r in rs),
                 drain_seconds=rs[0].get("drain_seconds"), server=rs[0]["server"],
                 server_rss_bytes=int(np.median([r["server_rss_bytes"] for r in rs])),
                 connections=max(r["connections"] for r in rs), p99_ms_each=[r["p99_ms"] for r in rs],
                 service_p99_ms=float(np.median([r["service"]["p99_ms"] for r in rs])),
                 loads=[r["load_before"] for r in rs], page_cache_warmed=[r["page_cache_warmed"] for r in rs],
                 settled=[r["settled"] for r in rs])
        res[f"{k}|{n}"] = m
    for k, rs in closed.items():   # fixed concurrency: medians over the repeats
        res[f"{k}|{n}"] = {**{x: float(np.median([r[x] for r in rs]))
                              for x in ("p50_ms", "p95_ms", "p99_ms", "throughput_rps")},
                           "repeats": len(rs), "seconds": a.closed_seconds, "errors": sum(r["errors"] for r in rs),
                           "p99_ms_each": [r["p99_ms"] for r in rs]}


# ---------------------------------------------------------------- main ------------------------
EPILOG = """\
examples:
  full benchmark (1M entities, both systems, sqlite and redis, in-process and HTTP; rewrites docs):
    python benchmarks/b2_online_reads.py --write-docs
  smoke run (10k entities, 2,000 requests, 1 repeat, 5 s HTTP runs):
    python benchmarks/b2_online_reads.py --quick
  only some backends / systems / modes:
    --backends sqlite          SQLite online stores only (no redis-server started for the reads)
    --systems loopstack        skip Feast (no Feast virtualenv needed)
    --skip-http                in-process only;  --skip-inprocess: HTTP only
  results accumulate in .bench/results/b2.json (per entity count), so a part can be re-run alone.
"""


def _pick(p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The comma-separated choices of `flag`, in canonical order; an argparse error for unknown ones."""
    got = [x.strip() for x in value.split(",") if x.strip()]
    bad = [x for x in got if x not in allowed]
    if bad or not got:
        p.error(f"{flag} {value!r}: expected a comma-separated subset of {','.join(allowed)}")
    return tuple(x for x in allowed if x in got)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="10k entities, 2,000 requests, 1 repeat, 5 s HTTP runs")
    p.add_argument("--entities", type=int, default=None, help="number of entities (default 1e6; --quick 1e4)")
    p.add_argument("--requests", type=int, default=None, help="timed 1x10 requests per run (default 10,000)")
    p.add_argument("--requests-100", type=int, default=None, help="timed 100x10 requests per run (default 1,000)")
    p.add_argument("--repeat", type=int, default=None, help="in-process runs per system and store (default 3)")
    p.add_argument("--rate", type=float, default=200.0, help="HTTP arrival rate, requests/s (default 200)")
    p.add_argument("--http-seconds", type=float, default=None, help="measured seconds per HTTP run (default 20)")
    p.add_argument("--http-warmup", type=float, default=3.0, help="HTTP warm-up seconds per run (default 3)")
    p.add_argument("--http-repeat", type=int, default=None, help="HTTP runs per cell (default 1)")
    p.add_argument("--concurrency", default="1,8",
                   help="HTTP closed-loop runs at these fixed concurrencies, after each fixed-rate run (default 1,8; "
                        "'' for none)")
    p.add_argument("--closed-seconds", type=float, default=None, help="measured seconds per closed-loop run (default 10)")
    p.add_argument("--backends", default="sqlite,redis",
                   help="comma-separated online stores to load and measure: sqlite, redis (default both)")
    p.add_argument("--systems", default="loopstack,feast",
                   help="comma-separated systems to load and measure: loopstack, feast (default both; "
                        "--systems loopstack skips Feast)")
    p.add_argument("--skip-http", action="store_true", help="no HTTP runs (in-process only)")
    p.add_argument("--skip-inprocess", action="store_true", help="no in-process runs (HTTP only)")
    p.add_argument("--redis-url", default=None,
                   help="use this redis-server (db 0 and 1, for B2 at one entity count only) instead of "
                        "starting one (the stores are then kept between runs)")
    p.add_argument("--write-docs", action="store_true", help="regenerate the B2 section of docs/benchmarks.md")
    p.add_argument("--report-only", action="store_true", help="run nothing; print (and write) from b2.json")
    p.add_argument("--note", action="append", default=None,
                   help="a note for the docs about this run (repeatable; replaces the stored notes)")
    a = p.parse_args()
    n = a.entities or (10_000 if a.quick else 1_000_000)
    a.requests = a.requests or (2_000 if a.quick else 10_000)
    a.requests_100 = a.requests_100 or (200 if a.quick else 1_000)
    a.repeat = a.repeat or (1 if a.quick else 3)
    a.http_seconds = a.http_seconds or (5.0 if a.quick else 20.0)
    a.http_repeat = a.http_repeat or 1
    a.closed_seconds = a.closed_seconds or (3.0 if a.quick else 10.0)
    try:
        a.concurrency = [int(c) for c in a.concurrency.split(",") if c.strip()]
    except ValueError:
        p.error(f"--concurrency {a.concurrency!r}: expected comma-separated whole numbers, e.g. 1,8")
    a.backends, a.systems = _pick(p, "--backends", a.backends, BACKENDS), _pick(p, "--systems", a.systems, SYSTEMS)

    results = load_results()
    if a.note is not None:
        results["notes"] = a.note
        save_results(results)
    if not a.report_only:
        if "feast" in a.systems:
            b1.ensure_feast_venv()
            if "redis" in a.backends:
                ensure_feast_redis()
        results["machine"] = machine_info()
        results.setdefault("config", {})[str(n)] = {
            "requests": a.requests, "requests_100": a.requests_100, "repeat": a.repeat, "rate": a.rate,
            "http_seconds": a.http_seconds, "http_warmup": a.http_warmup, "http_repeat": a.http_repeat}
        data = b2_data.ensure_data(b1.DATA, n, log=lambda s: console.print(f"  {s}"))
        (WORK / f"n{n}").mkdir(parents=True, exist_ok=True)
        no_redis = contextlib.nullcontext("redis://127.0.0.1:1/0")  # never connected to: sqlite only
        with (redis(a.redis_url) if "redis" in a.backends else no_redis) as url:
            load_all(n, data, url, results, a.backends, a.systems)
            save_results(results)
            if not a.skip_inprocess:
                inprocess(n, data, url, a, results)
                save_results(results)
            if not a.skip_http:
                http(n, url, a, results)
                save_results(results)
    print_report(results, n)
    if a.write_docs:
        write_docs(results, n)


if __name__ == "__main__":
    main()
