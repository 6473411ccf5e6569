"""The bulk path of batch materialization (plain-only views, online/bulk.py) writes exactly the
state the event-by-event path writes: every hash, every field, byte for byte (meta counters too)."""
from __future__ import annotations

import dataclasses
import random
import uuid
from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loopstack import Entity, EventSource, FeatureView, Field, Last
from loopstack.features.materialize import materialize
from loopstack.timeutil import to_us
from loopstack.project import Project
from tests.features.stream._defs import dump_state, gen_events, make_project


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    return request.param


def twin(p: Project, backend: str, name: str) -> Project:
    """The same project with a second, empty online store of the same backend."""
    on = p.config.online
    on = (dataclasses.replace(on, path=f"data/{name}.db") if backend == "sqlite"
          else dataclasses.replace(on, prefix=f"{name}{uuid.uuid4().hex[:8]}"))
    return Project(p.root, config=dataclasses.replace(p.config, online=on))


def runs(p: Project, plan: list[tuple], views=None) -> dict:
    for lo, hi, chunk, bulk in plan:
        materialize(p, lo, hi, views=views, progress=False, chunk_rows=chunk, bulk=bulk)
    return dump_state(p)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bulk_equals_event_by_event_on_random_log_events(tmp_path, backend, seed, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    p = make_project(tmp_path / "proj", backend, url)
    rng = random.Random(seed)
    events = gen_events(rng.randint(50, 600), seed=seed, authors=[3, 7, 40, 500][seed])
    dup = [dict(e) for e in rng.sample(events, len(events) // 10)]  # redelivered records (same values)
    p.log.append("events", events + dup)
    lo = min(e["ts"] for e in events)
    hi = max(e["ts"] for e in events) + timedelta(microseconds=1)
    mid1, mid2 = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
    chunk = rng.choice([1, 7, 50, 100_000])
    plans = {
        "one run": [(lo, hi, chunk)],
        "out of order, overlapping": [(mid1, hi, chunk), (lo, mid2, chunk), (lo, hi, chunk)],
        "newest first": [(mid2, hi, chunk), (mid1, mid2, chunk), (lo, mid1, chunk)],
    }
    for i, (name, plan) in enumerate(plans.items()):
        a, b = twin(p, backend, f"ev{i}"), twin(p, backend, f"bulk{i}")   # fresh stores for every plan
        want = runs(a, [(*x, False) for x in plan], views=["plain"])
        got = runs(b, [(*x, True) for x in plan], views=["plain"])
        assert want and set(got) == set(want), name
        diff = {(h, f): (want[h][f], got[h].get(f)) for h in want for f in want[h] if want[h][f] != got[h].get(f)}
        assert not diff, (name, list(diff.items())[:3])
        a.close()
        b.close()
    p.close()


def test_bulk_equals_event_by_event_on_file_ties_and_filters(tmp_path, backend, request):
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    p = make_project(tmp_path / "proj", backend, url)
    rng = random.Random(9)
    t0 = datetime(2024, 5, 1, 12, tzinfo=timezone.utc)
    folder = tmp_path / "files"
    folder.mkdir()
    for i in range(3):  # many equal timestamps across and within files: file, then row order decides
        n = 200
        pq.write_table(pa.table({
            "author_id": [rng.randrange(6) for _ in range(n)],
            "v": [None if rng.random() < 0.2 else rng.randint(0, 100) for _ in range(n)],
            "s": [rng.choice(["a", "b", None]) for _ in range(n)],
            "ts": pa.array([t0 + timedelta(seconds=rng.randint(0, 20)) for _ in range(n)],
                           pa.timestamp("us", tz="UTC"))}), folder / f"part-{i}.parquet")
    author = Entity("author", "author_id")
    src = EventSource("files", "ts", [Field("author_id", "int64"), Field("v", "int64", required=False),
                                      Field("s", "string", required=False)], path=str(folder) + "/")
    view = FeatureView("fv", entity=author, source=src, features=[
        Last("v", name="last_v"), Last("s", name="last_s"), Last("v", filter="v > 60", name="big_v"),
        Last("s", filter="s == 'a'", name="last_a"), Last("v", filter="s == 'b'", name="v_of_b")])
    p.apply([author, src, view])
    mid = t0 + timedelta(seconds=10)
    end = t0 + timedelta(seconds=21)
    for i, plan in enumerate(([(t0, end, 13)], [(mid, end, 5), (t0, end, 5)], [(t0, mid, 1000), (t0, end, 1000)])):
        a, b = twin(p, backend, f"ev{i}"), twin(p, backend, f"bulk{i}")   # fresh stores for every plan
        want = runs(a, [(*x, False) for x in plan], views=["fv"])
        got = runs(b, [(*x, True) for x in plan], views=["fv"])
        assert want == got, plan
        r = a.online.get_online_features(["fv:last_v", "fv:big_v", "fv:last_a"], [{"author_id": 1}],
                                         as_of=to_us(end))
        assert r.found[0]
        a.close()
        b.close()
    p.close()


def test_large_redis_batch_is_all_or_nothing(redis_url, monkeypatch):
    """Large batches are packed by hand (redis.py `_transaction`): a command that fails to queue
    aborts the whole MULTI/EXEC, and the connection stays usable."""
    import redis

    import loopstack.features.online.redis as R
    from loopstack.features.online import open_online_store
    from loopstack.features.online.base import WriteBatch
    store = open_online_store("redis", url=redis_url, prefix=f"raw{uuid.uuid4().hex[:8]}")
    store.write(WriteBatch(puts={"h|0": {"a": b"before"}}, progress={"m": "0"}))
    real = R._pack

    def pack(args):
        return real(args[:2]) if b"boom" in args else real(args)  # HSET key: wrong arity, fails to queue
    monkeypatch.setattr(R, "_pack", pack)
    puts = {f"h|{i}": {"x": str(i).encode()} for i in range(1, 400)}
    puts["h|200"] = {"boom": b"!", "z": b"2"}  # two fields: packed by `_pack`
    with pytest.raises(redis.ResponseError):
        store.write(WriteBatch(puts=puts, deletes={"h|0": ["a"]}, progress={"m": "1"}))
    assert store.read(["h|0", "h|1", "h|200", "h|399"]) == {"h|0": {"a": b"before"}}
    assert store.progress() == {"m": "0"}
    monkeypatch.setattr(R, "_pack", real)
    store.write(WriteBatch(puts=puts, progress={"m": "2"}))
    assert store.read(["h|1", "h|399"]) == {"h|1": {"x": b"1"}, "h|399": {"x": b"399"}}
    assert store.progress() == {"m": "2"}
    store.clear()
    store.close()
