"""B4 tails at a fixed concurrency: loopstack's throughput, p50, p99 and slowest request with 1-row requests at
concurrency C (batching on), for the installed code and, with `--before SRC`, the code under SRC, alternately
(each repeat reverses the order), so both see the same machine. Server pinned to core 1, the closed-loop client
(b4_client.py) to core 0, as in b4_serving.py.

    git archive HEAD src | tar -x -C /tmp/base && python benchmarks/b4_tail.py --models lgbm --before /tmp/base/src

Made to measure pauses that a p50 does not show (e.g. the garbage collector's full collections).
"""
from __future__ import annotations

import argparse
import json

import b4_overhead as O
import b4_servers as S

OUT = S.BENCH / "results" / "b4_tail.jsonl"


def _range(rows: list[dict], key: str, fmt: str = ".1f") -> str:
    xs = [r[key] for r in rows]
    return f"{min(xs):{fmt}}-{max(xs):{fmt}}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="lgbm,mlp")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--repeat", type=int, default=6, help="windows per server")
    p.add_argument("--seconds", type=float, default=8.0, help="measured window")
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--before", default="", help="also serve the code under this src/ directory, alternately")
    a = p.parse_args()
    rows = []
    for model in a.models.split(","):
        variants = {"after": None, **({"before": a.before} if a.before else {})}
        servers = {v: O.start(model, 32, (), src) for v, src in variants.items()}   # 32: batching on
        try:
            for rep in range(a.repeat):
                order = list(servers.items()) if rep % 2 == 0 else list(reversed(servers.items()))
                for v, srv in order:
                    r = S.run_client(srv, 1, a.concurrency, a.seconds, a.warmup)
                    row = {"code": v, "model": model, "concurrency": a.concurrency, "rps": r["throughput_rps"],
                           "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "max_ms": r["max_ms"], "errors": r["errors"]}
                    rows.append(row)
                    print(f"  {v:6s} {model} c={a.concurrency}: {row['rps']:,.0f} req/s, p50 {row['p50_ms']:.2f} ms, "
                          f"p99 {row['p99_ms']:.2f} ms, slowest {row['max_ms']:.1f} ms, {row['errors']} errors",
                          flush=True)
        finally:
            for srv in servers.values():
                srv.stop()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("a") as fh:
        fh.write(json.dumps({"rows": rows, "args": vars(a)}) + "\n")
    print("\ncode   model  windows   req/s (range)       p99 ms (range)     slowest ms (range)")
    for v in ("after", "before"):
        for model in a.models.split(","):
            rs = [r for r in rows if r["code"] == v and r["model"] == model]
            if rs:
                print(f"{v:6s} {model:6s} {len(rs):7d}   {_range(rs, 'rps', ',.0f'):18s}  "
                      f"{_range(rs, 'p99_ms'):17s}  {_range(rs, 'max_ms')}")


if __name__ == "__main__":
    main()
