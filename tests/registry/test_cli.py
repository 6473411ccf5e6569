"""`loopstack models list|show|promote|rollback|alias|audit` (typer app; mounted as `loopstack models`)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from loopstack.project import Project
from loopstack.registry import RegistryError, TransitionError
from loopstack.registry.cli import models_app
from tests.meta.helpers import use_metadata
from tests.registry.conftest import PASSING, register

runner = CliRunner()


@pytest.fixture
def project(tmp_path, monkeypatch, meta_url):
    """A project with two registered versions, its metadata on SQLite and on PostgreSQL."""
    from rich.console import Console

    import loopstack.registry.cli as cli
    monkeypatch.setattr(cli, "console", Console(width=200))   # wide tables: no wrapped cells
    use_metadata(tmp_path / "proj", meta_url)
    p = Project.init(tmp_path / "proj", example=False)
    register(p.models, "spam", 2)
    yield p
    p.close()


def run(project, *args):
    return runner.invoke(models_app, [*args, "-p", str(project.root)], catch_exceptions=True)


def test_list_and_show(project):
    r = run(project, "list")
    assert r.exit_code == 0 and "spam" in r.stdout and "candidate:2" in r.stdout
    r = run(project, "show", "models:/spam/2")
    assert r.exit_code == 0
    for text in ("models:/spam/2", "run-1", "author_stats:spam_7d", "validation gate", "PASSED", "audit log"):
        assert text in r.stdout, text
    data = json.loads(run(project, "show", "models:/spam/1", "--json").stdout)
    assert data["version"] == 1 and data["signature"]["inputs"][0]["version"] == 3
    r = run(project, "list", "spam")
    assert r.exit_code == 0 and r.stdout.count("candidate") == 2


def test_promote_rollback_and_audit(project):
    for state in ("shadow", "canary", "experiment", "production"):
        for v in (1, 2):
            r = run(project, "promote", f"models:/spam/{v}", state, "--reason", f"{state} ok",
                    "--evidence", '{"p99_ms": 12}', "--actor", "erin")
            assert r.exit_code == 0, r.output
    assert project.models.get("models:/spam@production").version == 2
    r = run(project, "rollback", "spam", "--reason", "bad launch")
    assert r.exit_code == 0 and "models:/spam/1 is production again" in r.stdout
    assert project.models.get("models:/spam@production").version == 1
    entry = [e for e in project.models.audit("spam", 1) if e["to_state"] == "canary"][0]
    assert entry["actor"] == "erin" and entry["evidence"] == {"p99_ms": 12} and entry["reason"] == "canary ok"
    r = run(project, "audit", "spam")
    assert r.exit_code == 0 and "rollback" in r.stdout and "bad launch" in r.stdout


def test_refusals_and_override(project):
    r = run(project, "promote", "models:/spam/1", "production", "--reason", "skip")
    assert isinstance(r.exception, TransitionError) and "skips shadow, canary, experiment" in str(r.exception)
    r = run(project, "promote", "models:/spam/1", "shadow")
    assert r.exit_code == 2 and "--reason" in r.output           # reason is required
    r = run(project, "promote", "models:/spam/1", "shadow", "--reason", "x", "--evidence", "{bad")
    assert "--evidence must be JSON" in str(r.exception)
    r = run(project, "promote", "models:/spam/1", "production", "--reason", "hotfix", "--override")
    assert r.exit_code == 0 and "override, audited" in r.stdout
    assert any(e["override"] for e in project.models.audit("spam", 1))
    r = run(project, "alias", "spam", "champion", "2", "--reason", "best")
    assert r.exit_code == 0 and project.models.get("models:/spam@champion").version == 2


def test_subprocess_cli_errors_are_one_line(project):
    """The app in a real process; after mounting, `python -m loopstack models ...` runs the same code."""
    code = ("import sys; from loopstack.cli import err_console; from loopstack.errors import LoopstackError;\n"
            "from loopstack.registry.cli import models_app\n"
            "try:\n    models_app(prog_name='loopstack models', standalone_mode=False)\n"
            "except LoopstackError as e:\n    err_console.print(f'error: {e}'); sys.exit(2)\n")
    ok = subprocess.run([sys.executable, "-c", code, "list", "-p", str(project.root)], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "spam" in ok.stdout
    bad = subprocess.run([sys.executable, "-c", code, "show", "models:/spam@nope", "-p", str(project.root)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "no alias 'nope'" in bad.stderr and "Traceback" not in bad.stderr
    project.models.record_gate("models:/spam/1", PASSING)


def test_alias_with_a_version_and_delete_is_refused(project):
    """`alias spam champion 1 --delete` deleted @champion although it pointed at version 2."""
    project.models.set_alias("spam", "champion", 2)
    r = run(project, "alias", "spam", "champion", "1", "--delete")
    assert isinstance(r.exception, RegistryError) and "not both" in str(r.exception)
    assert project.models.get("models:/spam@champion").version == 2


def test_list_with_an_empty_name_is_refused(project):
    """`list ""` listed every model as if no name had been given."""
    r = run(project, "list", "")
    assert isinstance(r.exception, RegistryError) and "invalid model name ''" in str(r.exception)


def test_evidence_with_nan_is_one_error(project):
    r = run(project, "promote", "models:/spam/1", "shadow", "--reason", "x", "--evidence", '{"p99_ms": NaN}')
    assert isinstance(r.exception, RegistryError) and "evidence cannot be stored as JSON" in str(r.exception)
    assert project.models.get("models:/spam/1").state == "candidate"
