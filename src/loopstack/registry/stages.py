"""The rollout stage machine: which state changes are allowed, pure policy with no I/O.

States, in ladder order::

    candidate -> shadow -> canary -> experiment -> production      (+ archived, off the ladder)

Transition table (``check_transition``):

=====================  ==============================================================  ========
from                   to                                                              needs
=====================  ==============================================================  ========
rung r (not prod)      the next rung r+1                                               gate
rung r (not prod)      a lower rung (back off: e.g. canary -> shadow, * -> candidate)  -
rung r (not prod)      archived (rejected / retired)                                   -
rung r (not prod)      a rung more than one above (skip, e.g. candidate -> canary)     override + gate*
production             archived / any lower rung (leaves no production version)        override
                       (replacing it by promoting another version archives it
                       automatically; ``rollback`` demotes it in one step)
archived               candidate (re-open)                                             -
archived               any other rung (use rollback to restore production)             override + gate*
any                    the same state                                                  forbidden
=====================  ==============================================================  ========

"gate": moving a version up past ``candidate`` requires its validation gate to have passed; a
failed or missing gate needs ``override`` (gate*: an override covers the gate too). Every override
needs a non-empty reason; the caller audits what was overridden (``Transition.overridden``).

Effects of a promotion (``plan_promotion``): promoting version v to ``production`` while w holds it
archives w and moves the ``production`` alias from w to v, in one transaction.
Rollback (``plan_rollback``): the production history is a stack (each promotion to production
pushes, each rollback pops); rollback restores the version below the top and sends the current one
to ``archived`` (or ``candidate``), so two rollbacks in a row never bring the bad model back.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

from loopstack.registry.errors import TransitionError

CANDIDATE, SHADOW, CANARY, EXPERIMENT, PRODUCTION, ARCHIVED = (
    "candidate", "shadow", "canary", "experiment", "production", "archived")
LADDER: tuple[str, ...] = (CANDIDATE, SHADOW, CANARY, EXPERIMENT, PRODUCTION)
STATES: tuple[str, ...] = LADDER + (ARCHIVED,)
PRODUCTION_ALIAS = "production"


@dataclass(frozen=True)
class Transition:
    version: int
    from_state: str
    to_state: str
    overridden: tuple[str, ...] = ()   # what the override allowed (empty: an ordinary transition)


@dataclass(frozen=True)
class AliasMove:
    alias: str
    from_version: int | None
    to_version: int | None


@dataclass(frozen=True)
class Plan:
    """Everything one promotion or rollback changes; applied atomically by the registry."""
    transitions: tuple[Transition, ...]
    aliases: tuple[AliasMove, ...] = ()
    notes: tuple[str, ...] = field(default=())


def validate_state(state: str) -> str:
    s = str(state).strip().lower()
    if s not in STATES:
        raise TransitionError(f"unknown rollout state {state!r}: use one of {', '.join(STATES)}")
    return s


def rank(state: str) -> int:
    """Position on the ladder (archived is -1)."""
    return LADDER.index(state) if state in LADDER else -1


def check_transition(version: int, current: str, target: str, *, gate_passed: bool | None,
                     override: bool = False, reason: str = "") -> Transition:
    """The transition current -> target for one version, or TransitionError saying why not."""
    current, target = validate_state(current), validate_state(target)
    if not reason or not str(reason).strip():
        raise TransitionError(f"a reason is required to move version {version} to {target} (it goes in the "
                              "audit log): pass reason=... / --reason")
    if current == target:
        raise TransitionError(f"version {version} is already {current}; nothing to do")
    needs: list[str] = []
    up = target != ARCHIVED and (current == ARCHIVED or rank(target) > rank(current))
    if current == PRODUCTION:
        needs.append(f"production -> {target} leaves no production version (use rollback, or promote "
                     "another version, which archives this one)")
    elif current == ARCHIVED and target != CANDIDATE:
        needs.append(f"archived -> {target} skips the ladder (re-open as candidate, or use rollback)")
    elif up and rank(target) > rank(current) + 1:
        skipped = LADDER[rank(current) + 1:rank(target)]
        needs.append(f"{current} -> {target} skips {', '.join(skipped)}")
    if up and rank(target) > 0 and gate_passed is not True:
        gate = "never ran" if gate_passed is None else "failed"
        needs.append(f"the validation gate {gate} (a version moves past candidate only after a passed gate)")
    if needs and not override:
        raise TransitionError(f"cannot move version {version} from {current} to {target}: " + "; ".join(needs)
                              + ". Pass override=True (--override) with a reason to force it; it is audited")
    return Transition(version, current, target, tuple(needs))


def plan_promotion(version: int, states: dict[int, str], target: str, *, gate_passed: bool | None,
                   production_version: int | None, override: bool = False, reason: str = "") -> Plan:
    """What promoting `version` (with versions in `states`) to `target` changes."""
    if version not in states:
        raise TransitionError(f"version {version} does not exist")
    t = check_transition(version, states[version], target, gate_passed=gate_passed, override=override,
                         reason=reason)
    transitions = [t]
    aliases: list[AliasMove] = []
    if t.to_state == PRODUCTION:
        if production_version is not None and production_version != version:
            transitions.append(Transition(production_version, PRODUCTION, ARCHIVED, ("replaced",)))
        aliases.append(AliasMove(PRODUCTION_ALIAS, production_version, version))
    elif t.from_state == PRODUCTION:
        aliases.append(AliasMove(PRODUCTION_ALIAS, version, None))
    return Plan(tuple(transitions), tuple(aliases))


def production_stack(events: Iterable[tuple[str, int]]) -> list[int]:
    """Replay ("promote", v) / ("rollback", v) / ("demote", v) events (oldest first) into the stack.

    "promote" pushes v (a version already in the stack moves to the top), "rollback" pops the top,
    "demote" (production left without a replacement) removes v.
    """
    stack: list[int] = []
    for kind, v in events:
        if kind == "promote":
            if v in stack:
                stack.remove(v)
            stack.append(v)
        elif kind == "rollback":
            if stack:
                stack.pop()
        elif kind == "demote" and v in stack:
            stack.remove(v)
    return stack


def plan_rollback(stack: Sequence[int], states: dict[int, str], production_version: int | None,
                  current_to: str = ARCHIVED) -> Plan:
    """Restore the previous production version; the current one goes to `current_to`."""
    current_to = validate_state(current_to)
    if current_to not in (ARCHIVED, CANDIDATE):
        raise TransitionError(f"rollback sends the current production version to archived or candidate, "
                              f"not {current_to}")
    if production_version is None:
        raise TransitionError("no version is in production, so there is nothing to roll back")
    earlier = [v for v in stack if v != production_version and v in states and states[v] != PRODUCTION]
    if not earlier:
        raise TransitionError(f"version {production_version} is the first production version: there is no "
                              "previous production version to roll back to")
    target = earlier[-1]
    return Plan(
        (Transition(production_version, PRODUCTION, current_to, ("rollback",)),
         Transition(target, states[target], PRODUCTION, ("rollback",))),
        (AliasMove(PRODUCTION_ALIAS, production_version, target),))
