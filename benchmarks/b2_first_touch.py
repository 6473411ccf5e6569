"""B2 side measurement: what the first read of a page of the memory-mapped SQLite store costs.

In a fresh process on the B2 1M-entity loopstack project (made by b2_online_reads.py), reads of 1 entity x 10
features with random ids (`OnlineFeatures.get_online_features`), twice over the same ids: the first pass maps
pages of the file into the process (minor page faults, counted), the second reads pages already mapped. The
difference between the passes is the cost of those faults on this machine.

    python benchmarks/b2_first_touch.py [--reads 5500]
"""
from __future__ import annotations

import argparse
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


def minor_faults() -> int:
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[7])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entities", type=int, default=1_000_000)
    p.add_argument("--reads", type=int, default=5500)
    a = p.parse_args()
    proj = B.WORK / f"n{a.entities}" / "loopstack"
    if not (proj / "loopstack.yaml").exists():
        p.error(f"no B2 project at {proj}: run benchmarks/b2_online_reads.py first")
    os.environ.update(loopstack_env("sqlite", "redis://127.0.0.1:1/0"))
    from loopstack.project import Project
    online = Project(str(proj)).online
    feats = [f"plain:{f}" for f in FEATURES]
    rows = [[{"user_id": int(k)} for k in req] for req in request_keys(a.entities, a.reads + 500, 1, seed=43)]
    for r in rows[:500]:   # imports, statements, the B-tree's top pages
        online.get_online_features(feats, r)
    rows = rows[500:]
    print(f"{'pass':6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s} {'minor faults':>13s}")
    for name in ("first", "second"):
        f0, out = minor_faults(), np.empty(len(rows))
        for i, r in enumerate(rows):
            t = time.perf_counter_ns()
            online.get_online_features(feats, r)
            out[i] = time.perf_counter_ns() - t
        p50, p95, p99 = np.percentile(out / 1e6, [50, 95, 99])
        print(f"{name:6s} {p50:8.3f} {p95:8.3f} {p99:8.3f} {minor_faults() - f0:13,d}")


if __name__ == "__main__":
    main()
