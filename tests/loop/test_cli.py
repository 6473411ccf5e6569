"""`loopstack loop run|status|resume`: in-process (typer's runner), plus one real subprocess for the exit
code of a failed run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from loopstack.cli import app
from loopstack.loop.core import LoopError
from tests.loop.helpers import make_project

REPO = Path(__file__).resolve().parents[2]
LOOP_FILE = """
from tests.loop.helpers import pipeline as _pipeline

def pipeline(project):
    return _pipeline(project)
"""
BAD_FILE = """
from loopstack.loop.evidence import ManualClock
from tests.loop.helpers import START, FakeEvidence, pipeline as _pipeline

def pipeline(project):
    return _pipeline(project, evidence=FakeEvidence(p99_ms=900.0), clock=ManualClock(START.replace(hour=6)))
"""


def test_loop_cli(tmp_path, meta_url):
    p = make_project(tmp_path / "proj", meta_url)
    root = str(p.root)
    p.close()
    runner = CliRunner()
    r = runner.invoke(app, ["loop", "status", "-p", root])
    assert r.exit_code == 0 and "no loop runs yet" in r.output
    r = runner.invoke(app, ["loop", "run", "-p", root])
    assert isinstance(r.exception, LoopError) and "not found" in str(r.exception)
    (p.root / "loop.py").write_text(LOOP_FILE)
    r = runner.invoke(app, ["loop", "run", "-p", root, "--reason", "first model"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert "promote" in r.output and ": done" in r.output
    r = runner.invoke(app, ["loop", "status", "-p", root], terminal_width=200)
    assert r.exit_code == 0 and "done" in r.output and "manual" in r.output
    r = runner.invoke(app, ["loop", "status", "-p", root, "--json"])
    state = json.loads(r.output)[0]
    assert state["step"] == "done" and state["version"] == 1 and state["reason"] == "first model"
    r = runner.invoke(app, ["loop", "status", "-p", root, "--run", state["run_id"]], terminal_width=200)
    assert r.exit_code == 0 and "experiment" in r.output and "promote" in r.output
    r = runner.invoke(app, ["loop", "resume", "-p", root])
    assert isinstance(r.exception, LoopError) and "no unfinished loop run" in str(r.exception)

    # the real command: a failed run exits 1
    (tmp_path / "bad.py").write_text(BAD_FILE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOOPSTACK_")}
    env.update(COLUMNS="200", PYTHONPATH=str(REPO))
    r = subprocess.run([sys.executable, "-m", "loopstack", "loop", "run", "-p", root, "--file",
                        str(tmp_path / "bad.py")], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "failed" in r.stdout and "p99" in r.stdout


def test_status_limit_must_be_positive(tmp_path):
    # --limit 0 said "no loop runs yet" whatever was stored; --limit -3 listed every run (SQL LIMIT -3)
    from loopstack.project import Project
    root = str(Project.init(tmp_path / "proj", example=False).root)
    for bad in ("0", "-3"):
        r = CliRunner().invoke(app, ["loop", "status", "-p", root, "--limit", bad])
        assert r.exit_code == 2 and "greater than or equal to 1" in r.output, r.output
    assert CliRunner().invoke(app, ["loop", "status", "-p", root, "--limit", "1"]).exit_code == 0
