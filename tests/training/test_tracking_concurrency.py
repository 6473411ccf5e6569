"""Run tracking with concurrent writers, on SQLite and on PostgreSQL: the latest value of a metric is
the newest point whoever flushed last, params stay immutable, over-long names fail the same way."""
from __future__ import annotations

import threading

import pytest

from loopstack.training.tracking import TrackingError


def _together(fns):
    barrier = threading.Barrier(len(fns))
    errors: list = []

    def run(fn):
        barrier.wait()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - asserted on
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return errors


def test_concurrent_flushes_into_one_run_keep_every_point_and_the_newest_latest(pg_project):
    run = pg_project.runs.start("shared")
    store = pg_project.runs

    def writer(w):
        def go():
            for i in range(20):
                step = i * 4 + w                  # the four writers interleave steps 0..79
                store._write_metrics(run.run_id, [("loss", step, float(step), 1000 + step), (f"w{w}", i, 1.0, 1)])
        return go
    assert _together([writer(w) for w in range(4)]) == []
    assert len(store.metric_history(run.run_id, "loss")) == 80
    info = store.get(run.run_id)
    assert info.metrics["loss"] == 79.0 and all(info.metrics[f"w{w}"] == 1.0 for w in range(4))


def test_params_logged_concurrently_stay_immutable(pg_project):
    run = pg_project.runs.start("params")
    assert _together([lambda: run.log_params({"lr": 0.1}) for _ in range(4)]) == []
    errors = _together([lambda v=v: run.log_params({"depth": v}) for v in (3, 4)])
    assert len(errors) == 1 and isinstance(errors[0], TrackingError) and "immutable" in str(errors[0])
    assert set(pg_project.runs.get(run.run_id).params) == {"lr", "depth"}


@pytest.mark.parametrize("call", ["metric", "param", "tag", "name"])
def test_names_longer_than_the_columns_are_refused_with_the_limit(pg_project, call):
    long = "k" * 256
    with pytest.raises(TrackingError, match="limit is 255"):
        if call == "name":
            pg_project.runs.start(long)
        else:
            run = pg_project.runs.start("ok")
            {"metric": lambda: run.log_metric(long, 1.0), "param": lambda: run.log_param(long, 1),
             "tag": lambda: run.set_tag(long, 1)}[call]()
