"""`LoopStore` on every metadata backend (SQLite file and a real PostgreSQL): runs and schedules."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from loopstack.loop.core import DONE, SHADOW, LoopError, LoopState
from loopstack.loop.store import LoopStore
from loopstack.meta.db import MetadataStore

T = datetime(2026, 11, 24, tzinfo=timezone.utc)


@pytest.fixture
def store(meta_url):
    meta = MetadataStore(meta_url)
    yield LoopStore(meta)
    meta.close()


def test_runs_round_trip_one_active_per_model(store):
    s = store.create(LoopState(run_id="r1", model="spam", started_at=T.isoformat()), T)
    with pytest.raises(LoopError, match="unfinished loop run r1"):
        store.create(LoopState(run_id="r2", model="spam"), T)
    store.create(LoopState(run_id="o1", model="other"), T)
    s.step, s.version, s.tests = SHADOW, 3, {"goal": {"p_value": 0.2, "ci": [None, None]}}
    store.save(s, T + timedelta(minutes=1))
    got = store.active("spam")
    assert got == s and store.get("r1") == s
    s.step = DONE
    store.save(s, T + timedelta(minutes=2))
    assert store.active("spam") is None
    store.create(LoopState(run_id="r2", model="spam", trigger="alert"), T + timedelta(hours=1))
    assert [r.run_id for r in store.runs("spam")] == ["r2", "r1"]
    assert store.last_started("spam", "alert") == T + timedelta(hours=1)
    with pytest.raises(LoopError, match="no loop run 'nope'"):
        store.get("nope")


def test_schedules(store):
    assert store.schedule("spam") is None
    store.set_schedule("spam", 3600, T, T)
    store.set_schedule("spam", 3600, T + timedelta(hours=1), T, last_run_id="r1")
    s = store.schedule("spam")
    assert s["next_run_at"] == T + timedelta(hours=1) and s["last_run_id"] == "r1" and s["every_seconds"] == 3600


def test_concurrent_starts_of_one_model_leave_one_unfinished_run(store):
    """The one-unfinished-run check runs under a per-model lock: of 6 threads starting at once, one wins."""
    import threading
    barrier, outcomes = threading.Barrier(6), []

    def start(i):
        barrier.wait()
        try:
            store.create(LoopState(run_id=f"r{i}", model="spam"), T)
            outcomes.append("ok")
        except LoopError as exc:
            outcomes.append("refused" if "unfinished loop run" in str(exc) else repr(exc))
    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["ok"] + ["refused"] * 5
    assert len(store.runs("spam")) == 1
