"""Streaming into the online store: exact counts, idempotent redelivery, late events, visibility."""
from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest

from loopstack.errors import DefinitionError
from loopstack.timeutil import to_us
from loopstack.features.parity import check_parity
from loopstack.features.stream import StreamProcessor, stream_mark
from loopstack.project import Project
from tests.features.stream._defs import gen_events, in_time_order, make_project, served


@pytest.fixture(params=["sqlite", "redis"])
def project(tmp_path, request):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    p = make_project(tmp_path / "proj", request.param, url, partitions=3)
    yield p
    p.close()


def drain(p: Project, group: str = "loopstack-stream", **kw) -> StreamProcessor:
    sp = StreamProcessor(p, group=group, **kw)
    while sp.step(150):
        pass
    return sp


def test_every_event_is_applied_exactly_once(project):
    events = in_time_order(gen_events(400, seed=21))
    project.log.append("events", events)
    sp = drain(project)
    assert sp.stats.records == 400 and sp.stats.applied["wins"] == 400 and not sp.stats.duplicates
    ends = {p: o for p, o in project.log.end_offsets("events").items() if o}  # 7 authors may miss a partition
    assert project.log.committed("events", "loopstack-stream") == ends
    marks = project.online_store.progress("stream:wins:")
    assert marks == {stream_mark("wins", "events", p): str(o - 1) for p, o in ends.items()}
    newest = max(e["ts"] for e in events)
    t = to_us(newest) + 1
    resp = project.online.get_online_features(["wins:cnt_2h"], [{"author_id": a} for a in range(7)], as_of=t)
    assert sum(r["cnt_2h"] for r in resp.rows) == sum(1 for e in events if to_us(e["ts"]) >= t - 7_200_000_000)
    before = served(project, [t, t + 600_000_000])
    # the same group again: nothing new; another group starts where the marks are: nothing either
    assert StreamProcessor(project).step(1000) == 0
    assert StreamProcessor(project, group="other").step(1000) == 0
    # a redelivery of everything (consumers rewound) is recognised by the marks and skipped
    again = StreamProcessor(project, group="other")
    again._open()
    for p, consumer in again._consumers["events"].items():
        consumer.seek(p, 0)
    while again.step(150):
        pass
    assert again.stats.records == 400 and again.stats.duplicates["wins"] == 400 and not again.stats.applied
    assert served(project, [t, t + 600_000_000]) == before
    report = check_parity(project, sample=20)
    assert report.ok and report.checked > 100, report.table()


def test_resumes_from_progress_marks_with_new_events(project):
    first, second = in_time_order(gen_events(150, seed=22)), in_time_order(gen_events(90, seed=23, span_s=1800))
    project.log.append("events", first)
    drain(project)
    project.log.append("events", second)
    sp = drain(project)
    assert sp.stats.records == 90 and sp.stats.applied["wins"] == 90
    assert check_parity(project, sample=20).ok


def test_late_events_are_counted_and_side_output(project):
    now = datetime.now(timezone.utc)
    project.log.append("events", gen_events(200, seed=24, base=now, span_s=3600))
    drain(project)
    # retention horizon of "wins": newest - 30m lateness - 2h longest window; these are 5h old
    late = [{"author_id": 1, "n": 7, "amount": 1.0, "label": "spam", "ts": now - timedelta(hours=5, seconds=i)}
            for i in range(5)]
    on_time = [{"author_id": 2, "n": 1, "amount": 2.0, "label": "ham", "ts": now - timedelta(minutes=10)}]
    project.log.append("events", late + on_time)
    sp = drain(project)
    assert sp.stats.late == {"wins": 5}            # "plain" has no windows: nothing is late for it
    assert sp.stats.applied["wins"] == 1
    side = list(project.log.replay("events.late"))
    assert len(side) == 5
    v = side[0].value
    assert v["view"] == "wins" and "too late" in v["reason"] and v["record"]["author_id"] == 1
    cutoff = (now - timedelta(hours=4)).isoformat()
    assert {(r.value["partition"], r.value["offset"]) for r in side} == {
        (r.partition, r.offset) for r in project.log.replay("events") if r.value["ts"] < cutoff}
    assert project.online.freshness()["wins"]["too_late"] == 5
    assert check_parity(project, sample=20).ok  # late events cannot change what is served


