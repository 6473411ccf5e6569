"""`Registry.record_event`: audit entries that change nothing (the closed loop's step records)."""
from __future__ import annotations

import pytest

from loopstack.registry import ModelReferenceError, RegistryError
from tests.registry.conftest import register


def test_record_event_appends_to_the_audit_log_only(reg):
    (v,) = register(reg)
    mv = reg.get(f"models:/spam/{v}")
    gen = reg.generation("spam")
    reg.record_event(mv.ref, "loop", "shadow pass: 1200 requests", {"step": "shadow", "p99_ms": 41.0}, actor="bot")
    last = reg.audit("spam", mv.version)[-1]
    assert (last["action"], last["reason"], last["actor"]) == ("loop", "shadow pass: 1200 requests", "bot")
    assert last["evidence"] == {"step": "shadow", "p99_ms": 41.0} and last["from_state"] is None
    assert reg.get(mv.ref).state == mv.state and reg.generation("spam") == gen + 1


def test_record_event_refuses_registry_actions_and_unknown_versions(reg):
    (v,) = register(reg)
    mv = reg.get(f"models:/spam/{v}")
    with pytest.raises(RegistryError, match="written by the registry itself"):
        reg.record_event(mv.ref, "transition", "x")
    with pytest.raises(ModelReferenceError):
        reg.record_event("models:/spam/9", "loop", "x")


@pytest.mark.parametrize("action", ["", "   ", None, "a" * 33, " loop"])
def test_record_event_needs_a_short_action_name(reg, action):
    """An empty or None action was stored ('' / 'None'); a long one was silently cut to 32 characters."""
    (v,) = register(reg)
    before = len(reg.audit("spam"))
    with pytest.raises(RegistryError, match="must be a short name"):
        reg.record_event(f"models:/spam/{v}", action, "x")
    assert len(reg.audit("spam")) == before
