"""B2 side measurement: how much slower an online read gets when the process was idle just before it.

At a fixed arrival rate of 200 requests/s a server sleeps ~5 ms between requests. On this project's 2-core
virtual machine, code that ran in 58 us back to back then takes several times as long: whatever the host
runs on the core while the guest idles leaves our caches and TLBs cold. This script times, in one process
pinned to core 1, a 1 x 10 read (the same ids as the B2 HTTP run) with a pause of `--gaps` ms before each
call, for each system in its own virtualenv:

- `python`: a fixed pure-Python loop (2,858 dict lookups) and one system call (`os.fstat`), the machine's
  own slowdown for small code (an SQLite read transaction makes three system calls: two fcntl, one fstat);
- `loopstack`: `OnlineFeatures.get_online_features` (in-process), and the feature server's whole answer
  to a POST without the socket (`lane`: the request id, body parsing, read, JSON answer, metrics);
- `feast`: `store.get_online_features(...).to_dict()` (in-process, Feast's virtualenv).

    python benchmarks/b2_cold.py [--calls 1000] [--gaps 0,1,5] [--backend sqlite]

Prints p50/p99 per case and gap, the slowdown against no gap, and Feast's p50 and p99 over loopstack's.
Needs the B2 stores (b2_online_reads.py makes them). Appends to .bench/results/b2_cold.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import b2_data  # noqa: E402


def timed(fn, args: list, gap: float) -> dict:
    """p50/p99 in us of fn(args[i]) with `gap` seconds of sleep before each call (after a warm-up of one pass
    over `args` without sleeping)."""
    for a in args:
        fn(a)
    ts = []
    pc = time.perf_counter_ns
    for a in args:
        if gap:
            time.sleep(gap)
        t = pc()
        fn(a)
        ts.append((pc() - t) / 1e3)
    q = statistics.quantiles(ts, n=100)
    return {"p50_us": statistics.median(ts), "p99_us": q[98]}


def worker(system: str, backend: str, calls: int, gaps: list[float]) -> dict:
    """The cases of one system, each at each gap (ms). Each case is (function, its argument per call): the
    arguments (entity rows, request bodies) are built before the timing, as a client would send them."""
    os.sched_setaffinity(0, {1})
    root = HERE.parent / ".bench" / "b2" / "n1000000"   # b2_load.WORK (not imported: Feast's venv runs this too)
    keys = [int(k[0]) for k in b2_data.request_keys(1_000_000, calls, 1, seed=3)]
    refs = [f"plain:{f}" for f in b2_data.FEATURES]
    rows = [[{"user_id": k}] for k in keys]
    cases = {}
    if system == "python":
        data = {i: str(i) for i in range(20000)}
        probe = list(range(0, 20000, 7))
        cases["python loop"] = (lambda _k: sum(len(data[x]) for x in probe), keys)
        fd = os.open(__file__, os.O_RDONLY)
        cases["python os.fstat (one system call)"] = (lambda _k: os.fstat(fd), keys)
    elif system == "feast":
        from feast import FeatureStore
        store = FeatureStore(repo_path=str(root / f"feast-{backend}"))
        cases["feast get_online_features"] = (
            lambda r: store.get_online_features(features=refs, entity_rows=r).to_dict(), rows)
    else:
        from loopstack.fast_http import find_lane
        from loopstack.features.server import create_app
        from loopstack.project import Project
        from b2_load import loopstack_env
        os.environ.update(loopstack_env(backend, ""))
        project = Project(str(root / "loopstack"))
        online = project.online
        online.get_online_features(refs, rows[0])
        populating = getattr(online.store, "populating", None)
        if populating is not None:   # the first read maps the store in a background thread: let it finish
            populating.join()
        cases["loopstack get_online_features"] = (lambda r: online.get_online_features(refs, r), rows)
        lane = find_lane(create_app(project, reload_interval=0))
        hdrs = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
        bodies = [json.dumps({"features": refs, "entities": {"user_id": [k]}}).encode() for k in keys]

        def answer(body: bytes) -> None:
            status, _body, scope, t0, _ = lane.begin(body, "/get-online-features", hdrs, ("127.0.0.1", 1))
            lane.finish(scope, status, t0)
        cases["loopstack server answer (lane)"] = (answer, bodies)
    return {name: {str(g): timed(fn, args, g / 1e3) for g in gaps} for name, (fn, args) in cases.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--gaps", default="0,1,5", help="ms of sleep before each call")
    p.add_argument("--backend", default="sqlite", choices=["sqlite"])
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    gaps = [float(g) for g in a.gaps.split(",")]
    if a.worker:
        print(json.dumps(worker(a.worker, a.backend, a.calls, gaps)))
        return
    import b1_pit_join as b1
    res: dict = {}
    for system, py in (("python", sys.executable), ("loopstack", sys.executable), ("feast", str(b1.FEAST_PY))):
        out = subprocess.run([py, __file__, "--worker", system, "--calls", str(a.calls), "--gaps", a.gaps,
                              "--backend", a.backend], capture_output=True, text=True, check=True)
        res.update(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{'case':36s} {'gap ms':>6s} {'p50 us':>8s} {'p99 us':>8s} {'p50 / no gap':>12s}")
    for name, by_gap in res.items():
        base = by_gap[str(gaps[0])]["p50_us"]
        for g, r in by_gap.items():
            print(f"{name:36s} {float(g):6g} {r['p50_us']:8.0f} {r['p99_us']:8.0f} {r['p50_us'] / base:11.1f}x")
    ours, feast = res["loopstack get_online_features"], res["feast get_online_features"]
    for g in ours:
        print(f"gap {float(g):g} ms: Feast / loopstack in-process p50 {feast[g]['p50_us'] / ours[g]['p50_us']:.1f}x, "
              f"p99 {feast[g]['p99_us'] / ours[g]['p99_us']:.1f}x")
    out = HERE.parent / ".bench" / "results" / "b2_cold.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "calls": a.calls, "cases": res}) + "\n")


if __name__ == "__main__":
    main()
