"""Bulk materialization into Redis in many batches through the writer thread (online/bulk.py): the
same state as one batch, a failed write stops the run before anything after it is written, a run
killed (-9) between batches resumes to the identical state; and the Arrow-built float texts are
`json.dumps`'s, character for character."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import signal
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import loopstack.features.online.bulk as bulk
from loopstack.features.materialize import materialize
from loopstack.features.online.bulk_text import _float_json
from loopstack.project import Project
from loopstack.timeutil import to_us
from tests.features.stream._defs import dump_state, gen_events, make_project

REPO = Path(__file__).resolve().parents[3]


def test_float_texts_are_json_dumps():
    rng = np.random.default_rng(7)
    n = 40_000
    vals = np.concatenate([
        np.exp(rng.uniform(np.log(1e-7), np.log(1e18), n)) * rng.choice([-1, 1], n),  # every magnitude
        np.round(rng.uniform(-1e5, 1e5, n), 2), np.round(rng.uniform(-1e4, 1e4, n)),   # short decimals, integers
        rng.integers(0, 2**63, n, dtype=np.uint64).view(np.float64),                   # any bit pattern
        [0.0, -0.0, 1e-4, 9.999999999999999e-05, 1e13, 9999999999999.998, 1e16, 1e22, 5e-324, 2.0**53,
         math.nan, math.inf, -math.inf, 0.1, 1 / 3, 123456789.125]])
    py = [None if rng.random() < 0.05 else float(v) for v in vals]
    want = [json.dumps(v) if v is not None else "null" for v in py]
    assert _float_json(pa.array(py, pa.float64())).to_pylist() == want
    f32 = pa.array(py[:5000], pa.float64()).cast(pa.float32(), safe=False)  # widened to double, like to_pylist
    assert _float_json(f32).to_pylist() == [json.dumps(v) if v is not None else "null" for v in f32.to_pylist()]


def test_redis_write_columns_is_one_atomic_write(redis_url):
    from loopstack.features.online import open_online_store
    from loopstack.features.online.base import WriteBatch
    store = open_online_store("redis", url=redis_url, prefix=f"wc{uuid.uuid4().hex[:8]}")
    keys = pa.array([f"v|{i}" for i in range(300)] + ["v|é"], pa.string())
    vals = pa.array([str(i).encode() * (i % 7) for i in range(300)] + [b"\x00\r\n*1\r\n"], pa.binary())
    store.write_columns(WriteBatch(puts={"w|1": {"a": b"1", "b": b"2"}}, deletes={"w|0": ["x"]},
                                   progress={"m": "1"}), keys.slice(1), "latest", vals.slice(1))
    got = store.read([f"v|{i}" for i in range(301)] + ["v|é", "w|1"])
    want = {f"v|{i}": {"latest": str(i).encode() * (i % 7)} for i in range(1, 300)}
    assert got == {**want, "v|é": {"latest": b"\x00\r\n*1\r\n"}, "w|1": {"a": b"1", "b": b"2"}}
    assert store.progress() == {"m": "1"}
    with pytest.raises(ValueError, match="without nulls"):
        store.write_columns(WriteBatch(progress={"m": "2"}), pa.array(["v|1", None]), "latest", pa.array([b"", b""]))
    assert store.progress() == {"m": "1"}
    store.clear()
    store.close()


def twin(p: Project, name: str, prefix: str | None = None) -> Project:
    """The same project with another, empty Redis prefix."""
    on = dataclasses.replace(p.config.online, prefix=prefix or f"{name}{uuid.uuid4().hex[:8]}")
    return Project(p.root, config=dataclasses.replace(p.config, online=on))


@pytest.fixture
def proj(tmp_path, redis_url):
    p = make_project(tmp_path / "proj", "redis", redis_url)
    events = gen_events(900, seed=4, authors=60)
    p.log.append("events", events)
    lo, hi = min(e["ts"] for e in events), max(e["ts"] for e in events) + timedelta(microseconds=1)
    yield p, to_us(lo), to_us(hi)
    p.close()


def test_many_batches_equal_one_batch(proj, monkeypatch):
    p, lo, hi = proj
    mid = lo + (hi - lo) // 2
    plan = [(mid, hi), (lo, hi)]  # the second run merges older events with stored state

    def run(x: Project, bulk_path: bool = True) -> tuple[dict, int]:
        chunks = [materialize(x, a, b, views=["plain"], progress=False, bulk=bulk_path).views["plain"].chunks
                  for a, b in plan]
        return dump_state(x), sum(chunks)
    one, many, ev = twin(p, "one"), twin(p, "many"), twin(p, "ev")
    want, n1 = run(one)
    by_event, _ = run(ev, bulk_path=False)
    monkeypatch.setattr(bulk, "_COLUMN_BATCH", 4)  # ~15 batches per run through the writer thread
    got, n2 = run(many)
    assert n1 == 2 and n2 >= 15
    assert len(want) > 50 and got == want == by_event
    for x in (one, many, ev):
        x.online_store.clear()
        x.close()


def test_failed_write_stops_the_run_and_a_rerun_gives_the_clean_state(proj, monkeypatch):
    p, lo, hi = proj
    clean = twin(p, "clean")
    materialize(clean, lo, hi, views=["plain"], progress=False)
    monkeypatch.setattr(bulk, "_COLUMN_BATCH", 5)
    broken = twin(p, "broken")
    store = broken.online_store
    real, calls = store.write_columns, []

    def write_columns(batch, *cols):
        calls.append(len(cols[0]))
        if len(calls) == 2:
            raise ConnectionError("redis went away")
        real(batch, *cols)
    monkeypatch.setattr(store, "write_columns", write_columns)
    with pytest.raises(ConnectionError, match="went away"):
        materialize(broken, lo, hi, views=["plain"], progress=False)
    state = dump_state(broken)
    assert len([k for k in state if k.startswith("plain|")]) == 5   # batch 1 only; none after the failure
    monkeypatch.setattr(store, "write_columns", real)
    materialize(broken, lo, hi, views=["plain"], progress=False)
    assert dump_state(broken) == dump_state(clean)
    for x in (clean, broken):
        x.online_store.clear()
        x.close()


def _child(root: str, prefix: str, start: int, end: int) -> None:
    """Materialize in batches of 3 entities, printing ``wrote`` after each batch's write."""
    import time

    from loopstack.config import load_config
    from loopstack.features.online.redis import RedisOnlineStore
    bulk._COLUMN_BATCH = 3
    real = RedisOnlineStore.write_columns

    def write_columns(self, batch, *cols):  # noqa: ANN001, ANN202
        real(self, batch, *cols)
        print("wrote", flush=True)
        time.sleep(0.02)
    RedisOnlineStore.write_columns = write_columns
    cfg = load_config(Path(root))
    p = Project(root, config=dataclasses.replace(cfg, online=dataclasses.replace(cfg.online, prefix=prefix)))
    materialize(p, start, end, views=["plain"], progress=False)
    print("done", flush=True)


