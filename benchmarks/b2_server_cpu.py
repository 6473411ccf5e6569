"""B2 side measurement: the feature server's CPU time per 1x10 online read over HTTP, with its own protocol
(`FastLaneProtocol`, what `loopstack features serve` runs) and with uvicorn's default protocol (every request
through the ASGI app), alternated, on the B2 1M-entity SQLite store (made by b2_online_reads.py).

    python benchmarks/b2_server_cpu.py [--seconds 10] [--repeat 2] [--rate 200]
    python benchmarks/b2_server_cpu.py --protocols fast --rate 50,200,1000,2500   # CPU per request vs load

CPU per request = the server process's user + system CPU time over one load-generator run (b2_loadgen.py,
fixed rate, keep-alive; after a 3 s warm-up run) divided by the requests sent; p50/p99 are the load generator's.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b2_load  # noqa: E402
import b2_online_reads as B  # noqa: E402

CODE = """
import uvicorn
from loopstack.project import Project
from loopstack.features.server import create_app
from loopstack.fast_http import FastLaneProtocol
uvicorn.run(create_app(Project({proj!r}), reload_interval=0, server_gc=True), host="127.0.0.1", port={port},
            log_level="warning", access_log=False, http=FastLaneProtocol if {fast!r} else "auto")
"""


def run(fast: bool, a: argparse.Namespace, bodies: Path, rate: float) -> dict:
    port = B.free_port()
    proj = str(B.WORK / f"n{a.entities}" / "loopstack")
    env = {**os.environ, **b2_load.loopstack_env("sqlite", "redis://127.0.0.1:1/0")}
    proc = subprocess.Popen([sys.executable, "-c", CODE.format(proj=proj, port=port, fast=fast)], env=env,
                            start_new_session=True)
    try:
        B.wait_ready(port, bodies.read_text().splitlines()[0].encode(), proc)
        p = psutil.Process(proc.pid)

        def load(seconds: float) -> dict:
            out = subprocess.run([sys.executable, str(HERE / "b2_loadgen.py"), "--port", str(port), "--bodies",
                                  str(bodies), "--rate", str(rate), "--seconds", str(seconds), "--warmup-seconds", "0"],
                                 capture_output=True, text=True, check=True)
            return json.loads(out.stdout)
        load(3.0)   # warm-up: the store's pages mapped, SQLite's cache filled, startup work done
        c0 = sum(p.cpu_times()[:2])
        r = load(a.seconds)
        cpu_ms = (sum(p.cpu_times()[:2]) - c0) / r["requests"] * 1e3
        return {"cpu_ms_per_request": cpu_ms, "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "ok": r["ok"]}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--rate", default="200", help="request rate(s), comma-separated (default 200)")
    p.add_argument("--protocols", default="fast,asgi", help="fast (FastLaneProtocol), asgi (uvicorn's), or both")
    a = p.parse_args()
    rates = [float(r) for r in a.rate.split(",")]
    protocols = [x.strip() == "fast" for x in a.protocols.split(",") if x.strip() in ("fast", "asgi")]
    if not protocols:
        p.error(f"--protocols {a.protocols!r}: use fast, asgi or fast,asgi")
    if not (B.WORK / f"n{a.entities}" / "loopstack" / "data" / "online.db").exists():
        raise SystemExit(f"no B2 store for {a.entities:,} entities: run benchmarks/b2_online_reads.py first")
    bodies = B.bodies_file(a.entities, 1, int(max(rates) * a.seconds) + 10)
    for rep in range(a.repeat):
        for fast, rate in [(f, r) for f in (protocols if rep % 2 == 0 else protocols[::-1]) for r in rates]:
            r = run(fast, a, bodies, rate)
            name = "FastLaneProtocol" if fast else "uvicorn default (ASGI)"
            print(f"{name:24s} {rate:6.0f} req/s: {r['cpu_ms_per_request']:.3f} ms CPU/request, p50 {r['p50_ms']:.3f} ms, "
                  f"p99 {r['p99_ms']:.3f} ms, {r['ok']} ok (load {os.getloadavg()[0]:.2f})", flush=True)


if __name__ == "__main__":
    main()
