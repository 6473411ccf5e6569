"""B2 side measurement: what polling for Redis's reply (`online.spin_us`) does to an in-process 1x10 read.

On the B2 1M-entity loopstack project (made by b2_online_reads.py) against a redis-server that holds its
state in db 0 (`--redis-url`, e.g. the one b2_online_reads.py --redis-url used), one process reads with
`OnlineFeatures.get_online_features` (1 entity x 10 features, random ids, ~1 % unknown), switching the
store's spin between the values of `--spin-us` every `--block` calls, `--repeat` rounds, so every setting
sees the same machine; each setting's blocks are pooled. Wall time per call (p50/p95/p99) and the process's
CPU time per call (a spinning wait is CPU time; a sleeping one is not).

`--floor` adds the transport's own floor: the same number of bare round trips (one HGETALL of one
entity's hash, sent on a plain socket and parsed by hiredis, no loopstack code), blocking and spinning
like the store. No read through any client can have a lower tail than this on the machine.

    python benchmarks/b2_redis_spin.py --redis-url redis://127.0.0.1:6399 [--spin-us 0,200] [--repeat 5]

Appends the result to .bench/results/b2_redis_spin.jsonl.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b2_online_reads as B  # noqa: E402
from b2_data import FEATURES, request_keys  # noqa: E402
from b2_load import loopstack_env  # noqa: E402


def floor(a: argparse.Namespace, spins: list[int], rows: list, wall: dict, cpu: dict) -> None:
    """Bare HGETALL round trips of the same entities' hashes (keys as the store names them), per spin
    setting, recorded under "floor <spin>"."""
    import socket
    from urllib.parse import urlparse

    import hiredis

    from loopstack.features.online import redis as R
    u = urlparse(a.redis_url)
    sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(5.0)   # as redis-py's sockets
    db = (u.path or "/0").strip("/") or "0"
    sock.sendall(R._pack([b"SELECT", db.encode()]))
    sock.recv(64)
    keys = [f"loopstack:oh:plain|{r[0]['user_id']}".encode() for r in rows]   # the store's hash of each entity
    pc, tc = time.perf_counter_ns, time.process_time_ns
    for rep in range(a.repeat):
        for s in (spins if rep % 2 == 0 else spins[::-1]):
            name = f"floor {s}"
            for k in keys[a.block * (rep + 1):a.block * (rep + 2)]:
                c, t = tc(), pc()
                sock.sendall(R._HGETALL % (len(k), k))
                reader = hiredis.Reader()
                reader.feed(R._recv(sock, s / 1e6))
                while reader.gets() is False:
                    reader.feed(R._recv(sock, s / 1e6))
                wall.setdefault(name, []).append(pc() - t)
                cpu.setdefault(name, []).append(tc() - c)
    sock.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--redis-url", required=True)
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--spin-us", default="0,200", help="comma-separated settings to alternate (default 0,200)")
    p.add_argument("--block", type=int, default=1000, help="calls per block (default 1000)")
    p.add_argument("--repeat", type=int, default=5, help="rounds over the settings (default 5)")
    p.add_argument("--floor", action="store_true", help="also time bare HGETALL round trips (the floor)")
    a = p.parse_args()
    spins = [int(s) for s in a.spin_us.split(",")]
    proj = B.WORK / f"n{a.entities}" / "loopstack"
    if not (proj / "loopstack.yaml").exists():
        p.error(f"no B2 project at {proj}: run benchmarks/b2_online_reads.py --redis-url {a.redis_url} first")
    os.environ.update(loopstack_env("redis", a.redis_url))
    from loopstack.project import Project
    project = Project(str(proj))
    online = project.online
    store = project.online_store
    feats = [f"plain:{f}" for f in FEATURES]
    total = a.block * (len(spins) * a.repeat + 1)
    rows = [[{"user_id": int(k)} for k in req] for req in request_keys(a.entities, total, 1, seed=41)]
    for r in rows[:a.block]:   # warm-up
        online.get_online_features(feats, r)
    wall: dict[int, list] = {s: [] for s in spins}
    cpu: dict[int, list] = {s: [] for s in spins}
    gc.collect()
    gc.freeze()
    pc, tc = time.perf_counter_ns, time.process_time_ns
    at = a.block
    for rep in range(a.repeat):
        for s in (spins if rep % 2 == 0 else spins[::-1]):
            store._spin_s = s / 1e6
            for r in rows[at:at + a.block]:
                c, t = tc(), pc()
                online.get_online_features(feats, r)
                wall[s].append(pc() - t)
                cpu[s].append(tc() - c)
            at += a.block
    if a.floor:
        floor(a, spins, rows, wall, cpu)
    out = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "load1": os.getloadavg()[0], "calls_per_setting":
           a.block * a.repeat, "settings": {}}
    print(f"{'spin_us':>8s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'CPU p50 ms':>11s} {'CPU p99 ms':>11s}")
    for s in wall:
        w, c = np.array(wall[s]) / 1e6, np.array(cpu[s]) / 1e6
        row = {k: float(np.percentile(w, q)) for k, q in (("p50_ms", 50), ("p95_ms", 95), ("p99_ms", 99))}
        row.update(cpu_p50_ms=float(np.percentile(c, 50)), cpu_p99_ms=float(np.percentile(c, 99)))
        out["settings"][str(s)] = row
        print(f"{s!s:>8s} {row['p50_ms']:8.3f} {row['p95_ms']:8.3f} {row['p99_ms']:8.3f} {row['cpu_p50_ms']:11.3f} "
              f"{row['cpu_p99_ms']:11.3f}")
    f = B.RESULTS / "b2_redis_spin.jsonl"
    f.parent.mkdir(parents=True, exist_ok=True)
    with f.open("a") as fh:
        fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