@pytest.mark.slow
def test_kill_between_batches_resumes_to_the_identical_state(proj):
    p, lo, hi = proj
    clean = twin(p, "clean")
    materialize(clean, lo, hi, views=["plain"], progress=False)
    prefix = f"killed{uuid.uuid4().hex[:8]}"
    killed = twin(p, "killed", prefix)
    rng, kills = random.Random(3), 0
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-m", "tests.features.online.test_bulk_batches", str(p.root),
                                 prefix, str(lo), str(hi)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        target, seen = rng.randint(1, 6), 0
        for line in proc.stdout:
            seen += line.startswith("wrote")
            if seen >= target:
                proc.send_signal(signal.SIGKILL)
                break
        rc = proc.wait(timeout=120)
        assert rc in (0, -signal.SIGKILL), proc.stderr.read()
        kills += rc == -signal.SIGKILL
    assert kills == 4   # each attempt starts over and is killed after at most 6 of its ~20 batches
    partial = dump_state(killed)
    assert partial and partial != dump_state(clean)      # a part-done run was left behind
    materialize(killed, lo, hi, views=["plain"], progress=False)
    assert dump_state(killed) == dump_state(clean)      # every hash and field, meta counters included
    for x in (clean, killed):
        x.online_store.clear()
        x.close()


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
