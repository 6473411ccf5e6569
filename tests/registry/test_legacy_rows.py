"""Rows written by older loopstack versions with values today's code refuses on write.

`loopstack models show` crashed on them with a traceback (JSONDecodeError, KeyError, AttributeError,
NoResultFound, rich's MarkupError). Now reads show what can be read and name each unreadable field,
its row and how to repair it; a reference that cannot be followed is a RegistryError saying so.
"""
from __future__ import annotations

import json

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from loopstack.project import Project
from loopstack.registry import ModelReferenceError, RegistryError
from loopstack.registry.cli import models_app
from loopstack.registry.schema import model_aliases as A
from loopstack.registry.schema import model_audit as L
from loopstack.registry.schema import model_versions as V
from tests.meta.helpers import use_metadata
from tests.registry.conftest import register

runner = CliRunner()


def _project(tmp_path, monkeypatch, meta_url):
    """A project with two registered versions (version 1 with a profile) on the metadata store `meta_url`
    (None: the default SQLite file)."""
    from rich.console import Console

    import loopstack.registry.cli as cli
    monkeypatch.setattr(cli, "console", Console(width=400))   # wide tables: no wrapped cells
    use_metadata(tmp_path / "proj", meta_url)
    p = Project.init(tmp_path / "proj", example=False)
    register(p.models, "spam", 1, profile=pd.DataFrame({"url_count": [0, 1, 2, 3]}))
    register(p.models, "spam", 1)
    return p


@pytest.fixture
def project(tmp_path, monkeypatch, meta_url):
    """`_project` on SQLite and on PostgreSQL."""
    p = _project(tmp_path, monkeypatch, meta_url)
    yield p
    p.close()


@pytest.fixture
def sqlite_project(tmp_path, monkeypatch):
    """`_project` on SQLite only: for values only SQLite's loose column types could have stored."""
    p = _project(tmp_path, monkeypatch, None)
    assert p.models.engine.dialect.name == "sqlite"
    yield p
    p.close()


def run(project, *args):
    return runner.invoke(models_app, [*args, "-p", str(project.root)], catch_exceptions=True)


def corrupt(project, table=V, where=None, **values) -> None:
    """Overwrite stored values of version 1 as an older loopstack could have written them."""
    where = where if where is not None else sa.and_(table.c.name == "spam", table.c.version == 1)
    with project.models.engine.begin() as conn:
        conn.execute(sa.update(table).where(where).values(**values))


@pytest.mark.parametrize("column,stored,shown", [
    ("params", "{bad", "bad stored params: not valid JSON"),                          # was JSONDecodeError
    ("metrics", "[0.9, 0.8]", "bad stored metrics: a JSON list, expected a dict"),    # was AttributeError
    ("metrics", '{"auc": "high", "f1": 0.5}', "metric(s) auc='high' are not finite numbers"),  # was ValueError
    ("feature_versions", '"x"', "bad stored feature_versions"),
    ("gate", '{"passed": true}', "bad stored gate: not a gate decision"),            # was KeyError
    ("gate", "{x", "run the validation gate again"),
    ("signature", '{"inputs": 5}', "bad stored signature: not a model signature"),   # was TypeError
    ("profile", '{"features": 5}', "unreadable reference profile"),                  # was AttributeError
    ("profile", "nope", "unreadable reference profile"),                             # was JSONDecodeError
])
def test_show_flags_an_unreadable_field_and_shows_the_rest(project, column, stored, shown):
    corrupt(project, **{column: stored})
    r = run(project, "show", "models:/spam/1")
    assert r.exception is None, repr(r.exception)
    out = " ".join(r.stdout.split())
    assert shown in out
    for text in ("models:/spam/1", "run-0", "deadbeef", "audit log"):   # the readable fields are still shown
        assert text in out
    if column != "profile":
        assert "version=1 to a valid JSON object" in out or "register the model again" in out or "gate again" in out
        data = json.loads(run(project, "show", "models:/spam/1", "--json").stdout)
        assert column in data["problems"] and data["run_id"] == "run-0"
        listed = run(project, "list", "spam")
        assert listed.exception is None and "models:/spam/1: bad stored" in listed.stdout
    other = " ".join(run(project, "show", "models:/spam/2").stdout.split())
    assert "see below" not in other and "bad stored" not in other


