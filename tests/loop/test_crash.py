"""Crash and resume: a run killed with SIGKILL after `register` resumes in another process without a
second registration; a crash between the registry commit and the state save is idempotent too; an
experiment resumes with its sequential-test state."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from loopstack.loop.core import DONE, EXPERIMENT, SHADOW
from loopstack.loop.store import LoopStore
from loopstack.loop.evidence import ManualClock
from tests.loop.helpers import START, FakeEvidence, make_project, pipeline

REPO = Path(__file__).resolve().parents[2]
CHILD = """
import sys, time
from pathlib import Path
from loopstack import Project
from tests.loop.helpers import pipeline
root, marker = sys.argv[1], Path(sys.argv[2])
def pause_after_register(state):
    if state.step == "shadow" and not marker.exists():
        marker.write_text(state.run_id)
        time.sleep(300)   # killed here
pipeline(Project(root), on_step=pause_after_register).run()
"""


def _counts(project, version):
    audit = project.models.audit("spam", version)
    return Counter(e["action"] for e in audit), Counter((e["evidence"] or {}).get("step") for e in audit
                                                         if e["action"] == "loop")


def test_kill_9_after_register_then_resume(tmp_path, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    marker = tmp_path / "registered"
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(p.root), str(marker)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "the child never reached the register step"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    saved = LoopStore(p.meta).active("spam")
    assert saved.run_id == marker.read_text() and saved.step == SHADOW and saved.version == 1
    state = pipeline(p).resume()
    assert state.step == DONE and state.run_id == saved.run_id
    assert [v.version for v in p.models.versions("spam")] == [1]
    actions, steps = _counts(p, 1)
    assert actions["register"] == 1 and actions["gate"] == 1
    assert set(steps.values()) == {1} and len(steps) == 8       # one audit entry per step
    assert [h["step"] for h in state.history][:4] == ["dataset", "train", "gate", "register"]
    p.close()


def test_crash_between_registry_commit_and_state_save_is_idempotent(tmp_path, monkeypatch, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    pl = pipeline(p)
    real_save = LoopStore.save

    def crash_once(self, state, now):
        if state.step == SHADOW and state.version is not None and not hasattr(crash_once, "done"):
            crash_once.done = True
            raise KeyboardInterrupt("power cut after the registry committed")
        return real_save(self, state, now)
    monkeypatch.setattr(LoopStore, "save", crash_once)
    try:
        pl.run()
        raise AssertionError("the run should have crashed")
    except KeyboardInterrupt:
        pass
    saved = LoopStore(p.meta).active("spam")
    assert saved.step == "register" and saved.version is None      # the save never happened
    assert [v.version for v in p.models.versions("spam")] == [1]   # ... but the version was registered
    state = pipeline(p).resume()
    assert state.step == DONE and state.version == 1
    assert [v.version for v in p.models.versions("spam")] == [1]
    actions, steps = _counts(p, 1)
    assert actions["register"] == 1 and actions["gate"] == 1 and set(steps.values()) == {1}
    p.close()


def test_experiment_resumes_with_its_sequential_state(tmp_path, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    clock = ManualClock(START)
    assert pipeline(p, clock=clock).run().step == DONE          # v1 in production
    ev = FakeEvidence()
    first = pipeline(p, evidence=ev, clock=clock)
    state = first.start("manual", "retrain")
    while not (state.step == EXPERIMENT and state.looks >= 2):
        state = first.step(state)
    assert state.tests["reports_caught"]["looks"] == 2
    # a new process (a new pipeline object) picks the run up; the provider's counts are cumulative
    done = pipeline(p, evidence=ev, clock=clock).resume()
    assert done.step == DONE and done.version == 2
    assert done.history[6]["evidence"]["goal"]["looks"] == 3 and ev.calls["experiment"] == 3
    assert p.models.get("models:/spam@production").version == 2
    p.close()


def test_crash_after_archiving_a_failed_candidate_ends_the_same_way(tmp_path, monkeypatch, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    real_save = LoopStore.save

    def crash_on_failed(self, state, now):
        if state.step == "failed" and not hasattr(crash_on_failed, "done"):
            crash_on_failed.done = True
            raise KeyboardInterrupt("killed after archiving, before saving")
        return real_save(self, state, now)
    monkeypatch.setattr(LoopStore, "save", crash_on_failed)
    try:
        pipeline(p, evidence=FakeEvidence(error_rate=0.2)).run()
        raise AssertionError("the run should have crashed")
    except KeyboardInterrupt:
        pass
    assert LoopStore(p.meta).active("spam").step == SHADOW and p.models.get("models:/spam/1").state == "archived"
    ev = FakeEvidence()                                   # the evidence now looks fine: the decision stands
    state = pipeline(p, evidence=ev).resume()
    assert state.step == "failed" and "error rate" in state.error and not ev.calls
    archives = [e for e in p.models.audit("spam", 1) if e["to_state"] == "archived"]
    assert len(archives) == 1
    p.close()
