"""Rollback: one call, restores the previous production version, audited, fast."""
from __future__ import annotations

import time

import pytest

from loopstack.registry import RegistryError, TransitionError
from tests.registry.conftest import ladder_to, register


def test_rollback_restores_previous_production_and_audits(reg):
    register(reg, "spam", 3)
    ladder_to(reg, "models:/spam/1", "production")
    ladder_to(reg, "models:/spam/2", "production")
    assert reg.get("models:/spam/1").state == "archived"
    t0 = time.perf_counter()
    restored = reg.rollback("spam", reason="complaints up 30% after v2", actor="oncall")
    elapsed = time.perf_counter() - t0
    print(f"rollback took {elapsed * 1000:.1f} ms")   # shown with -s; the bound is generous
    assert elapsed < 1.0, f"rollback took {elapsed:.3f}s"
    assert restored.version == 1 and restored.state == "production"
    assert reg.get("models:/spam@production").version == 1 and reg.get("models:/spam/2").state == "archived"
    entries = [e for e in reg.audit("spam") if e["action"] == "rollback"]
    assert [(e["version"], e["from_state"], e["to_state"]) for e in entries] == [
        (2, "production", "archived"), (1, "archived", "production")]
    assert all(e["actor"] == "oncall" and e["reason"] == "complaints up 30% after v2" for e in entries)
    assert entries[0]["evidence"] == {"from_version": 2, "to_version": 1}
    with pytest.raises(TransitionError, match="no previous production version"):
        reg.rollback("spam", reason="again")     # never back to the bad v2
    ladder_to(reg, "models:/spam/3", "production")
    assert reg.rollback("spam", reason="v3 bad too", current_to="candidate").version == 1
    assert reg.get("models:/spam/3").state == "candidate"


def test_rollback_needs_a_reason_and_a_production_version(reg):
    register(reg, "spam", 1)
    with pytest.raises(RegistryError, match="reason is required"):
        reg.rollback("spam", reason="")
    with pytest.raises(TransitionError, match="no version is in production"):
        reg.rollback("spam", reason="x")
    ladder_to(reg, "models:/spam/1", "production")
    with pytest.raises(TransitionError, match="first production version"):
        reg.rollback("spam", reason="x")
    assert reg.get("models:/spam@production").version == 1   # a refused rollback changes nothing
