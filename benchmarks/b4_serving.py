"""B4: model serving — loopstack vs BentoML vs Ray Serve, dynamic batching off and on.

Two models (benchmarks/b4_models.py: a wide scikit-learn MLP, one row a few ms, 32 rows ~5x that,
and a LightGBM classifier; 30 float features; the same joblib files for every server), each served by
each server with batching off and on (max_batch_size 32, max wait 5 ms by default), one worker/replica,
the server pinned to core 1 and the closed-loop client (b4_client.py) to core 0, at concurrency 1, 16
and 64: throughput, p50/p99, mean batch size (from each server's counters), errors. Plus:

- the direct-call baseline (`predict_proba` in-process at batch 1 and 32, on core 1) and the server
  overhead over it at the same batch size (c=1: 1-row requests with batching off; 32-row requests
  with batching on for loopstack — its :predict_batch runs 32 instances as one batch — and off for
  the peers, which take a 32-row array in one call);
- the client's own ceiling against a fixed-answer server (b4_client.py --serve-trivial) on core 1.

Results: .bench/results/b4.json; --write-docs writes the B4 section of docs/benchmarks.md.

    python benchmarks/b4_serving.py --quick                         # smoke: 3 s cells, MLP, c=1,64 (~3 min)
    python benchmarks/b4_serving.py --fresh --write-docs            # the full matrix (~15-20 min)
    python benchmarks/b4_serving.py --servers bentoml --models lgbm      # redo some cells
    python benchmarks/b4_serving.py --report-only --write-docs
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b4_models  # noqa: E402
import b4_report  # noqa: E402
import b4_servers as S  # noqa: E402

RESULTS = S.REPO / ".bench" / "results" / "b4.json"


def cell_key(server: str, model: str, batching: str, c: int, rows: int = 1) -> str:
    return f"{server}/{model}/{batching}/c{c}" + (f"/rows{rows}" if rows != 1 else "")


def load() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}}


def save(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))


def direct_baseline(seconds: float) -> dict:
    out = subprocess.run(["taskset", "-c", S.SERVER_CORE, sys.executable, str(HERE / "b4_models.py"), "--direct",
                          "--seconds", str(seconds)], capture_output=True, text=True, check=True,
                         env={**os.environ, **S.THREAD_ENV})
    return json.loads(out.stdout.strip().splitlines()[-1])


def client_ceiling(seconds: float) -> dict:
    """The client against a server that answers at once: what the client itself can drive."""
    port = S.free_port()
    srv = subprocess.Popen(["taskset", "-c", S.SERVER_CORE, sys.executable, str(HERE / "b4_client.py"),
                            "--serve-trivial", "--port", str(port)], stdout=subprocess.PIPE, text=True)
    try:
        srv.stdout.readline()   # READY
        b = S.bodies("bentoml", "mlp", 1)
        out = {}
        for c in (1, 64):
            r = subprocess.run(["taskset", "-c", S.CLIENT_CORE, sys.executable, str(HERE / "b4_client.py"),
                                "--port", str(port), "--bodies", str(b), "--concurrency", str(c),
                                "--seconds", str(seconds), "--warmup-seconds", "1"],
                               capture_output=True, text=True, check=True, timeout=seconds + 60)
            res = json.loads(r.stdout)
            out[f"c{c}"] = {k: res[k] for k in ("throughput_rps", "p50_ms", "p99_ms", "client_cpu_fraction", "errors")}
        return out
    finally:
        srv.terminate()
        srv.wait(10)


def load_avg() -> float:
    return os.getloadavg()[0]


def settings_of(a) -> dict:
    return {"max_batch_size": a.max_batch_size, "max_latency_ms": a.max_latency_ms,
            "bentoml_max_latency_ms": a.bentoml_max_latency_ms, "seconds": a.seconds, "warmup_seconds": a.warmup,
            "overhead_seconds": a.overhead_seconds, "loopstack_args": a.loopstack_args,
            "concurrency": a.concurrency, "quick": a.quick}


def run_matrix(a, results: dict) -> None:
    settings = S.Settings(max_batch_size=a.max_batch_size, max_latency_ms=a.max_latency_ms,
                          bentoml_max_latency_ms=a.bentoml_max_latency_ms,
                          loopstack_args=tuple(a.loopstack_args.split()) if a.loopstack_args else ())
    results["settings"] = settings_of(a)
    project = S.WORK / "project"
    if "loopstack" in a.servers:
        results["loopstack_project"] = S.make_loopstack_project(project)
    for server in a.servers:
        for model in a.models:
            for batching in a.batching:
                on = batching == "on"
                print(f"== {server} {model} batching {batching} (load {load_avg():.2f})", flush=True)
                srv = S.Server(server, model, on, settings, project)
                try:
                    ready = srv.wait_ready(S.first_body(server, model), S.predict_path(server, model, 1))
                    print(f"   ready in {ready:.1f}s on port {srv.port}", flush=True)
                    cells = [(c, 1) for c in a.concurrency]
                    if a.overhead and (on == (server == "loopstack")):
                        cells.append((1, 32))     # the batch-32 overhead cell (see the module docstring)
                    for c, rows in cells:
                        la = load_avg()
                        secs = a.overhead_seconds if rows != 1 else a.seconds
                        try:
                            res = S.run_client(srv, rows, c, secs, a.warmup)
                        except Exception as exc:  # noqa: BLE001 - recorded, the matrix goes on
                            res = {"failed": repr(exc)[:500]}
                        res.update(load_before=la, server_ready_s=ready)
                        results["cells"][cell_key(server, model, batching, c, rows)] = res
                        save(results)
                        print("   " + b4_report.cell_line(server, model, batching, c, rows, res), flush=True)
                except Exception as exc:  # noqa: BLE001
                    print(f"   FAILED: {exc}", flush=True)
                    for c in a.concurrency:
                        results["cells"][cell_key(server, model, batching, c)] = {"failed": repr(exc)[:500]}
                    save(results)
                finally:
                    srv.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", default=",".join(S.SERVERS))
    p.add_argument("--models", default=None, help=f"default: {','.join(b4_models.MODELS)} (--quick: mlp)")
    p.add_argument("--batching", default="off,on")
    p.add_argument("--concurrency", default=None, help="default: 1,16,64 (--quick: 1,64)")
    p.add_argument("--seconds", type=float, default=15.0, help="measured window per cell")
    p.add_argument("--warmup", type=float, default=3.0, help="unrecorded warm-up before each window")
    p.add_argument("--overhead-seconds", type=float, default=10.0, help="window of the 32-row overhead cell")
    p.add_argument("--no-overhead", dest="overhead", action="store_false")
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--max-latency-ms", type=float, default=5.0)
    p.add_argument("--bentoml-max-latency-ms", type=float, default=2000.0,
                   help="BentoML's max_latency_ms: a budget past which it sheds requests with 503, not a wait; "
                        "default: loopstack's default request deadline")
    p.add_argument("--loopstack-args", default="", help="extra `loopstack serve` flags, e.g. '--no-log-predictions'")
    p.add_argument("--quick", action="store_true", help="smoke check: 3 s cells, 1 s warm-up (MLP, c=1,64 unless given)")
    p.add_argument("--report-only", action="store_true")
    p.add_argument("--fresh", action="store_true", help="drop the cells of earlier runs (by default a run with the "
                                                       "same settings replaces only the cells it measures)")
    p.add_argument("--write-docs", action="store_true")
    p.add_argument("--note", action="append", default=None,
                   help="a note for the docs about these results (repeatable; replaces the stored notes)")
    a = p.parse_args()
    if a.quick:
        a.seconds, a.warmup, a.overhead_seconds = 3.0, 1.0, 3.0
    a.models = a.models or ("mlp" if a.quick else ",".join(b4_models.MODELS))
    a.concurrency = a.concurrency or ("1,64" if a.quick else "1,16,64")
    a.servers, a.models, a.batching = a.servers.split(","), a.models.split(","), a.batching.split(",")
    a.concurrency = [int(c) for c in a.concurrency.split(",")]
    results = load()
    notes = a.note if a.note is not None else results.get("notes")
    if not a.report_only:
        prev = results
        results = {"cells": {}, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "load_start": load_avg()}
        if not a.fresh and prev.get("settings") == settings_of(a):
            # same settings: keep the cells of other servers/models from the earlier run(s)
            results["cells"] = prev.get("cells", {})
            results["started"] = prev.get("started", results["started"]) + " (+ " + results["started"] + ")"
        elif prev.get("cells"):
            print("starting a fresh results file (other settings than .bench/results/b4.json, or --fresh)")
        for server in a.servers:
            S.ensure_venv(server)
        print(json.dumps(b4_models.build()), flush=True)
        results["direct"] = direct_baseline(1.0 if a.quick else 3.0)
        for m in a.models:
            d = results["direct"][m]
            print(f"direct {m}: batch 1 p50 {d['b1']['p50_ms']:.3f} ms, batch 32 p50 {d['b32']['p50_ms']:.3f} ms "
                  f"(ratio {d['ratio_32_over_1']:.2f})", flush=True)
        results["client_ceiling"] = client_ceiling(2.0 if a.quick else 5.0)
        print("client ceiling:", json.dumps(results["client_ceiling"]), flush=True)
        results["environment"] = b4_report.environment()
        save(results)
        run_matrix(a, results)
        results["load_end"] = load_avg()
        save(results)
    if notes is not None:
        results["notes"] = notes
        save(results)
    b4_report.print_report(results)
    if a.write_docs:
        b4_report.write_docs(results)


if __name__ == "__main__":
    main()
