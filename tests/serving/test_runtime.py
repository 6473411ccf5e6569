"""Runtimes: the thread runtime, and the process runtime's worker, errors, death, restart and hang."""
from __future__ import annotations

import os
import signal
import time

import pytest

from loopstack.serving.runtime import ModelError, ModelLoadError, ProcessRuntime, ThreadRuntime, WorkerDied


def load_doubler():
    return (lambda rows: [2 * r for r in rows]), "sig"


def load_broken():
    raise ValueError("artifact sha256 mismatch")


def score(model, signature, rows):
    if any(r == "boom" for r in rows):
        raise ZeroDivisionError("boom")
    if any(r == "hang" for r in rows):
        time.sleep(30)
    return model(rows)


def test_thread_runtime_runs_batches_and_reports_errors():
    rt = ThreadRuntime(load_doubler, score, "m/v1")
    rt.start()
    assert rt.run_batch([1, 2]) == [2, 4] and rt.alive
    with pytest.raises(ModelError, match="m/v1 failed on a batch of 1: ZeroDivisionError"):
        rt.run_batch(["boom"])
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        ThreadRuntime(load_broken, score, "m/v2").start()


@pytest.mark.slow
def test_process_runtime_survives_model_errors_restarts_dead_workers_and_kills_hung_ones():
    rt = ProcessRuntime(load_doubler, score, "m/v1", batch_timeout_s=1.5)
    rt.start()
    try:
        assert rt.run_batch([1, 2, 3]) == [2, 4, 6] and rt.signature == "sig"
        with pytest.raises(ModelError, match="ZeroDivisionError"):
            rt.run_batch(["boom"])
        assert rt.run_batch([5]) == [10] and rt.restarts == 0   # a model error does not kill the worker
        pid = rt.pid
        os.kill(pid, signal.SIGKILL)
        t = time.monotonic()
        with pytest.raises(WorkerDied):
            rt.run_batch([1])
        assert time.monotonic() - t < 1.0   # fails promptly, does not hang
        deadline = time.monotonic() + 60
        while not (rt.alive and rt.restarts == 1):
            assert time.monotonic() < deadline, "worker was not restarted"
            time.sleep(0.05)
        assert rt.pid != pid and rt.run_batch([4]) == [8]
        with pytest.raises(WorkerDied, match="took more than 1.5s"):
            rt.run_batch(["hang"])
        deadline = time.monotonic() + 60
        while not (rt.alive and rt.restarts == 2):
            assert time.monotonic() < deadline, "hung worker was not replaced"
            time.sleep(0.05)
        assert rt.run_batch([1]) == [2] and rt.stats()["restarts"] == 2
    finally:
        rt.close()
    assert not rt.alive
    with pytest.raises(WorkerDied):
        rt.run_batch([1])


@pytest.mark.slow
def test_process_runtime_load_failure_is_a_load_error():
    with pytest.raises(ModelLoadError, match="sha256 mismatch"):
        ProcessRuntime(load_broken, score, "m/v2").start()
