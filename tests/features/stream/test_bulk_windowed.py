"""Batch materialization of windowed views entity by entity (online/bulk_windowed.py): the state it
writes is, byte for byte, what one `apply_events` call with every event of the run writes (every
aggregation type, filters, ties, redelivered records, runs over overlapping and out-of-order spans),
whatever its batch size; reads equal the time-ordered path's; a run that fails between batches and is
run again ends in the state of one clean run, and its marks let it skip what it already wrote."""
from __future__ import annotations

import json
import random
from datetime import timedelta

import pytest

import loopstack.features.online.bulk_windowed as bw
from loopstack.features.materialize import materialize
from loopstack.timeutil import to_us
from tests.features.stream._defs import dump_state, gen_events, make_project
from tests.features.stream.test_bulk import runs, twin

ONE_CALL = 10**9   # chunk_rows: the event-by-event path applies the whole run in one apply_events call


@pytest.fixture(params=["sqlite", "redis"])
def backend(request):
    return request.param


def _project(tmp_path, backend, request, seed: int, n: int, authors: int):
    url = request.getfixturevalue("redis_url") if backend == "redis" else None
    p = make_project(tmp_path / "proj", backend, url)
    rng = random.Random(seed)
    events = gen_events(n, seed=seed, authors=authors)
    dup = [dict(e) for e in rng.sample(events, len(events) // 10)]  # redelivered records (same values)
    p.log.append("events", events + dup)
    lo = min(e["ts"] for e in events)
    hi = max(e["ts"] for e in events) + timedelta(microseconds=1)
    return p, rng, lo, hi


def _diff(want: dict, got: dict) -> list:
    keys = set(want) | set(got)
    return [(h, f) for h in sorted(keys) for f in sorted(set(want.get(h, {})) | set(got.get(h, {})))
            if want.get(h, {}).get(f) != got.get(h, {}).get(f)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_entity_by_entity_equals_one_apply_events_call(tmp_path, backend, seed, request):
    p, rng, lo, hi = _project(tmp_path, backend, request, seed, [300, 700, 120][seed], [5, 60, 2][seed])
    mid1, mid2 = lo + (hi - lo) / 3, lo + 2 * (hi - lo) / 3
    plans = {
        "one run": [(lo, hi)],
        "out of order, overlapping": [(mid1, hi), (lo, mid2), (lo, hi)],
        "newest first": [(mid2, hi), (mid1, mid2), (lo, mid1)],
    }
    for i, (name, plan) in enumerate(plans.items()):
        a, b = twin(p, backend, f"ev{i}"), twin(p, backend, f"bulk{i}")   # fresh stores for every plan
        want = runs(a, [(x, y, ONE_CALL, False) for x, y in plan], views=["wins"])
        # the result does not depend on the batch size, even where one entity has more events than a batch
        batch = [7, 50, 1][seed] if i < 2 else ONE_CALL
        got = runs(b, [(x, y, batch, True) for x, y in plan], views=["wins"])
        assert len(want) > 2, name
        assert not _diff(want, got), (name, batch, _diff(want, got)[:3])
        a.close()
        b.close()
    p.close()


def test_reads_equal_the_time_ordered_path_in_small_chunks(tmp_path, backend, request):
    """Small time chunks leave some expired tiles behind (a later chunk's horizon only prunes the entities
    it touches), so the states differ, but every read the store serves is the same."""
    p, _, lo, hi = _project(tmp_path, backend, request, 5, 500, 9)
    a, b = twin(p, backend, "ev"), twin(p, backend, "bulk")
    ra = materialize(a, lo, hi, views=["wins"], progress=False, chunk_rows=40, bulk=False).views["wins"]
    rb = materialize(b, lo, hi, views=["wins"], progress=False, chunk_rows=40, bulk=True).views["wins"]
    assert ra.rows == rb.rows == 550 and rb.chunks > 5
    tiles_a = sum(1 for h in dump_state(a).values() for f in h if f.startswith("t:"))
    tiles_b = sum(1 for h in dump_state(b).values() for f in h if f.startswith("t:"))
    assert tiles_b <= tiles_a
    feats = [f"wins:{f.name}" for f in p.registry.views()["wins"].features]
    rows = [{"author_id": i} for i in range(10)]
    for as_of in (to_us(hi), to_us(hi) + 30 * 60 * 1_000_000):
        x = a.online.get_online_features(feats, rows, as_of=as_of)
        y = b.online.get_online_features(feats, rows, as_of=as_of)
        assert x.rows == y.rows and x.found == y.found and any(x.found)
    a.close()
    b.close()
    p.close()


@pytest.mark.parametrize("authors", [30, 3])   # 3: each entity has more events than a batch (25), in pieces
def test_a_run_that_fails_between_batches_resumes_to_the_clean_state(tmp_path, backend, request, monkeypatch,
                                                                       authors):
    p, _, lo, hi = _project(tmp_path, backend, request, 8, 400, authors)
    clean = twin(p, backend, "clean")
    first = lo + (hi - lo) / 10   # prior state: the run then moves the watermark past some of its own events
    materialize(clean, lo, first, views=["wins"], progress=False, bulk=True)
    rows_clean = materialize(clean, lo, hi, views=["wins"], progress=False, chunk_rows=25, bulk=True).views["wins"].rows
    want = dump_state(clean)

    b = twin(p, backend, "killed")
    materialize(b, lo, first, views=["wins"], progress=False, bulk=True)
    real, calls = bw.apply_entity, {"n": 0}
    store = b.online_store
    real_write = store.write

    def failing_write(batch):
        calls["n"] += 1
        if calls["n"] == (4 if authors == 30 else 9):   # 3 authors: after the first entity's last piece
            raise OSError("disk full (test)")
        return real_write(batch)
    monkeypatch.setattr(store, "write", failing_write)
    with pytest.raises(OSError, match="disk full"):
        materialize(b, lo, hi, views=["wins"], progress=False, chunk_rows=25, bulk=True)
    monkeypatch.setattr(store, "write", real_write)

    seen: list = []

    def counting(plan, fields, evs, horizon):
        seen.append(len(evs))
        return real(plan, fields, evs, horizon)
    monkeypatch.setattr(bw, "apply_entity", counting)
    res = materialize(b, lo, hi, views=["wins"], progress=False, chunk_rows=25, bulk=True).views["wins"]
    assert not _diff(want, dump_state(b))
    runs_marks = [json.loads(v) for k, v in b.online_store.progress("materialize:wins:run:").items()]
    assert sorted(m["rows"] for m in runs_marks)[-1] == rows_clean   # each event counted once across attempts
    # whole entities written before the failure (>= 75 events) are not applied again; an entity in pieces is
    # written with its last piece, so the one the failure cut is applied again whole
    assert 0 < sum(seen) == res.rows <= rows_clean - (75 if authors == 30 else 100)
    clean.close()
    b.close()
    p.close()


def test_events_behind_the_horizon_of_the_previous_run_are_counted_late(tmp_path, request):
    p, _, lo, hi = _project(tmp_path, "sqlite", request, 3, 300, 4)
    a, b = twin(p, "sqlite", "ev"), twin(p, "sqlite", "bulk")
    for q, bulk in ((a, False), (b, True)):
        materialize(q, hi - timedelta(minutes=20), hi, views=["wins"], progress=False, chunk_rows=ONE_CALL, bulk=bulk)
        late = materialize(q, lo, hi, views=["wins"], progress=False, chunk_rows=ONE_CALL, bulk=bulk).views["wins"]
        assert late.beyond_horizon > 0
    assert not _diff(dump_state(a), dump_state(b))
    a.close()
    b.close()
    p.close()


def test_views_with_plain_and_windowed_features(tmp_path, backend, request):
    """Plain fields need the values of old events too, so nothing is folded: still one call's state."""
    from loopstack import Count, FeatureView, Last, Sum
    from tests.features.stream._defs import definitions
    p, _, lo, hi = _project(tmp_path, backend, request, 6, 400, 12)
    old = gen_events(60, seed=7, base=lo + timedelta(minutes=10), span_s=300, authors=5)  # authors with old events only
    p.log.append("events", [dict(e, author_id=100 + e["author_id"]) for e in old])
    author, events, *_ = objs = definitions()
    mixed = FeatureView("mixed", entity=author, source=events, allowed_lateness="10m", features=[
        Count(window="1h", name="cnt_1h"), Sum("n", window="30m", name="sum_n_30m"),
        Last("label", name="last_label"), Last("n", filter="n > 50", name="last_big_n")])
    p.apply([*objs, mixed])
    a, b = twin(p, backend, "ev"), twin(p, backend, "bulk")
    want = runs(a, [(lo, hi, ONE_CALL, False)], views=["mixed"])
    got = runs(b, [(lo, hi, 30, True)], views=["mixed"])
    assert len(want) > 5 and not _diff(want, got), _diff(want, got)[:3]
    r = b.online.get_online_features(["mixed:last_big_n", "mixed:last_label"],
                                     [{"author_id": i} for i in [*range(12), *range(100, 105)]], as_of=to_us(hi))
    assert sum(x["last_big_n"] is not None for x in r.rows) > 3
    assert all(r.found[12:]) and sum(x["last_label"] is not None for x in r.rows[12:]) >= 2   # from old events
    a.close()
    b.close()
    p.close()
