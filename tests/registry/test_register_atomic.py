"""A registration that fails part-way stores nothing: no model row, no version, no artifact file.

Before, the model's row was created in a transaction of its own before the version's, so a failure
after it (in the version's transaction, or copying the artifact) left a model with no versions
(`loopstack models list` showed it empty and its name was taken) and the artifact file behind.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from loopstack.registry.schema import models as M
from tests.registry.conftest import register
from tests.registry.helpers import SIGNATURE, ThresholdModel


def _stored_files(reg) -> list[Path]:
    """Every file under the artifact store's folder, temporary ones included."""
    return sorted(p for p in Path(reg.artifacts.base).rglob("*") if p.is_file())


def _fail_in_transaction(reg, monkeypatch) -> None:
    """Make the audit entry, written after the version row in the same transaction, fail."""
    def boom(*_args, **_kwargs):
        raise RuntimeError("audit write failed")
    monkeypatch.setattr(reg, "_audit", boom)


def _fail_copying_the_artifact(reg, monkeypatch) -> None:
    """Make the rename of the copied artifact into place fail (a full disk, a lost mount)."""
    def boom(*_args, **_kwargs):
        raise OSError("no space left on device")
    monkeypatch.setattr(reg.artifacts.fs, "mv", boom)


FAILURES = {"in the version's transaction": (_fail_in_transaction, RuntimeError),
            "copying the artifact": (_fail_copying_the_artifact, OSError)}


@pytest.mark.parametrize("where", list(FAILURES))
def test_failed_first_registration_leaves_no_model_and_no_files(reg, monkeypatch, where):
    fail, error = FAILURES[where]
    with monkeypatch.context() as m:
        fail(reg, m)
        with pytest.raises(error):
            reg.register("spam", ThresholdModel(), signature=SIGNATURE, run_id="r1")
    assert reg.list() == []
    with reg.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(M)).scalar() == 0
    assert _stored_files(reg) == []
    # the name is free: the next registration is version 1
    mv = reg.register("spam", ThresholdModel(), signature=SIGNATURE, run_id="r2")
    assert (mv.version, mv.run_id) == (1, "r2")
    assert [e["action"] for e in reg.audit("spam")] == ["register"]
    assert _stored_files(reg) == [Path(reg.artifacts.base) / mv.artifact_path]


@pytest.mark.parametrize("where", list(FAILURES))
def test_failed_later_registration_keeps_the_earlier_versions(reg, monkeypatch, where):
    fail, error = FAILURES[where]
    register(reg, "spam", 1)
    before_files, generation = _stored_files(reg), reg.generation("spam")
    with monkeypatch.context() as m:
        fail(reg, m)
        with pytest.raises(error):
            reg.register("spam", ThresholdModel(), signature=SIGNATURE)
    assert [v.version for v in reg.versions("spam")] == [1]
    assert reg.generation("spam") == generation
    assert _stored_files(reg) == before_files
    assert reg.load("models:/spam/1").weight == pytest.approx(0.1)
