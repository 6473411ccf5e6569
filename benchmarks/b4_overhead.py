"""B4 server overhead only: loopstack's p50 at concurrency 1 minus the direct model call's p50, at batch 1
(`:predict`, batching off) and for 32-row `:predict_batch` requests (batching on), as in b4_serving.py.

A short check for work on the request path (the full comparison with the peers is b4_serving.py). The
direct call runs on the server core (1); `loopstack serve` runs per model and batching mode
(b4_servers.Server: pinned to core 1, the closed-loop client b4_client.py pinned to core 0). Each cell is
measured `--repeat` times, each time between two direct calls (right before and right after the window:
the model's own speed drifts by up to ~0.8 ms within seconds here, so the overhead is also given against
the mean of the two, "bracketed"); medians are reported with the
1-minute load average, the server's CPU time per request (all its threads: steadier than latency on
a shared machine) and the model's own time per batch inside the server (loopstack_serving_model_seconds_total
over the window), which tells a slower model call apart from time spent around it. With `--before SRC`, a second server runs the code under SRC (e.g. an exported older
commit's src/) and the two are measured alternately, so both see the same load.

    python benchmarks/b4_overhead.py                                  # lgbm + mlp, rows 1 and 32, 3 repeats
    python benchmarks/b4_overhead.py --models lgbm --rows 32 --seconds 3 --repeat 5
    git archive HEAD src | tar -x -C /tmp/base && python benchmarks/b4_overhead.py --before /tmp/base/src
    python benchmarks/b4_overhead.py --loopstack-args '--no-log-predictions'
    python benchmarks/b4_overhead.py --rows 32 --forms instances,rows    # both :predict_batch body forms
    python benchmarks/b4_overhead.py --models mlp --rows 32 --repeat 15 --seconds 2 --interleave 1.5

With --interleave SECONDS the direct call is timed in one long-lived process (b4_models.py --worker) for
SECONDS right before and after every window, so many short windows can alternate with it: the model's own
speed drifts over seconds here, and short alternating slices pair each window with the direct call of the
same moment. The summary then also gives the quartiles of the bracketed overhead over the windows.

Uses .bench/b4 (models and the project; made by b4_models.py / b4_servers.make_loopstack_project when
missing). Appends each run to .bench/results/b4_overhead.jsonl.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import b4_models
import b4_servers as S
from b4_serving import direct_baseline
from quiet import wait_quiet

OUT = S.BENCH / "results" / "b4_overhead.jsonl"


def project() -> Path:
    root = S.WORK / "project"
    if not (root / "loopstack.yaml").exists():
        print("making the B4 project", flush=True)
        b4_models.build()
        S.make_loopstack_project(root)
    return root


def start(model: str, rows: int, extra: tuple[str, ...], src: str | None) -> S.Server:
    """`loopstack serve` for `model` (batching off for 1-row requests, on for 32), from `src` if given."""
    command = S.command
    if src:
        def from_src(*args, **kwargs):
            cmd, env = command(*args, **kwargs)
            return cmd, {**env, "PYTHONPATH": f"{src}{os.pathsep}{env['PYTHONPATH']}"}
        S.command = from_src
    try:
        srv = S.Server("loopstack", model, rows != 1, S.Settings(loopstack_args=extra), project())
    finally:
        S.command = command
    srv.wait_ready(S.first_body("loopstack", model), S.predict_path("loopstack", model, 1))
    return srv


class DirectWorker:
    """The direct call in one long-lived process on the server core (`b4_models.py --worker`), so it can be
    timed in short slices between the server's windows (--interleave) without reloading the model."""

    def __init__(self, model: str, rows: int) -> None:
        self.proc = subprocess.Popen(["taskset", "-c", S.SERVER_CORE, sys.executable, str(S.HERE / "b4_models.py"),
                                      "--worker", model, "--batch", str(rows)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env={**os.environ, **S.THREAD_ENV})
        assert self.proc.stdout.readline().strip() == "READY"

    def p50(self, seconds: float) -> float:
        self.proc.stdin.write(f"{seconds}\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())["p50_ms"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


def _direct(work: DirectWorker | None, seconds: float, model: str, key: str) -> float:
    """The direct call's p50 (ms): from `work` for `seconds`, else from a fresh process timing 1 s."""
    return work.p50(seconds) if work else direct_baseline(1.0)[model][key]["p50_ms"]


def measure(models: list[str], rows: list[int], seconds: float, warmup: float, repeat: int,
            extra: tuple[str, ...], before: str | None, forms: tuple[str, ...] = ("instances",),
            interleave: float = 0.0) -> dict:
    """{variant: {"model/rows": {"direct": [...], "server": [...], "load": [...], "requests": [...],
    "server_cpu_ms": [...]}}} with variant "after" (the installed code) and "before" (`before`, if given).
    `interleave` > 0: the direct call is timed for that many seconds by a `DirectWorker` right before and
    after each window (the "after" of one window is the "before" of the next)."""
    variants = {"after": None, **({"before": str(Path(before).resolve())} if before else {})}
    out: dict = {v: {} for v in variants}
    for m in models:
        for r in rows:
            servers = {v: start(m, r, extra, src) for v, src in variants.items()}
            work = DirectWorker(m, r) if interleave else None
            q = wait_quiet()   # the previous cell's servers freed their memory: let the VM report it first
            print(f"{m}/{r}: waited {q['seconds']:.1f} s for the VM's memory reporting "
                  f"({q['reported_mib']} MiB reported; quiet.py)", flush=True)
            key = "b1" if r == 1 else "b32"
            direct = functools.partial(_direct, work, interleave, m, key)
            d2 = None
            try:
                for _ in range(repeat):
                    for v, srv, form in [(v, srv, f) for v, srv in servers.items()
                                         for f in (forms if r > 1 else ("instances",))]:
                        S.LOOPSTACK_FORM = form
                        d = d2 if work and d2 is not None else direct()
                        la = os.getloadavg()[0]
                        res = S.run_client(srv, r, 1, seconds, warmup)
                        d2 = direct()   # brackets the window
                        # CPU seconds -> ms per request: the CPU covers warm-up + window, the count only the window
                        per_request = 1e3 / max(1, res["ok"] * (seconds + warmup) / seconds)
                        cpu = res["server_cpu_seconds"] * per_request
                        threads = {name: round(s * per_request, 3) for name, s in sorted(
                            res.get("server_thread_cpu_seconds", {}).items(), key=lambda kv: -kv[1])}
                        cell = out[v].setdefault(f"{m}/{r}" + ("/rows" if form == "rows" else ""), {
                            "direct": [], "direct_after": [], "server": [], "load": [], "requests": [],
                            "server_cpu_ms": [], "model_ms": [], "thread_cpu_ms": []})
                        mm = res.get("model_ms_per_batch")
                        for k, x in (("direct", d), ("direct_after", d2), ("server", res["p50_ms"]), ("load", la),
                                     ("requests", res["ok"]),
                                     ("server_cpu_ms", cpu), ("model_ms", mm if mm is not None else float("nan")),
                                     ("thread_cpu_ms", threads)):
                            cell[k].append(x)
                        print(f"  {v:6s} {m} rows={r}{' (rows form)' if form == 'rows' and r > 1 else ''}: direct "
                              f"{d:.3f} ms (after the window {d2:.3f}), server {res['p50_ms']:.3f} ms, overhead "
                              f"{res['p50_ms'] - d:+.3f} ms, {res['ok']} requests, {res['errors']} errors, server "
                              f"cpu {cpu:.3f} ms/request, model in the server {mm if mm is not None else float('nan'):.3f} ms "
                              f"per batch (load {la:.2f})", flush=True)
                        print(f"         CPU ms/request by thread: {threads}", flush=True)
            finally:
                for srv in servers.values():
                    srv.stop()
                if work:
                    work.close()
    return out


def _iqr(xs: list[float]) -> tuple[float, float]:
    """First and third quartiles (both the median when there are fewer than 4 values)."""
    if len(xs) < 4:
        return statistics.median(xs), statistics.median(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(b4_models.MODELS))
    p.add_argument("--rows", default="1,32", help="rows per request: 1 (:predict) and/or 32 (:predict_batch)")
    p.add_argument("--seconds", type=float, default=4.0, help="measured window per repeat")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--loopstack-args", default="", help="extra `loopstack serve` flags")
    p.add_argument("--before", default="", help="also serve the code under this src/ directory, alternately")
    p.add_argument("--label", default="", help="a name for this run in the results file")
    p.add_argument("--interleave", type=float, default=0.0, metavar="SECONDS",
                   help="time the direct call for SECONDS in a long-lived process right before and after each "
                        "window (default: a fresh process timing 1 s before and after)")
    p.add_argument("--forms", default="instances",
                   help="body forms of the 32-row requests, alternated: instances and/or rows (columns + rows)")
    a = p.parse_args()
    b4_models.single_thread()
    models, rows = a.models.split(","), [int(r) for r in a.rows.split(",")]
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    res = measure(models, rows, a.seconds, a.warmup, a.repeat, tuple(a.loopstack_args.split()), a.before or None,
                  tuple(a.forms.split(",")), a.interleave)
    print(f"\n{'code':6s} {'cell':11s} {'direct p50':>10s} {'server p50':>10s} {'overhead':>9s} {'min':>7s} "
          f"{'bracketed':>9s} {'cpu/req':>8s} {'model in srv':>12s}  (ms; medians of {a.repeat}, min overhead; "
          "bracketed: against the mean of the direct calls before and after each window; load)")
    summary: dict = {}
    for v, cells in res.items():
        for key, c in cells.items():
            overs = [s - d for d, s in zip(c["direct"], c["server"])]
            bracketed = [s - (d + d2) / 2 for d, d2, s in zip(c["direct"], c["direct_after"], c["server"])]
            row = {**c, "direct_p50_ms": statistics.median(c["direct"]),
                   "server_p50_ms": statistics.median(c["server"]), "overhead_ms": statistics.median(overs),
                   "bracketed_overhead_ms": statistics.median(bracketed),
                   "bracketed_iqr_ms": _iqr(bracketed),
                   "min_overhead_ms": min(overs), "server_cpu_ms_median": statistics.median(c["server_cpu_ms"]),
                   "model_ms_in_server_median": statistics.median(c["model_ms"])}
            summary.setdefault(v, {})[key] = row
            print(f"{v:6s} {key:11s} {row['direct_p50_ms']:10.3f} {row['server_p50_ms']:10.3f} "
                  f"{row['overhead_ms']:+9.3f} {row['min_overhead_ms']:+7.3f} {row['bracketed_overhead_ms']:+9.3f} "
                  f"{row['server_cpu_ms_median']:8.3f} "
                  f"{row['model_ms_in_server_median']:12.3f}  (load {min(c['load']):.1f}-{max(c['load']):.1f}; "
                  f"bracketed quartiles {row['bracketed_iqr_ms'][0]:+.3f} / {row['bracketed_iqr_ms'][1]:+.3f})")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("a") as f:
        f.write(json.dumps({"started": started, "label": a.label, "loopstack_args": a.loopstack_args,
                            "interleave": a.interleave,
                            "before": a.before, "forms": a.forms, "seconds": a.seconds, "repeat": a.repeat,
                            "cells": summary}) + "\n")


if __name__ == "__main__":
    main()