def test_new_event_is_visible_online_quickly(tmp_path):
    p = make_project(tmp_path / "proj")
    p.log.append("events", gen_events(50, seed=25))
    ready, holder = threading.Event(), {}

    def worker() -> None:
        q = Project(p.root)
        sp = holder["sp"] = StreamProcessor(q, poll_interval=0.02)
        sp.step()
        ready.set()
        sp.run(stop_after=30)
        q.close()

    th = threading.Thread(target=worker, daemon=True)
    th.start()
    assert ready.wait(30)
    reader = Project(p.root)
    latencies = []
    for i in range(5):
        t0 = time.perf_counter()
        p.log.append("events", [{"author_id": 1000 + i, "n": 1, "amount": 1.0, "label": "x",
                                 "ts": datetime.now(timezone.utc)}])
        while not reader.online.get_online_features(["plain:last_n"], [{"author_id": 1000 + i}]).found[0]:
            assert time.perf_counter() - t0 < 5, "event not visible online within 5 s"
            time.sleep(0.005)
        latencies.append(time.perf_counter() - t0)
    holder["sp"].stop()
    th.join(10)
    assert not th.is_alive()
    assert max(latencies) <= 2.0, latencies  # the benchmark measures the real p99 (target <= 1 s)
    reader.close()
    p.close()


def test_rejects_batch_views_and_unknown_views(tmp_path):
    p = make_project(tmp_path / "proj")
    with pytest.raises(DefinitionError, match="unknown feature view"):
        StreamProcessor(p, views=["nope"])
    from loopstack import Entity, EventSource, FeatureView, Field, Last
    src = EventSource("files", "ts", [Field("author_id", "int64"), Field("v", "int64")], path=str(tmp_path) + "/")
    p.apply([Entity("author", "author_id"), src,
             FeatureView("fv", entity=Entity("author", "author_id"), source=src, features=[Last("v")])])
    with pytest.raises(DefinitionError, match="batch files"):
        StreamProcessor(p, views=["fv"])
    assert set(StreamProcessor(p).views) == {"wins", "plain"}
    p.close()


@pytest.mark.parametrize("group", ["", "my group", ".hidden"])
def test_a_bad_consumer_group_is_named_as_a_group_not_a_topic(tmp_path, group):
    from loopstack.errors import LogError
    p = make_project(tmp_path / "proj")
    p.log.append("events", in_time_order(gen_events(20, seed=41)))
    with pytest.raises(LogError, match=f"consumer group name {group!r} is invalid") as info:   # `stream --group`
        drain(p, group=group)
    assert "topic" not in str(info.value)
    assert p.online_store.progress("stream:") == {}   # refused before anything was applied
    p.close()


@pytest.mark.parametrize("kw", [{"stop_after": float("nan")}, {"stop_after": -1.0}, {"idle_timeout": float("nan")},
                                {"idle_timeout": -0.5}])
def test_a_stop_time_that_can_never_be_reached_is_refused(tmp_path, kw):
    """`stream --stop-after nan` ran forever (NaN never compares >=) and a negative one stopped at once."""
    p = make_project(tmp_path / "proj")
    p.log.append("events", in_time_order(gen_events(20, seed=43)))
    sp = StreamProcessor(p)

    def stop_soon(n: int, stats) -> None:   # without the check: end the run instead of looping forever
        if stats.batches or not n:
            sp.stop()

    with pytest.raises(DefinitionError, match=f"{next(iter(kw))} must be a number of seconds >= 0"):
        sp.run(on_step=stop_soon, **kw)
    assert p.online_store.progress("stream:") == {}   # refused before anything was applied
    sp.close()
    p.close()


def test_a_view_named_twice_is_consumed_once(tmp_path):
    """`stream -v wins -v wins` applied the records for the first entry and counted them duplicates for the second."""
    p = make_project(tmp_path / "proj")
    p.log.append("events", in_time_order(gen_events(60, seed=44)))
    sp = drain(p, views=["wins", "wins"])
    assert list(sp.views) == ["wins"] and len(sp.by_topic["events"]) == 1
    assert sp.stats.applied == {"wins": 60} and sp.stats.duplicates == {}
    sp.close()
    p.close()