@pytest.mark.parametrize("column,width", [("run_id", 255), ("dataset_id", 255), ("code_version", 255)])
def test_an_overlong_lineage_id_is_shown_and_flagged(sqlite_project, column, width):
    """register() refuses ids longer than their column now; an older loopstack on SQLite stored them
    (PostgreSQL never stored a value longer than its column)."""
    project = sqlite_project
    corrupt(project, **{column: "x" * (width + 45)})
    mv = project.models.get("models:/spam/1")
    assert getattr(mv, column) == "x" * (width + 45)
    assert f"{width + 45} characters long, more than the {width}" in mv.problems[column]
    out = " ".join(run(project, "show", "models:/spam/1").stdout.split())
    assert f"bad stored {column}: {width + 45} characters long" in out and "(bad: see below)" in out


def test_partly_readable_metrics_keep_their_numbers(project):
    corrupt(project, metrics='{"auc": "high", "f1": 0.5}')
    mv = project.models.get("models:/spam/1")
    assert mv.metrics == {"f1": 0.5} and "auc='high'" in mv.problems["metrics"]
    assert "f1=0.5" in run(project, "show", "models:/spam/1").stdout


def test_an_unreadable_signature_refuses_to_serve_but_still_loads_and_shows(project):
    corrupt(project, signature="{bad")
    with pytest.raises(RegistryError, match=r"models:/spam/1: its stored signature is unreadable.*register the model "
                                            "again with its signature"):
        project.models.get("models:/spam/1")
    assert project.models.get("models:/spam/1", strict=False).signature.inputs == ()
    assert project.models.load("models:/spam/1").weight == pytest.approx(0.1)
    assert project.models.promote("models:/spam/1", "shadow", reason="ok").state == "shadow"


def test_an_unreadable_profile_is_a_registry_error(project):
    corrupt(project, profile='{"features": 5}')
    with pytest.raises(RegistryError, match=r"reference profile stored with models:/spam/1 is unreadable .*Register "
                                            "the model again with profile="):
        project.models.profile("models:/spam/1")


def test_unreadable_audit_evidence_is_named(project):
    corrupt(project, table=L, where=sa.and_(L.c.name == "spam", L.c.version == 1), evidence="{x")
    entries = project.models.audit("spam", 1)
    assert entries[0]["evidence"] == {} and "audit entry" in entries[0]["problems"]["evidence"]
    assert project.models.audit("spam", 2)[0]["problems"] == {}
    for args in (("show", "models:/spam/1"), ("audit", "spam")):
        assert run(project, *args).exception is None


def test_stored_text_with_markup_is_shown_as_written(project):
    """A reason or run id holding rich markup such as '[/]' raised MarkupError (a traceback) in show and audit."""
    project.models.record_gate("models:/spam/2", {"passed": True, "reasons": [["absolute:auc", True, "auc [/] ok"]]})
    project.models.promote("models:/spam/2", "shadow", reason="ok [/] see [bold]ticket", override=True)
    corrupt(project, run_id="run [/red]")
    for args in (("show", "models:/spam/2"), ("audit", "spam"), ("list", "spam"), ("show", "models:/spam/1")):
        r = run(project, *args)
        assert r.exception is None, (args, repr(r.exception))
    assert "ok [/] see [bold]ticket" in run(project, "audit", "spam").stdout
    assert "run [/red]" in run(project, "show", "models:/spam/1").stdout
    assert "auc [/] ok" in run(project, "show", "models:/spam/2").stdout


def _alias_to(project, version) -> None:
    with project.models.engine.begin() as conn:
        conn.execute(A.insert().values(name="spam", alias="champion", version=version, updated_at=sa.func.now()))


def test_an_alias_pointing_at_a_missing_version_names_the_row_and_the_repair(project):
    """@champion -> a version that does not exist: was NoResultFound."""
    _check_alias_repair(project, 9)


def test_an_alias_pointing_at_a_fraction_names_the_row_and_the_repair(sqlite_project):
    """@champion -> 1.7: possible on SQLite only (an INTEGER column of PostgreSQL cannot hold it)."""
    _check_alias_repair(sqlite_project, 1.7)


def _check_alias_repair(project, stored) -> None:
    _alias_to(project, stored)
    for ref in ("models:/spam@champion",):
        with pytest.raises(ModelReferenceError, match=rf"alias @champion of model 'spam' points at {stored}, .*"
                                                      "loopstack models alias spam champion <version>"):
            project.models.get(ref)
        r = run(project, "show", ref)
        assert isinstance(r.exception, RegistryError) and "--delete" in str(r.exception)
    assert run(project, "list").exception is None and run(project, "list", "spam").exception is None
    project.models.set_alias("spam", "champion", 2, reason="repair")           # the advised repair works
    assert project.models.get("models:/spam@champion").version == 2


def test_an_alias_stored_as_a_whole_float_still_resolves(sqlite_project):
    """SQLite only: PostgreSQL stores an INTEGER."""
    project = sqlite_project
    _alias_to(project, 2.0)
    assert project.models.get("models:/spam@champion").version == 2
