"""`Registry.record_event`: audit entries that change nothing (the closed loop's step records)."""
from __future__ import annotations

import pytest

from loopstack.registry import ModelReferenceError, RegistryError
from tests.registry.conftest import register


def test_record_event_appends_to_the_audit_log_only(sreg):
    (v,) = register(sreg)
    mv = sreg.get(f"models:/spam/{v}")
    gen = sreg.generation("spam")
    sreg.record_event(mv.ref, "loop", "shadow pass: 1200 requests", {"step": "shadow", "p99_ms": 41.0}, actor="bot")
    last = sreg.audit("spam", mv.version)[-1]
    assert (last["action"], last["reason"], last["actor"]) == ("loop", "shadow pass: 1200 requests", "bot")
    assert last["evidence"] == {"step": "shadow", "p99_ms": 41.0} and last["from_state"] is None
    assert sreg.get(mv.ref).state == mv.state and sreg.generation("spam") == gen + 1


def test_record_event_refuses_registry_actions_and_unknown_versions(sreg):
    (v,) = register(sreg)
    mv = sreg.get(f"models:/spam/{v}")
    with pytest.raises(RegistryError, match="written by the registry itself"):
        sreg.record_event(mv.ref, "transition", "x")
    with pytest.raises(ModelReferenceError):
        sreg.record_event("models:/spam/9", "loop", "x")
