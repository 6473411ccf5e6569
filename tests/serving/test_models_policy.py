"""Pure parts of the model handles: production history from the audit log, refused versions left out."""
from __future__ import annotations

import pytest

from loopstack.serving.models import Snapshot, production_history, without
from loopstack.serving.router import TrafficPolicy


def _t(version, frm, to, action="transition"):
    return {"action": action, "version": version, "from_state": frm, "to_state": to}


def test_production_history_replays_promotions_and_rollbacks():
    audit = [{"action": "register", "version": 1, "from_state": None, "to_state": "candidate"},
             _t(1, "candidate", "production"), _t(2, "candidate", "production"), _t(1, "production", "archived",
                                                                                    "replaced"),
             _t(3, "candidate", "production"), _t(3, "production", "archived", "rollback"),
             _t(2, "archived", "production", "rollback")]
    assert production_history(audit) == [1, 2]
    assert production_history(audit[:5]) == [1, 2, 3]


def test_refused_versions_are_left_out_and_production_keeps_the_old_one():
    p = TrafficPolicy("spam", production=3, shadow=4, canary=5, experiment={"v6": 6}, holdback=2,
                      holdback_percent=5, fallback=2)
    q = without(p, {3, 4, 6}, keep_production=2)
    assert (q.production, q.shadow, q.canary, q.holdback, dict(q.variants)) == (2, None, 5, 2, {})
    assert q.versions() == {2, 5} and "refused" in q.notes[-1]
    assert without(p, set(), 1) is p
    r = without(TrafficPolicy("spam", production=3, experiment={"v6": 6, "v7": 7}), {7}, 3)
    assert dict(r.variants) == {"control": 3, "v6": 6}


def test_snapshot_roles():
    p = TrafficPolicy("spam", production=3, shadow=4, experiment={"v4": 4}, fallback=2)
    snap = Snapshot(p, {}, 1, 1)
    assert snap.roles(3) == ["production"] and snap.roles(4) == ["shadow", "experiment:v4"]
    assert snap.roles(2) == ["fallback"] and Snapshot(None, {}, 0, 0).roles(1) == []


def test_not_ready_reason_says_why_a_model_cannot_answer():
    from loopstack.serving.config import ModelSpec, ServingConfig
    from loopstack.serving.models import ModelHandle
    h = ModelHandle(ModelSpec("spam"), None, ServingConfig())
    assert h.not_ready_reason() == "not loaded yet"
    h.error = "ModelReferenceError: boom"
    assert h.not_ready_reason() == "not loaded yet (ModelReferenceError: boom)"
    h.snapshot = Snapshot(TrafficPolicy("spam", production=None, shadow=2), {2: object()}, 1, 1)
    assert "no production, canary or experiment version; promote one" in h.not_ready_reason() and not h.ready
    h.snapshot, h.refused = Snapshot(TrafficPolicy("spam", production=3), {}, 1, 1), {3: "sha256 mismatch"}
    assert h.not_ready_reason() == "version 3 (production) is not loaded: refused (sha256 mismatch)"
    h.snapshot = Snapshot(TrafficPolicy("spam", production=3), {3: object()}, 1, 1)
    assert h.not_ready_reason() is None and h.ready


def test_not_ready_reason_names_refused_versions_not_promote_one():
    """Production refused at the first load (e.g. a corrupted artifact): /readyz says so, not 'promote one'."""
    from loopstack.serving.config import ModelSpec, ServingConfig
    from loopstack.serving.models import ModelHandle
    h = ModelHandle(ModelSpec("spam"), None, ServingConfig())
    p = without(TrafficPolicy("spam", production=1), {1}, keep_production=None)
    h.snapshot, h.refused = Snapshot(p, {}, 1, 1), {1: "ModelIntegrityError: sha256 mismatch"}
    reason = h.not_ready_reason()
    assert "refused: version 1: ModelIntegrityError: sha256 mismatch" in reason and "promote" not in reason
    assert not h.ready


def test_a_refused_production_does_not_hand_every_user_to_the_canary():
    """Production refused at the first load (nothing earlier loaded): the 5 % canary must not answer 100 %."""
    from loopstack.serving.errors import NoRoute
    from loopstack.serving.router import route
    p = TrafficPolicy("spam", production=1, canary=2, experiment={"v3": 3}, shadow=4)
    q = without(p, {1}, keep_production=None)
    assert (q.production, q.canary, dict(q.variants), q.shadow) == (None, None, {}, 4)
    assert q.default_route() is None and "do not take its users" in q.notes[-1]
    with pytest.raises(NoRoute):
        route(q, "user-1", "r1")
    # an earlier production still loaded keeps serving, with the canary at its share
    r = without(p, {1}, keep_production=5)
    assert (r.production, r.canary) == (5, 2)
    # a first rollout (no production at all) still goes to the canary
    assert without(TrafficPolicy("spam", production=None, canary=2), {4}, None).default_route() == ("canary", 2)
