"""B2 micro-benchmark: quick before/after checks of the online read path on a small, loaded store.

Not the B2 benchmark (that is ``b2_online_reads.py``: 1M entities, Feast, open-loop load). This
one reuses a small B2 project that is already loaded (``b2_online_reads.py --quick`` leaves one in
``.bench/b2/n10000/loopstack``; copy it first so nothing else writes to it) and measures, back to
back in one run, so that two runs on a busy machine can be compared as ratios:

- ``inproc``: ``OnlineFeatures.get_online_features`` (plain and windowed views, 1 and 100 entities
  × 10 features), sequential calls, p50/p99 and calls/s;
- ``asgi``: the feature server app called directly as an ASGI app (no socket): JSON in, routing,
  validation, the read, JSON out -- the server's CPU per request, without uvicorn or the network;
- ``http``: ``loopstack features serve`` in a subprocess, driven by a closed-loop client (raw
  asyncio keep-alive connections) at a fixed concurrency for a few seconds per case; besides
  latency and throughput, the server process's CPU time per request (user + system), which a
  busy machine disturbs much less than latency;
- ``--profile``: cProfile of the ASGI loop for 100 × 10 (``--profile-batch``; top functions by own time);
- ``--cold``: drop the SQLite online store file from the OS page cache first (``posix_fadvise``), so
  the first case reads from disk, as the first case of a fresh B2 read process may.

``--backend redis --redis-url URL`` copies the project's SQLite online state into that Redis
(prefix ``b2micro``) and runs the same cases against it.

    python benchmarks/b2_micro.py --project /tmp/b2micro/proj inproc asgi http
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import pstats
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from b2_data import T_END_US, summarize  # noqa: E402
from b2_loopstack import refs  # noqa: E402


def keys(n_entities: int, n_requests: int, batch: int, seed: int = 5) -> list[list[int]]:
    rng = np.random.default_rng([seed, batch])
    return rng.integers(0, n_entities + n_entities // 100, size=(n_requests, batch)).tolist()


def body(view: str, ids: list[int]) -> bytes:
    b = {"features": refs(view), "entities": {"user_id": ids}}
    if view == "windowed":
        b["as_of"] = "2026-11-01T00:00:00Z"
    return json.dumps(b).encode()


def timed(call, items: list, warm: int) -> dict:
    for it in items[:warm]:
        call(it)
    items = items[warm:]
    out = np.empty(len(items), dtype=np.int64)
    gc.collect()
    pc = time.perf_counter_ns
    t0 = pc()
    for i, it in enumerate(items):
        s = pc()
        call(it)
        out[i] = pc() - s
    return summarize(out, (pc() - t0) / 1e9)


def fmt(name: str, r: dict) -> str:
    return f"{name:<34} p50 {r['p50_ms']:8.3f} ms  p99 {r['p99_ms']:8.3f} ms  {r['rps']:9.0f} /s"


# -- in-process and ASGI -------------------------------------------------------------------------
def cases(a) -> list[tuple[str, str, int, int]]:
    out = []
    for view in a.views:
        out += [(f"{view} 1x10", view, 1, a.requests), (f"{view} 100x10", view, 100, max(50, a.requests // 20))]
    return out


def run_inproc(project, a) -> dict:
    online = project.online
    res = {}
    for name, view, batch, n in cases(a):
        feats = refs(view)
        as_of = None if view == "plain" else T_END_US
        rows = [[{"user_id": k} for k in req] for req in keys(a.n, n + n // 10, batch)]
        res[name] = r = timed(lambda rr, f=feats, t=as_of: online.get_online_features(f, rr, t), rows, n // 10)
        print(fmt("inproc " + name, r), flush=True)
    return res


class AsgiDriver:
    """Calls an ASGI app directly with one POST, the way uvicorn would (one event loop, reused)."""

    def __init__(self, app) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()   # no lifespan: the apps here run with reload_interval=0

    def post(self, path: str, data: bytes) -> tuple[int, bytes]:
        return self.loop.run_until_complete(self._post(path, data))

    async def _post(self, path: str, data: bytes) -> tuple[int, bytes]:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                                              (b"content-length", str(len(data)).encode())],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 6566), "state": {}}
        sent = False
        out: dict = {"status": 0, "body": []}

        async def receive() -> dict:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": data, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                out["status"] = msg["status"]
            elif msg["type"] == "http.response.body":
                out["body"].append(msg.get("body", b""))

        await self.app(scope, receive, send)
        return out["status"], b"".join(out["body"])


def run_asgi(project, a) -> dict:
    from loopstack.features.cli_serve import configure_access_log
    from loopstack.features.server import create_app
    configure_access_log(False)
    drv = AsgiDriver(create_app(project, reload_interval=0))
    res = {}
    for name, view, batch, n in cases(a):
        bodies = [body(view, req) for req in keys(a.n, n + n // 10, batch)]
        st, out = drv.post("/get-online-features", bodies[0])
        assert st == 200, out[:500]

        def call(b: bytes) -> None:
            s, o = drv.post("/get-online-features", b)
            if s != 200:
                raise RuntimeError(o[:300])
        res[name] = r = timed(call, bodies, n // 10)
        print(fmt("asgi " + name, r), flush=True)
    if a.profile:
        bodies = [body(a.views[0], req) for req in keys(a.n, 3000 // a.profile_batch, a.profile_batch)]
        prof = cProfile.Profile()
        prof.enable()
        for b in bodies:
            drv.post("/get-online-features", b)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(a.profile)
    return res


# -- HTTP: a real server, a closed-loop client -------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def closed_loop(port: int, bodies: list[bytes], conc: int, seconds: float) -> dict:
    lat: list[float] = []
    stop = time.perf_counter() + seconds
    errors = 0

    async def worker(w: int) -> None:
        nonlocal errors
        r, wr = await asyncio.open_connection("127.0.0.1", port)
        i = w
        while time.perf_counter() < stop:
            b = bodies[i % len(bodies)]
            i += conc
            s = time.perf_counter()
            wr.write(b"POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%b" % (len(b), b))
            status = int((await r.readline()).split()[1])
            length = 0
            while (h := await r.readline()) not in (b"\r\n", b""):
                if h[:15].lower() == b"content-length:":
                    length = int(h[15:])
            await r.readexactly(length)
            lat.append(time.perf_counter() - s)
            errors += status != 200
        wr.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(conc)))
    wall = time.perf_counter() - t0
    x = np.array(lat) * 1e3
    return {"requests": len(x), "errors": errors, "p50_ms": float(np.percentile(x, 50)),
            "p99_ms": float(np.percentile(x, 99)), "rps": len(x) / wall}


def run_http(project_dir: str, a, env: dict) -> dict:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "loopstack"), "features", "serve", "--project", project_dir,
           "--port", str(port), "--no-access-log", "--reload-interval", "0", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env)
    server = psutil.Process(proc.pid)
    res = {}
    try:
        probe = body("plain", [1])
        deadline = time.time() + 60
        while True:
            try:
                asyncio.run(closed_loop(port, [probe], 1, 0.01))
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.2)
        for name, view, batch, _n in cases(a):
            bodies = [body(view, req) for req in keys(a.n, 2000, batch)]
            for conc in a.concurrency:
                asyncio.run(closed_loop(port, bodies, conc, min(1.0, a.seconds / 3)))  # warm-up
                c0 = sum(server.cpu_times()[:2])
                r = asyncio.run(closed_loop(port, bodies, conc, a.seconds))
                r["server_cpu_ms"] = (sum(server.cpu_times()[:2]) - c0) * 1e3 / max(r["requests"], 1)
                res[f"{name} c{conc}"] = r
                print(fmt(f"http {name} c{conc}", r) + f"  server CPU {r['server_cpu_ms']:.3f} ms/req"
                      f"  errors {r['errors']}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)
    return res


def copy_to_redis(project, url: str) -> None:
    from loopstack.features.online import WriteBatch, open_online_store
    src = project.online_store
    dst = open_online_store("redis", url=url, prefix="b2micro")
    if dst.progress("b2micro:copied"):
        return
    dst.clear()
    hashes = list(src.scan(""))
    for i in range(0, len(hashes), 2000):
        chunk = src.read(hashes[i:i + 2000])
        dst.write(WriteBatch(puts={h: dict(f) for h, f in chunk.items()}))
    dst.write(WriteBatch(progress={"b2micro:copied": "1"}))
    dst.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("modes", nargs="+", choices=["inproc", "asgi", "http"])
    p.add_argument("--project", required=True, help="a loaded B2 project (a copy: this script only reads it)")
    p.add_argument("--n", type=int, default=10_000, help="entities in the project")
    p.add_argument("--views", nargs="+", default=["plain", "windowed"])
    p.add_argument("--requests", type=int, default=4000, help="calls for 1x10 (100x10: a 20th)")
    p.add_argument("--seconds", type=float, default=4.0, help="HTTP: seconds per case and concurrency")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--profile", type=int, default=0, help="asgi: print this many profile lines (100x10)")
    p.add_argument("--profile-batch", type=int, default=100, help="asgi --profile: entities per request")
    p.add_argument("--cold", action="store_true", help="evict the SQLite store file from the page cache first")
    p.add_argument("--backend", choices=["sqlite", "redis"], default="sqlite")
    p.add_argument("--redis-url")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args()

    env = dict(os.environ)
    if a.backend == "redis":
        env.update(LOOPSTACK_ONLINE__BACKEND="redis", LOOPSTACK_ONLINE__URL=a.redis_url)
    from loopstack import Project
    project = Project(a.project)
    if a.backend == "redis":
        copy_to_redis(project, a.redis_url)
        project.close()
        os.environ.update(LOOPSTACK_ONLINE__BACKEND="redis", LOOPSTACK_ONLINE__URL=a.redis_url,
                          LOOPSTACK_ONLINE__PREFIX="b2micro")
        env["LOOPSTACK_ONLINE__PREFIX"] = "b2micro"
        project = Project(a.project)
    if a.cold and a.backend == "sqlite":
        fd = os.open(project.online_store.path, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
    print(f"backend {project.online_store!r}; load {os.getloadavg()[0]:.1f}", flush=True)
    res: dict = {}
    if "inproc" in a.modes:
        res["inproc"] = run_inproc(project, a)
    if "asgi" in a.modes:
        res["asgi"] = run_asgi(project, a)
    project.close()
    if "http" in a.modes:
        res["http"] = run_http(a.project, a, env)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
