"""The pure stage machine: the transition table, gate and override rules, rollback planning."""
from __future__ import annotations

import pytest

from loopstack.registry import stages
from loopstack.registry.errors import TransitionError
from loopstack.registry.stages import (ARCHIVED, CANARY, CANDIDATE, EXPERIMENT, PRODUCTION, SHADOW, check_transition,
                                       plan_promotion, plan_rollback, production_stack)

ALLOWED = [  # (from, to) allowed with a passed gate and no override
    (CANDIDATE, SHADOW), (SHADOW, CANARY), (CANARY, EXPERIMENT), (EXPERIMENT, PRODUCTION),
    (SHADOW, CANDIDATE), (CANARY, SHADOW), (CANARY, CANDIDATE), (EXPERIMENT, CANARY), (EXPERIMENT, SHADOW),
    (EXPERIMENT, CANDIDATE),
    (CANDIDATE, ARCHIVED), (SHADOW, ARCHIVED), (CANARY, ARCHIVED), (EXPERIMENT, ARCHIVED), (ARCHIVED, CANDIDATE),
]
NEED_OVERRIDE = [  # refused without override, allowed with one
    (CANDIDATE, CANARY), (CANDIDATE, EXPERIMENT), (CANDIDATE, PRODUCTION), (SHADOW, EXPERIMENT),
    (SHADOW, PRODUCTION), (CANARY, PRODUCTION), (PRODUCTION, ARCHIVED), (PRODUCTION, CANDIDATE),
    (PRODUCTION, EXPERIMENT), (PRODUCTION, CANARY), (PRODUCTION, SHADOW),
    (ARCHIVED, SHADOW), (ARCHIVED, CANARY), (ARCHIVED, EXPERIMENT), (ARCHIVED, PRODUCTION),
]


def test_table_covers_every_pair():
    pairs = {(a, b) for a in stages.STATES for b in stages.STATES if a != b}
    assert pairs == set(ALLOWED) | set(NEED_OVERRIDE)


@pytest.mark.parametrize("frm,to", ALLOWED)
def test_allowed(frm, to):
    t = check_transition(1, frm, to, gate_passed=True, reason="ok")
    assert (t.from_state, t.to_state, t.overridden) == (frm, to, ())


@pytest.mark.parametrize("frm,to", NEED_OVERRIDE)
def test_forbidden_without_override_allowed_with(frm, to):
    with pytest.raises(TransitionError, match="override"):
        check_transition(1, frm, to, gate_passed=True, reason="ok")
    t = check_transition(1, frm, to, gate_passed=True, override=True, reason="incident 42")
    assert t.to_state == to and t.overridden


@pytest.mark.parametrize("state", stages.STATES)
def test_same_state_is_refused_even_with_override(state):
    with pytest.raises(TransitionError, match="already"):
        check_transition(1, state, state, gate_passed=True, override=True, reason="x")


@pytest.mark.parametrize("gate", [None, False])
def test_past_candidate_needs_passed_gate(gate):
    with pytest.raises(TransitionError, match="gate (never ran|failed)"):
        check_transition(1, CANDIDATE, SHADOW, gate_passed=gate, reason="x")
    t = check_transition(1, CANDIDATE, SHADOW, gate_passed=gate, override=True, reason="x")
    assert any("gate" in o for o in t.overridden)


def test_backing_off_and_archiving_do_not_need_the_gate():
    assert check_transition(1, CANARY, SHADOW, gate_passed=False, reason="x").overridden == ()
    assert check_transition(1, CANDIDATE, ARCHIVED, gate_passed=None, reason="x").overridden == ()
    assert check_transition(1, ARCHIVED, CANDIDATE, gate_passed=False, reason="x").overridden == ()


def test_skip_message_names_skipped_rungs():
    with pytest.raises(TransitionError, match="skips shadow, canary"):
        check_transition(1, CANDIDATE, EXPERIMENT, gate_passed=True, reason="x")


def test_reason_required_and_unknown_state_named():
    with pytest.raises(TransitionError, match="reason is required"):
        check_transition(1, CANDIDATE, SHADOW, gate_passed=True, reason="  ")
    with pytest.raises(TransitionError, match="unknown rollout state 'staging'.*candidate, shadow"):
        check_transition(1, CANDIDATE, "staging", gate_passed=True, reason="x")


def test_promotion_to_production_archives_previous_and_moves_alias():
    plan = plan_promotion(3, {2: PRODUCTION, 3: EXPERIMENT}, PRODUCTION, gate_passed=True, production_version=2,
                          reason="won A/B")
    assert [(t.version, t.from_state, t.to_state) for t in plan.transitions] == [
        (3, EXPERIMENT, PRODUCTION), (2, PRODUCTION, ARCHIVED)]
    assert [(a.alias, a.from_version, a.to_version) for a in plan.aliases] == [("production", 2, 3)]


def test_first_production_and_leaving_production_move_alias():
    plan = plan_promotion(1, {1: EXPERIMENT}, PRODUCTION, gate_passed=True, production_version=None, reason="x")
    assert [(a.from_version, a.to_version) for a in plan.aliases] == [(None, 1)]
    plan = plan_promotion(1, {1: PRODUCTION}, ARCHIVED, gate_passed=True, production_version=1, override=True,
                          reason="x")
    assert [(a.from_version, a.to_version) for a in plan.aliases] == [(1, None)]


def test_production_stack_replay():
    ev = [("promote", 1), ("promote", 2), ("promote", 3), ("rollback", 3)]
    assert production_stack(ev) == [1, 2]
    assert production_stack(ev + [("promote", 1)]) == [2, 1]
    assert production_stack([("promote", 1), ("promote", 2), ("demote", 1)]) == [2]


def test_plan_rollback_restores_previous_and_never_the_bad_one():
    plan = plan_rollback([1, 2], {1: ARCHIVED, 2: PRODUCTION}, 2)
    assert [(t.version, t.from_state, t.to_state) for t in plan.transitions] == [
        (2, PRODUCTION, ARCHIVED), (1, ARCHIVED, PRODUCTION)]
    assert [(a.from_version, a.to_version) for a in plan.aliases] == [(2, 1)]
    with pytest.raises(TransitionError, match="no previous production version"):
        plan_rollback([1], {1: PRODUCTION, 2: ARCHIVED}, 1)   # after rolling back 2 -> 1, no way back to 2
    with pytest.raises(TransitionError, match="nothing to roll back"):
        plan_rollback([], {1: CANDIDATE}, None)
    assert plan_rollback([1, 2], {1: ARCHIVED, 2: PRODUCTION}, 2, CANDIDATE).transitions[0].to_state == CANDIDATE
    with pytest.raises(TransitionError, match="archived or candidate"):
        plan_rollback([1, 2], {1: ARCHIVED, 2: PRODUCTION}, 2, SHADOW)
