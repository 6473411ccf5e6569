"""8 processes hammer the registry and run tracking on one metadata database at the same time.

Each worker (multiprocessing, spawn) runs a fixed, seeded mix of operations on two shared models
(register, gate, alias moves, stage transitions up to production) and on runs (start own runs, log
params and metrics; log metrics into shared runs that every worker writes). Afterwards the database
must hold exactly what the callers were told succeeded: versions gap-free and unique, the model's
generation equal to the number of changes, one audit generation per change, each alias equal to
its last move in generation (commit) order, every metric point and param, the shared runs' latest
metric the one with the highest step. No error may reach a caller: deadlocks and serialization
failures are re-run by `loopstack.meta.tx` and counted (tests/meta/test_tx.py provokes each one).
Run on PostgreSQL and on a SQLite file (WAL, BEGIN IMMEDIATE). loopstack pins read committed on
PostgreSQL whatever the server default (tests/meta/test_tx.py checks the pin).
"""
from __future__ import annotations

import multiprocessing as mp
import random
import time
import traceback
from collections import Counter

import pytest
import sqlalchemy as sa

WORKERS, OPS = 8, 30
MODELS, ALIASES = ("spam", "ham"), ("champion", "challenger")
SHARED_RUNS = 2
PASSING = {"passed": True, "reasons": [["absolute:auc", True, "auc = 0.9"]]}


def _worker(url: str, root: str, wid: int, shared: list[str], ready, start, q) -> None:
    """One process: OPS seeded operations; reports what succeeded, its retries and any error."""
    from pathlib import Path

    from loopstack.meta.artifacts import ArtifactStore
    from loopstack.meta.db import MetadataStore
    from loopstack.meta.tx import reset_retry_counts, retry_counts
    from loopstack.registry import Registry
    from loopstack.training.tracking import RunStore
    from tests.registry.helpers import SIGNATURE, ThresholdModel

    meta = MetadataStore(url)
    reg = Registry(meta, ArtifactStore(Path(root) / "artifacts"))
    runs = RunStore(meta, reg.artifacts)
    rng = random.Random(wid)
    done: dict = {"registered": [], "changes": Counter(), "alias_moves": [], "transitions": 0, "runs": {},
                  "shared_points": [], "errors": []}
    mine: dict[str, list[int]] = {m: [] for m in MODELS}
    reset_retry_counts()
    ready.put(wid)           # imported and connected: the clock starts when all eight are
    start.wait(120)
    t0 = time.monotonic()
    for i in range(OPS):
        model = rng.choice(MODELS)
        op = rng.choice(["register", "alias", "transition", "run", "shared"]) if mine[model] else "register"
        try:
            if op == "register":
                mv = reg.register(model, ThresholdModel(0.1), signature=SIGNATURE, run_id=f"w{wid}-{i}")
                reg.record_gate(mv.ref, PASSING)
                mine[model].append(mv.version)
                done["registered"].append((model, mv.version))
                done["changes"][model] += 2
            elif op == "alias":
                alias, v = rng.choice(ALIASES), rng.choice(mine[model])
                reg.set_alias(model, alias, v, reason=f"w{wid} op {i}")
                done["alias_moves"].append((model, alias, v))
                done["changes"][model] += 1
            elif op == "transition":   # only own versions; a production one is left alone (others archive it)
                v = rng.choice(mine[model])
                state = reg.get(f"models:/{model}/{v}").state
                nxt = {"candidate": "shadow", "shadow": "canary", "canary": "experiment",
                       "experiment": "production", "archived": "candidate"}.get(state)
                if nxt is not None:
                    reg.promote(f"models:/{model}/{v}", nxt, reason=f"w{wid} op {i}")
                    done["transitions"] += 1
                    done["changes"][model] += 1
            elif op == "run":
                with runs.start(f"w{wid}-{i}", tags={"worker": wid}, flush_every=5) as run:
                    run.log_params({"worker": wid, "op": i})
                    for step in range(12):
                        run.log_metric("loss", 1.0 / (step + 1), step=step)
                done["runs"][run.run_id] = {"points": 12, "params": 2, "last": 1.0 / 12}
            else:   # shared runs: every worker upserts the same latest-metric rows
                rid = rng.choice(shared)
                step = wid * 1000 + i
                runs._write_metrics(rid, [("shared", step, float(step), int(time.time() * 1000)),
                                          (f"w{wid}", i, float(i), int(time.time() * 1000))])
                done["shared_points"].append((rid, step))
        except Exception:  # noqa: BLE001 - reported to the parent, which fails the test with it
            done["errors"].append(f"worker {wid} op {i} ({op}): {traceback.format_exc()}")
    done["seconds"] = time.monotonic() - t0
    done["retries"] = retry_counts()
    meta.close()
    q.put((wid, done))


def _hammer(url: str, root) -> tuple[list[dict], float, list[str]]:
    from loopstack.meta.artifacts import ArtifactStore
    from loopstack.meta.db import MetadataStore
    from loopstack.training.tracking import RunStore
    meta = MetadataStore(url)                      # migrated before the workers open it
    shared = [RunStore(meta, ArtifactStore(root / "artifacts")).start(f"shared-{k}").run_id
              for k in range(SHARED_RUNS)]
    meta.close()
    ctx = mp.get_context("spawn")
    ready, start, q = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(url, str(root), w, shared, ready, start, q)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    for _ in procs:
        ready.get(timeout=120)
    t0 = time.monotonic()
    start.set()
    results = dict(q.get(timeout=300) for _ in procs)
    wall = time.monotonic() - t0
    for p in procs:
        p.join(30)
    return [results[w] for w in range(WORKERS)], wall, shared


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_eight_processes_lose_nothing_and_surface_no_deadlock(backend, request, tmp_path):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        url = request.getfixturevalue("pg_meta_url")
    results, wall, shared = _hammer(url, tmp_path)
    assert [e for r in results for e in r["errors"]] == []           # no deadlock/serialization error surfaced

    from loopstack.meta.db import MetadataStore
    from loopstack.registry import Registry
    from loopstack.meta.artifacts import ArtifactStore
    from loopstack.training.schema import latest_metrics, metrics, params, runs
    meta = MetadataStore(url)
    reg = Registry(meta, ArtifactStore(tmp_path / "artifacts"))
    registered = [mv for r in results for mv in r["registered"]]
    for model in MODELS:
        got = [v.version for v in reg.versions(model)]
        mine = sorted(v for m, v in registered if m == model)
        assert got == mine == list(range(1, len(mine) + 1))           # unique, gap-free, none lost
        changes = sum(r["changes"][model] for r in results)
        assert reg.generation(model) == changes                       # every change counted once
        audit = reg.audit(model)
        assert sorted({e["generation"] for e in audit}) == list(range(1, changes + 1))
        moves = sorted((a, v) for r in results for m, a, v in r["alias_moves"] if m == model)
        logged = sorted((e["alias"], e["evidence"]["to_version"]) for e in audit
                        if e["action"] == "alias" and e["alias"] in ALIASES)
        assert logged == moves                                        # each acknowledged move, once
        aliases = {a: v.version for v in reg.versions(model) for a in v.aliases}
        for alias in ALIASES:
            last = max((e for e in audit if e["action"] == "alias" and e["alias"] == alias),
                       key=lambda e: e["generation"], default=None)
            assert aliases.get(alias) == (last and last["evidence"]["to_version"])
        prod = [v.version for v in reg.versions(model) if v.state == "production"]
        assert len(prod) <= 1 and aliases.get("production") == (prod[0] if prod else None)
    with meta.engine.connect() as conn:
        own = {rid: x for r in results for rid, x in r["runs"].items()}
        assert conn.execute(sa.select(sa.func.count()).select_from(runs)).scalar() == len(own) + SHARED_RUNS
        for rid, x in own.items():
            assert conn.execute(sa.select(sa.func.count()).select_from(metrics)
                                .where(metrics.c.run_id == rid)).scalar() == x["points"]
            assert conn.execute(sa.select(sa.func.count()).select_from(params)
                                .where(params.c.run_id == rid)).scalar() == x["params"]
            assert conn.execute(sa.select(latest_metrics.c.value).where(
                latest_metrics.c.run_id == rid, latest_metrics.c.key == "loss")).scalar() == x["last"]
        for rid in shared:
            steps = [s for r in results for sid, s in r["shared_points"] if sid == rid]
            n = conn.execute(sa.select(sa.func.count()).select_from(metrics).where(
                metrics.c.run_id == rid, metrics.c.key == "shared")).scalar()
            latest = conn.execute(sa.select(latest_metrics.c.step).where(
                latest_metrics.c.run_id == rid, latest_metrics.c.key == "shared")).scalar()
            assert n == len(steps) and latest == (max(steps) if steps else None)
    meta.close()
    retries = sum((Counter(r["retries"]) for r in results), Counter())
    print(f"\n[{backend}] {WORKERS} processes x {OPS} ops = {WORKERS * OPS} ops in {wall:.1f} s wall, "
          f"{WORKERS * OPS / wall:.0f} ops/s "
          f"(slowest worker {max(r['seconds'] for r in results):.1f} s); versions registered {len(registered)}, "
          f"alias moves {sum(len(r['alias_moves']) for r in results)}, transitions "
          f"{sum(r['transitions'] for r in results)}, runs {sum(len(r['runs']) for r in results)}, shared-run "
          f"writes {sum(len(r['shared_points']) for r in results)}; retries {dict(retries) or 0}")
